"""include/node/flapatch.py and include/patches/fla-wy-fast-sm100.patch against the REAL fla 0.4.0.

The fla tree is PyPI's flash-linear-attention 0.4.0 + fla-core 0.4.0 (0.4.0 split the ops into
fla-core), taken from ~/.cache/slimeflow-sim/fla-0.4.0 when that holds wy_fast.py, else installed
once with `pip install --no-deps --target` into ~/.cache/slimeflow-sim/fla-0.4.0-core. Without
PyPI the tests that need it are skipped with the reason.
"""
import ast
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NODE = REPO / "include" / "node"
PATCH = REPO / "include" / "patches" / "fla-wy-fast-sm100.patch"
WY_REL = Path("fla/ops/gated_delta_rule/wy_fast.py")
UNPATCHED = "        b_dk += tl.dot(tl.trans(b_dA), b_kb)\n"
CACHE = Path(os.path.expanduser("~/.cache/slimeflow-sim"))


def _load(name):
    spec = importlib.util.spec_from_file_location("node_" + name, NODE / (name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


flapatch = _load("flapatch")


def real_fla_tree():
    """A directory holding the real fla 0.4.0 package (with fla/ops), or pytest.skip."""
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
    except OSError:  # a concurrent run won the race
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@pytest.fixture(scope="session")
def fla_tree():
    return real_fla_tree()


@pytest.fixture
def fla_copy(fla_tree, tmp_path):
    """A private copy of the real fla package: tmp/site/fla."""
    site = tmp_path / "site"
    shutil.copytree(str(fla_tree / "fla"), str(site / "fla"))
    return site


def run_flapatch(*args, cwd=None, env_extra=None, python=None):
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.update(env_extra or {})
    p = subprocess.run([python or sys.executable, str(NODE / "flapatch.py"), "--patch", str(PATCH)]
                       + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       cwd=cwd, env=env, timeout=60)
    lines = p.stdout.decode().strip().splitlines()
    assert lines, p.stderr.decode()
    return p.returncode, json.loads(lines[-1])


def git(*args, cwd):
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    return subprocess.run(["git"] + list(args), cwd=str(cwd), env=env, check=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE).stdout.decode()


def py38():
    for c in (os.path.expanduser("~/.pyenv/versions/3.8.18/bin/python3.8"), shutil.which("python3.8")):
        if c and os.path.isfile(c):
            try:
                subprocess.run([c, "-c", "pass"], check=True, timeout=20)
                return c
            except (OSError, subprocess.SubprocessError):
                continue
    return None


# --------------------------------------------------------------------------- the patch file
def test_patch_targets_the_seed_line_and_carries_the_marker():
    text = PATCH.read_text()
    assert text.startswith("diff --git a/fla/ops/gated_delta_rule/wy_fast.py "
                           "b/fla/ops/gated_delta_rule/wy_fast.py\n")
    removed = [l[1:] for l in text.splitlines() if l.startswith("-") and not l.startswith("---")]
    added = [l[1:] for l in text.splitlines() if l.startswith("+") and not l.startswith("+++")]
    assert removed == [UNPATCHED.rstrip("\n")]
    assert any(flapatch.PATCH_MARKER in l for l in added)
    assert any('tl.inline_asm_elementwise("mov.f32 $0, $1;", "=r,r"' in l for l in added)
    assert "prepare_wy_repr_bwd_kernel" in text  # the hunk header names the kernel


def test_real_fla_040_has_the_unpatched_line_once(fla_tree):
    text = (fla_tree / WY_REL).read_text()
    assert text.count(UNPATCHED) == 1
    assert flapatch.classify_wy_fast(text) == "unpatched"


def test_git_apply_check_and_reverse_check(fla_copy):
    env = dict(os.environ, GIT_CEILING_DIRECTORIES=str(fla_copy.parent))
    chk = lambda *a: subprocess.run(["git", "apply"] + list(a) + [str(PATCH)], cwd=str(fla_copy),
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert chk("--check").returncode == 0
    assert chk("-R", "--check").returncode != 0
    assert chk().returncode == 0
    assert chk("-R", "--check").returncode == 0
    assert chk("--check").returncode != 0


# --------------------------------------------------------------------------- classify
@pytest.mark.parametrize("text,state", [
    (None, "unknown"),
    ("x = 1\n" + UNPATCHED, "unpatched"),
    ("# slimeflow: sm100 fusion barrier (triton#8695)\n", "patched"),
    ("        b_dk += safe_dot(tl.trans(b_dA), b_kb)\n", "absent"),  # fla >= 0.4.1's own fix
    ("# b_dk += tl.dot(tl.trans(b_dA), b_kb) in a comment\n", "absent"),
])
def test_classify(text, state):
    assert flapatch.classify_wy_fast(text) == state


# --------------------------------------------------------------------------- apply, plain dir
def test_apply_outside_git_then_again_then_reverse(fla_copy):
    wy = fla_copy / WY_REL
    pristine = wy.read_bytes()

    rc, out = run_flapatch("--fla-root", str(fla_copy))
    assert (rc, out["state"], out["changed"]) == (0, "unpatched", False)
    assert wy.read_bytes() == pristine  # a report never changes anything

    rc, out = run_flapatch("--apply", "--fla-root", str(fla_copy))
    assert rc == 0, out
    assert out["changed"] is True and out["state"] == "patched" and out["error"] is None
    text = wy.read_text()
    assert UNPATCHED not in text and flapatch.PATCH_MARKER in text
    assert "b_dk_t = tl.dot(tl.trans(b_dA), b_kb)" in text
    ast.parse(text)  # still valid Python

    rc, out = run_flapatch("--apply", "--fla-root", str(fla_copy))
    assert (rc, out["changed"], out["state"]) == (0, False, "patched")
    assert "already applied" in out["message"]
    assert wy.read_text() == text

    env = dict(os.environ, GIT_CEILING_DIRECTORIES=str(fla_copy.parent))
    subprocess.run(["git", "apply", "-R", str(PATCH)], cwd=str(fla_copy), env=env, check=True)
    assert wy.read_bytes() == pristine  # the diff is exactly reversible
    rc, out = run_flapatch("--fla-root", str(fla_copy))
    assert out["state"] == "unpatched"


def test_apply_finds_fla_through_pythonpath(fla_copy):
    rc, out = run_flapatch("--apply", env_extra={"PYTHONPATH": str(fla_copy)})
    assert rc == 0 and out["changed"] is True
    assert out["fla_root"] == str(fla_copy)
    assert out["wy_fast_path"] == str(fla_copy / WY_REL)


@pytest.mark.skipif(py38() is None, reason="no python3.8 on this machine")
def test_apply_runs_on_python38(fla_copy):
    rc, out = run_flapatch("--apply", env_extra={"PYTHONPATH": str(fla_copy)}, python=py38())
    assert rc == 0 and out["changed"] is True


# --------------------------------------------------------------------------- apply, inside git
def test_apply_in_a_subdirectory_of_an_unrelated_git_repo(fla_tree, tmp_path):
    """Plain `git apply` run there silently skips the file (exit 0); flapatch must not."""
    repo = tmp_path / "project"
    site = repo / "venv" / "lib" / "site-packages"
    shutil.copytree(str(fla_tree / "fla"), str(site / "fla"))
    git("init", "-q", cwd=repo)
    naive = subprocess.run(["git", "apply", str(PATCH)], cwd=str(site))
    assert naive.returncode == 0 and UNPATCHED in (site / WY_REL).read_text()  # the trap

    rc, out = run_flapatch("--apply", "--fla-root", str(site))
    assert rc == 0 and out["changed"] is True, out
    assert flapatch.PATCH_MARKER in (site / WY_REL).read_text()
    rc, out = run_flapatch("--apply", "--fla-root", str(site))
    assert rc == 0 and out["changed"] is False


def test_apply_in_an_editable_git_checkout(fla_tree, tmp_path):
    """The seed installs fla with `pip install -e .` from a git clone: fla/ is at the repo root."""
    clone = tmp_path / "flash-linear-attention"
    shutil.copytree(str(fla_tree / "fla"), str(clone / "fla"))
    git("init", "-q", cwd=clone)
    git("add", "-A", cwd=clone)
    git("commit", "-qm", "fla 0.4.0", cwd=clone)

    rc, out = run_flapatch("--apply", "--fla-root", str(clone),
                           env_extra={"GIT_DIR": str(tmp_path / "elsewhere")})
    assert rc == 0 and out["changed"] is True, out
    assert git("status", "--porcelain", cwd=clone).split() == ["M", str(WY_REL)]
    rc, out = run_flapatch("--apply", "--fla-root", str(clone))
    assert rc == 0 and out["changed"] is False


# --------------------------------------------------------------------------- failures
def test_apply_to_an_fla_with_a_different_fix_fails_clearly(fla_copy):
    wy = fla_copy / WY_REL
    fixed = wy.read_text().replace(UNPATCHED, "        b_dk += safe_dot(tl.trans(b_dA), b_kb)\n")
    wy.write_text(fixed)
    rc, out = run_flapatch("--apply", "--fla-root", str(fla_copy))
    assert rc == 1
    assert out["state"] == "absent" and out["changed"] is False
    assert out["error"].startswith("the fla patch does not apply to %s: error:" % wy)
    assert "may already carry a different fix" in out["error"]
    assert "while searching for" not in out["error"]
    assert wy.read_text() == fixed


def test_missing_wy_fast(tmp_path):
    (tmp_path / "fla").mkdir()
    (tmp_path / "fla" / "__init__.py").write_text("")
    rc, out = run_flapatch("--fla-root", str(tmp_path))
    assert rc == 0 and out["state"] == "unknown" and "does not exist" in out["error"]
    rc, out = run_flapatch("--apply", "--fla-root", str(tmp_path))
    assert rc == 1 and out["state"] == "unknown" and "cannot patch" in out["error"]


def test_fla_not_installed(tmp_path):
    rc, out = run_flapatch("--apply", env_extra={"PYTHONPATH": str(tmp_path)}, cwd=str(tmp_path))
    if out["fla_root"] is not None:
        pytest.skip("this interpreter has fla installed")
    assert rc == 1 and "fla is not importable" in out["error"]
    rc, out = run_flapatch(env_extra={"PYTHONPATH": str(tmp_path)}, cwd=str(tmp_path))
    assert rc == 0 and out["state"] == "unknown"


def test_find_fla_root_does_not_import_fla(tmp_path, monkeypatch):
    pkg = tmp_path / "fla"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise RuntimeError('imported!')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "fla", raising=False)
    assert flapatch.find_fla_root() == str(tmp_path)
    assert "fla" not in sys.modules
