"""Read slime's log lines: progress for humans, and a cause when the job dies."""
from __future__ import annotations

import ast
import re

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


def _dict(text):
    try:
        d = ast.literal_eval(text)
        return d if isinstance(d, dict) else {}
    except (ValueError, SyntaxError):
        return {}


def parse_line(line: str):
    """('rollout'|'step', id, metrics) for progress lines, else None."""
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
    """(cause, fix) from the last log lines of a failed job."""
    for cause, rx, fix in CAUSES:
        if any(rx.search(l) for l in lines):
            return cause, fix
    return "unknown", "read the last log lines below"
