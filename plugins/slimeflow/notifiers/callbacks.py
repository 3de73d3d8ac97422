"""The callbacks the DAGs use: task failure and retry (a BaseNotifier), and the run deadline."""
from __future__ import annotations

import glob
import json
import logging
import os
from urllib.parse import quote

from airflow.sdk import BaseNotifier

from slimeflow.utils.lazy import LazyModule

# every DAG file imports this module for its callbacks; the alert code loads when one fires
channels = LazyModule("slimeflow.notifiers.channels")
message = LazyModule("slimeflow.notifiers.message")

log = logging.getLogger("slimeflow.alerts")


def base_url() -> str:
    from airflow.sdk import conf

    return (conf.get("api", "base_url", fallback="") or "http://localhost:8080/").rstrip("/")


def _redact(lines: list) -> list:
    try:
        from airflow.sdk._shared.secrets_masker import redact

        return [str(redact(line)) for line in lines]
    except Exception:
        return lines


def task_log_lines(dag_id, run_id, task_id, map_index, try_number, limit: int = 200) -> list:
    """The last lines of the task's local log file (the executor's log folder), events only."""
    from airflow.sdk import conf

    folder = conf.get("logging", "base_log_folder", fallback="")
    if not folder or not try_number:
        return []
    mi = f"map_index={map_index}/" if map_index is not None and map_index >= 0 else ""
    pattern = os.path.join(glob.escape(folder), f"dag_id={glob.escape(dag_id)}",
                           f"run_id={glob.escape(run_id)}", f"task_id={glob.escape(task_id)}",
                           f"{mi}attempt={int(try_number)}.log")
    out = []
    for path in glob.glob(pattern):
        try:
            with open(path, errors="replace") as f:
                raw = f.readlines()[-limit:]
        except OSError:
            continue
        for line in raw:
            line = line.rstrip("\n")
            try:
                rec = json.loads(line)
                event = rec.get("event", "")
                if isinstance(rec.get("error_detail"), list):
                    for err in rec["error_detail"]:
                        out.append(f"{err.get('exc_type', '')}: {err.get('exc_value', '')}")
                line = str(event)
            except (ValueError, AttributeError):
                pass
            out.extend(line.splitlines())
    return out


def _ti_facts(context: dict) -> dict:
    ti = context.get("ti") or context.get("task_instance")
    dag_run = context.get("dag_run")
    run_id = getattr(ti, "run_id", None) or getattr(dag_run, "run_id", None) or ""
    dag_id = getattr(ti, "dag_id", None) or getattr(context.get("dag"), "dag_id", "") or ""
    task_id = getattr(ti, "task_id", None)
    map_index = getattr(ti, "map_index", -1)
    try_number = getattr(ti, "try_number", None)
    max_tries = getattr(ti, "max_tries", None)
    if max_tries is None:
        task = context.get("task")
        retries = getattr(task, "retries", None)
        max_tries = retries + 1 if isinstance(retries, int) else None
    elif isinstance(max_tries, int):
        max_tries = max_tries + 1  # max_tries counts retries; the first try comes on top
    try:
        url = ti.log_url
    except Exception:
        mi = f"/mapped/{map_index}" if map_index is not None and map_index >= 0 else ""
        url = (f"{base_url()}/dags/{dag_id}/runs/{quote(run_id)}/tasks/{task_id}{mi}"
               f"?try_number={try_number}")
    return dict(dag_id=dag_id, run_id=run_id, task_id=task_id, map_index=map_index,
                try_number=try_number, max_tries=max_tries, log_url=url)


class SlimeflowNotifier(BaseNotifier):
    """on_failure_callback / on_retry_callback: one message per distinct failure."""

    def __init__(self, severity: str = "failure"):
        super().__init__()
        if severity not in ("failure", "retry"):
            raise ValueError("severity is failure or retry")
        self.severity = severity

    def notify(self, context):
        try:
            self._notify(context)
        except Exception:  # an alert problem must never change the task's outcome
            log.exception("slimeflow alert could not be built or sent")

    def _notify(self, context):
        f = _ti_facts(context)
        exc = context.get("exception")
        params = dict(context.get("params") or {})
        log_lines = []
        msg_lines = str(exc).splitlines() if exc is not None else []
        if len(msg_lines) < 5:  # the message holds no log tail: read the task log
            log_lines = task_log_lines(f["dag_id"], f["run_id"], f["task_id"], f["map_index"],
                                       f["try_number"])
        task = context.get("task")
        node = getattr(task, "node", None)
        if not isinstance(node, str):
            node = None
        alert, sig = message.build_alert(severity=self.severity, exception=exc,
                                 log_lines=_redact(log_lines), params=params, task_node=node,
                                 **f)
        alert.lines = _redact(alert.lines)[-message.MAX_LINES:]
        return channels.deliver(alert, sig, context, logger=self.log)


on_failure = SlimeflowNotifier("failure")
on_retry = SlimeflowNotifier("retry")


def _deadline_alert(context: dict, recipe: str, expected_hours: float):
    run = (context or {}).get("dag_run") or {}
    dag_id, run_id = run.get("dag_id", ""), run.get("dag_run_id") or run.get("run_id", "")
    started = run.get("start_date") or run.get("queued_at")
    conf = run.get("conf") or {}
    summary = (f"run {run_id} of {dag_id} (recipe {recipe}) started {started} and is still "
               f"{run.get('state', 'running')} after the expected {expected_hours:g} h")
    alert, sig = message.build_alert(
        severity="deadline", dag_id=dag_id, run_id=run_id, task_id=None, params=conf,
        summary=summary, cause="deadline", log_url=f"{base_url()}/dags/{dag_id}/runs/"
                                                   f"{quote(run_id)}")
    return alert, sig


async def deadline_missed(recipe: str, expected_hours: float, context: dict | None = None):
    """DeadlineAlert callback (runs in the triggerer): the run is overdue, warn on-call."""
    import asyncio

    alert, sig = _deadline_alert(context or {}, recipe, expected_hours)
    # Airflow fires each missed deadline once, so no de-duplication (and no Variable write from
    # the triggerer). The result is stored by the triggerer as text: return a string.
    out = await asyncio.to_thread(channels.deliver, alert, sig, context or {}, dedupe=False)
    return f"sent via {', '.join(out['sent'])}" if out.get("sent") else \
        f"not sent: {out.get('skipped') or '; '.join(out.get('errors') or [])}"


def health_alert(*, dag_id: str, run_id: str, task_id: str, node: str | None, text: str,
                 log_url: str | None = None, context: dict | None = None,
                 dedupe: bool = True) -> dict:
    """A GPU health warning (check_cluster's warn grade, or new ECC/Xid/idle GPUs during
    training): sent at once, the run goes on. In a task it is de-duplicated by its sentence, so
    a retry does not send it twice; the trigger passes dedupe=False (it writes no Variable) and
    keeps its own record of what it reported (utils/gpuwatch.py)."""
    alert, _ = message.build_alert(severity="health", dag_id=dag_id, run_id=run_id, task_id=task_id,
                           params={}, task_node=node, summary=text, cause="GPU health",
                           fix="read the sentence above: it names the node, the GPU and what "
                               "to do", log_url=log_url)
    import hashlib

    sig = hashlib.sha1(text.encode()).hexdigest()[:16]
    return channels.deliver(alert, sig, context or {}, dedupe=dedupe)
