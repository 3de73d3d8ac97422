"""`make up-sim`: the Airflow UI of `make up`, wired to a simulated cluster.

    python -m tests.simcluster.upsim --state-dir DIR [--nodes 2] [--port 8080]

Starts an N-node simulated H100 cluster in DIR (namespaced nodes, real sshd, real Ray; an
earlier one there is taken down first), then runs `make up` with:
- one Airflow connection per node (`AIRFLOW_CONN_SIM_NODE_<I>`, host keys pinned);
- trigger-form defaults that point every DAG at the cluster (`SLIMEFLOW_DEFAULT_*`: nodes,
  base_folder, slime_dir, megatron_dir), preflight_nccl off (the nodes have no CUDA) and a
  short run (20 rollouts; the simulated trainer takes 0.5 s per rollout);
- AIRFLOW_HOME under DIR, so it never touches the `make up` of real nodes;
- the DAGs unpaused.

`make up` runs in this process (exec), and the cluster is tied to it: when it stops (Ctrl-C, or
a dead component), the cluster's watchdog takes the nodes down.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from tests.simcluster.cluster import SimCluster

ROOT = Path(__file__).resolve().parents[2]
SIM_ROLLOUTS = 20


def form_defaults(cluster: SimCluster) -> dict:
    return {
        "SLIMEFLOW_DEFAULT_NODES": json.dumps(list(cluster.conn_ids)),
        "SLIMEFLOW_DEFAULT_BASE_FOLDER": str(cluster.base_folder),
        "SLIMEFLOW_DEFAULT_SLIME_DIR": str(cluster.slime_dir),
        "SLIMEFLOW_DEFAULT_MEGATRON_DIR": str(cluster.megatron_dir),
        "SLIMEFLOW_DEFAULT_PREFLIGHT_NCCL": "off",
        "SLIMEFLOW_DEFAULT_NUM_ROLLOUT": str(SIM_ROLLOUTS),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.simcluster.upsim")
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--nodes", type=int, default=2)
    a = ap.parse_args(argv)
    state = Path(a.state_dir)
    cdir = state / "cluster"
    if cdir.exists():  # an earlier up-sim's nodes: gone with their make; start clean
        SimCluster(cdir).down()
        shutil.rmtree(cdir)
    print(f"up-sim: starting a {a.nodes}-node simulated H100 cluster in {cdir}", flush=True)
    # owned by this process, which becomes `make up` below: when that ends, so do the nodes
    cluster = SimCluster.up(cdir, nodes=a.nodes, gpu="H100", owner_pid=os.getpid())
    env = dict(os.environ)
    env.update(cluster.env())
    env.update(form_defaults(cluster))
    env["AIRFLOW_HOME"] = str(state / "airflow")
    # trying the DAGs is the point here (they have no schedule unless one is configured);
    # `make up` for real nodes keeps Airflow's default, paused
    env.setdefault("AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION", "False")
    for n in cluster.nodes:
        print(f"up-sim: connection {n['conn_id']}: root@{n['host']}:{n['port']}", flush=True)
    print(f"up-sim: the trigger form's defaults point at these nodes ({SIM_ROLLOUTS} rollouts, "
          f"preflight_nccl off); stop with Ctrl-C (the cluster goes down with it)", flush=True)
    env.pop("MAKEFLAGS", None)
    env.pop("MAKELEVEL", None)
    os.chdir(ROOT)
    os.execvpe("make", ["make", "--no-print-directory", "up"], env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
