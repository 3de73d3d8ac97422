"""How long the real `ray stop` takes on a node whose Ray runs a slime job with its actors, against
the same command on an idle Ray (the baseline, measured in the same run). It sizes
RAY_STOP_TIMEOUT_S, the budget on_kill and teardown give each node's `ray stop`.

    .venv/bin/python bench/ray_stop.py [--runs 3]

Two namespaced nodes (tests/simcluster), real Ray 2.60 started by the flagship DAG's own train
step. Per run: the DAG runs under `airflow dags test` with a num_rollout it cannot reach; once
slime's training actors run on both nodes, `ray stop` runs on both nodes at once (as teardown does)
and each node's time is taken. The DAG then fails (its Ray is gone) and its teardown runs. The
baseline: `ray start` by hand on both nodes (the seed's lines, no job), then the same `ray stop`.
Prints per-node times and medians, and checks that no raylet or gcs_server is left.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]

from tests.simcluster.airflow_run import airflow, airflow_env, dags_test, run_conf  # noqa: E402
from tests.simcluster.cluster import SimCluster  # noqa: E402
from tests.simcluster.faults import train_actors  # noqa: E402

DAG = "slime_qwen3_next_80b_a3b"


def ray_left(cluster, i) -> list:
    return [p.pid for p in cluster.procs(i) if p.cmdline and
            p.cmdline[0].endswith(("/raylet", "/gcs_server"))]


def stop_all(cluster) -> list:
    """`ray stop` on every node at once; seconds per node."""
    def one(i):
        t = time.monotonic()
        rc, out, err = cluster.exec(i, f"cd {cluster.slime_dir} && ray stop", timeout=300)
        took = time.monotonic() - t
        if rc != 0 or ray_left(cluster, i):
            raise SystemExit(f"ray stop on node {i} exit {rc}, left {ray_left(cluster, i)}: "
                             f"{out[-300:]} {err[-300:]}")
        return took
    with ThreadPoolExecutor(len(cluster.nodes)) as pool:
        return list(pool.map(one, range(len(cluster.nodes))))


def idle_ray(cluster):
    head, worker = cluster.nodes[0]["host"], cluster.nodes[1]["host"]
    for i, line in ((0, f"ray start --head --node-ip-address {head} --num-gpus 8 "
                        f"--disable-usage-stats --dashboard-port=8265"),
                    (1, f"ray start --address={head}:6379 --num-gpus 8 --node-ip-address "
                        f"{worker} --disable-usage-stats")):
        rc, out, err = cluster.exec(i, f"cd {cluster.slime_dir} && {line}", timeout=300)
        if rc != 0:
            raise SystemExit(f"ray start on node {i}: {out[-300:]} {err[-300:]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ray-stop-"))
    cluster = SimCluster.up(tmp / "cluster", nodes=2, gpu="H100", storage="shared",
                            rollout_seconds=0.2)
    busy, idle = [], []
    try:
        env = airflow_env(cluster, tmp / "airflow")
        airflow(env, "db", "migrate", capture_output=True, check=True)
        for i in range(a.runs):
            idle_ray(cluster)
            idle.append(stop_all(cluster))
            done = threading.Thread(target=dags_test, args=(
                env, DAG, run_conf(cluster, num_rollout=100000, poll_interval=5),
                tmp / f"run{i}.log"))
            done.start()
            end = time.monotonic() + 900
            while not (train_actors(cluster, 0) and train_actors(cluster, 1)):
                if time.monotonic() > end or not done.is_alive():
                    raise SystemExit(f"no training actors on both nodes; see {tmp}/run{i}.log")
                time.sleep(0.5)
            time.sleep(3)  # a few training steps: the actors hold their state
            busy.append(stop_all(cluster))
            done.join(900)
            print(f"run {i + 1}: idle {', '.join(f'{x:.1f}' for x in idle[-1])} s; with job "
                  f"{', '.join(f'{x:.1f}' for x in busy[-1])} s (head, worker)", flush=True)
    finally:
        cluster.down()
    worst_busy = [max(x) for x in busy]
    worst_idle = [max(x) for x in idle]
    mb, mi = statistics.median(worst_busy), statistics.median(worst_idle)
    print(f"ray stop, slowest node, median of {a.runs}: idle Ray {mi:.1f} s "
          f"({min(worst_idle):.1f}-{max(worst_idle):.1f}); with a job and its actors {mb:.1f} s "
          f"({min(worst_busy):.1f}-{max(worst_busy):.1f}); ratio {mb / mi:.2f}")


if __name__ == "__main__":
    main()
