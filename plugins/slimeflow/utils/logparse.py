"""Read slime's log lines: progress for humans, and a cause when the job dies.

slime's lines reach the job driver log through Ray, which decorates them (Ray 2.60, seen on a
real cluster; SLIME_FACTS.md "Real Ray 2.60, as it behaves"):

    \x1b[36m(MegatronTrainRayActor pid=404, ip=10.0.0.2)\x1b[0m [2026-12-01 19:53:44] train.py:10 - rollout 0: {...}
    ... rollout 1: {...}\x1b[32m [repeated 3x across cluster] (Ray deduplicates logs by default. ...)\x1b[0m

`clean_line` takes that back to slime's own line before anything is parsed.
"""
from __future__ import annotations

import ast
import math
import re

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# Ray's prefix for output forwarded from a worker (ray/_private/worker.py print_worker_logs):
# "(Name pid=N)", "(pid=N)", with ", ip=X" when the worker is on another node; "(raylet)" and
# "(autoscaler +1s)" for Ray's own messages.
_RAY_PREFIX = re.compile(r"^\((?:[^()]*\bpid=[^,()\s]+|raylet|autoscaler[^()]*)(?:, ip=[^()\s]+)?\) ?")
# LogDeduplicator.formatted(): " [repeated Nx across cluster]", the first time followed by an
# explanation in parentheses.
_DEDUP = re.compile(r"\s*\[repeated \d+x across cluster\](?: \(Ray deduplicates logs by default\."
                    r"[^\n]*\))?\s*$")

_PREFIX = r"^(?:\[(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\] \S+:\d+ - )?"
_ROLLOUT = re.compile(_PREFIX + r"rollout (?P<id>\d+): (?P<d>\{.*\})\s*$")
_STEP = re.compile(_PREFIX + r"step (?P<id>\d+): (?P<d>\{.*\})\s*$")

CAUSES = [
    # (cause, pattern, one-line fix)
    ("OOM", re.compile(r"OutOfMemoryError|CUDA out of memory|CUBLAS_STATUS_ALLOC_FAILED"),
     "set grad_reduce_in_bf16=true (drops --accumulate-allreduce-grads-in-fp32) or lower "
     "--max-tokens-per-gpu through extra_train_args"),
    ("NCCL", re.compile(r"NCCL error|DistBackendError|ncclInternalError|NCCL WARN|ncclSystemError"),
     "check the nodes' interconnect and socket_ifname; try nccl_nvls=0"),
    ("Ray actor died", re.compile(r"ActorDiedError|RayActorError|The actor died|ActorUnavailable"),
     "look at the dead actor's log on the node for the first error (often OOM or a node loss)"),
    ("Python exception", re.compile(r"^Traceback \(most recent call last\)|^\w+(Error|Exception): "),
     "read the traceback above; it is a bug or a bad argument in the job"),
]


def strip_ansi(line: str) -> str:
    """The line without terminal colour codes (what the task log shows)."""
    return _ANSI.sub("", line)


def clean_line(line: str) -> str:
    """slime's own line: no colour codes, no Ray worker prefix, no dedup suffix."""
    text = _ANSI.sub("", line).rstrip("\r\n")
    text = _RAY_PREFIX.sub("", text, count=1)
    return _DEDUP.sub("", text)


# Python's repr of float metrics: nan, inf, -inf (ast.literal_eval refuses these names); numpy 2
# scalars print as np.float64(0.5).
_NAMES = {"nan": math.nan, "inf": math.inf, "NaN": math.nan, "Infinity": math.inf}
_SCALARS = {"float", "int", "float16", "float32", "float64", "int32", "int64", "bfloat16"}
_MAX_DICT_CHARS = 200_000


def _value(node):
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name) and node.id in _NAMES:
        return _NAMES[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _value(node.operand)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.Dict):
        return {_value(k): _value(v) for k, v in zip(node.keys, node.values) if k is not None}
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_value(e) for e in node.elts]
    if isinstance(node, ast.Call) and len(node.args) == 1 and not node.keywords:
        name = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
        if name in _SCALARS:
            v = _value(node.args[0])
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return v
    raise ValueError(f"not a literal: {type(node).__name__}")


def _dict(text):
    """The metrics dict of a progress line; {} when it is not one. Only literals are read,
    nothing is evaluated."""
    if len(text) > _MAX_DICT_CHARS:
        return {}
    try:
        d = _value(ast.parse(text, mode="eval").body)
    except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError):
        return {}
    return d if isinstance(d, dict) else {}


def parse_line(line: str):
    """('rollout'|'step', id, metrics) for progress lines, else None. Takes the line as Ray
    wrote it (prefix, colours, dedup suffix) or already clean."""
    line = clean_line(line)
    for kind, rx in (("rollout", _ROLLOUT), ("step", _STEP)):
        m = rx.match(line)
        if m:
            return kind, int(m.group("id")), _dict(m.group("d"))
    return None


def _first(d: dict, *keys):
    for k in keys:
        if k in d:
            return d[k]
    for k, v in d.items():
        if any(k.endswith(s) for s in keys):
            return v
    return None


def format_eta(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return "?"
    h, rem = divmod(int(seconds), 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


def progress_line(rollout_id: int, total: int, reward, loss, eta_s) -> str:
    done = rollout_id + 1
    pct = 100.0 * done / total if total else 0.0
    r = f"{reward:.3g}" if isinstance(reward, (int, float)) else "?"
    l = f"{loss:.3g}" if isinstance(loss, (int, float)) else "?"
    return f"rollout {done}/{total} ({pct:.1f}%) reward {r} loss {l} ETA {format_eta(eta_s)}"


def reward_of(metrics: dict):
    return _first(metrics, "rollout/raw_reward", "raw_reward", "rollout/rewards")


def loss_of(metrics: dict):
    return _first(metrics, "train/loss", "loss", "train/pg_loss")


def classify(lines: list) -> tuple:
    """(cause, fix) from the last log lines of a failed job (raw or clean: Ray's prefix would
    hide `Traceback` from the `^` patterns)."""
    lines = [clean_line(l) for l in lines]
    for cause, rx, fix in CAUSES:
        if any(rx.search(l) for l in lines):
            return cause, fix
    return "unknown", "read the last log lines below"
