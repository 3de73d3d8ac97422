import os
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Airflow reads its home at import: give every test session its own, with SQLite and our dags.
_home = tempfile.mkdtemp(prefix="slimeflow-airflow-")
os.environ.setdefault("AIRFLOW_HOME", _home)
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(ROOT / "dags"))
os.environ.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(ROOT / "plugins"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION", "False")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "False")

# A simulated cluster outlives a SIGKILLed test otherwise: its watchdog takes it down once this
# process is gone (tests.simcluster.cluster.SimCluster.up).
os.environ.setdefault("SIMCLUSTER_OWNER_PID", str(os.getpid()))
