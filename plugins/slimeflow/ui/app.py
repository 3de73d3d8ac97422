"""The training view: a FastAPI app that Airflow's api-server mounts at /slimeflow (plugin
`fastapi_apps`), with a nav entry (`external_views`). Routes:

    /slimeflow/training        running and recent runs: progress bar, ETA, reward and loss
                               curves with eval points, attempts, latest checkpoint
    /slimeflow/training.json   the same data
    /slimeflow/cluster         the nodes: last probe, lease holder

It also keeps each run's note current (runs.update_notes, every NOTE_EVERY_S in a daemon thread
of the api-server): the Execution API that tasks and triggers use cannot write notes, the
api-server can.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time

from fastapi import Depends, FastAPI
from fastapi.responses import HTMLResponse, JSONResponse

log = logging.getLogger(__name__)
NOTE_EVERY_S = float(os.environ.get("SLIMEFLOW_NOTE_INTERVAL_S", "20"))

def _dag_read_access():
    """Airflow's own check (the api-server's auth manager, the `_token` session cookie of the
    UI or a Bearer token): whoever may read DAGs may read this; others get 401/403."""
    from airflow.api_fastapi.core_api.security import requires_access_dag

    return Depends(requires_access_dag("GET"))


app = FastAPI(title="slimeflow", docs_url=None, redoc_url=None, openapi_url=None,
              dependencies=[_dag_read_access()])
_notes = {"thread": None}


def _note_loop(first_delay: float):
    # started while the api-server is still importing its plugins: wait until it is up before
    # importing the ORM and touching the DB from this thread
    time.sleep(first_delay)
    from slimeflow.ui import runs

    while True:
        try:
            runs.update_notes()
        except Exception:  # the DB or a head hiccups: try again next round
            log.exception("slimeflow: updating run notes failed")
        time.sleep(NOTE_EVERY_S)


def ensure_note_updater(first_delay: float = 0.0):
    if _notes["thread"] is None or not _notes["thread"].is_alive():
        t = threading.Thread(target=_note_loop, args=(first_delay,), name="slimeflow-notes",
                             daemon=True)
        _notes["thread"] = t
        t.start()


@app.get("/training", response_class=HTMLResponse)
def training_page(run_id: str | None = None):
    from slimeflow.ui import render, runs

    ensure_note_updater()
    views = runs.views()
    if run_id:  # the tab on a DAG run's page
        views = [v for v in views if v["run_id"] == run_id]
    return render.training_page(views)


@app.get("/training.json")
def training_json():
    from slimeflow.ui import runs

    ensure_note_updater()
    return JSONResponse(runs.views())


@app.get("/cluster", response_class=HTMLResponse)
def cluster_page():
    from slimeflow.ui import cluster, render

    ensure_note_updater()
    return render.cluster_page(cluster.nodes())


def in_api_server() -> bool:
    return "api-server" in sys.argv[1:3] or os.environ.get("SLIMEFLOW_NOTES") == "on"


if in_api_server() and os.environ.get("SLIMEFLOW_NOTES") != "off":
    ensure_note_updater(first_delay=15.0)
