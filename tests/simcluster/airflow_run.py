"""Run a slimeflow DAG against a simulated cluster with Airflow on SQLite (demo and tests)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def airflow_env(cluster, airflow_home: str | os.PathLike) -> dict:
    env = dict(os.environ)
    env.update(cluster.env())
    env.update({
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": env.get("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO"),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), str(ROOT)]),
    })
    return env


def run_conf(cluster, **overrides) -> dict:
    """Trigger params that point a DAG at the simulated cluster."""
    conf = {
        "nodes": list(cluster.conn_ids),
        "base_folder": str(cluster.base_folder),
        "slime_dir": str(cluster.slime_dir),
        "megatron_dir": str(cluster.megatron_dir),
        "gpus_per_node": int(cluster.sim.get("gpus_per_node", 8)),
        "num_rollout": 4,
        "save_interval": 2,
        "poll_interval": 1,
        # the simulated nodes have no CUDA: NCCL is proven on lent GPUs (docs/gpu-validation.md)
        "preflight_nccl": "off",
    }
    conf.update(overrides)
    return conf


XCOM_SCRIPT = r"""
import json, sys
from airflow.models.xcom import XComModel
from airflow.utils.session import create_session
from sqlalchemy import select
dag_id, run_id = sys.argv[1], sys.argv[2]
out = {}
with create_session() as s:
    if run_id == "latest":
        from airflow.models.dagrun import DagRun
        run_id = s.scalar(select(DagRun.run_id).where(DagRun.dag_id == dag_id)
                          .order_by(DagRun.id.desc()).limit(1))
    rows = s.execute(select(XComModel.task_id, XComModel.key, XComModel.map_index, XComModel.value)
                     .where(XComModel.dag_id == dag_id, XComModel.run_id == run_id)).all()
    for task_id, key, mi, value in rows:
        v = value
        if isinstance(v, (str, bytes)):
            try:
                v = json.loads(v)
            except Exception:
                pass
        out.setdefault(task_id, {})[f"{key}" if mi < 0 else f"{key}[{mi}]"] = v
    from airflow.models.taskinstance import TaskInstance
    states = {}
    for task_id, mi, state in s.execute(select(TaskInstance.task_id, TaskInstance.map_index,
                                               TaskInstance.state)
                                        .where(TaskInstance.dag_id == dag_id,
                                               TaskInstance.run_id == run_id)).all():
        states[task_id if mi < 0 else f"{task_id}[{mi}]"] = str(state.value if hasattr(state, "value") else state)
print(json.dumps({"run_id": run_id, "xcom": out, "states": states}))
"""


def read_xcoms(env: dict, dag_id: str, run_id: str = "latest") -> dict:
    res = subprocess.run([str(VENV_BIN / "python"), "-c", XCOM_SCRIPT, dag_id, run_id],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def dags_test(env: dict, dag_id: str, conf: dict, log_path) -> dict:
    """`airflow dags test` with a conf; returns {rc, log, xcom, states, run_id}."""
    with open(log_path, "w") as log:
        res = airflow(env, "dags", "test", dag_id, "--conf", json.dumps(conf), stdout=log,
                      stderr=subprocess.STDOUT)
    out = read_xcoms(env, dag_id)
    out["rc"] = res.returncode
    out["log"] = Path(log_path).read_text(errors="replace")
    return out


def airflow(env: dict, *args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "airflow"), *args], env=env, **kwargs)
