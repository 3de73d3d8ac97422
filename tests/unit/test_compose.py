"""docker-compose.yaml and Dockerfile, checked without docker: services, mounts, environment,
healthchecks, and that host key checking is never turned off."""
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
AIRFLOW_SERVICES = {"airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                    "airflow-triggerer"}


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((ROOT / "docker-compose.yaml").read_text())


def test_services(compose):
    services = compose["services"]
    assert set(services) == AIRFLOW_SERVICES | {"postgres", "airflow-init"}
    commands = {name: services[name]["command"] for name in AIRFLOW_SERVICES}
    assert commands == {"airflow-apiserver": "api-server", "airflow-scheduler": "scheduler",
                        "airflow-dag-processor": "dag-processor",
                        "airflow-triggerer": "triggerer"}
    assert services["postgres"]["image"].startswith("postgres:")
    assert "8080" in services["airflow-apiserver"]["ports"][0]


def test_every_long_running_service_has_a_healthcheck_and_waits_for_its_dependencies(compose):
    s = compose["services"]
    for name in AIRFLOW_SERVICES | {"postgres"}:
        hc = s[name]["healthcheck"]
        assert hc["test"][0] in ("CMD", "CMD-SHELL") and hc["interval"] and hc["retries"], name
    assert "pg_isready" in s["postgres"]["healthcheck"]["test"]
    assert "/api/v2/monitor/health" in " ".join(s["airflow-apiserver"]["healthcheck"]["test"])
    assert "8974/health" in " ".join(s["airflow-scheduler"]["healthcheck"]["test"])
    assert "TriggererJob" in s["airflow-triggerer"]["healthcheck"]["test"][1]
    assert "DagProcessorJob" in s["airflow-dag-processor"]["healthcheck"]["test"][1]
    for name in AIRFLOW_SERVICES:
        deps = s[name]["depends_on"]
        assert deps["postgres"]["condition"] == "service_healthy", name
        assert deps["airflow-init"]["condition"] == "service_completed_successfully", name
        assert s[name]["restart"] == "always"


def test_image_mounts_and_environment(compose):
    s = compose["services"]
    for name in AIRFLOW_SERVICES | {"airflow-init"}:
        svc = s[name]
        assert svc["build"] == "." and "slimeflow-airflow" in svc["image"]
        env = svc["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor", name
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == \
            "http://airflow-apiserver:8080/execution/"
        # secrets come from .env, never written into the file
        assert env["AIRFLOW__CORE__FERNET_KEY"].startswith("${AIRFLOW_FERNET_KEY:?")
        assert env["AIRFLOW__API_AUTH__JWT_SECRET"].startswith("${AIRFLOW_JWT_SECRET:?")
        assert env["PYTHONPATH"] == "/opt/airflow/plugins"
        mounts = {m.split(":")[-2] if m.count(":") >= 2 else m.split(":")[1]: m
                  for m in svc["volumes"]}
        for folder in ("dags", "plugins", "include"):
            assert mounts[f"/opt/airflow/{folder}"] == f"./{folder}:/opt/airflow/{folder}"
        for f in ("id_ed25519", "known_hosts"):
            m = mounts[f"/home/airflow/.ssh/{f}"]
            assert m.endswith(":ro"), m
    assert s["airflow-init"]["environment"]["_AIRFLOW_DB_MIGRATE"] == "true"


def test_host_key_checking_stays_on_and_celery_trap_is_documented():
    text = (ROOT / "docker-compose.yaml").read_text()
    config = "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#"))
    assert not re.search(r"no_host_key_check|StrictHostKeyChecking\s*[=:]?\s*no", config, re.I)
    assert "visibility_timeout" in text.lower()
    ops = (ROOT / "docs" / "operations.md").read_text()
    assert "visibility_timeout" in ops


def test_dockerfile_builds_from_our_pins():
    text = (ROOT / "Dockerfile").read_text()
    # the official image by default; the build arg lets make test-compose use a local one
    assert re.search(r"^ARG AIRFLOW_IMAGE=apache/airflow:3\.3\.2-python3\.11$", text, re.M)
    assert re.search(r"^FROM \$\{AIRFLOW_IMAGE\}$", text, re.M)
    assert "-r /opt/slimeflow/requirements.txt -c /opt/slimeflow/constraints.txt" in text
    assert "COPY --chown=airflow:root requirements.txt constraints.txt" in text
    for folder in ("dags/", "plugins/", "include/"):
        assert f"COPY --chown=airflow:root {folder}" in text
    reqs = (ROOT / "requirements.txt").read_text()
    for pin in ("apache-airflow==3.3.2", "apache-airflow-providers-slack==",
                "apache-airflow-providers-smtp==", "apache-airflow-providers-apprise=="):
        assert pin in reqs
    pinned = dict(l.split("==", 1) for l in (ROOT / "constraints.txt").read_text().split()
                  if "==" in l)
    for line in reqs.splitlines():
        if "==" in line and not line.startswith("#"):
            name, ver = line.split("==")
            assert pinned.get(name) == ver or pinned.get(name.replace("-", "_")) == ver, line
