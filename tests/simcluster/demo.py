"""`make demo`: a 2-node simulated H100 cluster (namespaced nodes, real sshd, real Ray),
slime_qwen3_next_80b_a3b end to end with `airflow dags test`, the progress lines as they come,
and the XCom chain as one JSON line at the end."""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.simcluster.airflow_run import VENV_BIN, airflow, airflow_env, read_xcoms, run_conf
from tests.simcluster.cluster import SimCluster

DAG_ID = "slime_qwen3_next_80b_a3b"


PROGRESS = re.compile(r"\] (progress: .*?)(?: \[slimeflow|$)")


def follow(log: Path, proc: subprocess.Popen) -> None:
    """Print the run's progress lines (`rollout i/N ...`) while `airflow dags test` writes its log."""
    with open(log, errors="replace") as f:
        part = ""
        while True:
            chunk = f.readline()
            if not chunk.endswith("\n"):  # EOF, or a line the writer has not finished yet
                part += chunk
                if proc.poll() is not None and not chunk:
                    line, part = part, ""
                    if not line:
                        return
                else:
                    time.sleep(0.2)
                    continue
            else:
                line, part = part + chunk, ""
            m = PROGRESS.search(line.rstrip())
            if m:
                print(f"demo: {m.group(1)}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.simcluster.demo")
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--gpu", default="H100")
    ap.add_argument("--keep", action="store_true", help="leave the cluster running")
    ap.add_argument("--num-rollout", type=int, default=4)
    args = ap.parse_args(argv)
    state = Path(args.state_dir)
    if state.exists():
        SimCluster(state / "cluster").down() if (state / "cluster").exists() else None
        shutil.rmtree(state)
    state.mkdir(parents=True)
    t0 = time.monotonic()
    print(f"demo: starting a {args.nodes}-node simulated {args.gpu} cluster in {state}",
          file=sys.stderr)
    cluster = SimCluster.up(state / "cluster", nodes=args.nodes, gpu=args.gpu,
                            rollout_seconds=0.2)
    try:
        env = airflow_env(cluster, state / "airflow")
        log = open(state / "airflow-dags-test.log", "w")
        airflow(env, "db", "migrate", stdout=log, stderr=log, check=True)
        conf = run_conf(cluster, num_rollout=args.num_rollout)
        print(f"demo: airflow dags test {DAG_ID} (log: {log.name})", file=sys.stderr)
        proc = subprocess.Popen([str(VENV_BIN / "airflow"), "dags", "test", DAG_ID, "--conf", json.dumps(conf)],
                                env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        follow(Path(log.name), proc)
        res = proc
        log.close()
        xcoms = read_xcoms(env, DAG_ID)["xcom"]
        if res.returncode != 0 or "train" not in xcoms:
            tail = Path(log.name).read_text().splitlines()[-40:]
            print("\n".join(tail), file=sys.stderr)
            print(f"demo: the DAG run failed (exit {res.returncode}); full log in {log.name}",
                  file=sys.stderr)
            return 1
        print(f"demo: finished in {time.monotonic() - t0:.0f}s", file=sys.stderr)
        print(json.dumps({"hf_checkpoint": xcoms["download_model"]["return_value"],
                          "torch_dist": xcoms["convert"]["return_value"],
                          "checkpoint": xcoms["train"]["return_value"]}))
        return 0
    finally:
        if not args.keep:
            cluster.down()


if __name__ == "__main__":
    sys.exit(main())
