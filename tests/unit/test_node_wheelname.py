"""include/node/wheelname.py: the causal-conv1d release wheel name for a torch build."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "include" / "node" / "wheelname.py"
SEED = "causal_conv1d-1.5.4+cu12torch2.8cxx11abiTRUE-cp312-cp312-linux_x86_64.whl"


def _load():
    spec = importlib.util.spec_from_file_location("node_wheelname", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


wn = _load()


def run(args, timeout=120):
    p = subprocess.run([sys.executable, str(SCRIPT)] + list(args), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=timeout)
    return p.returncode, json.loads(p.stdout.decode().strip().splitlines()[-1])


def test_seed_wheel_is_the_guides():
    assert wn.seed_wheel() == SEED
    assert wn.wheel_name("1.5.4", "2.8.0+cu128", "12.8", True, "cp312") == SEED


@pytest.mark.parametrize("args,name", [
    (("1.5.4", "2.11.0+cu130", "13.0", True, "cp312"),
     "causal_conv1d-1.5.4+cu13torch2.11cxx11abiTRUE-cp312-cp312-linux_x86_64.whl"),
    (("1.5.4", "2.4.1", "11.8", False, "cp310"),
     "causal_conv1d-1.5.4+cu11torch2.4cxx11abiFALSE-cp310-cp310-linux_x86_64.whl"),
    (("1.6.0", "2.10.0a0+git123", "12.9", 1, "3.12"),
     "causal_conv1d-1.6.0+cu12torch2.10cxx11abiTRUE-cp312-cp312-linux_x86_64.whl"),
    (("1.5.4", "2.8.0", "12.6", True, (3, 11)),
     "causal_conv1d-1.5.4+cu12torch2.8cxx11abiTRUE-cp311-cp311-linux_x86_64.whl"),
])
def test_wheel_name(args, name):
    assert wn.wheel_name(*args) == name


@pytest.mark.parametrize("tag,cp", [("cp312", "cp312"), ("312", "cp312"), ("3.12", "cp312"),
                                    ("CP39", "cp39"), ((3, 8), "cp38"), ("py311", "cp311")])
def test_python_tag(tag, cp):
    assert wn.python_tag(tag) == cp


@pytest.mark.parametrize("bad", ["", "three", "cp3", "3"])
def test_python_tag_rejects(bad):
    with pytest.raises(ValueError):
        wn.python_tag(bad)


def test_cpu_torch_has_no_wheel():
    with pytest.raises(ValueError, match="no CUDA"):
        wn.wheel_name("1.5.4", "2.13.0+cpu", None, True, "cp312")


def test_unreadable_torch_version():
    with pytest.raises(ValueError):
        wn.wheel_name("1.5.4", "nightly", "13.0", True, "cp312")


def test_matching_torch_has_no_problems():
    r = wn.describe({"version": "2.8.0+cu128", "cuda": "12.8", "cxx11abi": True,
                     "python_tag": "cp312"})
    assert r["wheel"] == SEED and r["matches_seed"] is True and r["problems"] == []
    assert r["seed_wheel"] == SEED and r["error"] is None


def test_torch_2_11_cu130_is_an_abi_mismatch():
    r = wn.describe({"version": "2.11.0+cu130", "cuda": "13.0", "cxx11abi": True,
                     "python_tag": "cp312"})
    assert r["wheel"] == "causal_conv1d-1.5.4+cu13torch2.11cxx11abiTRUE-cp312-cp312-linux_x86_64.whl"
    assert r["matches_seed"] is False
    assert len(r["problems"]) == 2
    assert r["problems"][0].startswith("torch 2.11 (2.11.0+cu130) is not the seed wheel's torch 2.8")
    assert "ABI" in r["problems"][0]
    assert r["problems"][1] == "torch is built for CUDA 13 (13.0), but the seed wheel is for CUDA 12."
    for p in r["problems"]:  # one sentence each
        assert p.endswith(".") and ". " not in p[:-1].replace("2.11.0", "").replace("13.0", "")


def test_every_part_is_checked():
    r = wn.describe({"version": "2.8.1", "cuda": "12.4", "cxx11abi": False,
                     "python_tag": "cp311"}, version="1.5.3")
    text = " ".join(r["problems"])
    assert "cxx11abi=FALSE" in text and "cp311" in text and "1.5.3" in text
    assert "torch 2.8" not in text.split("cxx11abi")[0]  # torch 2.8 matches
    assert r["matches_seed"] is False


def test_unknown_abi_is_a_problem_not_a_crash():
    r = wn.describe({"version": "2.8.0", "cuda": "12.8", "cxx11abi": None,
                     "python_tag": "cp312"})
    assert r["wheel"].endswith("cxx11abiFALSE-cp312-cp312-linux_x86_64.whl")
    assert any("did not report its C++ ABI" in p for p in r["problems"])


def test_no_torch():
    r = wn.describe({"version": None, "cuda": None, "cxx11abi": None, "python_tag": "cp312",
                     "error": "import torch failed: ModuleNotFoundError: No module named 'torch'"})
    assert r["wheel"] is None and "torch" in r["error"]
    assert r["problems"] == ["torch is not importable, so no wheel name can be derived."]


def test_stdlib_only_at_import():
    code = ("import sys, importlib.util; s = importlib.util.spec_from_file_location('m', %r); "
            "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); "
            "print('torch' in sys.modules)" % str(SCRIPT))
    out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, check=True)
    assert out.stdout.decode().strip() == "False"


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_cli_asks_the_local_torch():
    import importlib.metadata
    rc, r = run([])
    assert rc == 0
    assert r["torch"]["version"] == importlib.metadata.version("torch")
    assert r["torch"]["python_tag"] == "cp%d%d" % sys.version_info[:2]
    assert r["seed_wheel"] == SEED and r["matches_seed"] is False
    if r["torch"]["cuda"] is None:  # this venv: a CPU build
        assert r["wheel"] is None and "no CUDA" in r["error"]
        assert any("has no CUDA build" in p for p in r["problems"])


def test_cli_without_torch(tmp_path):
    fake = tmp_path / "py"
    fake.write_text("#!/bin/sh\nexec %s -c 'import sys; sys.modules[\"torch\"] = None; "
                    "exec(sys.argv[1])' \"$2\"\n" % sys.executable)
    fake.chmod(0o755)
    rc, r = run(["--python", str(fake)])
    assert rc == 1 and r["wheel"] is None and "import torch failed" in r["error"]


def test_cli_timeout(tmp_path):
    fake = tmp_path / "slow"
    fake.write_text("#!/bin/sh\nexec sleep 30\n")
    fake.chmod(0o755)
    rc, r = run(["--python", str(fake), "--timeout", "1"])
    assert rc == 1 and "timed out after 1 s" in r["error"]
