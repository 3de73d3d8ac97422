"""What real Ray 2.60 does, and the pipeline's answer to each (SLIME_FACTS.md "Real Ray 2.60, as it
behaves"): `ray job status` texts, the driver log path, the stop grace in the raylet's
environment, the submit retry, never a second raylet, and `ray stop`'s time. The texts below were
captured from a real Ray 2.60 head in a private namespace, byte for byte."""
import asyncio
import importlib.util
import json
import subprocess
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from slimeflow import builders
from slimeflow.cluster import ClusterError, judge
from slimeflow.config import RunConfig
from slimeflow.hooks.node import Result
from slimeflow.hooks import ray as ray_hook
from slimeflow.hooks.ray import (RayClusterHook, RayError, parse_ray_nodes, ray_cluster_problems,
                                 ray_start_plan)
from slimeflow.operators.teardown import TeardownOperator
from slimeflow.operators.train import TrainOperator
from slimeflow.triggers import train_job

NODE = Path(__file__).resolve().parents[2] / "include" / "node"
ESC = "\x1b"


def _node_module(name):
    spec = importlib.util.spec_from_file_location("node_" + name, NODE / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


jobwatch = _node_module("jobwatch")
raystate = _node_module("raystate")

# -- `ray job status` (item 8) ----------------------------------------------------------------

ADDR = (f"2026-12-02 04:54:33,169\tINFO cli.py:42 -- {ESC}[37mJob submission server address"
        f"{ESC}[39m: {ESC}[1mhttp://127.0.0.1:8265{ESC}[22m\n")
STATUS = {
    "RUNNING": ADDR + "2026-12-02 04:54:35,466\tINFO cli.py:92 -- Status for job 'J': RUNNING\n"
                      "2026-12-02 04:54:35,466\tINFO cli.py:94 -- Status message: Job is "
                      "currently running.\n",
    "PENDING": ADDR + "2026-12-02 04:54:35,466\tINFO cli.py:92 -- Status for job 'J': PENDING\n",
    "SUCCEEDED": ADDR + f"2026-12-02 04:54:33,173\tSUCC cli.py:66 -- {ESC}[32m------------------"
                        f"{ESC}[39m\n2026-12-02 04:54:33,173\tSUCC cli.py:67 -- {ESC}[32mJob 'J' "
                        f"succeeded{ESC}[39m\n",
    # a failed job's status message carries its last log lines, which may name other jobs
    "FAILED": ADDR + f"2026-12-02 04:54:34,292\tERR cli.py:75 -- {ESC}[31mJob 'J' failed{ESC}[39m\n"
                     "2026-12-02 04:54:34,292\tINFO cli.py:89 -- Status message: Job entrypoint "
                     "command failed with exit code 1, last available logs (truncated to 20,000 "
                     "chars):\nJob 'J-a1' succeeded\nConnectionError: Failed to connect to Ray\n",
    "STOPPED": ADDR + f"2026-12-02 04:54:36,614\tWARN cli.py:85 -- {ESC}[33mJob 'J' was stopped"
                      f"{ESC}[39m\n",
    "MISSING": ADDR + "Traceback (most recent call last):\n  File \"/x/cli.py\", line 81\n"
                      "RuntimeError: Request failed with status code 404: Job J does not exist.\n",
    "NO_CLUSTER": "Traceback (most recent call last):\n  File \"/x/dashboard_sdk.py\", line 300\n"
                  "    raise ConnectionError(\nConnectionError: Failed to connect to Ray at "
                  "address: http://127.0.0.1:8265.\n",
}


@pytest.mark.parametrize("state", sorted(STATUS))
def test_job_status_texts_of_real_ray(state):
    assert raystate.job_state(STATUS[state], "J") == state


def test_only_a_sentence_about_this_job_counts():
    other = ADDR + "2026-12-02 04:54:33,173\tSUCC cli.py:67 -- Job 'J-a2' succeeded\n"
    assert raystate.job_state(other, "J") is None
    assert raystate.job_state("Job 'J' failed to start? no", "J") is None
    assert raystate.job_state("", "J") is None


@pytest.mark.parametrize("state", sorted(STATUS))
def test_the_cli_fallback_reads_the_same_texts(monkeypatch, state):
    # raystate.read_job_cli: only used when the REST answer is unreadable (test_ray_rest.py)
    def fake_run(argv, **kw):
        assert argv[:3] == ["ray", "job", "status"] and argv[-1] == "J"
        return subprocess.CompletedProcess(argv, 1, STATUS[state].encode(), None)
    monkeypatch.setattr(raystate.subprocess, "run", fake_run)
    got, text = raystate.read_job_cli("J", "http://127.0.0.1:8265")
    assert got == state and ESC not in text


def test_hook_job_state_maps_missing_and_no_cluster():
    cfg = _cfg(1)
    seen = []

    class Runner:
        def run_json(self, c, step, **kw):  # `raystate.py job` on the head answers JSON
            seen.append(step.argv)
            return {"status": state, "text": "x"}
    ray = RayClusterHook(cfg, Runner(), LogRecorder())
    for state, want in (("MISSING", None), ("NO_CLUSTER", "NO_CLUSTER"), ("RUNNING", "RUNNING"),
                        ("SUCCEEDED", "SUCCEEDED"), ("UNKNOWN", "NO_CLUSTER")):
        assert ray.job_state("sid") == want, state
    assert seen[0][1].endswith("/raystate.py") and seen[0][2:5] == ["job", "--job", "sid"]
    # a dead dashboard with a live GCS: the job may still run, so train refuses to guess
    state = "DASHBOARD_DOWN"
    with pytest.raises(RayError, match="does not answer but its GCS does"):
        ray.job_state("sid")


# -- the driver log (item 6) ------------------------------------------------------------------

@pytest.mark.parametrize("env,root", [
    ({"RAY_TMPDIR": "/r", "TMPDIR": "/t"}, "/r"), ({"TMPDIR": "/t"}, "/t"), ({}, "/tmp"),
    ({"RAY_TMPDIR": "", "TMPDIR": "/t"}, "/t"),
])
def test_driver_log_path_follows_rays_temp_dir_rule(env, root):
    # Ray 2.60 _common/utils.py: $RAY_TMPDIR, else $TMPDIR, else /tmp; plus "ray" (seen on a
    # real head: /tmp/ray/session_latest/logs/job-driver-ID.log)
    assert jobwatch.driver_log_path("J", env) == f"{root}/ray/session_latest/logs/job-driver-J.log"


def test_jobwatch_reads_the_log_under_tmpdir_without_ray_tmpdir(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("RAY_TMPDIR", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    logs = tmp_path / "ray" / "session_latest" / "logs"
    logs.mkdir(parents=True)
    line = (f"{ESC}[36m(MegatronTrainRayActor pid=534){ESC}[0m [2026-12-01 19:53:44] train.py:10 "
            f"- rollout 0: {{'rollout/raw_reward': nan}}")
    (logs / "job-driver-J.log").write_text("Running entrypoint for job J: python3 train.py\n"
                                           + line + "\n")
    monkeypatch.setattr(jobwatch, "ray_status", lambda a, j: {"status": "FAILED", "text": "x",
                                                               "via": "rest", "info": None})
    assert jobwatch.main(["--ray-job", "J", "--ray-address", "http://x", "--progress",
                          str(tmp_path / "p.json"), "--offset", "0", "--tail", "5"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["log_exists"] and out["lines"][-1] == line and out["tail"][-1] == line


# -- the stop grace (item 3) ------------------------------------------------------------------

def test_stop_grace_is_in_ray_starts_environment_not_job_stops():
    cfg = _cfg(2)
    assert builders.ray_start_head(cfg).env["RAY_JOB_STOP_WAIT_TIME_S"] == "600"
    assert builders.ray_start_worker(cfg, "gpu1").env["RAY_JOB_STOP_WAIT_TIME_S"] == "600"
    for verb in ("stop", "status"):
        assert "RAY_JOB_STOP_WAIT_TIME_S" not in builders.ray_job_cmd(cfg, verb, "sid").env


# -- quoting by Ray version (item 2) ----------------------------------------------------------

@pytest.mark.parametrize("text,want", [("2.60.0", "shlex"), ("2.56.0", "shlex"),
                                       ("3.0.0rc1", "shlex"), ("2.55.1", "list2cmdline"),
                                       ("2.9.3", "list2cmdline"), (" 2.60.0\n", "shlex")])
def test_quoting_follows_the_heads_ray_version(text, want):
    assert builders.entry_quoting({"ray_version": text}) == want


@pytest.mark.parametrize("text,shown", [(None, "no Ray version"), ("", "no Ray version"),
                                        ("banana", "Ray version 'banana'"),
                                        ("2", "Ray version '2'")])
def test_a_version_we_cannot_quote_for_is_refused_in_one_sentence(text, shown):
    cfg = _cfg(1)
    with pytest.raises(ValueError) as e:
        builders.ray_job_submit(cfg, "sid", {"ray_version": text})
    msg = str(e.value)
    assert msg.startswith(f"node gpu0 reports {shown}, so slimeflow cannot tell")
    assert "pip install -U 'ray[default]'" in msg and msg.count(". ") == 0 and msg.endswith(".")


def test_submit_argv_carries_raw_tokens_on_new_ray_and_quoted_ones_on_old():
    cfg = _cfg(1, recipe="qwen3-next-80b-a3b")
    freq = "[" + ",".join(["1"] * 48) + "]"
    new = builders.ray_job_submit(cfg, "sid", {"ray_version": "2.60.0"}).argv
    old = builders.ray_job_submit(cfg, "sid", {"ray_version": "2.55.0"}).argv
    assert freq in new and f"'{freq}'" not in new
    assert f"'{freq}'" in old and freq not in old


def test_judge_puts_the_heads_ray_version_into_the_facts_and_refuses_what_it_cannot_use():
    from tests.unit.test_cluster_judge import healthy_probe

    c = _cfg(2, recipe="qwen3-next-80b-a3b")
    probes = {"gpu0": healthy_probe(), "gpu1": healthy_probe()}
    assert judge(c, probes, True, {})["ray_version"] == "2.60.0"
    probes["gpu1"]["packages"]["ray"] = {"present": True, "version": "2.55.1",
                                         "cli_version": "2.55.1"}
    with pytest.raises(ClusterError) as e:
        judge(c, probes, True, {})
    assert ("node gpu1 runs Ray 2.55.1 but the head gpu0 runs Ray 2.60.0, and Ray nodes of "
            "different versions cannot form one cluster; install ray[default]==2.60.0 on gpu1."
            ) in str(e.value)
    probes["gpu1"]["packages"]["ray"] = {"present": True, "version": None, "cli_version": None}
    probes["gpu0"]["packages"]["ray"] = {"present": True, "version": "2.60.0",
                                         "cli_version": "weird"}
    with pytest.raises(ClusterError) as e:
        judge(c, probes, True, {})
    text = str(e.value)
    assert "node gpu0 reports Ray version 'weird', so slimeflow cannot tell how `ray job submit`" \
        in text
    assert "node gpu1 reports no Ray version" in text


# -- submit right after start (item 4) --------------------------------------------------------

NO_AGENT = ("RuntimeError: Request failed with status code 500: No available agent to submit "
            "job, please try again later..")


class FakeClock:
    def __init__(self):
        self.now = 0.0
        self.slept = []

    def clock(self):
        return self.now

    def sleep(self, s):
        self.slept.append(s)
        self.now += s


def _submit_op(answers, log=None):
    clock = FakeClock()
    calls = []

    class Runner:
        def run_step(self, cfg, step, **kw):
            calls.append(step.argv[:3])
            rc, err = answers.pop(0) if answers else (1, NO_AGENT)
            clock.now += 1  # each try takes a little time
            return Result("gpu0", rc, "", err, err.splitlines())
    op = RayClusterHook(_cfg(1), Runner(), log or LogRecorder())
    op._clock, op._sleep = clock.clock, clock.sleep
    return op, clock, calls


FACTS = {"ray_version": "2.60.0", "nvlink": True}


class LogRecorder:
    def __init__(self):
        self.lines = []

    def _rec(self, msg, *args, **kw):
        self.lines.append(msg % args if args else msg)
    info = warning = error = debug = _rec


def test_no_available_agent_is_retried_with_a_log_line(monkeypatch):
    rec = LogRecorder()
    op, clock, calls = _submit_op([(1, NO_AGENT), (1, NO_AGENT), (0, "")], rec)
    op.submit("sid", FACTS)
    assert len(calls) == 3 and clock.slept == [ray_hook.SUBMIT_RETRY_PAUSE_S] * 2
    retries = [x for x in rec.lines if "Ray's job agent is not up yet" in x]
    assert len(retries) == 2 and "retrying `ray job submit` in 3 s (for up to 60 s)" in retries[0]


def test_the_retry_is_bounded(monkeypatch):
    op, clock, calls = _submit_op([])  # always "No available agent"
    with pytest.raises(RayError) as e:
        op.submit("sid", FACTS)
    assert clock.now <= ray_hook.SUBMIT_RETRY_S + ray_hook.SUBMIT_RETRY_PAUSE_S + 1
    assert 2 < len(calls) <= ray_hook.SUBMIT_RETRY_S // ray_hook.SUBMIT_RETRY_PAUSE_S + 1
    assert "did not come up within 60 s" in str(e.value)


def test_only_no_agent_is_retried(monkeypatch):
    op, clock, calls = _submit_op([(1, "RuntimeError: Request failed with status "
                                                    "code 400: bad runtime env")])
    with pytest.raises(RayError):
        op.submit("sid", FACTS)
    assert len(calls) == 1 and clock.slept == []
    # a duplicate id is not retried either, unless a retried submit may have created it
    exists = "ValueError: Job with submission_id sid already exists. Please use a different"
    op, clock, calls = _submit_op([(1, exists)])
    with pytest.raises(RayError):
        op.submit("sid", FACTS)
    op, clock, calls = _submit_op([(1, NO_AGENT), (1, exists)])
    op.submit("sid", FACTS)
    assert len(calls) == 2


# -- never a second raylet (item 5) -----------------------------------------------------------

# `ray list nodes --format json` of a real head on which `ray start --address` ran a second time
LIST_TWICE = json.dumps([
    {"node_id": "6552", "node_ip": "127.0.0.1", "is_head_node": False, "state": "ALIVE",
     "state_message": None, "node_name": "127.0.0.1",
     "resources_total": {"node:127.0.0.1": 1.0, "memory": "15.928 GiB", "CPU": 2.0,
                         "object_store_memory": "6.826 GiB", "GPU": 8.0},
     "labels": {"ray.io/node-id": "6552"}, "start_time_ms": None, "end_time_ms": None},
    {"node_id": "a367", "node_ip": "127.0.0.1", "is_head_node": True, "state": "ALIVE",
     "state_message": None, "node_name": "127.0.0.1",
     "resources_total": {"node:127.0.0.1": 1.0, "memory": "16.052 GiB",
                         "node:__internal_head__": 1.0, "CPU": 4.0,
                         "object_store_memory": "6.879 GiB", "GPU": 8.0},
     "labels": {"ray.io/node-id": "a367"}, "start_time_ms": None, "end_time_ms": None}])


def _cfg(nodes, recipe="qwen3-4b", gpus=8):
    return RunConfig.from_params(recipe, {"nodes": [f"gpu{i}" for i in range(nodes)],
                                          "gpus_per_node": gpus, "master_addr": "10.0.0.1"},
                                 hosts=[f"10.0.0.{i + 1}" for i in range(nodes)])


def _raylet(pid, ip, head=False):
    return {"pid": pid, "node_ip": ip, "gcs_address": "10.0.0.1:6379", "head": head}


def _local(cfg, raylets_per_node=1):
    out = {}
    for i, n in enumerate(cfg.cluster.nodes):
        ip = f"10.0.0.{i + 1}"
        r = [_raylet(100 + 10 * i + k, ip, head=(i == 0 and k == 0))
             for k in range(raylets_per_node)]
        out[n] = {"raylets": r, "gcs_servers": [7] if i == 0 else [], "running": bool(r)}
    return out


def _alive(cfg, gpus=8, extra=()):
    return [{"ip": f"10.0.0.{i + 1}", "gpus": float(gpus), "head": i == 0}
            for i in range(len(cfg.cluster.nodes))] + list(extra)


def test_parse_ray_nodes_of_a_real_head():
    alive = parse_ray_nodes(LIST_TWICE + "\n")
    assert alive == [{"ip": "127.0.0.1", "gpus": 8.0, "head": False},
                     {"ip": "127.0.0.1", "gpus": 8.0, "head": True}]
    dead = json.loads(LIST_TWICE)
    dead[0]["state"] = "DEAD"
    assert len(parse_ray_nodes(json.dumps(dead))) == 1
    assert parse_ray_nodes("Error: Failed to make request to http://127.0.0.1:8265/api/v0/nodes") \
        is None


def test_ray_nowhere_starts_everything():
    cfg = _cfg(3)
    local = {n: {"raylets": [], "gcs_servers": [], "running": False} for n in cfg.cluster.nodes}
    for started in (False, True):
        plan = ray_start_plan(cfg, local, None, started)
        assert not plan.reuse and plan.stop == [] and plan.start == ["gpu0", "gpu1", "gpu2"]


def test_this_runs_complete_cluster_is_reused():
    cfg = _cfg(3)
    plan = ray_start_plan(cfg, _local(cfg), _alive(cfg), started_by_run=True)
    assert plan.reuse and plan.stop == [] and plan.start == []
    assert "3 node(s) with 24 GPUs" in plan.reason


@pytest.mark.parametrize("case,needle", [
    ("second raylet", "node gpu1 runs 2 raylets"),
    ("listed twice", "Ray lists 10.0.0.2 2 times"),
    ("worker missing", "node gpu2 runs no raylet"),
    ("head dead", "the head gpu0 runs no GCS server"),
    ("wrong gpus", "Ray node 10.0.0.1 has 4 GPUs, not 8"),
    ("foreign node", "Ray counts 4 alive node(s), not 3"),
    ("list failed", "`ray list nodes` on the head gpu0 gave no node list"),
    ("other addresses", "Ray's nodes are 10.0.0.1, 10.0.0.2, 10.9.9.9, not this run's"),
])
def test_a_cluster_that_is_off_is_stopped_then_started_again(case, needle):
    cfg = _cfg(3)
    local, alive = _local(cfg), _alive(cfg)
    if case == "second raylet":
        local["gpu1"]["raylets"].append(_raylet(999, "10.0.0.2"))
    elif case == "listed twice":
        alive[2] = dict(alive[1])
    elif case == "worker missing":
        local["gpu2"] = {"raylets": [], "gcs_servers": [], "running": False}
        alive = alive[:2]
    elif case == "head dead":
        local["gpu0"] = {"raylets": [], "gcs_servers": [], "running": False}
        alive = None
    elif case == "wrong gpus":
        alive[0]["gpus"] = 4.0
    elif case == "foreign node":
        alive.append({"ip": "10.9.9.9", "gpus": 8.0, "head": False})
    elif case == "list failed":
        alive = None
    elif case == "other addresses":
        alive[2]["ip"] = "10.9.9.9"
    assert needle in "; ".join(ray_cluster_problems(cfg, local, alive))
    plan = ray_start_plan(cfg, local, alive, started_by_run=True)
    assert not plan.reuse and needle in plan.reason
    assert plan.stop == [n for n in cfg.cluster.nodes if local[n]["running"]]
    assert plan.start == list(cfg.cluster.nodes) and plan.start[0] == cfg.cluster.head


def test_ray_this_run_did_not_start_is_never_stopped():
    cfg = _cfg(2)
    local = _local(cfg)
    local["gpu0"] = {"raylets": [], "gcs_servers": [], "running": False}
    with pytest.raises(RayError) as e:
        ray_start_plan(cfg, local, None, started_by_run=False)
    msg = str(e.value)
    assert msg.startswith("Ray is already running on node gpu1 (raylet pid(s) 110), and this run "
                          "has not started Ray yet")
    assert "slimeflow never stops what it did not start." in msg


def test_raystate_lists_live_raylets_from_proc(tmp_path):
    def proc(pid, comm, argv, state="S"):
        d = tmp_path / str(pid)
        d.mkdir()
        (d / "comm").write_text(comm + "\n")
        (d / "stat").write_text(f"{pid} ({comm}) {state} 1 2 3")
        (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    base = "/x/ray/core/src/ray/raylet/raylet"
    proc(297, "raylet", [base, "--node_ip_address=127.0.0.1", "--gcs-address=127.0.0.1:6379",
                         "--head"])
    proc(419, "raylet", [base, "--node_ip_address=127.0.0.1", "--gcs-address=127.0.0.1:6379"])
    proc(500, "raylet", [base], state="Z")  # a zombie is not running
    proc(7, "gcs_server", ["/x/gcs_server"])
    proc(8, "python3", ["python3", "raylet"])
    (tmp_path / "self").mkdir()
    got = raystate.ray_processes(str(tmp_path))
    assert got == {"raylets": [
        {"pid": 297, "node_ip": "127.0.0.1", "gcs_address": "127.0.0.1:6379", "head": True},
        {"pid": 419, "node_ip": "127.0.0.1", "gcs_address": "127.0.0.1:6379", "head": False}],
        "gcs_servers": [7], "running": True}
    assert raystate.ray_processes(str(tmp_path / "none")) == {
        "raylets": [], "gcs_servers": [], "running": False}


class FakeNodes:
    """Ray on fake nodes: raystate answers from `state`, ray stop/start change it, and a
    `ray start` on a node that runs Ray fails the test (the invariant)."""

    def __init__(self, cfg, state, alive_text=None):
        self.cfg, self.state, self.alive_text = cfg, state, alive_text
        self.log = []
        self.lock = threading.Lock()

    def run_json(self, cfg, step, **kw):
        assert step.argv[1].endswith("raystate.py")
        with self.lock:
            self.log.append(("state", step.node))
            return json.loads(json.dumps(self.state[step.node]))

    def run_step(self, cfg, step, **kw):
        argv, n = step.argv, step.node
        with self.lock:
            if argv[:3] == ["ray", "list", "nodes"]:
                self.log.append(("list", n))
                return Result(n, 0 if self.alive_text else 2, self.alive_text or "", "", [])
            if argv[:2] == ["ray", "stop"]:
                assert kw["timeout"] >= 60
                self.log.append(("stop", n))
                self.state[n] = {"raylets": [], "gcs_servers": [], "running": False}
                return Result(n, 0, "Stopped all 6 Ray processes.", "", [])
            if argv[:2] == ["ray", "start"]:
                assert not self.state[n]["running"], f"ray start on top of a running Ray on {n}"
                self.log.append(("start", n))
                self.state[n] = {"raylets": [_raylet(1, n)], "gcs_servers": [],
                                 "running": True}
                return Result(n, 0, "Ray runtime started.", "", [])
        raise AssertionError(argv)


class StartHook(RayClusterHook):
    """The hook over fake nodes; start_ray(ours) records each before_start call."""

    def __init__(self, cfg, fake):
        super().__init__(cfg, fake, LogRecorder())
        self.marks = []

    def start_ray(self, ours):
        return self.ensure_cluster(ours, lambda: self.marks.append({"ray_started": True}))


def _start_op(monkeypatch, cfg, fake):
    op = StartHook(cfg, fake)
    return op, op.marks


def _as_list_nodes(alive):
    return json.dumps([{"node_ip": a["ip"], "state": "ALIVE", "is_head_node": a["head"],
                        "resources_total": {"GPU": a["gpus"]}} for a in alive])


def test_start_ray_reuses_a_complete_cluster(monkeypatch):
    cfg = _cfg(3)
    fake = FakeNodes(cfg, _local(cfg), _as_list_nodes(_alive(cfg)))
    op, marks = _start_op(monkeypatch, cfg, fake)
    op.start_ray(True)
    assert [e for e in fake.log if e[0] in ("stop", "start")] == [] and marks == []


def test_start_ray_stops_a_doubled_node_before_starting_again(monkeypatch):
    cfg = _cfg(2)
    local = _local(cfg)
    local["gpu1"]["raylets"].append(_raylet(999, "10.0.0.2"))
    alive = _alive(cfg, extra=[{"ip": "10.0.0.2", "gpus": 8.0, "head": False}])
    fake = FakeNodes(cfg, local, _as_list_nodes(alive))
    op, marks = _start_op(monkeypatch, cfg, fake)
    op.start_ray(True)
    events = [e for e in fake.log if e[0] in ("stop", "start")]
    assert sorted(events[:2]) == [("stop", "gpu0"), ("stop", "gpu1")]
    assert events[2:] == [("start", "gpu0"), ("start", "gpu1")]  # head first
    assert marks == [{"ray_started": True}]


def test_start_ray_refuses_foreign_ray_and_starts_a_clean_cluster(monkeypatch):
    cfg = _cfg(2)
    fake = FakeNodes(cfg, _local(cfg), _as_list_nodes(_alive(cfg)))
    op, marks = _start_op(monkeypatch, cfg, fake)
    with pytest.raises(RayError) as e:
        op.start_ray(False)
    assert "belongs to someone else" in str(e.value) and marks == []
    assert not [x for x in fake.log if x[0] in ("stop", "start")]
    clean = {n: {"raylets": [], "gcs_servers": [], "running": False} for n in cfg.cluster.nodes}
    fake = FakeNodes(cfg, clean)
    op, marks = _start_op(monkeypatch, cfg, fake)
    op.start_ray(False)
    assert [e for e in fake.log if e[0] == "start"] == [("start", "gpu0"), ("start", "gpu1")]
    assert ("list", "gpu0") not in fake.log and marks == [{"ray_started": True}]


def test_start_ray_fails_when_ray_stop_leaves_a_raylet(monkeypatch):
    cfg = _cfg(1)
    local = _local(cfg)
    fake = FakeNodes(cfg, local, None)  # list nodes fails: not reusable
    op, _ = _start_op(monkeypatch, cfg, fake)
    stubborn = dict(local["gpu0"])
    orig = fake.run_step

    def run_step(c, step, **kw):
        res = orig(c, step, **kw)
        if step.argv[:2] == ["ray", "stop"]:
            fake.state["gpu0"] = stubborn  # ray stop exits 0 and a raylet survives
        return res
    fake.run_step = run_step
    with pytest.raises(RayError) as e:
        op.start_ray(True)
    assert "left Ray processes running (pids 100, 7); run `ray stop --force` there" in str(e.value)
    assert ("start", "gpu0") not in fake.log


# -- `ray stop` time (item 7) -----------------------------------------------------------------

def test_teardown_stops_ray_on_all_nodes_at_once_with_time_for_it(monkeypatch):
    cfg = _cfg(3)
    op = TeardownOperator(task_id="teardown")
    op.recipe = "qwen3-4b"
    ctx = {"dag": SimpleNamespace(dag_id="d"), "run_id": "r"}
    barrier = threading.Barrier(3, timeout=30)  # passes only if the three run together
    stops = []

    def run_step(c, step, **kw):
        if step.argv[:2] == ["ray", "stop"]:
            barrier.wait()
            stops.append((step.node, kw["timeout"]))
            return Result(step.node, 0, "", "", [])
        return Result(step.node, 0, "", "", [])
    monkeypatch.setattr(op, "run_step", run_step)
    monkeypatch.setattr(op, "run_json", _teardown_json({"ray_started": True, "attempts": []}))
    op.work(cfg, ctx)
    assert sorted(stops) == [(n, builders.RAY_STOP_TIMEOUT_S) for n in cfg.cluster.nodes]
    assert builders.RAY_STOP_TIMEOUT_S >= 60


def _teardown_json(record):
    """Node answers for teardown: every lease is this run's; the run record is `record`."""
    def run_json(c, step, **kw):
        if step.argv[1].endswith("fsops.py"):
            return {"exists": record is not None, "text": json.dumps(record)}
        return {"lease": {"run": "d/r"}, "released": True}
    return run_json


@pytest.mark.parametrize("record", [None, {"attempts": []}])
def test_teardown_never_stops_a_ray_this_run_did_not_start(monkeypatch, record):
    # preflight refused a node where someone else's Ray runs: the run has no record (or one
    # without ray_started), and teardown must leave that Ray running
    cfg = _cfg(2)
    op = TeardownOperator(task_id="teardown")
    op.recipe = "qwen3-4b"
    rec = LogRecorder()
    monkeypatch.setattr(TeardownOperator, "log", property(lambda self: rec))
    ray_calls = []
    monkeypatch.setattr(op, "run_step", lambda c, step, **kw: ray_calls.append(step.argv) or
                        Result(step.node, 0, "", "", []))
    monkeypatch.setattr(op, "run_json", _teardown_json(record))
    assert op.work(cfg, {"dag": SimpleNamespace(dag_id="d"), "run_id": "r"}) == {}
    assert [a for a in ray_calls if a[0] == "ray"] == []
    assert any("nothing to stop: this run never started Ray on its nodes; leaving any Ray "
               "there alone" in x for x in rec.lines)


def test_operator_on_kill_stops_ray_everywhere_at_once(monkeypatch):
    import slimeflow.hooks.node as node_mod

    cfg = _cfg(3)
    barrier = threading.Barrier(3, timeout=30)
    calls = []

    class FakeHook:
        def __init__(self, ssh_conn_id):
            self.node, self.client = ssh_conn_id, None

        def run(self, step, node_dir, check, timeout):
            if step.argv[:2] == ["ray", "stop"]:
                barrier.wait()
            calls.append((self.node, step.argv[:3], "--no-wait" in step.argv, timeout))
            return Result(self.node, 0, "", "", [])
    monkeypatch.setattr(node_mod, "NodeHook", FakeHook)
    op = TrainOperator(task_id="train")
    op.recipe = "qwen3-4b"
    op._cfg, op._submitted = cfg, "sid"
    op.on_kill()
    assert calls[0] == ("gpu0", ["ray", "job", "stop"], True, 60)
    assert sorted(c for c in calls[1:]) == [(n, ["ray", "stop"], False,
                                             builders.RAY_STOP_TIMEOUT_S)
                                            for n in cfg.cluster.nodes]


def test_trigger_on_kill_gives_ray_stop_its_time_on_all_nodes_at_once(monkeypatch):
    seen, started, done, sync = [], [], [], {}

    async def fake_run(self, argv, env=None, cwd=None, timeout=120):
        seen.append((self.conn_id, argv, timeout))
        if argv == ["ray", "stop"]:
            started.append(self.conn_id)
            if len(started) == 3:
                sync["all"].set()
            await asyncio.wait_for(sync["all"].wait(), 30)  # only if all three run together
            done.append(self.conn_id)
        return 0, "", ""
    monkeypatch.setattr(train_job.AsyncNode, "run", fake_run)
    trig = train_job.TrainJobTrigger(
        head="gpu0", nodes=["gpu0", "gpu1", "gpu2"], node_dir="/n", base_id="b", sub_id="b-a2",
        watch_argv=["w"], stop_argv=["ray", "job", "stop", "--address=http://127.0.0.1:8265",
                                     "b-a2"], stop_env={}, ray_stop_argv=["ray", "stop"],
        cwd="/root/slime", total=4)

    async def main():
        sync["all"] = asyncio.Event()
        await trig.on_kill()
    asyncio.run(main())
    assert seen[0][0] == "gpu0" and seen[0][1][-1] == "--no-wait"
    assert sorted(done) == ["gpu0", "gpu1", "gpu2"]
    assert {t for _, argv, t in seen if argv == ["ray", "stop"]} == {builders.RAY_STOP_TIMEOUT_S}


def test_a_failed_ray_stop_says_why_in_the_teardown_error(monkeypatch):
    cfg = _cfg(2)
    op = TeardownOperator(task_id="teardown")
    op.recipe = "qwen3-4b"
    why = "runner: cannot chdir to /root/slime: No such file or directory"

    def run_step(c, step, **kw):
        if step.argv[:2] == ["ray", "stop"] and step.node == "gpu1":
            return Result(step.node, 127, "", why, [why])
        return Result(step.node, 0, "", "", [])
    monkeypatch.setattr(op, "run_step", run_step)
    monkeypatch.setattr(op, "run_json", _teardown_json({"ray_started": True, "attempts": []}))
    with pytest.raises(RuntimeError) as e:
        op.work(cfg, {"dag": SimpleNamespace(dag_id="d"), "run_id": "r"})
    assert str(e.value) == (f"`ray stop` failed on node(s) gpu1 (gpu1: {why}); log in and run "
                            f"`ray stop` there before the next run.")
