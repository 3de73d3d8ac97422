"""TrainJobTrigger: supervise a detached Ray job from the triggerer, over one async SSH connection.

Every `poll_interval` seconds it runs ONE exec on the head,

    python3 <node_dir>/runner.py      (JSON spec on stdin: argv = jobwatch.py ...)

which answers the job's Ray status, the driver-log lines written since the last byte offset, the
latest checkpoint, and refreshes this run's node leases (see include/node/jobwatch.py). Lines go
to the task log prefixed with the node; rollout lines also become one progress line each, and the
progress (with the log offset) is kept in a JSON file on the head, so that a restarted triggerer
or the next attempt continues where this one stopped.

It fires exactly one TriggerEvent, `{"status": ...}`: SUCCEEDED, FAILED, STOPPED, LOST (the Ray
cluster is gone: neither the dashboard nor the GCS answers, or Ray no longer knows the job),
UNREACHABLE (no SSH to the head for `unreachable_timeout` s) or STALLED (no rollout line for
`stall_timeout` s). A dead dashboard with a live GCS (DASHBOARD_DOWN) fires nothing: it is
warned about once and polling goes on, since the job may still run and its log is still read.

Causes are looked for in EVERY line of the stream, not only in the last lines: the first strong
cause (an OOM, an NCCL error) is kept in progress.json across polls and triggerer restarts,
because an actor's NCCL error can come long before the driver's ActorDiedError that ends the
job. The failure message names the node (Ray's `ip=` prefix or the ActorDiedError's `ip:`,
mapped to a connection id through `node_ips`) and the actor class. `on_kill` (a user marked the deferred task failed/success,
cleared it, or cancelled the run) stops the job and Ray on every node; a triggerer restart only
cancels the coroutine (`cleanup`), which leaves the job running for the next triggerer.

Its kwargs hold connection ids, paths and argv lists, never a secret.
"""
from __future__ import annotations

import asyncio
import json
import math
import posixpath
import re
import shlex
import time
from collections import deque
from typing import Any, AsyncIterator

from airflow.triggers.base import BaseTrigger, TriggerEvent

from slimeflow.hooks.ray import ACTIVE, TERMINAL
from slimeflow.utils import logparse

# `ray job stop --no-wait` only posts the stop request
JOB_STOP_NO_WAIT_TIMEOUT_S = 20


def resume_note(iteration, done=None, save_dir=None, known=True) -> str:
    """What a stopped job loses. slime saves only every save_interval rollouts and installs no
    SIGTERM handler (Ray's handler ends the driver at once), so a stop never saves: the next
    attempt resumes after latest_checkpointed_iteration.txt (a rollout id; its checkpoint is
    iter_%07d of that id) and everything trained since is lost."""
    where = f" in {save_dir}" if save_dir else ""
    if not known:  # the checkpoint could not be read: say where to look
        return (f"slime does not save on SIGTERM: a resume starts after the rollout in "
                f"latest_checkpointed_iteration.txt{where}; the work since that checkpoint is "
                f"lost")
    if iteration is None:
        return (f"slime does not save on SIGTERM and no checkpoint was saved yet (no "
                f"latest_checkpointed_iteration.txt{where}): a resume starts from scratch "
                f"(rollout 0); the work of this attempt is lost")
    it = int(iteration)
    lost = ""
    if done is not None and int(done) > it + 1:
        lost = f" (rollouts {it + 1}..{int(done) - 1})"
    return (f"slime does not save on SIGTERM: a resume starts from rollout {it + 1} (checkpoint "
            f"iter_{it:07d}{where}); the work since then{lost} is lost")


_TS = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\]")


def line_time(line: str):
    """The wall time of a slime log line (`[%Y-%m-%d %H:%M:%S] file.py:N - ...`, local time),
    also behind Ray's `(Actor pid=N)` prefix."""
    m = _TS.match(logparse.clean_line(line))
    if not m:
        return None
    try:
        return time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S"))
    except ValueError:
        return None


def json_safe(value):
    """A metric as strict JSON can hold it: slime logs nan/inf (a diverged loss), which
    json.dumps would write as the non-JSON NaN/Infinity; they travel as "nan"/"inf"/"-inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value


class RemoteError(RuntimeError):
    """The head could not be reached, or the exec gave no answer."""


class AsyncNode:
    """One asyncssh connection to one node (host key checked: SSHHookAsync builds known_hosts
    from the connection's host_key extra), reopened on demand."""

    def __init__(self, conn_id: str, node_dir: str):
        self.conn_id = conn_id
        self.node_dir = node_dir
        self.conn = None

    async def connect(self):
        if self.conn is None:
            from airflow.providers.ssh.hooks.ssh import SSHHookAsync

            from slimeflow.utils.sshlogs import quiet_ssh_libraries

            quiet_ssh_libraries()

            hook = SSHHookAsync(ssh_conn_id=self.conn_id, keepalive_interval=15)
            self.conn = await asyncio.wait_for(hook.get_conn(), timeout=30)
        return self.conn

    def close(self):
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                pass
            self.conn = None

    async def run(self, argv: list, env: dict | None = None, cwd: str | None = None,
                  timeout: float = 120) -> tuple:
        """(rc, stdout, stderr) of argv run through runner.py. stdin stays open while it runs:
        runner.py stops the child when the channel closes."""
        cmd = "python3 -u " + shlex.quote(posixpath.join(self.node_dir, "runner.py"))
        spec = {"argv": list(argv), "env": dict(env or {}), "cwd": cwd, "timeout": timeout}
        try:
            # inside the try: a refused or timed-out (re)connect is an unreachable head too,
            # not a crash of the trigger (seen with sshd down on the head for real)
            conn = await self.connect()
            proc = await conn.create_process(cmd, encoding="utf-8")
            try:
                proc.stdin.write(json.dumps(spec) + "\n")
                out, err = await asyncio.wait_for(
                    asyncio.gather(proc.stdout.read(), proc.stderr.read()), timeout + 30)
                await asyncio.wait_for(proc.wait(), 10)
            finally:
                proc.close()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # connection refused or lost, channel refused, timeout
            self.close()
            raise RemoteError(f"{type(e).__name__}: {e}") from None
        return proc.exit_status if proc.exit_status is not None else -1, out, err

    async def run_json(self, argv: list, **kw) -> dict:
        rc, out, err = await self.run(argv, **kw)
        for line in reversed(out.strip().splitlines()):
            if line.startswith("{"):
                try:
                    return json.loads(line)
                except ValueError:
                    break
        raise RemoteError(f"no JSON from {argv[1] if len(argv) > 1 else argv[0]} (exit {rc}): "
                          f"{(err or out).strip()[-300:]}")


class TrainJobTrigger(BaseTrigger):
    def __init__(self, *, head: str, nodes: list, node_dir: str, base_id: str, sub_id: str,
                 watch_argv: list, stop_argv: list, stop_env: dict, ray_stop_argv: list,
                 cwd: str | None, total: int, poll_interval: float = 15,
                 unreachable_timeout: float = 600, stall_timeout: float = 7200,
                 start_iteration: int | None = None, deferred_at: float | None = None,
                 deadline: dict | None = None, node_ips: dict | None = None,
                 save_dir: str | None = None, lease_stale: float | None = None,
                 hang_timeout: float = 1200, health_interval: float = 60,
                 gpu_log_interval: float = 600, xid_marks: dict | None = None,
                 run_ref: dict | None = None):
        super().__init__()
        # GPU telemetry (utils/gpuwatch.py): every health_interval s one `gpuhealth.py sample`
        # per node; a summary line per node every gpu_log_interval s; xid_marks: {node: kernel
        # log time check_cluster saw last}, so that an Xid logged since then is new
        self.hang_timeout = float(hang_timeout)
        self.health_interval = float(health_interval)
        self.gpu_log_interval = float(gpu_log_interval)
        self.xid_marks = dict(xid_marks or {})
        self.run_ref = dict(run_ref or {})  # {"dag_id", "run_id"} for the alerts
        self._gpu_nodes = {}
        self._gpu_sampled_at = None
        self._gpu_logged_at = None
        self._watch = None
        # jobwatch refreshes the leases from the head, which on local (not shared) storage only
        # sees the head's own lease file: the workers' are refreshed on the workers, every
        # min(60 s, lease_stale / 3) (slimeflow/leases.py); None: not at all
        self.lease_stale = float(lease_stale) if lease_stale else None
        self._worker_beat_at = None
        # {Ray node IP: connection id}: Ray names nodes by IP (`ip=` prefix, ActorDiedError's
        # `ip:`), people by connection id
        self.node_ips = dict(node_ips or {})
        self.save_dir = save_dir or _flag(watch_argv, "--save-dir")
        # {"at": epoch seconds, "recipe", "expected_hours", "dag_id", "run_id"}: warn on-call
        # once when training is still running past the recipe's expected duration
        self.deadline = dict(deadline) if deadline else None
        self._deadline_warned = False
        self.head = head
        self.nodes = list(nodes)
        self.node_dir = node_dir
        self.base_id = base_id
        self.sub_id = sub_id
        self.watch_argv = list(watch_argv)
        self.stop_argv = list(stop_argv)
        self.stop_env = dict(stop_env or {})
        self.ray_stop_argv = list(ray_stop_argv)
        self.cwd = cwd
        self.total = int(total)
        self.poll_interval = float(poll_interval)
        self.unreachable_timeout = float(unreachable_timeout)
        self.stall_timeout = float(stall_timeout)
        self.start_iteration = start_iteration
        self.deferred_at = deferred_at or time.time()
        self._node = None
        self._iteration = None   # the latest checkpoint seen (for on_kill's message)
        self._polled = False     # whether _iteration comes from a poll
        self._done = None        # rollouts done, as the log showed them

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("slimeflow.triggers.train_job.TrainJobTrigger", {
            "head": self.head, "nodes": self.nodes, "node_dir": self.node_dir,
            "base_id": self.base_id, "sub_id": self.sub_id, "watch_argv": self.watch_argv,
            "stop_argv": self.stop_argv, "stop_env": self.stop_env,
            "ray_stop_argv": self.ray_stop_argv, "cwd": self.cwd, "total": self.total,
            "poll_interval": self.poll_interval, "unreachable_timeout": self.unreachable_timeout,
            "stall_timeout": self.stall_timeout, "start_iteration": self.start_iteration,
            "deferred_at": self.deferred_at, "deadline": self.deadline,
            "node_ips": self.node_ips, "save_dir": self.save_dir,
            "lease_stale": self.lease_stale, "hang_timeout": self.hang_timeout,
            "health_interval": self.health_interval, "gpu_log_interval": self.gpu_log_interval,
            "xid_marks": self.xid_marks, "run_ref": self.run_ref})

    # -- the poll loop ------------------------------------------------------------------------

    def _event(self, status: str, cause: str | None, fix: str | None, tail, detail: str = "",
               **extra) -> TriggerEvent:
        lines = list(tail)[-50:]
        if status == "SUCCEEDED":
            msg = f"training job {self.sub_id} on node {self.head} succeeded"
        else:
            msg = (f"training job {self.sub_id} on node {self.head} ended {status}: cause "
                   f"{cause}; {detail}fix: {fix}. Last {len(lines)} log lines:\n"
                   + "\n".join(lines))
        return TriggerEvent({"status": status, "cause": cause, "fix": fix, "sub_id": self.sub_id,
                             "start_iteration": self.start_iteration,
                             "message": msg, "tail": lines, **extra})

    async def _locate_actor(self, node, c: dict, tail) -> dict:
        """Ask Ray (state API, `raystate.py actor` on the head) where the lost actor ran: a
        driver that loses an actor with its node names only the actor's id. An actor whose
        node Ray counts DEAD is a lost node, and the fix names that node."""
        from slimeflow.builders import RAY_DASHBOARD

        aid = logparse.actor_id_in([c.get("line") or ""] + list(tail))
        if not aid:
            return c
        try:
            info = await node.run_json(["python3", f"{self.node_dir}/raystate.py", "actor",
                                        "--id", aid, "--address", RAY_DASHBOARD], timeout=60)
        except RemoteError as e:
            self.log.warning("[%s] could not ask Ray where actor %s ran: %s", self.head, aid, e)
            return c
        if not info.get("found"):
            return c
        death = info.get("death") or ""
        if death.startswith("The actor is dead because its owner has died"):
            death = ""  # asked after the job ended: its driver (the owner) is gone by then
        c = dict(c, actor=c.get("actor") or info.get("class_name"),
                 pid=c.get("pid") or info.get("pid"), ip=info.get("node_ip"), remote=None,
                 death=death or None)
        if info.get("node_state") == "DEAD" and info.get("node_ip"):
            c.update(cause="node lost", fix=logparse.FIXES["node lost"])
        return c

    def _where(self, c: dict) -> str:
        """'on node gpu1 in MegatronTrainRayActor (pid 814)' for a cause: the node from its IP
        (a prefix without `ip=`, or a line of the driver's own, is the head)."""
        ip = c.get("ip")
        node = (self.node_ips.get(ip) or f"the node at {ip}") if ip else self.head
        who = ""
        if c.get("actor"):
            who = f" in {c['actor']}" + (f" (pid {c['pid']})" if c.get("pid") else "")
        elif c.get("pid"):
            who = f" in pid {c['pid']}"
        return f"on node {node}{who}"

    def _progress(self, st: dict, offset: int, status: str) -> dict:
        return {"submission_id": self.base_id, "attempt": self.sub_id, "total": self.total,
                "rollout": st.get("done"), "reward": json_safe(st.get("reward")),
                "loss": json_safe(st.get("loss")),
                "eta_s": st.get("eta"), "last_progress_at": st.get("last_progress_at"),
                "rollouts_seen": st.get("seen", 0), "log_offset": offset, "status": status,
                "start_iteration": self.start_iteration, "cause": st.get("cause"),
                "gpu": self._watch.state() if self._watch is not None else st.get("gpu"),
                "updated_at": time.time()}

    async def _check_deadline(self, status):
        """The run is overdue: one warning through the alert channels (a triggerer restart may
        send it once more). Airflow 3.3.2's DeadlineAlert would do this, but it breaks clearing
        tasks and dag.test() (docs/operations.md), so it is opt-in only."""
        d = self.deadline
        if not d or self._deadline_warned or time.time() < d["at"]:
            return
        self._deadline_warned = True
        try:
            from slimeflow.notifiers.callbacks import deadline_missed

            ctx = {"dag_run": {"dag_id": d.get("dag_id"), "run_id": d.get("run_id"),
                               "start_date": d.get("started"), "state": "running"}}
            out = await deadline_missed(d.get("recipe", ""), float(d.get("expected_hours", 0)),
                                        ctx)
            self.log.warning("[%s] run is past its expected %s h: deadline warning %s",
                             self.head, d.get("expected_hours"), out)
        except Exception as e:  # a failed warning must never stop the supervision
            self.log.warning("deadline warning could not be sent: %s", e)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        self._node = node = AsyncNode(self.head, self.node_dir)
        tail = deque(maxlen=50)
        offset = -1
        st: dict = {"seen": 0, "last_progress_at": None}
        first = None  # (rollout id, wall time) of the first rollout this instance saw
        last_ok = time.monotonic()
        down_since_msg = None
        backoff = 1.0
        to_write = None
        points, sent = [], 0  # history points not yet on the head; how many to_write has
        restored = False
        ray_warned = None  # the not-clear state (DASHBOARD_DOWN, UNKNOWN) warned about
        while True:
            argv = self.watch_argv + ["--offset", str(offset), "--tail", "50"]
            if to_write is not None:
                argv += ["--write-progress", json.dumps(to_write)]
            try:
                res = await node.run_json(argv, timeout=120)
                if to_write is not None:  # written with this poll
                    del points[:sent]
                    sent = 0
            except RemoteError as e:
                now = time.monotonic()
                if down_since_msg is None:
                    down_since_msg = str(e)
                    self.log.warning("[%s] cannot reach the head (%s); retrying with backoff, "
                                     "the job keeps running", self.head, e)
                if now - last_ok > self.unreachable_timeout:
                    yield self._event(
                        "UNREACHABLE", "node lost", "check that the head is up and reachable "
                        "over SSH, then clear the task: it reattaches to the job if it still "
                        "runs, or resumes from the latest checkpoint", tail,
                        f"the head was unreachable over SSH for "
                        f"{now - last_ok:.0f} s (unreachable_timeout "
                        f"{self.unreachable_timeout:.0f} s; last error: {e}); ")
                    return
                await asyncio.sleep(min(backoff, max(self.poll_interval, 1.0)))
                backoff = min(backoff * 2, 60.0)
                continue
            if down_since_msg is not None:
                self.log.info("[%s] head reachable again after %.0f s", self.head,
                              time.monotonic() - last_ok)
                down_since_msg = None
            last_ok, backoff = time.monotonic(), 1.0
            if not restored:
                restored = True
                saved = res.get("saved") or {}
                if saved.get("attempt") == self.sub_id:
                    st["last_progress_at"] = saved.get("last_progress_at")
                    st["done"], st["seen"] = saved.get("rollout"), saved.get("rollouts_seen") or 0
                    st["reward"], st["loss"] = saved.get("reward"), saved.get("loss")
                    if isinstance(saved.get("cause"), dict):  # seen by an earlier triggerer
                        st["cause"] = saved["cause"]
                    if isinstance(saved.get("gpu"), dict):  # ECC baseline, Xid cursor, ...
                        st["gpu"] = saved["gpu"]
                    if saved.get("log_offset"):
                        self.log.info("[%s] following job %s from log byte %s (progress %s/%s)",
                                      self.head, self.sub_id, saved.get("log_offset"),
                                      saved.get("rollout"), self.total)
                if st["last_progress_at"] is None:
                    st["last_progress_at"] = self.deferred_at
            await self._beat_workers()
            now_wall = time.time()
            for raw in res.get("lines", []):
                # the task log and the failure message keep Ray's `(Actor pid=N, ip=X)` prefix
                # (which actor, which node) but not its colour codes; parsing needs slime's line
                line = logparse.strip_ansi(raw)
                tail.append(line)
                self.log.info("[%s] %s", self.head, line)
                text = logparse.clean_line(line)
                # every line is looked at for a cause, not only the last 50 at the end: the
                # first strong cause stays (an OOM outranks an earlier NCCL error)
                c = logparse.cause_of_line(line)
                if c is not None and c["rank"] >= logparse.STRONG:
                    st["cause"] = logparse.better_cause(st.get("cause"), c)
                parsed = logparse.parse_line(text)
                if parsed and parsed[0] == "step":
                    st["loss"] = logparse.loss_of(parsed[2])
                elif parsed and parsed[0] == "eval":
                    # the training view's eval points (history on the head, via jobwatch)
                    evals = {k: json_safe(v) for k, v in parsed[2].items()
                             if isinstance(v, (int, float)) and not isinstance(v, bool)}
                    st.setdefault("new_points", []).append(
                        {"kind": "eval", "rollout": parsed[1], "metrics": evals})
                elif parsed and parsed[0] == "rollout":
                    rid, metrics = parsed[1], parsed[2]
                    t = line_time(text) or now_wall
                    if first is None:
                        first = (rid, t)
                    eta = None
                    if rid > first[0] and t > first[1]:
                        eta = (t - first[1]) / (rid - first[0]) * (self.total - rid - 1)
                    st.update(done=rid + 1, reward=logparse.reward_of(metrics), eta=eta,
                              last_progress_at=now_wall, seen=st.get("seen", 0) + 1)
                    st.setdefault("new_points", []).append(
                        {"kind": "rollout", "rollout": rid, "t": t,
                         "reward": json_safe(st["reward"]), "loss": json_safe(st.get("loss"))})
                    self.log.info("progress: %s", logparse.progress_line(
                        rid, self.total, st["reward"], st.get("loss"), eta))
            offset = res.get("offset", max(offset, 0))
            status = res.get("status")
            if "iteration" in res:
                self._iteration, self._polled = res.get("iteration"), True
            self._done = st.get("done")
            await self._check_deadline(status)
            to_write = self._progress(st, offset, status)
            # the points not yet written ride along; jobwatch appends them to the attempt's
            # history beside progress.json (the training view's curves)
            points += st.pop("new_points", [])
            to_write["points"], sent = list(points), len(points)
            if res.get("more"):
                continue  # more log than one read: drain it before judging
            common = {"iteration": res.get("iteration"), "rollouts_seen": st.get("seen", 0),
                      "progress": to_write}
            if status in TERMINAL:
                for line in map(logparse.strip_ansi, res.get("tail") or []):
                    if not tail or line not in tail:
                        tail.append(line)
                c = None
                if status not in ("SUCCEEDED", "STOPPED"):
                    c = logparse.failure_cause(list(tail), st.get("cause"))
                    if c["cause"] in ("Ray actor died", "node lost") and not c.get("ip"):
                        c = await self._locate_actor(node, c, tail)
                    # the final cause, weak ones too, for the run note and the training view
                    to_write["cause"] = {k: c.get(k) for k in ("cause", "fix", "line", "actor",
                                                                "pid", "ip")}
                await self._write_final(node, to_write)
                if status == "SUCCEEDED":
                    yield self._event("SUCCEEDED", None, None, tail, **common)
                elif status == "STOPPED":
                    note = resume_note(res.get("iteration"), st.get("done"), self.save_dir)
                    yield self._event("STOPPED", "cancelled", "the job was stopped (ray job "
                                      "stop); clear the task to resume from the latest "
                                      "checkpoint", tail, f"{note}; ", resume=note, **common)
                else:
                    detail = ""
                    if c.get("line"):
                        detail = f"first seen {self._where(c)}: {c['line'][:300]}; "
                    if c.get("death"):
                        detail += f"Ray says: {c['death'][:300]}; "
                    yield self._event("FAILED", c["cause"], c["fix"], tail, detail,
                                      where={k: c.get(k) for k in ("actor", "pid", "ip")},
                                      **common)
                return
            if status in ("NO_CLUSTER", "MISSING"):
                # NO_CLUSTER: neither the dashboard nor the GCS answers and no gcs_server runs
                # on the head (raystate.read_job); a dead dashboard alone is DASHBOARD_DOWN
                detail = ("neither Ray's dashboard nor its GCS answers on the head any more (the "
                          "node rebooted or Ray was stopped); " if status == "NO_CLUSTER" else
                          "Ray on the head no longer knows the job (Ray was restarted); ")
                yield self._event("LOST", "node lost", "check the head node, then clear the task: "
                                  "it starts Ray again and resumes from the latest checkpoint",
                                  list(tail) + [logparse.strip_ansi(x) for x in res.get("tail")
                                                or []], detail, **common)
                return
            if status in ("DASHBOARD_DOWN", "UNKNOWN"):
                # not a lost cluster: with DASHBOARD_DOWN the GCS still answers, so the job may
                # well run on (the job supervisor is an actor, not part of the dashboard), and
                # its driver log is still read above. Warn once per episode; the stall clock
                # below still ends a job whose rollout lines stop, and LOST comes once the GCS
                # is gone too.
                if ray_warned != status:
                    ray_warned = status
                    self.log.warning(
                        "[%s] %s; polling on (the job may still run: its log is still read, and "
                        "the stall timeout still applies)", self.head,
                        (res.get("status_text") or "").strip()[-300:] or
                        f"Ray gave no job state ({status})")
            elif ray_warned is not None:
                self.log.info("[%s] Ray's dashboard answers again: job %s is %s", self.head,
                              self.sub_id, status)
                ray_warned = None
            if status in ACTIVE or status == "DASHBOARD_DOWN":
                hang = await self._watch_gpus(node, st)
                if hang:
                    yield self._event(
                        "STALLED", "NCCL hang", "the job is stopped so that a retry resumes from "
                        "the latest checkpoint; if it hangs again on the same node, drain that "
                        "node and check its NICs and NVLink (NCCL_DEBUG=INFO names the stuck "
                        "collective)", tail, f"{hang}; "
                        f"{resume_note(res.get('iteration'), st.get('done'), self.save_dir)}; ",
                        **common)
                    return
                quiet = time.time() - float(st["last_progress_at"] or self.deferred_at)
                if quiet > self.stall_timeout:
                    yield self._event(
                        "STALLED", "stalled", "the job is stopped so that a retry resumes from "
                        "the latest checkpoint; look at the trainer on the head (a hung NCCL "
                        "collective, a stuck rollout engine) and raise stall_timeout_minutes if "
                        "rollouts are legitimately slower", tail,
                        f"no rollout line for {quiet:.0f} s (stall_timeout "
                        f"{self.stall_timeout:.0f} s); "
                        f"{resume_note(res.get('iteration'), st.get('done'), self.save_dir)}; ",
                        **common)
                    return
            await asyncio.sleep(self.poll_interval)

    async def _watch_gpus(self, head_node, st) -> str | None:
        """Every health_interval s: sample every node's GPUs at once, alert on new ECC errors,
        Xids and idle nodes, log a summary per node now and then. Returns the hang sentence
        once the NCCL-hang signature has outlasted hang_timeout, else None."""
        from slimeflow.utils.gpuwatch import IDLE_SAMPLES, GpuWatch

        now = time.time()
        if self._gpu_sampled_at is not None and now - self._gpu_sampled_at < self.health_interval:
            return None
        self._gpu_sampled_at = now
        if self._watch is None:
            self._watch = GpuWatch(self.nodes, self.hang_timeout, st.get("gpu"),
                                   idle_after=IDLE_SAMPLES * self.health_interval)
            for n, mark in self.xid_marks.items():
                if isinstance(mark, (int, float)):
                    self._watch.xid_after.setdefault(n, float(mark))
        script = posixpath.join(self.node_dir, "gpuhealth.py")

        async def sample(n):
            if n == self.head:
                conn = head_node
            else:
                conn = self._gpu_nodes.setdefault(n, AsyncNode(n, self.node_dir))
            argv = ["python3", script, "sample"]
            after = self._watch.xid_after.get(n)
            if after is not None:
                argv += ["--xid-after", str(after)]
            try:
                return n, await conn.run_json(argv, timeout=60)
            except RemoteError as e:
                return n, {"error": f"no sample: {e}"}
        samples = dict(await asyncio.gather(*(sample(n) for n in self.nodes)))
        got = self._watch.observe(samples, now, st.get("last_progress_at") or self.deferred_at)
        for text in got["alerts"] + got["idle"]:
            self.log.warning("GPU health: %s", text)
            await self._health_alert(text)
        changed = any((s.get("hang") or s.get("new_ecc") or s.get("new_xid"))
                      for s in self._watch.summary.values())
        if (self._gpu_logged_at is None or changed or got["idle"]
                or now - self._gpu_logged_at >= self.gpu_log_interval):
            self._gpu_logged_at = now
            for line in got["lines"]:
                self.log.info("%s", line)
        return got["hang"]

    async def _health_alert(self, text: str):
        try:
            from slimeflow.notifiers.callbacks import health_alert

            out = await asyncio.to_thread(
                health_alert, dag_id=self.run_ref.get("dag_id", ""),
                run_id=self.run_ref.get("run_id", ""), task_id="train",
                node=text.split(":", 1)[0].split("'", 1)[0], text=text, dedupe=False)
            if out.get("errors"):
                self.log.warning("GPU health alert: %s", "; ".join(out["errors"]))
        except Exception as e:  # a failed alert must never stop the supervision
            self.log.warning("GPU health alert could not be sent: %s", e)

    async def _beat_workers(self):
        """Refresh the workers' leases on the workers themselves, at most every interval."""
        from slimeflow.leases import heartbeat_interval

        workers = [n for n in self.nodes if n != self.head]
        lease_dir, run = _flag(self.watch_argv, "--lease-dir"), _flag(self.watch_argv,
                                                                       "--lease-run")
        if not (self.lease_stale and workers and lease_dir and run):
            return
        now = time.monotonic()
        if (self._worker_beat_at is not None
                and now - self._worker_beat_at < heartbeat_interval(self.lease_stale)):
            return
        self._worker_beat_at = now
        script = posixpath.join(self.node_dir, "lease.py")

        async def beat(n):
            node = AsyncNode(n, self.node_dir)
            try:
                await node.run_json(["python3", script, "heartbeat", "--dir", lease_dir,
                                     "--node", n, "--run", run, "--job", self.sub_id],
                                    timeout=30)
            except Exception as e:  # the next interval tries again; the job is not affected
                self.log.warning("[%s] lease heartbeat failed: %s", n, e)
            finally:
                node.close()
        await asyncio.gather(*(beat(n) for n in workers))

    async def _write_final(self, node, progress):
        try:
            await node.run_json(self.watch_argv + ["--offset", "0", "--max-bytes", "0",
                                                   "--write-progress", json.dumps(progress)],
                                timeout=60)
        except RemoteError as e:
            self.log.warning("[%s] could not write the final progress: %s", self.head, e)

    # -- cancel / restart -------------------------------------------------------------------

    async def cleanup(self) -> None:
        """Every exit, triggerer restarts included: close the connections, leave the job alone."""
        if self._node is not None:
            self._node.close()
        for n in self._gpu_nodes.values():
            n.close()
        self._gpu_nodes = {}

    async def on_kill(self) -> None:
        """A user acted on the deferred task: ask Ray to stop the job, then `ray stop` on every
        node at once.

        `ray job stop` gets --no-wait: slime's driver exits at SIGTERM without waiting for a
        checkpoint save (SLIME_FACTS.md), so waiting for it here would only take time from
        `ray stop`, which needs up to ~22 s for real (16 s grace plus its stages) and gets
        RAY_STOP_TIMEOUT_S. Airflow cancels on_kill after [triggerer] on_kill_timeout (30 s by
        default; docs/supervision.md says to raise it); teardown runs `ray stop` again either
        way and fails loudly if it does not work."""
        from slimeflow.builders import RAY_STOP_TIMEOUT_S

        self.log.warning("[%s] task killed by a user: stopping Ray job %s, then Ray on %s",
                         self.head, self.sub_id, ", ".join(self.nodes))
        stop_argv = list(self.stop_argv)
        if "--no-wait" not in stop_argv:
            stop_argv.append("--no-wait")
        head = AsyncNode(self.head, self.node_dir)
        try:
            rc, out, err = await head.run(stop_argv, env=self.stop_env, cwd=self.cwd,
                                          timeout=JOB_STOP_NO_WAIT_TIMEOUT_S)
            self.log.info("[%s] ray job stop %s: exit %s %s", self.head, self.sub_id, rc,
                          (out + err).strip().splitlines()[-1:] or "")
        except Exception as e:
            self.log.warning("[%s] ray job stop failed: %s", self.head, e)
        finally:
            head.close()

        async def stop(n):
            node = AsyncNode(n, self.node_dir)
            try:
                rc, out, err = await node.run(self.ray_stop_argv, cwd=self.cwd,
                                              timeout=RAY_STOP_TIMEOUT_S)
                self.log.info("[%s] ray stop: exit %s", n, rc)
            except Exception as e:
                self.log.warning("[%s] ray stop failed: %s", n, e)
            finally:
                node.close()
        # what the cancel loses, read while Ray stops (it does not delay the stop)
        await asyncio.gather(self._log_resume_point(), *(stop(n) for n in self.nodes))

    async def _log_resume_point(self):
        """Log which checkpoint a resume starts from: read latest_checkpointed_iteration.txt
        now (the job may have saved since the last poll), else use the last poll's answer."""
        it, known = self._iteration, self._polled
        if self.save_dir:
            node = AsyncNode(self.head, self.node_dir)
            try:
                res = await node.run_json(
                    ["python3", posixpath.join(self.node_dir, "fsops.py"), "latest-checkpoint",
                     "--dir", self.save_dir], timeout=15)
                it, known = res.get("iteration"), True
            except Exception as e:
                self.log.warning("[%s] could not read the latest checkpoint: %s", self.head, e)
            finally:
                node.close()
        self.log.warning("[%s] job %s cancelled: %s", self.head, self.sub_id,
                         resume_note(it, self._done, self.save_dir, known=known))


def _flag(argv, name):
    """The value after `name` in argv (the save dir in jobwatch's argv), else None."""
    argv = list(argv or [])
    for i, a in enumerate(argv[:-1]):
        if a == name:
            return argv[i + 1]
    return None
