"""Causes that hold on real logs, the node and actor they name, DASHBOARD_DOWN in the trigger, and
what a cancel loses. Ray's texts: Ray 2.60 exceptions.py (ActorDiedError) and the raylet
binary's memory-monitor strings; the prefix as seen in a real driver log (SLIME_FACTS.md)."""
import asyncio
import json

import pytest

from slimeflow.notifiers.message import classify as alert_classify, find_node
from slimeflow.hooks.ray import ray_node_ips
from slimeflow.triggers import train_job
from slimeflow.triggers.train_job import TrainJobTrigger, resume_note
from slimeflow.utils import logparse

ESC = "\x1b"
NCCL_REMOTE = (f"{ESC}[36m(MegatronTrainRayActor pid=814, ip=10.231.0.12){ESC}[0m "
               f"torch.distributed.DistBackendError: NCCL error in: ProcessGroupNCCL.cpp:1970, "
               f"unhandled system error")
ROLLOUT = (f"{ESC}[36m(MegatronTrainRayActor pid=538){ESC}[0m [2026-12-01 19:53:44] "
           f"train.py:10 - rollout {{}}: {{'rollout/raw_reward': 0.5}}")
# what the driver prints when an actor's worker died (Ray 2.60 ActorDiedError.__init__)
ACTOR_DIED = [
    "Traceback (most recent call last):",
    '  File "/root/slime/train.py", line 90, in <module>',
    "ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task.",
    "\tclass_name: MegatronTrainRayActor",
    "\tactor_id: 5a3b0f5bd9cbe7f1c0f6e2b101000000",
    "\tpid: 814",
    "\tnamespace: 0f6c",
    "\tip: 10.231.0.12",
    "The actor is dead because its worker process has died. Worker exit type: SYSTEM_ERROR "
    "Worker exit detail: Worker unexpectedly exits with a connection error code 2. End of file.",
]
HOST_OOM_DIED = ACTOR_DIED[:-1] + [
    "The actor is dead because its worker process has died. Worker exit type: NODE_OUT_OF_MEMORY"
    " Worker exit detail: Task was killed due to the node running low on memory.",
    "Memory on the node (IP: 10.231.0.12, ID: 7e1c) was 121.50GB used / 128.00GB limit (0.95)",
]


def test_host_oom_and_cuda_oom_are_different_causes_with_different_fixes():
    cause, fix = logparse.classify(HOST_OOM_DIED)
    assert cause == "host OOM"
    assert "host RAM" in fix and "#1851" in fix and "do not help" in fix
    assert logparse.classify(["ray.exceptions.OutOfMemoryError: Task was killed due to the "
                              "node running low on memory."])[0] == "host OOM"
    assert logparse.classify(["1 worker(s) were killed due to the node running low on "
                              "memory."])[0] == "host OOM"
    cuda, cfix = logparse.classify([f"{ESC}[36m(MegatronTrainRayActor pid=1){ESC}[0m "
                                    "torch.OutOfMemoryError: CUDA out of memory. Tried to "
                                    "allocate 2.00 GiB"])
    assert cuda == "CUDA OOM" and "--max-tokens-per-gpu" in cfix and cfix != fix


def test_the_actor_and_node_of_a_cause():
    c = logparse.cause_of_line(NCCL_REMOTE)
    assert (c["cause"], c["actor"], c["pid"], c["ip"]) == ("NCCL", "MegatronTrainRayActor", 814,
                                                          "10.231.0.12")
    # a prefix without ip= is the driver's node, the head
    c = logparse.cause_of_line(f"{ESC}[36m(MegatronTrainRayActor pid=9){ESC}[0m NCCL WARN x")
    assert c["ip"] is None and c["remote"] is False
    # the driver's ActorDiedError names class and ip on the lines after it
    c = logparse.failure_cause(ACTOR_DIED)
    assert (c["cause"], c["actor"], c["pid"], c["ip"]) == ("Ray actor died",
                                                          "MegatronTrainRayActor", 814,
                                                          "10.231.0.12")
    c = logparse.failure_cause(HOST_OOM_DIED)
    assert (c["cause"], c["actor"], c["ip"]) == ("host OOM", "MegatronTrainRayActor",
                                                "10.231.0.12")


def test_an_oom_outranks_an_earlier_nccl_error_but_not_the_other_way_round():
    nccl = logparse.cause_of_line(NCCL_REMOTE)
    oom = logparse.cause_of_line("torch.OutOfMemoryError: CUDA out of memory.")
    died = logparse.cause_of_line(ACTOR_DIED[2])
    assert logparse.better_cause(nccl, oom) is oom
    assert logparse.better_cause(oom, nccl) is oom
    assert logparse.better_cause(nccl, died) is nccl  # the consequence never replaces it
    assert logparse.better_cause(nccl, dict(nccl, line="second")) is nccl  # the first stays


def _trigger(**kw):
    args = dict(head="gpu0", nodes=["gpu0", "gpu1"], node_dir="/n", base_id="b", sub_id="b",
                watch_argv=["python3", "/n/jobwatch.py", "--save-dir", "/base/ckpt"],
                stop_argv=["s"], stop_env={}, ray_stop_argv=["r"], cwd=None, total=100,
                poll_interval=0, stall_timeout=1e9,
                node_ips={"10.231.0.11": "gpu0", "10.231.0.12": "gpu1"})
    args.update(kw)
    return TrainJobTrigger(**args)


def _run(monkeypatch, polls, trig=None, logs=None):
    answers, argvs = list(polls), []

    async def fake_run_json(self, argv, **kw):
        if any(str(a).endswith("gpuhealth.py") for a in argv):  # the GPU sampler: no GPUs here
            return {"mode": "sample", "gpus": [], "error": "no GPU in this test"}
        argvs.append(argv)
        if "--max-bytes" in argv:  # _write_final
            return {"status": "x"}
        return answers.pop(0)

    monkeypatch.setattr(train_job.AsyncNode, "run_json", fake_run_json)
    trig = trig or _trigger()
    if logs is not None:
        class Log:
            def warning(self, msg, *a):
                logs.append(("warning", msg % a))

            def info(self, msg, *a):
                logs.append(("info", msg % a))
        monkeypatch.setattr(type(trig), "log", property(lambda self: Log()), raising=False)

    async def first():
        async for ev in trig.run():
            return ev
    return asyncio.run(first()), argvs


def test_an_nccl_error_long_before_the_actor_died_error_is_still_the_cause(monkeypatch):
    many = [ROLLOUT.replace("{}", str(i), 1) for i in range(80)]  # > the 50-line tail
    ev, argvs = _run(monkeypatch, [
        {"status": "RUNNING", "lines": [NCCL_REMOTE], "offset": 10},
        {"status": "RUNNING", "lines": many, "offset": 20},
        {"status": "FAILED", "lines": ACTOR_DIED, "offset": 30}])
    p = ev.payload
    assert p["status"] == "FAILED" and p["cause"] == "NCCL"
    assert NCCL_REMOTE.split("] ")[0] not in "\n".join(p["tail"])  # it left the tail long ago
    assert "first seen on node gpu1 in MegatronTrainRayActor (pid 814)" in p["message"]
    assert p["where"] == {"actor": "MegatronTrainRayActor", "pid": 814, "ip": "10.231.0.12"}
    # the cause rides in progress.json, so a restarted triggerer keeps it
    sent = json.loads(argvs[1][argvs[1].index("--write-progress") + 1])
    assert sent["cause"]["cause"] == "NCCL"
    # the alert names that node, not the head
    assert find_node(None, {"nodes": ["gpu0", "gpu1"]}, p["message"]) == "gpu1"
    assert alert_classify("train", RuntimeError(p["message"]), [])[0] == "NCCL"


def test_a_restarted_triggerer_keeps_the_cause_from_progress_json(monkeypatch):
    saved = {"attempt": "b", "log_offset": 30, "rollout": 5,
             "cause": logparse.cause_of_line(NCCL_REMOTE)}
    ev, _ = _run(monkeypatch, [{"status": "FAILED", "lines": ACTOR_DIED, "offset": 40,
                                "saved": saved}])
    assert ev.payload["cause"] == "NCCL" and "node gpu1" in ev.payload["message"]


def test_without_a_strong_cause_the_actor_died_error_names_actor_and_node(monkeypatch):
    ev, _ = _run(monkeypatch, [{"status": "FAILED", "lines": ACTOR_DIED, "offset": 5}])
    assert ev.payload["cause"] == "Ray actor died"
    assert "first seen on node gpu1 in MegatronTrainRayActor (pid 814)" in ev.payload["message"]
    ev, _ = _run(monkeypatch, [{"status": "FAILED", "lines": HOST_OOM_DIED, "offset": 5}])
    assert ev.payload["cause"] == "host OOM" and "on node gpu1" in ev.payload["message"]


def test_a_dead_dashboard_keeps_polling_and_warns_once_then_the_end_is_seen(monkeypatch):
    down = {"status": "DASHBOARD_DOWN", "lines": [], "offset": 5,
            "status_text": "the Ray dashboard at http://127.0.0.1:8265 does not answer"}
    logs = []
    ev, argvs = _run(monkeypatch, [down, dict(down), dict(down),
                                   {"status": "RUNNING", "lines": [], "offset": 5},
                                   {"status": "SUCCEEDED", "lines": [], "offset": 5}],
                     logs=logs)
    assert ev.payload["status"] == "SUCCEEDED" and len(argvs) == 6  # 5 polls + final write
    warned = [m for k, m in logs if k == "warning" and "does not answer" in m]
    assert len(warned) == 1 and "polling on" in warned[0]
    assert any("answers again" in m for _, m in logs)


def test_no_cluster_is_lost():
    ev, _ = _run(pytest.MonkeyPatch(), [{"status": "NO_CLUSTER", "lines": [], "offset": 0}])
    assert ev.payload["status"] == "LOST" and "nor its GCS" in ev.payload["message"]


def test_a_dead_dashboard_still_stalls(monkeypatch):
    trig = _trigger(stall_timeout=0.0, deferred_at=1.0)
    ev, _ = _run(monkeypatch, [{"status": "DASHBOARD_DOWN", "lines": [], "offset": 0}], trig)
    assert ev.payload["status"] == "STALLED"


def test_resume_note():
    assert resume_note(19, 25, "/b/ckpt") == (
        "slime does not save on SIGTERM: a resume starts from rollout 20 (checkpoint "
        "iter_0000019 in /b/ckpt); the work since then (rollouts 20..24) is lost")
    assert "from scratch (rollout 0)" in resume_note(None)
    assert "latest_checkpointed_iteration.txt in /b" in resume_note(None, known=False, save_dir="/b")


def test_a_stopped_job_says_which_checkpoint_a_resume_starts_from(monkeypatch):
    lines = [ROLLOUT.replace("{}", str(i), 1) for i in range(23)]
    ev, _ = _run(monkeypatch, [{"status": "STOPPED", "lines": lines, "offset": 9,
                                "iteration": 19}])
    p = ev.payload
    assert p["status"] == "STOPPED"
    assert ("a resume starts from rollout 20 (checkpoint iter_0000019 in /base/ckpt); the work "
            "since then (rollouts 20..22) is lost") in p["message"] and p["resume"]


def test_on_kill_logs_the_resume_point_read_from_the_head(monkeypatch):
    runs, logs = [], []

    async def fake_run(self, argv, **kw):
        runs.append(argv)
        return 0, "", ""

    async def fake_run_json(self, argv, **kw):
        if any(str(a).endswith("gpuhealth.py") for a in argv):  # the GPU sampler: no GPUs here
            return {"mode": "sample", "gpus": [], "error": "no GPU in this test"}
        assert argv[1].endswith("/fsops.py") and argv[2:] == ["latest-checkpoint", "--dir",
                                                              "/base/ckpt"]
        return {"iteration": 39}

    monkeypatch.setattr(train_job.AsyncNode, "run", fake_run)
    monkeypatch.setattr(train_job.AsyncNode, "run_json", fake_run_json)
    trig = _trigger()

    class Log:
        def warning(self, msg, *a):
            logs.append(msg % a)
        info = warning
    monkeypatch.setattr(type(trig), "log", property(lambda self: Log()), raising=False)
    asyncio.run(trig.on_kill())
    assert any("a resume starts from rollout 40 (checkpoint iter_0000039" in m for m in logs)


def test_the_operator_maps_ray_ips_to_connection_ids():
    from slimeflow.config import RunConfig

    cfg = RunConfig.from_params("qwen3-4b", {"nodes": ["gpu0", "gpu1"], "master_addr": "10.9.0.1",
                                             "base_folder": "/b"},
                                hosts=["gpu0.lan", "10.9.0.2"])
    assert ray_node_ips(cfg) == {"gpu0.lan": "gpu0", "10.9.0.1": "gpu0", "10.9.0.2": "gpu1"}
    path, kw = _trigger().serialize()
    assert kw["node_ips"]["10.231.0.12"] == "gpu1" and kw["save_dir"] == "/base/ckpt"
    assert TrainJobTrigger(**kw).serialize() == (path, kw)


def test_the_operators_on_kill_says_where_a_resume_starts(monkeypatch):
    import slimeflow.hooks.node as node_mod
    from slimeflow.config import RunConfig
    from slimeflow.hooks.node import Result
    from slimeflow.operators.train import TrainOperator

    class FakeHook:
        def __init__(self, ssh_conn_id):
            self.client = None

        def run(self, step, node_dir, check, timeout):
            return Result("gpu0", 0, "", "", [])
    monkeypatch.setattr(node_mod, "NodeHook", FakeHook)
    logs = []

    class Log:
        def warning(self, msg, *a):
            logs.append(msg % a)
        info = warning
    monkeypatch.setattr(TrainOperator, "log", property(lambda self: Log()), raising=False)
    op = TrainOperator(task_id="train")
    op.recipe = "qwen3-4b"
    op._cfg = RunConfig.from_params("qwen3-4b", {"nodes": ["gpu0"], "base_folder": "/b"},
                                    hosts=["10.0.0.1"])
    op._submitted = "sid"
    op.on_kill()
    assert any("slime does not save on SIGTERM: a resume starts after the rollout in "
               "latest_checkpointed_iteration.txt in " + op._cfg.paths.save_dir in m
               for m in logs), logs


# -- a worker machine dies (seen on real Ray 2.60 after a power cut of the worker node) --------

NODE_DIED = ACTOR_DIED[:-1] + [
    "The actor died because its node has died. Node Id: b275157566e579bf74cb2bb8f014264fafb5",
    "\tthe actor's node was terminated unexpectedly: health check failed due to missing too "
    "many heartbeats",
    "The actor never ran - it was cancelled before it started running.",
]
UNAVAILABLE = [
    "ray.exceptions.ActorUnavailableError: The actor 88567a4489ab2ebe7812b4cf02000000 is "
    "unavailable: The actor is temporarily unavailable: RpcError: RPC error: failed to connect "
    "to all addresses; last error: UNKNOWN: ipv4:10.231.0.12:14806: Failed to connect to "
    "remote host: Connection refused rpc_code: 14."]


def test_a_dead_node_is_a_lost_node_named_by_the_actor_died_fields(monkeypatch):
    # the reason line after the fields also says "The actor died": the fields still count
    assert logparse.actor_died_details(NODE_DIED)["ip"] == "10.231.0.12"
    ev, argvs = _run(monkeypatch, [{"status": "FAILED", "lines": NODE_DIED, "offset": 5}])
    p = ev.payload
    assert p["cause"] == "node lost" and "left the Ray cluster" in p["fix"]
    assert "first seen on node gpu1 in MegatronTrainRayActor (pid 814)" in p["message"]
    assert not [a for a in argvs if "actor" in a]  # the log said it all: no state API call


def test_an_actor_named_only_by_its_id_is_located_through_rays_state_api(monkeypatch):
    def where(node_state):
        return {"found": True, "actor_id": "88567a4489ab2ebe7812b4cf02000000",
                "class_name": "MegatronTrainRayActor", "pid": 437, "state": "DEAD",
                "node_id": "b2", "node_ip": "10.231.0.12", "node_state": node_state,
                "death": "The actor is dead because its owner has died. Owner Id: 02"}
    ev, argvs = _run(monkeypatch, [{"status": "FAILED", "lines": UNAVAILABLE, "offset": 5},
                                   where("ALIVE")])
    p = ev.payload
    asked = [a for a in argvs if a[1:2] == ["/n/raystate.py"]]
    assert asked and asked[0][1:5] == ["/n/raystate.py", "actor", "--id",
                                       "88567a4489ab2ebe7812b4cf02000000"]
    # the final progress write carries the cause, for the run note
    final = json.loads(argvs[-1][argvs[-1].index("--write-progress") + 1])
    assert final["cause"]["cause"] == "Ray actor died" and final["cause"]["ip"] == "10.231.0.12"
    assert p["cause"] == "Ray actor died"
    assert "first seen on node gpu1 in MegatronTrainRayActor (pid 437)" in p["message"]
    assert "owner has died" not in p["message"]  # asked after the driver ended: noise
    ev, _ = _run(monkeypatch, [{"status": "FAILED", "lines": UNAVAILABLE, "offset": 5},
                               where("DEAD")])
    assert ev.payload["cause"] == "node lost" and "on node gpu1" in ev.payload["message"]


def test_raystate_reads_an_actor_and_its_node_from_the_state_api():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "node_raystate", Path(__file__).resolve().parents[2] / "include/node/raystate.py")
    raystate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(raystate)
    asked = []

    def get(url, timeout):
        asked.append(url)
        if "/api/v0/actors?" in url:  # the shape of Ray 2.60's list API answer
            return 200, json.dumps({"result": True, "msg": "", "data": {"result": {
                "total": 1, "num_after_truncation": 1, "num_filtered": 1, "result": [{
                    "actor_id": "88aa", "class_name": "MegatronTrainRayActor", "state": "DEAD",
                    "node_id": "b2", "pid": 437, "death_cause": {"actor_died_error_context": {
                        "error_message": "The actor died because its node has died.",
                        "node_ip_address": "10.231.0.12"}}}]}}})
        return 200, json.dumps({"result": True, "data": {"result": {"result": [
            {"node_id": "b2", "node_ip": "10.231.0.12", "state": "DEAD"}]}}})
    got = raystate.read_actor("88aa", "http://127.0.0.1:8265", get=get)
    assert (got["class_name"], got["pid"], got["node_ip"], got["node_state"]) == (
        "MegatronTrainRayActor", 437, "10.231.0.12", "DEAD")
    assert "filter_keys=actor_id" in asked[0] and "filter_values=88aa" in asked[0]
    assert "detail=true" in asked[0] and "filter_values=b2" in asked[1]
    assert raystate.read_actor("x", get=lambda u, t: (500, "boom"))["found"] is False


def test_a_refused_reconnect_is_an_unreachable_head_not_a_crashed_trigger(monkeypatch):
    # sshd down on the head: asyncssh's connect raises ConnectionRefusedError (an OSError)
    async def refused(self):
        raise ConnectionRefusedError(111, "Connect call failed ('10.231.0.11', 22)")
    monkeypatch.setattr(train_job.AsyncNode, "connect", refused)
    node = train_job.AsyncNode("gpu0", "/n")
    with pytest.raises(train_job.RemoteError, match="ConnectionRefusedError"):
        asyncio.run(node.run(["true"]))
