"""The slime train.py stand-in (tests/simcluster/standins/train.py) as a real Ray job.

One private Ray node for the whole module: real Ray from the venv, started inside its own
net/pid/mount/uts namespaces (``unshare``) so that it shares no port, no /proc and no ``ray stop``
with any other Ray on this machine; its RAY_TMPDIR is a private folder the test reads the driver
logs from. Jobs go in through the node's Jobs API (``ray job submit`` / ``ray job stop`` and the
REST calls they make), all run inside the namespaces with ``nsenter``. The tests that need the node
skip, with one reason, where unshare is not permitted (not root).

Measured here (2 CPU cores, 24 GB; RSS summed over every process of the node's namespace; Ray
2.60; 12 rollouts of rollout_seconds=1.0, colocated layouts, two raylets in one namespace for 2x8):

    layout / train_actors        actor procs  RSS idle -> during job   submit -> "rollout 0"   job
    1x8  per-node (default)           1        1637 -> 2217 MiB           5.7 s              20.5 s
    1x8  per-gpu                      8        1637 -> 2871 MiB          11.7 s              26.1 s
    2x8  per-node (default)           2        1961 -> 2637 MiB           8.3 s              23.8 s
    2x8  per-gpu                     16        1961 -> 3947 MiB          19.8 s              37.5 s

(per-gpu 2x8 also kept about one of the two cores busy while "idle" in sleeps.)
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TRAIN = REPO / "tests" / "simcluster" / "standins" / "train.py"
# Megatron-LM's argument parser stand-in: train.py imports it from PYTHONPATH, as in slime's image
MEGATRON = REPO / "tests" / "simcluster" / "megatron_standin"
VENV_BIN = Path(sys.executable).parent
RAY = VENV_BIN / "ray"
PREFIX = re.compile(r"^(?:\x1b\[\d+m)?\((?P<cls>\w+) pid=(?P<pid>\d+)(?:, ip=[\d.]+)?\)(?:\x1b\[0m)? (?P<rest>.*)$")
SLIME_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] [\w.]+\.py:\d+ - ")


def _can_unshare() -> str | None:
    """None when a private node can run here, else why not."""
    if os.geteuid() != 0:
        return "needs root: the Ray node runs in its own unshare'd net/pid/mount/uts namespaces"
    if not (shutil.which("unshare") and shutil.which("nsenter") and shutil.which("ip")):
        return "needs unshare, nsenter and ip (util-linux, iproute2)"
    if not RAY.exists():
        return f"needs the venv's real Ray ({RAY})"
    r = subprocess.run(["unshare", "--net", "--pid", "--mount", "--uts", "--fork", "--mount-proc", "true"],
                       capture_output=True, timeout=30)
    if r.returncode != 0:
        return "unshare of net/pid/mount/uts namespaces is not permitted here: " + r.stderr.decode()[-200:]
    return None


WHY_NOT = _can_unshare()
needs_node = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")

# PID 1 of the node: brings up lo, a private /dev/shm, `ray start --head`, then reaps forever.
INIT = r"""
import json, os, subprocess, sys
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/dev/shm"], check=True)
r = subprocess.run(["ray", "start", "--head", "--num-gpus", "8", "--num-cpus", "32", "--disable-usage-stats",
                    "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1", "--dashboard-port", "8265"],
                   capture_output=True, text=True, stdin=subprocess.DEVNULL, cwd=sys.argv[2])
with open(sys.argv[1] + ".tmp", "w") as f:
    json.dump({"rc": r.returncode, "out": r.stdout[-3000:], "err": r.stderr[-3000:]}, f)
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
while True:
    try:
        os.wait()
    except ChildProcessError:
        import time; time.sleep(0.5)
"""

API = r"""
import json, sys, urllib.error, urllib.request
method, path, body = sys.argv[1], sys.argv[2], sys.argv[3]
req = urllib.request.Request("http://127.0.0.1:8265" + path, method=method, data=body.encode() if body else None,
                             headers={"Content-Type": "application/json"})
try:
    with urllib.request.urlopen(req, timeout=30) as r:
        print(json.dumps({"code": r.status, "body": r.read().decode()}))
except urllib.error.HTTPError as e:
    print(json.dumps({"code": e.code, "body": e.read().decode()}))
"""


def wait_for(pred, timeout, what):
    deadline = time.time() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


class Node:
    def __init__(self, base: Path):
        self.base = base
        self.rt = base / "rt"
        self.rt.mkdir()
        self.logs = self.rt / "ray" / "session_latest" / "logs"  # Ray's temp dir is $RAY_TMPDIR/ray
        (base / "home").mkdir()
        # A private HOME: Ray 2.60 turns token auth on when ~/.ray/auth_token exists (any local
        # `ray.init()` on this host writes one), and the REST calls below carry no token.
        env = dict(os.environ, PATH=f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}", RAY_TMPDIR=str(self.rt),
                   HOME=str(base / "home"), RAY_AUTH_MODE="disabled", RAY_JOB_STOP_WAIT_TIME_S="20",
                   PYTHONDONTWRITEBYTECODE="1")
        for k in ("RAY_ADDRESS", "SIMCLUSTER_DIR", "SIMCLUSTER_NODE", "VIRTUAL_ENV"):
            env.pop(k, None)
        self.env = env
        self.proc = None
        self.init_pid = None
        self.pid_ns = None

    def start(self):
        base, env = self.base, self.env
        ready = base / "ready.json"
        self.proc = subprocess.Popen(
            ["unshare", "--net", "--pid", "--mount", "--uts", "--fork", "--mount-proc", "--kill-child",
             sys.executable, "-c", INIT, str(ready), str(base)],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.init_pid = wait_for(self._child, 20, "the namespace's PID 1")
        self.pid_ns = os.readlink(f"/proc/{self.init_pid}/ns/pid")
        info = json.loads(wait_for(lambda: ready.exists() and ready.read_text(), 120, "ray start"))
        assert info["rc"] == 0, info
        wait_for(lambda: self.api("GET", "/api/version")["code"] == 200, 60, "the dashboard")

    def _child(self):
        try:
            kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except OSError:
            return None
        return int(kids[0]) if kids else None

    def ns(self, *cmd, timeout=60, check=False):
        r = subprocess.run(["nsenter", "--target", str(self.init_pid), "--net", "--pid", "--mount", "--uts", "--",
                            *map(str, cmd)], env=self.env, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
        if check:
            assert r.returncode == 0, r.stdout + r.stderr
        return r

    def api(self, method, path, body=None):
        r = self.ns(sys.executable, "-c", API, method, path, json.dumps(body) if body is not None else "")
        if r.returncode != 0:
            return {"code": -1, "body": r.stderr}
        return json.loads(r.stdout)

    def submit(self, sid, args, sim: Path, cli=False):
        env_vars = {"SIMCLUSTER_DIR": str(sim), "PYTHONPATH": str(MEGATRON)}
        entry = ["python3", str(TRAIN), *args]
        if cli:
            r = self.ns(RAY, "job", "submit", "--address", "http://127.0.0.1:8265", "--submission-id", sid,
                        "--no-wait", "--runtime-env-json", json.dumps({"env_vars": env_vars}), "--", *entry,
                        timeout=120)
            assert r.returncode == 0, r.stdout + r.stderr
            return
        body = {"entrypoint": shlex.join(entry), "submission_id": sid, "runtime_env": {"env_vars": env_vars}}

        def go():
            r = self.api("POST", "/api/jobs/", body)
            if r["code"] == 500 and "No available agent" in r["body"]:
                return None
            assert r["code"] == 200, r
            return r
        wait_for(go, 60, "a job agent")

    def job(self, sid) -> dict:
        r = self.api("GET", f"/api/jobs/{sid}")
        assert r["code"] == 200, r
        return json.loads(r["body"])

    def wait_done(self, sid, timeout=90) -> dict:
        return wait_for(lambda: (lambda j: j if j["status"] in ("SUCCEEDED", "FAILED", "STOPPED") else None)(
            self.job(sid)), timeout, f"job {sid} to finish")

    def log(self, sid) -> str:
        p = self.logs / f"job-driver-{sid}.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def wait_log(self, sid, needle, timeout=60):
        def f():
            text = self.log(sid)
            if needle in text:
                return text
            j = self.job(sid)
            assert j["status"] in ("PENDING", "RUNNING"), \
                f"job ended ({j['status']}) before {needle!r}:\n{text[-4000:]}"
            return None
        return wait_for(f, timeout, f"{needle!r} in the driver log of {sid}")

    def host_pid(self, ns_pid: int) -> int | None:
        """The host pid of the process that is `ns_pid` inside this node's PID namespace."""
        for ent in os.listdir("/proc"):
            if not ent.isdigit():
                continue
            try:
                if os.readlink(f"/proc/{ent}/ns/pid") != self.pid_ns:
                    continue
                for line in Path(f"/proc/{ent}/status").read_text().splitlines():
                    if line.startswith("NSpid:") and int(line.split()[-1]) == ns_pid:
                        return int(ent)
            except (OSError, ValueError):
                continue
        return None

    def procs(self, prefix: str) -> list[int]:
        out = []
        for ent in os.listdir("/proc"):
            if not ent.isdigit():
                continue
            try:
                if os.readlink(f"/proc/{ent}/ns/pid") != self.pid_ns:
                    continue
                if Path(f"/proc/{ent}/cmdline").read_bytes().startswith(prefix.encode()):
                    state = Path(f"/proc/{ent}/stat").read_text().rsplit(")", 1)[1].split()[0]
                    if state not in ("Z", "X"):
                        out.append(int(ent))
            except OSError:
                continue
        return out

    def close(self):
        if self.proc is None:
            return
        if not self.init_pid:
            self.init_pid = self._child()
        pid = self.init_pid
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)  # PID 1 of the namespace: everything in it goes
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        if pid:  # the kernel kills the rest of the namespace asynchronously
            deadline = time.time() + 20
            while time.time() < deadline and any(self._in_ns(e) for e in os.listdir("/proc") if e.isdigit()):
                time.sleep(0.1)

    def _in_ns(self, ent: str) -> bool:
        try:
            return os.readlink(f"/proc/{ent}/ns/pid") == self.pid_ns
        except OSError:
            return False


@pytest.fixture(scope="module")
def node():
    base = Path(tempfile.mkdtemp(prefix="sfray-", dir="/tmp"))  # short: Ray's socket paths live under it
    n = Node(base)
    try:
        n.start()
        yield n
    finally:
        n.close()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def inputs(node):
    d = node.base / "in"
    (d / "hf").mkdir(parents=True)
    (d / "hf" / "config.json").write_text(json.dumps({"num_hidden_layers": 48}))
    (d / "td" / "release").mkdir(parents=True)
    (d / "td" / "latest_checkpointed_iteration.txt").write_text("release")
    (d / "data").mkdir()
    rows = "".join(json.dumps({"prompt": [{"role": "user", "content": f"q{i}"}], "label": str(i)}) + "\n"
                   for i in range(40))
    (d / "data" / "dapo.jsonl").write_text(rows)
    (d / "data" / "aime.jsonl").write_text(rows)
    return d


def sim_dir(node, name, **conf) -> Path:
    s = node.base / "sim" / name
    (s / "faults").mkdir(parents=True)
    (s / "sim.json").write_text(json.dumps({"rollout_seconds": 0.1, "save_seconds": 0.01, **conf}))
    return s


def args_8gpu(inp: Path, save: Path, num_rollout: int, save_interval: int = 2) -> list[str]:
    """The single-node recipe's shape: 6 actor GPUs (PP6) + 2 rollout GPUs, not colocated."""
    return ["--hf-checkpoint", f"{inp}/hf", "--ref-load", f"{inp}/td", "--load", str(save), "--save", str(save),
            "--save-interval", str(save_interval), "--prompt-data", f"{inp}/data/dapo.jsonl", "--input-key", "prompt",
            "--label-key", "label", "--apply-chat-template", "--rollout-shuffle", "--rm-type", "deepscaler",
            "--eval-prompt-data", "aime", f"{inp}/data/aime.jsonl", "--eval-interval", "20",
            "--actor-num-nodes", "1", "--actor-num-gpus-per-node", "6", "--rollout-num-gpus", "2",
            "--rollout-num-gpus-per-engine", "2", "--tensor-model-parallel-size", "1", "--sequence-parallel",
            "--pipeline-model-parallel-size", "6", "--num-rollout", str(num_rollout), "--rollout-batch-size", "16",
            "--n-samples-per-prompt", "4", "--global-batch-size", "64", "--advantage-estimator", "gspo",
            "--kl-loss-coef", "0.00", "--kl-coef", "0.00", "--eps-clip", "4e-4", "--lr", "1e-6",
            "--sglang-cuda-graph-bs", "1", "2", "4", "8", "--moe-layer-freq", "[1]*48", "--num-layers", "48"]


def prefixed(log: str) -> list[tuple[str, str]]:
    """(actor class, text) for every line Ray forwarded from an actor."""
    out = []
    for line in log.splitlines():
        m = PREFIX.match(line)
        if m:
            out.append((m.group("cls"), m.group("rest")))
    return out


# ------------------------------------------------------------------------------------------------
# without Ray: argument errors end before ray.init
# ------------------------------------------------------------------------------------------------
def test_argument_errors_and_no_local_ray(tmp_path):
    env = dict(os.environ, SIMCLUSTER_DIR=str(tmp_path), PYTHONPATH=str(MEGATRON))
    env.pop("RAY_ADDRESS", None)
    base = ["--hf-checkpoint", str(tmp_path), "--num-rollout", "1", "--prompt-data", str(tmp_path / "p.jsonl")]
    r = subprocess.run([sys.executable, str(TRAIN), "stray", *base], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "unrecognized arguments: stray" in r.stderr
    assert r.stdout.splitlines()[0] == "slimeflow-standin argv: " + json.dumps(["stray", *base])
    r = subprocess.run([sys.executable, str(TRAIN), *base], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "does not appear to have a file named config.json" in r.stderr
    (tmp_path / "config.json").write_text("{}")
    r = subprocess.run([sys.executable, str(TRAIN), *base[:2]], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "please set --num-rollout or --num-epoch" in r.stderr
    # valid arguments, but not a Ray job: it refuses to start a local Ray on this host
    r = subprocess.run([sys.executable, str(TRAIN), *base], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "not running as a Ray job entrypoint (RAY_ADDRESS is unset)" in r.stderr


# ------------------------------------------------------------------------------------------------
# on the private node
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def first_run(node, inputs):
    sim = sim_dir(node, "a")
    save = node.base / "save-a"
    args = args_8gpu(inputs, save, 3)
    node.submit("a-1", args, sim, cli=True)  # through the real `ray job submit`
    job = node.wait_done("a-1")
    return {"job": job, "log": node.log("a-1"), "save": save, "sim": sim, "args": args}


@needs_node
def test_progress_lines_carry_ray_actor_prefix(first_run):
    job, log = first_run["job"], first_run["log"]
    assert job["status"] == "SUCCEEDED", log[-4000:]
    argv_lines = [ln for ln in log.splitlines() if ln.startswith("slimeflow-standin argv: ")]
    assert len(argv_lines) == 1
    assert json.loads(argv_lines[0].split(": ", 1)[1]) == first_run["args"]  # token for token, [1]*48 too
    lines = prefixed(log)
    by = {}
    for cls, text in lines:
        by.setdefault(cls, []).append(text)
    assert set(by) == {"MegatronTrainRayActor", "RolloutManager"}, set(by)
    train = by["MegatronTrainRayActor"]
    for i in range(3):
        assert any(re.match(SLIME_LINE.pattern + rf"rollout {i}: \{{'rollout/raw_reward': ", t) for t in train)
        assert any(re.match(SLIME_LINE.pattern + rf"step {i}: \{{'train/loss': .*'train/grad_norm': ", t)
                   for t in train)
    assert any(" - Timer train end (elapsed: " in t for t in train)
    assert any(re.search(r"eval 0: \{'eval/aime': ", t) for t in by["RolloutManager"])
    # the driver logs the placement group itself (no prefix), slime's bundle shape: 6 + 2 GPUs
    assert "placement_group.py:125 - Creating placement group with 8 GPUs..." in log
    assert len(re.findall(r"placement_group.py:92 -   bundle +\d+, actual_bundle_index", log)) == 8
    # no progress line without a prefix: they all come from actors
    assert not re.search(r"^\[[^\]]+\] \S+ - (rollout|step) \d+:", log, re.M)


@needs_node
def test_checkpoints_written_by_the_actors(first_run):
    save = first_run["save"]
    assert first_run["job"]["status"] == "SUCCEEDED"
    assert sorted(p.name for p in save.iterdir()) == ["iter_0000001", "iter_0000002",
                                                       "latest_checkpointed_iteration.txt", "rollout"]
    assert (save / "latest_checkpointed_iteration.txt").read_text() == "2"
    it = save / "iter_0000002"
    assert sorted(p.name for p in it.iterdir()) == sorted(
        [f"__{r}_0.distcp" for r in range(6)] + ["common.pt", "metadata.json", ".metadata"])
    assert sorted(p.name for p in (save / "rollout").iterdir()) == ["global_dataset_state_dict_1.pt",
                                                                    "global_dataset_state_dict_2.pt"]
    assert "successfully saved checkpoint from iteration       2 to " in first_run["log"]
    # the actor records: the injector's contract
    recs = {p.stem: json.loads(p.read_text()) for p in (first_run["sim"] / "actors" / "a-1").glob("*.json")}
    assert set(recs) == {"driver", "RolloutManager", "MegatronTrainRayActor-0"}
    a = recs["MegatronTrainRayActor-0"]
    assert a["ranks"] == list(range(6)) and a["submission_id"] == "a-1" and a["pid_ns"].startswith("pid:[")
    assert f"(MegatronTrainRayActor pid={a['pid']})" in first_run["log"]


@needs_node
def test_resume_starts_at_checkpoint_plus_one(node, inputs, first_run):
    assert first_run["job"]["status"] == "SUCCEEDED"
    save = first_run["save"]
    node.submit("a-2", args_8gpu(inputs, save, 4), first_run["sim"])
    job = node.wait_done("a-2")
    log = node.log("a-2")
    assert job["status"] == "SUCCEEDED", log[-4000:]
    texts = [t for _, t in prefixed(log)]
    assert any(" - rollout 3: {" in t for t in texts)
    assert not any(re.search(r" - rollout [0-2]: \{", t) for t in texts)
    assert any(t == f" loading checkpoint from {save} at iteration 2" for t in texts)
    assert any(f"load metadata from {save}/rollout/global_dataset_state_dict_2.pt" in t for t in texts)
    assert (save / "latest_checkpointed_iteration.txt").read_text() == "3"
    # --num-rollout is a total: reached, so zero rollouts and success
    node.submit("a-3", args_8gpu(inputs, save, 4), first_run["sim"])
    job = node.wait_done("a-3")
    log = node.log("a-3")
    assert job["status"] == "SUCCEEDED", log[-4000:]
    assert not re.search(r" - rollout \d+: \{", log)
    assert (save / "latest_checkpointed_iteration.txt").read_text() == "3"


@needs_node
def test_sigkill_of_a_training_actor_fails_the_job(node, inputs):
    sim = sim_dir(node, "kill", rollout_seconds=0.3)
    node.submit("kill-1", args_8gpu(inputs, node.base / "save-kill", 1000, save_interval=1000), sim)
    node.wait_log("kill-1", " - rollout 1: {")
    rec = json.loads((sim / "actors" / "kill-1" / "MegatronTrainRayActor-0.json").read_text())
    pid = node.host_pid(rec["pid"])
    assert pid is not None
    assert Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::MegatronTrainRayActor")
    os.kill(pid, signal.SIGKILL)
    job = node.wait_done("kill-1")
    log = node.log("kill-1")
    assert job["status"] == "FAILED", log[-4000:]
    assert "ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task." in log
    assert "class_name: MegatronTrainRayActor" in log and f"pid: {rec['pid']}" in log
    assert job["driver_exit_code"] == 1


@needs_node
def test_job_stop_during_a_save_ends_at_once(node, inputs):
    sim = sim_dir(node, "stop", save_seconds=300)
    save = node.base / "save-stop"
    node.submit("stop-1", args_8gpu(inputs, save, 1000, save_interval=1), sim)
    node.wait_log("stop-1", "saving checkpoint at iteration       0")
    r = node.ns(RAY, "job", "stop", "--address", "http://127.0.0.1:8265", "stop-1", timeout=120)
    assert r.returncode == 0 and "Job 'stop-1' was stopped" in r.stdout + r.stderr, r.stdout + r.stderr
    assert node.job("stop-1")["status"] == "STOPPED"
    sup = node.logs / "jobs" / "supervisor-stop-1.log"
    # the driver died of SIGTERM itself (ray.init's handler), inside the 20 s grace: no SIGKILL needed
    assert "has been terminated gracefully with SIGTERM" in sup.read_text()
    assert not (save / "latest_checkpointed_iteration.txt").exists()  # the 300 s save was not awaited
    wait_for(lambda: not node.procs("ray::MegatronTrainRayActor") and not node.procs("ray::RolloutManager"), 60,
             "the job's actors to go")


@needs_node
def test_layout_that_does_not_fit_stays_pending(node, inputs):
    sim = sim_dir(node, "pending", pg_wait_log_seconds=0.5)
    args = args_8gpu(inputs, node.base / "save-pending", 5)
    args[args.index("--actor-num-gpus-per-node") + 1] = "8"  # 8 + 2 rollout GPUs on an 8-GPU node
    node.submit("pend-1", args, sim)
    log = node.wait_log("pend-1", "Waiting for placement group of 10 GPUs (elapsed ")
    assert "Creating placement group with 10 GPUs..." in log
    assert re.search(r"Waiting for placement group of 10 GPUs \(elapsed [\d.]+s\): 8 GPUs registered with Ray, "
                     r"8 available\.", log)
    assert node.job("pend-1")["status"] == "RUNNING"
    r = node.api("POST", "/api/jobs/pend-1/stop")
    assert r["code"] == 200
    assert node.wait_done("pend-1")["status"] == "STOPPED"


@needs_node
@pytest.mark.parametrize("kind,needles", [
    ("oom", [r"ray\.exceptions\.RayTaskError\(OutOfMemoryError\): \S*ray::MegatronTrainRayActor\.train\(\)",
             r"(?m)^torch\.OutOfMemoryError: CUDA out of memory\. Tried to allocate 2\.00 GiB"]),
    ("nccl", [r"RayTaskError\(DistBackendError\): \S*ray::MegatronTrainRayActor\.train\(\)",
              r"\(MegatronTrainRayActor pid=\d+\)\S* \S+ \[\d+\] NCCL WARN socketProgress",
              r"(?m)^torch\.distributed\.DistBackendError: NCCL error in: .*ProcessGroupNCCL\.cpp"]),
    ("exception", [r"RayTaskError\(KeyError\): \S*ray::RolloutManager\.generate\(\)", r"(?m)^KeyError: 'label'"]),
])
def test_fault_files(node, inputs, kind, needles):
    sim = sim_dir(node, f"fault-{kind}")
    (sim / "faults" / kind).write_text("once at=1")
    save = node.base / f"save-{kind}"
    sid = f"fault-{kind}"
    node.submit(sid, args_8gpu(inputs, save, 5, save_interval=1), sim)
    job = node.wait_done(sid)
    log = node.log(sid)
    assert job["status"] == "FAILED", log[-4000:]
    for n in needles:  # Ray colours the `ray::Class.method()` part
        assert re.search(n, log), (n, log[-4000:])
    assert (save / "latest_checkpointed_iteration.txt").read_text() == "0"
    assert not (sim / "faults" / kind).exists()


@needs_node
def test_hang_file_stops_progress_until_removed(node, inputs):
    sim = sim_dir(node, "hang", rollout_seconds=0.2)
    sid = "hang-1"
    node.submit(sid, args_8gpu(inputs, node.base / "save-hang", 4, save_interval=100), sim)
    (sim / "faults" / "hang").write_text("at=2")
    node.wait_log(sid, " - rollout 1: {")
    # while the file is there: the actors sit in their hang loop and nothing more reaches the log
    wait_for(lambda: any(Path(f"/proc/{p}/cmdline").read_bytes().startswith(b"ray::RolloutManager.generate")
                         for p in node.procs("ray::RolloutManager")), 30, "the RolloutManager to block in generate")
    # Ray's log monitor may still forward lines written before the hang, so what is checked is
    # that no rollout after the hang point arrives while the job stays RUNNING
    time.sleep(1.5)
    assert node.job(sid)["status"] == "RUNNING"
    assert " - rollout 2: {" not in node.log(sid)
    (sim / "faults" / "hang").unlink()
    job = node.wait_done(sid)
    assert job["status"] == "SUCCEEDED"
    assert " - rollout 3: {" in node.log(sid)
