#!/usr/bin/env python3
"""nvidia-smi stand-in for the simulated cluster (stdlib only).

Copied to ``DIR/bin/nvidia-smi`` by ``up``. It reads ``DIR/sim.json`` and
``DIR/nodes/<i>/gpu.json`` (``DIR`` from ``$SIMCLUSTER_DIR``, falling back to the folder above this
file; ``i`` from ``$SIMCLUSTER_NODE``) and answers in nvidia-smi's real formats:

- ``--query-gpu=F1,F2,... --format=csv[,noheader][,nounits] [-i IDS]``
- ``--query-compute-apps=pid,process_name,used_memory,gpu_uuid --format=...`` (from
  ``DIR/nodes/<i>/gpu_procs.json``; entries whose pid is dead are not shown, as on a real GPU)
- ``topo -m``, ``-L``, ``nvlink --status`` / ``nvlink -s``, ``-q`` (a subset of its sections:
  the header, each GPU's identity, ECC mode and the Fabric section), and plain ``nvidia-smi``
  (a short table).

Health and telemetry (issue 13), with the field names and value spellings of nvidia-smi's
``--help-query-gpu`` on R535+ drivers (the real H200 answers are recorded in
docs/gpu-validation.md): ECC counters, retired pages, row remapping, PCIe link, clock event
reasons (``clocks_throttle_reasons.*`` before R535), power. Faults come from ``gpu.json``'s
``"faults": {"<gpu index>": {...}}`` (``ecc_volatile``, ``ecc_aggregate``, ``remap_pending``,
``remap_failure``, ``pages_pending``, ``pcie_width``, ``nvlink_down``: [link ids], ``thermal``,
``power_brake``) and ``"fabric"`` ({"state", "status"}). Utilization, power and memory follow
what really runs on the node: a live slime training actor (``ray::MegatronTrainRayActor`` in
this node's PID namespace) makes its GPUs busy; a stopped one (SIGSTOP, the ``hang-trainer``
fault) shows the NCCL-hang signature of real GPUs, 100 % utilization at near-idle power (a
kernel spinning in a collective's wait loop); ``"telemetry": "idle" | "hang"`` forces either.

gpu.json: ``{"count", "gpu", "name", "compute_cap", "memory_total_mib", "driver_version",
"cuda_version", "nvlink", "uuids", "driver_loaded"}``. ``count: 0`` gives "No devices were found"
(exit 6); ``driver_loaded: false`` gives the driver communication failure (exit 9). A driver older
than 510 does not know ``compute_cap`` (exit 2, as the real 470 series).
"""
import json
import os
import sys
import time

NO_DEVICES = "No devices were found"
NO_DRIVER = ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
             "Make sure that the latest NVIDIA driver is installed and running.")

# field -> (header, unit or None); aliases map to canonical names
GPU_FIELDS = {
    "index": ("index", None),
    "name": ("name", None),
    "uuid": ("uuid", None),
    "compute_cap": ("compute_cap", None),
    "memory.total": ("memory.total [MiB]", "MiB"),
    "memory.used": ("memory.used [MiB]", "MiB"),
    "memory.free": ("memory.free [MiB]", "MiB"),
    "driver_version": ("driver_version", None),
    "count": ("count", None),
    "pci.bus_id": ("pci.bus_id", None),
    "utilization.gpu": ("utilization.gpu [%]", "%"),
    "temperature.gpu": ("temperature.gpu", None),
    "serial": ("serial", None),
    "persistence_mode": ("persistence_mode", None),
    "ecc.mode.current": ("ecc.mode.current", None),
    "ecc.errors.uncorrected.volatile.total": ("ecc.errors.uncorrected.volatile.total", None),
    "ecc.errors.uncorrected.aggregate.total": ("ecc.errors.uncorrected.aggregate.total", None),
    "retired_pages.pending": ("retired_pages.pending", None),
    "remapped_rows.pending": ("remapped_rows.pending", None),
    "remapped_rows.failure": ("remapped_rows.failure", None),
    "remapped_rows.uncorrectable": ("remapped_rows.uncorrectable", None),
    "pcie.link.gen.current": ("pcie.link.gen.current", None),
    "pcie.link.gen.max": ("pcie.link.gen.max", None),
    "pcie.link.width.current": ("pcie.link.width.current", None),
    "pcie.link.width.max": ("pcie.link.width.max", None),
    "clocks_event_reasons.hw_thermal_slowdown": ("clocks_event_reasons.hw_thermal_slowdown", None),
    "clocks_event_reasons.hw_power_brake_slowdown":
        ("clocks_event_reasons.hw_power_brake_slowdown", None),
    "clocks_event_reasons.sw_thermal_slowdown": ("clocks_event_reasons.sw_thermal_slowdown", None),
    "power.draw": ("power.draw [W]", "W"),
    "power.limit": ("power.limit [W]", "W"),
}
# R535 renamed clocks_throttle_reasons.* to clocks_event_reasons.*; the old names stay accepted
for _k in [k for k in GPU_FIELDS if k.startswith("clocks_event_reasons.")]:
    GPU_FIELDS[_k.replace("clocks_event_reasons.", "clocks_throttle_reasons.")] = GPU_FIELDS[_k]
POWER_LIMIT_W = {"B200": 1000}  # SXM boards; H100/H200 SXM: 700 W
NVLINKS = {"B200": (18, "53.125"), "H100": (18, "26.562"), "H200": (18, "26.562")}
ACTOR_TITLE = "ray::MegatronTrainRayActor"
GPU_ALIASES = {"gpu_name": "name", "gpu_uuid": "uuid", "gpu_bus_id": "pci.bus_id",
               "gpu_serial": "serial", "driver_version": "driver_version"}
APP_FIELDS = {
    "pid": ("pid", None),
    "process_name": ("process_name", None),
    "used_memory": ("used_gpu_memory [MiB]", "MiB"),
    "gpu_uuid": ("gpu_uuid", None),
    "gpu_name": ("gpu_name", None),
    "gpu_bus_id": ("gpu_bus_id", None),
    "gpu_serial": ("gpu_serial", None),
}
APP_ALIASES = {"used_gpu_memory": "used_memory", "name": "process_name"}


def _state_dir():
    d = os.environ.get("SIMCLUSTER_DIR")
    if d:
        return d
    return os.path.dirname(os.path.dirname(os.path.realpath(__file__)))


def _load(path, default):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def _driver_major(drv):
    try:
        return int(str(drv).split(".")[0])
    except ValueError:
        return 0


def _alive(pid):
    try:
        with open("/proc/%d/stat" % int(pid)) as f:
            stat = f.read()
    except (OSError, ValueError):
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def bus_id(i):
    """GPU i's PCI bus id, as an 8-GPU HGX board numbers them."""
    base = [0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB][i % 8]
    return "00000000:%02X:00.0" % ((base + i // 8) & 0xFF)


class Node:
    def __init__(self):
        self.dir = _state_dir()
        self.node = int(os.environ.get("SIMCLUSTER_NODE", "0") or 0)
        self.sim = _load(os.path.join(self.dir, "sim.json"), {})
        ndir = os.path.join(self.dir, "nodes", str(self.node))
        self.gpu = _load(os.path.join(ndir, "gpu.json"), {})
        self.count = int(self.gpu.get("count", self.sim.get("gpus_per_node", 8)))
        self.name = self.gpu.get("name", "NVIDIA H100 80GB HBM3")
        self.cc = self.gpu.get("compute_cap", "9.0")
        self.mem = int(self.gpu.get("memory_total_mib", 81559))
        self.driver = self.gpu.get("driver_version", "580.95.05")
        self.cuda = self.gpu.get("cuda_version", "13.0")
        self.nvlink = bool(self.gpu.get("nvlink", True))
        uuids = self.gpu.get("uuids") or []
        self.uuids = [uuids[i] if i < len(uuids) else
                      "GPU-%08x-0000-0000-0000-%012x" % (self.node, i) for i in range(self.count)]
        self.faults = self.gpu.get("faults") or {}
        self.kind = self.gpu.get("gpu") or "H100"
        self.activity = self._activity()
        procs = _load(os.path.join(ndir, "gpu_procs.json"), [])
        self.procs = []
        for p in procs if isinstance(procs, list) else []:
            if not _alive(p.get("pid", -1)):
                continue
            idx = p.get("gpu_index")
            if idx is None:
                idx = self.uuids.index(p["gpu_uuid"]) if p.get("gpu_uuid") in self.uuids else 0
            if 0 <= int(idx) < self.count:
                self.procs.append(dict(p, gpu_index=int(idx)))

    def _activity(self):
        """'train', 'hang' or 'idle': what this node's GPUs are doing."""
        forced = self.gpu.get("telemetry")
        if forced in ("idle", "hang", "train"):
            return forced
        states = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open("/proc/%s/cmdline" % pid, "rb") as f:
                    title = f.read().split(b"\0")[0].decode("utf-8", "replace")
                with open("/proc/%s/stat" % pid) as f:
                    state = f.read().rsplit(")", 1)[-1].split()[0]
            except (OSError, IndexError):
                continue
            if title.startswith(ACTOR_TITLE):
                states.append(state)
        if not states:
            return "idle"
        return "hang" if all(st == "T" for st in states) else "train"

    def fault(self, i, key, default=None):
        return (self.faults.get(str(i)) or {}).get(key, default)

    def telemetry(self, i):
        """(utilization %, power W, memory used MiB) of GPU i."""
        limit = POWER_LIMIT_W.get(self.kind, 700)
        if self.activity == "train":
            # deterministic wobble: busy GPUs never read the same twice
            wob = int(time.time() * 7 + i * 13) % 9
            return 92 + wob % 8, round(limit * (0.62 + 0.03 * wob), 2), int(self.mem * 0.78)
        if self.activity == "hang":
            return 100, round(limit * 0.12, 2), int(self.mem * 0.78)
        return 0, round(limit * 0.1, 2), 0

    def bus_id(self, i):
        return bus_id(i)

    def used(self, i):
        return sum(int(p.get("used_memory", 0)) for p in self.procs if p["gpu_index"] == i)

    def check(self):
        if self.gpu.get("driver_loaded", True) is False:
            print(NO_DRIVER)
            sys.exit(9)
        if self.count <= 0:
            print(NO_DEVICES)
            sys.exit(6)


def _fmt(value, unit, nounits):
    if unit is None or nounits:
        return str(value)
    return "%s %s" % (value, unit)


def _parse_format(fmt):
    parts = [p.strip() for p in (fmt or "").split(",") if p.strip()]
    if not parts or parts[0] != "csv" or any(p not in ("csv", "noheader", "nounits") for p in parts):
        print('"%s" is not a valid format.' % fmt if fmt else 'Option "--format" must be specified.')
        print("Please run 'nvidia-smi -h' for help.")
        sys.exit(2)
    return "noheader" in parts, "nounits" in parts


def _ids(node, ids):
    if ids is None:
        return list(range(node.count))
    out = []
    for tok in ids.split(","):
        tok = tok.strip()
        if tok.isdigit() and int(tok) < node.count:
            out.append(int(tok))
        elif tok in node.uuids:
            out.append(node.uuids.index(tok))
        else:
            print("No devices were found")
            sys.exit(6)
    return out


def query_gpu(node, fields, fmt, ids):
    noheader, nounits = _parse_format(fmt)
    names = [f.strip() for f in fields.split(",") if f.strip()]
    canon = []
    for f in names:
        c = GPU_ALIASES.get(f.lower(), f.lower())
        if c not in GPU_FIELDS or (c == "compute_cap" and _driver_major(node.driver) < 510) \
                or (c.startswith("clocks_event_reasons.") and _driver_major(node.driver) < 535):
            print('Field "%s" is not a valid field to query.' % f)
            print()
            sys.exit(2)
        canon.append(c)
    node.check()
    if not noheader:
        print(", ".join(GPU_FIELDS[c][0] for c in canon))
    for i in _ids(node, ids):
        used = node.used(i)
        util, power, busy_mem = node.telemetry(i)
        used = used + busy_mem
        f = node.fault
        vol = int(f(i, "ecc_volatile", 0))
        yes = {True: "Yes", False: "No"}
        active = {True: "Active", False: "Not Active"}
        vals = {
            "index": i, "name": node.name, "uuid": node.uuids[i], "compute_cap": node.cc,
            "memory.total": node.mem, "memory.used": used, "memory.free": node.mem - used,
            "driver_version": node.driver, "count": node.count, "pci.bus_id": node.bus_id(i),
            "utilization.gpu": 100 if used and not busy_mem else util,
            "temperature.gpu": 33 + i % 4,
            "serial": "%013d" % (1650000000000 + node.node * 100 + i), "persistence_mode": "Enabled",
            "ecc.mode.current": "Enabled",
            "ecc.errors.uncorrected.volatile.total": vol,
            "ecc.errors.uncorrected.aggregate.total": max(vol, int(f(i, "ecc_aggregate", 0))),
            # Hopper and later retire no pages (they remap rows): nvidia-smi says No there
            "retired_pages.pending": yes[bool(f(i, "pages_pending", False))],
            "remapped_rows.pending": yes[bool(f(i, "remap_pending", False))],
            "remapped_rows.failure": yes[bool(f(i, "remap_failure", False))],
            "remapped_rows.uncorrectable": int(f(i, "remap_uncorrectable", 0)),
            # an idle GPU lowers its link generation to save power; the width stays
            "pcie.link.gen.current": 5 if node.activity != "idle" else 1,
            "pcie.link.gen.max": 5,
            "pcie.link.width.current": int(f(i, "pcie_width", 16)), "pcie.link.width.max": 16,
            "clocks_event_reasons.hw_thermal_slowdown": active[bool(f(i, "thermal", False))],
            "clocks_event_reasons.hw_power_brake_slowdown":
                active[bool(f(i, "power_brake", False))],
            "clocks_event_reasons.sw_thermal_slowdown": "Not Active",
            "power.draw": power, "power.limit": "%.2f" % POWER_LIMIT_W.get(node.kind, 700),
        }
        for k in list(vals):
            if k.startswith("clocks_event_reasons."):
                vals[k.replace("clocks_event_reasons.", "clocks_throttle_reasons.")] = vals[k]
        print(", ".join(_fmt(vals[c], GPU_FIELDS[c][1], nounits) for c in canon))
    return 0


def query_apps(node, fields, fmt):
    noheader, nounits = _parse_format(fmt)
    canon = []
    for f in [f.strip() for f in fields.split(",") if f.strip()]:
        c = APP_ALIASES.get(f.lower(), f.lower())
        if c not in APP_FIELDS:
            print('Field "%s" is not a valid field to query.' % f)
            print()
            sys.exit(2)
        canon.append(c)
    node.check()
    if not noheader:
        print(", ".join(APP_FIELDS[c][0] for c in canon))
    for p in node.procs:
        i = p["gpu_index"]
        vals = {"pid": p["pid"], "process_name": p.get("process_name", "python3"),
                "used_memory": int(p.get("used_memory", 0)), "gpu_uuid": node.uuids[i],
                "gpu_name": node.name, "gpu_bus_id": node.bus_id(i),
                "gpu_serial": "%013d" % (1650000000000 + node.node * 100 + i)}
        print(", ".join(_fmt(vals[c], APP_FIELDS[c][1], nounits) for c in canon))
    return 0


def topo(node):
    node.check()
    n = node.count
    nics = n if n >= 2 else 0
    half = max(1, n // 2)
    cols = ["GPU%d" % i for i in range(n)] + ["NIC%d" % i for i in range(nics)]
    lines = ["\t" + "\t".join(cols) + "\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID"]

    def numa(i):
        return 0 if i < half else 1

    def link(a_gpu, a, b_gpu, b):
        if a_gpu and b_gpu and a == b:
            return " X "
        if a_gpu and b_gpu:
            return "NV18" if node.nvlink else ("NODE" if numa(a) == numa(b) else "SYS")
        if not a_gpu and not b_gpu and a == b:
            return " X "
        if a == b:
            return "PIX"
        return "NODE" if numa(a) == numa(b) else "SYS"

    cpu = {0: "0-55,112-167", 1: "56-111,168-223"}
    rows = [(True, i) for i in range(n)] + [(False, i) for i in range(nics)]
    for is_gpu, i in rows:
        name = ("GPU%d" % i) if is_gpu else ("NIC%d" % i)
        cells = [link(is_gpu, i, g, j) for g, j in rows]
        tail = ("\t%s\t%d\t\tN/A" % (cpu[numa(i)], numa(i))) if is_gpu else ""
        lines.append(name + "\t" + "\t".join(cells) + tail)
    lines += ["", "Legend:", "",
              "  X    = Self",
              "  SYS  = Connection traversing PCIe as well as the SMP interconnect between NUMA nodes (e.g., QPI/UPI)",
              "  NODE = Connection traversing PCIe as well as the interconnect between PCIe Host Bridges within a NUMA node",
              "  PHB  = Connection traversing PCIe as well as a PCIe Host Bridge (typically the CPU)",
              "  PXB  = Connection traversing multiple PCIe bridges (without traversing the PCIe Host Bridge)",
              "  PIX  = Connection traversing at most a single PCIe bridge",
              "  NV#  = Connection traversing a bonded set of # NVLinks", ""]
    if nics:
        lines += ["NIC Legend:", ""] + ["  NIC%d: mlx5_%d" % (i, i) for i in range(nics)] + [""]
    print("\n".join(lines))
    return 0


def nvlink_status(node):
    """`nvidia-smi nvlink --status`: per GPU its links' speed, a down link `<inactive>`."""
    node.check()
    links, speed = NVLINKS.get(node.kind, (18, "26.562"))
    for i in range(node.count):
        print("GPU %d: %s (UUID: %s)" % (i, node.name, node.uuids[i]))
        if not node.nvlink:
            continue
        down = set(int(x) for x in node.fault(i, "nvlink_down", []) or [])
        for link in range(links):
            print("\t Link %d: %s" % (link, "<inactive>" if link in down else speed + " GB/s"))
    return 0


def query_all(node):
    """`nvidia-smi -q`, the sections slimeflow reads (the real one prints ~200 lines per GPU)."""
    node.check()
    fabric = node.gpu.get("fabric") or ({"state": "Completed", "status": "Success"}
                                        if node.nvlink else {"state": "N/A", "status": "N/A"})
    out = ["", "==============NVSMI LOG==============", "",
           "%-38s: %s" % ("Timestamp", time.strftime("%a %b %d %H:%M:%S %Y")),
           "%-38s: %s" % ("Driver Version", node.driver),
           "%-38s: %s" % ("CUDA Version", node.cuda), "",
           "%-38s: %d" % ("Attached GPUs", node.count)]
    for i in range(node.count):
        out += ["GPU %s" % node.bus_id(i),
                "    %-34s: %s" % ("Product Name", node.name),
                "    %-34s: %s" % ("Persistence Mode", "Enabled"),
                "    %-34s: %s" % ("GPU UUID", node.uuids[i]),
                "    Fabric",
                "        %-30s: %s" % ("State", fabric.get("state")),
                "        %-30s: %s" % ("Status", fabric.get("status")),
                "    ECC Mode",
                "        %-30s: %s" % ("Current", "Enabled"),
                "        %-30s: %s" % ("Pending", "Enabled"), ""]
    print("\n".join(out))
    return 0


def list_gpus(node):
    node.check()
    for i in range(node.count):
        print("GPU %d: %s (UUID: %s)" % (i, node.name, node.uuids[i]))
    return 0


def table(node):
    node.check()
    w1, w2, w3 = 41, 24, 22
    w = w1 + w2 + w3 + 4
    bar = "+" + "-" * (w - 2) + "+"
    sep = "|" + "-" * w1 + "+" + "-" * w2 + "+" + "-" * w3 + "+"

    def row(a, b, c):
        return "|" + a.ljust(w1)[:w1] + "|" + b.ljust(w2)[:w2] + "|" + c.ljust(w3)[:w3] + "|"

    print(time.strftime("%a %b %d %H:%M:%S %Y"))
    print(bar)
    print(("| NVIDIA-SMI %-23s Driver Version: %-14s CUDA Version: %s" % (
        node.driver, node.driver, node.cuda)).ljust(w - 1) + "|")
    print(sep)
    print(row(" GPU  Name                 Persistence-M", " Bus-Id          Disp.A", " Volatile Uncorr. ECC"))
    print(row(" Fan  Temp   Perf          Pwr:Usage/Cap", "           Memory-Usage", " GPU-Util  Compute M."))
    print("|" + "=" * w1 + "+" + "=" * w2 + "+" + "=" * w3 + "|")
    for i in range(node.count):
        used = node.used(i)
        print(row(" %3d  %-26.26s  On" % (i, node.name), "   %s Off" % node.bus_id(i), " " * 20 + "0"))
        print(row(" N/A   %2dC    P0             69W /  700W" % (33 + i % 4),
                  " %10s / %9s" % ("%dMiB" % used, "%dMiB" % node.mem),
                  " %5d%%      Default" % (100 if used else 0)))
        print(sep)
    print()
    print(bar)
    print("| Processes:".ljust(w - 1) + "|")
    print("|  GPU   GI   CI              PID   Type   Process name                        GPU Memory |"[:w - 1].ljust(w - 1) + "|")
    print("|" + "=" * (w - 2) + "|")
    if not node.procs:
        print("|  No running processes found".ljust(w - 1) + "|")
    for p in node.procs:
        print(("|  %3d   N/A  N/A  %15d      C   %-34.34s %8dMiB" % (
            p["gpu_index"], int(p["pid"]), p.get("process_name", "python3"),
            int(p.get("used_memory", 0)))).ljust(w - 1) + "|")
    print(bar)
    return 0


def main(argv):
    opts = {}
    rest = []
    i = 0
    while i < len(argv):
        a = argv[i]
        key = None
        for long_name in ("--query-gpu", "--query-compute-apps", "--format", "--id"):
            if a == long_name:
                key, val = long_name, (argv[i + 1] if i + 1 < len(argv) else "")
                i += 1
                break
            if a.startswith(long_name + "="):
                key, val = long_name, a[len(long_name) + 1:]
                break
        if key is None and a == "-i":
            key, val = "--id", (argv[i + 1] if i + 1 < len(argv) else "")
            i += 1
        if key is not None:
            opts[key] = val
        else:
            rest.append(a)
        i += 1
    node = Node()
    if "--query-gpu" in opts:
        return query_gpu(node, opts["--query-gpu"], opts.get("--format"), opts.get("--id"))
    if "--query-compute-apps" in opts:
        return query_apps(node, opts["--query-compute-apps"], opts.get("--format"))
    if rest[:1] == ["topo"]:
        if "-m" in rest or "--matrix" in rest:
            return topo(node)
        print("Please run 'nvidia-smi topo -h' for help.")
        return 2
    if rest[:1] == ["nvlink"]:
        if "--status" in rest or "-s" in rest:
            return nvlink_status(node)
        print("Please run 'nvidia-smi nvlink -h' for help.")
        return 2
    if rest in (["-q"], ["--query"]):
        return query_all(node)
    if rest in (["-L"], ["--list-gpus"]):
        return list_gpus(node)
    if not rest:
        return table(node)
    print("Invalid combination of input arguments. Please run 'nvidia-smi -h' for help.")
    return 2


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except BrokenPipeError:
        sys.exit(0)
