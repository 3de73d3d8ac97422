"""Where alerts go, and sending them through Airflow's own notifiers.

Channels come from Airflow itself:

- the Variable `slimeflow_alert_channels` (JSON list), when set, says exactly which channels are
  active: `["slack:slimeflow_slack", "email:slimeflow_smtp", "apprise:slimeflow_apprise"]`, or
  objects `{"type": "email", "conn_id": "ops_smtp", "to": ["oncall@x"], "min_severity":
  "failure"}`;
- otherwise every one of these connections that exists is a channel: `slimeflow_slack`
  (slackwebhook), `slimeflow_smtp` (smtp; recipients from the Variable `slimeflow_alert_email_to`
  or the connection extra `to`), `slimeflow_apprise` (apprise).

No channel configured: a notice in the task log, nothing else.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass

log = logging.getLogger("slimeflow.alerts")

CHANNELS_VARIABLE = "slimeflow_alert_channels"
EMAIL_TO_VARIABLE = "slimeflow_alert_email_to"
DEFAULT_CONNS = {"slack": "slimeflow_slack", "email": "slimeflow_smtp",
                 "apprise": "slimeflow_apprise"}
RANK = {"retry": 0, "deadline": 1, "health": 1, "failure": 2}
DEDUPE_PREFIX = "slimeflow_alert_sent_"


@dataclass(frozen=True)
class Channel:
    kind: str                  # slack | email | apprise
    conn_id: str
    to: tuple = ()
    min_severity: str = "retry"

    def wants(self, severity: str) -> bool:
        return RANK.get(severity, 2) >= RANK.get(self.min_severity, 0)


def _variable(key: str):
    from airflow.sdk import Variable

    try:
        return Variable.get(key, default=None)
    except Exception:  # no API/DB reachable: treat as unset
        return None


def _connection(conn_id: str):
    from airflow.sdk import BaseHook

    try:
        return BaseHook.get_connection(conn_id)
    except Exception:
        return None


def _recipients(raw) -> tuple:
    if not raw:
        return ()
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raw = [x for x in raw.replace(";", ",").split(",")]
    if isinstance(raw, str):
        raw = [raw]
    return tuple(x.strip() for x in raw if str(x).strip())


def configured_channels() -> list:
    raw = _variable(CHANNELS_VARIABLE)
    if raw:
        specs = json.loads(raw) if isinstance(raw, str) else raw
        out = []
        for s in specs:
            if isinstance(s, str):
                kind, _, conn_id = s.partition(":")
                s = {"type": kind, "conn_id": conn_id or DEFAULT_CONNS.get(kind, "")}
            kind = s["type"]
            if kind not in DEFAULT_CONNS:
                raise ValueError(f"{CHANNELS_VARIABLE}: unknown channel type {kind!r} (slack, "
                                 f"email, apprise)")
            conn_id = s.get("conn_id") or DEFAULT_CONNS[kind]
            to = _recipients(s.get("to"))
            if kind == "email" and not to:
                to = _email_to(conn_id)
            out.append(Channel(kind, conn_id, to, s.get("min_severity", "retry")))
        return out
    out = []
    for kind, conn_id in DEFAULT_CONNS.items():
        if _connection(conn_id) is None:
            continue
        to = _email_to(conn_id) if kind == "email" else ()
        out.append(Channel(kind, conn_id, to))
    return out


def _email_to(conn_id: str) -> tuple:
    to = _recipients(_variable(EMAIL_TO_VARIABLE))
    if not to:
        conn = _connection(conn_id)
        to = _recipients((conn.extra_dejson or {}).get("to")) if conn is not None else ()
    return to


def notifier_for(channel: Channel, alert):
    """The provider's notifier for one channel, with the message already rendered."""
    if channel.kind == "slack":
        from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

        return SlackWebhookNotifier(slack_webhook_conn_id=channel.conn_id, text=alert.text(),
                                    unfurl_links=False, timeout=30)
    if channel.kind == "email":
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        if not channel.to:
            raise ValueError(f"e-mail channel {channel.conn_id}: no recipients (set the Variable "
                             f"{EMAIL_TO_VARIABLE} or the connection extra `to`)")
        return SmtpNotifier(to=list(channel.to), subject=alert.title(), html_content=alert.html(),
                            smtp_conn_id=channel.conn_id)
    if channel.kind == "apprise":
        from airflow.providers.apprise.notifications.apprise import AppriseNotifier
        from apprise import NotifyType

        kind = {"failure": NotifyType.FAILURE, "retry": NotifyType.WARNING,
                "deadline": NotifyType.WARNING}.get(alert.severity, NotifyType.INFO)
        return AppriseNotifier(apprise_conn_id=channel.conn_id, title=alert.title(),
                               body=alert.plain(), notify_type=kind)
    raise ValueError(f"unknown channel kind {channel.kind!r}")


def _supervised() -> bool:
    """True inside an Airflow task, triggerer or DAG-processor process (the SDK talks to the API
    server through its supervisor); False in a plain Python process such as a unit test."""
    from airflow.sdk.execution_time import task_runner

    return getattr(task_runner, "SUPERVISOR_COMMS", None) is not None


def already_sent(key: str) -> bool:
    if _supervised():
        return bool(_variable(DEDUPE_PREFIX + key))
    try:  # no supervisor: the metadata DB directly
        from airflow.models.variable import Variable as DbVariable

        return DbVariable.get(DEDUPE_PREFIX + key, default_var=None) is not None
    except Exception:
        return False


def mark_sent(key: str, alert) -> None:
    from airflow.sdk import Variable

    value = json.dumps({"dag_id": alert.dag_id, "run_id": alert.run_id, "task": alert.task_label,
                        "cause": alert.cause, "severity": alert.severity,
                        "try": alert.try_number})
    desc = ("slimeflow: an alert already sent (retries of the same failure are not sent again). "
            "Safe to delete once the run is over.")
    try:
        if _supervised():
            Variable.set(DEDUPE_PREFIX + key, value, description=desc)
        else:  # a plain process (tests): the metadata DB directly
            from airflow.models.variable import Variable as DbVariable

            DbVariable.set(DEDUPE_PREFIX + key, value, description=desc)
    except Exception as e:  # never let bookkeeping hide the alert itself
        log.warning("could not record alert %s as sent: %s", key, e)


def deliver(alert, signature: str, context: dict | None = None, *, logger=None,
            dedupe: bool = True) -> dict:
    """Send `alert` to every configured channel once. Returns {"sent": [...], "skipped": str}."""
    logger = logger or log
    key = alert.dedupe_key(signature)
    if dedupe and already_sent(key):
        logger.info("slimeflow alert not sent again: the same %s (%s) was already reported for "
                    "%s in run %s", alert.severity, alert.cause, alert.task_label, alert.run_id)
        return {"sent": [], "skipped": "duplicate", "key": key}
    channels = [c for c in configured_channels() if c.wants(alert.severity)]
    if not channels:
        logger.warning("slimeflow alert (no channel configured, so only logged here; see "
                       "docs/operations.md to set up Slack, e-mail or Apprise):\n%s",
                       alert.plain())
        return {"sent": [], "skipped": "no channel", "key": key}
    sent, errors = [], []
    for ch in channels:
        try:
            notifier_for(ch, alert).notify(context or {})
            sent.append(f"{ch.kind}:{ch.conn_id}")
        except Exception as e:
            errors.append(f"{ch.kind}:{ch.conn_id}: {type(e).__name__}: {e}")
            logger.error("slimeflow alert via %s:%s failed: %s", ch.kind, ch.conn_id, e)
    if sent and dedupe:
        mark_sent(key, alert)
        logger.info("slimeflow alert sent via %s: %s", ", ".join(sent), alert.title())
    return {"sent": sent, "errors": errors, "key": key}
