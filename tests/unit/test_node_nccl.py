"""include/node/nccl_check.py on the CPU: arguments, nccl-tests arithmetic, the no-CUDA answer
(the venv's torch is a CPU build, so that path is real), the process launcher through gloo, and
the timeout that kills the workers' process group. The NCCL run itself is tests/gpu/."""
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "include" / "node" / "nccl_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("node_nccl_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


nc = _load()
HAVE_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="torch is not installed here")


def run(args, env_extra=None, timeout=120):
    env = dict(os.environ)
    env.update(env_extra or {})
    p = subprocess.run([sys.executable, str(SCRIPT)] + list(args), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=timeout, env=env)
    lines = p.stdout.decode().strip().splitlines()
    assert lines, p.stderr.decode()
    return p.returncode, json.loads(lines[-1])


# --------------------------------------------------------------------------- import hygiene
def test_stdlib_only_at_import():
    code = ("import sys, importlib.util; s = importlib.util.spec_from_file_location('m', %r); "
            "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); "
            "print('torch' in sys.modules)" % str(SCRIPT))
    out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, check=True)
    assert out.stdout.decode().strip() == "False"


# --------------------------------------------------------------------------- arguments
def test_defaults():
    a = nc.parse_args([])
    assert (a.gpus, a.size_mb, a.iters, a.timeout, a.dtype, a.worker) == \
        (None, 256, 20, 180.0, "float32", False)
    assert a.python == sys.executable and a.backend == "nccl"


def test_explicit_values():
    a = nc.parse_args(["--gpus", "8", "--size-mb", "1024", "--iters", "50", "--warmup", "0",
                       "--timeout", "30", "--dtype", "bf16"])
    assert (a.gpus, a.size_mb, a.iters, a.warmup, a.timeout, a.dtype) == \
        (8, 1024.0, 50, 0, 30.0, "bf16")


@pytest.mark.parametrize("argv", [
    ["--gpus", "0"], ["--gpus", "-2"], ["--gpus", "two"], ["--size-mb", "0"],
    ["--size-mb", "nan"], ["--iters", "0"], ["--timeout", "-1"], ["--timeout", "inf"],
    ["--warmup", "-1"], ["--dtype", "fp8"], ["--bogus"], ["--master-port", "70000"],
    ["--backend", "gloo"],
])
def test_bad_arguments_raise(argv):
    with pytest.raises(nc.ArgError):
        nc.parse_args(argv)


def test_bad_arguments_answer_json_exit_2():
    rc, out = run(["--iters", "0"])
    assert rc == 2 and out["ok"] is False
    assert out["error"].startswith("bad arguments:") and "--iters" in out["error"]


# --------------------------------------------------------------------------- arithmetic
def test_sizes():
    assert nc.size_bytes(256) == 256 * 1024 * 1024
    assert nc.numel_for(256, "float32") == 64 * 1024 * 1024
    assert nc.numel_for(256, "bf16") == 128 * 1024 * 1024
    assert nc.numel_for(1e-9, "float32") == 1


def test_algbw_is_bytes_over_time_in_1e9():
    assert nc.alg_bandwidth(1_000_000_000, 0.5) == pytest.approx(2.0)
    assert nc.alg_bandwidth(nc.size_bytes(1024), 1.0) == pytest.approx(1.073741824)
    with pytest.raises(ValueError):
        nc.alg_bandwidth(1, 0)


@pytest.mark.parametrize("n,factor", [(1, 0.0), (2, 1.0), (4, 1.5), (8, 1.75), (16, 1.875)])
def test_busbw_nccl_tests_convention(n, factor):
    assert nc.bus_bandwidth(100.0, n) == pytest.approx(100.0 * factor)
    assert nc.bus_bandwidth(100.0, n) == pytest.approx(100.0 * 2 * (n - 1) / n)


def test_busbw_rejects_empty_world():
    with pytest.raises(ValueError):
        nc.bus_bandwidth(1.0, 0)


# --------------------------------------------------------------------------- no CUDA (real)
@needs_torch
def test_no_cuda_is_one_sentence_error():
    rc, out = run(["--timeout", "60"], env_extra={"NCCL_NVLS_ENABLE": "0"})
    assert rc == 1 and out["ok"] is False and out["skipped"] is None
    assert "CUDA is not available" in out["error"]
    assert out["error"].count(". ") == 0 and out["error"].endswith(".")
    assert out["torch"] and out["algbw_gbps"] is None and out["busbw_gbps"] is None
    assert out["env"]["NCCL_NVLS_ENABLE"] == "0"  # reported as found, never overridden


def test_missing_torch_is_reported(tmp_path):
    fake = tmp_path / "python-no-torch"
    fake.write_text("#!/bin/sh\nexec %s -c 'import sys; sys.modules[\"torch\"] = None; "
                    "exec(sys.argv[1])' \"$2\"\n" % sys.executable)
    fake.chmod(0o755)
    rc, out = run(["--python", str(fake), "--timeout", "30"])
    assert rc == 1 and out["ok"] is False
    assert "torch is not importable" in out["error"]


def test_unrunnable_python_is_reported(tmp_path):
    rc, out = run(["--python", str(tmp_path / "nope"), "--timeout", "10"])
    assert rc == 1 and out["ok"] is False and "could not run" in out["error"]


# --------------------------------------------------------------------------- fake torch
FAKE = r"""#!/bin/sh
# A stand-in interpreter: `-c SCRIPT` answers the detection; anything else is a worker.
if [ "$1" = "-c" ]; then
  printf '%s\n' "$FAKE_DETECT"
  exit 0
fi
if [ "$FAKE_MODE" = "hang" ]; then
  sleep 300 &
  echo $! >> "$FAKE_PIDS"
  echo $$ >> "$FAKE_PIDS"
  wait
fi
if [ "$FAKE_MODE" = "fail" ]; then
  case " $* " in *" --worker "*) ;; *) exit 9 ;; esac
  if [ "$RANK" = "1" ]; then
    echo '{"rank": 1, "ok": false, "error": "RuntimeError: NCCL error: unhandled system error"}'
    exit 1
  fi
  sleep 300 &
  echo $! >> "$FAKE_PIDS"
  wait
fi
"""


def fake_python(tmp_path, mode, detect=None):
    exe = tmp_path / "fakepy"
    exe.write_text(FAKE)
    exe.chmod(0o755)
    pids = tmp_path / "pids"
    pids.write_text("")
    detect = detect or {"torch": "2.11.0+cu130", "cuda": "13.0", "cuda_available": True,
                        "device_count": 2, "nccl_version": "2.28.3", "dist_available": True}
    env = {"FAKE_MODE": mode, "FAKE_PIDS": str(pids), "FAKE_DETECT": json.dumps(detect)}
    return exe, pids, env


def _alive_pids(pids_file):
    pids = [int(x) for x in pids_file.read_text().split()]
    return pids, [p for p in pids if nc._alive(p)]


def test_single_gpu_is_skipped(tmp_path):
    exe, _, env = fake_python(tmp_path, "none", {"torch": "2.11.0", "cuda": "13.0",
                                                 "cuda_available": True, "device_count": 1,
                                                 "dist_available": True})
    rc, out = run(["--python", str(exe)], env_extra=env)
    assert rc == 0 and out["ok"] is True and out["skipped"] == "single GPU"
    assert out["world_size"] == 1 and out["error"] is None


def test_gpus_1_on_a_multi_gpu_node_is_skipped(tmp_path):
    exe, _, env = fake_python(tmp_path, "none")
    rc, out = run(["--python", str(exe), "--gpus", "1"], env_extra=env)
    assert rc == 0 and out["skipped"] == "single GPU"


def test_more_gpus_than_visible(tmp_path):
    exe, _, env = fake_python(tmp_path, "none")
    rc, out = run(["--python", str(exe), "--gpus", "8"], env_extra=env)
    assert rc == 1 and out["error"] == "asked for 8 GPUs but torch sees only 2."


def test_detection_without_json_is_an_error(tmp_path):
    exe, _, env = fake_python(tmp_path, "none")
    env["FAKE_DETECT"] = ""
    # the fake answers -c at once with an empty line: no JSON -> an error, not a hang
    rc, out = run(["--python", str(exe), "--timeout", "3"], env_extra=env)
    assert rc == 1 and "exited with 0" in out["error"] and "timeout" not in out["error"]


def test_detection_that_hangs_is_bounded(tmp_path):
    exe = tmp_path / "slowpy"
    exe.write_text("#!/bin/sh\nsleep 300 &\necho $! > %s\nwait\n" % (tmp_path / "pid"))
    exe.chmod(0o755)
    rc, out = run(["--python", str(exe), "--timeout", "2"])
    assert rc == 1 and out["ok"] is False
    assert "did not finish within the 2 s timeout" in out["error"]
    pid = int((tmp_path / "pid").read_text())
    deadline = time.time() + 5
    while nc._alive(pid) and time.time() < deadline:
        time.sleep(0.1)
    assert not nc._alive(pid), "the detection child's process group survived"


def test_worker_timeout_kills_the_process_group(tmp_path):
    exe, pids_file, env = fake_python(tmp_path, "hang")
    env["NCCL_NVLS_ENABLE"] = "0"
    rc, out = run(["--python", str(exe), "--timeout", "3"], env_extra=env)
    assert rc == 1 and out["ok"] is False and out["world_size"] == 2
    assert "did not finish within the 3 s timeout" in out["error"]
    assert "process group was killed" in out["error"]
    assert out["env"]["NCCL_NVLS_ENABLE"] == "0"
    deadline = time.time() + 5
    pids, alive = _alive_pids(pids_file)
    while alive and time.time() < deadline:
        time.sleep(0.1)
        pids, alive = _alive_pids(pids_file)
    assert len(pids) == 4  # 2 workers + their 2 sleeps
    assert alive == [], "processes of the group survived the timeout: %s" % alive


def test_a_failing_rank_stops_the_others_at_once(tmp_path):
    exe, pids_file, env = fake_python(tmp_path, "fail")
    rc, out = run(["--python", str(exe), "--timeout", "60"], env_extra=env)
    assert rc == 1 and out["ok"] is False
    assert "did not finish within" not in out["error"]  # stopped by the failure, not the 60 s timeout
    assert out["error"].startswith("rank 1 exited with 1: RuntimeError: NCCL error")
    pids, alive = _alive_pids(pids_file)
    deadline = time.time() + 5
    while alive and time.time() < deadline:
        time.sleep(0.1)
        pids, alive = _alive_pids(pids_file)
    assert alive == []


# --------------------------------------------------------------------------- real launcher
@needs_torch
def test_launcher_end_to_end_with_gloo_on_cpu():
    """The same launcher and worker code as on GPUs, with gloo on the CPU: rendezvous, timing,
    the MAX over ranks, the correctness sum and the figures."""
    rc, out = run(["--backend", "gloo", "--gpus", "3", "--size-mb", "1", "--iters", "3",
                   "--warmup", "1", "--timeout", "90"], env_extra={"NCCL_NVLS_ENABLE": "0"})
    assert rc == 0, out
    assert out["ok"] is True and out["world_size"] == 3 and out["error"] is None
    assert out["devices"] == ["cpu", "cpu", "cpu"]
    assert out["algbw_gbps"] > 0
    assert out["busbw_gbps"] == pytest.approx(out["algbw_gbps"] * 4 / 3, rel=1e-2)
    assert out["env"]["NCCL_NVLS_ENABLE"] == "0"
