"""Operations settings of a recipe's DAG: schedule, assets, deadline.

Each setting is read from the environment, so a deployment sets it in docker-compose.yaml:

| setting                       | environment                                | Variable                                   |
|-------------------------------|--------------------------------------------|--------------------------------------------|
| cron schedule                 | SLIMEFLOW_SCHEDULE_<DAG_ID_UPPER>          | slimeflow_schedule_<dag_id>                |
| retrain when data lands       | SLIMEFLOW_DATA_ASSET_<DAG_ID_UPPER>        | slimeflow_data_asset_<dag_id>              |
| run deadline (hours)          | SLIMEFLOW_EXPECTED_HOURS_<DAG_ID_UPPER>    | slimeflow_expected_hours_<dag_id>          |

The Variable column is the fallback when the environment does not set it. At run time (the
deadline `train` watches) it is always consulted. At parse time (schedule, data asset) only with
SLIMEFLOW_PARSE_VARIABLES=on, so they can be changed in the UI (Admin > Variables): each
Variable read at parse is a round trip from the dag-processor to the API server for every DAG
file on every re-parse (30 s), and loads the task supervisor into the parse, which is what
Airflow's best practices warn about.

Defaults: no schedule (runs start from the UI or the REST API), deadline = the recipe's
`expected_hours`.
"""
from __future__ import annotations

import os
from datetime import timedelta

# "x-": Airflow's mark of a private URI scheme. Airflow then skips looking for the scheme's
# normalizer, which loads every provider's asset handlers into each DAG file's parse.
CHECKPOINT_URI = "x-slimeflow://checkpoints/{recipe}"


def parse_variables() -> bool:
    return os.environ.get("SLIMEFLOW_PARSE_VARIABLES", "").strip().lower() in ("on", "1", "true",
                                                                                "yes")


def setting(dag_id: str, name: str, *, at_parse: bool = True):
    """SLIMEFLOW_<NAME>_<DAG_ID_UPPER> from the environment, else Variable slimeflow_<name>_<dag_id>
    (at parse time only when SLIMEFLOW_PARSE_VARIABLES is on: see the module docstring)."""
    raw = os.environ.get(f"SLIMEFLOW_{name.upper()}_{dag_id.upper()}")
    if raw is not None:
        return raw.strip() or None
    if at_parse and not parse_variables():
        return None
    try:
        from airflow.sdk import Variable

        raw = Variable.get(f"slimeflow_{name.lower()}_{dag_id}", default=None)
    except Exception:
        return None
    return str(raw).strip() or None if raw is not None else None


def checkpoint_asset(recipe):
    """The Asset `train` updates: the recipe's newest checkpoint (eval/export DAGs schedule on it).

    Each event's extra holds {save_dir, iteration, path} of that checkpoint."""
    from airflow.sdk import Asset

    return Asset(name=f"slimeflow_{recipe.name}_checkpoint",
                 uri=CHECKPOINT_URI.format(recipe=recipe.name), group="model",
                 extra={"recipe": recipe.name, "hf_repo": recipe.hf_repo})


def schedule(recipe):
    """Cron, a data Asset, both (whichever comes first), or None."""
    cron = setting(recipe.dag_id, "schedule")
    data = setting(recipe.dag_id, "data_asset")
    if not data:
        return cron
    from airflow.sdk import Asset

    assets = [Asset(uri=u.strip()) for u in data.split(",") if u.strip()]
    cond = assets[0]
    for a in assets[1:]:
        cond = cond | a
    if not cron:
        return cond
    from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable

    return AssetOrTimeSchedule(timetable=CronTriggerTimetable(cron, timezone="UTC"), assets=cond)


def expected_hours(recipe, *, at_parse: bool = True) -> float:
    raw = setting(recipe.dag_id, "expected_hours", at_parse=at_parse)
    if raw:
        try:
            value = float(raw)
            if value > 0:
                return value
        except ValueError:
            pass
    return float(recipe.expected_hours)


def deadline(recipe):
    """Warn on-call (every alert channel) when a run is not done `expected_hours` after it was
    queued. DeadlineAlert is experimental in Airflow 3.3: its callback runs in the triggerer."""
    from airflow.sdk import AsyncCallback, DeadlineAlert, DeadlineReference

    if not deadlines_enabled():
        return None
    hours = expected_hours(recipe)
    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT, interval=timedelta(hours=hours),
        callback=AsyncCallback("slimeflow.notifiers.callbacks.deadline_missed",
                               kwargs={"recipe": recipe.name, "expected_hours": hours}),
        name=f"{recipe.dag_id} over {hours:g} h")


def deadlines_enabled() -> bool:
    """Airflow's own DeadlineAlert, opt-in with SLIMEFLOW_DEADLINES=on. Off by default because in
    Airflow 3.3.2 (experimental feature) a DAG carrying one breaks two things users need:
    clearing a task (POST clearTaskInstances recalculates deadlines and fails with HTTP 500,
    "unsupported type for timedelta seconds component: dict") and dag.test() of a successful run
    ("'dict' object has no attribute 'hex'"). The default warning comes from the train trigger
    instead (triggers/train_job.py), which works today. Never on inside `airflow dags test`."""
    import sys

    flag = os.environ.get("SLIMEFLOW_DEADLINES", "").strip().lower()
    argv = [a for a in sys.argv[1:] if not a.startswith("-")]
    return flag in ("on", "1", "true", "yes") and argv[:2] != ["dags", "test"]


def publish_checkpoint(context, result):
    """post_execute of `train`: put {save_dir, iteration, path} on the checkpoint Asset event."""
    if not isinstance(result, dict) or "path" not in result:
        return
    extra = {k: result.get(k) for k in ("save_dir", "iteration", "path")}
    for outlet in getattr(context["task"], "outlets", None) or ():
        if getattr(outlet, "uri", "").startswith("x-slimeflow://checkpoints/"):
            context["outlet_events"][outlet].extra = extra


def doc_sections(recipe, sched) -> str:
    """The DAG page's doc_md beyond the pipeline summary: params, nodes, operations (`sched`: the
    DAG's schedule, read once by the factory)."""
    from slimeflow.params import param_specs

    rows = "\n".join(
        f"| `{name}` | {title} | `{_short(default)}` | {desc.replace('|', '/')} |"
        for name, (default, _schema, title, desc) in param_specs(recipe).items())
    hours = expected_hours(recipe)
    env = recipe.dag_id.upper()
    return f"""
## Params (the trigger form)
| param | title | default | what it does |
|---|---|---|---|
{rows}

Deployment-wide defaults: environment `SLIMEFLOW_DEFAULT_<PARAM>` (JSON), e.g.
`SLIMEFLOW_DEFAULT_NODES='["gpu0","gpu1"]'`.

## Adding nodes
1. On the node: slime, Megatron-LM, Ray, SGLang and the hf CLI installed (the seed's image);
   the Airflow host's public key in `~/.ssh/authorized_keys`.
2. In Airflow, Admin > Connections > add, type **SSH**: host, login, and the extra
   `{{"key_file": "/home/airflow/.ssh/id_ed25519", "host_key": "<base64 of the node's host key>"}}`
   (or the node in the mounted `known_hosts`). Host key checking stays on.
3. List the connection ids in `nodes`, head first. More than one node needs `base_folder` on
   storage every node shares; `preflight` checks all of this before anything is downloaded.

## Operations
- **Schedule**: `{sched or 'none (manual or REST triggers only)'}`. Set a cron with
  `SLIMEFLOW_SCHEDULE_{env}` (or the Variable `slimeflow_schedule_{recipe.dag_id}` with
  `SLIMEFLOW_PARSE_VARIABLES=on`) (weekly retraining: `0 3 * * 1`, Mondays 03:00 UTC); retrain when data lands with
  `SLIMEFLOW_DATA_ASSET_{env}` / Variable `slimeflow_data_asset_{recipe.dag_id}` naming the
  dataset's asset URI. catchup is off and only one run is active at a time.
- **Checkpoint asset**: `train` updates `{CHECKPOINT_URI.format(recipe=recipe.name)}`; each event
  carries `{{save_dir, iteration, path}}`, so eval/export DAGs can use `schedule=[that Asset]`.
- **Alerts**: a failed task (and, at lower severity, a retry) sends one message per distinct
  failure to Slack (`slimeflow_slack`), e-mail (`slimeflow_smtp` + Variable
  `slimeflow_alert_email_to`) and Apprise (`slimeflow_apprise`), whichever exist, or as the
  Variable `slimeflow_alert_channels` says.
- **Deadline**: a run still going {hours:g} h after it was queued (the recipe's expected_hours;
  override with `SLIMEFLOW_EXPECTED_HOURS_{env}`) warns the same channels.
- **Links** on `train`: Ray dashboard (`SLIMEFLOW_RAY_DASHBOARD_URL`) and the W&B run when W&B is
  on. See docs/operations.md.
"""


def _short(value) -> str:
    text = "empty" if value in (None, "") else str(value)
    return text if len(text) <= 40 else text[:37] + "..."
