"""Per-node leases: one run at a time on a node. Stdlib only, Python 3.8+.

A lease is `<dir>/<node>.json` (node = the Airflow connection id, so that on shared storage every
node has its own file): {"run", "node", "host", "submission_id", "taken", "heartbeat"}. It is
created with os.link (atomic create-if-absent, also on NFS), refreshed by rewriting through a temp
file + rename, and broken by renaming it aside (only one of two racers can win the rename).

    lease.py acquire   --dir D --node N --run R [--holder-json J] [--stale-after S] [--ray-address URL]
    lease.py release   --dir D --node N --run R
    lease.py heartbeat --dir D --node N [--node N2 ...] --run R [--job SUBMISSION_ID]
    lease.py show      --dir D --node N

Each prints one JSON object. A lease held by another run is stale when its heartbeat is older
than --stale-after seconds AND its Ray job (submission_id, asked at --ray-address) is not
PENDING/RUNNING; only then is it broken.
"""
import argparse
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import raystate  # noqa: E402


def _path(d, node):
    if not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,249}$", node):
        raise ValueError("bad node id %r" % node)
    return os.path.join(d, node + ".json")


def read(d, node):
    try:
        with open(_path(d, node)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _tmp_write(path, obj):
    tmp = "%s.tmp-%d-%d" % (path, os.getpid(), int(time.time() * 1e6))
    with open(tmp, "w") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def ray_job_running(address, job, read=None):
    """True when the job may be running at address: PENDING/RUNNING, or DASHBOARD_DOWN (the
    GCS lives, so the job may too: a lease is not broken on a guess). False when it ended, Ray
    does not know it, or Ray is gone. raystate.read_job (the Jobs REST API) decides, the same
    reader as jobwatch's polls."""
    if not address or not job:
        return False
    try:
        state = (read or raystate.read_job)(job, address)["status"]
    except Exception:
        return False
    return state in ("PENDING", "RUNNING", "DASHBOARD_DOWN")


def acquire(d, node, run, holder=None, stale_after=900.0, ray_address=None):
    os.makedirs(d, exist_ok=True)
    path = _path(d, node)
    now = time.time()
    rec = dict(holder or {})
    rec.update({"run": run, "node": node, "taken": now, "heartbeat": now})
    for _ in range(5):
        cur = read(d, node)
        if cur is not None and cur.get("run") == run:
            cur.update({k: v for k, v in rec.items() if k != "taken"})
            os.replace(_tmp_write(path, cur), path)
            return {"acquired": True, "again": True, "lease": cur}
        if cur is not None:
            age = now - float(cur.get("heartbeat") or 0)
            if age < stale_after:
                return {"acquired": False, "held_by": cur, "age_s": round(age, 1)}
            if ray_job_running(ray_address, cur.get("submission_id")):
                return {"acquired": False, "held_by": cur, "age_s": round(age, 1),
                        "job_running": True}
            aside = "%s.broken-%d-%d" % (path, int(now), os.getpid())
            try:
                os.rename(path, aside)  # only one breaker wins
            except FileNotFoundError:
                continue
            broken = {"lease": cur, "moved_to": aside, "age_s": round(age, 1)}
        else:
            broken = None
        tmp = _tmp_write(path, rec)
        try:
            os.link(tmp, path)
        except FileExistsError:
            os.unlink(tmp)
            continue
        os.unlink(tmp)
        return {"acquired": True, "lease": rec, "broken": broken}
    cur = read(d, node)
    return {"acquired": False, "held_by": cur, "age_s": None}


def release(d, node, run):
    path = _path(d, node)
    cur = read(d, node)
    if cur is None:
        return {"released": False, "reason": "no lease"}
    if cur.get("run") != run:
        return {"released": False, "reason": "held by another run", "held_by": cur}
    aside = "%s.released-%d" % (path, os.getpid())
    try:
        os.rename(path, aside)
        os.unlink(aside)
    except FileNotFoundError:
        return {"released": False, "reason": "no lease"}
    return {"released": True}


def heartbeat(d, nodes, run, job=None):
    out = {}
    for node in nodes:
        path = _path(d, node)
        cur = read(d, node)
        if cur is None or cur.get("run") != run:
            out[node] = {"held": False, "held_by": (cur or {}).get("run")}
            continue
        cur["heartbeat"] = time.time()
        if job:
            cur["submission_id"] = job
        os.replace(_tmp_write(path, cur), path)
        out[node] = {"held": True}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["acquire", "release", "heartbeat", "show"])
    ap.add_argument("--dir", required=True)
    ap.add_argument("--node", action="append", required=True)
    ap.add_argument("--run")
    ap.add_argument("--holder-json")
    ap.add_argument("--stale-after", type=float, default=900.0)
    ap.add_argument("--ray-address")
    ap.add_argument("--job")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "acquire":
            out = acquire(a.dir, a.node[0], a.run, json.loads(a.holder_json or "{}"),
                          a.stale_after, a.ray_address)
        elif a.cmd == "release":
            out = release(a.dir, a.node[0], a.run)
        elif a.cmd == "heartbeat":
            out = heartbeat(a.dir, a.node, a.run, a.job)
        else:
            out = {"lease": read(a.dir, a.node[0])}
    except (OSError, ValueError) as e:
        print(json.dumps({"error": "%s: %s" % (type(e).__name__, e)}))
        return 1
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
