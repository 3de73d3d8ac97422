"""Job state from Ray's Jobs REST API (raystate.read_job), and a dead dashboard with a live GCS.

The bodies below were captured from a real Ray 2.60 head in a private namespace (GET
/api/jobs/<id> after `ray start --head`; then the dashboard process was SIGKILLed: the GET was
refused while the GCS still accepted on 6379 and gcs_server/raylet still ran)."""
import http.server
import importlib.util
import json
import socket
import threading
from pathlib import Path

import pytest

NODE = Path(__file__).resolve().parents[2] / "include" / "node"


def _node_module(name):
    spec = importlib.util.spec_from_file_location("rest_" + name, NODE / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


raystate = _node_module("raystate")
jobwatch = _node_module("jobwatch")
lease = _node_module("lease")

_TAIL = ('"driver_agent_http_address": "http://127.0.0.1:52365", "driver_node_id": '
         '"df0d2ac152bb8ba6c7f2087c3d757c2186e2cec48cebf3ee9a43a975"')
REAL = {
    "SUCCEEDED": '{"type": "SUBMISSION", "job_id": null, "submission_id": "J1", "driver_info": '
                 'null, "status": "SUCCEEDED", "entrypoint": "echo hi", "message": "Job finished '
                 'successfully.", "error_type": null, "start_time": 1796189547106, "end_time": '
                 '1796189548443, "metadata": null, "runtime_env": null, ' + _TAIL +
                 ', "driver_exit_code": 0}',
    "RUNNING": '{"type": "SUBMISSION", "job_id": null, "submission_id": "J2", "driver_info": '
               'null, "status": "RUNNING", "entrypoint": "sleep 120", "message": "Job is '
               'currently running.", "error_type": null, "start_time": 1796189549215, '
               '"end_time": null, "metadata": null, "runtime_env": null, ' + _TAIL +
               ', "driver_exit_code": null}',
    "STOPPED": '{"type": "SUBMISSION", "job_id": null, "submission_id": "J2", "driver_info": '
               'null, "status": "STOPPED", "entrypoint": "sleep 120", "message": "Job was '
               'intentionally stopped.", "error_type": null, "start_time": 1796189549215, '
               '"end_time": 1796189551284, "metadata": null, "runtime_env": null, ' + _TAIL +
               ', "driver_exit_code": null}',
    "FAILED": '{"type": "SUBMISSION", "job_id": null, "submission_id": "J3", "driver_info": '
              'null, "status": "FAILED", "entrypoint": "python3 -c x", "message": "Job '
              'entrypoint command failed with exit code 3, last available logs (truncated to '
              '20,000 chars):\\nboom\\n", "error_type": "JOB_ENTRYPOINT_COMMAND_ERROR", '
              '"start_time": 1796189552298, "end_time": 1796189553664, "metadata": null, '
              '"runtime_env": null, ' + _TAIL + ', "driver_exit_code": 3}',
}
NOT_FOUND = (404, "Job NOPE does not exist")  # real Ray 2.60 body


def _no_gcs(address):
    raise AssertionError("the GCS is only asked when the dashboard does not answer")


@pytest.mark.parametrize("state", sorted(REAL))
def test_read_job_reads_real_job_details(state):
    urls = []

    def get(url, timeout):
        urls.append(url)
        return 200, REAL[state]
    got = raystate.read_job("J/x", "http://127.0.0.1:8265/", get=get, gcs=_no_gcs,
                            cli=lambda *a: pytest.fail("no CLI when REST answers"))
    assert got["status"] == state and got["via"] == "rest"
    assert got["info"]["status"] == state and "start_time" in got["info"]
    assert urls == ["http://127.0.0.1:8265/api/jobs/J%2Fx"]  # the id is quoted, once


def test_404_is_missing():
    got = raystate.read_job("NOPE", get=lambda u, t: NOT_FOUND, gcs=_no_gcs)
    assert got["status"] == "MISSING" and "does not exist" in got["text"]


def test_other_http_answers_are_unknown_and_an_unreadable_200_falls_back_to_the_cli():
    got = raystate.read_job("J", get=lambda u, t: (500, "boom"), gcs=_no_gcs)
    assert got["status"] == "UNKNOWN" and "HTTP 500" in got["text"]
    calls = []
    got = raystate.read_job("J", get=lambda u, t: (200, "<html>"), gcs=_no_gcs,
                            cli=lambda j, a: calls.append(j) or ("RUNNING", "Status for job"))
    assert got == {"status": "RUNNING", "info": None, "via": "cli", "text": "Status for job"}
    assert calls == ["J"]


def _refused(url, timeout):
    raise OSError("[Errno 111] Connection refused")


@pytest.mark.parametrize("gcs,want", [
    ({"gcs_answers": True, "gcs_address": "10.0.0.1:6379", "gcs_servers": [5], "raylets": 1},
     "DASHBOARD_DOWN"),
    # the GCS does not accept (yet) but gcs_server runs: not a lost cluster either
    ({"gcs_answers": False, "gcs_address": None, "gcs_servers": [5], "raylets": 1},
     "DASHBOARD_DOWN"),
    ({"gcs_answers": False, "gcs_address": None, "gcs_servers": [], "raylets": 0},
     "NO_CLUSTER"),
])
def test_a_dead_dashboard_is_not_a_lost_cluster_while_the_gcs_lives(gcs, want):
    got = raystate.read_job("J", get=_refused, gcs=lambda a: gcs)
    assert got["status"] == want and got["gcs"] == gcs
    assert "does not answer" in got["text"]


def _fake_proc(tmp_path, procs):
    for pid, (comm, argv) in procs.items():
        d = tmp_path / str(pid)
        d.mkdir()
        (d / "comm").write_text(comm + "\n")
        (d / "stat").write_text(f"{pid} ({comm}) S 1 1")
        (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    return str(tmp_path)


def test_gcs_state_tries_the_raylets_gcs_address_first(tmp_path):
    proc = _fake_proc(tmp_path, {5: ("gcs_server", ["gcs_server"]),
                                 9: ("raylet", ["raylet", "--gcs-address=10.231.1.11:6379"])})
    tried = []

    def connect(host, port):
        tried.append((host, str(port)))
        return host == "127.0.0.1"
    g = raystate.gcs_state("http://10.231.1.11:8265", proc=proc, connect=connect)
    assert tried == [("10.231.1.11", "6379"), ("127.0.0.1", "6379")]  # the duplicate once
    assert g == {"gcs_answers": True, "gcs_address": "127.0.0.1:6379", "gcs_servers": [5],
                 "raylets": 1}


def test_tcp_answers_against_a_real_socket():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    try:
        assert raystate.tcp_answers("127.0.0.1", port)
    finally:
        srv.close()
    assert not raystate.tcp_answers("127.0.0.1", port)  # closed now: refused


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/api/jobs/J2":
            code, body = 200, REAL["RUNNING"]
        else:
            code, body = NOT_FOUND
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass


def test_read_job_over_real_http_ignores_the_nodes_proxy(monkeypatch):
    srv = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    # a node's http_proxy must not capture the request to its own dashboard
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    addr = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        assert raystate.read_job("J2", addr, gcs=_no_gcs)["status"] == "RUNNING"
        assert raystate.read_job("NOPE", addr, gcs=_no_gcs)["status"] == "MISSING"
    finally:
        srv.shutdown()
        srv.server_close()


def test_jobwatch_polls_through_rest_and_hands_on_the_gcs_facts(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_TMPDIR", raising=False)
    gcs = {"gcs_answers": True, "gcs_address": "127.0.0.1:6379", "gcs_servers": [5],
           "raylets": 1}
    monkeypatch.setattr(jobwatch.raystate, "_http_get", _refused)
    monkeypatch.setattr(jobwatch.raystate, "gcs_state", lambda address: gcs)
    # no `ray` may be spawned on a poll any more
    monkeypatch.setattr(raystate.subprocess, "run", lambda *a, **k: pytest.fail("ray CLI"))
    assert jobwatch.main(["--ray-job", "J", "--ray-address", "http://127.0.0.1:8265",
                          "--progress", str(tmp_path / "p.json")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "DASHBOARD_DOWN" and out["gcs"] == gcs and out["job"] is None
    monkeypatch.setattr(jobwatch.raystate, "_http_get", lambda u, t: (200, REAL["FAILED"]))
    jobwatch.main(["--ray-job", "J", "--ray-address", "http://127.0.0.1:8265",
                   "--progress", str(tmp_path / "p.json")])
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "FAILED" and out["status_via"] == "rest"
    assert out["job"]["driver_exit_code"] == 3 and "gcs" not in out


@pytest.mark.parametrize("state,running", [("RUNNING", True), ("PENDING", True),
                                           ("DASHBOARD_DOWN", True), ("FAILED", False),
                                           ("MISSING", False), ("NO_CLUSTER", False)])
def test_a_lease_is_not_broken_while_its_job_may_run(state, running):
    read = lambda job, address: {"status": state}  # noqa: E731
    assert lease.ray_job_running("http://10.0.0.1:8265", "sid", read=read) is running
