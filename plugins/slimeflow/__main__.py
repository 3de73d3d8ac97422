"""`python -m slimeflow plan ...`: print every command a run would execute, without running any."""
from __future__ import annotations

import argparse
import json
import sys

from slimeflow import builders
from slimeflow.config import RunConfig
from slimeflow.validation import ParamError

# What a fresh slime node installs: slime leaves ray[default] unpinned (SLIME_FACTS.md, 2026-12).
PLAN_RAY_VERSION = "2.60.0"


def _param(text: str):
    key, sep, raw = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--param needs key=value, got {text!r}")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m slimeflow")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("plan", help="print the commands of one run as JSON")
    p.add_argument("--recipe", required=True)
    p.add_argument("--nodes", type=int, required=True, help="number of nodes")
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--base-folder", default="/root")
    p.add_argument("--master-addr", required=True)
    p.add_argument("--worker-hosts", default="",
                   help="comma-separated addresses of the worker nodes (default 10.0.0.2, ...)")
    p.add_argument("--no-nvlink", action="store_true", help="plan as if nodes had no NVLink")
    p.add_argument("--ray-version", default=PLAN_RAY_VERSION,
                   help="the head's Ray version, which decides how `ray job submit` quotes the "
                        "train.py arguments (preflight reads it from the node; default "
                        f"{PLAN_RAY_VERSION})")
    p.add_argument("--param", action="append", type=_param, default=[],
                   help="any other trigger param, key=value (value parsed as JSON if it can be)")
    args = ap.parse_args(argv)
    if builders.ray_version_tuple(args.ray_version) is None:
        print(f"error: --ray-version {args.ray_version!r} is not a Ray version; give one such as "
              f"{PLAN_RAY_VERSION}.", file=sys.stderr)
        return 2

    workers = [h for h in args.worker_hosts.split(",") if h] or \
        [f"10.0.0.{i + 2}" for i in range(args.nodes - 1)]
    params = {"nodes": [f"node{i}" for i in range(args.nodes)],
              "gpus_per_node": args.gpus_per_node, "base_folder": args.base_folder,
              "master_addr": args.master_addr, **dict(args.param)}
    try:
        cfg = RunConfig.from_params(args.recipe, params,
                                    hosts=[args.master_addr] + workers[:args.nodes - 1])
    except (ParamError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    facts = {"nvlink": not args.no_nvlink, "storage_shared": True,
             "ray_version": args.ray_version}
    json.dump(builders.plan(cfg, facts), sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
