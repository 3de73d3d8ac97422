#!/usr/bin/env python3
"""Fan-out: the preflight stage on 16 simulated nodes vs on 1 node.

    .venv/bin/python bench/fanout.py [--runs 5] [--nodes 16]

What is timed: the preflight stage as Airflow maps it, one PreflightOperator instance per node
(`PreflightOperator.partial(...).expand(node=...)`), all instances started at once, each in its
own thread, each running the operator's own execute body (run config from the params,
connection lookup from AIRFLOW_CONN_*, SFTP upload of include/node into a content-addressed
folder, node lease, `probe.py` over SSH). With a deployment's executor the mapped instances run
in parallel worker slots; `airflow dags test` would run them one after another, which measures
dags test, not us. Task-process start-up (the same for 1 or 16 nodes per instance) is not in
this figure.

Samples alternate 1 node / N nodes, each on a fresh base_folder (so the upload is a real one and
no lease is left over). 1-node samples use node 0 of the same N-node cluster.

All simulated nodes share this machine's cores, so the node-side work (sshd, SFTP, the probe's
python3 and its subprocesses) of N nodes competes for them; a real cluster gives every node its
own. The script therefore also reports the machine's busy CPU-seconds per stage (/proc/stat) and
the CPU floor: N nodes' busy CPU-seconds / cores, the shortest the stage can be here.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "plugins"))

from tests.simcluster.airflow_run import run_conf  # noqa: E402
from tests.simcluster.cluster import SimCluster  # noqa: E402


def cpu_busy() -> float:
    """Busy CPU-seconds of the whole machine so far (all cores)."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + vals[4]
    return (sum(vals[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """CPU-seconds of a process plus its reaped children (utime, stime, cutime, cstime)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def node_cpu(cluster, n_nodes: int) -> float:
    """Node-side CPU: every sshd listener with its reaped sessions (SFTP, runner, probe and the
    probe's subprocesses all end as reaped descendants of the listener)."""
    return sum(proc_cpu(cluster.listener_pid(i) or 0) for i in range(n_nodes))


def self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def stage(cluster, recipe: str, params: dict, nodes: list, tag: str) -> dict:
    from slimeflow.operators.preflight import PreflightOperator

    results, errors, per_node = {}, {}, {}

    def one(node):
        t0 = time.perf_counter()
        op = PreflightOperator(task_id=f"preflight_{node}", node=node)
        op.recipe = recipe  # outside a DAG: no DAG to take the recipe from
        ctx = {"params": params, "dag": SimpleNamespace(dag_id="bench_fanout"),
               "run_id": tag, "ti": None, "task_instance": None, "map_index": nodes.index(node)}
        try:
            # SlimeOperator.execute's body; calling execute() outside a task runner only adds
            # Airflow's "cannot be called outside of the Task Runner" warning
            cfg = op.run_config(ctx)
            try:
                results[node] = op.work(cfg, ctx)
            finally:
                op.close_hooks()
        except Exception as e:  # noqa: BLE001 - reported below
            errors[node] = f"{type(e).__name__}: {e}"
        per_node[node] = time.perf_counter() - t0

    c0, s0, n0, t0 = cpu_busy(), self_cpu(), node_cpu(cluster, len(cluster.conn_ids)), \
        time.perf_counter()
    threads = [threading.Thread(target=one, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    wall, cpu, scpu = time.perf_counter() - t0, cpu_busy() - c0, self_cpu() - s0
    time.sleep(1.0)  # let sshd reap the finished sessions so their CPU is counted
    ncpu = node_cpu(cluster, len(cluster.conn_ids)) - n0
    if errors or len(results) != len(nodes):
        raise SystemExit(f"preflight failed on {len(errors)} node(s): "
                         + "; ".join(f"{n}: {e}" for n, e in sorted(errors.items()))[:3000])
    return {"wall": wall, "cpu": cpu, "slowest_node": max(per_node.values()), "self": scpu,
            "node": ncpu}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--nodes", type=int, default=16)
    ap.add_argument("--recipe", default="qwen3-next-80b-a3b")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="slimeflow-bench-fanout-"))
    cluster = None
    rows = {1: [], args.nodes: []}
    try:
        t_up = time.perf_counter()
        cluster = SimCluster.up(tmp / "cluster", nodes=args.nodes, gpu="H100", hub=True)
        t_up = time.perf_counter() - t_up
        os.environ.update(cluster.env())
        os.environ.setdefault("AIRFLOW_HOME", str(tmp / "airflow"))
        os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"
        conns = list(cluster.conn_ids)
        k = 0
        for _ in range(args.runs + 1):  # the first round warms up and is dropped
            for n in (1, args.nodes):
                k += 1
                base = cluster.base_folder / f"s{k}"
                params = run_conf(cluster, nodes=conns[:n], base_folder=str(base))
                params.setdefault("poll_interval", 15)
                row = stage(cluster, args.recipe, params, conns[:n], f"bench-{k}")
                if k > 2:
                    rows[n].append(row)
                shutil.rmtree(base, ignore_errors=True)
            if k > 2:
                print(f"round {k // 2 - 1}: 1 node {rows[1][-1]['wall']:.2f}s, {args.nodes} nodes "
                      f"{rows[args.nodes][-1]['wall']:.2f}s", file=sys.stderr, flush=True)
    finally:
        if cluster is not None:
            cluster.down()
        shutil.rmtree(tmp, ignore_errors=True)

    cores = os.cpu_count() or 1
    med = {n: {m: statistics.median(r[m] for r in rs) for m in ("wall", "cpu", "slowest_node", "self", "node")}
           for n, rs in rows.items()}
    one, many = med[1], med[args.nodes]
    floor = (many["node"] + many["self"]) / cores
    print(f"fan-out: preflight stage (upload + lease + probe), {args.nodes} simulated nodes vs 1, "
          f"median of {args.runs} rounds (alternating), {cores} cores shared by all nodes "
          f"(cluster up in {t_up:.0f}s)")
    print(f"{'nodes':<7}{'wall s':>8}{'ratio':>8}{'orchestrator CPU-s':>20}{'node-side CPU-s':>17}"
          f"{'machine busy CPU-s':>20}")
    for n, m in ((1, one), (args.nodes, many)):
        print(f"{n:<7}{m['wall']:>8.2f}{m['wall'] / one['wall']:>7.2f}x{m['self']:>20.2f}"
              f"{m['node']:>17.2f}{m['cpu']:>20.2f}")
    print(f"CPU floor here for {args.nodes} nodes ((orchestrator + node-side CPU) / {cores} cores): "
          f"{floor:.2f}s "
          f"({floor / one['wall']:.2f}x the 1-node stage); the stage took "
          f"{many['wall'] / max(floor, 1e-9):.2f}x its CPU floor")
    print(f"samples 1: {[round(r['wall'], 2) for r in rows[1]]}, {args.nodes}: "
          f"{[round(r['wall'], 2) for r in rows[args.nodes]]}")
    ratio = many["wall"] / one["wall"]
    print(f"goal {args.nodes} nodes <= 1.5x 1 node: {'MET' if ratio <= 1.5 else 'MISSED'} "
          f"({ratio:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
