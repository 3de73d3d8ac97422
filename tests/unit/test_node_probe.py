"""include/node/probe.py: parsers on fixture strings, and whole runs against a fake node
(a fake nvidia-smi, hf, torch and triton; the real fla 0.4.0 tree; a loopback hub)."""
import http.server
import importlib.util
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NODE = REPO / "include" / "node"
PATCH = REPO / "include" / "patches" / "fla-wy-fast-sm100.patch"
WY_REL = Path("fla/ops/gated_delta_rule/wy_fast.py")
CACHE = Path(os.path.expanduser("~/.cache/slimeflow-sim"))


def _load(name):
    spec = importlib.util.spec_from_file_location("node_" + name, NODE / (name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


probe = _load("probe")


# --------------------------------------------------------------------------- fixtures (text)
def uuid(i, gen="a"):
    return "GPU-%s%07d-1111-2222-3333-444455556666" % (gen, i)


H100 = "".join("%d, NVIDIA H100 80GB HBM3, %s, 9.0, 81559, 580.95.05\n" % (i, uuid(i)) for i in range(8))
H200 = "".join("%d, NVIDIA H200, %s, 9.0, 143771, 570.124.06\n" % (i, uuid(i, "b")) for i in range(8))
B200 = "".join("%d, NVIDIA B200, %s, 10.0, 183359, 575.57.08\n" % (i, uuid(i, "c")) for i in range(8))
A100_470 = "".join("%d, NVIDIA A100-SXM4-80GB, %s, 81251, 470.256.02\n" % (i, uuid(i, "d"))
                   for i in range(2))
INVALID_CC = 'Field "compute_cap" is not a valid field to query.\n\n'
NO_DEVICES = "No devices were found\n"
NO_DRIVER = ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
             "Make sure that the latest NVIDIA driver is installed and running.\n")

APPS = ("2412, /usr/bin/python3, 70312, %s\n"
        "2413, ray::SGLangEngine.init, 61000, %s\n"
        "2500, [Not Found], [N/A], %s\n") % (uuid(0), uuid(1), uuid(2))

TOPO_NVLINK = textwrap.dedent("""\
    \t\x1b[4mGPU0\tGPU1\tGPU2\tGPU3\tNIC0\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID\x1b[0m
    GPU0\t X \tNV18\tNV18\tNV18\tPXB\t0-55,112-167\t0\t\tN/A
    GPU1\tNV18\t X \tNV18\tNV18\tSYS\t0-55,112-167\t0\t\tN/A
    GPU2\tNV18\tNV18\t X \tNV18\tSYS\t0-55,112-167\t0\t\tN/A
    GPU3\tNV18\tNV18\tNV18\t X \tSYS\t0-55,112-167\t0\t\tN/A
    NIC0\tPXB\tSYS\tSYS\tSYS\t X \t\t\t\t

    Legend:

      X    = Self
      SYS  = Connection traversing PCIe as well as the SMP interconnect between NUMA nodes (e.g., QPI/UPI)
      NODE = Connection traversing PCIe as well as the interconnect between PCIe Host Bridges within a NUMA node
      PHB  = Connection traversing PCIe as well as a PCIe Host Bridge (typically the CPU)
      PXB  = Connection traversing multiple PCIe bridges (without traversing the PCIe Host Bridge)
      PIX  = Connection traversing at most a single PCIe bridge
      NV#  = Connection traversing a bonded set of # NVLinks
    """)
TOPO_PCIE = TOPO_NVLINK.replace("NV18", "SYS")

PROC_NET_TCP = textwrap.dedent("""\
      sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
       0: 0100007F:18EB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
       1: 0100007F:2049 0100007F:A2C4 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 20 4 30 10 -1
       2: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 100 0 0 10 0
    """)
PROC_NET_TCP6 = textwrap.dedent("""\
      sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
       0: 00000000000000000000000000000000:2049 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4 1 0000000000000000 100 0 0 10 0
    """)

MEMINFO = "MemTotal:       2113685504 kB\nMemFree:         12345678 kB\nMemAvailable:   1900000000 kB\n"

PACKAGE_INFO = textwrap.dedent("""\
    # Copyright (c) 2024, NVIDIA CORPORATION.  All rights reserved.
    MAJOR = 0
    MINOR = 14
    PATCH = 0
    PRE_RELEASE = 'rc5'

    # Use the following formatting: (major, minor, patch, pre-release)
    VERSION = (MAJOR, MINOR, PATCH, PRE_RELEASE)

    __shortversion__ = '.'.join(map(str, VERSION[:3]))
    __version__ = '.'.join(map(str, VERSION[:3])) + ''.join(VERSION[3:])
    __package_name__ = 'megatron_core'
    """)


# --------------------------------------------------------------------------- parsers
@pytest.mark.parametrize("text,name,cc,mem,driver", [
    (H100, "NVIDIA H100 80GB HBM3", "9.0", 81559, "580.95.05"),
    (H200, "NVIDIA H200", "9.0", 143771, "570.124.06"),
    (B200, "NVIDIA B200", "10.0", 183359, "575.57.08"),
])
def test_parse_query_gpu(text, name, cc, mem, driver):
    gpus = probe.parse_query_gpu(text)
    assert [g["index"] for g in gpus] == list(range(8))
    assert {(g["name"], g["compute_cap"], g["memory_mib"], g["driver"]) for g in gpus} == \
        {(name, cc, mem, driver)}
    assert gpus[3]["uuid"].startswith("GPU-") and len({g["uuid"] for g in gpus}) == 8


def test_parse_query_gpu_470_without_compute_cap():
    gpus = probe.parse_query_gpu(A100_470, probe.GPU_FIELDS_NO_CC)
    assert [(g["index"], g["name"], g["compute_cap"], g["memory_mib"]) for g in gpus] == \
        [(0, "NVIDIA A100-SXM4-80GB", None, 81251), (1, "NVIDIA A100-SXM4-80GB", None, 81251)]
    assert probe.is_invalid_field_error(INVALID_CC)
    assert not probe.is_invalid_field_error(H100)


def test_parse_query_gpu_ignores_junk_and_na():
    gpus = probe.parse_query_gpu("0, NVIDIA H100 80GB HBM3, [N/A], 9.0, [N/A], 580.95.05\n"
                                 "garbage line\n\n")
    assert gpus == [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "uuid": None,
                     "compute_cap": "9.0", "memory_mib": None, "driver": "580.95.05"}]
    assert probe.parse_query_gpu(NO_DEVICES) == []


@pytest.mark.parametrize("res,expected", [
    ({"rc": 6, "out": NO_DEVICES, "err": "", "error": None}, "No devices were found"),
    ({"rc": 9, "out": NO_DRIVER, "err": "", "error": None},
     "nvidia-smi failed (exit 9): " + NO_DRIVER.strip()),
    ({"rc": None, "out": "", "err": "", "error": "nvidia-smi is missing (not on PATH)"},
     "nvidia-smi is missing (not on PATH): no NVIDIA driver on this node"),
    ({"rc": None, "out": "", "err": "", "error": "nvidia-smi timed out after 20 s"},
     "nvidia-smi timed out after 20 s: a GPU or the driver may be hung"),
    ({"rc": 0, "out": H100, "err": "", "error": None}, None),
])
def test_nvsmi_error(res, expected):
    assert probe.nvsmi_error(res) == expected


def test_parse_compute_apps():
    assert probe.parse_compute_apps(APPS) == [
        {"pid": 2412, "name": "/usr/bin/python3", "used_mib": 70312, "gpu_uuid": uuid(0)},
        {"pid": 2413, "name": "ray::SGLangEngine.init", "used_mib": 61000, "gpu_uuid": uuid(1)},
        {"pid": 2500, "name": "[Not Found]", "used_mib": None, "gpu_uuid": uuid(2)},
    ]
    assert probe.parse_compute_apps("") == []
    assert probe.parse_compute_apps("No running processes found\n") == []


def test_parse_topo():
    assert probe.parse_topo(TOPO_NVLINK) is True
    assert probe.parse_topo(TOPO_PCIE) is False  # the legend's "NV#" is not a link
    assert probe.parse_topo("") is False


def test_parse_proc_net_tcp():
    assert probe.parse_proc_net_tcp(PROC_NET_TCP) == {6379, 22}  # 8265 only ESTABLISHED
    assert probe.parse_proc_net_tcp(PROC_NET_TCP6) == {8265}


def test_collect_ports_from_proc_files(tmp_path):
    (tmp_path / "tcp").write_text(PROC_NET_TCP)
    (tmp_path / "tcp6").write_text(PROC_NET_TCP6)
    files = (str(tmp_path / "tcp"), str(tmp_path / "tcp6"))
    assert probe.collect_ports((6379, 8265, 9999), files) == {"6379": True, "8265": True,
                                                               "9999": False}


def test_collect_ports_sees_a_real_listener_and_falls_back_to_connect(tmp_path):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    try:
        assert probe.collect_ports((port,)) == {str(port): True}
        assert probe.collect_ports((port,), (str(tmp_path / "nope"),)) == {str(port): True}
    finally:
        srv.close()
    assert probe.collect_ports((port,), (str(tmp_path / "nope"),)) == {str(port): False}


def test_parse_meminfo():
    assert probe.parse_meminfo(MEMINFO) == (2113685504 * 1024, 1900000000 * 1024)


def test_parse_package_info():
    assert probe.parse_package_info(PACKAGE_INFO) == "0.14.0rc5"
    assert probe.parse_package_info("MAJOR = 0\nMINOR = 13\nPATCH = 1\nPRE_RELEASE = ''\n") == "0.13.1"
    assert probe.parse_package_info("def (:\n") is None


@pytest.mark.parametrize("text,version", [
    ("1.33.0\n", "1.33.0"),
    ("\x1b[32m✓ hf version\x1b[0m\n  version: 1.33.0\n", "1.33.0"),
    ("huggingface_hub version: 0.34.4\n", "0.34.4"),
    ("1.0.0rc2\n", "1.0.0rc2"),
    ("usage: hf\n", None),
])
def test_parse_hf_version(text, version):
    assert probe.parse_hf_version(text) == version


@pytest.mark.parametrize("text,version", [
    ("ray, version 2.60.0\n", "2.60.0"),  # real Ray 2.60
    ("ray, version 2.9.3\n", "2.9.3"),
    ("Usage: ray [OPTIONS]\n", None),
])
def test_parse_ray_version(text, version):
    assert probe.parse_ray_version(text) == version


@pytest.mark.parametrize("arg,expected", [
    ("model:Qwen/Qwen3-Next-80B-A3B-Thinking@main", ("model", "Qwen/Qwen3-Next-80B-A3B-Thinking", "main")),
    ("dataset:zhuzilin/dapo-math-17k", ("dataset", "zhuzilin/dapo-math-17k", "main")),
    ("datasets:zhuzilin/aime-2024@refs/pr/1", ("dataset", "zhuzilin/aime-2024", "refs/pr/1")),
    ("Qwen/Qwen3-4B@abc123", ("model", "Qwen/Qwen3-4B", "abc123")),
])
def test_parse_hub_arg(arg, expected):
    assert probe.parse_hub_arg(arg) == expected


def test_summarize_hub_info():
    info = {"sha": "f" * 40, "siblings": [
        {"rfilename": "config.json", "size": 1200, "blobId": "a" * 40},
        {"rfilename": "model-00001-of-00002.safetensors", "size": 5 * 10**9,
         "lfs": {"sha256": "b" * 64, "size": 5 * 10**9}},
        {"rfilename": "model-00002-of-00002.safetensors", "lfs": {"size": 3 * 10**9}}]}
    assert probe.summarize_hub_info(info) == (8 * 10**9 + 1200, 3, "f" * 40)
    assert probe.summarize_hub_info({"siblings": [{"rfilename": "x"}]}) == (None, 1, None)


# --------------------------------------------------------------------------- fla classification
def real_fla_tree():
    """Same lookup as test_node_flapatch.real_fla_tree (kept local: tests do not import tests)."""
    for cand in (os.environ.get("SLIMEFLOW_FLA_TREE"), CACHE / "fla-0.4.0", CACHE / "fla-0.4.0-core"):
        if cand and (Path(cand) / WY_REL).is_file():
            return Path(cand)
    target = CACHE / "fla-0.4.0-core"
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="fla-0.4.0-", dir=str(CACHE)))
    try:
        p = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile",
             "--disable-pip-version-check", "--target", str(tmp),
             "flash-linear-attention==0.4.0", "fla-core==0.4.0"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=180)
    except (OSError, subprocess.TimeoutExpired) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        pytest.skip("cannot install fla 0.4.0 from PyPI: %s" % e)
    if p.returncode != 0 or not (tmp / WY_REL).is_file():
        shutil.rmtree(tmp, ignore_errors=True)
        pytest.skip("cannot install fla 0.4.0 from PyPI: %s"
                    % p.stdout.decode(errors="replace").strip().splitlines()[-1:])
    try:
        tmp.rename(target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@pytest.fixture(scope="session")
def fla_tree():
    return real_fla_tree()


def test_classify_real_wy_fast(fla_tree, tmp_path):
    text = (fla_tree / WY_REL).read_text()
    assert probe.classify_wy_fast(text) == "unpatched"
    site = tmp_path / "site"
    shutil.copytree(str(fla_tree / "fla"), str(site / "fla"))
    subprocess.run(["git", "apply", str(PATCH)], cwd=str(site), check=True,
                   env=dict(os.environ, GIT_CEILING_DIRECTORIES=str(tmp_path)))
    assert probe.classify_wy_fast((site / WY_REL).read_text()) == "patched"
    assert probe.classify_wy_fast(None) == "unknown"
    assert probe.classify_wy_fast("b_dk += safe_dot(tl.trans(b_dA), b_kb)\n") == "absent"


def test_probe_and_flapatch_agree_on_the_marker():
    flapatch = _load("flapatch")
    assert probe.PATCH_MARKER == flapatch.PATCH_MARKER
    assert probe.UNPATCHED_LINE == flapatch.UNPATCHED_LINE
    assert probe.PATCH_MARKER in PATCH.read_text()


# --------------------------------------------------------------------------- a whole fake node
FAKE_NVSMI = r'''#!/usr/bin/env python3
import os, sys, time
mode = os.environ.get("FAKE_NVSMI", "h100")
d = os.environ["FAKE_DIR"]
args = " ".join(sys.argv[1:])
def out(name, rc=0):
    sys.stdout.write(open(os.path.join(d, name)).read()); sys.exit(rc)
if mode == "hang":
    time.sleep(60)
if mode == "nodev":
    out("nodev.txt", 6)
if "--query-gpu" in args:
    if mode == "r470":
        if "compute_cap" in args:
            out("invalid.txt", 2)
        out("a100.txt")
    out(mode + ".txt")
if "--query-compute-apps" in args:
    out("apps.txt")
if args == "topo -m":
    out("topo_nv.txt" if mode != "r470" else "topo_pcie.txt")
sys.exit(2)
'''

FAKE_TORCH = textwrap.dedent('''\
    import os, time
    if os.environ.get("FAKE_TORCH_HANG"):
        time.sleep(60)
    __version__ = "2.8.0+cu128"
    class version:
        cuda = "12.8"
    class _C:
        _GLIBCXX_USE_CXX11_ABI = True
    class cuda:
        @staticmethod
        def is_available():
            return True
        @staticmethod
        def device_count():
            return 2
        @staticmethod
        def get_device_capability(i):
            return (8, 0)
    ''')


def _exe(path, text):
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def _git_repo(path, files):
    for rel, text in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "x"]):
        subprocess.run(["git"] + cmd, cwd=str(path), env=env, check=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=str(path), check=True,
                          stdout=subprocess.PIPE).stdout.decode().strip()


@pytest.fixture
def node(tmp_path, fla_tree):
    """A fake node: bin/ (nvidia-smi, hf), site/ (torch, triton, ray dist-info), slime, Megatron."""
    fake = tmp_path / "fake"
    fake.mkdir()
    for name, text in (("h100.txt", H100), ("h200.txt", H200), ("b200.txt", B200),
                       ("a100.txt", A100_470), ("invalid.txt", INVALID_CC),
                       ("nodev.txt", NO_DEVICES), ("apps.txt", APPS),
                       ("topo_nv.txt", TOPO_NVLINK), ("topo_pcie.txt", TOPO_PCIE)):
        (fake / name).write_text(text)
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    _exe(bin_ / "nvidia-smi", FAKE_NVSMI.replace("/usr/bin/env python3", sys.executable, 1))
    _exe(bin_ / "hf", "#!/bin/sh\necho 1.33.0\n")
    for tool in ("git",):
        os.symlink(shutil.which(tool), str(bin_ / tool))
    site = tmp_path / "site"
    (site / "torch").mkdir(parents=True)
    (site / "torch" / "__init__.py").write_text(FAKE_TORCH)
    # what the probe reads instead of importing torch (as in torch 2.8's wheel)
    (site / "torch" / "version.py").write_text(
        "from typing import Optional\n\n__version__ = '2.8.0+cu128'\ndebug = False\n"
        "cuda: Optional[str] = '12.8'\n")
    cmake = site / "torch" / "share" / "cmake" / "Torch"
    cmake.mkdir(parents=True)
    (cmake / "TorchConfig.cmake").write_text(
        'set(TORCH_CXX_FLAGS "-D_GLIBCXX_USE_CXX11_ABI=1")\n')
    (site / "triton").mkdir()
    (site / "triton" / "__init__.py").write_text("__version__ = '3.4.0'\n")
    di = site / "ray-2.49.1.dist-info"
    di.mkdir()
    (di / "METADATA").write_text("Metadata-Version: 2.1\nName: ray\nVersion: 2.49.1\n")
    slime = tmp_path / "slime"
    slime_sha = _git_repo(slime, {"slime/__init__.py": "", "train.py": ""})
    mega = tmp_path / "Megatron-LM"
    mega_sha = _git_repo(mega, {"megatron/core/package_info.py": PACKAGE_INFO})
    return {"root": tmp_path, "fake": fake, "bin": bin_, "site": site, "slime": slime,
            "mega": mega, "slime_sha": slime_sha, "mega_sha": mega_sha, "fla": fla_tree}


def run_probe(node, mode="h100", extra_args=(), env_extra=None, pythonpath=None, python=None,
              timeout=60):
    env = {"PATH": "%s:/usr/bin:/bin" % node["bin"], "FAKE_NVSMI": mode,
           "FAKE_DIR": str(node["fake"]), "HOME": str(node["root"]),
           "PYTHONPATH": os.pathsep.join(pythonpath if pythonpath is not None
                                         else [str(node["site"]), str(node["fla"])])}
    env.update(env_extra or {})
    argv = [python or sys.executable, str(NODE / "probe.py"),
            "--base-folder", str(node["root"] / "base" / "sub"),
            "--slime-dir", str(node["slime"]), "--megatron-dir", str(node["mega"])]
    p = subprocess.run(argv + list(extra_args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       env=env, timeout=timeout, cwd=str(node["root"]))
    assert p.returncode == 0, p.stderr.decode()
    last = p.stdout.decode().strip().splitlines()[-1]
    return json.loads(last), p


def test_full_probe_h100(node):
    r, _ = run_probe(node, "h100")
    assert r["probe_version"] == 1 and r["errors"] == []
    assert r["gpu_error"] is None
    assert len(r["gpus"]) == 8
    assert r["gpus"][0] == {"index": 0, "name": "NVIDIA H100 80GB HBM3", "uuid": uuid(0),
                            "compute_cap": "9.0", "memory_mib": 81559, "driver": "580.95.05"}
    assert [p["pid"] for p in r["gpu_processes"]] == [2412, 2413, 2500]
    assert r["nvlink"] is True
    # read from torch's files: nvidia-smi gave every compute_cap, so torch is not asked
    assert r["torch"] == {"version": "2.8.0+cu128", "cuda": "12.8", "cxx11abi": True,
                          "capabilities": None, "error": None}
    assert r["triton"] == "3.4.0"
    pk = r["packages"]
    assert pk["slime"] == {"present": True, "version": None,
                           "path": str(node["slime"] / "slime"), "commit": node["slime_sha"],
                           "train_py": (node["slime"] / "train.py").is_file()}
    assert pk["megatron"] == {"present": True, "version": "0.14.0rc5",
                              "path": str(node["mega"] / "megatron"), "commit": node["mega_sha"]}
    assert pk["ray"]["present"] is True and pk["ray"]["version"] == "2.49.1"
    assert pk["causal_conv1d"]["present"] is False
    assert pk["fla"]["present"] is True and pk["fla"]["version"] == "0.4.0"
    assert pk["fla"]["wy_fast"] == "unpatched"
    assert pk["fla"]["wy_fast_path"] == str(node["fla"] / WY_REL)
    assert r["hf_cli"] == {"present": True, "path": str(node["bin"] / "hf"), "version": "1.33.0"}
    d = r["disk"]
    assert d["path"] == str(node["root"]) and d["exists"] is False and d["writable"] is True
    assert 0 < d["free_bytes"] <= d["total_bytes"]
    assert r["ram"]["total_bytes"] >= r["ram"]["available_bytes"] > 0
    assert set(r["ports"]) == {"6379", "8265"} and all(isinstance(v, bool) for v in r["ports"].values())
    assert r["hub"] == []


def test_full_probe_reports_the_ray_cli_that_would_run_ray_job_submit(node):
    # the `ray` on PATH decides the entrypoint quoting; it may differ from python3's ray dist
    _exe(node["bin"] / "ray", "#!/bin/sh\necho 'ray, version 2.55.1'\n")
    r, _ = run_probe(node, "h100")
    ray = r["packages"]["ray"]
    assert ray["version"] == "2.49.1" and ray["cli_version"] == "2.55.1"
    assert ray["cli_path"] == str(node["bin"] / "ray")
    # a Python console script: its version comes from its Python's metadata, without running
    # it (`ray --version` imports all of Ray)
    _exe(node["bin"] / "ray", "#!%s\nprint('ray, version 9.9.9')\n" % sys.executable)
    r, _ = run_probe(node)
    assert r["packages"]["ray"]["cli_version"] == "2.49.1"
    _exe(node["bin"] / "ray", "#!/usr/bin/env -S %s -u\nprint('ray, version 9.9.9')\n"
         % sys.executable)
    r, _ = run_probe(node)
    assert r["packages"]["ray"]["cli_version"] == "2.49.1"
    os.unlink(str(node["bin"] / "ray"))
    r, _ = run_probe(node, "h100")
    assert r["packages"]["ray"]["cli_version"] is None and r["packages"]["ray"]["present"]


def test_full_probe_b200(node):
    r, _ = run_probe(node, "b200")
    assert {(g["name"], g["compute_cap"]) for g in r["gpus"]} == {("NVIDIA B200", "10.0")}
    assert r["gpus"][0]["memory_mib"] == 183359


def test_full_probe_h200(node):
    r, _ = run_probe(node, "h200")
    assert {(g["name"], g["compute_cap"], g["memory_mib"]) for g in r["gpus"]} == \
        {("NVIDIA H200", "9.0", 143771)}


def test_full_probe_driver_470_falls_back_to_torch_capability(node):
    r, _ = run_probe(node, "r470")
    assert r["gpu_error"] is None
    assert [(g["name"], g["compute_cap"], g["driver"]) for g in r["gpus"]] == \
        [("NVIDIA A100-SXM4-80GB", "8.0", "470.256.02")] * 2
    assert r["torch"]["capabilities"] == [[8, 0], [8, 0]]  # asked, for want of compute_cap
    assert r["nvlink"] is False


def test_full_probe_no_devices(node):
    r, _ = run_probe(node, "nodev")
    assert r["gpus"] == [] and r["gpu_error"] == "No devices were found"
    assert r["gpu_processes"] == [] and r["nvlink"] is False


def test_full_probe_without_nvidia_smi_and_packages(node, tmp_path):
    os.unlink(str(node["bin"] / "nvidia-smi"))
    os.unlink(str(node["bin"] / "hf"))
    r, _ = run_probe(node, pythonpath=[str(tmp_path / "empty")],
                     extra_args=["--megatron-dir", str(tmp_path / "nope"),
                                 "--slime-dir", str(tmp_path / "nope")])
    assert r["gpu_error"] == "nvidia-smi is missing (not on PATH): no NVIDIA driver on this node"
    assert r["hf_cli"] == {"present": False, "path": None, "version": None}
    pk = r["packages"]
    assert pk["slime"]["present"] is False and pk["slime"]["commit"] is None
    assert pk["megatron"]["path"] is None and pk["megatron"]["commit"] is None
    assert pk["causal_conv1d"] == {"present": False, "version": None, "path": None, "commit": None}
    if not pk["fla"]["present"]:  # the test interpreter itself may ship fla
        assert pk["fla"]["wy_fast"] == "unknown" and pk["fla"]["wy_fast_path"] is None


def test_full_probe_reports_patched_fla(node, tmp_path):
    site = tmp_path / "fla-site"
    shutil.copytree(str(node["fla"] / "fla"), str(site / "fla"))
    subprocess.run(["git", "apply", str(PATCH)], cwd=str(site), check=True,
                   env=dict(os.environ, GIT_CEILING_DIRECTORIES=str(tmp_path)))
    r, _ = run_probe(node, pythonpath=[str(node["site"]), str(site)])
    assert r["packages"]["fla"]["wy_fast"] == "patched"


def test_full_probe_timeouts_do_not_hang_it(node):
    r, _ = run_probe(node, "hang", extra_args=["--nvsmi-timeout", "1", "--torch-timeout", "2"],
                     env_extra={"FAKE_TORCH_HANG": "1"}, timeout=30)
    assert r["gpu_error"] == "nvidia-smi timed out after 1 s: a GPU or the driver may be hung"
    # a torch whose import would hang: its version is read from its files all the same
    assert r["torch"]["version"] == "2.8.0+cu128" and r["torch"]["error"] is None


def test_full_probe_asking_torch_times_out_on_a_470_driver(node):
    r, _ = run_probe(node, "r470", extra_args=["--torch-timeout", "2"],
                     env_extra={"FAKE_TORCH_HANG": "1"}, timeout=30)
    assert r["torch"]["error"] == "importing torch timed out after 2 s"
    assert r["torch"]["version"] == "2.8.0+cu128"
    assert [g["compute_cap"] for g in r["gpus"]] == [None, None]


def test_full_probe_names_a_broken_torch(node, tmp_path):
    (tmp_path / "broken" / "torch").mkdir(parents=True)
    (tmp_path / "broken" / "torch" / "__init__.py").write_text("")
    r, _ = run_probe(node, pythonpath=[str(tmp_path / "broken"), str(node["fla"])])
    assert r["torch"]["version"] is None
    assert r["torch"]["error"] == (f"torch at {tmp_path / 'broken' / 'torch'} has no version.py: "
                                   f"a broken install")


def test_full_probe_does_not_import_fla_or_torch(node, tmp_path):
    """Probe only reads files: a package that explodes on import must not matter."""
    site = tmp_path / "boom"
    for pkg in ("slime", "causal_conv1d", "sglang", "torch"):
        (site / pkg).mkdir(parents=True)
        (site / pkg / "__init__.py").write_text("import os; os._exit(42)\n")
    (site / "torch" / "version.py").write_text("__version__ = '2.9.1'\ncuda = '13.0'\n")
    r, _ = run_probe(node, pythonpath=[str(site), str(node["site"]), str(node["fla"])])
    assert r["packages"]["causal_conv1d"]["path"] == str(site / "causal_conv1d")
    assert r["packages"]["causal_conv1d"]["present"] is True
    assert r["packages"]["slime"]["path"] == str(site / "slime")
    assert r["torch"] == {"version": "2.9.1", "cuda": "13.0", "cxx11abi": None,
                          "capabilities": None, "error": None}


@pytest.mark.skipif(not os.path.isfile(os.path.expanduser("~/.pyenv/versions/3.8.18/bin/python3.8")),
                    reason="no python3.8 here")
def test_full_probe_on_python38(node):
    r, _ = run_probe(node, "b200", python=os.path.expanduser("~/.pyenv/versions/3.8.18/bin/python3.8"))
    assert r["python"].startswith("3.8.")
    assert r["gpus"][0]["compute_cap"] == "10.0"
    assert r["packages"]["fla"]["wy_fast"] == "unpatched"
    assert r["packages"]["megatron"]["version"] == "0.14.0rc5"


# --------------------------------------------------------------------------- hub
class _Hub(http.server.BaseHTTPRequestHandler):
    seen = []

    def do_GET(self):  # noqa: N802
        _Hub.seen.append((self.path, self.headers.get("Authorization")))
        if self.path == "/api/models/org/model/revision/main?blobs=true":
            body = {"sha": "c" * 40, "siblings": [
                {"rfilename": "config.json", "size": 100},
                {"rfilename": "model.safetensors", "size": 4000, "lfs": {"size": 4000}}]}
            code = 200
        elif self.path.startswith("/api/datasets/org/gated/"):
            body, code = {"error": "Access to dataset org/gated is restricted."}, 401
        else:
            body, code = {"error": "Repository Not Found"}, 404
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass


@pytest.fixture
def hub():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    _Hub.seen = []
    yield "http://127.0.0.1:%d" % srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def test_full_probe_hub_sizes_with_token(node, hub):
    r, p = run_probe(node, extra_args=["--hub-repo", "model:org/model@main",
                                       "--hub-repo", "dataset:org/gated@v1",
                                       "--hf-repo", "org/none", "--hf-revision", "dev"],
                     env_extra={"HF_ENDPOINT": hub, "HF_TOKEN": "hf_s3cr3t"})
    assert r["hub"][0] == {"type": "model", "repo": "org/model", "revision": "main",
                           "bytes": 4100, "files": 2, "sha": "c" * 40, "error": None}
    g = r["hub"][1]
    assert (g["type"], g["bytes"], g["files"]) == ("dataset", None, None)
    assert g["error"].startswith("HTTP 401 from %s/api/datasets/org/gated/revision/v1" % hub)
    assert "restricted" in g["error"] and "HF token" in g["error"]
    assert r["hub"][2]["repo"] == "org/none" and r["hub"][2]["revision"] == "dev"
    assert "HTTP 404" in r["hub"][2]["error"]
    assert all(auth == "Bearer hf_s3cr3t" for _, auth in _Hub.seen)
    assert b"hf_s3cr3t" not in p.stdout + p.stderr


def test_hub_unreachable_is_recorded(node):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    r, _ = run_probe(node, extra_args=["--hub-repo", "org/model"],
                     env_extra={"HF_ENDPOINT": "http://127.0.0.1:%d" % port})
    assert r["hub"][0]["error"].startswith("cannot reach http://127.0.0.1:%d" % port)
    assert r["errors"] == []
