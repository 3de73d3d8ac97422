"""Trigger -> `ray job submit` on the head, through a live Airflow (scheduler, dag-processor,
api-server, triggerer as separate processes: what `airflow standalone` starts) and a 1-node
simulated cluster over real SSH.

    .venv/bin/python bench/submit_latency.py [--runs 5]

Each run: POST /api/v2/dags/{id}/dagRuns at t0, then read the job's `start_time` (set when the Ray
Jobs API accepted the submission) from the head's Ray dashboard API. Everything before it is
orchestration: scheduling 11 tasks, preflight, downloads, conversion. Downloads and conversion
are real work here (a ~3 MB model, torchrun with 8 processes), so the figure is an upper bound of
the orchestration's own share. Runs after the first reuse the downloaded model and converted
checkpoint (the skip paths), as a retraining run would. Prints a table with the median.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]

from tests.integration.test_supervision import LiveAirflow, PORT  # noqa: E402
from tests.simcluster.airflow_run import VENV_BIN, airflow_env, run_conf  # noqa: E402
from tests.simcluster.cluster import SimCluster  # noqa: E402


def ray_jobs(head: str) -> list:
    """The head's Jobs API, at the head node's own address (the seed binds the dashboard to
    0.0.0.0)."""
    try:
        with urllib.request.urlopen(f"http://{head}:8265/api/jobs/", timeout=2) as r:
            return json.load(r)
    except OSError:
        return []


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="slimeflow-submit-"))
    cluster = SimCluster.up(tmp / "cluster", nodes=1, gpu="H100", rollout_seconds=0.05)
    home = tmp / "airflow"
    home.mkdir()
    env = airflow_env(cluster, home)
    env.update({
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor", "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{PORT}/execution/",
        "AIRFLOW__API__PORT": str(PORT), "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{PORT}",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": "0",
    })
    subprocess.run([str(VENV_BIN / "airflow"), "db", "migrate"], env=env, check=True,
                   capture_output=True)
    af = LiveAirflow(env, home)
    samples = []
    try:
        af.up()
        for i in range(args.runs):
            conf = run_conf(cluster, num_rollout=2 + i, poll_interval=2)
            t0 = time.time()
            run_id = af.trigger(conf)
            start = None
            while time.time() - t0 < 300 and start is None:
                for job in ray_jobs(cluster.nodes[0]["host"]):
                    if job.get("submission_id", "").startswith("slimeflow-") and \
                            job.get("start_time", 0) / 1000 >= t0:
                        start = job["start_time"] / 1000
                time.sleep(0.1)
            af.wait_run(run_id, timeout=300)
            if start is None:
                print(f"run {i + 1}: no job submitted (states {af.states(run_id)})")
                continue
            samples.append(start - t0)
            print(f"run {i + 1}: trigger -> ray job submit {start - t0:.1f} s "
                  f"({'first run: downloads + conversion' if i == 0 else 'skip paths'})",
                  flush=True)
    finally:
        af.down()
        cluster.down()
    if not samples:
        return 1
    rest = samples[1:] or samples
    print("\n| runs | median | min | max |\n|---|---|---|---|")
    print(f"| all {len(samples)} | {statistics.median(samples):.1f} s | {min(samples):.1f} s | "
          f"{max(samples):.1f} s |")
    print(f"| re-runs {len(rest)} | {statistics.median(rest):.1f} s | {min(rest):.1f} s | "
          f"{max(rest):.1f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
