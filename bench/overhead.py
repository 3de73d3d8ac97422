#!/usr/bin/env python3
"""Orchestration overhead: the full pipeline under `airflow dags test` on a 1-node simulated
cluster vs a one-SSH-task DAG run the same way, plus the re-run of a finished run.

    .venv/bin/python bench/overhead.py [--runs 5] [--dag slime_qwen3_next_80b_a3b]

One simulated node (real sshd on loopback, loopback hub), every remote step near-instant:
rollout_seconds=0.01, num_rollout=1, poll_interval=1 (the smallest the form allows). Each round,
in this order, each a separate `airflow dags test` process on one SQLite AIRFLOW_HOME:
  - cold:     the full pipeline into a fresh base_folder (upload node scripts, probe, judge,
              `hf download` of the generated model and datasets, verify, config check, branch,
              torchrun + converter stand-in, ray start + `ray job submit` + follow, teardown);
  - rerun:    the same conf again (a finished run: every step must skip; hub bytes are counted);
  - baseline: a generated DAG with ONE SSHOperator task (`true` on the same node, same
              connection) in a DAGS_FOLDER of its own.
Goals: cold <= 4x baseline; rerun moves 0 model bytes and takes <= 1.2x baseline.
Also prints the median busy time of each task of the cold run (TaskInstance start/end), so the
remote work and Airflow's own gaps can be told apart.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "plugins"))

from tests.simcluster.airflow_run import airflow, airflow_env, run_conf  # noqa: E402
from tests.simcluster.cluster import SimCluster  # noqa: E402

BASELINE_DAG = '''"""Baseline: one SSH task against the same simulated node."""
from datetime import datetime

from airflow.sdk import DAG
from airflow.providers.ssh.operators.ssh import SSHOperator

with DAG(dag_id="bench_one_ssh_task", schedule=None, start_date=datetime(2026, 1, 1),
         catchup=False):
    SSHOperator(task_id="one", ssh_conn_id="{conn}", command="true", cmd_timeout=60)
'''

DURATIONS = r"""
import json, sys
from airflow.models.dagrun import DagRun
from airflow.models.taskinstance import TaskInstance
from airflow.utils.session import create_session
from sqlalchemy import select
dag_id = sys.argv[1]
with create_session() as s:
    run = s.scalars(select(DagRun).where(DagRun.dag_id == dag_id).order_by(DagRun.id.desc())
                    .limit(1)).one()
    out = {"run": (run.end_date - run.start_date).total_seconds() if run.end_date else None,
           "state": str(run.state), "tasks": {}}
    for ti in s.scalars(select(TaskInstance).where(TaskInstance.dag_id == dag_id,
                                                   TaskInstance.run_id == run.run_id)):
        key = ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"
        d = (ti.end_date - ti.start_date).total_seconds() if ti.start_date and ti.end_date else 0.0
        out["tasks"][key] = {"s": d, "state": str(ti.state)}
print(json.dumps(out))
"""


def hub(cluster, path, post=False):
    req = urllib.request.Request(cluster.hub_url + path, method="POST" if post else "GET",
                                 data=b"" if post else None)
    with urllib.request.urlopen(req, timeout=10) as r:
        body = r.read()
    return json.loads(body) if body and not post else None


BUSY = "already has something listening on port"


def dags_test(env, dag_id, conf, log_path, tries: int = 4) -> dict:
    """One `airflow dags test`. All simulated nodes share this kernel, so a simulated Ray of
    ANOTHER session on this machine (tests running concurrently) makes our preflight see ports
    6379/8265 busy; such a run is retried after a pause (and counted), never timed."""
    for attempt in range(tries):
        try:
            return _dags_test(env, dag_id, conf, log_path)
        except SystemExit as e:
            if BUSY not in Path(log_path).read_text(errors="replace") or attempt == tries - 1:
                raise
            RETRIED.append(dag_id)
            print(f"{dag_id}: ports 6379/8265 busy (another session's simulated Ray); retrying "
                  f"in 15s", file=sys.stderr, flush=True)
            time.sleep(15)
    raise AssertionError("unreachable")


RETRIED: list = []


def _dags_test(env, dag_id, conf, log_path) -> dict:
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        args = ["dags", "test", dag_id] + (["--conf", json.dumps(conf)] if conf else [])
        res = airflow(env, *args, stdout=log, stderr=subprocess.STDOUT, timeout=600)
    wall = time.perf_counter() - t0
    info = durations(env, dag_id)
    if res.returncode != 0 or "success" not in info["state"]:
        tail = Path(log_path).read_text(errors="replace").splitlines()[-30:]
        raise SystemExit(f"{dag_id} run failed (rc {res.returncode}, {info['state']}); "
                         f"log {log_path}:\n" + "\n".join(tail))
    info["wall"] = wall
    return info


def durations(env, dag_id) -> dict:
    res = subprocess.run([str(Path(sys.executable).parent / "python"), "-c", DURATIONS, dag_id],
                         env=env, capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        raise SystemExit(res.stderr[-2000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def model_gets(stats) -> tuple[int, int]:
    """(files fetched with GET, bytes) over model and dataset repos."""
    gets = sum(f.get("get", 0) for r in stats["repos"].values() for f in r["files"].values())
    return gets, stats["bytes"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dag", default="slime_qwen3_next_80b_a3b")
    ap.add_argument("--keep", action="store_true", help="keep the temp folder (logs)")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="slimeflow-bench-overhead-"))
    cluster = None
    try:
        cluster = SimCluster.up(tmp / "cluster", nodes=1, gpu="H100", rollout_seconds=0.01)
        env = airflow_env(cluster, tmp / "airflow")
        env["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "INFO"
        airflow(env, "db", "migrate", capture_output=True, check=True, timeout=300)
        bdir = tmp / "baseline_dags"
        bdir.mkdir()
        (bdir / "bench_one_ssh_task.py").write_text(BASELINE_DAG.format(conn=cluster.conn_ids[0]))
        benv = dict(env, AIRFLOW__CORE__DAGS_FOLDER=str(bdir))
        # warm-up: .pyc files, page cache, the hub's generated repos
        dags_test(benv, "bench_one_ssh_task", None, tmp / "warm-baseline.log")
        rows = []
        for i in range(args.runs):
            conf = run_conf(cluster, base_folder=str(cluster.base_folder / f"r{i}"),
                            num_rollout=1, save_interval=1, poll_interval=1)
            hub(cluster, "/_sim/reset", post=True)
            cold = dags_test(env, args.dag, conf, tmp / f"cold{i}.log")
            cold_gets, cold_bytes = model_gets(hub(cluster, "/_sim/stats"))
            hub(cluster, "/_sim/reset", post=True)
            rerun = dags_test(env, args.dag, conf, tmp / f"rerun{i}.log")
            re_gets, re_bytes = model_gets(hub(cluster, "/_sim/stats"))
            base = dags_test(benv, "bench_one_ssh_task", None, tmp / f"base{i}.log")
            rows.append({"cold": cold, "rerun": rerun, "base": base, "cold_bytes": cold_bytes,
                         "cold_gets": cold_gets, "rerun_gets": re_gets, "rerun_bytes": re_bytes})
            print(f"round {i}: cold {cold['wall']:.1f}s rerun {rerun['wall']:.1f}s "
                  f"baseline {base['wall']:.1f}s", file=sys.stderr, flush=True)
            shutil.rmtree(cluster.base_folder / f"r{i}", ignore_errors=True)
    finally:
        if cluster is not None:
            cluster.down()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}", file=sys.stderr)

    med = lambda xs: statistics.median(xs)  # noqa: E731
    cold = med(r["cold"]["wall"] for r in rows)
    rerun = med(r["rerun"]["wall"] for r in rows)
    base = med(r["base"]["wall"] for r in rows)
    print(f"orchestration overhead ({args.dag}, 1 simulated node, `airflow dags test`, "
          f"median of {args.runs} rounds)")
    print(f"{'run':<44}{'wall s':>9}{'vs baseline':>13}")
    print(f"{'baseline: one-SSH-task DAG':<44}{base:>9.2f}{1:>12.2f}x")
    print(f"{'full pipeline, cold (downloads, converts)':<44}{cold:>9.2f}{cold / base:>12.2f}x")
    print(f"{'full pipeline, re-run of a finished run':<44}{rerun:>9.2f}{rerun / base:>12.2f}x")
    print(f"cold: {med(r['cold_bytes'] for r in rows) / 1e6:.1f} MB from the hub "
          f"({med(r['cold_gets'] for r in rows)} file GETs); re-run: "
          f"{max(r['rerun_gets'] for r in rows)} file GETs, "
          f"{max(r['rerun_bytes'] for r in rows)} bytes (API listings only) at most")
    tasks = sorted(rows[0]["cold"]["tasks"])
    busy_cold = med(sum(t["s"] for t in r["cold"]["tasks"].values()) for r in rows)
    busy_re = med(sum(t["s"] for t in r["rerun"]["tasks"].values()) for r in rows)
    print(f"{'task (median busy s)':<28}{'cold':>8}{'rerun':>8}")
    for t in tasks:
        c = med(r["cold"]["tasks"].get(t, {"s": 0})["s"] for r in rows)
        rr = med(r["rerun"]["tasks"].get(t, {"s": 0})["s"] for r in rows)
        print(f"{t:<28}{c:>8.2f}{rr:>8.2f}")
    print(f"{'sum of task busy time':<28}{busy_cold:>8.2f}{busy_re:>8.2f}")
    print(f"baseline task busy: {med(r['base']['tasks']['one']['s'] for r in rows):.2f}s")
    print(f"samples cold: {[round(r['cold']['wall'], 1) for r in rows]}, rerun: "
          f"{[round(r['rerun']['wall'], 1) for r in rows]}, baseline: "
          f"{[round(r['base']['wall'], 1) for r in rows]}")
    if RETRIED:
        print(f"{len(RETRIED)} run(s) retried because another session's Ray held ports "
              f"6379/8265 (not timed)")
    ok_cold = cold / base <= 4
    ok_re = rerun / base <= 1.2 and max(r["rerun_gets"] for r in rows) == 0
    print(f"goal cold <= 4x baseline: {'MET' if ok_cold else 'MISSED'} ({cold / base:.2f}x)")
    print(f"goal re-run 0 model bytes and <= 1.2x baseline: {'MET' if ok_re else 'MISSED'} "
          f"({rerun / base:.2f}x, {max(r['rerun_gets'] for r in rows)} file GETs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
