"""`make demo`: a 2-node simulated H100 cluster, slime_qwen3_next_80b_a3b end to end with
`airflow dags test`, and the XCom chain as one JSON line at the end."""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from tests.simcluster.airflow_run import airflow, airflow_env, read_xcoms, run_conf
from tests.simcluster.cluster import SimCluster

DAG_ID = "slime_qwen3_next_80b_a3b"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.simcluster.demo")
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--gpu", default="H100")
    ap.add_argument("--keep", action="store_true", help="leave the cluster running")
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
        conf = run_conf(cluster)
        print(f"demo: airflow dags test {DAG_ID} (log: {log.name})", file=sys.stderr)
        res = airflow(env, "dags", "test", DAG_ID, "--conf", json.dumps(conf),
                      stdout=log, stderr=log)
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
