"""Alerts: content built here (message.py), delivery through Airflow's own notifiers
(SlackWebhookNotifier, SmtpNotifier, AppriseNotifier; channels.py), wired into the DAGs as
callbacks (callbacks.py)."""
