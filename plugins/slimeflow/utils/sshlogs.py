"""Keep the SSH libraries' chatter out of task logs.

paramiko (the workers' NodeHook) and asyncssh (the trigger) log every connection, channel and
SFTP session at INFO: "[conn=1, chan=11] Requesting new SSH session", "Authentication
(publickey) successful!". A training task's log would hold a dozen such lines per poll between
the lines an operator reads. They go to WARNING, unless SLIMEFLOW_SSH_DEBUG=1 or Airflow's own
logging level is DEBUG (then they are what one is debugging).
"""
from __future__ import annotations

import logging
import os

LOGGERS = ("paramiko", "asyncssh")


def quiet_ssh_libraries() -> None:
    debugging = (os.environ.get("SLIMEFLOW_SSH_DEBUG") == "1" or
                 os.environ.get("AIRFLOW__LOGGING__LOGGING_LEVEL", "").upper() == "DEBUG")
    for name in LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if debugging else logging.WARNING)
