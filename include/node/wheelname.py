#!/usr/bin/env python3
"""Derive the causal-conv1d GitHub release wheel name that fits this node's torch.

    python3 wheelname.py [--version 1.5.4] [--python EXE] [--timeout 60]

causal-conv1d's PyPI sdist guesses a release wheel named

    causal_conv1d-{v}+cu{CUDA major}torch{major.minor}cxx11abi{TRUE|FALSE}-cp{XY}-cp{XY}-linux_x86_64.whl

and every part must match the torch that will import it: torch.version.cuda's major, torch's
major.minor, torch._C._GLIBCXX_USE_CXX11_ABI and the interpreter's tag. The seed pins the
cu12 / torch 2.8 / cxx11abiTRUE / cp312 wheel of 1.5.4; on any other torch that wheel is an ABI
mismatch to report, not to install.

`wheel_name()` is a pure function. The CLI asks the local torch in a subprocess (stdlib only in
this process, Python 3.8+) and prints ONE JSON object:
{"wheel", "matches_seed", "seed_wheel", "problems": [one sentence each], "torch": {...}, "error"}.
Exit status 0 whenever the JSON could be made (a mismatch is a finding, not a failure), 1 when
torch could not be asked.
"""
import argparse
import json
import re
import subprocess
import sys

SEED_VERSION = "1.5.4"
SEED = {"torch": "2.8", "cuda_major": "12", "cxx11abi": True, "python_tag": "cp312"}
PLATFORM = "linux_x86_64"
DEFAULT_TIMEOUT = 60.0

TORCH_SCRIPT = r"""
import json, sys
r = {"version": None, "cuda": None, "cxx11abi": None,
     "python_tag": "cp%d%d" % sys.version_info[:2], "error": None}
try:
    import torch
    r["version"] = str(torch.__version__)
    r["cuda"] = torch.version.cuda
    try:
        r["cxx11abi"] = bool(torch._C._GLIBCXX_USE_CXX11_ABI)
    except Exception as e:
        r["error"] = "torch._C._GLIBCXX_USE_CXX11_ABI: %s: %s" % (type(e).__name__, e)
except Exception as e:
    r["error"] = "import torch failed: %s: %s" % (type(e).__name__, e)
print(json.dumps(r))
"""


def torch_major_minor(torch_version):
    """'2.11.0+cu130' -> '2.11'."""
    m = re.match(r"^\s*(\d+)\.(\d+)", str(torch_version or ""))
    if not m:
        raise ValueError("cannot read major.minor from torch version %r" % (torch_version,))
    return "%d.%d" % (int(m.group(1)), int(m.group(2)))


def cuda_major(cuda_version):
    """'13.0' -> '13'; a CPU-only torch (None) has no CUDA wheel."""
    m = re.match(r"^\s*(\d+)", str(cuda_version or ""))
    if cuda_version is None or not m:
        raise ValueError("torch has no CUDA version (%r): causal-conv1d ships CUDA wheels only"
                         % (cuda_version,))
    return str(int(m.group(1)))


def python_tag(tag):
    """'cp312', '312', '3.12', (3, 12) -> 'cp312'."""
    if isinstance(tag, (tuple, list)):
        return "cp%d%d" % (int(tag[0]), int(tag[1]))
    text = str(tag).strip().lower()
    m = re.match(r"^(?:cp|py)?(\d)\.?(\d+)$", text)
    if not m:
        raise ValueError("cannot read a CPython tag from %r" % (tag,))
    return "cp%s%s" % (m.group(1), m.group(2))


def wheel_name(version, torch_version, cuda_version, cxx11abi, python_tag_):
    """The release wheel causal-conv1d's setup looks for, for one torch build."""
    cp = python_tag(python_tag_)
    return "causal_conv1d-%s+cu%storch%scxx11abi%s-%s-%s-%s.whl" % (
        version, cuda_major(cuda_version), torch_major_minor(torch_version),
        "TRUE" if cxx11abi else "FALSE", cp, cp, PLATFORM)


def seed_wheel(version=SEED_VERSION):
    return wheel_name(version, SEED["torch"], SEED["cuda_major"], SEED["cxx11abi"],
                      SEED["python_tag"])


def mismatches(torch_version, cuda_version, cxx11abi, python_tag_):
    """One sentence for each part that differs from the seed's wheel."""
    out = []
    mm = torch_major_minor(torch_version)
    if mm != SEED["torch"]:
        out.append("torch %s (%s) is not the seed wheel's torch %s: the wheel's compiled "
                   "extension would be loaded against another torch ABI, so it must not be "
                   "installed; build causal-conv1d from source or use a wheel made for torch %s."
                   % (mm, torch_version, SEED["torch"], mm))
    try:
        cm = cuda_major(cuda_version)
    except ValueError:
        cm = None
    if cm is None:
        out.append("torch %s has no CUDA build, while the seed wheel is for CUDA %s."
                   % (torch_version, SEED["cuda_major"]))
    elif cm != SEED["cuda_major"]:
        out.append("torch is built for CUDA %s (%s), but the seed wheel is for CUDA %s."
                   % (cm, cuda_version, SEED["cuda_major"]))
    if cxx11abi is None:
        out.append("torch did not report its C++ ABI (_GLIBCXX_USE_CXX11_ABI), so the "
                   "cxx11abi part of the name is a guess.")
    elif bool(cxx11abi) != SEED["cxx11abi"]:
        out.append("torch uses cxx11abi=%s, but the seed wheel is cxx11abi%s."
                   % (str(bool(cxx11abi)).upper(), str(SEED["cxx11abi"]).upper()))
    cp = python_tag(python_tag_)
    if cp != SEED["python_tag"]:
        out.append("the Python tag is %s, but the seed wheel is %s."
                   % (cp, SEED["python_tag"]))
    return out


def describe(info, version=SEED_VERSION):
    """The CLI's JSON from a torch description (dict with version, cuda, cxx11abi, python_tag)."""
    result = {"wheel": None, "matches_seed": False, "seed_wheel": seed_wheel(version),
              "version": version, "problems": [], "torch": info, "error": None}
    if info.get("version") is None:
        result["error"] = info.get("error") or "torch is not importable"
        result["problems"].append("torch is not importable, so no wheel name can be derived.")
        return result
    try:
        result["wheel"] = wheel_name(version, info["version"], info.get("cuda"),
                                     info.get("cxx11abi"), info.get("python_tag"))
    except ValueError as e:
        result["error"] = str(e)
    result["problems"] = mismatches(info["version"], info.get("cuda"), info.get("cxx11abi"),
                                    info.get("python_tag"))
    if version != SEED_VERSION:
        result["problems"].append("causal-conv1d %s is not the seed's %s."
                                  % (version, SEED_VERSION))
    result["matches_seed"] = result["wheel"] is not None and result["wheel"] == result["seed_wheel"]
    return result


def ask_torch(python, timeout):
    """Torch facts from a subprocess; never raises."""
    info = {"version": None, "cuda": None, "cxx11abi": None, "python_tag": None, "error": None}
    try:
        p = subprocess.run([python, "-c", TORCH_SCRIPT], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=timeout)
    except subprocess.TimeoutExpired:
        info["error"] = "asking torch (%s) timed out after %g s" % (python, timeout)
        return info
    except OSError as e:
        info["error"] = "could not run %s: %s" % (python, e)
        return info
    for line in reversed(p.stdout.decode("utf-8", "replace").splitlines()):
        if line.startswith("{"):
            try:
                info.update(json.loads(line))
                return info
            except ValueError:
                break
    tail = [l for l in p.stderr.decode("utf-8", "replace").splitlines() if l.strip()][-1:]
    info["error"] = "the torch query exited with %s: %s" % (
        p.returncode, tail[0] if tail else "no output")
    return info


def main(argv=None):
    ap = argparse.ArgumentParser(description="causal-conv1d wheel name for this node")
    ap.add_argument("--version", default=SEED_VERSION, help="causal-conv1d version")
    ap.add_argument("--python", default=sys.executable, help="interpreter that has torch")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    args = ap.parse_args(argv)
    result = describe(ask_torch(args.python, args.timeout), args.version)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 1 if result["torch"].get("version") is None else 0


if __name__ == "__main__":
    sys.exit(main())
