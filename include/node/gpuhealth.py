#!/usr/bin/env python3
"""GPU health facts of this node, as ONE JSON object. Stdlib only, Python 3.8+.

    python3 gpuhealth.py check [--dcgm-level 0|1|2]   # preflight: every health field
    python3 gpuhealth.py sample [--xid-after T]       # during training: cheap telemetry

Facts only: grading (fail / warn / info, and the sentence on-call reads) happens in the plugin
(slimeflow/health.py), which knows the node's name and the run's settings.

Sources, per GPU:
- `nvidia-smi --query-gpu=<fields> --format=csv,noheader,nounits`: ECC, retired pages, row
  remapping, PCIe link, clock event reasons, persistence mode, utilization, power, memory. A
  field this driver does not know is answered `Field "x" is not a valid field to query.`; it is
  dropped (its old name tried, for the clock reasons renamed in R535) and reported as missing,
  so an old driver gives "unknown", never a pass.
- `nvidia-smi nvlink --status`: each link's speed, or `<inactive>`.
- `nvidia-smi -q`: the Fabric section (State, Status) of NVSwitch systems.
- the kernel log (`dmesg`): NVRM Xid lines. Not readable -> readable=false with the reason,
  never an empty (healthy-looking) list.
- `dcgmi diag -r N -j` when asked for and dcgmi exists.
Every subprocess has a timeout; the JSON is always printed and the exit status is 0.
"""
import argparse
import csv
import io
import json
import os
import re
import subprocess
import sys
import time

NVSMI_TIMEOUT = 30.0
DMESG_TIMEOUT = 15.0
XID_KEEP = 200  # the newest Xid lines kept; a flapping GPU can log thousands

HEALTH_FIELDS = [
    "index", "pci.bus_id", "name",
    "ecc.mode.current",
    "ecc.errors.uncorrected.volatile.total", "ecc.errors.uncorrected.aggregate.total",
    "retired_pages.pending",
    "remapped_rows.pending", "remapped_rows.failure", "remapped_rows.uncorrectable",
    "pcie.link.gen.current", "pcie.link.gen.max", "pcie.link.width.current",
    "pcie.link.width.max",
    "clocks_event_reasons.hw_thermal_slowdown", "clocks_event_reasons.hw_power_brake_slowdown",
    "clocks_event_reasons.sw_thermal_slowdown",
    "persistence_mode",
    "utilization.gpu", "power.draw", "power.limit", "memory.used", "memory.total",
    "temperature.gpu",
]
SAMPLE_FIELDS = [
    "index", "pci.bus_id", "utilization.gpu", "power.draw", "power.limit", "memory.used",
    "memory.total", "ecc.errors.uncorrected.volatile.total",
]
# R535 renamed clocks_throttle_reasons.* to clocks_event_reasons.*; older drivers know only these
OLD_NAMES = {f: f.replace("clocks_event_reasons.", "clocks_throttle_reasons.")
             for f in HEALTH_FIELDS if f.startswith("clocks_event_reasons.")}
_NA = ("", "[N/A]", "N/A", "[Not Supported]", "Not Supported", "[Unknown Error]",
       "[Insufficient Permissions]", "Unknown Error")
INVALID_FIELD = re.compile(r'Field "([^"]+)" is not a valid field to query')
# NVIDIA's driver logs `NVRM: Xid (PCI:0000:9d:00): 79, pid=..., name=..., <text>`
# (docs.nvidia.com/deploy/xid-errors); dmesg prefixes `[seconds since boot]`.
XID_LINE = re.compile(r"NVRM: Xid \(PCI:([0-9A-Fa-f]{4}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2})[^)]*\):"
                      r"\s*(\d+)\s*,?\s*(.*)")
DMESG_TIME = re.compile(r"^\[\s*(\d+\.\d+)\]\s?")


def run_cmd(argv, timeout):
    """dict(rc, out, err, error); never raises."""
    try:
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           stdin=subprocess.DEVNULL, timeout=timeout)
    except FileNotFoundError:
        return {"rc": None, "out": "", "err": "", "error": "%s is missing (not on PATH)" % argv[0]}
    except subprocess.TimeoutExpired:
        return {"rc": None, "out": "", "err": "",
                "error": "%s timed out after %g s" % (" ".join(argv[:2]), timeout)}
    except OSError as e:
        return {"rc": None, "out": "", "err": "", "error": "could not run %s: %s" % (argv[0], e)}
    return {"rc": p.returncode, "out": p.stdout.decode("utf-8", "replace"),
            "err": p.stderr.decode("utf-8", "replace"), "error": None}


def _first_line(text):
    for line in (text or "").splitlines():
        if line.strip():
            return line.strip()
    return ""


def value(raw):
    """A csv cell as a number, a word, or None for N/A-like answers."""
    raw = (raw or "").strip()
    if raw in _NA:
        return None
    try:
        f = float(raw)
    except ValueError:
        return raw
    return int(f) if f.is_integer() and "." not in raw else f


# --------------------------------------------------------------------------- nvidia-smi
def query(fields, timeout=None):
    """(rows, missing, error): rows are {canonical field: value}; missing lists the fields this
    driver does not know (each retried under its pre-R535 name first)."""
    asked = list(fields)
    names = {f: f for f in asked}  # canonical -> the name nvidia-smi is asked for
    missing = []
    for _ in range(len(asked) + 1):
        res = run_cmd(["nvidia-smi", "--query-gpu=" + ",".join(names[f] for f in asked),
                       "--format=csv,noheader,nounits"], timeout or NVSMI_TIMEOUT)
        if res["error"]:
            return [], missing, res["error"]
        bad = INVALID_FIELD.search(res["out"] + res["err"])
        if bad:
            name = bad.group(1)
            canon = next((f for f in asked if names[f] == name), None)
            if canon is None:
                return [], missing, "nvidia-smi rejected field %s" % name
            if canon in OLD_NAMES and names[canon] != OLD_NAMES[canon]:
                names[canon] = OLD_NAMES[canon]
            else:
                asked.remove(canon)
                missing.append(canon)
            continue
        if res["rc"] != 0:
            return [], missing, "nvidia-smi failed (exit %s): %s" % (
                res["rc"], _first_line(res["err"]) or _first_line(res["out"]) or "no output")
        rows = []
        for cells in csv.reader(io.StringIO(res["out"]), skipinitialspace=True):
            if len(cells) != len(asked):
                continue
            row = {f: value(c) for f, c in zip(asked, cells)}
            if isinstance(row.get("index"), int):
                if isinstance(row.get("pci.bus_id"), str):
                    row["pci.bus_id"] = short_bus_id(row["pci.bus_id"])
                rows.append(row)
        if not rows:
            return [], missing, "nvidia-smi listed no GPUs: %s" % (
                _first_line(res["out"]) or "empty output")
        return rows, missing, None
    return [], missing, "nvidia-smi kept rejecting fields"


def short_bus_id(bus_id):
    """'00000000:9D:00.0' -> '0000:9d:00.0' (the spelling of lspci and of Xid lines)."""
    m = re.match(r"^(?:[0-9A-Fa-f]{4})?([0-9A-Fa-f]{4}):([0-9A-Fa-f]{2}):([0-9A-Fa-f]{2})\.(\d)$",
                 bus_id.strip())
    if not m:
        return bus_id.strip().lower()
    return ("%s:%s:%s.%s" % m.groups()).lower()


NVLINK_GPU = re.compile(r"^GPU (\d+):")
NVLINK_LINK = re.compile(r"^\s*Link (\d+):\s*(.*)$")


def parse_nvlink_status(text):
    """{gpu index: {"active": n, "inactive": [link ids]}} from `nvidia-smi nvlink --status`."""
    out, cur = {}, None
    for line in text.splitlines():
        m = NVLINK_GPU.match(line)
        if m:
            cur = int(m.group(1))
            out[cur] = {"active": 0, "inactive": []}
            continue
        m = NVLINK_LINK.match(line)
        if m and cur is not None:
            state = m.group(2).strip().lower()
            if "inactive" in state or state in ("", "n/a"):
                out[cur]["inactive"].append(int(m.group(1)))
            else:
                out[cur]["active"] += 1
    return out


def parse_fabric(text):
    """{"state", "status"} of the first GPU's Fabric section in `nvidia-smi -q`, or None when
    the driver prints none (pre-R535, or no NVSwitch)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip() == "Fabric":
            indent = len(line) - len(line.lstrip())
            got = {}
            for sub in lines[i + 1:]:
                if sub.strip() and len(sub) - len(sub.lstrip()) <= indent:
                    break
                k, sep, v = sub.partition(":")
                if sep:
                    got[k.strip().lower()] = value(v)
            return {"state": got.get("state"), "status": got.get("status")}
    return None


# --------------------------------------------------------------------------- kernel log
def parse_xids(text):
    """[{"t": seconds since boot or None, "pci": "0000:9d:00", "xid": 79, "text": ...}]"""
    events = []
    for line in text.splitlines():
        t = None
        m = DMESG_TIME.match(line)
        if m:
            t = float(m.group(1))
        x = XID_LINE.search(line)
        if x:
            events.append({"t": t, "pci": x.group(1).lower(), "xid": int(x.group(2)),
                           "text": x.group(3).strip()[:300]})
    return events


def kernel_xids():
    """{"readable", "source", "error", "events", "count"} from `dmesg`, which reads /dev/kmsg
    itself (util-linux). Where the kernel restricts it (kernel.dmesg_restrict=1 and no
    CAP_SYSLOG) every other way in is closed too, and the answer is unreadable, never empty."""
    res = run_cmd(["dmesg"], DMESG_TIMEOUT)
    if res["error"] is None and res["rc"] == 0:
        ev = parse_xids(res["out"])
        return {"readable": True, "source": "dmesg", "error": None, "events": ev[-XID_KEEP:],
                "count": len(ev)}
    why = res["error"] or _first_line(res["err"]) or "dmesg exited %s" % res["rc"]
    return {"readable": False, "source": None, "error": why, "events": [], "count": None}


# --------------------------------------------------------------------------- dcgmi
def parse_dcgm(text):
    """(results, error): the non-passing results of `dcgmi diag -j`, as
    [{"test", "status", "gpu", "info"}]. DCGM 4 nests them under "DCGM Diagnostic" ->
    test_categories -> tests -> results (entity_id, status Pass/Skip/Fail, warnings
    [{"warning"}]); DCGM 3 under "DCGM GPU Diagnostic" with gpu_id (NVIDIA/DCGM dcgmi/Diag.cpp,
    nvvs/include/NvvsJsonStrings.h). A Warn is reported as Fail by DCGM itself."""
    try:
        data = json.loads(text[text.index("{"):])
    except ValueError:
        return None, "no JSON"
    root = data.get("DCGM Diagnostic") or data.get("DCGM GPU Diagnostic") or {}
    if root.get("runtime_error"):
        return None, str(root["runtime_error"])[:300]
    found, seen = [], set()
    for cat in root.get("test_categories") or []:
        for test in cat.get("tests") or []:
            for r in test.get("results") or []:
                status = str(r.get("status") or "")
                if status.lower() not in ("fail", "warn", "warning"):
                    continue
                warns = r.get("warnings") or []
                info = "; ".join(str(w.get("warning") or w.get("warnings") or w)
                                 if isinstance(w, dict) else str(w) for w in warns)
                gpu = r.get("entity_id", r.get("gpu_id"))
                key = (test.get("name"), gpu, info)
                if key in seen:
                    continue
                seen.add(key)
                found.append({"test": test.get("name"), "status": status,
                              "gpu": None if gpu is None else int(gpu), "info": info[:300]})
    return found, None


def dcgm_diag(level):
    res = run_cmd(["dcgmi", "diag", "-r", str(level), "-j"], 900 if level >= 2 else 300)
    if res["error"] and "missing" in res["error"]:
        return {"ran": False, "level": level, "error": "dcgmi is not installed"}
    if res["error"]:
        return {"ran": False, "level": level, "error": res["error"]}
    results, why = parse_dcgm(res["out"])
    if results is None:
        return {"ran": False, "level": level, "rc": res["rc"],
                "error": "dcgmi diag failed (exit %s): %s" % (
                    res["rc"], why if why != "no JSON" else
                    (_first_line(res["err"]) or _first_line(res["out"])))}
    return {"ran": True, "level": level, "rc": res["rc"], "problems": results}


# --------------------------------------------------------------------------- modes
def check(dcgm_level=0):
    t0 = time.time()
    out = {"mode": "check", "gpus": [], "missing_fields": [], "error": None, "nvlink": None,
           "nvlink_error": None, "fabric": None, "xid": None, "dcgm": None}
    rows, out["missing_fields"], out["error"] = query(HEALTH_FIELDS)
    out["gpus"] = rows
    if rows:
        res = run_cmd(["nvidia-smi", "nvlink", "--status"], NVSMI_TIMEOUT)
        if res["error"] or res["rc"] != 0:
            out["nvlink_error"] = res["error"] or _first_line(res["err"] + res["out"])
        else:
            out["nvlink"] = {str(k): v for k, v in parse_nvlink_status(res["out"]).items()}
        res = run_cmd(["nvidia-smi", "-q"], NVSMI_TIMEOUT)
        if res["error"] is None and res["rc"] == 0:
            out["fabric"] = parse_fabric(res["out"])
    out["xid"] = kernel_xids()
    if dcgm_level:
        out["dcgm"] = dcgm_diag(dcgm_level)
    out["uptime"] = uptime()
    out["seconds"] = round(time.time() - t0, 3)
    return out


def uptime():
    try:
        with open("/proc/uptime") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def sample(xid_after=None):
    t0 = time.time()
    rows, missing, err = query(SAMPLE_FIELDS)
    xid = kernel_xids()
    if xid["readable"] and xid_after is not None:
        xid["events"] = [e for e in xid["events"] if e["t"] is None or e["t"] > xid_after]
    return {"mode": "sample", "time": t0, "uptime": uptime(), "gpus": rows,
            "missing_fields": missing, "error": err, "xid": xid,
            "seconds": round(time.time() - t0, 3)}


def main(argv=None):
    ap = argparse.ArgumentParser(description="slimeflow GPU health")
    sub = ap.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("check")
    c.add_argument("--dcgm-level", type=int, choices=(0, 1, 2), default=0)
    s = sub.add_parser("sample")
    s.add_argument("--xid-after", type=float, default=None,
                   help="only Xid events logged after this many seconds since boot")
    a = ap.parse_args(argv)
    try:
        result = check(a.dcgm_level) if a.mode == "check" else sample(a.xid_after)
    except Exception as e:  # pragma: no cover - every part above is guarded
        result = {"mode": a.mode, "error": "gpuhealth crashed: %s: %s" % (type(e).__name__, e)}
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
