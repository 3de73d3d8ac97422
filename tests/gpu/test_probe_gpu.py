"""include/node/probe.py on a real GPU node, run exactly as the SSH step runs it:

    python3 include/node/probe.py --base-folder /tmp/sf --slime-dir /tmp/none --megatron-dir /tmp/none
"""
import json
import re
import subprocess
import sys

import pytest

from tests.gpu._helpers import probe, record

pytestmark = pytest.mark.gpu


def test_probe_reports_the_real_hopper_gpus():
    p = probe()
    record("probe", p)
    gpus = p["gpus"]
    assert p["gpu_error"] is None and gpus, p.get("gpu_error")
    listed = subprocess.run(["nvidia-smi", "-L"], stdout=subprocess.PIPE, timeout=60)
    n_smi = len([l for l in listed.stdout.decode().splitlines() if l.startswith("GPU ")])
    assert len(gpus) == n_smi
    for g in gpus:
        assert re.search(r"H100|H200", g["name"]), g
        assert g["compute_cap"] == "9.0", g
        assert g["memory_mib"] > 70000, g
        assert g["driver"] and re.match(r"^\d+\.\d+", g["driver"]), g
        assert g["uuid"] and g["uuid"].startswith("GPU-"), g
    t = p["torch"]
    assert t["error"] is None, t["error"]
    # read from torch's files, as the node's own torch reports itself when imported
    real = subprocess.run([sys.executable, "-c", "import torch, json; print(json.dumps("
                           "[torch.__version__, torch.version.cuda, "
                           "bool(torch._C._GLIBCXX_USE_CXX11_ABI)]))"],
                          stdout=subprocess.PIPE, timeout=300)
    version, cuda, abi = json.loads(real.stdout.decode().strip().splitlines()[-1])
    assert (t["version"], t["cuda"]) == (version, cuda), (t, version, cuda)
    assert t["cxx11abi"] in (abi, None), (t, abi)  # None: TorchConfig.cmake does not say
    assert t["capabilities"] is None  # nvidia-smi reported compute_cap: torch was not asked
    assert p["triton"] and re.match(r"^\d+\.\d+", p["triton"])
    assert p["python"].startswith("3.")
    assert p["ram"]["total_bytes"] and p["disk"]["free_bytes"] > 0
    assert p["errors"] == [], p["errors"]
    summary = {
        "gpus": ["%s | cc %s | %s MiB | driver %s" % (g["name"], g["compute_cap"],
                                                      g["memory_mib"], g["driver"]) for g in gpus],
        "torch": t["version"], "torch_cuda": t["cuda"], "cxx11abi": t["cxx11abi"],
        "triton": p["triton"], "python": p["python"], "nvlink": p["nvlink"],
        "fla": p["packages"].get("fla"), "hf_cli": p["hf_cli"], "platform": p["platform"],
    }
    record("probe summary", summary)
