"""docker-compose.yaml for real (`make test-compose`): our own dockerd, local stand-ins for the
official Airflow and postgres images (no registry is reachable here), the real compose file with
the test-only override, and a 2-node simulated cluster (namespaced nodes, real sshd, real Ray).

docs/operations.md §1 is followed as written: its sh blocks run in a fresh copy of the repo's
deployment files (only the `NODES=` line is swapped for the simulated nodes), through a
`docker compose` -> docker-compose v1 shim. Then, as a user would notice:
1. every healthcheck is green, the dag-processor parsed the three DAGs with no import errors;
2. the connections use the mounted key and known_hosts (no host_key pinned);
3. a run triggered through the api-server's REST API trains on both nodes with real Ray, ends
   with the XCom chain and the checkpoint asset, and a triggerer container restarted mid-train
   reattaches to the job, which was submitted once;
4. a node whose host key changed is refused, and the task log says so;
5. `docker compose down` then `up -d` keeps the run history in postgres.

Timings and image sizes land in <state>/timings.json and <state>/images.txt.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import textwrap
import time
import urllib.parse
from pathlib import Path

import pytest

from tests.compose.engine import COMPOSE, Engine, why_not
from tests.e2e.loopback import free_port
from tests.e2e.test_ui import Api, _wait
from tests.integration.test_supervision import latest_iteration, submissions
from tests.simcluster.airflow_run import run_conf
from tests.simcluster.cluster import SimCluster, procs_of

pytestmark = pytest.mark.compose
ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
DAG = "slime_qwen3_next_80b_a3b"
DAGS = {"slime_qwen3_next_80b_a3b", "slime_qwen3_30b_a3b", "slime_qwen3_4b"}
PROJECT = "slimeflowtest"
# what a user's checkout holds that the deployment reads
DEPLOY_FILES = ("docker-compose.yaml", "Dockerfile", "requirements.txt", "constraints.txt",
                "dags", "plugins", "include")
LONG_RUNNING = {"postgres", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                "airflow-triggerer"}
ROLLOUTS = 100  # about 2 minutes of training at 1 s a rollout: room for a restart


def doc_blocks() -> list[str]:
    """The sh blocks of docs/operations.md §1, in order."""
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split("## 1. Deploy Airflow", 1)[1].split("\n## 2.", 1)[0]
    return [textwrap.dedent(body) for _, body in
            re.findall(r"^( *)```sh\n(.*?)^\1```", section, re.M | re.S)]


class Stack:
    def __init__(self, state: Path):
        self.state = state
        self.project = state / "project"
        self.engine = Engine(state / "engine")
        self.timings: dict[str, float] = {}
        self.cluster: SimCluster | None = None
        self.ran: set[int] = set()  # the doc blocks run so far
        self.api_port = free_port()
        self.env = dict(
            os.environ,
            PATH=f"{HERE / 'shim'}:/usr/sbin:/usr/bin:/sbin:/bin",
            DOCKER_HOST=self.engine.host,
            COMPOSE_PROJECT_NAME=PROJECT,
            COMPOSE_FILE="docker-compose.yaml:tests/compose/docker-compose.test.yaml",
            AIRFLOW_API_PORT=f"127.0.0.1:{self.api_port}",
            SLIMEFLOW_TEST_API_PORT=str(self.api_port),
            SLIMEFLOW_TEST_PG_PORT=str(free_port()),
            SLIMEFLOW_TEST_WORKER_LOG_PORT=str(free_port()),
            SLIMEFLOW_TEST_TRIGGER_LOG_PORT=str(free_port()),
            SLIMEFLOW_TEST_SCHEDULER_HEALTH_PORT=str(free_port()),
        )
        for k in list(self.env):  # the deployment's settings come from its .env only
            if k.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_HOME", "SLIMEFLOW_SSH")):
                del self.env[k]

    # -- running things -------------------------------------------------------------------
    def sh(self, script: str, name: str, timeout: float = 1200) -> str:
        """A shell script in the project folder, as a user's terminal there; its output."""
        log = self.state / f"{name}.log"
        r = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=self.project,
                           env=self.env, capture_output=True, text=True, timeout=timeout)
        log.write_text(r.stdout + r.stderr)
        assert r.returncode == 0, f"{name} failed ({r.returncode}):\n{script}\n" \
                                  f"{(r.stdout + r.stderr)[-4000:]}"
        return r.stdout

    def compose(self, *args, check=True, timeout: float = 600) -> subprocess.CompletedProcess:
        r = subprocess.run([COMPOSE, *args], cwd=self.project, env=self.env,
                           capture_output=True, text=True, timeout=timeout)
        assert not check or r.returncode == 0, \
            f"docker-compose {' '.join(args)} failed:\n{(r.stdout + r.stderr)[-3000:]}"
        return r

    def doc(self, i: int, name: str) -> str:
        script = doc_blocks()[i]
        script = "\n".join(l for l in script.splitlines() if not l.startswith("NODES="))
        self.ran.add(i)
        return self.sh(script, f"doc{i}-{name}")

    # -- state ----------------------------------------------------------------------------
    def services(self) -> dict:
        """{service: {"status", "health", "exit"}} of the project's containers."""
        ids = self.compose("ps", "-q").stdout.split()
        if not ids:
            return {}
        info = json.loads(self.engine.docker("inspect", *ids).stdout)
        return {c["Config"]["Labels"]["com.docker.compose.service"]:
                {"status": c["State"]["Status"],
                 "health": (c["State"].get("Health") or {}).get("Status"),
                 "exit": c["State"]["ExitCode"]} for c in info}

    def wait_healthy(self, timeout: float = 600) -> dict:
        def ready():
            s = self.services()
            init = s.get("airflow-init", {})
            assert not (init.get("status") == "exited" and init.get("exit")), \
                "airflow-init failed:\n" + self.compose("logs", "airflow-init").stdout[-3000:]
            return (init.get("status") == "exited" and
                    all(s.get(n, {}).get("health") == "healthy" for n in LONG_RUNNING)) and s
        try:
            return _wait(ready, timeout, "every service to be healthy", interval=2)
        except AssertionError:
            raise AssertionError(f"not healthy: {self.services()}\n"
                                 f"{self.compose('logs', '--tail', '40').stdout[-6000:]}")

    def api(self) -> Api:
        """A token the documented way: the password from the api-server's file (§1 step 5)."""
        password = json.loads(self.doc(4, "password"))["admin"]
        anon = Api(f"http://127.0.0.1:{self.api_port}")
        _wait(lambda: anon.call("GET", "/api/v2/monitor/health"), 120, "the api-server")
        got = anon.call("POST", "/auth/token", {"username": "admin", "password": password})
        return Api(anon.base, got["access_token"])


def task_log(api: Api, run_id: str, task: str, map_index: int = -1) -> str:
    """Every try's log of a task (worker and triggerer parts), read through the REST API."""
    ti = api.get(f"/api/v2/dags/{DAG}/dagRuns/{urllib.parse.quote(run_id, safe='')}"
                 f"/taskInstances/{task}" + (f"/{map_index}" if map_index >= 0 else ""))
    out = []
    for n in range(1, max(1, ti["try_number"]) + 1):
        got = api.get(f"/api/v2/dags/{DAG}/dagRuns/{urllib.parse.quote(run_id, safe='')}"
                      f"/taskInstances/{task}/logs/{n}?full_content=true"
                      + (f"&map_index={map_index}" if map_index >= 0 else ""))
        content = got.get("content")
        if isinstance(content, list):
            out += [c.get("event", "") if isinstance(c, dict) else str(c) for c in content]
        else:
            out.append(str(content))
    return "\n".join(map(str, out))


def trigger(api: Api, conf: dict) -> str:
    return api.call("POST", f"/api/v2/dags/{DAG}/dagRuns",
                    {"logical_date": None, "conf": conf})["dag_run_id"]


def wait_run(api: Api, run_id: str, timeout: float) -> str:
    try:
        return _wait(lambda: (s := api.run(run_id)["state"]) in ("success", "failed") and s,
                     timeout, f"run {run_id} to end", interval=2)
    except AssertionError as e:
        raise AssertionError(f"{e}; task states: {api.states(run_id)}") from None


@pytest.fixture(scope="module")
def stack():
    reason = why_not()
    if reason:
        pytest.skip(reason)
    state = Path(os.environ.get("SLIMEFLOW_COMPOSE_STATE", ROOT / ".state" / "compose"))
    state.mkdir(parents=True, exist_ok=True)
    st = Stack(state.resolve())
    # a user's fresh checkout: the deployment files, the test's override and Dockerfiles, and
    # (test build only) this machine's CA bundle so that pip in the image build reaches PyPI
    shutil.rmtree(st.project, ignore_errors=True)
    (st.project / "tests").mkdir(parents=True)
    for name in DEPLOY_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, st.project / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, st.project / name)
    shutil.copytree(HERE, st.project / "tests" / "compose",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.py", "shim"))
    shutil.copy2("/etc/ssl/certs/ca-certificates.crt",
                 st.project / "tests" / "compose" / "host-ca-certificates.crt")
    try:
        t0 = time.monotonic()
        st.engine.start()
        st.timings["dockerd_start_s"] = round(time.monotonic() - t0, 1)
        # what a killed earlier run left (restart: always brings its containers back with
        # dockerd); its .env went with its project folder, so by compose's own labels
        st.engine.remove_project(PROJECT)
        t0 = time.monotonic()
        st.engine.base_image()
        st.timings["bookworm_base_s"] = round(time.monotonic() - t0, 1)

        st.cluster = SimCluster.up(state / "cluster", nodes=2, gpu="H100", rollout_seconds=1.0)
        st.env["NODES"] = " ".join(n["host"] for n in st.cluster.nodes)
        blocks = doc_blocks()
        assert len(blocks) == 5 and blocks[0].startswith("NODES="), blocks
        st.doc(0, "keys")
        # the node side of step 1: the new key in the nodes' authorized_keys
        with open(st.cluster.dir / "authorized_keys", "a") as f:
            f.write((st.project / ".ssh" / "id_ed25519.pub").read_text())
        st.doc(1, "env")
        # the stand-ins for the official images (compose reads .env even to build)
        t0 = time.monotonic()
        st.compose("--profile", "base", "build", "airflow-base", "postgres", timeout=1800)
        st.timings["airflow_and_postgres_base_build_s"] = round(time.monotonic() - t0, 1)
        t0 = time.monotonic()
        st.doc(2, "up")  # docker compose up -d --build; docker compose ps
        st.timings["compose_up_build_s"] = round(time.monotonic() - t0, 1)
        t0 = time.monotonic()
        st.wait_healthy()
        st.timings["up_to_healthy_s"] = round(time.monotonic() - t0, 1)
        st.doc(3, "connections")  # one per node, and the DAG unpaused
        yield st
    finally:
        try:
            images = st.engine.docker("images", check=False).stdout
            (state / "images.txt").write_text(images)
            (state / "timings.json").write_text(json.dumps(st.timings, indent=2) + "\n")
            st.compose("down", "-v", "--remove-orphans", check=False)
        finally:
            if st.cluster is not None:
                st.cluster.down()
            st.engine.stop()
        if st.cluster is not None:
            assert procs_of(str(st.cluster.dir)) == [], "the simulated cluster left processes"


@pytest.fixture(scope="module")
def api(stack):
    return stack.api()


def test_every_service_is_healthy_and_the_three_dags_parse_without_errors(stack, api):
    s = stack.services()
    assert {n: s[n]["health"] for n in LONG_RUNNING} == {n: "healthy" for n in LONG_RUNNING}
    assert s["airflow-init"]["status"] == "exited" and s["airflow-init"]["exit"] == 0
    dags = _wait(lambda: (d := {x["dag_id"] for x in api.get("/api/v2/dags?limit=100")["dags"]})
                 >= DAGS and d, 180, "the dag-processor to parse the DAGs")
    assert dags == DAGS
    errors = api.get("/api/v2/importErrors")
    assert errors["total_entries"] == 0, errors["import_errors"]


def test_connections_use_the_mounted_key_and_known_hosts(stack):
    # the host keys that ssh-keyscan recorded are the ones the nodes were made with
    scanned = {}
    for line in (stack.project / ".ssh" / "known_hosts").read_text().splitlines():
        if line and not line.startswith("#"):
            host, kind, key = line.split()[:3]
            scanned[host] = f"{kind} {key}"
    assert scanned == {n["host"]: n["host_key"] for n in stack.cluster.nodes}
    for i, node in enumerate(stack.cluster.nodes):
        got = json.loads(stack.sh(
            f"docker compose exec -T airflow-scheduler airflow connections get gpu_node_{i} -o json",
            f"conn{i}"))
        conn = got[0] if isinstance(got, list) else got
        extra = conn["extra_dejson"]
        assert conn["host"] == node["host"] and conn["conn_type"] == "ssh"
        # nothing pinned, nothing switched off: the containers check known_hosts
        assert extra == {"key_file": "/home/airflow/.ssh/id_ed25519"}, extra
    out = stack.sh("docker compose exec -T airflow-triggerer ls -l /home/airflow/.ssh", "ssh-ls")
    assert "id_ed25519" in out and "known_hosts" in out


RUN = {}


def test_a_rest_run_trains_on_both_nodes_and_survives_a_triggerer_restart(stack, api):
    c = stack.cluster
    conf = run_conf(c, nodes=["gpu_node_0", "gpu_node_1"], num_rollout=ROLLOUTS,
                    save_interval=10, poll_interval=2)
    run_id = RUN["first"] = trigger(api, conf)
    _wait(lambda: api.states(run_id).get("train") == "deferred", 600, "train to defer",
          interval=2)
    _wait(lambda: "progress: rollout" in task_log(api, run_id, "train"), 180,
          "a progress line in train's log", interval=5)
    at_restart = latest_iteration(c)
    stack.compose("restart", "airflow-triggerer")
    assert at_restart < ROLLOUTS - 1, "training ended before the restart; nothing to reattach"
    assert wait_run(api, run_id, 900) == "success", api.states(run_id)
    st = api.states(run_id)
    assert st["preflight[0]"] == st["preflight[1]"] == "success", st
    assert st["teardown"] == "success", st

    log = task_log(api, run_id, "train")
    (stack.state / "train-first.log").write_text(log)
    # the new triggerer picked the job up where the old one left it, and it ran to the end
    assert "following job" in log and "from log byte" in log, \
        [l for l in log.splitlines() if "job" in l.lower()][-30:]
    assert f"progress: rollout {ROLLOUTS}/{ROLLOUTS} (100.0%)" in log
    assert len(submissions(c, run_id)) == 1, submissions(c, run_id)
    assert "--actor-num-nodes 2" in log  # both nodes' GPUs: the multi-node layout

    runs = f"/api/v2/dags/{DAG}/dagRuns/{urllib.parse.quote(run_id, safe='')}"

    def xcom(task):
        v = api.get(f"{runs}/taskInstances/{task}/xcomEntries/return_value?deserialize=true")
        v = v["value"]
        return json.loads(v) if isinstance(v, str) and v.startswith("{") else v

    model, torch_dist, ckpt = xcom("download_model"), xcom("convert"), xcom("train")
    assert model == f"{c.base_folder}/Qwen3-Next-80B-A3B-Thinking"
    assert torch_dist == model + "_torch_dist"
    assert ckpt["save_dir"] == model + "_slime" and ckpt["iteration"] == ROLLOUTS - 1
    assert Path(ckpt["path"]).is_dir() and ckpt["path"].endswith(f"iter_{ROLLOUTS - 1:07d}")
    events = api.get("/api/v2/assets/events?source_dag_id=" + DAG)["asset_events"]
    ours = [e for e in events if e["source_run_id"] == run_id]
    assert ours and ours[0]["uri"] == "x-slimeflow://checkpoints/qwen3-next-80b-a3b"
    assert ours[0]["extra"]["path"] == ckpt["path"]


def test_a_node_whose_host_key_changed_is_refused(stack, api):
    c = stack.cluster
    nd = c.node_dir(1)
    key = nd / "ssh_host_ed25519_key"
    for f in (key, key.with_suffix(".pub")):
        shutil.copy2(f, f.with_name(f.name + ".orig"))
    try:
        # node 1 "reinstalled": a new host key, while known_hosts keeps the old one
        key.unlink()
        key.with_suffix(".pub").unlink()
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        c.stop_sshd(1)
        c.start_sshd(1)
        run_id = trigger(api, run_conf(c, nodes=["gpu_node_0", "gpu_node_1"],
                                       num_rollout=ROLLOUTS, poll_interval=2))
        assert wait_run(api, run_id, 600) == "failed"
        st = api.states(run_id)
        assert st["preflight[1]"] == "failed" and st["train"] == "upstream_failed", st
        log = task_log(api, run_id, "preflight", map_index=1)
        host = c.nodes[1]["host"]
        assert (f"node gpu_node_1 ({host}:22) presented a host key that does not match the "
                f"pinned one") in log, log[-3000:]
        assert "update the connection's host_key extra (or known_hosts)" in log
    finally:
        for f in (key, key.with_suffix(".pub")):
            os.replace(f.with_name(f.name + ".orig"), f)
        c.stop_sshd(1)
        c.start_sshd(1)


def test_down_then_up_keeps_the_run_history(stack, api):
    first = RUN.get("first")
    assert first, "the REST run did not happen"
    stack.compose("down")
    assert stack.services() == {}
    stack.compose("up", "-d")
    stack.wait_healthy()
    again = stack.api()  # a new api-server container: a new password file
    assert again.run(first)["state"] == "success"
    runs = again.get(f"/api/v2/dags/{DAG}/dagRuns?limit=100")["dag_runs"]
    assert {r["dag_run_id"] for r in runs} >= {first} and len(runs) == 2
    assert again.states(first)["train"] == "success"
    # and every command of docs/operations.md §1 was run on the way
    assert stack.ran == set(range(len(doc_blocks())))
