#!/usr/bin/env python3
"""Locate fla's gated_delta_rule/wy_fast.py on this node and (optionally) apply the sm100 patch.

    python3 flapatch.py --patch P [--apply] [--fla-root DIR]

Never imports fla (importing it initialises torch/triton). The file is classified by its
content, not by fla's version string (PyPI 0.4.1 and git 9714c595 share '0.4.1' but only
the latter still carries the line that the patch rewrites):

    unpatched  the exact line `b_dk += tl.dot(tl.trans(b_dA), b_kb)` is present
    patched    our patch's marker is present
    absent     neither (a newer fla that fixed the bug differently)
    unknown    the file is missing

With --apply: `git apply -R --check` succeeds -> already applied, nothing changes
({"changed": false}); else `git apply --check` succeeds -> apply ({"changed": true});
else an error JSON and exit 1.

`git apply` is run with cwd = the directory that contains fla/, with GIT_CEILING_DIRECTORIES
set to its parent: inside a subdirectory of some unrelated git work tree, `git apply` would
otherwise resolve paths against that work tree's top and silently skip the file (exit 0).

Prints ONE JSON object as its last stdout line. Stdlib only, Python 3.8+.
"""
import argparse
import importlib.util
import json
import os
import subprocess
import sys

WY_FAST_REL = os.path.join("fla", "ops", "gated_delta_rule", "wy_fast.py")
# probe.py travels in the same folder: one definition of what "patched" means
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from probe import PATCH_MARKER, UNPATCHED_LINE, classify_wy_fast  # noqa: E402,F401
GIT_TIMEOUT = 60

# Variables that would make git look at some other repository than the fla directory.
_GIT_REPO_ENV = (
    "GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_COMMON_DIR", "GIT_NAMESPACE", "GIT_PREFIX",
    "GIT_DISCOVERY_ACROSS_FILESYSTEM",
)


def find_fla_root(explicit=None):
    """Return the directory that contains fla/ (or None), without importing fla."""
    if explicit:
        return os.path.abspath(explicit)
    try:
        spec = importlib.util.find_spec("fla")
    except (ImportError, ValueError, AttributeError):
        spec = None
    if spec is None:
        return None
    locations = list(spec.submodule_search_locations or [])
    if not locations and spec.origin:
        locations = [os.path.dirname(spec.origin)]
    # A namespace package may have several portions; prefer the one holding wy_fast.py.
    for loc in locations:
        if os.path.isfile(os.path.join(os.path.dirname(loc), WY_FAST_REL)):
            return os.path.dirname(os.path.abspath(loc))
    if locations:
        return os.path.dirname(os.path.abspath(locations[0]))
    return None


def read_text(path):
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def git_env(fla_root):
    env = dict(os.environ)
    for k in _GIT_REPO_ENV:
        env.pop(k, None)
    parent = os.path.dirname(os.path.realpath(fla_root))
    env["GIT_CEILING_DIRECTORIES"] = parent
    env["LC_ALL"] = "C"
    return env


def run_git_apply(fla_root, patch, extra):
    """Run `git apply EXTRA PATCH` in fla_root. Returns (rc, combined output)."""
    argv = ["git", "apply", "--verbose"] + list(extra) + [os.path.abspath(patch)]
    try:
        p = subprocess.run(argv, cwd=os.path.realpath(fla_root), env=git_env(fla_root),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=GIT_TIMEOUT)
    except FileNotFoundError:
        return 127, "git is not installed on this node"
    except subprocess.TimeoutExpired:
        return 124, "git apply timed out after %d s" % GIT_TIMEOUT
    except OSError as e:
        return 126, "could not run git: %s" % e
    out = p.stdout.decode("utf-8", "replace").strip()
    rc = p.returncode
    if rc == 0 and "Skipped patch" in out:
        # Defence in depth: git resolved the paths against some other work tree.
        rc = 1
        out = out + "\n(git skipped the file: the paths did not resolve inside %s)" % fla_root
    return rc, out


def _git_message(out):
    lines = [l for l in out.splitlines() if l.startswith(("error:", "fatal:"))
             and not l.rstrip().endswith("while searching for:")]
    return "; ".join(lines) if lines else (out.splitlines()[-1] if out else "no output")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patch", required=True)
    ap.add_argument("--apply", action="store_true")
    ap.add_argument("--fla-root", default=None)
    args = ap.parse_args(argv)

    result = {"state": "unknown", "fla_root": None, "wy_fast_path": None,
              "patch": os.path.abspath(args.patch), "applied": False, "changed": False,
              "error": None}
    fla_root = find_fla_root(args.fla_root)
    if fla_root is None:
        result["error"] = ("fla is not importable by %s (find_spec('fla') found nothing); "
                           "install flash-linear-attention or pass --fla-root" % sys.executable)
        print(json.dumps(result))
        return 1 if args.apply else 0
    wy = os.path.join(fla_root, WY_FAST_REL)
    result["fla_root"] = fla_root
    result["wy_fast_path"] = wy
    text = read_text(wy)
    state = classify_wy_fast(text)
    result["state"] = state
    result["applied"] = state == "patched"

    if not args.apply:
        if state == "unknown":
            result["error"] = "%s does not exist" % wy
        print(json.dumps(result))
        return 0

    if state == "unknown":
        result["error"] = "cannot patch: %s does not exist" % wy
        print(json.dumps(result))
        return 1
    if not os.path.isfile(args.patch):
        result["error"] = "patch file %s does not exist" % args.patch
        print(json.dumps(result))
        return 1

    rc, out = run_git_apply(fla_root, args.patch, ["-R", "--check"])
    if rc == 0:
        result["applied"] = True
        result["message"] = "already applied; nothing changed"
        print(json.dumps(result))
        return 0
    if rc in (124, 126, 127):
        result["error"] = out
        print(json.dumps(result))
        return 1
    rc, out = run_git_apply(fla_root, args.patch, ["--check"])
    if rc != 0:
        result["error"] = ("the fla patch does not apply to %s: %s; fla at this commit may "
                           "already carry a different fix" % (wy, _git_message(out)))
        print(json.dumps(result))
        return 1
    rc, out = run_git_apply(fla_root, args.patch, [])
    new_state = classify_wy_fast(read_text(wy))
    if rc != 0 or new_state != "patched":
        result["error"] = ("git apply of %s to %s failed: %s (file state now %s)"
                           % (args.patch, wy, _git_message(out), new_state))
        result["state"] = new_state
        print(json.dumps(result))
        return 1
    result.update(state="patched", applied=True, changed=True,
                  message="patch applied to %s" % wy)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - always answer with JSON
        print(json.dumps({"state": "unknown", "changed": False,
                          "error": "flapatch crashed: %s: %s" % (type(e).__name__, e)}))
        sys.exit(1)
