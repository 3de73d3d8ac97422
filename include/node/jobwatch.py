"""One supervision poll of a Ray job on the head node. Stdlib only, Python 3.8+.

    jobwatch.py --ray-job ID --ray-address URL --progress PATH [--offset N] [--max-bytes B]
                [--write-progress JSON] [--save-dir D]
                [--lease-dir D --lease-run R --lease-node N ...]

In one exec: (1) writes the progress JSON it was given (atomically; the trigger computes it from
the log lines of the previous poll), (2) asks the dashboard's Jobs REST API for the job
(raystate.read_job: one urllib GET, no Ray import), (3) reads the job driver log from
byte offset N (N = -1: from the offset saved in PATH when PATH is about the same job, else 0), (4)
reads latest_checkpointed_iteration.txt in the save dir, (5) refreshes this run's node leases.
The progress JSON's "points" (rollouts and evals since the last write) are not kept in it: they
are appended to history-<ID>.jsonl beside it, the attempt's curve.
Prints one JSON object:

    {"status": "PENDING|RUNNING|SUCCEEDED|FAILED|STOPPED|MISSING|DASHBOARD_DOWN|NO_CLUSTER|UNKNOWN",
     "status_text": "...", "status_via": "rest"|"cli", "job": {start_time, end_time, ...}|null,
     "gcs": {...} (only when the dashboard did not answer), "offset": N, "lines": [...],
     "log_exists": bool, "saved": {...progress.json or null}, "iteration": int|null,
     "leases": {...}}

MISSING: the dashboard answers 404 (Ray does not know the job). DASHBOARD_DOWN: the dashboard
does not answer but the GCS does (or gcs_server runs): the cluster lives, the job may too.
NO_CLUSTER: neither answers (the cluster is gone, e.g. after a reboot). raystate.read_job
decides, and the train operator uses the same function (`raystate.py job`). The driver log is <tmp>/ray/session_latest/logs/job-driver-<ID>.log
(driver_log_path). Lines are returned as Ray wrote them (colour codes, `(Actor pid=N)` prefixes);
the trigger cleans them before it parses (slimeflow/utils/logparse.py).
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fsops  # noqa: E402
import lease  # noqa: E402
import raystate  # noqa: E402


def ray_status(address, job):
    """raystate.read_job: the Jobs REST API, not `ray job status`, which would import Ray afresh
    on every poll (seconds of CPU on the head) to send the same GET."""
    return raystate.read_job(job, address)


# JobDetails fields worth handing to the trigger (the message of a failed job carries 20,000
# characters of its log, which the trigger reads from the driver log anyway)
_JOB_FIELDS = ("status", "start_time", "end_time", "error_type", "driver_exit_code")


def ray_temp_root(environ=None):
    """Where Ray keeps its state on this node: $RAY_TMPDIR, else $TMPDIR, else /tmp (Ray 2.60
    ray/_common/utils.py get_default_system_temp_dir), plus "ray" (get_default_ray_temp_dir).
    An empty variable counts as unset. `ray start` here runs with the same login environment as
    this script (no --temp-dir), so both land on the same folder."""
    env = os.environ if environ is None else environ
    return os.path.join(env.get("RAY_TMPDIR") or env.get("TMPDIR") or "/tmp", "ray")


def driver_log_path(job, environ=None):
    """The job driver's log: <tmp>/ray/session_latest/logs/job-driver-<submission id>.log
    (seen on a real Ray 2.60 head: /tmp/ray/session_latest/logs/job-driver-ID.log, and with
    TMPDIR=/x: /x/ray/session_latest/...)."""
    return os.path.join(ray_temp_root(environ), "session_latest", "logs",
                        "job-driver-%s.log" % job)


def tail_lines(job, n):
    path = driver_log_path(job)
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 256 * 1024))
            data = f.read()
    except OSError:
        return []
    return data.decode("utf-8", "replace").splitlines()[-n:]


def history_path(progress, attempt):
    """<run dir>/history-<attempt>.jsonl, beside progress.json."""
    return os.path.join(os.path.dirname(os.path.abspath(progress)),
                        "history-%s.jsonl" % attempt)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--ray-job", required=True)
    ap.add_argument("--ray-address", required=True)
    ap.add_argument("--progress", required=True)
    ap.add_argument("--offset", type=int, default=-1)
    ap.add_argument("--max-bytes", type=int, default=1 << 20)
    ap.add_argument("--write-progress")
    ap.add_argument("--save-dir")
    ap.add_argument("--lease-dir")
    ap.add_argument("--lease-run")
    ap.add_argument("--lease-node", action="append", default=[])
    ap.add_argument("--tail", type=int, default=0,
                    help="with a status other than PENDING/RUNNING: the log's last N lines")
    a = ap.parse_args(argv)
    out = {}
    saved = None
    try:
        with open(a.progress) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        pass
    out["saved"] = saved
    job = ray_status(a.ray_address, a.ray_job)
    status = job["status"]
    out["status"], out["status_text"] = status, job.get("text") or ""
    out["status_via"] = job.get("via")
    info = job.get("info")
    out["job"] = {k: info.get(k) for k in _JOB_FIELDS} if isinstance(info, dict) else None
    if job.get("gcs") is not None:
        out["gcs"] = job["gcs"]
    offset = a.offset
    if offset < 0:
        offset = 0
        if saved and saved.get("attempt") == a.ray_job:
            offset = int(saved.get("log_offset") or 0)
    log = fsops.cmd_job_log(argparse.Namespace(ray_job=None, path=driver_log_path(a.ray_job),
                                               offset=offset, max_bytes=a.max_bytes))
    out["log_exists"] = log.get("exists", False)
    out["offset"] = log.get("offset", offset)
    out["lines"] = log.get("lines", [])
    out["more"] = bool(log.get("size") and out["offset"] < log["size"] - 1)
    # progress.json: what the trigger made of the lines so far, plus the offset handed out now,
    # so that a restarted trigger continues after the lines this poll returns
    prog = None
    if a.write_progress:
        try:
            prog = json.loads(a.write_progress)
        except ValueError as e:
            out["progress_error"] = str(e)
    elif saved and saved.get("attempt") == a.ray_job:
        prog = dict(saved)
    if prog is None:
        prog = {"attempt": a.ray_job}
    points = prog.pop("points", None) or []
    if points and prog.get("attempt") == a.ray_job:
        try:  # the attempt's history: one JSON line per rollout or eval (the training view)
            with open(history_path(a.progress, a.ray_job), "a") as f:
                f.write("".join(json.dumps(p) + "\n" for p in points))
        except OSError as e:
            out["progress_error"] = str(e)
    if prog.get("attempt") == a.ray_job:
        prog.update(log_offset=out["offset"], status=status, updated_at=time.time())
        try:
            fsops._atomic_write(a.progress, json.dumps(prog))
        except OSError as e:
            out["progress_error"] = str(e)
    if a.tail and status not in ("PENDING", "RUNNING"):
        out["tail"] = tail_lines(a.ray_job, a.tail)
    if a.save_dir:
        out["iteration"] = fsops.cmd_latest_checkpoint(argparse.Namespace(dir=a.save_dir))[
            "iteration"]
    if a.lease_dir and a.lease_run and a.lease_node:
        try:
            out["leases"] = lease.heartbeat(a.lease_dir, a.lease_node, a.lease_run, a.ray_job)
        except (OSError, ValueError) as e:
            out["leases"] = {"error": str(e)}
    out["time"] = time.time()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
