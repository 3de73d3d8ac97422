"""`make up-sim` (airflow standalone wired to a 2-node simulated cluster) used as a person uses
it, in headless Chromium: log in on the login page with the password from the file `make up`
names, trigger runs from the trigger form, follow them, stop one from the UI.

The REST API (with a token from POST /auth/token, the documented way) only reads state; every
run is started from the form. In order:
1. login, then a 4-rollout run from the form runs to a checkpoint (XCom chain, asset event,
   extra link, deadline warning, note, training view);
2. a bad param typed into the form fails validate_params: the run's note and the task's own
   note give validate_params' sentence, on the run page too;
3. a long run: its curve grows in the training view; an actor is killed; the note names the
   node on the run page;
4. a long run is marked failed from its run page: the run ends, no trainer is left on the
   cluster, and the notes say it was cancelled and what was stopped.
Screenshots go to artifacts/e2e/ and are checked to be real renders.
"""
import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from slimeflow import builders
from tests.e2e.browser import Browser, chromium_path, render_stats
from tests.e2e.loopback import WebhookSink, free_port
from tests.simcluster.cluster import SimCluster, procs_of
from tests.simcluster.faults import train_actors, trainers

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts" / "e2e"
DAG = "slime_qwen3_next_80b_a3b"
USER = "admin"


class Api:
    """REST reads with a Bearer token."""

    def __init__(self, base, token=None):
        self.base, self.token = base, token

    def call(self, method, path, body=None, timeout=30):
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read() or b"null")

    def get(self, path):
        return self.call("GET", path)

    def run(self, run_id):
        return self.get(f"/api/v2/dags/{DAG}/dagRuns/{urllib.parse.quote(run_id, safe='')}")

    def tis(self, run_id):
        got = self.get(f"/api/v2/dags/{DAG}/dagRuns/{urllib.parse.quote(run_id, safe='')}"
                       f"/taskInstances")["task_instances"]
        return {t["task_id"] + (f"[{t['map_index']}]" if t["map_index"] >= 0 else ""): t
                for t in got}

    def states(self, run_id):
        return {k: t["state"] for k, t in self.tis(run_id).items()}


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


def _ended(api, run_id, timeout, what):
    try:
        return _wait(lambda: (s := api.run(run_id)["state"]) in ("success", "failed") and s,
                     timeout, what, interval=2)
    except AssertionError as e:
        raise AssertionError(f"{e}; task states: {api.states(run_id)}") from None


def _note(api, run_id, prefix, timeout=90, ti=None):
    """The run's note (or task instance `ti`'s) once it starts with `prefix`."""
    def get():
        n = (api.tis(run_id)[ti] if ti else api.run(run_id)).get("note") or ""
        return n.startswith(prefix) and n
    return _wait(get, timeout, f"the note of {ti or 'the run'} to start with {prefix!r}", 2)


def password_from_make_up(log_text: str) -> str:
    """What a user does: read the password from the file `make up` says it is in."""
    m = re.search(r"log in as (\S+); the password (?:is|will be) in (\S+)", log_text)
    assert m, "make up did not say where the password is:\n" + log_text[-2000:]
    assert m.group(1) == USER, m.group(0)
    path = Path(m.group(2))
    return _wait(lambda: path.exists() and json.loads(path.read_text()).get(USER), 30,
                 f"the password file {path}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """`make up-sim` as the README gives it, from a shell without .venv/bin on PATH: a 2-node
    simulated cluster and Airflow wired to it, with the simple auth manager's login (user
    admin). The environment only tunes Airflow for a test (a free port, fast heartbeats, a
    loopback Slack, a tiny deadline)."""
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
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",  # user:role
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
        yield {"base": base, "cluster": cluster, "hook": hook, "tmp": tmp, "log": log,
               "password": password_from_make_up(text)}
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


@pytest.fixture(scope="module")
def api(stack):
    """A token obtained the documented way: POST /auth/token with the user's password. The
    API refuses reads without it (no all-admins mode here)."""
    anon = Api(stack["base"])
    with pytest.raises(urllib.error.HTTPError) as e:
        anon.get(f"/api/v2/dags/{DAG}")
    assert e.value.code == 401
    got = anon.call("POST", "/auth/token", {"username": USER, "password": stack["password"]})
    return Api(stack["base"], got["access_token"])


@pytest.fixture(scope="module")
def ui(stack):
    """One Chromium for the module, logged in through the login page."""
    b = Browser()
    try:
        b.goto(stack["base"] + "/")
        b.wait_js("location.pathname.startsWith('/auth/login')", 60, "the login page")
        b.wait_text("Sign into Airflow", "Username", "Password")
        b.fill("Username", USER)
        b.fill("Password", stack["password"])
        shot(b, "login")
        b.click_button("Sign in")
        b.wait_js("!location.pathname.startsWith('/auth/')", 30, "the UI after signing in")
        b.wait_text("Welcome", "Dags")
        park(b)
        yield b
    finally:
        b.close()


SHOTS = {}


def shot(b, name):
    time.sleep(1.0)  # let the last frames paint
    SHOTS[name] = b.screenshot(ARTIFACTS / f"{name}.png")


def trigger_from_form(b, base, values: dict, shot_as=None) -> str:
    """Open the DAG, press Trigger, type `values` ({field label: text}) into the form, press
    its Trigger button; the UI opens the new run's page. Returns the run id."""
    b.goto(f"{base}/dags/{DAG}")
    b.wait_text("train", "teardown")
    b.click_button("Trigger")
    first = next(iter(values))
    # a press before the page's scripts are ready opens nothing: press again then
    submit = "document.querySelector('[data-testid=trigger-dag-submit]')"
    try:
        b.wait_js(f"!!{submit}", 15, "the trigger form")
    except AssertionError:
        b.click_button("Trigger")
    b.wait_js(f"!!{b.field(first)}", 60, f"the form's {first!r} field")
    for label, text in values.items():
        b.fill(label, text)
    b.press("Tab", 9)  # leave the last field, as a person does before pressing the button
    for label, text in values.items():
        assert b.value(label) == text, (label, b.value(label))
    if shot_as:
        b.click(f"{b.field(first)}")  # the changed fields in view
        shot(b, shot_as)
    before = b.url()
    b.click(submit, what="the form's Trigger button")
    url = b.wait_js(f"location.href !== {json.dumps(before)} && "
                    "location.pathname.includes('/runs/') && location.href", 90,
                    "the new run's page")
    park(b)
    return urllib.parse.unquote(urllib.parse.urlparse(url).path.split("/runs/", 1)[1]
                                .split("/")[0])


def park(b):
    """Close the page while the test waits, as a person switching tabs: an open Airflow page
    polls the api-server every few seconds, and Chromium's renderer and that polling would
    take a good part of this 2-core machine from the scheduler and the nodes."""
    b.goto("about:blank")


def _check_shots():
    for name, png in SHOTS.items():
        st = render_stats(png)
        assert st["width"] == 1400 and st["height"] == 900, (name, st)
        busy = 0.05 if name in ("cluster", "login", "cancel_dialog", "task_note") else 0.2
        assert st["bytes"] > 20_000 and st["colours"] > 20 and st["busy_rows"] > busy, (name, st)


def test_login_then_a_run_triggered_from_the_form_reaches_its_checkpoint(stack, api, ui):
    base, cluster, hook = stack["base"], stack["cluster"], stack["hook"]
    dag = _wait(lambda: api.get(f"/api/v2/dags/{DAG}"), 90, "the DAG to be parsed")
    assert dag["is_paused"] is False and "ml-platform" in dag["owners"]
    assert {t["name"] for t in dag["tags"]} >= {"slime", "rl"}

    # the form's defaults (make up-sim) point at the cluster: only the length is chosen here
    run_id = trigger_from_form(ui, base, {"Rollouts (total)": "4", "Poll interval (s)": "2"},
                               shot_as="trigger_form")
    run = api.run(run_id)
    assert run["conf"]["num_rollout"] == 4 and run["conf"]["poll_interval"] == 2, run["conf"]
    assert run["conf"]["nodes"] == list(cluster.conn_ids)  # the form's defaults went along
    assert run["triggered_by"] == "ui" and run["triggering_user_name"] == USER, run
    assert _ended(api, run_id, 300, "the run to finish") == "success", api.states(run_id)
    runs = f"/api/v2/dags/{DAG}/dagRuns/{urllib.parse.quote(run_id, safe='')}"

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
    ours = [e for e in events if e["source_run_id"] == run_id]
    assert ours and ours[0]["uri"] == "x-slimeflow://checkpoints/qwen3-next-80b-a3b"
    assert ours[0]["extra"]["path"] == ckpt["path"] and ours[0]["extra"]["iteration"] == 3

    # the extra link on train, from the configured template
    links = api.get(f"{runs}/taskInstances/train/links")["extra_links"]
    host = cluster.nodes[0]["host"]
    assert links["Ray dashboard"].startswith(f"http://{host}:8265/#/jobs/slimeflow-")

    # the tiny deadline warned on-call through the Slack channel (scheduler -> triggerer)
    posts = _wait(lambda: [p for p in hook.posts if "overdue" in p["json"].get("text", "")],
                  60, "the deadline warning")
    assert f"*Run*: {run_id}" in posts[0]["json"]["text"]

    # the run tells its own story: its note, written by the api-server from the head
    note = _note(api, run_id, "slimeflow: done")
    assert note.startswith("slimeflow: done: rollout 4/4, checkpoint rollout 3 at ")
    view = [v for v in api.get("/slimeflow/training.json") if v["run_id"] == run_id]
    assert view and sorted(p["rollout"] for pts in view[0]["points"].values() for p in pts
                           if p["kind"] == "rollout") == [0, 1, 2, 3]


def test_a_bad_param_typed_into_the_form_fails_validate_params_and_the_notes_say_why(
        stack, api, ui):
    base = stack["base"]
    run_id = trigger_from_form(ui, base, {"Base folder": "/etc/slime"})
    assert api.run(run_id)["conf"]["base_folder"] == "/etc/slime"
    assert _ended(api, run_id, 120, "the bad run to fail") == "failed"
    states = api.states(run_id)
    assert states["validate_params"] == "failed" and states["train"] == "upstream_failed"
    sentence = ("Param `base_folder` must not be inside the system folder /etc; choose a data "
                "folder such as /root or /data.")
    assert _note(api, run_id, "slimeflow: FAILED") == \
        f"slimeflow: FAILED in validate_params: {sentence}"
    assert _note(api, run_id, "slimeflow: ", ti="validate_params") == f"slimeflow: {sentence}"
    ui.goto(f"{base}/dags/{DAG}/runs/{run_id}")
    # the UI renders notes as Markdown: the backticks become code
    ui.wait_text("slimeflow: FAILED in validate_params: Param base_folder must not be inside")
    shot(ui, "run_param_error")
    ui.goto(f"{base}/dags/{DAG}/runs/{run_id}/tasks/validate_params")
    ui.wait_text("slimeflow: Param base_folder must not be inside")
    shot(ui, "task_note")
    park(ui)


def _long_run(stack, api, ui):
    """A 5000-rollout run from the form, followed until its note shows training."""
    run_id = trigger_from_form(ui, stack["base"], {"Rollouts (total)": "5000",
                                                   "Poll interval (s)": "2"})
    note = _note(api, run_id, "slimeflow: rollout", timeout=300)
    assert "attempt slimeflow-" in note and "head sim_node_0" in note
    return run_id


def test_a_long_run_grows_its_curve_then_a_killed_actor_is_named_on_the_run_page(
        stack, api, ui):
    base, cluster = stack["base"], stack["cluster"]
    run_id = _long_run(stack, api, ui)

    def points():
        got = [v for v in api.get("/slimeflow/training.json") if v["run_id"] == run_id]
        return sum(len(p) for p in (got[0].get("points") or {}).values()) if got else 0
    first = _wait(lambda: points() >= 2 and points(), 180, "the long run's first points",
                  interval=2)
    _wait(lambda: points() > first, 60, "the curve to grow", interval=2)
    ui.goto(f"{base}/slimeflow/training")
    ui.wait_text("slimeflow training", run_id)
    shot(ui, "training_view")
    park(ui)
    killed = cluster.fault("kill-actor")
    assert _ended(api, run_id, 120, "the long run to fail") == "failed"
    cause = f"Ray actor died on node sim_node_{killed['node']}; fix: "
    assert _note(api, run_id, "slimeflow: FAILED").startswith(f"slimeflow: FAILED in train: "
                                                               f"{cause}")
    assert _note(api, run_id, "slimeflow: ", ti="train").startswith(f"slimeflow: {cause}")

    # screenshots: the run page with its note, the cluster page, the grid
    ui.goto(f"{base}/dags/{DAG}/runs/{run_id}")
    ui.wait_text("slimeflow: FAILED in train")
    shot(ui, "run_note")
    ui.goto(f"{base}/slimeflow/cluster")
    ui.wait_text("slimeflow cluster", "sim_node_1")
    shot(ui, "cluster")
    ui.goto(f"{base}/dags/{DAG}")
    ui.wait_text("train", "teardown")
    shot(ui, "grid")
    park(ui)


def test_a_run_marked_failed_in_the_ui_stops_its_ray_job_and_says_so(stack, api, ui):
    base, cluster = stack["base"], stack["cluster"]
    run_id = _long_run(stack, api, ui)
    _wait(lambda: api.states(run_id)["train"] == "deferred" and trainers(cluster), 60,
          "train to follow its job from the triggerer")
    # the run page's "Mark Dag Run as..." button, Failed, Confirm
    ui.goto(f"{base}/dags/{DAG}/runs/{run_id}")
    ui.wait_text(run_id, "Running")
    ui.click("document.querySelector('[data-testid=mark-run-as-button]')",
             what="the run's Mark Dag Run as... button")
    ui.click("document.querySelector('[data-testid=mark-run-as-failed]')",
             what="its Failed item")
    ui.wait_text("Mark Dag Run as failed", "Confirm")
    shot(ui, "cancel_dialog")
    ui.click_button("Confirm")
    ui.wait_js("!document.querySelector('[data-testid=mark-run-as-failed]') && "
               "![...document.querySelectorAll('button')].some(b => b.innerText.trim() === "
               "'Confirm' && b.getClientRects().length)", 60, "the dialog to close")
    park(ui)

    assert _ended(api, run_id, 120, "the cancelled run to end") == "failed"
    states = api.states(run_id)
    assert states["train"] == "failed" and states["teardown"] == "success", states
    # what a user would notice on the cluster: no trainer and no training actor left
    _wait(lambda: not trainers(cluster) and not train_actors(cluster), 30,
          "the trainer to be gone from the cluster")
    note = _note(api, run_id, "slimeflow: CANCELLED")
    job = builders.submission_id(DAG, run_id)  # the run's Ray job (its first attempt)
    assert re.fullmatch(rf"slimeflow: CANCELLED in train at rollout \d+/5000: stopped by a "
                        rf"user; latest checkpoint rollout \d+ \(a resume continues at rollout "
                        rf"\d+\); teardown stopped Ray on sim_node_0, sim_node_1 and Ray job "
                        rf"{re.escape(job)}", note), note
    assert _note(api, run_id, "slimeflow: ", ti="train").startswith(
        "slimeflow: cancelled at rollout ")
    ui.goto(f"{base}/dags/{DAG}/runs/{run_id}")
    ui.wait_text("slimeflow: CANCELLED in train", "Failed")
    shot(ui, "run_cancelled")
    _check_shots()
