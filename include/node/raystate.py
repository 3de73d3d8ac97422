"""What Ray is doing on this node, and what `ray job status` said. Stdlib only, Python 3.8+.

    raystate.py local        -> {"raylets": [{pid, node_ip, gcs_address, head}], "gcs_servers": [pid],
                                 "running": bool}

`local` lists this node's raylets and GCS servers from /proc (by process name, as `ray stop`
finds them; zombies do not count). The train step asks every node before it starts Ray, because
a real `ray start --address=HEAD:6379` on a node already running Ray starts a SECOND raylet (it
does not refuse), and the cluster then counts that node twice.

`job_state()` reads `ray job status` output; jobwatch.py (on the head) and the train operator
(in Airflow, which loads this file) share it, so the two cannot drift apart.
"""
import json
import os
import re
import sys

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# Ray 2.60 `ray job status ID` (checked against a real cluster, SLIME_FACTS.md):
#   Status for job 'ID': RUNNING          (PENDING, RUNNING; then "Status message: ...")
#   Job 'ID' succeeded | Job 'ID' failed | Job 'ID' was stopped
#   RuntimeError: Request failed with status code 404: Job ID does not exist.   (exit 1)
#   ConnectionError: Failed to connect to Ray at address: http://...            (exit 1)
# A failed job's "Status message:" carries the last 20,000 characters of its log, so only a
# sentence naming THIS job id counts as its state.
_TERMINAL = (("succeeded", "SUCCEEDED"), ("was stopped", "STOPPED"), ("failed", "FAILED"))
_NO_CLUSTER = re.compile(r"Failed to connect to Ray|Could not find any running Ray|"
                         r"Connection refused|ConnectionError")


def strip_ansi(text):
    return _ANSI.sub("", text)


def job_state(text, job):
    """PENDING/RUNNING/... or SUCCEEDED/FAILED/STOPPED for `job`; MISSING when Ray answers but
    does not know it; NO_CLUSTER when no Ray answers; None when the text shows none of these."""
    text = strip_ansi(text or "")
    q = re.escape(job)
    for line in text.splitlines():
        m = re.search(r"Status for job '%s': ([A-Z_]+)" % q, line)
        if m:
            return m.group(1)
        for words, state in _TERMINAL:
            if re.search(r"\bJob '%s' %s\s*$" % (q, words), line):
                return state
    if re.search(r"status code 404: Job %s does not exist" % q, text) or \
            re.search(r"Job %s does not exist" % q, text):
        return "MISSING"
    if _NO_CLUSTER.search(text):
        return "NO_CLUSTER"
    return None


# --------------------------------------------------------------------------- processes

def _read(path, mode="r"):
    try:
        with open(path, mode) as f:
            return f.read()
    except OSError:
        return None


def _flag(argv, name):
    """The value of `--name=V` or `--name V` in argv (raylet writes both styles)."""
    for i, a in enumerate(argv):
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
    return None


def ray_processes(proc="/proc"):
    """This node's live raylet and gcs_server processes (a PID namespace sees only its own)."""
    raylets, gcs = [], []
    try:
        pids = [p for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        pids = []
    for pid in pids:
        comm = (_read(os.path.join(proc, pid, "comm")) or "").strip()
        if comm not in ("raylet", "gcs_server"):
            continue
        stat = _read(os.path.join(proc, pid, "stat")) or ""
        state = stat.rsplit(")", 1)[-1].split()[:1]
        if state and state[0] in ("Z", "X"):  # dead, not yet reaped: not running
            continue
        if comm == "gcs_server":
            gcs.append(int(pid))
            continue
        raw = _read(os.path.join(proc, pid, "cmdline"), "rb") or b""
        argv = [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]
        raylets.append({"pid": int(pid), "node_ip": _flag(argv, "--node_ip_address"),
                        "gcs_address": _flag(argv, "--gcs-address"),
                        "head": "--head" in argv})
    raylets.sort(key=lambda r: r["pid"])
    return {"raylets": raylets, "gcs_servers": sorted(gcs),
            "running": bool(raylets or gcs)}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] != ["local"]:
        print("usage: raystate.py local", file=sys.stderr)
        return 2
    print(json.dumps(ray_processes()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
