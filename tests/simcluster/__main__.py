"""CLI: python -m tests.simcluster up|down|fault|status --state-dir DIR ..."""
from __future__ import annotations

import argparse
import json
import sys
import time

from tests.simcluster.cluster import DEFAULT_DRIVER, FAULTS, GPUS, SimCluster, SimClusterError, procs_of


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.simcluster", description="simulated GPU cluster")
    sub = ap.add_subparsers(dest="cmd", required=True)

    up = sub.add_parser("up", help="start N namespaced nodes (own IP, sshd on port 22, real Ray)")
    up.add_argument("--state-dir", required=True)
    up.add_argument("--nodes", type=int, default=1)
    up.add_argument("--gpu", choices=sorted(GPUS), default="H100")
    up.add_argument("--gpus-per-node", type=int, default=8)
    up.add_argument("--storage", choices=["shared", "local"], default="shared")
    up.add_argument("--disk-mb", type=int, default=None, help="a tmpfs of M MB per node (implies local)")
    up.add_argument("--driver", default=DEFAULT_DRIVER)
    up.add_argument("--rollout-seconds", type=float, default=0.5)
    up.add_argument("--no-hub", action="store_true", help="do not start the loopback hub")
    up.add_argument("--owner", type=int, default=None,
                    help="take the cluster down when this pid exits (tests pass their own)")

    wd = sub.add_parser("watch", help="(internal) take the cluster down once --owner exits")
    wd.add_argument("--state-dir", required=True)
    wd.add_argument("--owner", type=int, required=True)

    down = sub.add_parser("down", help="stop everything up started")
    down.add_argument("--state-dir", required=True)

    st = sub.add_parser("status", help="print cluster.json facts and live processes")
    st.add_argument("--state-dir", required=True)

    fl = sub.add_parser("fault", help="inject a fault")
    fl.add_argument("--state-dir", required=True)
    fl.add_argument("kind", choices=FAULTS)
    fl.add_argument("--node", type=int, default=None)
    fl.add_argument("--path", default=None, help="corrupt-shard: a model dir or file under base_folder")
    args = ap.parse_args(argv)

    try:
        if args.cmd == "up":
            t0 = time.monotonic()
            c = SimCluster.up(args.state_dir, nodes=args.nodes, gpu=args.gpu, gpus_per_node=args.gpus_per_node,
                              storage=args.storage, disk_mb=args.disk_mb, driver=args.driver,
                              rollout_seconds=args.rollout_seconds, hub=not args.no_hub,
                              owner_pid=args.owner)
            for n in c.nodes:
                print(f"{n['conn_id']}: root@{n['host']}:{n['port']}")
            print(f"hub: {c.hub_url or '-'}")
            print(f"up in {time.monotonic() - t0:.2f}s; source {c.dir / 'env.sh'}")
        elif args.cmd == "watch":
            return watch(args.state_dir, args.owner)
        elif args.cmd == "down":
            r = SimCluster(args.state_dir).down()
            print(f"down in {r['seconds']:.2f}s; stopped {len(r['killed'])} processes")
        elif args.cmd == "status":
            c = SimCluster(args.state_dir)
            info = {k: v for k, v in c.info.items() if k != "env"}
            info["running"] = c.running()
            info["procs"] = [{"pid": p.pid, "node": p.node, "role": p.role, "state": p.state,
                              "cmdline": " ".join(p.cmdline)[:200]} for p in procs_of(c.dir)]
            print(json.dumps(info, indent=2))
        elif args.cmd == "fault":
            print(json.dumps(SimCluster(args.state_dir).fault(args.kind, node=args.node, path=args.path)))
    except SimClusterError as e:
        print(f"simcluster: {e}", file=sys.stderr)
        return 1
    return 0


def watch(state_dir: str, owner: int) -> int:
    """The owner (a test process) may be SIGKILLed and never run its teardown: then this takes
    the cluster down, so that no namespace, bridge or process outlives it."""
    from tests.simcluster.cluster import alive

    c = SimCluster(state_dir)
    while alive(owner) and c.running():
        time.sleep(1)
    if c.running():
        print(f"owner {owner} is gone; taking the cluster down", flush=True)
        (c.dir / "watchdog.pid").unlink(missing_ok=True)
        c.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
