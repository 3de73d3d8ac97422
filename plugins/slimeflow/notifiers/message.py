"""Alert content: what failed, where, why, what to do next. Pure functions, no Airflow needed.

`build_alert(...)` turns a failed task's facts (ids, try, exception, log lines, params) into an
`Alert`; `Alert.text()`, `.html()` and `.title()` render it for Slack, e-mail and Apprise.
"""
from __future__ import annotations

import hashlib
import html
import re
import traceback
from dataclasses import dataclass, field

from slimeflow.utils import logparse

MAX_LINES = 30
MAX_LINE_CHARS = 400

SEVERITY = {"failure": "FAILED", "retry": "will retry", "deadline": "overdue",
            "health": "GPU health warning"}
EMOJI = {"failure": ":red_circle:", "retry": ":large_orange_circle:", "deadline": ":hourglass:",
         "health": ":warning:"}

# the stage a task belongs to, when nothing more specific is known
STAGE = {
    "validate_params": "bad params", "preflight": "preflight", "check_cluster": "preflight",
    "download_model": "download", "download_datasets": "download",
    "check_model_config": "download", "decide_patch": "patch", "patch_fla": "patch",
    "convert": "convert", "train": "training", "teardown": "teardown",
}

FIXES = {
    # GPU memory and host RAM are different failures with different fixes (logparse.CAUSES);
    # "OOM" is what messages from before that split say
    "CUDA OOM": logparse.FIX_CUDA_OOM + ", then clear the task",
    "host OOM": logparse.FIX_HOST_OOM + "; then clear the task",
    "OOM": "set grad_reduce_in_bf16=true (drops --accumulate-allreduce-grads-in-fp32) or lower "
           "--max-tokens-per-gpu through extra_train_args, then clear the task",
    "NCCL": "check the nodes' interconnect and socket_ifname; try nccl_nvls=0",
    "stalled": "look at the job log on the head for a hang (NCCL, a dead rollout engine); "
               "clear the task to resume from the latest checkpoint",
    "cancelled": "the task or job was stopped on purpose; clear the task to resume",
    "node lost": "check that the node is up and reachable over SSH (host key, network), then "
                 "clear the task; train reattaches to its job or resumes from the checkpoint",
    "timeout": "the step ran past its execution_timeout; raise it or look for a hang",
    "disk": "free space at base_folder or choose a base_folder on a larger volume",
    "bad params": "fix the named param in the trigger form and trigger again",
    "preflight": "fix the node as the message says, then clear the task",
    "download": "check the repo id, revision, HF token (connection slimeflow_hf) and "
                "hf_endpoint; clear the task to fetch only what is missing",
    "patch": "check the fla install on the node (include/patches); clear the task",
    "convert": "check the model args against config.json and the converter log; clear the "
               "task (a half-written output is moved aside)",
    "training": "read the job log lines below; clear the task to resume from the checkpoint",
    "Ray actor died": "look at the dead actor's log on the node for the first error (often OOM "
                      "or a node loss)",
    "deadline": "the run is taking longer than the recipe's expected_hours; check progress in "
                "the train log, or raise expected_hours",
    "teardown": "log in to the node and run `ray stop` before the next run",
}

_NODE_LOST = re.compile(
    r"node lost|vanished|unreachable|No route to host|Connection refused|Connection reset|"
    r"NoValidConnectionsError|Unable to connect|SSHException|Error reading SSH protocol banner|"
    r"timed out while connecting|could not be reached", re.I)
_STALLED = re.compile(r"\bstall(ed)?\b|no rollout line|no progress for", re.I)
_CANCELLED = re.compile(r"cancelled|canceled|was stopped|received SIGTERM|Task received "
                        r"SIGTERM|marked as (failed|success) externally|ended STOPPED", re.I)
_DISK = re.compile(r"No space left on device|GB free at|not enough disk|disk is full", re.I)
_EXPLICIT = re.compile(r"\bcause:? (?P<cause>[A-Za-z][A-Za-z ]{1,30}?)[;,.] ?(?:fix: "
                       r"(?P<fix>[^\n]+?))?(?:\. Last \d+ log lines|\n|$)")
# the trigger puts a detail between the two ("cause NCCL; first seen on node gpu1 ...; fix: ..."),
# which _EXPLICIT (cause directly followed by fix) does not match
_CAUSE_ONLY = re.compile(r"\bended [A-Z_]+: cause (?P<cause>[A-Za-z][A-Za-z ]{1,30}?);")
_FIX = re.compile(r"; fix: (?P<fix>[^\n]+?)(?:\. Last \d+ log lines|\n|$)")
# the trigger's failure message names where the cause was first seen ("first seen on node gpu1
# in MegatronTrainRayActor (pid 814): ..."): that node, not the head the job ran from
_CAUSE_NODE = re.compile(r"\bfirst seen on node (?P<node>[A-Za-z0-9_][A-Za-z0-9_.-]{0,249}?)"
                         r"[ ,:;)]")
_NODE = re.compile(r"\bnodes? (?P<node>[A-Za-z0-9_][A-Za-z0-9_.-]{0,249}?)[ ,:;)]")
_NOISE = re.compile(r"^::(end)?group::|^Task instance is in running state|^Executing <Task|"
                    r"^Dependencies all met|^Current task name|^Exporting env vars|"
                    r"^Filling up the DagBag|^Loaded dag|^Rendering template|^Tmp dir root")


@dataclass
class Alert:
    severity: str            # failure | retry | deadline | health
    dag_id: str
    run_id: str
    task_id: str | None
    map_index: int
    try_number: int | None
    max_tries: int | None
    node: str | None
    cause: str
    fix: str
    summary: str             # one line: what happened
    lines: list = field(default_factory=list)
    log_url: str | None = None

    @property
    def task_label(self) -> str:
        if not self.task_id:
            return "(whole run)"
        return self.task_id + (f"[{self.map_index}]" if self.map_index is not None
                               and self.map_index >= 0 else "")

    def title(self) -> str:
        what = SEVERITY.get(self.severity, self.severity)
        return f"[slimeflow] {self.dag_id} {self.task_label} {what}: {self.cause}"

    def facts(self) -> list:
        tries = (f"{self.try_number}" + (f" of {self.max_tries}" if self.max_tries else "")
                 if self.try_number else "-")
        return [("DAG", self.dag_id), ("Run", self.run_id), ("Task", self.task_label),
                ("Node", self.node or "-"), ("Try", tries), ("Cause", self.cause),
                ("Fix", self.fix)]

    def text(self) -> str:
        """Plain text with Slack mrkdwn (also fine for Apprise)."""
        out = [f"{EMOJI.get(self.severity, '')} *{self.title()}*".strip(), self.summary]
        out += [f"*{k}*: {v}" for k, v in self.facts()]
        if self.log_url:
            out.append(f"*Log*: <{self.log_url}|task log in Airflow>")
        if self.lines:
            body = "\n".join(self.lines).replace("```", "'''")
            out.append(f"Last {len(self.lines)} log lines:\n```\n{body}\n```")
        return "\n".join(out)

    def plain(self) -> str:
        out = [self.title(), self.summary] + [f"{k}: {v}" for k, v in self.facts()]
        if self.log_url:
            out.append(f"Log: {self.log_url}")
        if self.lines:
            out.append(f"Last {len(self.lines)} log lines:")
            out += self.lines
        return "\n".join(out)

    def html(self) -> str:
        e = html.escape
        rows = "".join(f"<tr><th align='left'>{e(k)}</th><td>{e(str(v))}</td></tr>"
                       for k, v in self.facts())
        link = (f"<p><a href=\"{e(self.log_url)}\">Task log in Airflow</a></p>"
                if self.log_url else "")
        lines = (f"<p>Last {len(self.lines)} log lines:</p><pre>{e(chr(10).join(self.lines))}"
                 f"</pre>" if self.lines else "")
        return (f"<h3>{e(self.title())}</h3><p>{e(self.summary)}</p><table>{rows}</table>"
                f"{link}{lines}")

    def dedupe_key(self, signature: str) -> str:
        raw = "\x1f".join(str(x) for x in (self.severity, self.dag_id, self.run_id, self.task_id,
                                           self.map_index, self.cause, signature))
        return hashlib.sha256(raw.encode()).hexdigest()[:24]


def _clip(line: str) -> str:
    line = line.rstrip()
    return line if len(line) <= MAX_LINE_CHARS else line[:MAX_LINE_CHARS - 3] + "..."


def tail_lines(*sources, limit: int = MAX_LINES) -> list:
    """The last `limit` meaningful lines over the sources (each a list of str), in order."""
    seen, out = set(), []
    for src in sources:
        for line in src or ():
            line = _clip(str(line))
            if not line.strip() or _NOISE.search(line) or line in seen:
                continue
            seen.add(line)
            out.append(line)
    return out[-limit:]


def exception_lines(exc) -> list:
    """The exception's message lines, then the innermost frames of its traceback."""
    if exc is None:
        return []
    if isinstance(exc, str):
        return exc.splitlines()
    msg = f"{type(exc).__name__}: {exc}".splitlines()
    tb = []
    if getattr(exc, "__traceback__", None) is not None:
        tb = "".join(traceback.format_tb(exc.__traceback__)[-3:]).splitlines()
    return tb + msg


def signature(exc, summary: str) -> str:
    """Stable across retries of the same failure: type + first line with numbers erased."""
    name = type(exc).__name__ if exc is not None and not isinstance(exc, str) else ""
    first = summary.splitlines()[0] if summary else ""
    first = re.sub(r"0x[0-9a-f]+|\d+", "#", first)
    return hashlib.sha256(f"{name}|{first}".encode()).hexdigest()[:16]


def classify(task_id: str | None, exc, lines: list) -> tuple:
    """(cause, fix) from the task, the exception and the log lines."""
    text = "\n".join(lines)
    exc_name = type(exc).__name__ if exc is not None and not isinstance(exc, str) else ""
    msg = str(exc) if exc is not None else ""
    m = _EXPLICIT.search(msg)
    if m:  # the operator classified it already ("... cause OOM; fix: ...")
        cause = m.group("cause").strip()
        return cause, (m.group("fix") or FIXES.get(cause) or "").strip().rstrip(".")
    m = _CAUSE_ONLY.search(msg)
    if m:
        cause = m.group("cause").strip()
        f = _FIX.search(msg, m.end())
        return cause, ((f.group("fix") if f else None) or FIXES.get(cause) or "").strip(
        ).rstrip(".")
    if exc_name in ("AirflowTaskTimeout", "TimeoutError") and "ssh" not in msg.lower():
        return "timeout", FIXES["timeout"]
    if exc_name in ("AirflowTaskTerminated",) or _CANCELLED.search(msg):
        return "cancelled", FIXES["cancelled"]
    cause, fix = logparse.classify(lines)
    if cause in ("CUDA OOM", "host OOM", "NCCL", "Ray actor died"):
        return cause, FIXES.get(cause, fix)
    if _STALLED.search(msg):
        return "stalled", FIXES["stalled"]
    if _NODE_LOST.search(msg) or exc_name in ("NoValidConnectionsError", "SSHException",
                                              "ChannelException", "ConnectionLost"):
        return "node lost", FIXES["node lost"]
    stage = STAGE.get(task_id or "", "unknown")
    if _DISK.search(msg) or _DISK.search(text):
        stage = "disk" if stage in ("unknown", "training") else stage
        return stage, _fix_from_message(msg) or FIXES["disk"]
    return stage, _fix_from_message(msg) or FIXES.get(stage, "read the log lines below")


def _fix_from_message(msg: str) -> str | None:
    """slimeflow's errors are one sentence ending in '; <what to do>.': take that clause."""
    first = msg.strip().splitlines()[0] if msg.strip() else ""
    if "; " in first:
        tail = first.rsplit("; ", 1)[1].strip().rstrip(".")
        if 8 <= len(tail) <= 300:
            return tail
    return None


def find_node(task_node, params: dict, msg: str) -> str | None:
    if task_node:
        return str(task_node)
    nodes = list((params or {}).get("nodes") or [])
    m = _CAUSE_NODE.search(msg or "")
    if m and (not nodes or m.group("node") in nodes):
        return m.group("node")
    m = _NODE.search(msg or "")
    if m and (not nodes or m.group("node") in nodes):
        return m.group("node")
    if nodes:
        return f"{nodes[0]} (head)"
    return None


def build_alert(*, severity: str, dag_id: str, run_id: str, task_id: str | None,
                map_index: int = -1, try_number: int | None = None,
                max_tries: int | None = None, exception=None, log_lines=(), params=None,
                task_node=None, log_url: str | None = None, summary: str | None = None,
                cause: str | None = None, fix: str | None = None) -> tuple:
    """(Alert, signature)."""
    exc_lines = exception_lines(exception)
    lines = tail_lines(log_lines, exc_lines)
    if cause is None:
        cause, fix2 = classify(task_id, exception, lines)
        fix = fix or fix2
    fix = fix or FIXES.get(cause, "read the log lines below")
    if summary is None:
        msg = str(exception).strip() if exception is not None else ""
        first = msg.splitlines()[0] if msg else "the task failed without an exception message"
        summary = _clip(first)
    alert = Alert(severity=severity, dag_id=dag_id, run_id=run_id, task_id=task_id,
                  map_index=map_index if map_index is not None else -1,
                  try_number=try_number, max_tries=max_tries,
                  node=find_node(task_node, params or {}, str(exception or "")),
                  cause=cause, fix=fix, summary=summary, lines=lines, log_url=log_url)
    return alert, signature(exception, summary)
