"""The fla sm100 patch on a real Hopper GPU, with PyPI fla 0.4.0 (flash-linear-attention + fla-core).

1. The probe and slimeflow's rule (`should_patch_fla`: patch iff compute capability major == 10
   AND wy_fast is "unpatched") decide "skip" here: Hopper is 9.0.
2. flapatch.py applies include/patches/fla-wy-fast-sm100.patch to a COPY of the installed fla
   tree: first run changed=true, second changed=false.
3. Subprocesses import the original and the patched copy and run chunk_gated_delta_rule forward
   and backward (and prepare_wy_repr_bwd alone) on CUDA with the same seeded bf16 inputs. The
   outputs and the gradients of q, k, v, g and beta must agree (max relative difference < 1e-2).
   A second run of the original gives the noise floor. All three share one Triton cache, so the
   kernels the patch does not touch reuse the same autotuned configs.

Hopper only proves the patched kernel compiles and computes the same numbers; whether it fixes
the compile error on sm100 (Blackwell) needs a Blackwell GPU.
"""
import copy
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.gpu._helpers import REPO, probe, record, run_node, should_patch_fla

pytestmark = pytest.mark.gpu
PATCH = REPO / "include" / "patches" / "fla-wy-fast-sm100.patch"
WORKER = REPO / "tests" / "gpu" / "fla_worker.py"
WY_REL = os.path.join("fla", "ops", "gated_delta_rule", "wy_fast.py")
NAMES = ["o", "dq", "dk", "dv", "dg", "dbeta", "wy_dk", "wy_dv", "wy_db", "wy_dg"]
TOL = 1e-2


def fla_root():
    """The directory holding the installed fla/ with wy_fast.py (found without importing fla)."""
    spec = importlib.util.find_spec("fla")
    if spec is None:
        pytest.skip("fla is not installed (install flash-linear-attention==0.4.0 and "
                    "fla-core==0.4.0)")
    for loc in spec.submodule_search_locations or []:
        root = os.path.dirname(os.path.abspath(loc))
        if os.path.isfile(os.path.join(root, WY_REL)):
            return root
    pytest.skip("fla is installed but has no %s (fla-core missing?)" % WY_REL)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("fla")


@pytest.fixture(scope="module")
def patched_root(work):
    root = fla_root()
    dst = work / "patched"
    shutil.copytree(os.path.join(root, "fla"), str(dst / "fla"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    return root, str(dst)


def test_decision_is_skip_on_hopper():
    root = fla_root()
    p = probe()
    fla = p["packages"]["fla"]
    caps = sorted({g["compute_cap"] for g in p["gpus"]})
    record("fla probe", {"caps": caps, "fla": fla})
    assert caps == ["9.0"]
    assert fla["present"] and fla["wy_fast"] == "unpatched", fla
    assert os.path.realpath(fla["wy_fast_path"]) == os.path.realpath(os.path.join(root, WY_REL))
    decision = "patch" if should_patch_fla([p]) else "skip"
    # the same probe on a Blackwell node would patch: the rule is live, not always "skip"
    b200 = copy.deepcopy(p)
    for g in b200["gpus"]:
        g["compute_cap"] = "10.0"
    patched = copy.deepcopy(b200)
    patched["packages"]["fla"]["wy_fast"] = "patched"
    record("fla decision", {"hopper": decision, "same node as cc 10.0": should_patch_fla([b200]),
                            "cc 10.0 already patched": should_patch_fla([patched])})
    assert decision == "skip"
    assert should_patch_fla([b200]) is True and should_patch_fla([patched]) is False


def test_flapatch_on_a_copy_is_idempotent(patched_root):
    root, copy_root = patched_root
    args = ["--patch", str(PATCH), "--apply", "--fla-root", copy_root]
    rc1, r1, _, e1 = run_node("flapatch.py", args, timeout=120)
    rc2, r2, _, e2 = run_node("flapatch.py", args, timeout=120)
    rc0, r0, _, _ = run_node("flapatch.py", ["--patch", str(PATCH), "--fla-root", root],
                             timeout=120)
    record("flapatch", {"first": r1, "second": r2, "original": r0})
    assert rc1 == 0 and r1["changed"] is True and r1["state"] == "patched", (r1, e1)
    assert rc2 == 0 and r2["changed"] is False and r2["state"] == "patched", (r2, e2)
    assert rc0 == 0 and r0["state"] == "unpatched"  # the installed tree is untouched


def _run_worker(root, out, expect, pythonpath, cache):
    env = dict(os.environ)
    env["PYTHONPATH"] = pythonpath
    env["TRITON_CACHE_DIR"] = cache
    p = subprocess.run([sys.executable, str(WORKER), "--root", root, "--out", out,
                        "--expect", expect], cwd=str(REPO), env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=480)
    text = p.stdout.decode("utf-8", "replace")
    err = p.stderr.decode("utf-8", "replace")
    lines = [l for l in text.splitlines() if l.startswith("{")]
    assert p.returncode == 0 and lines, "worker (%s) failed, rc %s:\n%s\n%s" % (
        expect, p.returncode, text[-3000:], err[-5000:])
    return json.loads(lines[-1])


def _compare(a, b):
    import torch
    out = {}
    for n in NAMES:
        x, y = a[n], b[n]
        assert x.shape == y.shape, n
        scale = x.abs().max().item()
        diff = (x - y).abs().max().item()
        out[n] = {"max_abs": diff, "max_rel": diff / scale if scale else diff,
                  "equal": bool(torch.equal(x, y)), "max_abs_value": scale}
    return out


def test_patched_kernel_matches_the_original_on_cuda(patched_root, work):
    import torch
    root, copy_root = patched_root
    if not os.path.isfile(os.path.join(copy_root, WY_REL)) or "slimeflow: sm100" not in \
            open(os.path.join(copy_root, WY_REL)).read():
        run_node("flapatch.py", ["--patch", str(PATCH), "--apply", "--fla-root", copy_root])
    cache = str(work / "triton-cache")
    base_pp = os.environ.get("PYTHONPATH", "")
    orig_pp = os.pathsep.join([root] + [x for x in base_pp.split(os.pathsep) if x])
    # the patched run sees ONLY the copy's fla: the installed tree's folder is not on its path
    patched_pp = os.pathsep.join([copy_root] + [x for x in base_pp.split(os.pathsep)
                                                if x and os.path.realpath(x)
                                                != os.path.realpath(root)])
    runs = {}
    for name, r, exp, pp in (("original", root, "unpatched", orig_pp),
                             ("original_again", root, "unpatched", orig_pp),
                             ("patched", copy_root, "patched", patched_pp)):
        info = _run_worker(r, str(work / (name + ".pt")), exp, pp, cache)
        record("fla worker %s" % name, info)
        assert info["ok"], info["finite"]
        runs[name] = torch.load(str(work / (name + ".pt")))
    noise = _compare(runs["original"], runs["original_again"])
    diff = _compare(runs["original"], runs["patched"])
    table = {n: {"patched_vs_original_max_rel": diff[n]["max_rel"],
                 "patched_equal": diff[n]["equal"],
                 "rerun_vs_original_max_rel": noise[n]["max_rel"],
                 "rerun_equal": noise[n]["equal"]} for n in NAMES}
    record("fla comparison", table)
    for n in NAMES:
        assert diff[n]["equal"] or diff[n]["max_rel"] < TOL, (n, diff[n])
