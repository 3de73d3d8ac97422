"""Leases held through long steps: a download or a conversion longer than lease_stale_minutes
keeps its leases fresh (slimeflow/leases.py), so that no other run can break them as stale."""
import contextlib
import importlib.util
import json
import time
from pathlib import Path
from types import SimpleNamespace

from slimeflow.config import RunConfig
from slimeflow.hooks.node import Result
from slimeflow.leases import LeaseKeeper, heartbeat_interval
from slimeflow.operators import convert as convert_mod
from slimeflow.operators import download as download_mod

ROOT = Path(__file__).resolve().parents[2]


def _lease():
    spec = importlib.util.spec_from_file_location("keeper_lease", ROOT / "include/node/lease.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class FakeStop:
    """An Event whose wait() returns at once: False `n` times (a beat is due), then True."""

    def __init__(self, n, during=None):
        self.n, self.waits, self.during, self.flag = n, [], during, False

    def wait(self, timeout):
        self.waits.append(timeout)
        if self.flag or len(self.waits) > self.n:
            return True
        if self.during:  # time passes before the beat that is due now
            self.during(len(self.waits))
        return False

    def set(self):
        self.flag = True


class Log:
    def __init__(self):
        self.lines = []

    def warning(self, msg, *a):
        self.lines.append(msg % a)


def test_interval_is_a_third_of_the_stale_time_at_most_a_minute():
    assert heartbeat_interval(900) == 60.0      # the default 15 min
    assert heartbeat_interval(90) == 30.0
    assert heartbeat_interval(0.6) == 1.0       # never a busy loop


def test_the_keeper_beats_at_the_start_and_every_interval_until_the_block_ends():
    beats = []
    stop = FakeStop(3)
    with LeaseKeeper(lambda: beats.append(1) or {"n0": {"held": True}}, 20.0, Log(),
                     stop=stop) as k:
        pass
    assert k.beats == 4 and len(beats) == 4 and stop.waits[:4] == [20.0] * 4


def test_a_failed_beat_is_logged_and_the_next_one_tries_again():
    calls, log = [], Log()

    def beat():
        calls.append(1)
        if len(calls) == 2:
            raise OSError("ssh dropped")
        return {"n0": {"held": True}, "n1": {"held": False, "held_by": "dag/other"}}
    with LeaseKeeper(beat, 5.0, log, stop=FakeStop(3)) as k:
        pass
    assert (k.beats, k.failures) == (3, 1) and len(calls) == 4
    assert any("ssh dropped" in l for l in log.lines)
    lost = [l for l in log.lines if "no longer holds" in l]
    assert len(lost) == 1 and "dag/other" in lost[0]  # once, not on every beat


def test_a_lease_kept_through_a_long_step_is_not_broken(tmp_path):
    """Without the keeper, a step longer than stale_after leaves a lease another run breaks."""
    lease = _lease()
    d = str(tmp_path)
    assert lease.acquire(d, "n0", "dag/run1")["acquired"]

    def age(_):  # each wait stands for a long stretch: the heartbeat gets an hour old
        rec = json.loads((tmp_path / "n0.json").read_text())
        rec["heartbeat"] = time.time() - 3600
        (tmp_path / "n0.json").write_text(json.dumps(rec))
    with LeaseKeeper(lambda: lease.heartbeat(d, ["n0"], "dag/run1"), 1.0, Log(),
                     stop=FakeStop(2, during=age)):
        pass
    # the keeper's last beat came after the last ageing: the lease is fresh
    assert not lease.acquire(d, "n0", "dag/run2", stale_after=60)["acquired"]
    age(0)  # and this is what a step without heartbeats leaves behind
    assert lease.acquire(d, "n0", "dag/run2", stale_after=60)["acquired"]


def _cfg():
    return RunConfig.from_params("qwen3-4b", {"nodes": ["gpu0", "gpu1"], "master_addr": "10.0.0.1",
                                              "lease_stale_minutes": 3},
                                 hosts=["10.0.0.1", "10.0.0.2"])


CONTEXT = {"dag": SimpleNamespace(dag_id="d"), "run_id": "r1"}


def test_keep_leases_refreshes_each_nodes_own_lease_on_that_node(monkeypatch):
    import slimeflow.hooks.node as node_mod
    import slimeflow.leases as leases_mod

    ran = []

    class FakeHook:
        def __init__(self, ssh_conn_id):
            self.node, self.client = ssh_conn_id, None

        def run(self, step, node_dir, **kw):
            ran.append((self.node, step.node, step.argv))
            return Result(self.node, 0, json.dumps({self.node: {"held": True}}), "", [])
    monkeypatch.setattr(node_mod, "NodeHook", FakeHook)
    made = []

    class Keeper(LeaseKeeper):
        def __init__(self, beat, interval, log=None, stop=None):
            made.append(interval)
            super().__init__(beat, interval, log, stop=FakeStop(0))
    monkeypatch.setattr(leases_mod, "LeaseKeeper", Keeper)
    op = convert_mod.ConvertOperator(task_id="convert")
    op.recipe = "qwen3-4b"
    with op.keep_leases(_cfg(), CONTEXT) as k:
        pass
    assert made == [60.0] and k.beats == 1 and not k.lost  # 3 min stale -> every 60 s
    assert sorted((h, n) for h, n, _ in ran) == [("gpu0", "gpu0"), ("gpu1", "gpu1")]
    for h, _, argv in ran:
        assert argv[1].endswith("/lease.py") and argv[2] == "heartbeat"
        assert argv[argv.index("--node") + 1] == h and argv[argv.index("--run") + 1] == "d/r1"


def _recording_keeper(events):
    @contextlib.contextmanager
    def keep(cfg, context):
        events.append("leases kept")
        try:
            yield
        finally:
            events.append("leases left")
    return keep


def test_convert_runs_the_converter_inside_keep_leases(monkeypatch):
    events = []
    op = convert_mod.ConvertOperator(task_id="convert")
    op.recipe = "qwen3-4b"
    monkeypatch.setattr(op, "keep_leases", _recording_keeper(events))
    answers = iter([{"state": "missing"}, {"state": "stale", "reason": "no manifest"}, {}])
    monkeypatch.setattr(op, "run_json", lambda cfg, step, **kw: next(answers))
    monkeypatch.setattr(op, "facts", lambda ctx: {})

    def run_step(cfg, step, **kw):
        events.append("convert")
        return Result("gpu0", 0, "", "", [])
    monkeypatch.setattr(op, "run_step", run_step)
    ti = SimpleNamespace(xcom_pull=lambda task_ids: {"hf_commit": "abc"})
    op.work(_cfg(), dict(CONTEXT, ti=ti))
    assert events == ["leases kept", "convert", "leases left"]


def test_download_runs_hf_inside_keep_leases(monkeypatch):
    events = []
    op = download_mod.DownloadModelOperator(task_id="download_model")
    op.recipe = "qwen3-4b"
    monkeypatch.setattr(op, "keep_leases", _recording_keeper(events))
    monkeypatch.setattr(download_mod, "_hf_token_env", lambda: {})
    monkeypatch.setattr(op, "facts", lambda ctx: {"storage_shared": True})
    monkeypatch.setattr(op, "probes", lambda ctx: [])
    monkeypatch.setattr(op, "ensure", lambda *a: events.append("hf download") or {})
    op.work(_cfg(), dict(CONTEXT))
    assert events == ["leases kept", "hf download", "leases left"]


def test_the_trigger_refreshes_the_workers_leases_on_the_workers(monkeypatch):
    """jobwatch on the head sees only the head's lease file on local storage."""
    import asyncio

    from slimeflow.triggers import train_job

    calls = []

    async def fake_run_json(self, argv, **kw):
        if any(str(a).endswith("gpuhealth.py") for a in argv):  # the GPU sampler: no GPUs here
            return {"mode": "sample", "gpus": [], "error": "no GPU in this test"}
        calls.append((self.conn_id, argv))
        return {"gpu1": {"held": True}}
    monkeypatch.setattr(train_job.AsyncNode, "run_json", fake_run_json)
    trig = train_job.TrainJobTrigger(
        head="gpu0", nodes=["gpu0", "gpu1"], node_dir="/n", base_id="b", sub_id="b-a2",
        watch_argv=["python3", "/n/jobwatch.py", "--lease-dir", "/b/leases", "--lease-run",
                    "d/r1"], stop_argv=["s"], stop_env={}, ray_stop_argv=["r"], cwd=None,
        total=4, lease_stale=900)
    asyncio.run(trig._beat_workers())
    asyncio.run(trig._beat_workers())  # within the interval: no second beat
    assert calls == [("gpu1", ["python3", "/n/lease.py", "heartbeat", "--dir", "/b/leases",
                               "--node", "gpu1", "--run", "d/r1", "--job", "b-a2"])]
    trig._worker_beat_at -= 61  # one interval later (900 s stale -> every 60 s)
    asyncio.run(trig._beat_workers())
    assert len(calls) == 2
    assert trig.serialize()[1]["lease_stale"] == 900.0
