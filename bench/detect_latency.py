"""Detection latency of `train`: a training actor killed -> task instance failed, through a live
Airflow (scheduler, api-server, triggerer; the harness of tests/integration/test_supervision.py)
and the simulated cluster (real Ray 2.60) over real SSH.

    .venv/bin/python bench/detect_latency.py [--runs 5] [--poll 5 15] [--fault kill-actor]

For each poll interval and measurement: trigger a DAG run (training resumes from the previous
checkpoint), wait until `train` is deferred and training, SIGKILL one MegatronTrainRayActor
(`--fault kill-trainer`: slime's driver instead), and time until the
REST API reports the task `failed`, then until the failure alert reaches a loopback Slack webhook. Prints median/min/max per poll
interval. The REST poll adds up to 0.25 s.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]

from tests.integration.test_supervision import (LiveAirflow, PORT, latest_iteration,  # noqa
                                                wait_training)
from tests.simcluster.airflow_run import VENV_BIN, airflow_env, run_conf  # noqa: E402
from tests.simcluster.cluster import SimCluster  # noqa: E402
from tests.e2e.loopback import WebhookSink  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--poll", type=int, nargs="+", default=[5, 15])
    ap.add_argument("--fault", default="kill-actor", choices=["kill-actor", "kill-trainer"])
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="detect-latency-"))
    cluster = SimCluster.up(tmp / "cluster", nodes=1, gpu="H100", rollout_seconds=0.25)
    home = tmp / "airflow"
    home.mkdir()
    env = airflow_env(cluster, home)
    env.update({"AIRFLOW__CORE__EXECUTOR": "LocalExecutor", "AIRFLOW__CORE__PARALLELISM": "2",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{PORT}/execution/",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
                "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": "0"})
    subprocess.run([str(VENV_BIN / "airflow"), "db", "migrate"], env=env, check=True,
                   capture_output=True)
    # the failure alert goes to a loopback Slack webhook; its arrival is timed after the failure
    sink = WebhookSink().__enter__()
    env["AIRFLOW_CONN_SLIMEFLOW_SLACK"] = sink.conn_json()
    af = LiveAirflow(env, home)
    af.cluster = cluster
    results, alerts = {}, {}
    try:
        af.up()
        for poll in a.poll:
            lat = []
            for i in range(a.runs):
                # a fresh DAG run per kill: each failure is distinct, so each one is alerted
                # (the notifier de-duplicates the same failure of the same run)
                total = latest_iteration(cluster) + 1 + 100000
                run_id = af.trigger(run_conf(cluster, num_rollout=total, save_interval=2,
                                             poll_interval=poll, lease_wait_minutes=0))
                wait_training(af, run_id, rollouts=2, timeout=180)
                time.sleep(poll * (i / a.runs))  # spread the kill over the poll cycle
                cluster.fault(a.fault, node=0)
                t0 = time.time()
                seen = len(sink.posts)
                af.wait_ti(run_id, "train", "failed", poll + 60)
                t1 = time.time()
                lat.append(t1 - t0)
                end = t1 + 30
                while len(sink.posts) <= seen and time.time() < end:
                    time.sleep(0.05)
                got = len(sink.posts) > seen
                if got:
                    alerts.setdefault(poll, []).append(time.time() - t1)
                print(f"poll {poll:>2}s run {i + 1}: {lat[-1]:.1f} s; alert "
                      f"{'+%.2f s later' % alerts[poll][-1] if got else 'not received in 30 s'}",
                      flush=True)
                af.wait_run(run_id, 120)
            results[poll] = lat
    finally:
        af.down()
        cluster.down()
        sink.__exit__()
    print("\n| poll_interval | runs | median | min | max |\n|---|---|---|---|---|")
    for poll, lat in results.items():
        print(f"| {poll} s | {len(lat)} | {statistics.median(lat):.1f} s | {min(lat):.1f} s | "
              f"{max(lat):.1f} s |")
    print("\n| poll_interval | alerts | median after the failure | max |\n|---|---|---|---|")
    for poll, d in alerts.items():
        print(f"| {poll} s | {len(d)} | {statistics.median(d):.2f} s | {max(d):.2f} s |")


if __name__ == "__main__":
    main()
