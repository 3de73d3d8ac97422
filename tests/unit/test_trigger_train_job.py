"""TrainJobTrigger round-trips through serialize() with no secret in it; node leases behave."""
import importlib.util
import json
import time
from pathlib import Path

from slimeflow.triggers.train_job import TrainJobTrigger, line_time

ROOT = Path(__file__).resolve().parents[2]


def _trigger():
    return TrainJobTrigger(head="gpu0", nodes=["gpu0", "gpu1"], node_dir="/b/.slimeflow/node/x",
                           base_id="slimeflow-d-r-1", sub_id="slimeflow-d-r-1-a2",
                           watch_argv=["python3", "/b/.slimeflow/node/x/jobwatch.py"],
                           stop_argv=["ray", "job", "stop", "x"],
                           stop_env={}, ray_stop_argv=["ray", "stop"],
                           cwd="/root/slime", total=300, poll_interval=15,
                           unreachable_timeout=600, stall_timeout=7200, start_iteration=11)


def test_serialize_round_trip_and_no_secrets():
    path, kw = _trigger().serialize()
    assert path == "slimeflow.triggers.train_job.TrainJobTrigger"
    again = TrainJobTrigger(**kw)
    assert again.serialize() == (path, kw)
    text = json.dumps(kw)  # JSON-serialisable as the triggerer stores it
    assert "TOKEN" not in text and "key" not in text.lower()


def test_line_time():
    assert line_time("[2026-01-02 03:04:05] rollout.py:1 - rollout 3: {}") is not None
    assert line_time("no timestamp") is None


def _lease():
    spec = importlib.util.spec_from_file_location("lease", ROOT / "include/node/lease.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_lease_acquire_hold_break_release(tmp_path):
    lease = _lease()
    d = str(tmp_path)
    assert lease.acquire(d, "n0", "dag/run1")["acquired"]
    assert lease.acquire(d, "n0", "dag/run1")["again"]  # same run: re-entrant
    other = lease.acquire(d, "n0", "dag/run2", stale_after=60)
    assert not other["acquired"] and other["held_by"]["run"] == "dag/run1"
    assert lease.acquire(d, "n1", "dag/run2")["acquired"]  # keyed by node
    # heartbeat refreshes only our own
    hb = lease.heartbeat(d, ["n0", "n1"], "dag/run1", job="j")
    assert hb == {"n0": {"held": True}, "n1": {"held": False, "held_by": "dag/run2"}}
    # stale: old heartbeat and no Ray job running (no ray address) -> broken aside
    rec = json.loads((tmp_path / "n0.json").read_text())
    rec["heartbeat"] = time.time() - 3600
    (tmp_path / "n0.json").write_text(json.dumps(rec))
    got = lease.acquire(d, "n0", "dag/run2", stale_after=60)
    assert got["acquired"] and got["broken"]["lease"]["run"] == "dag/run1"
    assert list(tmp_path.glob("n0.json.broken-*"))
    assert not lease.release(d, "n0", "dag/run1")["released"]  # not ours any more
    assert lease.release(d, "n0", "dag/run2")["released"]
    assert not (tmp_path / "n0.json").exists()


def test_overdue_run_warns_once_through_the_alert_channels(monkeypatch):
    """The default deadline warning: the trigger, not Airflow's DeadlineAlert (opt-in)."""
    import asyncio
    import time as _time

    from slimeflow.triggers import train_job

    sent = []

    async def fake_deadline_missed(recipe, expected_hours, context=None):
        sent.append((recipe, expected_hours, context["dag_run"]["run_id"]))
        return "sent via slack"

    import slimeflow.notifiers.callbacks as cb
    monkeypatch.setattr(cb, "deadline_missed", fake_deadline_missed)
    trig = train_job.TrainJobTrigger(
        head="n0", nodes=["n0"], node_dir="/x", base_id="b", sub_id="b", watch_argv=["w"],
        stop_argv=["s"], stop_env={}, ray_stop_argv=["r"], cwd=None, total=4,
        deadline={"at": _time.time() - 1, "recipe": "qwen3-4b", "expected_hours": 24,
                  "dag_id": "d", "run_id": "r1"})
    asyncio.run(trig._check_deadline("RUNNING"))
    asyncio.run(trig._check_deadline("RUNNING"))
    assert sent == [("qwen3-4b", 24.0, "r1")]
    assert trig.serialize()[1]["deadline"]["run_id"] == "r1"
    # not yet due, or already finished: nothing
    trig2 = train_job.TrainJobTrigger(
        head="n0", nodes=["n0"], node_dir="/x", base_id="b", sub_id="b", watch_argv=["w"],
        stop_argv=["s"], stop_env={}, ray_stop_argv=["r"], cwd=None, total=4,
        deadline={"at": _time.time() + 3600, "recipe": "qwen3-4b", "expected_hours": 24})
    asyncio.run(trig2._check_deadline("RUNNING"))
    asyncio.run(trig._check_deadline("SUCCEEDED"))
    assert len(sent) == 1
