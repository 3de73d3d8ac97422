#!/usr/bin/env python3
"""Parse the train command line with this node's own slime, Megatron-LM and sglang.

    python3 argvcheck.py --slime-dir S --megatron-dir M [--timeout 300] -- <train.py arguments>

Runs, in a child of this same interpreter (cwd slime_dir; slime_dir, then megatron_dir, then the
node's own path on sys.path, as the job's `PYTHONPATH=<megatron_dir>/ python3 train.py`), the
parse_args that slime's train.py imports,
with sys.argv set to exactly the arguments train.py will receive. slime's three parsers (its
pre-parse, sglang's, Megatron's with slime's extra arguments) all use parse_known_args, so a
flag none of them knows is dropped without a word: every parse_known_args call is recorded and
the flags that every parser left over are reported as dropped.

No CUDA work: CUDA_VISIBLE_DEVICES is empty in the child, and the torch.cuda calls that would
reach a GPU raise instead; torch.cuda.is_available() and device_count() answer False and 0, as
torch does with no visible device (slime 624b824 asks is_available() while its parser is imported
and carries on without a GPU). Megatron's own validation asks the GPU for its capability part way
through (with the pinned Megatron: arguments.py:852); the check stops there and reports
`needs_gpu` with that file:line. Everything before it (all three parsers, slime's validation)
has run by then. Likewise, before download_model and convert have run, the validation that
reads config.json or the torch_dist checkpoint fails for want of them: that is `needs_files`,
after all the parsers have run.

Also reports the slime and Megatron commits, whether slime's Megatron patch
(docker/patch/latest/megatron.patch) is applied (`git apply --check -R`), and the sglang
version (importlib.metadata, as the job's Python sees it).

Prints ONE JSON object as its last stdout line; exit status 0 whatever it found (the caller
judges). Stdlib only, Python 3.8+.
"""
import argparse
import ast
import json
import os
import platform
import subprocess
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from probe import git_commit  # noqa: E402

MARK = "slimeflow-argvcheck-result "
SLIME_PATCH = os.path.join("docker", "patch", "latest", "megatron.patch")
GIT_TIMEOUT = 60
# torch.cuda entry points that start CUDA or ask a GPU something
CUDA_CALLS = ("init", "_lazy_init", "current_device", "set_device",
              "get_device_capability", "get_device_properties", "get_device_name",
              "mem_get_info", "synchronize")
# queries that need no GPU: answered as torch answers them with CUDA_VISIBLE_DEVICES empty
# (slime 624b824 asks is_available() while importing its parser and carries on without a GPU)
CUDA_QUERIES = {"is_available": False, "device_count": 0}


# --- parent ----------------------------------------------------------------------------------

def patch_state(slime_dir, megatron_dir):
    """applied | not applied | does not fit | no patch file | not a git checkout"""
    patch = os.path.join(slime_dir, SLIME_PATCH)
    if not os.path.isfile(patch):
        return "no patch file"
    if not os.path.isdir(os.path.join(megatron_dir, ".git")):
        return "not a git checkout"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    # git must not climb into a repository around megatron_dir
    env["GIT_CEILING_DIRECTORIES"] = os.path.dirname(os.path.abspath(megatron_dir))

    def fits(*extra):
        try:
            return subprocess.run(["git", "apply", "--check", *extra, patch], cwd=megatron_dir,
                                  env=env, capture_output=True, timeout=GIT_TIMEOUT).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return None

    reverse = fits("-R")
    if reverse is None:
        return "unknown (git failed)"
    if reverse:
        return "applied"
    return "not applied" if fits() else "does not fit"


def run_child(args, argv):
    env = dict(os.environ)
    env["CUDA_VISIBLE_DEVICES"] = ""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--slime-dir", args.slime_dir,
           "--megatron-dir", args.megatron_dir, "--", *argv]
    try:
        res = subprocess.run(cmd, cwd=args.slime_dir, env=env, capture_output=True, text=True,
                             timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"error": {"kind": "timeout",
                          "message": f"the parse did not finish in {args.timeout:g} s"}}
    for line in reversed(res.stdout.splitlines()):
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    tail = (res.stderr or res.stdout or "").strip().splitlines()[-5:]
    return {"error": {"kind": "crash", "message": f"the parse exited {res.returncode}: "
                                                  + " | ".join(tail)}}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if "--" in argv:
        i = argv.index("--")
        own, train_argv = argv[:i], argv[i + 1:]
    else:
        own, train_argv = argv, []
    ap = argparse.ArgumentParser(prog="argvcheck.py")
    ap.add_argument("--slime-dir", required=True)
    ap.add_argument("--megatron-dir", required=True)
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--child", action="store_true")
    args = ap.parse_args(own)
    if args.child:
        return child(args, train_argv)
    out = {"python": platform.python_version(), "executable": sys.executable,
           "slime": {"dir": args.slime_dir, "commit": git_commit(args.slime_dir)},
           "megatron": {"dir": args.megatron_dir, "commit": git_commit(args.megatron_dir),
                        "slime_patch": patch_state(args.slime_dir, args.megatron_dir)}}
    if not os.path.isfile(os.path.join(args.slime_dir, "train.py")):
        out.update(ok=False, error={"kind": "missing", "message":
                                    f"{args.slime_dir}/train.py does not exist"})
    else:
        got = run_child(args, train_argv)
        out.update(got)
        out["ok"] = not got.get("error") and not got.get("dropped")
    print(json.dumps(out))
    return 0


# --- child -----------------------------------------------------------------------------------

class ArgvRejected(Exception):
    pass


class NeedsGPU(Exception):
    pass


def _where(tb_or_frames, skip=(__file__,)):
    """file:line of the innermost frame outside this file and outside torch."""
    frames = traceback.extract_tb(tb_or_frames) if not isinstance(tb_or_frames, list) \
        else tb_or_frames
    here = os.path.abspath(__file__)
    for fr in reversed(frames):
        path = os.path.abspath(fr.filename)
        if (path == here or f"{os.sep}torch{os.sep}" in path or "importlib" in path
                or os.path.basename(path) == "argparse.py"):
            continue
        return f"{_short(path)}:{fr.lineno}"
    return None


def _short(path):
    """A path relative to the tree it is in: megatron/..., slime/..., sglang/..."""
    for root in ("megatron", "slime", "sglang"):
        key = f"{os.sep}{root}{os.sep}"
        if key in path:
            return root + os.sep + path.rsplit(key, 1)[1]
    return path


def parse_entry(train_py):
    """(module, function) that train.py calls to parse: `from M import parse_args`."""
    with open(train_py) as f:
        tree = ast.parse(f.read(), train_py)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                if alias.name == "parse_args":
                    return node.module, "parse_args"
    return None, None


def guard_cuda():
    """Make the torch.cuda calls that would reach a GPU raise NeedsGPU (torch imported first,
    so nothing imported after it can call CUDA unguarded)."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    def blocked(name):
        def call(*a, **k):
            frames = traceback.extract_stack()[:-1]
            raise NeedsGPU(f"torch.cuda.{name}() at {_where(frames)}")
        return call

    for name in CUDA_CALLS:
        if hasattr(torch.cuda, name):
            setattr(torch.cuda, name, blocked(name))
    for name, answer in CUDA_QUERIES.items():
        if hasattr(torch.cuda, name):
            setattr(torch.cuda, name, lambda *a, _answer=answer, **k: _answer)
    return True


def flag_name(tok):
    return tok.split("=", 1)[0]


def child(args, train_argv):
    out = {"parsed": False, "dropped": [], "needs_gpu": None, "error": None, "parsers": 0}
    try:
        from importlib.metadata import version
        out["sglang"] = version("sglang")
    except Exception:
        out["sglang"] = None
    calls = []
    orig_known = argparse.ArgumentParser.parse_known_args
    orig_error = argparse.ArgumentParser.error
    recording = {"on": False}

    def parse_known_args(self, a=None, namespace=None):
        ns, rest = orig_known(self, a, namespace)
        # only parsers of the whole command line judge what is dropped
        if recording["on"] and (a is None or list(a) == sys.argv[1:]):
            calls.append({"prog": self.prog, "rest": [flag_name(t) for t in rest
                                                      if t.startswith("--")]})
        return ns, rest

    def error(self, message):
        if recording["on"]:
            raise ArgvRejected(message)
        return orig_error(self, message)

    argparse.ArgumentParser.parse_known_args = parse_known_args
    argparse.ArgumentParser.error = error
    # as `cd slime_dir; PYTHONPATH=megatron_dir python3 train.py`: the script's folder, then
    # Megatron-LM, then the node's own path (where sglang and torch are installed)
    sys.path[:0] = [os.path.abspath(args.slime_dir), os.path.abspath(args.megatron_dir)]
    try:
        guard_cuda()
        module, func = parse_entry(os.path.join(args.slime_dir, "train.py"))
        if module is None:
            out["error"] = {"kind": "entry", "message": "train.py does not import parse_args"}
            return _emit(out)
        import importlib

        parse = getattr(importlib.import_module(module), func)
    except NeedsGPU as e:
        out["error"] = {"kind": "import", "message": f"importing slime's parser needs a GPU: {e}"}
        return _emit(out)
    except BaseException as e:  # noqa: BLE001 - whatever the node's code raises, say it
        out["error"] = {"kind": "import", "message": f"{type(e).__name__}: {e}",
                        "where": _where(e.__traceback__)}
        return _emit(out)
    sys.argv = ["train.py", *train_argv]
    recording["on"] = True
    try:
        parse()
        out["parsed"] = True
    except ArgvRejected as e:
        out["error"] = {"kind": "argv", "message": str(e), "where": _where(e.__traceback__)}
    except NeedsGPU as e:
        out["parsed"] = True  # every parser ran; a validation step needs the GPU
        out["needs_gpu"] = str(e)
    except SystemExit as e:
        out["error"] = {"kind": "exit", "message": f"the parser exited with status {e.code}"}
    except ImportError as e:  # slime imports Megatron's parser inside parse_args
        out["error"] = {"kind": "import", "message": f"{type(e).__name__}: {e}",
                        "where": _where(e.__traceback__)}
    except OSError as e:
        # a file the pipeline has not made yet (config.json before download_model, the
        # torch_dist checkpoint before convert): every parser has run; validation stops here
        out["parsed"] = True
        out["needs_files"] = f"{type(e).__name__}: {e}"
        out["needs_files_at"] = _where(e.__traceback__)
    except BaseException as e:  # noqa: BLE001
        out["error"] = {"kind": "validate", "message": f"{type(e).__name__}: {e}",
                        "where": _where(e.__traceback__)}
    finally:
        recording["on"] = False
    out["parsers"] = len(calls)
    if calls and out["error"] is None:
        left = set(calls[0]["rest"])
        for c in calls[1:]:
            left &= set(c["rest"])
        seen = []
        for tok in train_argv:
            name = flag_name(tok)
            if name in left and name not in seen:
                seen.append(name)
        out["dropped"] = seen
    return _emit(out)


def _emit(out):
    sys.stdout.flush()
    print(MARK + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
