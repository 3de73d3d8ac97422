"""What the training view and the run notes show, read where the pipeline already keeps it.

Runs come from Airflow's metadata DB (the api-server's own session). A run's progress comes from
its head node, in one SSH exec (`fsops.py read-run`): the run record (attempts.json),
progress.json, and each attempt's history-<attempt>.jsonl, which jobwatch appends to on every
poll. Why a task failed comes from that task's own log, read with Airflow's log reader (what
the UI's log view uses, so remote logging works too): our operators end a failed try with one
sentence (the exception Airflow logs as "Task failed with exception"), and a task a user
stopped carries Airflow's cancel line. Nothing new runs anywhere: no service, no extra writer.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)
NOTE_PREFIX = "slimeflow: "
FINAL = (NOTE_PREFIX + "done", NOTE_PREFIX + "FAILED", NOTE_PREFIX + "CANCELLED")  # ended runs
_SETTLED: set = set()  # (dag_id, run_id, state) of ended runs already read once
_CACHE: dict = {}
_LOCK = threading.Lock()
CACHE_S = 10.0


def dag_recipes() -> dict:
    """{dag_id: recipe name} of slimeflow's DAGs."""
    from slimeflow.recipes import load_recipe, recipe_names

    return {load_recipe(n).dag_id: n for n in recipe_names()}


def run_params(recipe_name: str, conf: dict | None) -> dict:
    """The run's params as its tasks see them: the DAG's defaults (and the deployment's
    SLIMEFLOW_DEFAULT_*), then the run's conf."""
    from slimeflow.params import _default, param_specs
    from slimeflow.recipes import load_recipe

    params = {name: _default(name, spec[0])
              for name, spec in param_specs(load_recipe(recipe_name)).items()}
    params.update(conf or {})
    return params


def conn_host(conn_id: str) -> str:
    from airflow.models.connection import Connection

    return Connection.get_connection_from_secrets(conn_id).host or ""


def read_run(dag_id: str, run_id: str, state: str, conf: dict | None) -> dict:
    """One run's view; `error` says why the head could not be read."""
    from slimeflow import builders
    from slimeflow.config import RunConfig
    from slimeflow.hooks.node import NodeHook
    from slimeflow.operators.train import run_dir

    view = {"dag_id": dag_id, "run_id": run_id, "state": state, "error": None}
    recipe = dag_recipes().get(dag_id)
    try:
        params = run_params(recipe, conf)
        cfg = RunConfig.from_params(recipe, params,
                                    hosts=[conn_host(n) for n in params["nodes"]])
    except Exception as e:  # a bad conf: the run failed in validate_params
        view["error"] = f"{type(e).__name__}: {e}"
        return view
    head = cfg.cluster.head
    view.update(head=head, save_dir=cfg.paths.save_dir, total=cfg.train.num_rollout,
                node_ips={**{h: n for n, h in zip(cfg.cluster.nodes, cfg.cluster.hosts)},
                          cfg.cluster.master_addr: head})
    base_id = builders.submission_id(dag_id, run_id)
    hook = NodeHook(ssh_conn_id=head, conn_timeout=10, conn_retry_attempts=1)
    try:
        hook.upload_files(builders.node_bundle()[1], builders.node_dir(cfg))
        res = hook.run(builders.node_script(cfg, head, "fsops.py", "read-run", "--dir",
                                            run_dir(cfg, base_id), "--save-dir",
                                            cfg.paths.save_dir),
                       builders.node_dir(cfg), check=False, timeout=60)
        got = res.last_json()
        view.update(record=got.get("record"), progress=got.get("progress"),
                    points=got.get("history") or {}, checkpoint=got.get("checkpoint"))
    except Exception as e:  # the head is down or unreachable: say so on the page
        view["error"] = str(e)
    finally:
        if getattr(hook, "client", None):
            hook.client.close()
    return view


def cached_view(dag_id, run_id, state, conf) -> dict:
    key = (dag_id, run_id)
    with _LOCK:
        hit = _CACHE.get(key)
        if hit and time.monotonic() - hit[0] < CACHE_S and hit[1].get("state") == state:
            return hit[1]
    view = read_run(dag_id, run_id, state, conf)
    with _LOCK:
        _CACHE[key] = (time.monotonic(), view)
    return view


def recent_runs(limit: int = 6, running_only: bool = False) -> list:
    """[(dag_id, run_id, state, conf, note)] of slimeflow's DAG runs, running ones first."""
    from sqlalchemy import select

    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as s:
        q = select(DagRun).where(DagRun.dag_id.in_(list(dag_recipes())))
        if running_only:
            q = q.where(DagRun.state == "running")
        rows = s.scalars(q.order_by(DagRun.id.desc()).limit(limit)).all()
        out = [(r.dag_id, r.run_id, str(getattr(r.state, "value", r.state)), dict(r.conf or {}),
                r.note) for r in rows]
    return sorted(out, key=lambda r: r[2] != "running")


def views(limit: int = 6) -> list:
    runs = recent_runs(limit)
    if not runs:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(runs))) as pool:
        return list(pool.map(lambda r: cached_view(*r[:4]), runs))


# -- why a task failed: its own log -----------------------------------------------------------

# Exceptions whose message is already the sentence on-call reads (our operators' and hooks');
# any other type is named in front of its message.
OWN_ERRORS = {"ParamError", "ClusterError", "NodeError", "RayError", "RemoteError",
              "TrainingFailed", "RuntimeError"}
# A user stopped the task (marked it or its run failed, or cleared it): Airflow's triggerer
# says the first for a deferred task, our trigger's on_kill the second, the task supervisor
# the third for a task running on a worker.
CANCEL_MARKS = ("Trigger cancelled by user action", "task killed by a user",
                "Server indicated the task shouldn't be running anymore")
_TAIL = re.compile(r"\s*Last \d+ log lines:\s*$")
_JOB_STOP = re.compile(r"^\[[^\]]+\] ray job stop (?P<id>\S+)(?: --no-wait)?: exit (?P<rc>-?\d+)")
_RAY_STOP = re.compile(r"^\[(?P<node>[^\]]+)\] \$ ray stop\b")
_NOTHING = "nothing to stop: this run never started Ray"
_STORIES: dict = {}  # (dag_id, run_id, task_id, map_index, try_number) -> log_story of a failed try


def _record(m) -> dict:
    if isinstance(m, dict):
        return m
    # airflow's StructuredLogMessage: event, timestamp, and the rest as pydantic extras
    return {"event": getattr(m, "event", str(m)), **(getattr(m, "model_extra", None) or {})}


def error_sentence(detail: dict) -> str:
    """The one line a failed try ends with: the raised exception's message (its first line,
    without the log tail our training messages carry), named by type unless it is ours."""
    kind = str(detail.get("exc_type") or "")
    text = str(detail.get("exc_value") or "").strip()
    first = _TAIL.sub("", text.splitlines()[0]).strip() if text else ""
    if not first:
        return kind or "unknown error"
    return first if kind in OWN_ERRORS else f"{kind}: {first}"


def log_story(records) -> dict:
    """What a task's log says about how it ended. records: the log reader's messages (or their
    dicts). error: the sentence of the last "Task failed with exception" (else the last
    error-level line); cancelled: a user stopped it; job_stops: {submission id: exit code} of
    `ray job stop`; ray_stopped: nodes where `ray stop` ran; nothing_to_stop: teardown found
    that this run never started Ray."""
    error = last_error = None
    story = {"cancelled": False, "job_stops": {}, "ray_stopped": [], "nothing_to_stop": False}
    for m in records:
        r = _record(m)
        event = str(r.get("event") or "")
        if any(mark in event for mark in CANCEL_MARKS):
            story["cancelled"] = True
        if (j := _JOB_STOP.match(event)):
            story["job_stops"][j.group("id")] = int(j.group("rc"))
        if (j := _RAY_STOP.match(event)) and j.group("node") not in story["ray_stopped"]:
            story["ray_stopped"].append(j.group("node"))
        if _NOTHING in event:
            story["nothing_to_stop"] = True
        detail = r.get("error_detail")
        if event == "Task failed with exception" and isinstance(detail, list) and detail:
            error = error_sentence(detail[0])  # [0]: the raised one; causes follow it
        elif str(r.get("level") or "").lower() in ("error", "critical") and event.strip() \
                and r.get("logger") != "asyncio":
            last_error = event.strip().splitlines()[0]
    story["error"] = error or last_error
    return story


def read_story(dag_id: str, run_id: str, task_id: str, map_index: int) -> dict:
    """log_story of a task instance's latest try, through Airflow's log reader. The reader
    uses sessions of its own (which close this thread's session), so nothing ORM leaves here."""
    from sqlalchemy import select

    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.log.log_reader import TaskLogReader
    from airflow.utils.session import create_session

    with create_session() as s:
        ti = s.scalar(select(TaskInstance).where(
            TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id,
            TaskInstance.task_id == task_id, TaskInstance.map_index == map_index))
        if ti is None:
            return log_story([])
        stream, _meta = TaskLogReader().read_log_chunks(ti, ti.try_number, {})
        return log_story(stream)


def _story(dag_id, run_id, task_id, map_index, try_number, final=False) -> dict:
    """read_story, kept once it says how the try ended (an error or a cancel) or `final` (the
    try's log is complete). A task marked failed by a user is failed before its log says so:
    the triggerer writes its cancel line after the state changed, so such a log is read again."""
    key = (dag_id, run_id, task_id, map_index, try_number)
    if key in _STORIES:
        return _STORIES[key]
    story = read_story(dag_id, run_id, task_id, map_index)
    if final or story["error"] or story["cancelled"]:
        if len(_STORIES) > 500:
            _STORIES.clear()
        _STORIES[key] = story
    return story


def _label(task_id: str, map_index) -> str:
    return task_id + (f"[{map_index}]" if isinstance(map_index, int) and map_index >= 0 else "")


def run_failures(dag_id: str, run_id: str) -> tuple[list, dict | None]:
    """(the run's failed task instances, first failed first and teardown last, each with its
    log story; teardown's state and story when the first failure is a cancel)."""
    from sqlalchemy import select

    from airflow.models.taskinstance import TaskInstance as TI
    from airflow.utils.session import create_session

    with create_session() as s:
        rows = [tuple(r) for r in s.execute(
            select(TI.task_id, TI.map_index, TI.try_number, TI.state, TI.end_date)
            .where(TI.dag_id == dag_id, TI.run_id == run_id)).all()]
    out, teardown = [], None
    for task_id, map_index, try_number, state, end in rows:
        state = str(getattr(state, "value", state))
        if task_id == "teardown":
            teardown = (map_index, try_number, state)
        if state == "failed":
            out.append({"task_id": task_id, "map_index": map_index, "end": end,
                        **_story(dag_id, run_id, task_id, map_index, try_number)})
    out.sort(key=lambda f: (f["task_id"] == "teardown", f["end"] is None, f["end"] or 0))
    td = None
    if out and out[0]["cancelled"] and teardown is not None:
        map_index, try_number, state = teardown
        td = {"state": state}
        if state in ("success", "failed"):
            td.update(_story(dag_id, run_id, "teardown", map_index, try_number, final=True))
    return out, td


def _train_cause(view: dict) -> str | None:
    """'<cause> on node <node>; fix: <fix>' from progress.json of a train that failed."""
    prog = view.get("progress") or {}
    cause = prog.get("cause") if isinstance(prog.get("cause"), dict) else None
    if not cause or prog.get("status") in ("SUCCEEDED", "RUNNING"):
        return None
    ip = cause.get("ip")
    where = (view.get("node_ips") or {}).get(ip) if ip else view.get("head") or "?"
    return f"{cause.get('cause')} on node {where or ip}; fix: {cause.get('fix')}"


def _at_rollout(view: dict) -> str:
    prog = view.get("progress") or {}
    done, total = prog.get("rollout"), prog.get("total") or view.get("total")
    return f" at rollout {done}/{total}" if done is not None else ""


def ti_note_for(failure: dict, view: dict) -> str:
    """A failed task instance's own note: its cause."""
    train = failure["task_id"] == "train"
    if failure.get("cancelled"):
        text = (f"cancelled{_at_rollout(view) if train else ''}: a user stopped this task "
                f"(marked it or its run failed, or cleared it)")
    else:
        text = (_train_cause(view) if train else None) or failure.get("error") or \
            "failed without an error line in its log; open the log"
    return (NOTE_PREFIX + text)[:1000]


def cancel_note(failure: dict, teardown: dict | None, view: dict) -> str:
    """What a user who stopped the run wants to know: where it stopped, where a new run resumes,
    and whether teardown stopped the Ray job (the long job id last: the UI cuts the line)."""
    where = _label(failure["task_id"], failure.get("map_index"))
    at = _at_rollout(view) if failure["task_id"] == "train" else ""
    text = f"{NOTE_PREFIX}CANCELLED in {where}{at}: stopped by a user"
    ck = view.get("checkpoint") or {}
    if at and isinstance(ck.get("iteration"), int):
        text += (f"; latest checkpoint rollout {ck['iteration']} (a resume continues at "
                 f"rollout {ck['iteration'] + 1})")
    td = teardown or {}
    stops = {**(failure.get("job_stops") or {}), **(td.get("job_stops") or {})}
    jobs = [j for j, rc in stops.items() if rc == 0]
    if td.get("state") == "success":
        if jobs or td.get("ray_stopped"):
            parts = ([f"Ray on {', '.join(td['ray_stopped'])}"] if td.get("ray_stopped") else
                     []) + ([f"Ray job {', '.join(jobs)}"] if jobs else [])
            text += f"; teardown stopped {' and '.join(parts)}"
        elif td.get("nothing_to_stop"):
            text += "; nothing to stop: this run had not started Ray"
    elif td.get("state") == "failed":
        text += f"; teardown FAILED: {td.get('error') or 'see its log'}"
    elif jobs:
        text += f"; Ray job {', '.join(jobs)} stopped"
    return text[:1000]


def note_for(view: dict) -> str | None:
    """The DAG run's one-line story, or None when there is nothing to say yet. view may carry
    `failures` and `teardown` (run_failures) for a failed run."""
    from slimeflow.utils.logparse import format_eta

    prog = view.get("progress") or {}
    head, state = view.get("head") or "?", view.get("state")
    total, done = prog.get("total") or view.get("total"), prog.get("rollout")
    failures = view.get("failures") or []
    first = failures[0] if failures else None
    if state == "failed" and first and first.get("cancelled"):
        return cancel_note(first, view.get("teardown"), view)
    if state == "failed" and (first is None or first["task_id"] == "train") and \
            (cause := _train_cause(view)):
        return f"{NOTE_PREFIX}FAILED in train: {cause}"[:1000]
    if state == "failed" and first and first.get("error"):
        return (f"{NOTE_PREFIX}FAILED in {_label(first['task_id'], first.get('map_index'))}: "
                f"{first['error']}")[:1000]
    if done is None:
        return None
    pct = 100.0 * done / total if total else 0.0
    reward = prog.get("reward")
    r = f"{reward:.3g}" if isinstance(reward, (int, float)) else "?"
    si = prog.get("start_iteration")  # the checkpoint this attempt resumed from, if any
    began = "fresh from rollout 0" if si is None else f"resumed at rollout {si + 1}"
    text = (f"{NOTE_PREFIX}rollout {done}/{total} ({pct:.1f}%), reward {r}, ETA "
            f"{format_eta(prog.get('eta_s'))}, attempt {prog.get('attempt')} ({began}), "
            f"head {head}")
    if state == "success":
        ck = view.get("checkpoint") or {}
        text = (f"{NOTE_PREFIX}done: rollout {done}/{total}, checkpoint rollout "
                f"{ck.get('iteration')} at {ck.get('path')}")
    elif state == "failed":
        text = f"{NOTE_PREFIX}FAILED at rollout {done}/{total} (see the failed task's log)"
    return text[:1000]


def _ours(note) -> bool:
    """A note we may write over: none yet, or one we wrote (a person's note is left alone)."""
    return not note or note.startswith(NOTE_PREFIX)


def _note_run(dag_id, run_id, state, conf) -> int:
    """Read one run (its head, its failed tasks' logs), then write its note and its failed task
    instances' notes. Returns how many notes changed."""
    view = cached_view(dag_id, run_id, state, conf)
    failures, teardown = run_failures(dag_id, run_id)
    # while the run goes on, a failed task whose log does not say why yet waits for a later round
    ti_notes = {(f["task_id"], f["map_index"]): ti_note_for(f, view) for f in failures
                if state != "running" or f.get("error") or f.get("cancelled")}
    return write_notes(dag_id, run_id, note_for(dict(view, failures=failures,
                                                     teardown=teardown)), ti_notes)


def set_note(obj, text: str | None, note_attr: str) -> bool:
    """Put `text` in a DagRun's or TaskInstance's note unless a person wrote the one there."""
    if not text or text == obj.note or not _ours(obj.note):
        return False
    if getattr(obj, note_attr) is None:
        obj.note = text
    else:
        getattr(obj, note_attr).content = text
    return True


def write_notes(dag_id, run_id, run_note: str | None, ti_notes: dict) -> int:
    """One short session: the run's note, and each task instance's {(task_id, map_index):
    note}."""
    from sqlalchemy import select

    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance as TI
    from airflow.utils.session import create_session

    changed = 0
    with create_session() as s:
        if ti_notes:
            for ti in s.scalars(select(TI).where(
                    TI.dag_id == dag_id, TI.run_id == run_id,
                    TI.task_id.in_(sorted({t for t, _ in ti_notes})))).all():
                changed += set_note(ti, ti_notes.get((ti.task_id, ti.map_index)),
                                    "task_instance_note")
        dr = s.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
        if dr is not None:
            changed += set_note(dr, run_note, "dag_run_note")
    return changed


def update_notes() -> int:
    """Write each slimeflow run's note, and the notes of its failed task instances; a note
    someone wrote by hand (not ours) is never overwritten. Returns how many notes changed."""
    changed = 0
    for dag_id, run_id, state, conf, note in recent_runs(limit=10):
        if not _ours(note) and state == "running":
            continue  # a person's note: its failed tasks still get theirs once the run ends
        if state != "running" and (note and note.startswith(FINAL) or
                                   (dag_id, run_id, state) in _SETTLED):
            continue  # an ended run is read once: no SSH to its head every round, forever
        if state != "running":
            _SETTLED.add((dag_id, run_id, state))
        else:  # running again (cleared): its next end is read again
            _SETTLED.difference_update({(dag_id, run_id, "success"), (dag_id, run_id, "failed")})
        try:
            changed += _note_run(dag_id, run_id, state, conf)
        except Exception:  # one run's head or log hiccups: the others still get their notes
            log.warning("slimeflow: the note of run %s of %s could not be written", run_id,
                        dag_id, exc_info=True)
    return changed
