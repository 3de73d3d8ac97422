#!/usr/bin/env python3
"""Triggerer cost: one event loop supervising N simulated training runs at once (default 50).

    .venv/bin/python bench/triggerer_cost.py [--runs 50] [--poll 15] [--slices 5] [--slice-s 15]

What a triggerer does with our deferred `train` tasks, without the rest of Airflow: N
TrainJobTrigger instances (plugins/slimeflow/triggers/train_job.py, built with the same argv
helpers TrainOperator uses) iterate their `run()` in ONE asyncio loop in this process, each
polling its own Ray job on the simulated head over async SSH (SSHHookAsync / asyncssh, one
connection per trigger) every --poll seconds. The jobs are real `ray job submit --no-wait` jobs
of the Ray stand-in whose entrypoint sleeps (RUNNING for the whole measurement, no log lines),
so no trigger fires.

Measured in this process, over --slices windows of --slice-s seconds once all N are running:
  - memory per supervised run: (RSS with N triggers - RSS with 1 trigger) / (N - 1)
  - CPU share: this process's CPU-seconds / wall seconds (1.0 = one core busy)
and, on the node side, the CPU of the simulated head's sshd and everything it ran (jobwatch.py
per poll), for scale. The Airflow triggerer process itself (~its own baseline) is not counted.
Goal: <= 5 MB per supervised run. Median over the slices.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "plugins"))

from tests.simcluster.airflow_run import run_conf  # noqa: E402
from tests.simcluster.cluster import SimCluster, procs_of  # noqa: E402


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def proc_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def make_triggers(cluster, n: int, poll: float, recipe: str):
    from slimeflow import builders
    from slimeflow.builders import Step
    from slimeflow.config import RunConfig
    from slimeflow.hooks.node import NodeHook
    from slimeflow.operators.train import watch_argv
    from slimeflow.triggers.train_job import TrainJobTrigger

    node = cluster.conn_ids[0]
    params = run_conf(cluster, num_rollout=10, poll_interval=int(poll))
    cfg = RunConfig.from_params(recipe, params, hosts=[cluster.nodes[0]["host"]])
    hook = NodeHook(ssh_conn_id=node)
    hook.upload_files(builders.node_bundle()[1], builders.node_dir(cfg))
    nd = builders.node_dir(cfg)
    res = hook.run(builders.ray_start_head(cfg), nd, check=False, timeout=120)
    if res.rc != 0 and "already" not in (res.stdout + res.stderr).lower():
        raise SystemExit(f"ray start --head failed: {res.tail[-5:]}")
    triggers = []
    t0 = time.perf_counter()
    for i in range(n):
        sub = f"slimeflow-bench-trig-{i:03d}"
        hook.run(Step(node, ["ray", "job", "submit", "--address", builders.RAY_DASHBOARD,
                             "--submission-id", sub, "--no-wait", "--", "sleep", "1800"]),
                 nd, timeout=120)
        stop = builders.ray_job_cmd(cfg, "stop", sub)
        triggers.append(TrainJobTrigger(
            head=node, nodes=[node], node_dir=nd, base_id=sub, sub_id=sub,
            watch_argv=watch_argv(cfg, sub, sub), stop_argv=stop.argv, stop_env=stop.env,
            ray_stop_argv=builders.ray_stop(cfg, node).argv, cwd=cfg.paths.slime_dir,
            total=10, poll_interval=poll, unreachable_timeout=3600, stall_timeout=7200,
            start_iteration=None, deferred_at=time.time()))
    print(f"submitted {n} jobs in {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    if hook.client:
        hook.client.close()
    return triggers


def node_cpu(cluster) -> float:
    """CPU of node 0's processes (its sshd's, found by their sockets, plus their reaped
    children: every jobwatch.py poll)."""
    return sum(proc_cpu(p.pid) for p in procs_of(str(cluster.dir), 0))


async def drive(triggers, poll, slices, slice_s, cluster):
    fired = []

    async def follow(trig):
        async for ev in trig.run():
            fired.append(ev)
            return

    # one trigger first: the per-process cost (imports, asyncssh, first connection) is paid here
    tasks = [asyncio.create_task(follow(triggers[0]))]
    await asyncio.sleep(max(2 * poll, 10))
    rss_one = rss_mb()
    tasks += [asyncio.create_task(follow(t)) for t in triggers[1:]]
    await asyncio.sleep(max(2 * poll, 10))  # all connected and polling
    out = []
    for _ in range(slices):
        c0, n0, w0 = self_cpu(), node_cpu(cluster), time.perf_counter()
        await asyncio.sleep(slice_s)
        w = time.perf_counter() - w0
        out.append({"rss": rss_mb(), "cpu_share": (self_cpu() - c0) / w,
                    "node_cpu_share": (node_cpu(cluster) - n0) / w})
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for trig in triggers:
        try:
            await trig.cleanup()
        except Exception:  # noqa: BLE001
            pass
    return rss_one, out, fired


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=50, help="supervised runs (triggers)")
    ap.add_argument("--poll", type=float, default=15)
    ap.add_argument("--slices", type=int, default=5)
    ap.add_argument("--slice-s", type=float, default=15)
    ap.add_argument("--recipe", default="qwen3-next-80b-a3b")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="slimeflow-bench-trig-"))
    cluster = None
    try:
        cluster = SimCluster.up(tmp / "cluster", nodes=1, gpu="H100")
        os.environ.update(cluster.env())
        os.environ.setdefault("AIRFLOW_HOME", str(tmp / "airflow"))
        os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"
        rss0 = rss_mb()
        triggers = make_triggers(cluster, args.runs, args.poll, args.recipe)
        rss_one, slices, fired = asyncio.run(drive(triggers, args.poll, args.slices,
                                                   args.slice_s, cluster))
    finally:
        if cluster is not None:
            cluster.down()
        shutil.rmtree(tmp, ignore_errors=True)
    rss_n = statistics.median(s["rss"] for s in slices)
    per_run = (rss_n - rss_one) / max(1, args.runs - 1)
    cpu = statistics.median(s["cpu_share"] for s in slices)
    node = statistics.median(s["node_cpu_share"] for s in slices)
    print(f"triggerer cost: {args.runs} TrainJobTriggers in one asyncio loop, poll every "
          f"{args.poll:g}s, median of {args.slices} windows of {args.slice_s:g}s")
    print(f"{'measure':<52}{'value':>10}")
    print(f"{'process RSS before any trigger (MB)':<52}{rss0:>10.1f}")
    print(f"{'RSS with 1 trigger running (MB; baseline)':<52}{rss_one:>10.1f}")
    print(f"{f'RSS with {args.runs} triggers running (MB)':<52}{rss_n:>10.1f}")
    print(f"{'memory per supervised run (MB)':<52}{per_run:>10.2f}")
    print(f"{'CPU share of the loop (cores)':<52}{cpu:>10.3f}")
    print(f"{'CPU per supervised run per poll (ms)':<52}"
          f"{cpu * args.poll / args.runs * 1000:>10.1f}")
    print(f"{'node side: head sshd + jobwatch CPU share (cores)':<52}{node:>10.3f}")
    if fired:
        print(f"WARNING: {len(fired)} trigger(s) fired during the measurement: "
              f"{[getattr(e, 'payload', e) for e in fired][:3]}")
    print(f"goal <= 5 MB per supervised run: {'MET' if per_run <= 5 else 'MISSED'} "
          f"({per_run:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
