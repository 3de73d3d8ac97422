"""What Ray is doing on this node, and the state of a Ray job. Stdlib only, Python 3.8+.

    raystate.py local        -> {"raylets": [{pid, node_ip, gcs_address, head}], "gcs_servers": [pid],
                                 "running": bool}
    raystate.py job --job ID [--address URL]
                             -> {"status": ..., "text": ..., "info": {...} | null, "via": ...}
    raystate.py actor --id ACTOR_ID [--address URL]
                             -> {"found", "class_name", "pid", "node_ip", "node_state", ...}

`local` lists this node's raylets and GCS servers from /proc (by process name, as `ray stop`
finds them; zombies do not count). The train step asks every node before it starts Ray, because
a real `ray start --address=HEAD:6379` on a node already running Ray starts a SECOND raylet (it
does not refuse), and the cluster then counts that node twice.

`job` (read_job) asks the dashboard's Jobs REST API, `GET <address>/api/jobs/<id>`, with stdlib
urllib: one HTTP request instead of `ray job status`, which imports Ray afresh (seconds of CPU on
every poll) only to make that same request. jobwatch.py (on the head, every poll), lease.py and
the train operator (through `raystate.py job` on the head) all use read_job, so they cannot
drift apart. When the dashboard does not answer, read_job asks whether the GCS still does (TCP
connect) and whether gcs_server/raylet run here: a dead dashboard with a live GCS is
DASHBOARD_DOWN (the job may well still run), not a lost cluster.

`actor` (read_actor) asks the state API where an actor ran (its node's IP and whether Ray counts
that node DEAD): a driver that loses an actor with its node says only the actor's id.

`job_state()` reads `ray job status` output; it is kept for the CLI fallback (read_job_cli).
"""
import json
import os
import re
import socket
import subprocess
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


# --------------------------------------------------------------------------- Jobs REST API

DASHBOARD = "http://127.0.0.1:8265"
GCS_PORT = 6379
# Ray 2.60 JobStatus values (ray/dashboard/modules/job/common.py), what GET /api/jobs/<id> gives
JOB_STATES = ("PENDING", "RUNNING", "STOPPED", "SUCCEEDED", "FAILED")


def _http_get(url, timeout):
    """(HTTP status, body text) of GET url; raises OSError when nothing answers. No proxy: the
    dashboard is on the head itself (127.0.0.1) or on the cluster's own network, and a node's
    http_proxy would send the request off the machine (the seed sets no_proxy for the same
    reason)."""
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(urllib.request.Request(url, method="GET"), timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:  # 404 and 5xx arrive here, with Ray's body
        try:
            body = e.read().decode("utf-8", "replace")
        except Exception:
            body = ""
        return e.code, body
    except urllib.error.URLError as e:  # refused, no route, DNS: nothing answers
        raise OSError(str(e.reason)) from None
    except socket.timeout:
        raise OSError("timed out after %ss" % timeout) from None


def tcp_answers(host, port, timeout=3.0):
    """True when something accepts a TCP connection at host:port (the GCS is a gRPC server:
    accepting is enough to say it lives; `ray health-check` would import Ray for the same
    answer)."""
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def _host_of(address):
    m = re.match(r"^(?:\w+://)?(\[[^\]]+\]|[^:/]+)", address or "")
    return m.group(1).strip("[]") if m else "127.0.0.1"


def gcs_state(address=DASHBOARD, proc="/proc", connect=tcp_answers):
    """Is the cluster alive without its dashboard? The GCS addresses tried: those the raylets
    here were started with (--gcs-address), the dashboard's host at 6379, and 127.0.0.1:6379.
    {"gcs_answers": bool, "gcs_address": "h:p"|None, "gcs_servers": [...], "raylets": N}"""
    procs = ray_processes(proc)
    cands = [r["gcs_address"] for r in procs["raylets"] if r.get("gcs_address")]
    cands += ["%s:%d" % (_host_of(address), GCS_PORT), "127.0.0.1:%d" % GCS_PORT]
    seen, answered = [], None
    for c in cands:
        if c in seen:
            continue
        seen.append(c)
        host, _, port = c.rpartition(":")
        if connect(host.strip("[]"), port):
            answered = c
            break
    return {"gcs_answers": answered is not None, "gcs_address": answered,
            "gcs_servers": procs["gcs_servers"], "raylets": len(procs["raylets"])}


def read_job_cli(job, address=DASHBOARD, timeout=90):
    """`ray job status` (a fresh Ray import, seconds of CPU). Only read_job's fallback for a
    dashboard that answers 200 with a body this file cannot read (a future Ray changing the
    JobDetails shape): the CLI of the Ray installed here speaks its own dashboard's schema."""
    try:
        r = subprocess.run(["ray", "job", "status", "--address=" + address, job],
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "UNKNOWN", "ray job status did not answer within %s s" % timeout
    except OSError as e:
        return "UNKNOWN", "cannot run ray: %s" % e
    text = strip_ansi(r.stdout.decode("utf-8", "replace"))
    return job_state(text, job) or "UNKNOWN", text[-4000:]


def read_job(job, address=DASHBOARD, timeout=10, get=None, gcs=None, cli=None):
    """The state of Ray job `job` (a submission id) from the dashboard's Jobs REST API.

    {"status": S, "text": a sentence or Ray's message, "info": Ray's JobDetails JSON or None,
     "via": "rest"|"cli", "gcs": gcs_state() when the dashboard did not answer}

    S is one of Ray's JOB_STATES, or
      MISSING         the dashboard answers 404 (seen on Ray 2.60: "Job NOPE does not exist"):
                      Ray does not know the job (it was restarted, or never had it);
      DASHBOARD_DOWN  nothing answers at the dashboard but the GCS does, or gcs_server still
                      runs here: the cluster (and maybe the job) lives, only the dashboard died;
      NO_CLUSTER      neither the dashboard nor the GCS answers, and no gcs_server runs here;
      UNKNOWN         the dashboard answered something else (HTTP 500, say).
    """
    from urllib.parse import quote

    get, gcs, cli = get or _http_get, gcs or gcs_state, cli or read_job_cli  # looked up now

    url = "%s/api/jobs/%s" % (address.rstrip("/"), quote(job, safe=""))
    try:
        code, body = get(url, timeout)
    except OSError as e:
        g = gcs(address)
        alive = g["gcs_answers"] or bool(g["gcs_servers"])
        return {"status": "DASHBOARD_DOWN" if alive else "NO_CLUSTER", "info": None,
                "via": "rest", "gcs": g,
                "text": "the Ray dashboard at %s does not answer (%s); %s" % (
                    address, e, "the GCS %s" % (
                        "answers at %s" % g["gcs_address"] if g["gcs_answers"] else
                        "process runs (pids %s)" % g["gcs_servers"]) if alive else
                    "no GCS answers and no gcs_server runs here")}
    if code == 404:
        return {"status": "MISSING", "info": None, "via": "rest",
                "text": (body or "Job %s does not exist" % job).strip()[-2000:]}
    if code == 200:
        try:
            info = json.loads(body)
        except ValueError:
            info = None
        status = info.get("status") if isinstance(info, dict) else None
        if status in JOB_STATES:
            return {"status": status, "info": info, "via": "rest",
                    "text": (info.get("message") or "")[-4000:]}
        state, text = cli(job, address)
        return {"status": state, "info": None, "via": "cli", "text": text}
    return {"status": "UNKNOWN", "info": None, "via": "rest",
            "text": "HTTP %s from %s: %s" % (code, url, (body or "").strip()[-2000:])}


def _state_api(address, kind, key, value, get, timeout, detail=False):
    """Rows of Ray's state API (`GET /api/v0/<kind>?filter_keys=..`, what `ray list` asks)
    where key == value; [] when there is none, None when the dashboard gave no answer."""
    from urllib.parse import urlencode

    q = {"filter_keys": key, "filter_predicates": "=", "filter_values": value, "limit": "10"}
    if detail:
        q["detail"] = "true"
    try:
        code, body = get("%s/api/v0/%s?%s" % (address.rstrip("/"), kind, urlencode(q)), timeout)
        data = json.loads(body) if code == 200 else None
    except (OSError, ValueError):
        return None
    rows = ((data or {}).get("data") or {}).get("result")
    rows = rows.get("result") if isinstance(rows, dict) else rows
    return rows if isinstance(rows, list) else None


def _death(cause):
    """(one line, node IP) from Ray's death_cause of an actor (ActorDeathCause as JSON: one
    context, e.g. actor_died_error_context with error_message and node_ip_address)."""
    if not isinstance(cause, dict):
        return None, None
    for ctx in cause.values():
        if isinstance(ctx, dict):
            msg = ctx.get("error_message") or ctx.get("errorMessage")
            ip = ctx.get("node_ip_address") or ctx.get("nodeIpAddress")
            if msg or ip:
                return (" ".join(str(msg).split())[:500] if msg else None), ip or None
    return None, None


def read_actor(actor_id, address=DASHBOARD, timeout=10, get=None):
    """Where a Ray actor ran and how it ended, from the dashboard's state API: slime's driver
    reports an actor lost with its node only by id ("ActorUnavailableError: The actor <id> is
    unavailable"), and the node is what ops need.
    {"found", "actor_id", "class_name", "pid", "state", "node_id", "node_ip", "node_state",
     "death"}"""
    get = get or _http_get
    out = {"found": False, "actor_id": actor_id, "class_name": None, "pid": None,
           "state": None, "node_id": None, "node_ip": None, "node_state": None, "death": None}
    rows = _state_api(address, "actors", "actor_id", actor_id, get, timeout, detail=True)
    if not rows:
        return out
    a = rows[0]
    death, death_ip = _death(a.get("death_cause"))
    out.update(found=True, class_name=a.get("class_name"), pid=a.get("pid") or None,
               state=a.get("state"), node_id=a.get("node_id"), death=death, node_ip=death_ip)
    if out["node_id"]:
        nodes = _state_api(address, "nodes", "node_id", out["node_id"], get, timeout) or []
        if nodes:
            out.update(node_ip=nodes[0].get("node_ip") or out["node_ip"],
                       node_state=nodes[0].get("state"))
    return out


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
    if argv[:1] == ["local"]:
        print(json.dumps(ray_processes()))
        return 0
    # verb: (the id flag, reader)
    verbs = {"job": ("--job", read_job), "actor": ("--id", read_actor)}
    if argv[:1] and argv[0] in verbs:
        import argparse

        flag, reader = verbs[argv[0]]
        ap = argparse.ArgumentParser(prog="raystate.py " + argv[0])
        ap.add_argument(flag, dest="ident", required=True)
        ap.add_argument("--address", default=DASHBOARD)
        a = ap.parse_args(argv[1:])
        print(json.dumps(reader(a.ident, a.address)))
        return 0
    print("usage: raystate.py local | job --job ID | actor --id ACTOR_ID [--address URL]",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
