"""What the training view and the run notes show, read where the pipeline already keeps it.

Runs come from Airflow's metadata DB (the api-server's own session). A run's progress comes from
its head node, in one SSH exec (`fsops.py read-run`): the run record (attempts.json),
progress.json, and each attempt's history-<attempt>.jsonl, which jobwatch appends to on every
poll. Nothing new runs anywhere: no service, no extra writer.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

NOTE_PREFIX = "slimeflow: "
FINAL = (NOTE_PREFIX + "done", NOTE_PREFIX + "FAILED")  # notes of ended runs
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


def note_for(view: dict) -> str | None:
    """The DAG run's one-line story, or None when there is nothing to say yet."""
    from slimeflow.utils.logparse import format_eta

    prog = view.get("progress") or {}
    head, state = view.get("head") or "?", view.get("state")
    total, done = prog.get("total") or view.get("total"), prog.get("rollout")
    cause = prog.get("cause") if isinstance(prog.get("cause"), dict) else None
    if state == "failed" and cause and prog.get("status") not in ("SUCCEEDED", "RUNNING"):
        ip = cause.get("ip")
        where = (view.get("node_ips") or {}).get(ip) if ip else head
        return (f"{NOTE_PREFIX}FAILED in train: {cause.get('cause')} on node "
                f"{where or ip}; fix: {cause.get('fix')}")[:1000]
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


def update_notes() -> int:
    """Write each slimeflow run's note from its view; a note someone wrote by hand (not ours)
    is never overwritten. Returns how many notes changed."""
    from sqlalchemy import select

    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    changed = 0
    for dag_id, run_id, state, conf, note in recent_runs(limit=10):
        if note and not note.startswith(NOTE_PREFIX):
            continue
        if state != "running" and (note and note.startswith(FINAL) or
                                   (dag_id, run_id, state) in _SETTLED):
            continue  # an ended run is read once: no SSH to its head every round, forever
        if state != "running":
            _SETTLED.add((dag_id, run_id, state))
        text = note_for(cached_view(dag_id, run_id, state, conf))
        if not text or text == note:
            continue
        with create_session() as s:
            dr = s.scalar(select(DagRun).where(DagRun.dag_id == dag_id,
                                               DagRun.run_id == run_id))
            if dr is not None and (not dr.note or dr.note.startswith(NOTE_PREFIX)):
                dr.note = text
                changed += 1
    return changed
