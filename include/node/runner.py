"""Run one command on this node from a JSON spec read on stdin. Stdlib only, Python 3.8+.

Spec: {"argv": [...], "env": {...}, "cwd": "/path" | null, "timeout": seconds | null}

The argv is exec'd directly, never through a shell, so no value in it is ever parsed as shell
syntax. Secrets arrive in "env" over the SSH channel's stdin: they are never in any process's argv
(visible in `ps`) and never written to disk. The child runs in its own process group, and that
group is what is killed when the SSH channel closes (Airflow kill, dropped connection) or the
timeout passes, so nothing the step started outlives it by accident.
"""
import json
import os
import signal
import subprocess
import sys
import threading


def main():
    spec = json.loads(sys.stdin.readline())
    argv = spec["argv"]
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        print("runner: argv must be a non-empty list of strings", file=sys.stderr)
        return 2
    env = dict(os.environ)
    env.update({str(k): str(v) for k, v in (spec.get("env") or {}).items()})
    cwd = spec.get("cwd")
    if cwd and not os.path.isdir(cwd):
        print("runner: working directory %s does not exist on this node" % cwd, file=sys.stderr)
        return 127
    try:
        proc = subprocess.Popen(argv, env=env, cwd=cwd or None, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    except FileNotFoundError:
        print("runner: %s: command not found on this node (PATH=%s)" % (argv[0], env.get("PATH")),
              file=sys.stderr)
        return 127
    except PermissionError as e:
        print("runner: %s: %s" % (argv[0], e), file=sys.stderr)
        return 126

    def kill_group(*_):
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    # sshd sends SIGHUP (or the pipe closes) when the client goes away: take the child along.
    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, kill_group)

    def watch_stdin():
        try:
            sys.stdin.read()
        except Exception:
            pass
        if proc.poll() is None:
            kill_group()

    threading.Thread(target=watch_stdin, daemon=True).start()
    try:
        return proc.wait(timeout=spec.get("timeout"))
    except subprocess.TimeoutExpired:
        print("runner: %s timed out after %ss; stopped it" % (argv[0], spec.get("timeout")),
              file=sys.stderr)
        kill_group()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        return 124


if __name__ == "__main__":
    sys.exit(main())
