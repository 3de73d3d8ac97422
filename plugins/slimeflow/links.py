"""Extra links on `train`: the Ray dashboard and the W&B run.

Registered with Airflow by plugins/slimeflow_plugin.py (the API server must know the classes).
Airflow computes each link in the worker when the task finishes (or defers) and stores it in XCom.

- Ray dashboard: SLIMEFLOW_RAY_DASHBOARD_URL (environment) or the Variable
  slimeflow_ray_dashboard_url, a template with {master_addr}, {head}, {dag_id}, {run_id},
  {submission_id}; e.g. behind a proxy `https://ray.example.com/{head}/`. Unset: the head's own
  dashboard, `http://<master_addr>:8265/#/jobs`, when it answers from the worker (not when
  ray_dashboard_host keeps it on 127.0.0.1: reach it through an SSH tunnel then).
- W&B: shown when the run has W&B on (`--use-wandb` in the recipe or extra_train_args). The URL is
  the run's own (XCom `wandb_url` of train, when the job printed one), else SLIMEFLOW_WANDB_URL /
  Variable slimeflow_wandb_url (template with {host}, {team}, {project}, {group}, {dag_id},
  {run_id}), else `{host}/{entity}/{project}` from the --wandb-* arguments. W&B's URLs need the
  entity: --wandb-team, else SLIMEFLOW_WANDB_ENTITY / Variable slimeflow_wandb_entity (the team
  or user the API key writes to); without one the link goes to the host's home page.
"""
from __future__ import annotations

import os
import shlex

from airflow.sdk import BaseOperatorLink


def _config(env: str, variable: str):
    value = os.environ.get(env)
    if value is None:
        try:
            from airflow.sdk import Variable

            value = Variable.get(variable, default=None)
        except Exception:
            value = None
    return (value or "").strip() or None


def _context(ti_key):
    """Params and ids of the task instance (in the worker, ti_key is the running instance)."""
    params, ids = {}, {}
    for attr in ("dag_id", "run_id", "task_id"):
        ids[attr] = getattr(ti_key, attr, "") or ""
    try:
        params = dict(ti_key.get_template_context().get("params") or {})
    except Exception:
        try:
            from airflow.sdk import get_current_context

            params = dict(get_current_context().get("params") or {})
        except Exception:
            params = {}
    return params, ids


def _head_host(params: dict) -> str:
    if params.get("master_addr"):
        return str(params["master_addr"])
    nodes = params.get("nodes") or []
    if not nodes:
        return ""
    try:
        from airflow.sdk import BaseHook

        return BaseHook.get_connection(nodes[0]).host or ""
    except Exception:
        return ""


def _answers(host: str, port: int) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


class _SafeDict(dict):
    def __missing__(self, key):
        return "{" + key + "}"


class RayDashboardLink(BaseOperatorLink):
    name = "Ray dashboard"

    def get_link(self, operator, *, ti_key) -> str:
        template = _config("SLIMEFLOW_RAY_DASHBOARD_URL", "slimeflow_ray_dashboard_url")
        params, ids = _context(ti_key)
        if not template:
            host = _head_host(params)
            if (params.get("ray_dashboard_host") == "127.0.0.1" or not host
                    or not _answers(host, 8265)):
                return ""
            template = "http://{master_addr}:8265/#/jobs"
        from slimeflow import builders

        try:
            sub_id = builders.submission_id(ids["dag_id"], ids["run_id"])
        except Exception:
            sub_id = ""
        nodes = params.get("nodes") or [""]
        return template.format_map(_SafeDict(master_addr=_head_host(params), head=nodes[0],
                                             submission_id=sub_id, **ids))


def wandb_args(recipe_name: str, params: dict) -> dict | None:
    """{host, team, project, group} when the run has W&B on, else None."""
    from slimeflow.recipes import load_recipe

    tokens = []
    try:
        tokens += shlex.split(load_recipe(recipe_name).args.get("wandb_args") or "")
    except Exception:
        pass
    tokens += [str(t) for t in params.get("extra_train_args") or []]
    if "--use-wandb" not in tokens and not params.get("use_wandb") and not params.get("wandb"):
        return None

    def flag(name, default=""):
        if name in tokens:
            i = tokens.index(name)
            if i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
                return tokens[i + 1]
        return default
    return {"host": flag("--wandb-host", "https://wandb.ai").rstrip("/"),
            "team": flag("--wandb-team") or _config("SLIMEFLOW_WANDB_ENTITY",
                                                    "slimeflow_wandb_entity") or "",
            "project": flag("--wandb-project", "slime"), "group": flag("--wandb-group")}


def _recipe(operator, ti_key) -> str:
    """The task's recipe; the API server holds only the serialized task, which does not carry it,
    so it is found from the DAG id there."""
    try:
        name = getattr(operator, "recipe", None)
    except Exception:  # a SlimeOperator outside its DAG
        name = None
    if name:
        return name
    try:
        from slimeflow.recipes import recipe_for_dag

        return recipe_for_dag(ti_key.dag_id)
    except Exception:
        return ""


class WandbRunLink(BaseOperatorLink):
    name = "W&B run"

    def get_link(self, operator, *, ti_key) -> str:
        params, ids = _context(ti_key)
        args = wandb_args(_recipe(operator, ti_key), params)
        if args is None:
            return ""
        try:
            url = ti_key.xcom_pull(task_ids=ti_key.task_id, key="wandb_url")
            if url:
                return str(url)
        except Exception:
            pass
        template = _config("SLIMEFLOW_WANDB_URL", "slimeflow_wandb_url")
        if template:
            return template.format_map(_SafeDict(**args, **ids))
        if not args["team"]:  # {host}/{project} would be read as an entity named so
            return args["host"]
        url = f"{args['host']}/{args['team']}/{args['project']}"
        if args["group"]:
            url += f"/groups/{args['group']}"
        return url
