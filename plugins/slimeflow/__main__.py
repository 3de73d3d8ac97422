"""`python -m slimeflow plan ...`: print every command a run would execute, without running any.

`python -m slimeflow argvcheck ...`: parse one run's train.py argv with a node's own slime,
Megatron-LM and sglang (include/node/argvcheck.py run by that node's Python) and print what
they made of it."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys

from slimeflow import builders
from slimeflow.config import RunConfig
from slimeflow.recipes import include_dir
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


def _config(args):
    """RunConfig of a plan/argvcheck command line; prints the error and returns None if bad."""
    workers = [h for h in args.worker_hosts.split(",") if h] or \
        [f"10.0.0.{i + 2}" for i in range(args.nodes - 1)]
    params = {"nodes": [f"node{i}" for i in range(args.nodes)],
              "gpus_per_node": args.gpus_per_node, "base_folder": args.base_folder,
              "master_addr": args.master_addr, **dict(args.param)}
    try:
        return RunConfig.from_params(args.recipe, params,
                                     hosts=[args.master_addr] + workers[:args.nodes - 1])
    except (ParamError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return None


def _layout_args(p, master_addr_required=True):
    p.add_argument("--recipe", required=True)
    p.add_argument("--nodes", type=int, required=True, help="number of nodes")
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--base-folder", default="/root")
    if master_addr_required:
        p.add_argument("--master-addr", required=True)
    else:
        p.add_argument("--master-addr", default="10.0.0.1")
    p.add_argument("--worker-hosts", default="",
                   help="comma-separated addresses of the worker nodes (default 10.0.0.2, ...)")
    p.add_argument("--param", action="append", type=_param, default=[],
                   help="any other trigger param, key=value (value parsed as JSON if it can be)")


# --- argvcheck -----------------------------------------------------------------------------

SGLANG_VERSION_CODE = ("import importlib.metadata as m\n"
                       "try:\n    print(m.version('sglang'))\n"
                       "except m.PackageNotFoundError:\n    print('')\n")


def node_env(python_path: list, runtime_env: dict | None = None, base: dict | None = None) -> dict:
    """The environment train.py gets from the job: the runtime_env's variables, PYTHONPATH made
    of `python_path` only (the node's Megatron first, as runtime_env has it; our own PYTHONPATH
    must not leak into the node's parse)."""
    env = dict(os.environ if base is None else base)
    env.update((runtime_env or {}).get("env_vars", {}))
    env["PYTHONPATH"] = os.pathsep.join(p for p in python_path if p)
    return env


def quote_literal(tokens: list) -> list:
    """Each token as shlex.quote gives it, the quotes kept: what train.py received when the
    entrypoint was pre-quoted for a Ray that quoted it again (`'[1,1,...]'` with its quotes).
    Tokens that need no quoting are unchanged."""
    return [shlex.quote(t) for t in tokens]


def exit_status(result: dict) -> int:
    """0 when every parser took the argv (ok: no error, nothing dropped; stopping at needs_gpu
    or needs_files is fine), 1 otherwise."""
    return 0 if result.get("ok") and not result.get("error") and not result.get("dropped") else 1


def summary(out: dict) -> str:
    """One line for a person: which command line, and what the parsers made of it."""
    head = (f"{out.get('recipe')} {out.get('layout')} {out.get('nodes')}x{out.get('gpus_per_node')}"
            f" (sglang {out.get('sglang') or '?'}, argv for {out.get('sglang_version_used') or '?'}"
            f"{', quoted' if out.get('quote_literal') else ''})")
    err = out.get("error")
    if err:
        where = f" at {err['where']}" if err.get("where") else ""
        return f"{head}: FAIL {err.get('kind')}: {err.get('message')}{where}"
    if out.get("dropped"):
        return f"{head}: FAIL dropped {' '.join(out['dropped'])}"
    if out.get("needs_gpu"):
        return f"{head}: ok, every parser ran; stops at needs_gpu: {out['needs_gpu']}"
    if out.get("needs_files"):
        return (f"{head}: ok, every parser ran; stops at needs_files: {out['needs_files']}"
                f" ({out.get('needs_files_at')})")
    return f"{head}: ok" if out.get("ok") else f"{head}: FAIL (not ok)"


def sglang_version(python: str, env: dict, timeout: float = 120) -> str | None:
    res = subprocess.run([python, "-c", SGLANG_VERSION_CODE], env=env, capture_output=True,
                         text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"{python} could not tell its sglang version: "
                           + (res.stderr.strip().splitlines() or ["no output"])[-1])
    return res.stdout.strip() or None


def argvcheck(args) -> int:
    cfg = _config(args)
    if cfg is None:
        return 2
    if not (os.path.isfile(args.python) and os.access(args.python, os.X_OK)):
        print(f"error: --python {args.python} is not an executable file", file=sys.stderr)
        return 2
    python_path = [os.path.abspath(args.megatron_dir)] + \
        ([os.path.abspath(args.sglang_path)] if args.sglang_path else [])
    probe_env = node_env(python_path)
    try:
        seen = sglang_version(args.python, probe_env)
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    used = args.sglang_version or seen
    facts = {"nvlink": True, "storage_shared": True, "ray_version": PLAN_RAY_VERSION,
             "sglang_version": used}
    # what `plan` shows as train_py_argv (less `python3 train.py`) for these facts
    argv = builders.train_args(cfg, facts)
    if args.quote_literal:
        argv = quote_literal(argv)
    env = node_env(python_path, builders.runtime_env(cfg, facts))
    script = str(include_dir() / "node" / "argvcheck.py")
    cmd = [args.python, script, "--slime-dir", os.path.abspath(args.slime_dir),
           "--megatron-dir", os.path.abspath(args.megatron_dir),
           "--timeout", str(args.timeout), "--", *argv]
    try:
        res = subprocess.run(cmd, env=env, capture_output=True, text=True,
                             timeout=args.timeout + 120)
    except subprocess.TimeoutExpired:
        print(f"error: argvcheck.py did not finish in {args.timeout + 120:g} s", file=sys.stderr)
        return 1
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    try:
        result = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (res.stderr or res.stdout).strip().splitlines()[-5:]
        print(f"error: argvcheck.py exited {res.returncode} without a result: "
              + " | ".join(tail), file=sys.stderr)
        return 1
    out = {"recipe": cfg.recipe.name, "layout": cfg.layout.name, "nodes": len(cfg.cluster.nodes),
           "gpus_per_node": cfg.cluster.gpus_per_node, "sglang_version_seen": seen,
           "sglang_version_used": used, "quote_literal": bool(args.quote_literal),
           "pythonpath": env["PYTHONPATH"], **result, "train_py_argv": argv}
    text = json.dumps(out, indent=1)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text + "\n")
    sys.stdout.write(text + "\n")
    print(f"argvcheck: {summary(out)}", file=sys.stderr)
    return exit_status(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m slimeflow")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser(
        "argvcheck", help="parse one run's train.py argv with a node's own slime, Megatron-LM "
                          "and sglang; print the JSON; exit 0 when they take it (stopping at "
                          "needs_gpu or needs_files is fine), 1 when not")
    _layout_args(c, master_addr_required=False)
    c.add_argument("--python", required=True, help="the node's Python, which runs the parse")
    c.add_argument("--slime-dir", required=True, help="slime checkout (holds train.py)")
    c.add_argument("--megatron-dir", required=True, help="Megatron-LM checkout, first on "
                                                         "PYTHONPATH as the job's runtime_env")
    c.add_argument("--sglang-path", default="",
                   help="a folder put on PYTHONPATH after Megatron (sglang installed with "
                        "`pip install --target`); default: the sglang --python has")
    c.add_argument("--sglang-version", default="",
                   help="render the argv for this sglang version instead of the one --python "
                        "sees (to reproduce a stale argv against a newer sglang)")
    c.add_argument("--quote-literal", action="store_true",
                   help="hand train.py each token as shlex.quote gives it, quotes kept (the "
                        "`'[1,1,...]'` that double quoting once delivered)")
    c.add_argument("--timeout", type=float, default=300.0, help="seconds for the parse")
    c.add_argument("--out", default="", help="also write the JSON to this file")
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
    if args.cmd == "argvcheck":
        return argvcheck(args)
    if builders.ray_version_tuple(args.ray_version) is None:
        print(f"error: --ray-version {args.ray_version!r} is not a Ray version; give one such as "
              f"{PLAN_RAY_VERSION}.", file=sys.stderr)
        return 2

    cfg = _config(args)
    if cfg is None:
        return 2
    facts = {"nvlink": not args.no_nvlink, "storage_shared": True,
             "ray_version": args.ray_version}
    json.dump(builders.plan(cfg, facts), sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
