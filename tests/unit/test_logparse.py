"""slime's progress lines as they really reach the driver log through Ray 2.60: colour codes,
the `(Actor pid=N[, ip=X])` prefix, the dedup suffix, nan/inf metrics (SLIME_FACTS.md)."""
import asyncio
import math

import pytest

from slimeflow.triggers import train_job
from slimeflow.triggers.train_job import TrainJobTrigger, json_safe, line_time
from slimeflow.utils import logparse

ESC = "\x1b"
# seen in a real Ray 2.60 driver log (job-driver-<id>.log), byte for byte
REAL_LOCAL = (f"{ESC}[36m(MegatronTrainRayActor pid=538){ESC}[0m [2026-12-01 19:53:44] "
              f"train.py:10 - rollout 0: {{'rollout/raw_reward': nan, 'x': inf, 'y': -inf}}")
REAL_DEDUP = (f"{ESC}[36m(MegatronTrainRayActor pid=670){ESC}[0m [2026-12-01 19:53:44] "
              f"train.py:10 - rollout 1: {{'rollout/raw_reward': 0.5}}{ESC}[32m [repeated 10x "
              f"across cluster] (Ray deduplicates logs by default. Set RAY_DEDUP_LOGS=0 to disable "
              f"log deduplication, or see https://docs.ray.io/en/master/ray-observability/"
              f"user-guides/configure-logging.html#log-deduplication for more options.){ESC}[0m")
REAL_DEDUP_SHORT = (f"{ESC}[36m(MegatronTrainRayActor pid=670){ESC}[0m [2026-12-01 19:53:44] "
                    f"train.py:11 - step 3: {{'train/loss': 0.25}}{ESC}[32m [repeated 3x across "
                    f"cluster]{ESC}[0m")
# the remote form (prototype run on two namespaced nodes)
REMOTE = (f"{ESC}[36m(MegatronTrainRayActor pid=814, ip=10.231.0.12){ESC}[0m [2026-12-01 "
          f"19:53:45] train.py:10 - step 7: {{'train/loss': 0.02, 'train/grad_norm': 1.5}}")


@pytest.mark.parametrize("line,kind,rid", [
    (REAL_LOCAL, "rollout", 0), (REAL_DEDUP, "rollout", 1), (REAL_DEDUP_SHORT, "step", 3),
    (REMOTE, "step", 7),
    ("(pid=12) [2026-12-01 19:53:44] rollout.py:3 - rollout 5: {'rollout/raw_reward': 1}",
     "rollout", 5),
    ("(RolloutManager pid=99, ip=fe80::1) rollout 6: {'raw_reward': 0.1}", "rollout", 6),
    ("[2026-12-01 19:53:44] train.py:10 - rollout 2: {'rollout/raw_reward': 0.3}", "rollout", 2),
])
def test_progress_lines_behind_rays_prefix_colours_and_dedup_suffix(line, kind, rid):
    parsed = logparse.parse_line(line)
    assert parsed is not None and parsed[:2] == (kind, rid), logparse.clean_line(line)
    assert parsed[2]  # the metrics dict was read, not dropped


def test_clean_line_gives_slimes_own_line():
    assert logparse.clean_line(REAL_DEDUP) == ("[2026-12-01 19:53:44] train.py:10 - rollout 1: "
                                               "{'rollout/raw_reward': 0.5}")
    assert logparse.clean_line(REMOTE).startswith("[2026-12-01 19:53:45] train.py:10 - step 7:")
    assert logparse.clean_line(f"{ESC}[33m(raylet){ESC}[0m warning") == "warning"
    assert logparse.clean_line("(autoscaler +2s) Resized") == "Resized"
    plain = "(not a ray prefix) rollout 1: {}"
    assert logparse.clean_line(plain) == plain
    # the task log keeps which actor/node said it, without the colours
    assert logparse.strip_ansi(REMOTE).startswith("(MegatronTrainRayActor pid=814, ip=10.231.0.12) [")


def test_nan_and_inf_metrics_are_read():
    _, _, m = logparse.parse_line(REAL_LOCAL)
    assert math.isnan(m["rollout/raw_reward"]) and m["x"] == math.inf and m["y"] == -math.inf
    _, _, m = logparse.parse_line("step 1: {'train/loss': -inf, 'n': -3, 'g': +2.0, "
                                  "'t': (1, 2), 'np': np.float64(0.5), 'i': np.int64(4)}")
    assert m == {"train/loss": -math.inf, "n": -3, "g": 2.0, "t": [1, 2], "np": 0.5, "i": 4}
    # only literals: names and calls other than those stay unread
    for bad in ("{'a': os.system('x')}", "{'a': foo}", "{'a': -'x'}", "{[1]: 2}"):
        assert logparse.parse_line(f"rollout 1: {bad}") == ("rollout", 1, {}), bad


def test_classify_finds_the_cause_on_prefixed_lines():
    tb = [f"{ESC}[36m(MegatronTrainRayActor pid=404, ip=10.0.0.2){ESC}[0m Traceback (most recent "
          f"call last):",
          f"{ESC}[36m(MegatronTrainRayActor pid=404, ip=10.0.0.2){ESC}[0m ValueError: bad arg"]
    assert logparse.classify(tb)[0] == "Python exception"
    oom = [f"{ESC}[36m(MegatronTrainRayActor pid=404){ESC}[0m torch.OutOfMemoryError: CUDA out "
           f"of memory. [repeated 7x across cluster]"]
    assert logparse.classify(oom)[0] == "CUDA OOM"
    assert logparse.classify(["(pid=3) all fine"])[0] == "unknown"


def test_line_time_reads_the_timestamp_behind_the_prefix():
    assert line_time(REMOTE) is not None and line_time(REAL_DEDUP) is not None


def test_json_safe_metrics():
    assert [json_safe(v) for v in (math.nan, math.inf, -math.inf, 0.5, None, "x")] == [
        "nan", "inf", "-inf", 0.5, None, "x"]


def _run_trigger(monkeypatch, polls):
    """Drive TrainJobTrigger.run against canned jobwatch answers; returns (event, argvs)."""
    answers, argvs = list(polls), []

    async def fake_run_json(self, argv, **kw):
        if any(str(a).endswith("gpuhealth.py") for a in argv):  # the GPU sampler: no GPUs here
            return {"mode": "sample", "gpus": [], "error": "no GPU in this test"}
        argvs.append(argv)
        if "--max-bytes" in argv:  # _write_final
            return {"status": "x"}
        return answers.pop(0)

    monkeypatch.setattr(train_job.AsyncNode, "run_json", fake_run_json)
    trig = TrainJobTrigger(head="gpu0", nodes=["gpu0"], node_dir="/n", base_id="b", sub_id="b",
                           watch_argv=["python3", "/n/jobwatch.py"], stop_argv=["s"],
                           stop_env={}, ray_stop_argv=["r"], cwd=None, total=10,
                           poll_interval=0, stall_timeout=1e9)

    async def first():
        async for ev in trig.run():
            return ev
    return asyncio.run(first()), argvs


def test_the_trigger_follows_real_driver_log_lines(monkeypatch):
    lines = [REAL_LOCAL, REMOTE.replace("step 7", "step 0").replace("0.02", "-inf"), REAL_DEDUP]
    ev, argvs = _run_trigger(monkeypatch, [
        {"status": "RUNNING", "lines": lines, "offset": 100},
        {"status": "SUCCEEDED", "lines": [], "offset": 100, "iteration": 1}])
    p = ev.payload
    assert p["status"] == "SUCCEEDED" and p["rollouts_seen"] == 2
    assert p["progress"]["rollout"] == 2 and p["progress"]["reward"] == 0.5
    assert p["progress"]["loss"] == "-inf"  # strict JSON: the triggerer stores the event
    assert not any(ESC in t for t in p["tail"]) and p["tail"][0].startswith(
        "(MegatronTrainRayActor pid=538) [2026-12-01")
    # the progress handed back to jobwatch (--write-progress) is strict JSON too
    import json
    sent = json.loads(argvs[1][argvs[1].index("--write-progress") + 1])
    assert sent["loss"] == "-inf" and sent["reward"] == 0.5
    ev, _ = _run_trigger(monkeypatch, [{"status": "SUCCEEDED", "lines": [REAL_LOCAL],
                                        "offset": 5}])
    assert ev.payload["progress"]["reward"] == "nan"


def test_the_trigger_classifies_a_failure_from_prefixed_lines(monkeypatch):
    tb = [f"{ESC}[36m(MegatronTrainRayActor pid=404){ESC}[0m Traceback (most recent call last):",
          f"{ESC}[36m(MegatronTrainRayActor pid=404){ESC}[0m RuntimeError: boom"]
    ev, _ = _run_trigger(monkeypatch, [{"status": "FAILED", "lines": tb, "offset": 10}])
    assert ev.payload["status"] == "FAILED" and ev.payload["cause"] == "Python exception"
