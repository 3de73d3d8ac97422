"""`make up-sim` (airflow standalone wired to a 2-node simulated cluster) + REST API v2 +
headless Chromium.

One run of slime_qwen3_next_80b_a3b is triggered through the REST API with a conf, followed to
success, and its XCom chain, asset event, extra links and deadline warning are read back; the grid
view and the trigger form are photographed (artifacts/e2e/) and checked to be real renders.
"""
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.browser import Browser, chromium_path, render_stats
from tests.e2e.loopback import WebhookSink, free_port
from tests.simcluster.cluster import SimCluster, procs_of

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts" / "e2e"
DAG = "slime_qwen3_next_80b_a3b"


class Api:
    def __init__(self, base):
        self.base = base

    def call(self, method, path, body=None, timeout=30):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read() or b"null")

    def get(self, path):
        return self.call("GET", path)


def _wait(fn, timeout, what, interval=0.5):
    end, last = time.time() + timeout, None
    while time.time() < end:
        try:
            last = fn()
            if last:
                return last
        except (urllib.error.URLError, ConnectionError, OSError) as e:
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}: {last!r}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """`make up-sim` as the README gives it, from a shell without .venv/bin on PATH: a 2-node
    simulated cluster and Airflow wired to it. The environment only tunes Airflow for a test
    (a free port, no login, fast heartbeats, a loopback Slack, a tiny deadline)."""
    if not chromium_path():
        pytest.skip("chromium is not installed (make system-deps installs it)")
    tmp = tmp_path_factory.mktemp("e2e")
    hook = WebhookSink().__enter__()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MAKE", "MFLAGS", "AIRFLOW", "VIRTUAL_ENV", "SLIMEFLOW"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "/usr/bin:/bin").split(os.pathsep)
                                  if ".venv" not in p)
    env.update({
        "STATE": str(tmp / "state"),  # the Makefile's `STATE ?=`
        "AIRFLOW__API__PORT": str(port), "AIRFLOW__API__BASE_URL": base,
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW_CONN_SLIMEFLOW_SLACK": hook.conn_json(),
        "SLIMEFLOW_RAY_DASHBOARD_URL": "http://{master_addr}:8265/#/jobs/{submission_id}",
        "SLIMEFLOW_NOTE_INTERVAL_S": "2",  # run notes refresh every 2 s (default 20)
        # a tiny deadline (the recipe says 72 h): the run is overdue after 4 s
        f"SLIMEFLOW_EXPECTED_HOURS_{DAG.upper()}": str(4 / 3600),
    })
    log = tmp / "up-sim.log"
    proc = subprocess.Popen(["make", "up-sim"], cwd=ROOT, env=env, stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    cluster = None
    try:
        _wait(lambda: "slimeflow: Airflow is up at" in log.read_text(errors="replace")
              or proc.poll() is not None, 300, "make up-sim to serve the UI")
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        text = log.read_text(errors="replace")
        assert "up-sim: the trigger form's defaults point at these nodes" in text
        cluster = SimCluster(tmp / "state" / "up-sim" / "cluster")
        yield {"api": Api(base), "base": base, "cluster": cluster, "hook": hook, "tmp": tmp,
               "log": log}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # Ctrl-C in the user's terminal, in effect
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        hook.__exit__(None, None, None)
        if cluster is not None:
            # the cluster goes down with make up-sim (its watchdog), without our help
            _wait(lambda: procs_of(str(cluster.dir)) == [], 120,
                  "the simulated cluster to go down with make up-sim")


def test_trigger_run_read_xcoms_and_screenshots(stack):
    api, base, cluster, hook = stack["api"], stack["base"], stack["cluster"], stack["hook"]
    dag = _wait(lambda: api.get(f"/api/v2/dags/{DAG}"), 90, "the DAG to be parsed")
    assert dag["is_paused"] is False and "ml-platform" in dag["owners"]
    assert {t["name"] for t in dag["tags"]} >= {"slime", "rl"}

    # the form's defaults (make up-sim) point at the cluster: only the length is chosen here
    run = api.call("POST", f"/api/v2/dags/{DAG}/dagRuns",
                   {"logical_date": None, "conf": {"num_rollout": 4, "save_interval": 2,
                                                   "poll_interval": 2}})
    run_id = urllib.parse.quote(run["dag_run_id"], safe="")
    runs = f"/api/v2/dags/{DAG}/dagRuns/{run_id}"
    def task_states():
        return {t["task_id"] + (f"[{t['map_index']}]" if t["map_index"] >= 0 else ""): t["state"]
                for t in api.get(f"{runs}/taskInstances")["task_instances"]}

    try:
        state = _wait(lambda: api.get(runs)["state"] in ("success", "failed")
                      and api.get(runs)["state"], 120, "the run to finish", interval=2)
    except AssertionError as e:
        raise AssertionError(f"{e}; task states: {task_states()}") from None
    assert state == "success", task_states()

    def xcom(task, key="return_value"):
        return api.get(f"{runs}/taskInstances/{task}/xcomEntries/{key}?deserialize=true")["value"]

    model, torch_dist, ckpt = xcom("download_model"), xcom("convert"), xcom("train")
    if isinstance(ckpt, str):
        ckpt = json.loads(ckpt)
    assert model == f"{cluster.base_folder}/Qwen3-Next-80B-A3B-Thinking"
    assert torch_dist == model + "_torch_dist"
    assert ckpt["save_dir"] == model + "_slime" and ckpt["iteration"] == 3
    assert ckpt["path"].endswith("iter_0000003")

    # the checkpoint Asset got an event carrying the path
    events = api.get("/api/v2/assets/events?source_dag_id=" + DAG)["asset_events"]
    ours = [e for e in events if e["source_run_id"] == run["dag_run_id"]]
    assert ours and ours[0]["uri"] == "slimeflow://checkpoints/qwen3-next-80b-a3b"
    assert ours[0]["extra"]["path"] == ckpt["path"] and ours[0]["extra"]["iteration"] == 3

    # the extra link on train, from the configured template
    links = api.get(f"{runs}/taskInstances/train/links")["extra_links"]
    host = cluster.nodes[0]["host"]
    assert links["Ray dashboard"].startswith(f"http://{host}:8265/#/jobs/slimeflow-")

    # the tiny deadline warned on-call through the Slack channel (scheduler -> triggerer)
    posts = _wait(lambda: [p for p in hook.posts if "overdue" in p["json"].get("text", "")],
                  60, "the deadline warning")
    assert f"*Run*: {run['dag_run_id']}" in posts[0]["json"]["text"]

    # the run tells its own story: its note, written by the api-server from the head
    note = _wait(lambda: (n := api.get(runs).get("note") or "").startswith("slimeflow: done")
                 and n, 60, "the run's note")
    assert note.startswith("slimeflow: done: rollout 4/4, checkpoint rollout 3 at ")
    view = [v for v in api.get("/slimeflow/training.json") if v["run_id"] == run["dag_run_id"]]
    assert view and sorted(p["rollout"] for pts in view[0]["points"].values() for p in pts
                           if p["kind"] == "rollout") == [0, 1, 2, 3]

    # a second, long run: its curve grows while it trains; an actor dies; the note says why
    long = api.call("POST", f"/api/v2/dags/{DAG}/dagRuns",
                    {"logical_date": None, "conf": {"num_rollout": 5000, "save_interval": 2,
                                                    "poll_interval": 2}})
    long_runs = f"/api/v2/dags/{DAG}/dagRuns/{urllib.parse.quote(long['dag_run_id'], safe='')}"

    def points():
        got = [v for v in api.get("/slimeflow/training.json")
               if v["run_id"] == long["dag_run_id"]]
        return sum(len(p) for p in (got[0].get("points") or {}).values()) if got else 0
    first = _wait(lambda: points() >= 2 and points(), 180, "the long run's first points",
                  interval=2)
    _wait(lambda: points() > first, 60, "the curve to grow", interval=2)
    b = Browser()
    try:
        b.goto(f"{base}/slimeflow/training")
        b.wait_text("slimeflow training", long["dag_run_id"])
        shots = {"training_view": b.screenshot(ARTIFACTS / "training_view.png")}
    finally:
        b.close()
    note = _wait(lambda: (n := api.get(long_runs).get("note") or "").startswith(
        "slimeflow: rollout") and n, 60, "the training note")
    assert "attempt slimeflow-" in note and "head sim_node_0" in note
    killed = cluster.fault("kill-actor")
    assert _wait(lambda: api.get(long_runs)["state"] in ("success", "failed") and
                 api.get(long_runs)["state"], 120, "the long run to fail", interval=2) == "failed"
    note = _wait(lambda: (n := api.get(long_runs).get("note") or "").startswith(
        "slimeflow: FAILED") and n, 60, "the failure note")
    assert note.startswith(f"slimeflow: FAILED in train: Ray actor died on node "
                           f"sim_node_{killed['node']}; fix: "), note

    # screenshots: the grid, the run page with its note, the cluster page, the trigger form
    b = Browser()
    try:
        b.goto(f"{base}/dags/{DAG}/runs/{long['dag_run_id']}")
        b.wait_text("slimeflow: FAILED in train")
        time.sleep(1.0)
        shots["run_note"] = b.screenshot(ARTIFACTS / "run_note.png")
        b.goto(f"{base}/slimeflow/cluster")
        b.wait_text("slimeflow cluster", "sim_node_1")
        shots["cluster"] = b.screenshot(ARTIFACTS / "cluster.png")
        b.goto(f"{base}/dags/{DAG}")
        b.wait_text("train", "teardown")
        time.sleep(1.0)
        shots["grid"] = b.screenshot(ARTIFACTS / "grid.png")
        assert b.click_button("Trigger"), "no Trigger button on the DAG page"
        b.wait_text("Nodes", "Base folder", "Experiment")
        time.sleep(1.0)
        shots["trigger_form"] = b.screenshot(ARTIFACTS / "trigger_form.png")
    finally:
        b.close()
    for name, png in shots.items():
        st = render_stats(png)
        assert st["width"] == 1400 and st["height"] == 900, (name, st)
        busy = 0.05 if name == "cluster" else 0.2  # two table rows on a white page
        assert st["bytes"] > 20_000 and st["colours"] > 20 and st["busy_rows"] > busy, (name, st)
