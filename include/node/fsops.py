"""Small filesystem operations the pipeline needs on a node. Stdlib only, Python 3.8+.

Each subcommand prints one JSON object. Writes are atomic (temp file + rename), so a reader never
sees half a file.
"""
import argparse
import json
import os
import shutil
import sys
import time


def _atomic_write(path, text):
    d = os.path.dirname(path)
    os.makedirs(d, exist_ok=True)
    tmp = "%s.tmp-%d" % (path, os.getpid())
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def cmd_marker_write(a):
    _atomic_write(a.path, a.token)
    return {"written": a.path}


def cmd_marker_check(a):
    try:
        with open(a.path) as f:
            seen = f.read().strip() == a.token
    except OSError:
        seen = False
    return {"visible": seen, "path": a.path}


def cmd_remove(a):
    try:
        os.remove(a.path)
        return {"removed": True}
    except FileNotFoundError:
        return {"removed": False}


def cmd_torch_dist_state(a):
    """complete: converter finished and our manifest matches; stale: finished from other inputs;
    partial: something is there but not a finished conversion; absent: nothing."""
    d = a.dir.rstrip("/")
    if not os.path.exists(d):
        return {"state": "absent"}
    latest = os.path.join(d, "latest_checkpointed_iteration.txt")
    manifest_path = os.path.join(d, ".slimeflow-manifest.json")
    try:
        with open(latest) as f:
            finished = f.read().strip() == "release" and os.path.isdir(os.path.join(d, "release"))
    except OSError:
        finished = False
    if not finished:
        return {"state": "partial"}
    try:
        with open(manifest_path) as f:
            have = json.load(f)
    except (OSError, ValueError):
        return {"state": "stale", "reason": "no slimeflow manifest"}
    want = json.loads(a.manifest)
    diff = sorted(k for k in want if have.get(k) != want[k])
    if diff:
        return {"state": "stale", "reason": "manifest differs in " + ", ".join(diff)}
    return {"state": "complete", "bytes": _du(d)}


def cmd_move_aside(a):
    d = a.dir.rstrip("/")
    if not os.path.exists(d):
        return {"moved": None}
    dest = "%s.%s-%s" % (d, a.reason, time.strftime("%Y%m%dT%H%M%S", time.gmtime()))
    os.rename(d, dest)
    return {"moved": dest}


def cmd_write_json(a):
    json.loads(a.json)
    _atomic_write(a.path, a.json)
    return {"written": a.path}


def cmd_read_text(a):
    try:
        with open(a.path) as f:
            return {"exists": True, "text": f.read(a.max_bytes)}
    except FileNotFoundError:
        return {"exists": False, "text": None}


def _json_file(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def cmd_read_run(a):
    """What the training view shows of one run, in one exec: its run record, progress.json, the
    last --points history points of each attempt, and the latest checkpoint of --save-dir."""
    d = a.dir.rstrip("/")
    out = {"record": _json_file(os.path.join(d, "attempts.json")),
           "progress": _json_file(os.path.join(d, "progress.json")), "history": {}}
    for attempt in (out["record"] or {}).get("attempts", []):
        path = os.path.join(d, "history-%s.jsonl" % attempt.get("id"))
        try:
            with open(path) as f:
                lines = f.readlines()[-a.points:]
        except OSError:
            continue
        pts = []
        for line in lines:
            try:
                pts.append(json.loads(line))
            except ValueError:  # a line cut by a full disk: skip it
                continue
        out["history"][attempt.get("id")] = pts
    if a.save_dir:
        out["checkpoint"] = cmd_latest_checkpoint(argparse.Namespace(dir=a.save_dir))
    return out


def cmd_latest_checkpoint(a):
    """Megatron/slime layout: <save>/latest_checkpointed_iteration.txt + iter_%07d/."""
    d = a.dir.rstrip("/")
    try:
        with open(os.path.join(d, "latest_checkpointed_iteration.txt")) as f:
            raw = f.read().strip()
    except OSError:
        return {"iteration": None, "path": None, "save_dir": d}
    if not raw.isdigit():
        return {"iteration": None, "path": None, "save_dir": d, "raw": raw}
    it = int(raw)
    path = os.path.join(d, "iter_%07d" % it)
    return {"iteration": it, "path": path if os.path.isdir(path) else None, "save_dir": d}


def cmd_job_log(a):
    """Read a job log from a byte offset; never more than max_bytes per call."""
    if a.ray_job:
        # where Ray writes a job driver's output on the head
        # Ray's temp root is ${RAY_TMPDIR:-/tmp}/ray
        a.path = os.path.join(os.environ.get("RAY_TMPDIR") or "/tmp", "ray", "session_latest",
                              "logs", "job-driver-%s.log" % a.ray_job)
    try:
        size = os.path.getsize(a.path)
    except OSError:
        return {"exists": False, "offset": a.offset, "lines": []}
    offset = a.offset if a.offset <= size else 0  # the log was replaced: start over
    with open(a.path, "rb") as f:
        f.seek(offset)
        data = f.read(a.max_bytes)
    cut = data.rfind(b"\n") + 1  # keep a trailing partial line for the next call
    if cut == 0 and len(data) < a.max_bytes:
        data = b""
    else:
        data = data[:cut] if cut else data
    return {"exists": True, "offset": offset + len(data), "size": size,
            "lines": data.decode("utf-8", "replace").splitlines()}


def _du(d):
    total = 0
    for root, _, files in os.walk(d):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def cmd_du(a):
    return {"bytes": _du(a.dir) if os.path.exists(a.dir) else 0,
            "free_bytes": shutil.disk_usage(a.dir if os.path.exists(a.dir)
                                            else os.path.dirname(a.dir) or "/").free}


def main(argv=None):
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd")
    s = sub.add_parser("marker-write"); s.add_argument("--path"); s.add_argument("--token")
    s = sub.add_parser("marker-check"); s.add_argument("--path"); s.add_argument("--token")
    s = sub.add_parser("remove"); s.add_argument("--path")
    s = sub.add_parser("torch-dist-state"); s.add_argument("--dir"); s.add_argument("--manifest")
    s = sub.add_parser("move-aside"); s.add_argument("--dir"); s.add_argument("--reason")
    s = sub.add_parser("write-json"); s.add_argument("--path"); s.add_argument("--json")
    s = sub.add_parser("read-text"); s.add_argument("--path")
    s.add_argument("--max-bytes", type=int, default=1 << 20)
    s = sub.add_parser("latest-checkpoint"); s.add_argument("--dir")
    s = sub.add_parser("read-run"); s.add_argument("--dir"); s.add_argument("--save-dir")
    s.add_argument("--points", type=int, default=5000)
    s = sub.add_parser("job-log"); s.add_argument("--path"); s.add_argument("--ray-job")
    s.add_argument("--offset", type=int, default=0)
    s.add_argument("--max-bytes", type=int, default=4 << 20)
    s = sub.add_parser("du"); s.add_argument("--dir")
    a = ap.parse_args(argv)
    if not a.cmd:
        ap.error("a subcommand is required")
    fn = globals()["cmd_" + a.cmd.replace("-", "_")]
    try:
        out = fn(a)
    except OSError as e:
        print(json.dumps({"error": "%s: %s" % (type(e).__name__, e)}))
        return 1
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
