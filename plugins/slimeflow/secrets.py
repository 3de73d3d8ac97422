"""Secrets come from Airflow (connections, Variables, or a secrets backend) and are masked.

| secret      | connection (password) | or Variable           | reaches the node as          |
|-------------|-----------------------|-----------------------|------------------------------|
| HF token    | `slimeflow_hf`        | `slimeflow_hf_token`  | HF_TOKEN of `hf download`    |
| W&B API key | `slimeflow_wandb`     | `slimeflow_wandb_key` | WANDB_API_KEY of the Ray job |

Both are looked up through Airflow, so a configured secrets backend (Vault, AWS Secrets Manager,
`AIRFLOW_CONN_*`/`AIRFLOW_VAR_*` environment variables, ...) is used as it is for any connection.
Each value found is registered with Airflow's secret masker before it is used, so a log line that
happens to contain it prints `***`.

How they travel (docs/security.md): in the JSON spec written to the SSH channel's stdin of
include/node/runner.py, which puts them into the environment of the one child it execs. They are
never in an argv (visible in `ps` to every user of the node), never in XCom or a templated field,
never written to a file. The W&B key is handed to `ray start --head` that way, so the Ray daemons
hold it in their environment and every job they run inherits it: putting it into the job's
runtime_env would put it into the argv of `ray job submit --runtime-env-json` and into Ray's job
table (readable by anyone who can reach the dashboard).
"""
from __future__ import annotations

HF_CONN_ID = "slimeflow_hf"
HF_VARIABLE = "slimeflow_hf_token"
WANDB_CONN_ID = "slimeflow_wandb"
WANDB_VARIABLE = "slimeflow_wandb_key"


def _lookup(conn_id: str, variable: str) -> str | None:
    from airflow.sdk import BaseHook, Variable

    value = None
    try:
        value = BaseHook.get_connection(conn_id).password
    except Exception:
        value = None
    if not value:
        try:
            value = Variable.get(variable, default=None)
        except Exception:
            value = None
    value = value.strip() if isinstance(value, str) else None
    if value:
        from airflow.sdk.log import mask_secret

        mask_secret(value)
    return value or None


def hf_token() -> str | None:
    return _lookup(HF_CONN_ID, HF_VARIABLE)


def wandb_key() -> str | None:
    return _lookup(WANDB_CONN_ID, WANDB_VARIABLE)


def hf_env() -> dict:
    """Environment for `hf download` (through runner.py's stdin spec, never argv)."""
    token = hf_token()
    return {"HF_TOKEN": token} if token else {}


def ray_head_env() -> dict:
    """Secret environment for `ray start --head` (through runner.py's stdin spec): the Ray
    daemons keep it and every job they start inherits it."""
    key = wandb_key()
    return {"WANDB_API_KEY": key} if key else {}
