"""Fault injection for the simulated cluster (stdlib only).

Every fault acts only on the processes of this cluster's nodes (their PID namespaces, see
:func:`tests.simcluster.cluster.procs_of`) or on files in its state folder.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

from tests.simcluster.cluster import (FAULTS, FILL_NAME, FOREIGN_ARG, SimClusterError, _signal, _wait_dead,
                                      _wait_port, _write_json, procs_of)

PY_RE = re.compile(r"^python[0-9.]*$")
ACTOR_TITLE = "ray::MegatronTrainRayActor"  # Ray names a worker process after the actor it hosts


def _is_trainer(cmdline: list[str]) -> bool:
    """`python3 [opts] .../train.py ...`: the Ray driver running slime's train.py (not a `ray job
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


def train_actors(cluster, node: int | None = None):
    """The worker processes that host slime's training actors, on node `node` or anywhere."""
    return [p for p in procs_of(cluster.dir, node)
            if p.cmdline and p.cmdline[0].startswith(ACTOR_TITLE)]


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


def _block_ssh(cluster, node=None, **_):
    """Node i stays up (Ray and the job keep running) but nobody can reach it over SSH: its
    sessions drop and its sshd listener is gone until `unblock-ssh`, as in a long partition of
    the management network."""
    i = _node(cluster, node)
    cluster.stop_sshd(i)
    dropped = _drop_ssh(cluster, node=i)["killed"]
    return {"fault": "block-ssh", "node": i, "killed": dropped}


def _unblock_ssh(cluster, node=None, **_):
    """sshd listens on node i again (same address and host key)."""
    i = _node(cluster, node)
    cluster.start_sshd(i)
    return {"fault": "unblock-ssh", "node": i, "pid": cluster.listener_pid(i)}


def _restart_sshd(cluster, node=None, **_):
    """Stop and start node i's sshd: same address, host key and config."""
    i = _node(cluster, node)
    cluster.stop_sshd(i)
    cluster.start_sshd(i)
    return {"fault": "restart-sshd", "node": i, "pid": cluster.listener_pid(i)}


def _vanish_node(cluster, node=None, **_):
    """The machine is gone at once, like a power cut: node i's PID 1 is SIGKILLed, so the kernel
    kills everything on it (sshd, sessions, Ray, actors) and its network goes with it.
    `reboot-node` brings it back with an empty /tmp."""
    i = _node(cluster, node)
    n = cluster.nodes[i]
    killed = cluster.power_off(i)
    if not _wait_port(n["host"], n["port"], False, 5):
        raise SimClusterError(f"node {i} still answers on {n['host']}:{n['port']}")
    return {"fault": "vanish-node", "node": i, "killed": sorted(killed)}


def _vanish_head(cluster, node=None, **kw):
    return dict(_vanish_node(cluster, node=0 if node is None else node, **kw), fault="vanish-head")


def _reboot_node(cluster, node=None, **_):
    """Boot a vanished node again: same address, host key and disk; no Ray, empty /tmp."""
    i = _node(cluster, node)
    cluster.power_off(i)
    pid = cluster.boot_node(i)
    cluster._record_init(i, pid)
    return {"fault": "reboot-node", "node": i, "init_pid": pid}


def _wait_for(what, fn, timeout: float):
    end = time.monotonic() + timeout
    while True:
        got = fn()
        if got or time.monotonic() > end:
            return got
        time.sleep(0.1)


def _kill_actor(cluster, node=None, timeout: float = 60, **_):
    """SIGKILL one training actor's worker process (on node `node`, else the first found): Ray
    reports a real ActorDiedError to slime's driver."""
    i = None if node is None else _node(cluster, node)
    actors = _wait_for("actor", lambda: train_actors(cluster, i), timeout)
    if not actors:
        raise SimClusterError("no MegatronTrainRayActor process of this cluster is running"
                              + (f" on node {i}" if i is not None else ""))
    victim = sorted(actors, key=lambda p: (p.node, p.pid))[0]
    _signal([victim.pid], signal.SIGKILL)
    _wait_dead([victim.pid], 5)
    return {"fault": "kill-actor", "node": victim.node, "pid": victim.pid, "ns_pid": victim.ns_pid,
            "title": " ".join(victim.cmdline)}


def _trainer_signal(cluster, node, sig, name, procs):
    victims = [p.pid for p in procs]
    if not victims:
        raise SimClusterError(f"{name}: nothing of the training job is running on this cluster"
                              + (f" (node {node})" if node is not None else ""))
    _signal(victims, sig)
    if sig == signal.SIGKILL:
        _wait_dead(victims, 5)
    return {"fault": name, "node": node, "pids": victims}


def _kill_trainer(cluster, node=None, **_):
    """SIGKILL slime's driver process (python3 train.py): the job FAILS."""
    i = None if node is None else _node(cluster, node)
    return _trainer_signal(cluster, i, signal.SIGKILL, "kill-trainer", trainers(cluster, i))


def _hang_trainer(cluster, node=None, timeout: float = 60, **_):
    """Freeze every training actor (SIGSTOP), as a collective that never returns would: the
    processes live, Ray sees nothing wrong, and no progress line comes."""
    i = None if node is None else _node(cluster, node)
    actors = _wait_for("actor", lambda: train_actors(cluster, i), timeout)
    return _trainer_signal(cluster, i, signal.SIGSTOP, "hang-trainer", actors)


def _resume_trainer(cluster, node=None, **_):
    i = None if node is None else _node(cluster, node)
    return _trainer_signal(cluster, i, signal.SIGCONT, "resume-trainer", train_actors(cluster, i))


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
    """Start a `sleep` on node i that this run did not start, and list it in node i's
    gpu_procs.json (with its pid as the node sees it), as if another user held GPU `gpu_index`.
    It dies with the node."""
    i = _node(cluster, node)
    nd = cluster.node_dir(i)
    r = cluster.nsenter(i, ["sh", "-c", f"setsid -f sleep {FOREIGN_ARG} > /dev/null 2>&1 < /dev/null"])
    if r.returncode != 0:
        raise SimClusterError(f"could not start the foreign process on node {i}: {r.stderr.strip()}")
    found = _wait_for("sleep", lambda: [p for p in procs_of(cluster.dir, i)
                                        if p.cmdline == ["sleep", FOREIGN_ARG]], 5)
    if not found:
        raise SimClusterError(f"the foreign process on node {i} did not start")
    proc = found[-1]
    procs_file = nd / "gpu_procs.json"
    try:
        procs = json.loads(procs_file.read_text())
    except (OSError, ValueError):
        procs = []
    gpu = json.loads((nd / "gpu.json").read_text())
    entry = {"pid": proc.ns_pid, "process_name": shutil.which("sleep") or "/usr/bin/sleep",
             "used_memory": int(used_memory), "gpu_index": int(gpu_index),
             "gpu_uuid": gpu["uuids"][int(gpu_index)]}
    procs.append(entry)
    _write_json(procs_file, procs)
    return {"fault": "foreign-gpu-proc", "node": i, "host_pid": proc.pid, **entry}


# -- GPU health (issue 13): what the nvidia-smi and dmesg stand-ins of node i answer -----------
XID_TEXT = {  # the wording of NVIDIA's driver for these Xids (docs.nvidia.com/deploy/xid-errors)
    79: "pid='<unknown>', name=<unknown>, GPU has fallen off the bus.",
    48: "pid=4242, name=python3, An uncorrectable double bit error (DBE) has been detected on "
        "GPU in the framebuffer at partition 0, subpartition 0.",
    94: "pid=4242, name=python3, Contained: SM (0x1). RST: No, D-RST: No",
    13: "pid=4242, name=python3, Graphics SM Warp Exception on (GPC 0, TPC 0, SM 0): "
        "Out Of Range Address",
}


def _gpu_fault(cluster, node, gpu, **fields):
    i = _node(cluster, node)
    g = json.loads((cluster.node_dir(i) / "gpu.json").read_text())
    faults = g.get("faults") or {}
    faults.setdefault(str(int(gpu)), {}).update(fields)
    cluster.set_gpu(i, faults=faults)
    return i


def _gpu_ecc(cluster, node=None, gpu=0, count=3, **_):
    """GPU `gpu` of node i has `count` uncorrectable ECC errors (volatile and aggregate)."""
    g = json.loads((cluster.node_dir(_node(cluster, node)).joinpath("gpu.json")).read_text())
    old = int(((g.get("faults") or {}).get(str(gpu)) or {}).get("ecc_volatile", 0))
    i = _gpu_fault(cluster, node, gpu, ecc_volatile=old + int(count),
                   ecc_aggregate=old + int(count))
    return {"fault": "gpu-ecc", "node": i, "gpu": gpu, "count": old + int(count)}


def _gpu_remap(cluster, node=None, gpu=0, failure=False, **_):
    i = _gpu_fault(cluster, node, gpu, remap_pending=True, remap_failure=bool(failure))
    return {"fault": "gpu-remap", "node": i, "gpu": gpu}


def _gpu_xid(cluster, node=None, gpu=0, code=79, **_):
    """The driver logs Xid `code` for GPU `gpu` into node i's kernel log (dmesg stand-in)."""
    from tests.simcluster.nvidia_smi import bus_id

    i = _node(cluster, node)
    bus = bus_id(int(gpu))  # 00000000:18:00.0 -> the driver's PCI:0000:18:00
    pci = "0000:" + bus.split(":", 1)[1].rsplit(".", 1)[0].lower()
    with open("/proc/uptime") as f:  # the nodes share this kernel's clock
        t = float(f.read().split()[0])
    msg = f"NVRM: Xid (PCI:{pci}): {int(code)}, {XID_TEXT.get(int(code), 'pid=4242, name=python3')}"
    with open(cluster.node_dir(i) / "kmsg.jsonl", "a") as f:
        f.write(json.dumps({"t": t, "msg": msg}) + "\n")
    return {"fault": "gpu-xid", "node": i, "gpu": gpu, "code": int(code), "t": t, "pci": pci}


def _gpu_pcie(cluster, node=None, gpu=0, width=8, **_):
    i = _gpu_fault(cluster, node, gpu, pcie_width=int(width))
    return {"fault": "gpu-pcie", "node": i, "gpu": gpu, "width": int(width)}


def _gpu_nvlink_down(cluster, node=None, gpu=0, links=(0, 1), **_):
    i = _gpu_fault(cluster, node, gpu, nvlink_down=[int(x) for x in links])
    return {"fault": "gpu-nvlink-down", "node": i, "gpu": gpu, "links": list(links)}


def _gpu_thermal(cluster, node=None, gpu=0, **_):
    i = _gpu_fault(cluster, node, gpu, thermal=True)
    return {"fault": "gpu-thermal", "node": i, "gpu": gpu}


def _gpu_hang(cluster, node=None, **_):
    """Node i's GPUs show the NCCL-hang signature (100 % utilization, near-idle power)."""
    i = _node(cluster, node)
    cluster.set_gpu(i, telemetry="hang")
    return {"fault": "gpu-hang", "node": i}


def _gpu_idle(cluster, node=None, **_):
    """Node i's GPUs go idle whatever runs there (0 %, idle power)."""
    i = _node(cluster, node)
    cluster.set_gpu(i, telemetry="idle")
    return {"fault": "gpu-idle", "node": i}


def _dmesg_restrict(cluster, node=None, **_):
    """dmesg on node i fails as under kernel.dmesg_restrict=1 without CAP_SYSLOG."""
    i = _node(cluster, node)
    cluster.set_gpu(i, dmesg_restricted=True)
    return {"fault": "dmesg-restrict", "node": i}


def _gpu_heal(cluster, node=None, **_):
    """Every GPU fault of node i cleared (a reset GPU, a rebooted kernel log)."""
    i = _node(cluster, node)
    cluster.set_gpu(i, faults={}, telemetry=None, dmesg_restricted=False, fabric=None)
    (cluster.node_dir(i) / "kmsg.jsonl").unlink(missing_ok=True)
    return {"fault": "gpu-heal", "node": i}
