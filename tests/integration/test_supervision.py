"""Supervision of `train` under faults: a live Airflow (scheduler, dag-processor, api-server on
8181, triggerer as separate processes, so the triggerer can be restarted) against the simulated
cluster over real SSH. Each test starts one DAG run through the REST API and injects a fault
while the job trains.

The runs share one cluster (downloads and conversion happen once); each run raises num_rollout
above the checkpoint already in the save dir, so every run trains and resumes for real.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.loopback import WebhookSink
from tests.simcluster.airflow_run import VENV_BIN, airflow_env, run_conf
from tests.simcluster.cluster import SimCluster, port_open, procs_of

pytestmark = pytest.mark.integration
DAG = "slime_qwen3_next_80b_a3b"
PORT = int(os.environ.get("SLIMEFLOW_SUPERVISION_PORT", "8181"))
SAVE = "Qwen3-Next-80B-A3B-Thinking_slime"


class LiveAirflow:
    """Airflow 3 components as separate processes (what `airflow standalone` starts), each in
    its own process group."""

    def __init__(self, env: dict, home: Path):
        self.env, self.home, self.procs = env, home, {}
        self.url = f"http://127.0.0.1:{PORT}"

    def start(self, name: str, *args):
        log = open(self.home / f"{name}.out", "ab")
        self.procs[name] = subprocess.Popen([str(VENV_BIN / "airflow"), *args], env=self.env,
                                            stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)

    def stop(self, name: str, sig=signal.SIGTERM):
        p = self.procs.pop(name, None)
        if p is None:
            return
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            return
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)

    def up(self):
        self.start("api-server", "api-server", "--port", str(PORT), "--host", "127.0.0.1")
        self.start("scheduler", "scheduler")
        self.start("dag-processor", "dag-processor")
        self.start("triggerer", "triggerer")
        end = time.time() + 120
        while time.time() < end:
            try:
                if self.get(f"/api/v2/dags/{DAG}").get("dag_id") == DAG:
                    return
            except (OSError, ValueError, urllib.error.HTTPError):
                pass
            time.sleep(1)
        raise RuntimeError("airflow did not come up; see " + str(self.home))

    def down(self):
        for name in list(self.procs):
            self.stop(name)

    # REST
    def req(self, method: str, path: str, body=None):
        data = json.dumps(body).encode() if body is not None else None
        r = urllib.request.Request(self.url + path, data=data, method=method,
                                   headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(r, timeout=30) as resp:
            return json.loads(resp.read() or b"null")

    def get(self, path):
        return self.req("GET", path)

    def trigger(self, conf: dict) -> str:
        return self.req("POST", f"/api/v2/dags/{DAG}/dagRuns",
                        {"logical_date": None, "conf": conf})["dag_run_id"]

    def ti(self, run_id: str, task: str) -> dict:
        return self.get(f"/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances/{task}")

    def states(self, run_id: str) -> dict:
        tis = self.get(f"/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances")["task_instances"]
        return {t["task_id"] + (f"[{t['map_index']}]" if t["map_index"] >= 0 else ""):
                t["state"] for t in tis}

    def run_state(self, run_id: str) -> str:
        return self.get(f"/api/v2/dags/{DAG}/dagRuns/{run_id}")["state"]

    def wait(self, pred, timeout: float, what: str, every: float = 0.25):
        end = time.time() + timeout
        while time.time() < end:
            got = pred()
            if got:
                return got
            time.sleep(every)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")

    def wait_ti(self, run_id, task, states, timeout=120):
        states = (states,) if isinstance(states, str) else tuple(states)
        return self.wait(lambda: self.ti(run_id, task)["state"] in states and
                         self.ti(run_id, task), timeout, f"{task} in {states}")

    def wait_run(self, run_id, timeout=120):
        return self.wait(lambda: (s := self.run_state(run_id)) in ("success", "failed") and s,
                         timeout, f"run {run_id} to finish")

    def mark(self, run_id, task, state):
        return self.req("PATCH", f"/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances/{task}",
                        {"new_state": state})

    def clear(self, run_id, tasks, downstream=True):
        return self.req("POST", f"/api/v2/dags/{DAG}/clearTaskInstances",
                        {"dry_run": False, "dag_run_id": run_id, "task_ids": tasks,
                         "include_downstream": downstream, "only_failed": False,
                         "reset_dag_runs": True})

    def log(self, run_id, task, tries=None) -> str:
        """Worker and triggerer logs of every try of a task, from the log folder."""
        d = self.home / "logs" / f"dag_id={DAG}" / f"run_id={run_id}" / f"task_id={task}"
        out = []
        for f in sorted(d.rglob("attempt=*.log*")):
            if tries is None or any(f.name.startswith(f"attempt={t}.") for t in tries):
                out.append(f.read_text(errors="replace"))
        return "\n".join(out)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("supervision")
    cluster = SimCluster.up(tmp / "cluster", nodes=1, gpu="H100", rollout_seconds=0.25)
    home = tmp / "airflow"
    home.mkdir()
    hook = WebhookSink().__enter__()  # a real HTTP receiver as the Slack channel
    env = airflow_env(cluster, home)
    env.update({
        "AIRFLOW_CONN_SLIMEFLOW_SLACK": hook.conn_json(),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{PORT}/execution/",
        "AIRFLOW__API__PORT": str(PORT), "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{PORT}",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "600",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": "0",
        # the api-server's run-note thread SSHes to the head on its own schedule; its sessions
        # would race the "nothing left on the node" checks here (tests/e2e/test_ui.py tests it)
        "SLIMEFLOW_NOTES": "off",
    })
    assert not port_open("127.0.0.1", PORT), f"port {PORT} is busy"
    subprocess.run([str(VENV_BIN / "airflow"), "db", "migrate"], env=env, check=True,
                   capture_output=True)
    af = LiveAirflow(env, home)
    af.cluster, af.hook = cluster, hook
    try:
        af.up()
        yield af
    finally:
        af.down()
        hook.__exit__(None, None, None)
        cluster.down()
        assert procs_of(str(cluster.dir)) == [], "the simulated cluster left processes behind"


# -- helpers ---------------------------------------------------------------------------------

def latest_iteration(cluster) -> int:
    f = cluster.base_folder / SAVE / "latest_checkpointed_iteration.txt"
    return int(f.read_text().strip()) if f.exists() else -1


def checkpoints(cluster) -> list:
    return sorted(int(p.name[5:]) for p in (cluster.base_folder / SAVE).glob("iter_*"))


def submissions(cluster, run_id: str) -> list:
    """Job driver logs of this run's submissions in every Ray session the head ever had (real
    Ray keeps one job-driver-<id>.log per submission under session_*/logs)."""
    ray = cluster.node_tmp(0) / "ray"  # the head's own /tmp/ray
    from slimeflow.builders import submission_id

    base = submission_id(DAG, run_id)
    return sorted({p.name for p in ray.rglob(f"job-driver-{base}*.log")
                   if "session_latest" not in p.parts})


def start(af, more: int, **conf) -> tuple:
    """Trigger a run that trains `more` rollouts beyond the save dir's checkpoint."""
    c = af.cluster
    total = latest_iteration(c) + 1 + more
    run_id = af.trigger(run_conf(c, num_rollout=total, save_interval=2, poll_interval=2,
                                 lease_wait_minutes=0, **conf))
    return run_id, total


def wait_training(af, run_id, rollouts=2, timeout=150):
    """Wait until train is deferred and the trainer has logged `rollouts` new rollouts."""
    af.wait_ti(run_id, "train", "deferred", timeout)
    first = latest_iteration(af.cluster)
    af.wait(lambda: "progress: rollout" in af.log(run_id, "train"), 60, "a progress line")
    af.wait(lambda: latest_iteration(af.cluster) >= first + rollouts, 60, "a new checkpoint")


def leftover(cluster) -> list:
    """Processes on the cluster's nodes other than their PID 1 and sshd listener: what a run
    left behind (Ray, drivers, actors, sessions)."""
    return [p for p in procs_of(str(cluster.dir)) if p.role not in ("init", "sshd", "hub")]


# -- tests -----------------------------------------------------------------------------------

def plant_lease(cluster, run: str, age_s: float) -> Path:
    d = cluster.base_folder / ".slimeflow" / "leases"
    d.mkdir(parents=True, exist_ok=True)
    f = d / "sim_node_0.json"
    now = time.time()
    f.write_text(json.dumps({"run": run, "node": "sim_node_0", "submission_id": "slimeflow-other-x",
                             "taken": now - age_s, "heartbeat": now - age_s}))
    return f


def test_a_node_leased_by_another_run_fails_preflight_naming_it(live):
    af, c = live, live.cluster
    lease = plant_lease(c, "slime_qwen3_4b/manual__other", age_s=5)
    try:
        run_id, _ = start(af, 4)
        assert af.wait_run(run_id, 120) == "failed"
        st = af.states(run_id)
        assert st["preflight[0]"] == "failed" and st["train"] == "upstream_failed", st
        log = af.log(run_id, "preflight")
        assert "node sim_node_0 is in use by run slime_qwen3_4b/manual__other" in log
        # teardown ran and left the other run's node alone
        assert "is leased by run slime_qwen3_4b/manual__other" in af.log(run_id, "teardown")
        assert json.loads(lease.read_text())["run"] == "slime_qwen3_4b/manual__other"
    finally:
        lease.unlink(missing_ok=True)


def test_survives_triggerer_restart_ssh_drop_and_sshd_restart(live):
    """One run: a stale lease is broken, the task defers, then the triggerer is killed and
    restarted, the SSH sessions are cut and sshd restarts; the job is never submitted twice."""
    af, c = live, live.cluster
    plant_lease(c, "slime_qwen3_4b/manual__dead", age_s=3600)
    before = latest_iteration(c)
    run_id, total = start(af, 160)
    wait_training(af, run_id)
    assert af.ti(run_id, "train")["state"] == "deferred"  # no worker slot while training
    assert "broke the stale lease of run slime_qwen3_4b/manual__dead" in af.log(run_id,
                                                                                  "preflight")
    af.stop("triggerer", signal.SIGKILL)
    c.fault("drop-ssh", node=0)
    c.fault("restart-sshd", node=0)
    af.start("triggerer", "triggerer")
    assert af.wait_run(run_id, 180) == "success", af.states(run_id)
    assert len(submissions(c, run_id)) == 1, submissions(c, run_id)
    log = af.log(run_id, "train")
    assert f"progress: rollout {total}/{total} (100.0%)" in log
    assert "following job" in log  # the new trigger continued from the saved log offset
    copied = [json.loads(l).get("event", "") for l in log.splitlines() if l.startswith("{")]
    last = [e for e in copied if e.startswith("[sim_node_0]") and f" rollout {total - 1}: " in e]
    assert len(last) == 1, last  # and did not copy the log twice
    assert latest_iteration(c) == total - 1 > before
    assert set(range(before + 2 if before >= 0 else 1, total, 2)) <= set(checkpoints(c))
    runs = c.base_folder / ".slimeflow" / "runs"
    from slimeflow.builders import submission_id
    prog = json.loads((runs / submission_id(DAG, run_id) / "progress.json").read_text())
    assert prog["rollout"] == total and prog["status"] == "SUCCEEDED"
    assert af.ti(run_id, "teardown")["state"] == "success"
    assert not (c.base_folder / ".slimeflow" / "leases" / "sim_node_0.json").exists()
    assert leftover(c) == []


def test_killed_actor_fails_naming_it_then_rerun_resumes_then_hang_is_a_stall(live):
    af, c = live, live.cluster
    run_id, total = start(af, 400, stall_timeout_minutes=0.15)
    wait_training(af, run_id, rollouts=4)
    killed = c.fault("kill-actor", node=0)  # SIGKILL of a MegatronTrainRayActor
    af.wait_ti(run_id, "train", ("failed", "up_for_retry"), 60)  # latency: bench/detect_latency.py
    log = af.log(run_id, "train")
    assert "ended FAILED: cause Ray actor died" in log, log[-3000:]
    assert f"on node sim_node_0 in MegatronTrainRayActor (pid {killed['ns_pid']})" in log
    assert "Last " in log and "log lines:" in log
    at_kill = latest_iteration(c)
    kept = checkpoints(c)
    assert at_kill in kept
    assert len(submissions(c, run_id)) == 1
    af.wait_run(run_id, 60)
    # re-run: the FAILED attempt is resubmitted under a new id and resumes from the checkpoint
    af.clear(run_id, ["train"])
    af.wait_ti(run_id, "train", "deferred", 90)
    log = af.log(run_id, "train")
    assert "resubmitting as" in log and f"holds rollout {at_kill}" in log
    af.wait(lambda: latest_iteration(c) >= at_kill + 4, 60, "the resumed job to checkpoint")
    assert set(kept) <= set(checkpoints(c))  # nothing lost
    resumed = next(c.node_tmp(0).joinpath("ray").rglob("job-driver-*-a2.log")).read_text()
    assert f"rollout {at_kill + 1}: " in resumed and f"rollout {at_kill}: " not in resumed
    assert len(submissions(c, run_id)) == 2  # one per attempt
    # now the trainer hangs: no rollout line for stall_timeout -> stalled, job stopped
    c.fault("hang-trainer", node=0)  # every training actor freezes; Ray sees nothing wrong
    af.wait_ti(run_id, "train", "failed", 90)
    log = af.log(run_id, "train")
    assert "cause stalled" in log and "stopped the stalled job" in log
    assert af.wait_run(run_id, 60) == "failed"
    assert af.ti(run_id, "teardown")["state"] == "success"
    assert leftover(c) == []


def test_vanished_head_is_node_lost_at_the_next_poll(live):
    af, c = live, live.cluster
    run_id, _ = start(af, 400)
    wait_training(af, run_id)
    kept = checkpoints(c)
    c.fault("vanish-head", node=0)   # a power cut: everything on the node dies at once
    c.fault("reboot-node", node=0)   # it boots again: sshd is back, Ray is gone
    af.wait_ti(run_id, "train", "failed", 90)
    log = af.log(run_id, "train")
    assert "ended LOST: cause node lost" in log and "nor its GCS answers" in log
    assert af.wait_run(run_id, 60) == "failed"
    assert set(kept) <= set(checkpoints(c))
    assert leftover(c) == []


def test_unreachable_head_then_a_clear_reattaches_then_a_cancel_stops_everything(live):
    """SSH to the head is cut for longer than unreachable_timeout while the job trains on: the
    task fails UNREACHABLE with the documented message and teardown cannot reach the node.
    Once SSH is back, clearing the task reattaches to the same job (no second submission), and
    marking it failed from the UI stops Ray everywhere."""
    af, c = live, live.cluster
    run_id, _ = start(af, 1200, unreachable_timeout_minutes=0.3)
    wait_training(af, run_id)
    c.fault("block-ssh", node=0)
    try:
        af.wait_ti(run_id, "train", "failed", 120)
        log = af.log(run_id, "train")
        assert "ended UNREACHABLE: cause node lost; the head was unreachable over SSH for " in log
        assert "(unreachable_timeout 18 s; last error: " in log
        assert ("fix: check that the head is up and reachable over SSH, then clear the task: it "
                "reattaches to the job if it still runs, or resumes from the latest checkpoint"
                in log)
        assert af.wait_run(run_id, 120) == "failed"  # teardown could not reach the head either
        assert [p for p in leftover(c) if "train.py" in " ".join(p.cmdline)]  # the job trains on
    finally:
        c.fault("unblock-ssh", node=0)
    before = latest_iteration(c)
    af.clear(run_id, ["train"])
    af.wait_ti(run_id, "train", "deferred", 90)
    assert "attaching to it (no second submission)" in af.log(run_id, "train")
    # the new trigger follows the same job: its progress lines arrive in the new try's log
    af.wait(lambda: "progress: rollout" in af.log(run_id, "train", tries=[2]), 60,
            "progress lines from the reattached trigger")
    af.wait(lambda: latest_iteration(c) > before, 60, "the same job to checkpoint again")
    assert len(submissions(c, run_id)) == 1
    # cancel from the UI: mark the deferred task failed
    af.mark(run_id, "train", "failed")
    assert af.wait_run(run_id, 90) == "failed"
    af.wait_ti(run_id, "teardown", ("success", "failed"), 60)
    log = af.log(run_id, "train")
    assert "invoking on_kill" in log or "task killed by a user" in log
    af.wait(lambda: leftover(c) == [], 30, "no process of this run on the node")
    assert not [p for p in c.procs(0) if p.cmdline and p.cmdline[0].endswith(("/raylet",
                                                                               "/gcs_server"))]
    assert latest_iteration(c) in checkpoints(c)


def test_gpu_health_during_training_alerts_at_once_and_a_hang_signature_stops_the_job(live):
    """New ECC errors on a GPU mid-run reach on-call while the job still trains; then every
    actor freezes with its GPUs at 100 % on idle power (the NCCL-hang signature the nvidia-smi
    stand-in shows for stopped actors): STALLED with cause NCCL hang after hang_timeout, long
    before stall_timeout, and the job is stopped so that a retry resumes."""
    af, c = live, live.cluster
    run_id, _ = start(af, 400, hang_timeout_minutes=0.25, stall_timeout_minutes=60)
    wait_training(af, run_id)
    af.wait(lambda: "[sim_node_0] GPUs: 8 x util " in af.log(run_id, "train"), 60,
            "the first GPU summary")
    c.fault("gpu-ecc", node=0, gpu=3, count=2)
    want = ("sim_node_0: GPU 3 (0000:5d:00.0) logged 2 new uncorrectable ECC errors during "
            "training (2 since the driver loaded); the job may die of it")
    posts = af.wait(lambda: [p for p in af.hook.posts if want in p["json"].get("text", "")], 60,
                    "the ECC alert")
    assert "GPU health warning" in posts[0]["json"]["text"]
    assert af.ti(run_id, "train")["state"] == "deferred"  # the run goes on
    from slimeflow.builders import submission_id
    prog = c.base_folder / ".slimeflow" / "runs" / submission_id(DAG, run_id) / "progress.json"
    af.wait(lambda: (json.loads(prog.read_text()).get("gpu") or {}).get("summary", {})
            .get("sim_node_0", {}).get("new_ecc") == 2, 60, "the GPU summary in progress.json")
    kept = checkpoints(c)
    c.fault("hang-trainer", node=0)
    af.wait_ti(run_id, "train", ("failed", "up_for_retry"), 120)
    log = af.log(run_id, "train")
    assert "ended STALLED: cause NCCL hang" in log, log[-3000:]
    assert "the GPUs of sim_node_0 have sat at 100.0% utilization while drawing 84.0 W of " \
           "700.0 W" in log, log[-3000:]
    assert "stopped the stalled job" in log
    assert len([p for p in af.hook.posts if want in p["json"].get("text", "")]) == 1
    assert af.wait_run(run_id, 90) == "failed"
    assert set(kept) <= set(checkpoints(c))
    c.fault("gpu-heal", node=0)
    assert leftover(c) == []
