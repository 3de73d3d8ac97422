"""Fault injection for the simulated cluster (stdlib only).

Every fault acts only on processes that carry this cluster's tag (SIMCLUSTER_DIR=DIR plus
SIMCLUSTER_NODE, see :func:`tests.simcluster.cluster.procs_of`) or on pids recorded in DIR.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

from tests.simcluster.cluster import (FAULTS, FILL_NAME, FOREIGN_ARG, SimClusterError, _signal, _wait_dead,
                                      _wait_port, _write_json, procs_of)

PY_RE = re.compile(r"^python[0-9.]*$")


def _is_trainer(cmdline: list[str]) -> bool:
    """`python3 [opts] .../train.py ...`: the interpreter running slime's train.py (not a `ray job
    submit -- python3 train.py` client nor a shell wrapper whose argv merely mentions it)."""
    if not cmdline or not PY_RE.match(os.path.basename(cmdline[0])):
        return False
    args = cmdline[1:]
    j = 0
    while j < len(args) and args[j].startswith("-"):
        j += 2 if args[j] in ("-X", "-W") else 1
    return j < len(args) and os.path.basename(args[j]) == "train.py"


def trainers(cluster, node: int | None = None):
    return [p for p in procs_of(cluster.dir, node) if _is_trainer(p.cmdline)]


def _node(cluster, node, default=0) -> int:
    i = default if node is None else int(node)
    if not 0 <= i < len(cluster.nodes):
        raise SimClusterError(f"node {i} does not exist (the cluster has {len(cluster.nodes)})")
    return i


def inject(cluster, kind: str, node: int | None = None, path: str | None = None, **kw) -> dict:
    if kind not in FAULTS:
        raise SimClusterError(f"unknown fault {kind!r}; one of: {', '.join(FAULTS)}")
    fn = globals()["_" + kind.replace("-", "_")]
    return fn(cluster, node=node, path=path, **kw)


def _drop_ssh(cluster, node=None, **_):
    """Kill the per-connection sshd processes (not the listener): sessions drop like a network
    cut; commands they started keep running."""
    i = _node(cluster, node)
    victims = [p.pid for p in procs_of(cluster.dir, i) if p.role == "sshd-session"]
    _signal(victims, signal.SIGKILL)
    _wait_dead(victims, 2)
    return {"fault": "drop-ssh", "node": i, "killed": victims}


def _restart_sshd(cluster, node=None, **_):
    """Stop and start node i's sshd: same port, host key, config and mount namespace. Also brings
    a vanished node back (a reboot)."""
    i = _node(cluster, node)
    cluster.stop_sshd(i)
    cluster.start_sshd(i)
    return {"fault": "restart-sshd", "node": i, "pid": cluster.listener_pid(i)}


def _vanish_head(cluster, node=None, **_):
    """The machine is gone: SIGKILL everything of node i (sshd, sessions, Ray stand-in daemons,
    jobs, trainers) and wipe its Ray state (RAY_TMPDIR). `restart-sshd` brings it back empty."""
    i = _node(cluster, node)
    killed = []
    for _round in range(3):
        pids = [p.pid for p in procs_of(cluster.dir, i)]
        if not pids:
            break
        _signal(pids, signal.SIGKILL)
        _wait_dead(pids, 2)
        killed += pids
    n = cluster.nodes[i]
    if not _wait_port(n["host"], n["port"], False, 5):
        raise SimClusterError(f"node {i} still answers on {n['host']}:{n['port']}")
    ray = cluster.node_dir(i) / "ray"
    shutil.rmtree(ray, ignore_errors=True)
    ray.mkdir()
    return {"fault": "vanish-head", "node": i, "killed": sorted(set(killed))}


def _trainer_signal(cluster, node, sig, name):
    i = None if node is None else _node(cluster, node)
    victims = [p.pid for p in trainers(cluster, i)]
    if not victims:
        raise SimClusterError("no train.py process of this cluster is running"
                              + (f" on node {i}" if i is not None else ""))
    _signal(victims, sig)
    if sig == signal.SIGKILL:
        _wait_dead(victims, 2)
    return {"fault": name, "node": i, "pids": victims}


def _kill_trainer(cluster, node=None, **_):
    return _trainer_signal(cluster, node, signal.SIGKILL, "kill-trainer")


def _hang_trainer(cluster, node=None, **_):
    return _trainer_signal(cluster, node, signal.SIGSTOP, "hang-trainer")


def _resume_trainer(cluster, node=None, **_):
    return _trainer_signal(cluster, node, signal.SIGCONT, "resume-trainer")


def _corrupt_shard(cluster, node=None, path=None, **_):
    """Flip 16 bytes in the middle of one *.safetensors (same size, wrong sha256)."""
    i = _node(cluster, node)
    base_view = cluster.node_base(i)
    if path:
        p = Path(path)
        if p.is_absolute():
            try:
                p = p.relative_to(cluster.base_folder)
            except ValueError:
                raise SimClusterError(f"{path} is not under {cluster.base_folder}") from None
        target = base_view / p
    else:
        target = base_view
    if target.is_dir():
        shards = sorted(target.rglob("*.safetensors"))
        shards = [s for s in shards if ".cache" not in s.relative_to(target).parts]
        if not shards:
            raise SimClusterError(f"no *.safetensors under {target}")
        target = shards[0]
    if not target.is_file():
        raise SimClusterError(f"{target} does not exist")
    size = target.stat().st_size
    off = max(0, size // 2 - 8)
    with open(target, "r+b") as f:
        f.seek(off)
        chunk = f.read(16)
        f.seek(off)
        f.write(bytes(b ^ 0xFF for b in chunk))
    rel = target.relative_to(base_view)
    return {"fault": "corrupt-shard", "node": i, "path": str(cluster.base_folder / rel), "offset": off,
            "bytes": len(chunk)}


def _fill_disk(cluster, node=None, headroom_kb: int = 256, **_):
    """Fill node i's base_folder (a tmpfs of --disk-mb MB) until only `headroom_kb` are free."""
    i = _node(cluster, node)
    if not cluster.info.get("disk_mb"):
        raise SimClusterError("fill-disk needs a cluster started with --disk-mb")
    view = cluster.node_base(i)
    st = os.statvfs(view)
    free = st.f_bavail * st.f_frsize
    fill = view / FILL_NAME
    have = fill.stat().st_size if fill.exists() else 0
    size = max(0, have + free - headroom_kb * 1024)
    if size > have:
        with open(fill, "ab") as f:
            os.posix_fallocate(f.fileno(), 0, size)
    st = os.statvfs(view)
    return {"fault": "fill-disk", "node": i, "path": str(cluster.base_folder / FILL_NAME),
            "bytes": size, "free": st.f_bavail * st.f_frsize}


def _unfill_disk(cluster, node=None, **_):
    i = _node(cluster, node)
    (cluster.node_base(i) / FILL_NAME).unlink(missing_ok=True)
    return {"fault": "unfill-disk", "node": i}


def _foreign_gpu_proc(cluster, node=None, gpu_index: int = 0, used_memory: int = 30000, **_):
    """Start a `sleep` that is not ours (no SIMCLUSTER tag) and list it in node i's
    gpu_procs.json, as if another user held GPU `gpu_index`. `down` kills it (pid recorded)."""
    i = _node(cluster, node)
    nd = cluster.node_dir(i)
    p = subprocess.Popen(["sleep", FOREIGN_ARG], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env={"PATH": "/usr/bin:/bin"}, start_new_session=True)
    with open(nd / "foreign.pids", "a") as f:
        f.write(f"{p.pid}\n")
    procs_file = nd / "gpu_procs.json"
    try:
        procs = json.loads(procs_file.read_text())
    except (OSError, ValueError):
        procs = []
    gpu = json.loads((nd / "gpu.json").read_text())
    entry = {"pid": p.pid, "process_name": shutil.which("sleep") or "/usr/bin/sleep",
             "used_memory": int(used_memory), "gpu_index": int(gpu_index),
             "gpu_uuid": gpu["uuids"][int(gpu_index)]}
    procs.append(entry)
    _write_json(procs_file, procs)
    return {"fault": "foreign-gpu-proc", "node": i, **entry}
