"""`make up` as the README writes it, from a shell whose PATH lacks .venv/bin (a fresh clone):
Airflow comes up on 127.0.0.1:8080 with our DAGs, the password's whereabouts are said on every
start, and a component that dies stops the target with its error."""
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.simcluster.cluster import port_open

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
URL = "http://127.0.0.1:8080"


def shell_env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MAKE", "MFLAGS", "AIRFLOW", "VIRTUAL_ENV", "PYTHON"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "/usr/bin:/bin").split(os.pathsep)
                                  if ".venv" not in p)
    env["AIRFLOW_HOME"] = str(home)  # the Makefile's `AIRFLOW_HOME ?=`: where a user's would go
    return env


class MakeUp:
    def __init__(self, home: Path, log: Path):
        self.log_path = log
        self.proc = subprocess.Popen(["make", "up"], cwd=ROOT, env=shell_env(home),
                                     stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, needle: str, polls: int = 600) -> str:
        for _ in range(polls):  # 0.5 s apart; `make up` answers in well under that on 2 cores
            if needle in self.text():
                return self.text()
            if self.proc.poll() is not None:
                break
            time.sleep(0.5)
        raise AssertionError(f"{needle!r} not in the output of make up:\n{self.text()[-4000:]}")

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def components(home: Path) -> dict:
    """{name: pid} of the Airflow components running with this AIRFLOW_HOME."""
    import psutil

    out = {}
    for p in psutil.process_iter(["cmdline", "environ"]):
        try:
            argv, env = p.info["cmdline"] or [], p.info["environ"] or {}
        except psutil.Error:
            continue
        if env.get("AIRFLOW_HOME") == str(home) and len(argv) > 2 and \
                argv[1].endswith("/airflow") and argv[2] != "standalone":
            out[argv[2]] = p.pid
    return out


def api_get(path: str, password: str):
    return json.loads(api_get_text(path, password))


def api_get_text(path: str, password: str) -> str:
    tok = urllib.request.Request(URL + "/auth/token", method="POST",
                                 data=json.dumps({"username": "admin",
                                                  "password": password}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(tok, timeout=30) as r:
        token = json.load(r)["access_token"]
    req = urllib.request.Request(URL + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.read().decode()


def test_make_up_from_a_fresh_shell_serves_the_dags_and_fails_loudly(tmp_path):
    if port_open("127.0.0.1", 8080):
        pytest.fail("port 8080 is busy; make up needs it")
    home = tmp_path / "airflow"
    first = MakeUp(home, tmp_path / "up1.log")
    try:
        out = first.wait_for("slimeflow: Airflow is up at http://127.0.0.1:8080")
        pw_file = home / "simple_auth_manager_passwords.json.generated"
        assert f"the password is in {pw_file}" in out
        password = json.loads(pw_file.read_text())["admin"]
        want = {"slime_qwen3_next_80b_a3b", "slime_qwen3_30b_a3b", "slime_qwen3_4b"}
        for _ in range(240):  # the dag-processor parses the files a few seconds after start
            dags = {d["dag_id"] for d in api_get("/api/v2/dags?limit=100", password)["dags"]}
            if want <= dags:
                break
            time.sleep(0.5)
        assert want <= dags
        # the training view answers with Airflow's own auth: not without a token
        try:
            urllib.request.urlopen(URL + "/slimeflow/training", timeout=30)
            raise AssertionError("the training view answered without a login")
        except urllib.error.HTTPError as e:
            assert e.code in (401, 403), e.code
        page = api_get_text("/slimeflow/training", password)
        assert "slimeflow training" in page and "No runs of slimeflow DAGs yet." in page
        # a component that dies: the target stops, says which and shows its last lines
        victim = components(home)["triggerer"]
        os.kill(victim, signal.SIGKILL)
        first.proc.wait(60)
        assert first.proc.returncode != 0
        # (the victim may be the triggerer's own child process; its parent then exits)
        assert ("slimeflow: make up failed: the Airflow triggerer (pid ") in first.text()
        assert ") exited, so Airflow is not running whole; its last lines:" in first.text()
        assert "Starting the triggerer" in first.text().split("make up failed")[1]
        for _ in range(60):  # the others are stopped with it
            if not components(home) and not port_open("127.0.0.1", 8080):
                break
            time.sleep(0.5)
        assert components(home) == {} and not port_open("127.0.0.1", 8080)
    finally:
        first.stop()
    # a restart: standalone no longer prints the password, make up still says where it is
    again = MakeUp(home, tmp_path / "up2.log")
    try:
        out = again.wait_for("slimeflow: Airflow is up at http://127.0.0.1:8080")
        assert f"the password is in {pw_file}" in out
    finally:
        again.stop()
    for _ in range(120):  # make is gone at once; the wrapper then stops standalone's group
        if not components(home):
            break
        time.sleep(0.5)
    assert components(home) == {}
