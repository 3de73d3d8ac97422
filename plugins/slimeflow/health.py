"""Grade a node's GPU health facts (include/node/gpuhealth.py check). Pure: facts in, findings out.

Each finding is graded fail (check_cluster refuses the node), warn (an alert, the run goes on)
or info (the log), with ONE sentence that names the node, the GPU index and bus id, and what to
do: on-call reads it at 3 a.m. docs/pipeline.md lists every check with its grade and source.
"""
from __future__ import annotations

FAIL, WARN, INFO = "fail", "warn", "info"

# NVIDIA's Xid catalog (https://docs.nvidia.com/deploy/xid-errors/analyzing-xid-catalog.html),
# its immediate actions graded: RESTART_APP / IGNORE are the job's or nobody's problem (info),
# RESET_GPU / RESTART_BM / an NVLink workflow make the node unfit for a multi-day run (fail).
XIDS = {
    13: ("Graphics Engine Exception", INFO, "usually the application's own bug"),
    31: ("GPU memory page fault", INFO, "usually an illegal memory access by the application"),
    43: ("GPU stopped processing", INFO, "the application faulted on the GPU"),
    45: ("preemptive cleanup after an earlier error", INFO, "look at the Xid before it"),
    48: ("double-bit ECC error", FAIL, "reset the GPU (nvidia-smi -r) and RMA it if it recurs"),
    61: ("internal micro-controller breakpoint", WARN, "contact NVIDIA support if it recurs"),
    62: ("internal micro-controller halt", FAIL, "reset the GPU (nvidia-smi -r)"),
    63: ("row remap recorded", INFO, "nothing to do unless Xid 64 follows"),
    64: ("row remap failure", FAIL, "reset the GPU and RMA it if it recurs"),
    74: ("NVLink error", FAIL, "reset the GPU and check its NVLink connections; RMA if it recurs"),
    79: ("GPU has fallen off the bus", FAIL, "reboot the node and RMA the GPU if it recurs"),
    92: ("excessive single-bit ECC interrupts", WARN, "watch the GPU; RMA it if it recurs"),
    94: ("contained ECC error", WARN, "the application using that memory had to stop; reset the "
                                     "GPU when it is idle"),
    95: ("uncontained ECC error", FAIL, "reset the GPU (nvidia-smi -r) or reboot the node"),
    109: ("context switch timeout", FAIL, "reset the GPU (nvidia-smi -r)"),
    119: ("GSP RPC timeout", FAIL, "reset the GPU or reboot the node"),
    120: ("GSP error", FAIL, "reset the GPU or reboot the node"),
    140: ("unrecoverable ECC error", FAIL, "reset the GPU and RMA it if it recurs"),
    154: ("GPU recovery action changed", INFO, "follow the Xid it refers to"),
}
for _code in range(144, 151):  # NVLink5 errors (Blackwell): NVIDIA's NVLink5 workflow
    XIDS[_code] = ("NVLink5 error", FAIL, "reset the GPU and follow NVIDIA's NVLink5 error "
                                          "workflow for this Xid")
SLOWDOWNS = {
    "clocks_event_reasons.hw_thermal_slowdown": "hardware thermal slowdown (the GPU is too hot)",
    "clocks_event_reasons.hw_power_brake_slowdown":
        "hardware power brake (the power supply or baseboard asserted it)",
    "clocks_event_reasons.sw_thermal_slowdown": "software thermal slowdown",
}
# a fabric manager that finished: nvidia-smi -q's Fabric State / Status
FABRIC_DONE, FABRIC_OK = "completed", "success"


def finding(grade, check, node, text, gpu=None, bus_id=None) -> dict:
    return {"grade": grade, "check": check, "node": node, "gpu": gpu, "bus_id": bus_id,
            "text": text}


def _gpu_label(g: dict) -> str:
    return f"GPU {g.get('index')} ({g.get('pci.bus_id') or 'bus id unknown'})"


def _yes(v) -> bool:
    return isinstance(v, str) and v.strip().lower() in ("yes", "active", "enabled")


def grade_gpu(node: str, g: dict) -> list:
    out = []
    label, idx, bus = _gpu_label(g), g.get("index"), g.get("pci.bus_id")

    def add(grade, check, text):
        out.append(finding(grade, check, node, text, idx, bus))

    vol = g.get("ecc.errors.uncorrected.volatile.total")
    agg = g.get("ecc.errors.uncorrected.aggregate.total")
    pending = _yes(g.get("remapped_rows.pending"))
    if isinstance(vol, int) and vol > 0:
        add(FAIL, "ecc", f"drain {node}: {label} has {vol} uncorrectable ECC error"
            f"{'s' if vol != 1 else ''} since the driver loaded"
            f"{' and a pending row remap' if pending else ''}; reset the GPU "
            f"(nvidia-smi -r -i {idx}) or RMA it, then run again.")
    elif pending:
        add(FAIL, "row_remap", f"drain {node}: {label} has a pending row remap; reset the GPU "
            f"(nvidia-smi -r -i {idx}) or reboot the node so that the remap takes effect.")
    if isinstance(agg, int) and agg > 0 and not (isinstance(vol, int) and vol > 0):
        add(WARN, "ecc", f"{node}: {label} has had {agg} uncorrectable ECC error"
            f"{'s' if agg != 1 else ''} over its life (none since the driver loaded); watch it "
            f"and RMA it if new ones come.")
    if _yes(g.get("remapped_rows.failure")):
        add(FAIL, "row_remap", f"drain {node}: {label} failed to remap a row of its memory "
            f"(remapped_rows.failure); RMA the GPU.")
    if _yes(g.get("retired_pages.pending")):
        add(FAIL, "retired_pages", f"drain {node}: {label} has memory pages waiting to be "
            f"retired; reset the GPU (nvidia-smi -r -i {idx}) or reboot the node.")
    if isinstance(g.get("ecc.mode.current"), str) and g["ecc.mode.current"].lower() == "disabled":
        add(WARN, "ecc_mode", f"{node}: {label} runs with ECC off, so memory errors go unseen; "
            f"turn it on (nvidia-smi -e 1 -i {idx}, then reset the GPU).")
    wc, wm = g.get("pcie.link.width.current"), g.get("pcie.link.width.max")
    if isinstance(wc, int) and isinstance(wm, int) and wc < wm:
        add(WARN, "pcie_width", f"{node}: {label}'s PCIe link runs at x{wc} of x{wm}; reseat the "
            f"GPU or check its riser and slot (host-device copies such as checkpoint saves run "
            f"at a fraction of their speed).")
    gc, gm = g.get("pcie.link.gen.current"), g.get("pcie.link.gen.max")
    busy = isinstance(g.get("utilization.gpu"), (int, float)) and g["utilization.gpu"] >= 50
    if isinstance(gc, int) and isinstance(gm, int) and gc < gm and busy:  # idle GPUs slow down
        add(INFO, "pcie_gen", f"{node}: {label}'s PCIe link is at gen {gc} of {gm} while the GPU "
            f"is busy; check the slot's and BIOS's PCIe settings.")
    for field, why in SLOWDOWNS.items():
        if _yes(g.get(field)):
            add(WARN, "clocks", f"{node}: {label} is slowed by {why}; check the node's cooling "
                f"and power, since one slow GPU holds every rank back.")
    return out


def grade_nvlink(node: str, gpus: list, nvlink: dict | None) -> list:
    """Links down on some GPUs while their peers have them up. A one-GPU node has no peer to
    talk to, and a PCIe node lists no active link anywhere: neither is graded."""
    if not nvlink or len(gpus) < 2:
        return []
    best = max((v.get("active", 0) for v in nvlink.values()), default=0)
    if best == 0:
        return []
    out = []
    by_index = {g.get("index"): g for g in gpus}
    for key, v in sorted(nvlink.items(), key=lambda kv: int(kv[0])):
        g = by_index.get(int(key), {"index": int(key)})
        if v.get("active", 0) < best:
            down = v.get("inactive") or []
            out.append(finding(
                FAIL, "nvlink", node,
                f"drain {node}: {_gpu_label(g)} has {best - v.get('active', 0)} of {best} NVLink "
                f"links down (link{'s' if len(down) != 1 else ''} "
                f"{', '.join(map(str, down)) or '?'}); reset the GPU or check the baseboard, "
                f"since NCCL over the node would slow down or hang.", g.get("index"),
                g.get("pci.bus_id")))
    return out


def grade_fabric(node: str, fabric: dict | None) -> list:
    """NVSwitch systems: CUDA refuses to start until nvidia-fabricmanager finishes."""
    if not fabric:
        return []
    state = str(fabric.get("state") or "").strip().lower()
    status = str(fabric.get("status") or "").strip().lower()
    if not state or state in ("n/a", "not supported"):
        return []
    if state != FABRIC_DONE or (status and status != FABRIC_OK):
        return [finding(FAIL, "fabric", node,
                        f"drain {node}: its NVSwitch fabric is not ready (fabric state "
                        f"{fabric.get('state') or 'N/A'}, status {fabric.get('status') or 'N/A'}); start or "
                        f"restart nvidia-fabricmanager there (systemctl restart "
                        f"nvidia-fabricmanager) and check its log.")]
    return []


def grade_xids(node: str, gpus: list, xid: dict | None) -> list:
    if not xid or not xid.get("readable"):
        why = (xid or {}).get("error") or "no kernel log was read"
        return [finding(INFO, "xid", node,
                        f"{node}: Xid events are unknown because the kernel log cannot be read "
                        f"({why}); let the SSH user read it (sysctl kernel.dmesg_restrict=0, or "
                        f"CAP_SYSLOG) to have them checked.")]
    by_bus = {str(g.get("pci.bus_id") or "")[:10]: g for g in gpus}  # 0000:9d:00
    groups: dict = {}
    for e in xid.get("events") or []:
        groups.setdefault((e.get("pci"), e.get("xid")), []).append(e)
    out = []
    for (pci, code), events in sorted(groups.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])):
        name, grade, todo = XIDS.get(code, (None, WARN, "look it up in NVIDIA's Xid catalog "
                                                        "(docs.nvidia.com/deploy/xid-errors)"))
        g = by_bus.get(pci)
        who = _gpu_label(g) if g else f"the GPU at {pci}"
        last = events[-1].get("t")
        when = f", last at {last:.0f} s after boot" if isinstance(last, (int, float)) else ""
        lead = f"drain {node}: " if grade == FAIL else f"{node}: "
        out.append(finding(grade, "xid", node,
                           f"{lead}{who} logged Xid {code}{f' ({name})' if name else ''} "
                           f"{'once' if len(events) == 1 else f'{len(events)} times'} since boot"
                           f"{when}; {todo}.", g.get("index") if g else None, pci))
    return out


def grade_dcgm(node: str, dcgm: dict | None) -> list:
    if not dcgm:
        return []
    if not dcgm.get("ran"):
        return [finding(INFO, "dcgm", node, f"{node}: DCGM diagnostics level "
                        f"{dcgm.get('level')} did not run ({dcgm.get('error')}).")]
    out = []
    for p in dcgm.get("problems") or []:
        failed = str(p.get("status")).lower() == "fail"
        gpu = p.get("gpu")
        out.append(finding(FAIL if failed else WARN, "dcgm", node,
                           f"{'drain ' if failed else ''}{node}: DCGM diagnostics level "
                           f"{dcgm.get('level')} test {p.get('test')} "
                           f"{'failed' if failed else 'warned'}"
                           f"{f' on GPU {gpu}' if gpu is not None else ''}: "
                           f"{p.get('info') or 'no detail'}; run `dcgmi diag -r "
                           f"{dcgm.get('level')}` there and follow its advice.", gpu))
    return out


def grade_node(node: str, health: dict | None) -> list:
    """Every finding for one node's health facts, fails first."""
    if not health:
        return [finding(INFO, "health", node, f"{node}: GPU health was not checked (the node "
                        f"scripts gave no health facts).")]
    gpus = health.get("gpus") or []
    out = []
    for g in gpus:
        out += grade_gpu(node, g)
    if health.get("missing_fields"):
        out.append(finding(INFO, "fields", node, f"{node}: its driver does not report "
                           f"{', '.join(health['missing_fields'])}, so those checks are unknown "
                           f"there; a driver of branch 535 or newer reports them."))
    persist = [g for g in gpus if isinstance(g.get("persistence_mode"), str)
               and g["persistence_mode"].lower() == "disabled"]
    if persist:
        out.append(finding(WARN, "persistence", node,
                           f"{node}: persistence mode is off on GPU "
                           f"{', '.join(str(g.get('index')) for g in persist)}, so the driver "
                           f"unloads between jobs and each start pays for loading it; enable it "
                           f"(nvidia-smi -pm 1, or run nvidia-persistenced)."))
    out += grade_nvlink(node, gpus, health.get("nvlink"))
    out += grade_fabric(node, health.get("fabric"))
    out += grade_xids(node, gpus, health.get("xid"))
    out += grade_dcgm(node, health.get("dcgm"))
    order = {FAIL: 0, WARN: 1, INFO: 2}
    return sorted(out, key=lambda f: order[f["grade"]])


# --------------------------------------------------------------------------- NCCL floor
# All-reduce bus bandwidth (nccl-tests all_reduce_perf, large messages) that healthy nodes reach.
# Each row: (name substring, needs NVLink, GPUs (0: any), expected GB/s, source). The NVLink
# figures are without NVLS (NCCL_NVLS_ENABLE=0: ring), the lower of NCCL's two paths, because
# nccl_check never sets it and some sites turn NVLS off; with NVLS, 8 Hopper GPUs reach ~480.
EXPECTED_BUSBW = [
    ("B200", True, 8, 680.0,
     "NVLink5: Azure ND GB200 v6 all_reduce_perf 8 GiB ring 679.61 GB/s "
     "(Azure/AI-benchmarking-guide Azure_Results/ND_GB200_v6_results.md); 8 x B200 report "
     "830+ with NVLS (NVIDIA/nccl#1807)"),
    ("H200", True, 8, 370.0,
     "NVLink4 8-GPU: ~370 GB/s ring, ~480 with NVLS (NCCL maintainer, NVIDIA/nccl-tests#212); "
     "Azure ND H200 v5 NVLS 479.98 at 8 GiB (Azure/AI-benchmarking-guide)"),
    ("H100", True, 8, 370.0,
     "NVLink4 8-GPU: ~370 GB/s ring, ~480 with NVLS (NCCL maintainer, NVIDIA/nccl-tests#212); "
     "Azure ND H100 v5 NVLS 478.87 at 8 GiB (Azure/AI-benchmarking-guide)"),
    ("", False, 0, 28.0,
     "PCIe Gen5 without NVLink: 28 GB/s for 8 GPUs, bound by the host's CPU and memory "
     "(NVIDIA/nccl#1639)"),
]
FLOOR_FRACTION = 0.8


def nccl_expected(gpu_name: str | None, count: int, nvlink: bool) -> tuple:
    """(expected busbw GB/s, source) for this GPU model, count and topology; (None, why) when
    nothing published matches."""
    name = gpu_name or ""
    for sub, needs_nvlink, n, busbw, source in EXPECTED_BUSBW:
        if sub and sub not in name:
            continue
        if needs_nvlink != bool(nvlink) or (n and n != count):
            continue
        return busbw, source
    return None, f"no published figure for {count} x {name or 'unknown GPU'}" \
                 f" {'with' if nvlink else 'without'} NVLink"


def nccl_floor(recipe_floor, gpu_name, count, nvlink) -> tuple:
    """(floor GB/s, expected GB/s or None, where the floor comes from). A recipe's explicit
    `nccl_busbw_floor_gbps` wins; otherwise FLOOR_FRACTION of the expected figure."""
    expected, source = nccl_expected(gpu_name, count, nvlink)
    if recipe_floor is not None:
        return float(recipe_floor), expected, "the recipe's nccl_busbw_floor_gbps"
    if expected is None:
        pcie, src = nccl_expected("", count, False)
        return FLOOR_FRACTION * pcie, None, f"{source}; the PCIe figure ({src}) is used"
    return FLOOR_FRACTION * expected, expected, source
