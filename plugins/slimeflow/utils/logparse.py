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
# slime's RolloutManager after an evaluation: "eval 179: {'eval/aime': 0.4671, ...}"
_EVAL = re.compile(_PREFIX + r"eval (?P<id>\d+): (?P<d>\{.*\})\s*$")

# Host RAM vs GPU memory: two different failures with different fixes.
# - Ray's memory monitor (raylet) kills workers when the NODE runs low on RAM; the caller gets
#   ray.exceptions.OutOfMemoryError. Ray 2.60's raylet texts (strings of the raylet binary):
#   "%d worker(s) were killed due to the node running low on memory.", "Memory on the node (IP:
#   %s, ID: %s) was %sGB used / %sGB limit", "Workers (tasks / actors) killed due to memory
#   pressure (OOM)", "To adjust the kill threshold, set ... RAY_memory_usage_threshold"; older
#   Ray: "Task was killed due to the node running low on memory". slime's CPU-offloaded optimizer
#   is the usual culprit (slime issue #1851: ~100 GB host RAM per actor for 30B-A3B).
# - CUDA OOM is torch's: torch.OutOfMemoryError / torch.cuda.OutOfMemoryError "CUDA out of
#   memory", or cuBLAS failing to allocate.
# A bare "OutOfMemoryError" says neither, so it is not matched here (it falls to "Python
# exception" unless one of the texts above is in the log too).
HOST_OOM = re.compile(r"ray\.exceptions\.OutOfMemoryError|running low on memory|"
                      r"killed due to memory pressure|Memory on the node \(IP: |"
                      r"RAY_memory_usage_threshold")
CUDA_OOM = re.compile(r"torch\.(?:cuda\.)?OutOfMemoryError|CUDA out of memory|"
                      r"CUDA error: out of memory|CUBLAS_STATUS_ALLOC_FAILED")
NCCL = re.compile(r"NCCL error|DistBackendError|ncclInternalError|NCCL WARN|ncclSystemError|"
                  r"ncclUnhandledCudaError|ncclRemoteError")
# Ray 2.60 (gcs_actor_manager / exceptions.py) when an actor's machine or raylet is gone
NODE_DIED = re.compile(r"The actor died because its node has died|"
                       r"the actor's node was terminated unexpectedly")
ACTOR_DIED = re.compile(r"ActorDiedError|RayActorError|The actor died|ActorUnavailable")
PY_EXC = re.compile(r"^Traceback \(most recent call last\)|^\w+(Error|Exception): ")

FIX_HOST_OOM = ("the node ran out of host RAM and Ray's memory monitor killed a worker; GPU "
                "settings such as --max-tokens-per-gpu do not help here. Run fewer processes "
                "per node (fewer rollout engines or training actors per node), drop "
                "--optimizer-cpu-offload/--overlap-cpu-optimizer-d2h-h2d through "
                "extra_train_args if GPU memory allows (the offloaded optimizer needs about 100 "
                "GB of host RAM per actor for 30B-A3B, slime issue #1851), or add host RAM; "
                "check `free -g` and dmesg on that node")
FIX_CUDA_OOM = ("set grad_reduce_in_bf16=true (drops --accumulate-allreduce-grads-in-fp32) or "
                "lower --max-tokens-per-gpu through extra_train_args")

CAUSES = [
    # (cause, pattern, one-line fix, rank): rank orders the STRONG causes (rank >= 2). An OOM
    # outranks an NCCL error: one rank's OOM tears down the communicator, so its peers print
    # NCCL errors too (often before the OOM'd rank's text reaches the driver log); an NCCL
    # error never causes an OOM. Weak causes (rank < 2) are consequences: every failure ends in
    # an ActorDiedError or a driver traceback, so they only count when nothing strong was seen
    # (and a dead actor says more than the driver's traceback that reports it).
    ("host OOM", HOST_OOM, FIX_HOST_OOM, 3),
    ("CUDA OOM", CUDA_OOM, FIX_CUDA_OOM, 3),
    # a dead node takes its actors' NCCL peers down with it: it outranks their NCCL errors
    ("node lost", NODE_DIED, "the node named above left the Ray cluster while the job ran "
     "(power, network or raylet failure): check it, or remove it from `nodes`, then clear the "
     "task; slime resumes from the latest checkpoint", 3),
    ("NCCL", NCCL, "check the nodes' interconnect and socket_ifname; try nccl_nvls=0", 2),
    ("Ray actor died", ACTOR_DIED,
     "look at the dead actor's log on the node for the first error (often OOM or a node loss)",
     1),
    ("Python exception", PY_EXC,
     "read the traceback above; it is a bug or a bad argument in the job", 0),
]
FIXES = {c[0]: c[2] for c in CAUSES}
STRONG = 2  # rank from which a cause is kept across polls and beats the last lines

# Ray's prefix, read for WHO printed a line: "(MegatronTrainRayActor pid=814, ip=10.231.0.12)";
# without ", ip=" the worker runs on the driver's node, the head (worker.py print_worker_logs).
_WHO = re.compile(r"^\((?:(?P<actor>[A-Za-z_][\w.]*) )?pid=(?P<pid>\d+)(?:, ip=(?P<ip>[^()\s]+))?\)")
# ActorDiedError (Ray 2.60 exceptions.py): "The actor died unexpectedly before finishing this
# task." then tab-indented "class_name: X", "actor_id: ...", "pid: N", "name: ...",
# "namespace: ...", "ip: A.B.C.D", then the reason (e.g. the memory monitor's text).
_DIED_FIELD = re.compile(r"^\s*(?P<k>class_name|pid|ip): (?P<v>\S+)\s*$")
_MEM_NODE_IP = re.compile(r"Memory on the node \(IP: (?P<ip>[^,\s]+)")


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
    """('rollout'|'step'|'eval', id, metrics) for progress lines, else None. Takes the line as
    Ray wrote it (prefix, colours, dedup suffix) or already clean."""
    line = clean_line(line)
    for kind, rx in (("rollout", _ROLLOUT), ("step", _STEP), ("eval", _EVAL)):
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


def cause_of_line(line: str):
    """The cause marker a line carries: {"cause", "fix", "rank", "line", "actor", "pid", "ip",
    "remote"} or None. `actor`/`pid`/`ip` come from Ray's prefix; "remote" is False when the
    prefix had no ip (the head)."""
    raw = _ANSI.sub("", line).rstrip("\r\n")
    text = clean_line(raw)
    for cause, rx, fix, rank in CAUSES:
        if rx.search(text):
            out = {"cause": cause, "fix": fix, "rank": rank, "line": text[:400],
                   "actor": None, "pid": None, "ip": None, "remote": None}
            m = _WHO.match(raw)
            if m:
                out.update(actor=m.group("actor"), pid=int(m.group("pid")), ip=m.group("ip"),
                           remote=m.group("ip") is not None)
            m = _MEM_NODE_IP.search(text)
            if m:  # the memory monitor names the node it killed on
                out.update(ip=m.group("ip"), remote=None)
            return out
    return None


def better_cause(current, new):
    """The cause to keep: the first strong one seen, unless a later one outranks it (an OOM
    after an NCCL error); a weak one only while nothing strong was seen."""
    if new is None:
        return current
    if current is None:
        return new
    if new["rank"] > current["rank"]:
        return new
    return current


def actor_died_details(lines: list) -> dict:
    """{"actor", "pid", "ip"} from the last ActorDiedError text in the lines (its fields are on
    the lines after "The actor died unexpectedly"), else {}."""
    lines = [clean_line(l) for l in lines]
    start = None
    for i, l in enumerate(lines):
        # the header, not the reason lines after the fields ("The actor died because its
        # node has died")
        if "The actor died unexpectedly" in l or "ActorDiedError:" in l:
            start = i
    if start is None:
        return {}
    got = {}
    for l in lines[start + 1:start + 12]:
        m = _DIED_FIELD.match(l)
        if m:
            k = {"class_name": "actor"}.get(m.group("k"), m.group("k"))
            got.setdefault(k, int(m.group("v")) if k == "pid" and m.group("v").isdigit()
                           else m.group("v"))
        m = _MEM_NODE_IP.search(l)
        if m:
            got.setdefault("ip", m.group("ip"))
    return got


# How a driver names an actor it lost: "ActorUnavailableError: The actor 5c27.. is unavailable"
# (Ray 2.60, when the actor's node died), or the "actor_id: 5c27.." field of an ActorDiedError.
_ACTOR_ID = re.compile(r"(?:\b[Tt]he actor |\bactor_id: ?)([0-9a-f]{16,})\b")


def actor_id_in(lines: list):
    """The id of the last actor the lines name, else None."""
    found = None
    for line in lines:
        for m in _ACTOR_ID.finditer(line or ""):
            found = m.group(1)
    return found


def failure_cause(lines: list, seen=None) -> dict:
    """The cause of a failed job: `seen` (the strongest cause the trigger met over the whole
    stream, kept across polls) when it is strong, else the best in `lines` (the last log lines);
    the ActorDiedError's class_name/ip fill in who and where when the marker line had no Ray
    prefix (the driver prints it)."""
    best = seen if seen and seen.get("rank", 0) >= STRONG else None
    for l in lines:
        best = better_cause(best, cause_of_line(l))
    if best is None:
        return {"cause": "unknown", "fix": "read the last log lines below", "rank": -1,
                "line": None, "actor": None, "pid": None, "ip": None, "remote": None}
    best = dict(best)
    died = actor_died_details(lines)
    if died and (best["cause"] in ("Ray actor died", "host OOM", "node lost")
                 or not best.get("actor")):
        if not best.get("actor"):
            best["actor"] = died.get("actor")
            best["pid"] = died.get("pid", best.get("pid"))
        if died.get("ip") and not best.get("ip"):
            best["ip"] = died["ip"]
            best["remote"] = None
    return best


def classify(lines: list) -> tuple:
    """(cause, fix) from the last log lines of a failed job (raw or clean: Ray's prefix would
    hide `Traceback` from the `^` patterns)."""
    c = failure_cause(lines)
    return c["cause"], c["fix"]
