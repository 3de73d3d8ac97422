"""Alert content, channel selection, de-duplication and delivery to real loopback servers."""
import asyncio
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from slimeflow.notifiers import channels
from slimeflow.notifiers.message import build_alert, classify, signature, tail_lines
from tests.e2e.loopback import SmtpSink, WebhookSink

ROOT = Path(__file__).resolve().parents[2]

OOM_MSG = ("training job slime-abc on node gpu0 ended FAILED: cause OOM; fix: set "
           "grad_reduce_in_bf16=true (drops --accumulate-allreduce-grads-in-fp32) or lower "
           "--max-tokens-per-gpu through extra_train_args. Last 40 log lines:\n"
           + "\n".join(f"[2026-01-01 00:00:{i:02d}] train.py:1 - rollout {i}: {{}}" for i in range(38))
           + "\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
           + "\nRuntimeError: job died")


class TrainingFailed(RuntimeError):
    pass


def test_explicit_cause_from_train_and_30_line_cap():
    alert, sig = build_alert(severity="failure", dag_id="d", run_id="r", task_id="train",
                             try_number=1, max_tries=1, exception=TrainingFailed(OOM_MSG),
                             params={"nodes": ["gpu0", "gpu1"]})
    assert alert.cause == "OOM" and "grad_reduce_in_bf16=true" in alert.fix
    assert alert.node == "gpu0"
    assert len(alert.lines) == 30 and "CUDA out of memory" in "\n".join(alert.lines)
    assert alert.summary.startswith("training job slime-abc on node gpu0 ended FAILED")


def test_causes_from_logs_and_messages():
    assert classify("train", RuntimeError("job died"), ["NCCL error: unhandled system error"])[0] == "NCCL"
    assert classify("train", RuntimeError("x"), ["torch.OutOfMemoryError: CUDA out of memory"])[0] == "CUDA OOM"
    cause, fix = classify("train", RuntimeError("the head node gpu0 is unreachable over SSH for 600 s"), [])
    assert cause == "node lost" and "reachable" in fix
    assert classify("train", RuntimeError("no rollout line for 120 min: the job stalled"), [])[0] == "stalled"
    assert classify("train", RuntimeError("Task received SIGTERM signal"), [])[0] == "cancelled"
    cause, fix = classify("check_cluster", RuntimeError(
        "node sim_node_0 has 0.0 GB free at /b but needs 170 GB; choose a base_folder on a larger "
        "volume."), [])
    assert cause == "preflight" and fix == "choose a base_folder on a larger volume"
    assert classify("convert", RuntimeError("converter exited 1"), [])[0] == "convert"
    assert classify("download_model", RuntimeError("hf download failed"), [])[0] == "download"
    assert classify("patch_fla", RuntimeError("git apply failed"), [])[0] == "patch"


def test_signature_ignores_numbers_but_not_the_failure():
    a = signature(RuntimeError("x"), "job slime-1-a2 failed after 31 s")
    assert a == signature(RuntimeError("y"), "job slime-1-a3 failed after 95 s")
    assert a != signature(RuntimeError("y"), "job slime-1 was stopped")
    assert tail_lines(["a", "", "b", "a"], ["c"], limit=2) == ["b", "c"]


def test_renderings_carry_every_fact():
    alert, _ = build_alert(severity="retry", dag_id="dag1", run_id="manual__1", task_id="preflight",
                           map_index=1, try_number=1, max_tries=3, exception=RuntimeError(
                               "node n1 <b>: disk; do x"), task_node="n1",
                           log_url="http://ui/dags/dag1/runs/manual__1/tasks/preflight/mapped/1")
    text, html = alert.text(), alert.html()
    for s in ("dag1", "manual__1", "preflight[1]", "n1", "1 of 3", "will retry"):
        assert s in text and s in html
    assert "&lt;b&gt;" in html and "<b>" not in html.split("</h3>")[1].split("<table>")[0]
    assert "<http://ui/dags/dag1/runs/manual__1/tasks/preflight/mapped/1|" in text


@pytest.fixture(scope="module")
def airflow_db():
    subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], check=True,
                   capture_output=True, env=dict(os.environ))


@pytest.fixture
def sinks(monkeypatch):
    with SmtpSink() as smtp, WebhookSink() as hook:
        monkeypatch.setenv("AIRFLOW_CONN_SLIMEFLOW_SMTP", smtp.conn_json())
        monkeypatch.setenv("AIRFLOW_CONN_SLIMEFLOW_SLACK", hook.conn_json())
        monkeypatch.setenv("AIRFLOW_VAR_SLIMEFLOW_ALERT_EMAIL_TO", "oncall@example.com,ml@example.com")
        yield smtp, hook


def _context(run_id, try_number, exc, task_id="train"):
    ti = SimpleNamespace(dag_id="slime_qwen3_4b", run_id=run_id, task_id=task_id, map_index=-1,
                         try_number=try_number, max_tries=2,
                         log_url=f"http://localhost:8080/dags/slime_qwen3_4b/runs/{run_id}/tasks/"
                                 f"{task_id}?try_number={try_number}")
    return {"ti": ti, "exception": exc, "params": {"nodes": ["gpu0"]},
            "task": SimpleNamespace(retries=2)}


def test_channels_from_connections_variable_or_none(monkeypatch):
    for k in ("AIRFLOW_CONN_SLIMEFLOW_SLACK", "AIRFLOW_CONN_SLIMEFLOW_SMTP",
              "AIRFLOW_CONN_SLIMEFLOW_APPRISE", "AIRFLOW_VAR_SLIMEFLOW_ALERT_CHANNELS"):
        monkeypatch.delenv(k, raising=False)
    assert channels.configured_channels() == []
    monkeypatch.setenv("AIRFLOW_CONN_SLIMEFLOW_APPRISE",
                       '{"conn_type": "apprise", "extra": {"config": {"path": "json://127.0.0.1:9/"}}}')
    assert [c.kind for c in channels.configured_channels()] == ["apprise"]
    monkeypatch.setenv("AIRFLOW_VAR_SLIMEFLOW_ALERT_CHANNELS",
                       '["slack:ops_slack", {"type": "email", "conn_id": "ops_smtp", '
                       '"to": ["a@x"], "min_severity": "failure"}]')
    got = channels.configured_channels()
    assert [(c.kind, c.conn_id, c.to) for c in got] == [("slack", "ops_slack", ()),
                                                       ("email", "ops_smtp", ("a@x",))]
    assert not got[1].wants("retry") and got[1].wants("failure")


def test_no_channel_logs_a_notice(monkeypatch, caplog, capsys, airflow_db):
    for k in ("AIRFLOW_CONN_SLIMEFLOW_SLACK", "AIRFLOW_CONN_SLIMEFLOW_SMTP",
              "AIRFLOW_CONN_SLIMEFLOW_APPRISE", "AIRFLOW_VAR_SLIMEFLOW_ALERT_CHANNELS"):
        monkeypatch.delenv(k, raising=False)
    from slimeflow.notifiers.callbacks import SlimeflowNotifier

    caplog.set_level("INFO")
    out = SlimeflowNotifier("failure")._notify(_context("manual__none", 1, RuntimeError("boom")))
    assert out["skipped"] == "no channel"
    logged = caplog.text + capsys.readouterr().out  # structlog writes to stdout
    assert "no channel configured" in logged and "boom" in logged


def test_retries_of_the_same_failure_are_sent_once_then_the_final_failure(sinks, airflow_db):
    from slimeflow.notifiers.callbacks import SlimeflowNotifier

    smtp, hook = sinks
    run_id = f"manual__dedupe_{os.getpid()}"
    exc1 = TrainingFailed(OOM_MSG.replace("slime-abc", "slime-abc-a2"))
    exc2 = TrainingFailed(OOM_MSG.replace("slime-abc", "slime-abc-a3"))
    r1 = SlimeflowNotifier("retry")._notify(_context(run_id, 1, exc1))
    r2 = SlimeflowNotifier("retry")._notify(_context(run_id, 2, exc2))
    r3 = SlimeflowNotifier("failure")._notify(_context(run_id, 3, exc2))
    assert sorted(r1["sent"]) == ["email:slimeflow_smtp", "slack:slimeflow_slack"]
    assert r2["skipped"] == "duplicate"
    assert sorted(r3["sent"]) == ["email:slimeflow_smtp", "slack:slimeflow_slack"]
    assert len(smtp.wait(2)) == 2 and len(hook.wait(2)) == 2
    retry_mail, fail_mail = smtp.messages
    assert "will retry" in retry_mail["Subject"] and "FAILED: OOM" in fail_mail["Subject"]
    assert fail_mail["X-Envelope-To"] == "oncall@example.com,ml@example.com"
    body = SmtpSink.body(fail_mail)
    assert "grad_reduce_in_bf16=true" in body and "CUDA out of memory" in body
    assert f"/dags/slime_qwen3_4b/runs/{run_id}/tasks/train?try_number=3" in body
    slack = hook.posts[1]["json"]["text"]
    assert hook.posts[1]["path"] == "/services/T000/B000/XXXX"
    assert "*Cause*: OOM" in slack and "*Node*: gpu0" in slack and "*Try*: 3 of 3" in slack
    assert slack.count("\n[2026-01-01") <= 30


def test_deadline_callback_warns_the_channels(sinks, airflow_db):
    from slimeflow.notifiers.callbacks import deadline_missed

    smtp, hook = sinks
    ctx = {"dag_run": {"dag_id": "slime_qwen3_4b", "dag_run_id": f"scheduled__{os.getpid()}",
                       "state": "running", "start_date": "2026-01-01T00:00:00Z",
                       "conf": {"nodes": ["gpu0"]}},
           "deadline": {"id": "x", "deadline_time": "2026-01-02T00:00:00Z"}}
    out = asyncio.run(deadline_missed(recipe="qwen3-4b", expected_hours=24.0, context=ctx))
    assert out == "sent via slack:slimeflow_slack, email:slimeflow_smtp"
    text = hook.wait(1)[0]["json"]["text"]
    assert "overdue" in text and "after the expected 24 h" in text and "*Cause*: deadline" in text


def test_publish_checkpoint_sets_the_asset_event_extra():
    from slimeflow.operations import checkpoint_asset, publish_checkpoint
    from slimeflow.recipes import load_recipe

    asset = checkpoint_asset(load_recipe("qwen3-4b"))
    events = {asset: SimpleNamespace(extra={})}
    publish_checkpoint({"task": SimpleNamespace(outlets=[asset]), "outlet_events": events},
                       {"save_dir": "/b/s", "iteration": 3, "path": "/b/s/iter_0000003"})
    assert events[asset].extra == {"save_dir": "/b/s", "iteration": 3, "path": "/b/s/iter_0000003"}
