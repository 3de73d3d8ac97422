"""Secrets come from Airflow (connections, Variables, or a secrets backend) and are masked."""
from __future__ import annotations

HF_CONN_ID = "slimeflow_hf"
HF_VARIABLE = "slimeflow_hf_token"


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
    if value:
        from airflow.sdk.log import mask_secret

        mask_secret(value)
    return value or None


def hf_token() -> str | None:
    return _lookup(HF_CONN_ID, HF_VARIABLE)
