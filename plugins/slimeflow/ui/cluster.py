"""The cluster page's data: every node the slimeflow DAGs' runs used (their `nodes` params), the
last preflight probe of each (XCom of its newest run), and who holds its lease now."""
from __future__ import annotations

import json
import time


def nodes(limit_runs: int = 20) -> list:
    from sqlalchemy import select

    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    from slimeflow.ui.runs import conn_host, recent_runs, run_params, dag_recipes

    recipes = dag_recipes()
    seen = {}
    for dag_id, run_id, state, conf, _ in recent_runs(limit_runs):
        params = run_params(recipes[dag_id], conf)
        for n in params.get("nodes") or []:
            seen.setdefault(n, {"conn_id": n, "dag_id": dag_id, "run_id": run_id,
                                "base_folder": params.get("base_folder")})
    with create_session() as s:
        for n in seen.values():
            rows = s.execute(select(XComModel.value, XComModel.timestamp).where(
                XComModel.dag_id == n["dag_id"], XComModel.run_id == n["run_id"],
                XComModel.task_id == "preflight", XComModel.key == "return_value")).all()
            for value, ts in rows:
                probe = value if isinstance(value, dict) else _loads(value)
                if isinstance(probe, dict) and probe.get("node") == n["conn_id"]:
                    gpus = probe.get("gpus") or []
                    n["gpus"] = (f"{len(gpus)} x {gpus[0].get('name')}" if gpus else "none")
                    n["probed"] = str(ts)[:19]
    for n in seen.values():
        try:
            n["host"] = conn_host(n["conn_id"])
            n.update(_lease(n))
        except Exception as e:  # unreachable node: say so in its row
            n["error"] = str(e)[:200]
    return sorted(seen.values(), key=lambda n: n["conn_id"])


def _loads(v):
    try:
        return json.loads(v)
    except (TypeError, ValueError):
        return None


def _lease(n: dict) -> dict:
    from slimeflow.hooks.node import NodeHook

    path = f"{n['base_folder']}/.slimeflow/leases/{n['conn_id']}.json"
    hook = NodeHook(ssh_conn_id=n["conn_id"], conn_timeout=10, conn_retry_attempts=1)
    try:
        sftp = hook.connect().open_sftp()
        try:
            with sftp.open(path) as f:
                lease = json.loads(f.read().decode())
        except FileNotFoundError:
            return {"lease_run": None}
        finally:
            sftp.close()
    finally:
        if getattr(hook, "client", None):
            hook.client.close()
    beat = lease.get("heartbeat")
    return {"lease_run": lease.get("run"),
            "lease_age": f"{time.time() - beat:.0f} s" if beat else None}
