"""`make up`: `airflow standalone` for these DAGs, watched so that it fails loudly.

    python -m slimeflow.devserver [--port 8080] [--ready-timeout 300]

`airflow standalone` starts its four components (scheduler, dag-processor, api-server,
triggerer) as `airflow <component>`, found on PATH, and keeps running when one of them dies: a
fresh clone whose `.venv/bin` is not on PATH got four `FileNotFoundError: 'airflow'` and a parent
that stayed up with port 8080 dead. This wrapper:
- puts this interpreter's bin folder first on PATH, so the components are this venv's Airflow;
- passes standalone's output through;
- exits non-zero, with the component's last lines, as soon as a component exits or fails to
  start, or when the UI does not answer within --ready-timeout; it then stops the others;
- says on every start where the admin password is (standalone prints it only the first time).
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import deque
from pathlib import Path

COMPONENTS = ("scheduler", "dag-processor", "api-server", "triggerer")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_PREFIX = re.compile(r"^(?P<name>[a-z-]+)\s*\| (?P<line>.*)$")
# A component that cannot start at all dies in standalone's thread: nothing else says so.
_START_FAILED = re.compile(r"FileNotFoundError|PermissionError: \[Errno 13\]")


class Watch:
    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.tails = {name: deque(maxlen=20) for name in COMPONENTS + ("standalone",)}
        self.failure = None
        self.lock = threading.Lock()

    def pump(self):
        for raw in self.proc.stdout:
            text = raw.decode("utf-8", "replace").rstrip("\n")
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
            plain = _ANSI.sub("", text)
            m = _PREFIX.match(plain)
            name = m.group("name") if m and m.group("name") in self.tails else "standalone"
            self.tails[name].append(m.group("line") if m else plain)
            if _START_FAILED.search(plain):
                self.fail(f"an Airflow component could not be started ({plain.strip()}); is "
                          f"Airflow installed in {Path(sys.executable).parent} (run `make venv`)?")

    def fail(self, msg: str):
        with self.lock:
            if self.failure is None:
                self.failure = msg

    def components(self) -> dict:
        """{component: pid} of standalone's children that were started as `airflow <name>`
        (first seen by their argv; Airflow retitles some processes later)."""
        import psutil

        out = {}
        try:
            kids = psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return out
        for k in kids:
            try:
                argv = k.cmdline()
            except psutil.Error:
                continue
            for name in COMPONENTS:
                if name in argv[1:3]:
                    out[name] = k.pid
        return out


def alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def ui_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/api/v2/monitor/health", timeout=3) as r:
            return r.status == 200
    except Exception:  # not up yet
        return False


def password_note(home: Path) -> str:
    f = home / "simple_auth_manager_passwords.json.generated"
    if os.environ.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "").lower() == "true":
        return "no login needed (simple_auth_manager_all_admins is on)"
    return (f"log in as admin; the password is in {f}" if f.exists() else
            f"log in as admin; the password will be in {f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m slimeflow.devserver")
    ap.add_argument("--port", type=int, default=int(os.environ.get("AIRFLOW__API__PORT", 8080)))
    ap.add_argument("--ready-timeout", type=float, default=300)
    a = ap.parse_args(argv)
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["AIRFLOW__API__PORT"] = str(a.port)
    env["PYTHONUNBUFFERED"] = "1"  # standalone's lines as they come, not in 8 KB bursts
    host = env.setdefault("AIRFLOW__API__HOST", "127.0.0.1")
    home = Path(env.get("AIRFLOW_HOME") or Path.home() / "airflow")
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{a.port}"
    proc = subprocess.Popen([str(Path(sys.executable).parent / "airflow"), "standalone"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    watch = Watch(proc)
    threading.Thread(target=watch.pump, daemon=True).start()
    stop = {"sig": None}

    def on_signal(sig, _frame):
        stop["sig"] = sig
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    seen, ready, started = {}, False, time.monotonic()
    rc = 0
    while stop["sig"] is None:
        time.sleep(1)
        if proc.poll() is not None:
            watch.fail(f"airflow standalone exited with code {proc.returncode}; its last lines:\n"
                       + "\n".join(watch.tails["standalone"]))
        for name, pid in watch.components().items():
            seen.setdefault(name, pid)
        live = {n: pid for n, pid in seen.items() if alive(pid)}
        gone = [n for n in seen if n not in live]
        if gone and watch.failure is None:
            n = gone[0]
            time.sleep(1)  # its last lines may still be in the pipe
            watch.fail(f"the Airflow {n} (pid {seen[n]}) exited, so Airflow is not running "
                       f"whole; its last lines:\n" + ("\n".join(watch.tails[n]) or "(none)"))
        if watch.failure:
            rc = 1
            break
        if not ready and ui_answers(url):
            ready = True
            print(f"slimeflow: Airflow is up at {url} ({', '.join(sorted(live))}); "
                  f"{password_note(home)}", flush=True)
        if not ready and time.monotonic() - started > a.ready_timeout:
            missing = [n for n in COMPONENTS if n not in live]
            watch.fail(f"the Airflow UI did not answer at {url} within {a.ready_timeout:.0f} s"
                       + (f"; not running: {', '.join(missing)}" if missing else "")
                       + "; the api-server's last lines:\n"
                       + "\n".join(watch.tails["api-server"]))
            rc = 1
            break
    if watch.failure:
        print(f"slimeflow: make up failed: {watch.failure}", file=sys.stderr, flush=True)
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    return rc


if __name__ == "__main__":
    sys.exit(main())
