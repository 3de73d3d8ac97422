"""Memory of the simulated cluster: 2 namespaced nodes with real Ray while a job trains.

    .venv/bin/python bench/cluster_memory.py [--runs 5]

The job trains 30 rollouts of 0.2 s, so that the job phase spans many samples.

Each run is `make demo`'s own program (tests.simcluster.demo: 2 simulated H100 nodes, the
flagship DAG under `airflow dags test`, the multi-node layout). Twice a second it sums the memory
of every process of the cluster (both nodes' PID namespaces: sshd, Ray's GCS, raylets, dashboard
and agents, the job's driver and actors; plus the hub). It reports the peak while the job's driver
(`python3 train.py`) runs: summed PSS (shared pages counted once across processes, so the figure
adds up) and summed RSS. Airflow's own processes are outside the cluster and not counted.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]

from tests.simcluster.cluster import procs_of  # noqa: E402
from tests.simcluster.faults import _is_trainer  # noqa: E402


def mem_kb(pid: int) -> tuple[int, int]:
    try:
        pss = rss = 0
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
            elif line.startswith("Rss:"):
                rss = int(line.split()[1])
        return pss, rss
    except (OSError, ValueError):
        return 0, 0


def one_run(state: Path) -> dict:
    demo = subprocess.Popen([sys.executable, "-m", "tests.simcluster.demo", "--state-dir", str(state),
                             "--num-rollout", "30"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak = {"pss_kb": 0, "rss_kb": 0, "procs": 0, "samples": 0}
    cluster = state / "cluster"
    while demo.poll() is None:
        ps = procs_of(cluster) if (cluster / "cluster.json").exists() else []
        if any(_is_trainer(p.cmdline) for p in ps):
            m = [mem_kb(p.pid) for p in ps]
            peak["samples"] += 1
            pss = sum(x[0] for x in m)
            if pss > peak["pss_kb"]:
                peak.update(pss_kb=pss, rss_kb=sum(x[1] for x in m), procs=len(ps))
        time.sleep(0.5)
    out = demo.stdout.read()
    return dict(peak, ok=demo.returncode == 0 and '"checkpoint"' in out)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    rows = []
    for k in range(a.runs):
        with tempfile.TemporaryDirectory(prefix="cluster-mem-", dir="/var/tmp") as d:
            r = one_run(Path(d) / "demo")
        rows.append(r)
        print(json.dumps({"run": k, **r, "load": os.getloadavg()}), flush=True)
    pss = statistics.median(r["pss_kb"] for r in rows) / 1024
    rss = statistics.median(r["rss_kb"] for r in rows) / 1024
    print(f"2-node cluster, job running: peak PSS median {pss:.0f} MiB (RSS {rss:.0f} MiB), "
          f"{statistics.median(r['procs'] for r in rows):.0f} processes; load {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
