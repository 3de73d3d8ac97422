"""GPU telemetry during training: judge each round of `gpuhealth.py sample` from every node.

Pure: samples and times in, findings out, so that it is tested without a GPU or a trigger. The
trigger keeps one GpuWatch per supervised job and stores its state in progress.json, so that a
restarted triggerer neither forgets the ECC baseline nor alerts the same Xid twice.

What it finds:
- new uncorrectable ECC errors or new Xid events: an alert at once, naming node and GPU, since
  they often come minutes before the job dies of them;
- the NCCL-hang signature: every GPU of a node pinned at high utilization while drawing close to
  idle power (a collective spinning in its wait loop, not computing), with no rollout line: after
  `hang_timeout` this ends the job as STALLED (a retry resumes), well before `stall_timeout`;
- a node whose GPUs sit idle while another node's train (all recipes are colocated, so every
  node computes in every phase);
- a compact summary per node for the task log and the training view.
"""
from __future__ import annotations

from slimeflow.health import XIDS

HANG_UTIL = 90.0         # % utilization that a spinning NCCL kernel shows
HANG_POWER_FRACTION = 0.3  # ... while drawing under this fraction of the power limit
IDLE_UTIL = 5.0          # % at or under which a GPU counts as idle
BUSY_UTIL = 50.0         # % mean over a node's GPUs at which that node counts as training
IDLE_SAMPLES = 3         # idle this many sample intervals while others train: named


def node_summary(sample: dict) -> dict:
    """{"gpus", "util", "util_min", "power_w", "power_limit_w", "mem_used_mib",
    "mem_total_mib"} from one node's sample; "error" when it gave none."""
    gpus = sample.get("gpus") or []
    if not gpus:
        return {"error": sample.get("error") or "no GPU answered"}

    def nums(field):
        return [g[field] for g in gpus if isinstance(g.get(field), (int, float))]
    util, power, limit = nums("utilization.gpu"), nums("power.draw"), nums("power.limit")
    used, total = nums("memory.used"), nums("memory.total")
    return {
        "gpus": len(gpus),
        "util": round(sum(util) / len(util), 1) if util else None,
        "util_min": min(util) if util else None,
        "power_w": round(sum(power) / len(power), 1) if power else None,
        "power_limit_w": round(sum(limit) / len(limit), 1) if limit else None,
        "mem_used_mib": sum(used) if used else None,
        "mem_total_mib": sum(total) if total else None,
    }


def hang_signature(sample: dict) -> bool:
    """Every GPU of the node at >= HANG_UTIL % while drawing under HANG_POWER_FRACTION of its
    power limit. Unknown power (N/A) is never a hang."""
    gpus = sample.get("gpus") or []
    if not gpus:
        return False
    for g in gpus:
        u, p, lim = g.get("utilization.gpu"), g.get("power.draw"), g.get("power.limit")
        if not all(isinstance(x, (int, float)) for x in (u, p, lim)) or lim <= 0:
            return False
        if u < HANG_UTIL or p > HANG_POWER_FRACTION * lim:
            return False
    return True


def summary_line(node: str, s: dict, new_ecc: int = 0, new_xid: int = 0) -> str:
    if s.get("error"):
        return f"[{node}] GPUs: no sample ({s['error']})"
    gib = 1024.0
    mem = ("?" if s.get("mem_used_mib") is None else
           f"{s['mem_used_mib'] / gib:.1f}/{(s.get('mem_total_mib') or 0) / gib:.0f} GiB")
    power = "?" if s.get("power_w") is None else f"{s['power_w']:.0f}/{s.get('power_limit_w') or 0:.0f} W"
    return (f"[{node}] GPUs: {s.get('gpus')} x util {s.get('util')}% (min {s.get('util_min')}%), "
            f"power {power} avg, memory {mem}, new ECC {new_ecc}, new Xid {new_xid}")


class GpuWatch:
    def __init__(self, nodes: list, hang_timeout: float, state: dict | None = None,
                 idle_after: float = 180.0):
        self.nodes = list(nodes)
        self.hang_timeout = float(hang_timeout)
        self.idle_after = float(idle_after)
        st = state or {}
        # {node: {gpu index (str): uncorrectable volatile count}} at the first sample
        self.ecc = {n: dict(v) for n, v in (st.get("ecc") or {}).items()}
        # {node: seconds since boot of the newest Xid already reported}
        self.xid_after = dict(st.get("xid_after") or {})
        self.hang_since = dict(st.get("hang_since") or {})
        self.idle_since = dict(st.get("idle_since") or {})
        self.idle_named = set(st.get("idle_named") or [])
        self.summary = dict(st.get("summary") or {})

    def state(self) -> dict:
        return {"ecc": self.ecc, "xid_after": self.xid_after, "hang_since": self.hang_since,
                "idle_since": self.idle_since, "idle_named": sorted(self.idle_named),
                "summary": self.summary}

    def observe(self, samples: dict, now: float, last_progress_at: float | None) -> dict:
        """samples: {node: sample dict, or {"error": text}}. Returns {"alerts": [sentence],
        "idle": [sentence], "hang": sentence or None, "lines": [summary line]}."""
        alerts, idle, lines = [], [], []
        summaries = {}
        for node in self.nodes:
            s = samples.get(node)
            if s is None:
                continue
            summ = node_summary(s)
            new_ecc = self._new_ecc(node, s, alerts)
            new_xid = self._new_xid(node, s, alerts)
            summ.update(t=now, new_ecc=new_ecc, new_xid=new_xid,
                        hang=hang_signature(s), xid_readable=(s.get("xid") or {}).get("readable"))
            summaries[node] = summ
            lines.append(summary_line(node, summ, new_ecc, new_xid))
            if summ["hang"]:
                self.hang_since.setdefault(node, now)
            else:
                self.hang_since.pop(node, None)
        self.summary.update(summaries)
        idle += self._idle_nodes(summaries, now)
        return {"alerts": alerts, "idle": idle, "hang": self._hang(now, last_progress_at),
                "lines": lines}

    def _new_ecc(self, node, s, alerts) -> int:
        base = self.ecc.setdefault(node, {})
        new_total = 0
        for g in s.get("gpus") or []:
            v = g.get("ecc.errors.uncorrected.volatile.total")
            if not isinstance(v, int):
                continue
            key = str(g.get("index"))
            if key not in base:
                base[key] = v  # the first sample is the baseline: preflight judged what was there
                continue
            if v > base[key]:
                new = v - base[key]
                new_total += new
                alerts.append(f"{node}: GPU {g.get('index')} ({g.get('pci.bus_id')}) logged {new} "
                              f"new uncorrectable ECC error{'s' if new != 1 else ''} during "
                              f"training ({v} since the driver loaded); the job may die of it: "
                              f"drain {node} and reset or RMA that GPU before the next run.")
                base[key] = v
        return new_total

    def _new_xid(self, node, s, alerts) -> int:
        xid = s.get("xid") or {}
        if not xid.get("readable"):
            return 0
        after = self.xid_after.get(node)
        events = [e for e in xid.get("events") or []
                  if after is None or (isinstance(e.get("t"), (int, float)) and e["t"] > after)]
        by_bus = {str(g.get("pci.bus_id") or "")[:10]: g.get("index") for g in s.get("gpus") or []}
        times = [e["t"] for e in xid.get("events") or [] if isinstance(e.get("t"), (int, float))]
        if after is None:
            # the first sample: the mark check_cluster took is missing; older events were judged
            # by preflight, so only the cursor moves
            self.xid_after[node] = s.get("uptime") or max(times, default=0.0)
            return 0
        for e in events:
            name, grade, todo = XIDS.get(e.get("xid"), (None, "warn", "look it up in NVIDIA's "
                                                                      "Xid catalog"))
            gpu = by_bus.get(e.get("pci"))
            who = f"GPU {gpu} ({e.get('pci')})" if gpu is not None else f"the GPU at {e.get('pci')}"
            alerts.append(f"{node}: {who} logged Xid {e.get('xid')}"
                          f"{f' ({name})' if name else ''} during training: "
                          f"{(e.get('text') or '')[:160]}; {todo}"
                          f"{'; the job will likely fail' if grade == 'fail' else ''}.")
        if times:
            self.xid_after[node] = max([after] + times)
        return len(events)

    def _idle_nodes(self, summaries, now) -> list:
        if len(self.nodes) < 2:
            return []
        busy = {n: s for n, s in summaries.items()
                if isinstance(s.get("util"), (int, float)) and s["util"] >= BUSY_UTIL}
        out = []
        for node, s in summaries.items():
            u = s.get("util")
            if not isinstance(u, (int, float)) or u > IDLE_UTIL or not busy or node in busy:
                self.idle_since.pop(node, None)
                self.idle_named.discard(node)
                continue
            since = self.idle_since.setdefault(node, now)
            if now - since >= self.idle_after and node not in self.idle_named:
                self.idle_named.add(node)
                others = ", ".join(f"{n} at {b['util']:.0f}%" for n, b in sorted(busy.items()))
                out.append(f"{node}'s GPUs have been idle ({u:.0f}% utilization, "
                           f"{s.get('power_w')} W) for {now - since:.0f} s while {others} "
                           f"train{'s' if len(busy) == 1 else ''}; its training actors may have "
                           f"died or hung outside NCCL: look at the Ray workers on {node}.")
        return out

    def _hang(self, now, last_progress_at) -> str | None:
        quiet = now - float(last_progress_at or now)
        for node, since in sorted(self.hang_since.items(), key=lambda kv: kv[1]):
            held = now - float(since)
            if held >= self.hang_timeout and quiet >= self.hang_timeout:
                s = self.summary.get(node) or {}
                return (f"the GPUs of {node} have sat at {s.get('util')}% utilization while "
                        f"drawing {s.get('power_w')} W of {s.get('power_limit_w')} W for "
                        f"{held:.0f} s with no rollout line for {quiet:.0f} s (hang_timeout "
                        f"{self.hang_timeout:.0f} s): a collective waiting on a peer, not "
                        f"computing")
        return None
