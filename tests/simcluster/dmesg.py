#!/usr/bin/env python3
"""dmesg stand-in for the simulated cluster (stdlib only): each simulated node's kernel log.

The nodes share this machine's kernel, so the real dmesg would show the host's ring buffer,
not a node's. This prints ``DIR/nodes/<i>/kmsg.jsonl`` (one ``{"t": seconds since boot,
"msg": text}`` per line, written by the ``gpu-xid`` fault) the way util-linux's dmesg prints
its default time format (util-linux sys-utils/dmesg.c, commit 01a424f: DMESG_TIMEFTM_TIME,
``[%5ld.%06ld] message``). With ``"dmesg_restricted": true`` in the node's gpu.json it fails as
dmesg does for a user without CAP_SYSLOG under kernel.dmesg_restrict=1: ``dmesg: read kernel
buffer failed: Operation not permitted``, exit 1. Options are accepted and ignored.
"""
import json
import os
import sys


def main():
    d = os.environ.get("SIMCLUSTER_DIR") or os.path.dirname(os.path.dirname(
        os.path.realpath(__file__)))
    nd = os.path.join(d, "nodes", str(int(os.environ.get("SIMCLUSTER_NODE", "0") or 0)))
    try:
        with open(os.path.join(nd, "gpu.json")) as f:
            gpu = json.load(f)
    except (OSError, ValueError):
        gpu = {}
    if gpu.get("dmesg_restricted"):
        sys.stderr.write("dmesg: read kernel buffer failed: Operation not permitted\n")
        return 1
    try:
        with open(os.path.join(nd, "kmsg.jsonl")) as f:
            lines = f.read().splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        t = float(rec.get("t", 0))
        sec = int(t)
        sys.stdout.write("[%5d.%06d] %s\n" % (sec, int(round((t - sec) * 1e6)) % 1000000,
                                              rec.get("msg", "")))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:
        sys.exit(0)
