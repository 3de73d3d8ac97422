"""Real failures on the simulated cluster reach a real SMTP server and a Slack-webhook receiver."""
import pytest

from tests.e2e.loopback import SmtpSink, WebhookSink
from tests.simcluster.airflow_run import airflow, airflow_env, dags_test, run_conf
from tests.simcluster.cluster import SimCluster, procs_of

pytestmark = pytest.mark.integration
DAG = "slime_qwen3_next_80b_a3b"


@pytest.fixture
def alerting(tmp_path):
    made = []
    with SmtpSink() as smtp, WebhookSink() as hook:
        def make(**kw):
            c = SimCluster.up(tmp_path / f"cluster{len(made)}", rollout_seconds=0.05, **kw)
            made.append(c)
            env = airflow_env(c, tmp_path / "airflow")
            env.update({"AIRFLOW_CONN_SLIMEFLOW_SMTP": smtp.conn_json(),
                        "AIRFLOW_CONN_SLIMEFLOW_SLACK": hook.conn_json(),
                        "AIRFLOW_VAR_SLIMEFLOW_ALERT_EMAIL_TO": "oncall@example.com",
                        "AIRFLOW__API__BASE_URL": "http://airflow.example:8080"})
            env.pop("AIRFLOW_VAR_SLIMEFLOW_ALERT_CHANNELS", None)
            airflow(env, "db", "migrate", capture_output=True, check=True)
            return c, env
        yield make, smtp, hook
    for c in made:
        c.down()
        assert procs_of(str(c.dir)) == []


def test_oom_in_training_sends_one_classified_alert_per_channel(alerting, tmp_path):
    make, smtp, hook = alerting
    cluster, env = make(nodes=1, gpu="H100")
    (cluster.dir / "faults").mkdir(exist_ok=True)
    (cluster.dir / "faults" / "oom").write_text("at=1\n")
    r = dags_test(env, DAG, run_conf(cluster), tmp_path / "oom.log")
    assert r["rc"] != 0 and r["states"]["train"] == "failed"
    assert r["states"]["teardown"] == "success"
    mails, posts = smtp.wait(1), hook.wait(1)
    assert len(mails) == 1 and len(posts) == 1, (mails, posts, r["log"][-3000:])
    mail = mails[0]
    assert mail["Subject"] == f"[slimeflow] {DAG} train FAILED: CUDA OOM"
    assert mail["X-Envelope-To"] == "oncall@example.com"
    body = SmtpSink.body(mail)
    for fact in ("sim_node_0", r["run_id"], "grad_reduce_in_bf16=true", "CUDA out of memory",
                 f"http://airflow.example:8080/dags/{DAG}/runs/"):
        assert fact in body, fact
    text = posts[0]["json"]["text"]
    assert "*Cause*: CUDA OOM" in text and "*Node*: sim_node_0" in text and "*Task*: train" in text
    assert "*Try*: 1 of 1" in text
    tail = text.split("```")[1].strip().splitlines()
    assert 5 <= len(tail) <= 30 and any("OutOfMemoryError" in l for l in tail)
    assert "slimeflow alert sent via" in r["log"]


def test_not_enough_disk_alert_names_node_and_fix(alerting, tmp_path):
    make, smtp, hook = alerting
    cluster, env = make(nodes=1, gpu="H100", disk_mb=8)
    r = dags_test(env, DAG, run_conf(cluster), tmp_path / "disk.log")
    assert r["rc"] != 0 and r["states"]["check_cluster"] == "failed"
    posts = hook.wait(1)
    assert len(posts) == 1, r["log"][-3000:]
    text = posts[0]["json"]["text"]
    assert "check_cluster FAILED: preflight" in text and "*Node*: sim_node_0" in text
    fix = next(l for l in text.splitlines() if l.startswith("*Fix*: "))
    assert "choose a base_folder on a larger volume" in fix
    assert "has 0.0 GB free" in text
    assert len(smtp.wait(1)) == 1


def test_a_sick_gpu_fails_check_cluster_and_a_warning_reaches_on_call_first(alerting, tmp_path):
    make, smtp, hook = alerting
    cluster, env = make(nodes=1, gpu="H100")
    cluster.fault("gpu-pcie", node=0, gpu=3, width=8)   # warn: alert, go on
    cluster.fault("gpu-ecc", node=0, gpu=5, count=3)    # fail: refuse the node
    r = dags_test(env, DAG, run_conf(cluster), tmp_path / "gpu.log")
    assert r["rc"] != 0 and r["states"]["check_cluster"] == "failed"
    assert r["states"].get("download_model") in ("upstream_failed", None), r["states"]
    posts = hook.wait(2)
    texts = [p["json"]["text"] for p in posts]
    warn = [t for t in texts if "GPU health warning" in t]
    assert len(warn) == 1 and "sim_node_0: GPU 3 (0000:5d:00.0)'s PCIe link runs at x8 of x16" \
        in warn[0], texts
    fail = [t for t in texts if "check_cluster FAILED" in t]
    assert len(fail) == 1 and "drain sim_node_0: GPU 5 (0000:ab:00.0) has 3 uncorrectable ECC " \
        "errors since the driver loaded" in fail[0], texts
    assert "*Node*: sim_node_0" in fail[0]
