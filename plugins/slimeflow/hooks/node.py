"""NodeHook: run a built Step on one GPU node over SSH, and upload the node scripts by SFTP.

It is the providers-ssh SSHHook (same connection extras, host key checking on) plus two things
SSHHook lacks: a JSON spec on stdin for `include/node/runner.py` (so values never pass through a
shell and secrets never enter argv), and line streaming with the node's name in front.
"""
from __future__ import annotations

import io
import json
import os
import posixpath
import re
import select
import shlex
import socket
import time
from collections import deque
from dataclasses import dataclass

from airflow.providers.ssh.hooks.ssh import SSHHook

from slimeflow.utils.sshlogs import quiet_ssh_libraries

quiet_ssh_libraries()

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class NodeError(RuntimeError):
    """A node could not be reached or a step failed there; the message is the one ops read."""


@dataclass
class Result:
    node: str
    rc: int
    stdout: str
    stderr: str
    tail: list

    def last_json(self) -> dict:
        for line in reversed(self.stdout.strip().splitlines()):
            line = line.strip()
            if line.startswith("{"):
                try:
                    return json.loads(line)
                except json.JSONDecodeError:
                    break
        raise NodeError(f"node {self.node} printed no JSON result (exit {self.rc}); last output: "
                        f"{' | '.join(self.tail[-5:]) or '(none)'}")


class NodeHook(SSHHook):
    """One node, one SSH connection, reused for every step the task runs there."""

    def __init__(self, ssh_conn_id: str, **kwargs):
        kwargs.setdefault("keepalive_interval", 30)
        kwargs.setdefault("conn_timeout", 20)
        kwargs.setdefault("cmd_timeout", None)
        kwargs.setdefault("conn_retry_attempts", 2)
        super().__init__(ssh_conn_id=ssh_conn_id, **kwargs)
        self.node = ssh_conn_id

    # -- connection, with errors ops can act on ----------------------------------------------

    def connect(self):
        import paramiko

        where = f"{self.remote_host}:{self.port}"
        try:
            return self.get_conn()
        except paramiko.BadHostKeyException:
            raise NodeError(
                f"node {self.node} ({where}) presented a host key that does not match the pinned "
                f"one; if the node was reinstalled, verify its new key out of band and update "
                f"the connection's host_key extra (or known_hosts), otherwise treat this as a "
                f"possible man-in-the-middle.") from None
        except paramiko.AuthenticationException as e:
            raise NodeError(
                f"SSH login to node {self.node} ({where}) as {self.username} failed ({e}); check "
                f"the connection's login and key_file/private_key and the node's "
                f"authorized_keys.") from None
        except paramiko.SSHException as e:
            if "not found in known_hosts" in str(e) or "known_hosts" in str(e):
                raise NodeError(
                    f"node {self.node} ({where}) is not a known host; pin its key in the "
                    f"connection's host_key extra or add it to known_hosts (host key checking "
                    f"stays on).") from None
            raise NodeError(f"SSH to node {self.node} ({where}) failed: {e}; check that sshd "
                            f"runs there and the connection settings.") from None
        except (OSError, socket.timeout) as e:
            raise NodeError(f"node {self.node} ({where}) is unreachable ({e}); check that it is "
                            f"up, that sshd listens on port {self.port} and that the Airflow "
                            f"workers can route to it.") from None

    # -- running steps ----------------------------------------------------------------------

    def run(self, step, node_dir: str, *, timeout: float | None = None, log=None,
            check: bool = True, keep_tail: int = 50) -> Result:
        """Run `step` through runner.py and wait. Streams output lines to `log(node, line)`."""
        client = self.connect()
        spec = {"argv": step.argv, "env": step.env, "cwd": step.cwd, "timeout": timeout}
        cmd = f"python3 -u {shlex.quote(posixpath.join(node_dir, 'runner.py'))}"
        chan = client.get_transport().open_session()
        chan.exec_command(cmd)
        # the channel's stdin stays open: runner.py stops its child when it closes (client gone)
        chan.sendall((json.dumps(spec) + "\n").encode())
        out, err = [], []
        tail = deque(maxlen=keep_tail)
        bufs = {"out": b"", "err": b""}

        def feed(kind, data, sink):
            bufs[kind] += data
            *lines, bufs[kind] = bufs[kind].split(b"\n")
            for raw in lines:
                line = _ANSI.sub("", raw.decode("utf-8", "replace")).rstrip("\r")
                sink.append(line)
                tail.append(line)
                if log:
                    log(self.node, line)

        deadline = None if timeout is None else time.monotonic() + timeout + 30
        while True:
            r, _, _ = select.select([chan], [], [], 1.0)
            if chan.recv_ready():
                feed("out", chan.recv(65536), out)
            if chan.recv_stderr_ready():
                feed("err", chan.recv_stderr(65536), err)
            if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                break
            if chan.closed and not chan.recv_ready():
                break
            if not client.get_transport().is_active():
                raise NodeError(f"lost the SSH connection to node {self.node} while running "
                                f"{step.argv[0]}; the node may have rebooted or the network "
                                f"dropped.")
            if deadline and time.monotonic() > deadline:
                chan.close()
                raise NodeError(f"{step.argv[0]} on node {self.node} did not finish within "
                                f"{timeout}s.")
        for kind, sink in (("out", out), ("err", err)):
            if bufs[kind]:
                feed(kind, b"\n", sink)
        rc = chan.recv_exit_status()
        chan.close()
        res = Result(self.node, rc, "\n".join(out), "\n".join(err), list(tail))
        if check and rc != 0:
            raise NodeError(f"`{' '.join(step.argv[:3])}` failed on node {self.node} with exit "
                            f"code {rc}; last output: {' | '.join(res.tail[-8:]) or '(none)'}")
        return res

    # -- node scripts ---------------------------------------------------------------------

    def upload_files(self, files, remote_dir: str) -> bool:
        """Upload (name, bytes) pairs into the flat folder `remote_dir` (content-addressed by
        the caller).
        Returns False when it is already there. Written under a temporary name and renamed, so
        a half-uploaded folder is never used."""
        client = self.connect()
        sftp = client.open_sftp()
        try:
            try:
                sftp.stat(posixpath.join(remote_dir, "runner.py"))
                return False
            except FileNotFoundError:
                pass
            parent = posixpath.dirname(remote_dir)
            self._makedirs(sftp, parent)
            # random part: mapped preflights on shared storage upload at the same moment,
            # from workers whose pids may coincide (containers)
            tmp = f"{remote_dir}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
            sftp.mkdir(tmp)
            for name, data in files:
                sftp.putfo(io.BytesIO(data), posixpath.join(tmp, name))
            try:
                sftp.rename(tmp, remote_dir)
            except OSError:
                # another node on shared storage won the race: its copy is identical
                for name in sftp.listdir(tmp):
                    sftp.remove(posixpath.join(tmp, name))
                sftp.rmdir(tmp)
            return True
        except PermissionError as e:
            raise NodeError(f"cannot write {remote_dir} on node {self.node} ({e}); make "
                            f"base_folder writable by the SSH user or choose another "
                            f"base_folder.") from None
        except OSError as e:
            raise NodeError(f"uploading the node scripts to {remote_dir} on node {self.node} "
                            f"failed ({e}); check that base_folder exists, is writable and has "
                            f"free space.") from None
        finally:
            sftp.close()

    @staticmethod
    def _makedirs(sftp, path: str):
        parts = []
        while path not in ("", "/"):
            try:
                sftp.stat(path)
                break
            except FileNotFoundError:
                parts.append(path)
                path = posixpath.dirname(path)
        for p in reversed(parts):
            try:
                sftp.mkdir(p)
            except OSError as e:
                # several nodes on shared storage create the same parents at once (mapped
                # preflight): another one winning the race is fine, anything else is not
                try:
                    sftp.stat(p)
                except OSError:
                    # SFTP v3 reports a read-only file system as a bare "Failure"
                    raise PermissionError(f"cannot create {p}: read-only file system or no "
                                          f"permission ({e})") from None
