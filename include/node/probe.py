#!/usr/bin/env python3
"""Report the facts about this GPU node that preflight needs, as ONE JSON object.

    python3 probe.py --base-folder B --slime-dir S --megatron-dir M
                     [--hub-repo TYPE:REPO@REV ...] [--hf-repo R [--hf-revision V]]

Stdlib only, Python 3.8+. Never imports torch, triton or fla in this process: torch's version,
CUDA build and C++ ABI are read from its files (torch/version.py, TorchConfig.cmake), and only
on a 470 driver, which cannot report compute_cap, is torch asked for it by a subprocess with a
timeout; fla's wy_fast.py is classified by content.
Every subprocess has a timeout and no error escapes: a failing part is reported in its own
"error" field or in "errors", and the JSON is always printed (exit 0).
"""
import argparse
import ast
import csv
import importlib.util
import io
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import time

try:  # Python 3.8+
    import importlib.metadata as _md
except ImportError:  # pragma: no cover - the nodes run 3.8+
    _md = None

PROBE_VERSION = 1
NVSMI_TIMEOUT = 20.0
TORCH_TIMEOUT = 60.0
GIT_TIMEOUT = 15.0
HF_CLI_TIMEOUT = 30.0
RAY_CLI_TIMEOUT = 60.0
HUB_TIMEOUT = 20.0
DEFAULT_PORTS = (6379, 8265)

GPU_FIELDS = ["index", "name", "uuid", "compute_cap", "memory.total", "driver_version"]
GPU_FIELDS_NO_CC = [f for f in GPU_FIELDS if f != "compute_cap"]
APP_FIELDS = ["pid", "process_name", "used_memory", "gpu_uuid"]

WY_FAST_REL = os.path.join("fla", "ops", "gated_delta_rule", "wy_fast.py")
UNPATCHED_LINE = "b_dk += tl.dot(tl.trans(b_dA), b_kb)"
PATCH_MARKER = "slimeflow: sm100 fusion barrier"

_NA = ("", "[N/A]", "N/A", "[Not Supported]", "Not Supported", "[Unknown Error]",
       "[Insufficient Permissions]")


# --------------------------------------------------------------------------- helpers
def run_cmd(argv, timeout, env=None, cwd=None):
    """Run argv; never raises. Returns dict(rc, out, err, error) where error is a sentence
    when the command could not run or timed out (rc is None then)."""
    try:
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           stdin=subprocess.DEVNULL, timeout=timeout, env=env, cwd=cwd)
    except FileNotFoundError:
        return {"rc": None, "out": "", "err": "", "error": "%s is missing (not on PATH)" % argv[0]}
    except subprocess.TimeoutExpired:
        return {"rc": None, "out": "", "err": "",
                "error": "%s timed out after %g s" % (argv[0], timeout)}
    except OSError as e:
        return {"rc": None, "out": "", "err": "", "error": "could not run %s: %s" % (argv[0], e)}
    return {"rc": p.returncode, "out": p.stdout.decode("utf-8", "replace"),
            "err": p.stderr.decode("utf-8", "replace"), "error": None}


def _na(value):
    value = value.strip()
    return None if value in _NA else value


def _int(value):
    value = _na(value) if value is not None else None
    if value is None:
        return None
    try:
        return int(float(value))
    except ValueError:
        return None


def _first_line(text):
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def _read(path):
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


# --------------------------------------------------------------------------- GPU parsing
def parse_query_gpu(text, fields=None):
    """Parse `nvidia-smi --query-gpu=<fields> --format=csv,noheader,nounits`."""
    fields = list(fields or GPU_FIELDS)
    gpus = []
    for row in csv.reader(io.StringIO(text), skipinitialspace=True):
        if len(row) != len(fields):
            continue
        rec = dict(zip(fields, [c.strip() for c in row]))
        index = _int(rec.get("index"))
        if index is None:
            continue
        gpus.append({
            "index": index,
            "name": _na(rec.get("name", "")),
            "uuid": _na(rec.get("uuid", "")),
            "compute_cap": _na(rec["compute_cap"]) if "compute_cap" in rec else None,
            "memory_mib": _int(rec.get("memory.total")),
            "driver": _na(rec.get("driver_version", "")),
        })
    return gpus


def is_invalid_field_error(text):
    """True for the 470-series answer to an unknown query field (compute_cap)."""
    return "is not a valid field to query" in text


def nvsmi_error(res):
    """One sentence describing why an nvidia-smi call gave no data, or None."""
    if res["error"]:
        if "missing" in res["error"]:
            return "nvidia-smi is missing (not on PATH): no NVIDIA driver on this node"
        if "timed out" in res["error"]:
            return ("nvidia-smi timed out after %g s: a GPU or the driver may be hung"
                    % NVSMI_TIMEOUT)
        return res["error"]
    both = res["out"] + "\n" + res["err"]
    if "No devices were found" in both:
        return "No devices were found"
    if res["rc"] != 0:
        line = _first_line(res["err"]) or _first_line(res["out"]) or "no output"
        return "nvidia-smi failed (exit %s): %s" % (res["rc"], line)
    return None


def parse_compute_apps(text):
    """Parse `nvidia-smi --query-compute-apps=pid,process_name,used_memory,gpu_uuid`."""
    procs = []
    for row in csv.reader(io.StringIO(text), skipinitialspace=True):
        if len(row) < 4:
            continue
        pid = _int(row[0])
        if pid is None:
            continue
        procs.append({
            "pid": pid,
            "name": ",".join(row[1:-2]).strip(),  # a name with commas is split by csv
            "used_mib": _int(row[-2]),
            "gpu_uuid": _na(row[-1]),
        })
    return procs


_NV_LINK = re.compile(r"(?<![A-Za-z#])NV\d+\b")


def parse_topo(text):
    """True when `nvidia-smi topo -m` shows at least one NV# (NVLink) connection."""
    for line in text.splitlines():
        if _NV_LINK.search(line):
            return True
    return False


# --------------------------------------------------------------------------- fla
def classify_wy_fast(text):
    """Classify fla's wy_fast.py by content (None = file missing)."""
    if text is None:
        return "unknown"
    if PATCH_MARKER in text:
        return "patched"
    for line in text.splitlines():
        if line.strip() == UNPATCHED_LINE:
            return "unpatched"
    return "absent"


# --------------------------------------------------------------------------- /proc parsing
def parse_proc_net_tcp(text):
    """Set of local ports in LISTEN state (st == 0A) from /proc/net/tcp or tcp6."""
    ports = set()
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 4 or parts[3].upper() != "0A":
            continue
        local = parts[1]
        if ":" not in local:
            continue
        try:
            ports.add(int(local.rsplit(":", 1)[1], 16))
        except ValueError:
            continue
    return ports


def parse_meminfo(text):
    """(total_bytes, available_bytes) from /proc/meminfo."""
    vals = {}
    for line in text.splitlines():
        m = re.match(r"^(\w+):\s+(\d+)\s*(kB)?", line)
        if m:
            vals[m.group(1)] = int(m.group(2)) * (1024 if m.group(3) else 1)
    total = vals.get("MemTotal")
    avail = vals.get("MemAvailable")
    if avail is None and total is not None:
        avail = vals.get("MemFree", 0) + vals.get("Buffers", 0) + vals.get("Cached", 0)
    return total, avail


def parse_package_info(text):
    """Version string from megatron/core/package_info.py, parsed as text (never executed)."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return None
    consts = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                and isinstance(node.targets[0], ast.Name):
            try:
                consts[node.targets[0].id] = ast.literal_eval(node.value)
            except (ValueError, SyntaxError, TypeError):
                pass
    if isinstance(consts.get("__version__"), str):
        return consts["__version__"]
    if "MAJOR" in consts and "MINOR" in consts:
        v = "%s.%s.%s" % (consts["MAJOR"], consts["MINOR"], consts.get("PATCH", 0))
        pre = consts.get("PRE_RELEASE")
        return v + (str(pre) if pre else "")
    return None


def parse_hf_version(text):
    """Version from `hf --version` / `hf version` output (ANSI colours tolerated)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    m = re.search(r"(\d+\.\d+(?:\.\d+)?(?:[-.+]?(?:rc|dev|post|a|b)\d*)?)", text)
    return m.group(1) if m else None


def parse_ray_version(text):
    """Version from `ray --version` ("ray, version 2.60.0"), else None."""
    m = re.search(r"\bversion\s+(\S+)", re.sub(r"\x1b\[[0-9;]*m", "", text or ""))
    return m.group(1) if m else None


def parse_hub_arg(value):
    """'TYPE:REPO@REV' -> (type, repo, revision); TYPE defaults to model, REV to main."""
    rtype = "model"
    head, sep, tail = value.partition(":")
    if sep and head in ("model", "models", "dataset", "datasets", "space", "spaces"):
        rtype = head[:-1] if head.endswith("s") else head
        value = tail
    repo, sep, rev = value.partition("@")
    return rtype, repo.strip(), (rev.strip() if sep and rev.strip() else "main")


def summarize_hub_info(info):
    """(bytes, files, sha) from a /api/{type}s/{repo}/revision/{rev}?blobs=true answer."""
    siblings = info.get("siblings") or []
    total = 0
    known = True
    for s in siblings:
        size = s.get("size")
        if size is None and isinstance(s.get("lfs"), dict):
            size = s["lfs"].get("size")
        if size is None:
            known = False
            continue
        total += int(size)
    return (total if known else None), len(siblings), info.get("sha")


# --------------------------------------------------------------------------- collectors
TORCH_SCRIPT = r"""
import json
r = {"version": None, "cuda": None, "cxx11abi": None, "capabilities": None, "error": None,
     "triton": None}
try:
    import torch
    r["version"] = str(torch.__version__)
    r["cuda"] = torch.version.cuda
    try:
        r["cxx11abi"] = bool(torch._C._GLIBCXX_USE_CXX11_ABI)
    except Exception:
        pass
    try:
        if torch.cuda.is_available():
            r["capabilities"] = [list(torch.cuda.get_device_capability(i))
                                 for i in range(torch.cuda.device_count())]
    except Exception as e:
        r["error"] = "torch.cuda: %s: %s" % (type(e).__name__, e)
except Exception as e:
    r["error"] = "import torch failed: %s: %s" % (type(e).__name__, e)
try:
    import triton
    r["triton"] = str(triton.__version__)
except Exception:
    pass
print(json.dumps(r))
"""


def _assigned(text, name):
    """The string assigned to `name` at the top level of a file such as torch/version.py
    (`__version__ = '2.8.0+cu128'`, `cuda: Optional[str] = '12.8'`), or None."""
    m = re.search(r"^%s\s*(?::[^=\n]*)?=\s*['\"]([^'\"]*)['\"]" % re.escape(name), text or "", re.M)
    return m.group(1) if m else None


def torch_from_files():
    """torch's version, CUDA version and C++ ABI read from its files. Importing torch costs
    seconds of CPU per node; only a 470 driver, which cannot report compute_cap, needs it."""
    r = {"version": None, "cuda": None, "cxx11abi": None, "capabilities": None, "error": None}
    path = module_dir("torch")
    if path is None or not os.path.isdir(path):
        r["error"] = "torch is not installed for %s" % sys.executable
        return r
    text = _read(os.path.join(path, "version.py"))
    r["version"] = _assigned(text, "__version__")
    r["cuda"] = _assigned(text, "cuda")
    cmake = _read(os.path.join(path, "share", "cmake", "Torch", "TorchConfig.cmake")) or ""
    m = re.search(r"_GLIBCXX_USE_CXX11_ABI=([01])", cmake)
    r["cxx11abi"] = bool(int(m.group(1))) if m else None
    if r["version"] is None:
        r["error"] = "torch at %s has no version.py: a broken install" % path
    return r


def start_torch_probe():
    try:
        return subprocess.Popen([sys.executable, "-c", TORCH_SCRIPT], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    except OSError as e:
        return e


def finish_torch_probe(proc, deadline):
    empty = {"version": None, "cuda": None, "cxx11abi": None, "capabilities": None,
             "error": None}
    if isinstance(proc, BaseException):
        empty["error"] = "could not start %s: %s" % (sys.executable, proc)
        return empty, None
    try:
        out, err = proc.communicate(timeout=max(0.5, deadline - time.time()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        empty["error"] = "importing torch timed out after %g s" % TORCH_TIMEOUT
        return empty, None
    for line in reversed(out.decode("utf-8", "replace").splitlines()):
        if line.startswith("{"):
            try:
                data = json.loads(line)
            except ValueError:
                break
            triton = data.pop("triton", None)
            for k in empty:
                empty[k] = data.get(k)
            return empty, triton
    tail = _first_line("\n".join(err.decode("utf-8", "replace").splitlines()[-3:]))
    empty["error"] = "the torch probe exited with %s: %s" % (proc.returncode, tail or "no output")
    return empty, None


def query_gpus():
    """(gpus, gpu_error) from nvidia-smi, retrying without compute_cap on 470 drivers."""
    fields = GPU_FIELDS
    res = run_cmd(["nvidia-smi", "--query-gpu=" + ",".join(fields),
                   "--format=csv,noheader,nounits"], NVSMI_TIMEOUT)
    if res["error"] is None and is_invalid_field_error(res["out"] + res["err"]):
        fields = GPU_FIELDS_NO_CC
        res = run_cmd(["nvidia-smi", "--query-gpu=" + ",".join(fields),
                       "--format=csv,noheader,nounits"], NVSMI_TIMEOUT)
    err = nvsmi_error(res)
    if err:
        return [], err
    gpus = parse_query_gpu(res["out"], fields)
    if not gpus:
        return [], "nvidia-smi listed no GPUs: %s" % (_first_line(res["out"]) or "empty output")
    return gpus, None


def collect_gpu_extras(result):
    res = run_cmd(["nvidia-smi", "--query-compute-apps=" + ",".join(APP_FIELDS),
                   "--format=csv,noheader,nounits"], NVSMI_TIMEOUT)
    err = nvsmi_error(res)
    if err:
        result["errors"].append("listing GPU processes failed: %s" % err)
    else:
        result["gpu_processes"] = parse_compute_apps(res["out"])
    res = run_cmd(["nvidia-smi", "topo", "-m"], NVSMI_TIMEOUT)
    err = nvsmi_error(res)
    if err:
        result["errors"].append("nvidia-smi topo -m failed: %s" % err)
    else:
        result["nvlink"] = parse_topo(res["out"])


def dist_version(names):
    if _md is None:
        return None
    for n in names:
        try:
            return _md.version(n)
        except Exception:  # PackageNotFoundError, or a broken dist-info
            continue
    return None


def _spec_locations(name):
    try:
        spec = importlib.util.find_spec(name)  # a top-level name: nothing is executed
    except (ImportError, ValueError, AttributeError):
        return []
    if spec is None:
        return []
    locs = [os.path.abspath(l) for l in (spec.submodule_search_locations or [])]
    if not locs and spec.origin and spec.origin not in ("built-in", "frozen", "namespace"):
        locs = [os.path.abspath(spec.origin)]
    return locs


def module_dir(name):
    """Directory of a top-level package (or its .py file), found without importing it."""
    locs = _spec_locations(name)
    return locs[0] if locs else None


def git_commit(directory):
    """HEAD of the git work tree rooted at directory; never that of an enclosing repo."""
    if not directory or not os.path.isdir(directory):
        return None
    env = dict(os.environ)
    for k in ("GIT_DIR", "GIT_WORK_TREE", "GIT_COMMON_DIR"):
        env.pop(k, None)
    env["GIT_CEILING_DIRECTORIES"] = os.path.dirname(os.path.realpath(directory))
    res = run_cmd(["git", "-C", directory, "rev-parse", "HEAD"], GIT_TIMEOUT, env=env)
    if res["error"] or res["rc"] != 0:
        return None
    sha = res["out"].strip()
    return sha if re.match(r"^[0-9a-f]{40,64}$", sha) else None


def _pkg(present, version, path, commit=None):
    return {"present": bool(present), "version": version, "path": path, "commit": commit}


def find_wy_fast():
    """(fla dir, wy_fast.py path or None). fla may be split over namespace portions
    (PyPI 0.4.x: flash-linear-attention has layers/models, fla-core has ops)."""
    locs = _spec_locations("fla")
    if not locs:
        return None, None
    for loc in locs:
        cand = os.path.join(os.path.dirname(loc), WY_FAST_REL)
        if os.path.isfile(cand):
            return loc, cand
    return locs[0], os.path.join(os.path.dirname(locs[0]), WY_FAST_REL)


def collect_packages(args):
    pk = {}
    # slime: installed with `pip install -e .` from slime_dir.
    path = module_dir("slime")
    if path is None and os.path.isdir(os.path.join(args.slime_dir, "slime")):
        path = os.path.join(os.path.abspath(args.slime_dir), "slime")
    version = dist_version(["slime"])
    pk["slime"] = _pkg(path or version, version, path, git_commit(args.slime_dir))
    # the job runs `python3 train.py` (and the converter tools/...) with cwd = slime_dir
    pk["slime"]["train_py"] = os.path.isfile(os.path.join(args.slime_dir, "train.py"))

    # megatron: used through PYTHONPATH=megatron_dir, so that copy wins when present.
    mdir = os.path.join(os.path.abspath(args.megatron_dir), "megatron")
    path = mdir if os.path.isdir(mdir) else module_dir("megatron")
    version = None
    if path:
        text = _read(os.path.join(path, "core", "package_info.py"))
        version = parse_package_info(text) if text else None
    version = version or dist_version(["megatron-core", "megatron_core", "megatron-lm"])
    commit = git_commit(args.megatron_dir) if os.path.isdir(mdir) else None
    pk["megatron"] = _pkg(path or version, version, path, commit)

    for key, dists, mod in (("sglang", ["sglang"], "sglang"),
                            ("ray", ["ray"], "ray"),
                            ("causal_conv1d", ["causal_conv1d", "causal-conv1d"], "causal_conv1d")):
        version = dist_version(dists)
        path = module_dir(mod)
        pk[key] = _pkg(version or path, version, path)

    # the `ray` on PATH is what runs `ray job submit`, and its version decides how the entrypoint
    # is quoted (Ray >= 2.56: shlex.join); it can differ from python3's ray dist
    pk["ray"].update(collect_ray_cli())
    pk["ray"]["present"] = pk["ray"]["present"] or bool(pk["ray"]["cli_version"])

    version = dist_version(["flash-linear-attention", "flash_linear_attention",
                            "fla-core", "fla_core", "fla"])
    path, wy_path = find_wy_fast()
    state = classify_wy_fast(_read(wy_path)) if wy_path else "unknown"
    pk["fla"] = {"present": bool(version or path), "version": version, "path": path,
                 "wy_fast": state, "wy_fast_path": wy_path}
    return pk


def script_python(path):
    """The Python a console script such as `ray` runs under (its #! line), or None."""
    try:
        with open(path, "rb") as f:
            first = f.readline(512).decode("utf-8", "replace").strip()
    except OSError:
        return None
    if not first.startswith("#!"):
        return None
    argv = first[2:].split()
    if argv and os.path.basename(argv[0]) == "env":
        argv = [a for a in argv[1:] if not a.startswith("-")][:1]
    return argv[0] if argv and "python" in os.path.basename(argv[0]) else None


def collect_ray_cli():
    """The version of the `ray` on PATH. Read through the CLI's own Python's package metadata:
    `ray --version` imports all of Ray, about 1.6 CPU-seconds per node per run."""
    path = shutil.which("ray")
    out = {"cli_path": path, "cli_version": None}
    if not path:
        return out
    py = script_python(path)
    if py:
        res = run_cmd([py, "-c", "from importlib.metadata import version; print(version('ray'))"],
                      RAY_CLI_TIMEOUT)
        text = (res["out"] or "").strip()
        if res["error"] is None and res["rc"] == 0 and re.match(r"^\d+\.\d+", text):
            out["cli_version"] = text.splitlines()[-1]
    if out["cli_version"] is None:
        res = run_cmd([path, "--version"], RAY_CLI_TIMEOUT)
        if res["error"] is None and res["rc"] == 0:
            out["cli_version"] = parse_ray_version(res["out"] + "\n" + res["err"])
    return out


def collect_hf_cli():
    path = shutil.which("hf")
    out = {"present": bool(path), "path": path, "version": None}
    if not path:
        return out
    for argv in ([path, "--version"], [path, "version"]):
        res = run_cmd(argv, HF_CLI_TIMEOUT)
        if res["error"] is None and res["rc"] == 0:
            v = parse_hf_version(res["out"] + "\n" + res["err"])
            if v:
                out["version"] = v
                break
    return out


def nearest_existing(path):
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def collect_disk(base):
    path = nearest_existing(base)
    st = os.statvfs(path)
    return {"path": path, "exists": os.path.isdir(base),
            "writable": os.access(path, os.W_OK | os.X_OK),  # EROFS counts as not writable
            "free_bytes": st.f_bavail * st.f_frsize, "total_bytes": st.f_blocks * st.f_frsize}


def collect_ram():
    text = _read("/proc/meminfo")
    total = avail = None
    if text:
        total, avail = parse_meminfo(text)
    if total is None:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            pass
    return {"total_bytes": total, "available_bytes": avail}


def collect_ports(ports=DEFAULT_PORTS, proc_files=("/proc/net/tcp", "/proc/net/tcp6")):
    listening = set()
    read_any = False
    for name in proc_files:
        text = _read(name)
        if text is not None:
            read_any = True
            listening |= parse_proc_net_tcp(text)
    if read_any:
        return {str(p): p in listening for p in ports}
    out = {}
    for p in ports:  # no /proc: something answering a connect is listening
        busy = False
        for host in ("127.0.0.1", "::1"):
            try:
                with socket.create_connection((host, p), timeout=1.0):
                    busy = True
                    break
            except OSError:
                continue
        out[str(p)] = busy
    return out


def fetch_hub(rtype, repo, revision):
    """One hub entry; never raises, never echoes the token."""
    import urllib.error
    import urllib.parse
    import urllib.request
    entry = {"type": rtype, "repo": repo, "revision": revision, "bytes": None, "files": None,
             "sha": None, "error": None}
    endpoint = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    url = "%s/api/%ss/%s/revision/%s?blobs=true" % (
        endpoint, rtype, urllib.parse.quote(repo, safe="/"), urllib.parse.quote(revision, safe=""))
    req = urllib.request.Request(url, headers={"User-Agent": "slimeflow-probe/1"})
    token = os.environ.get("HF_TOKEN")
    if token:
        req.add_header("Authorization", "Bearer %s" % token)
    try:
        with urllib.request.urlopen(req, timeout=HUB_TIMEOUT) as resp:
            info = json.loads(resp.read().decode("utf-8"))
        entry["bytes"], entry["files"], entry["sha"] = summarize_hub_info(info)
    except urllib.error.HTTPError as e:
        msg = ""
        try:
            body = json.loads(e.read().decode("utf-8", "replace"))
            msg = body.get("error") if isinstance(body, dict) else ""
        except Exception:
            pass
        hint = {401: " (private or gated: set an HF token that has access)",
                403: " (gated: accept the terms on the hub with this token's account)",
                404: " (no such repo or revision)"}.get(e.code, "")
        entry["error"] = "HTTP %d from %s%s%s" % (e.code, url, hint, (": " + msg) if msg else "")
    except urllib.error.URLError as e:
        entry["error"] = "cannot reach %s: %s" % (endpoint, e.reason)
    except socket.timeout:
        entry["error"] = "%s did not answer within %g s" % (endpoint, HUB_TIMEOUT)
    except Exception as e:  # bad JSON, connection reset, ...
        entry["error"] = "hub query %s failed: %s: %s" % (url, type(e).__name__, e)
    if token and entry["error"]:
        entry["error"] = entry["error"].replace(token, "***")
    return entry


def collect_health(level):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import gpuhealth  # a sibling node script: the same facts `gpuhealth.py check` prints

    return gpuhealth.check(level)


def collect_ray_local():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import raystate  # a sibling node script: the same lister train and teardown ask

    return raystate.ray_processes()


# --------------------------------------------------------------------------- main
def probe(args):
    result = {
        "probe_version": PROBE_VERSION,
        "hostname": socket.gethostname(),
        "python": "%d.%d.%d" % sys.version_info[:3],
        "platform": platform.platform(),
        "gpus": [], "gpu_error": None, "gpu_processes": [], "nvlink": False,
        "torch": {"version": None, "cuda": None, "cxx11abi": None, "capabilities": None,
                  "error": None},
        "triton": None,
        "packages": {},
        "hf_cli": {"present": False, "path": None, "version": None},
        "disk": {"path": args.base_folder, "exists": False, "writable": False,
                 "free_bytes": 0, "total_bytes": 0},
        "ram": {"total_bytes": None, "available_bytes": None},
        "ports": {str(p): False for p in DEFAULT_PORTS},
        "ray_local": None,
        "health": None,
        "hub": [],
        "errors": [],
    }

    def section(name, fn):
        try:
            fn()
        except Exception as e:  # a bug or an odd node must not cost the whole probe
            result["errors"].append("%s: %s: %s" % (name, type(e).__name__, e))

    def gpus():
        result["gpus"], result["gpu_error"] = query_gpus()
        if result["gpus"]:
            collect_gpu_extras(result)

    def hub():
        for spec in args.hub_repo:
            result["hub"].append(fetch_hub(*parse_hub_arg(spec)))

    def torch():
        result["torch"] = torch_from_files()
        tdir = module_dir("triton")
        result["triton"] = dist_version(["triton", "pytorch-triton"]) or (
            _assigned(_read(os.path.join(tdir, "__init__.py")), "__version__") if tdir else None)
        if not any(g["compute_cap"] is None for g in result["gpus"]) or \
                result["torch"]["error"]:
            return
        # 470-series drivers cannot report compute_cap: only then is torch imported (asked)
        asked, triton = finish_torch_probe(start_torch_probe(), time.time() + TORCH_TIMEOUT)
        result["torch"]["capabilities"] = asked["capabilities"]
        if asked["error"]:
            result["torch"]["error"] = asked["error"]
        result["triton"] = result["triton"] or triton
        caps = asked["capabilities"]
        for g in result["gpus"]:
            if g["compute_cap"] is None and caps and 0 <= g["index"] < len(caps):
                g["compute_cap"] = "%d.%d" % tuple(caps[g["index"]][:2])

    section("gpus", gpus)
    if result["gpus"]:  # ECC, remaps, PCIe, NVLink, fabric, Xid, DCGM (gpuhealth.py)
        section("health", lambda: result.__setitem__("health", collect_health(args.dcgm_level)))
    section("packages", lambda: result.__setitem__("packages", collect_packages(args)))
    section("hf_cli", lambda: result.__setitem__("hf_cli", collect_hf_cli()))
    section("disk", lambda: result.__setitem__("disk", collect_disk(args.base_folder)))
    section("ram", lambda: result.__setitem__("ram", collect_ram()))
    section("ports", lambda: result.__setitem__("ports", collect_ports()))
    # any Ray running here, whatever its ports: the raylets and GCS servers by process name
    section("ray_local", lambda: result.__setitem__("ray_local", collect_ray_local()))
    section("hub", hub)
    section("torch", torch)
    return result


def build_parser():
    ap = argparse.ArgumentParser(description="slimeflow node probe")
    ap.add_argument("--base-folder", required=True)
    ap.add_argument("--slime-dir", required=True)
    ap.add_argument("--megatron-dir", required=True)
    ap.add_argument("--hub-repo", action="append", default=[],
                    help="TYPE:REPO@REV, e.g. model:Qwen/Qwen3-4B@main (repeatable)")
    ap.add_argument("--hf-repo", action="append", default=[],
                    help="model repo (the spelling in docs/internals.md; pairs with --hf-revision)")
    ap.add_argument("--hf-revision", action="append", default=[])
    ap.add_argument("--dcgm-level", type=int, choices=(0, 1, 2), default=0,
                    help="run `dcgmi diag -r LEVEL` where dcgmi is installed (0: never)")
    ap.add_argument("--torch-timeout", type=float, default=TORCH_TIMEOUT)
    ap.add_argument("--nvsmi-timeout", type=float, default=NVSMI_TIMEOUT)
    return ap


def main(argv=None):
    global TORCH_TIMEOUT, NVSMI_TIMEOUT
    args = build_parser().parse_args(argv)
    TORCH_TIMEOUT, NVSMI_TIMEOUT = args.torch_timeout, args.nvsmi_timeout
    for i, repo in enumerate(args.hf_repo):
        rev = args.hf_revision[i] if i < len(args.hf_revision) else "main"
        args.hub_repo.append(repo if "@" in repo else "%s@%s" % (repo, rev))
    try:
        result = probe(args)
    except Exception as e:  # pragma: no cover - probe() already guards every section
        result = {"probe_version": PROBE_VERSION,
                  "errors": ["probe crashed: %s: %s" % (type(e).__name__, e)]}
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
