#!/usr/bin/env python3
"""All-reduce benchmark over NCCL, one process per GPU, as ONE JSON object.

    python3 nccl_check.py [--gpus N] [--size-mb 256] [--iters 20] [--warmup 5]
                          [--dtype float32|bf16] [--timeout 180] [--python EXE]

Stdlib only at import, Python 3.8+. torch is used only in child processes:

1. a detection child (`EXE -c ...`) asks torch for CUDA, the GPU count and NCCL's version;
2. N worker children (`EXE nccl_check.py --worker ...`), one per GPU, joined through
   torch.distributed's env:// rendezvous on 127.0.0.1 (RANK, WORLD_SIZE, LOCAL_RANK,
   MASTER_ADDR, MASTER_PORT), the same variables torchrun sets. The workers are started
   directly, so torchrun need not be on PATH, and all of them share ONE new process group.

Each worker warms up, times `iters` all-reduces of size-mb MiB (a CUDA sync and a barrier
around the loop), then checks one all-reduce of known values. Figures follow nccl-tests:
algbw = bytes / time (GB/s, 1e9), busbw = algbw * 2*(n-1)/n, time = the slowest rank's mean.

The environment is passed on unchanged: an NCCL_NVLS_ENABLE (or any NCCL_* variable) already
set is respected and never overridden; the JSON reports what the workers saw.

Everything is bounded by --timeout: on expiry the whole process group is killed (SIGKILL)
and the JSON says so. With one GPU: {"ok": true, "skipped": "single GPU"}. Without CUDA:
ok=false and a one-sentence error. Exit status 0 when ok, 1 when not, 2 for bad arguments.
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

DEFAULT_SIZE_MB = 256
DEFAULT_ITERS = 20
DEFAULT_WARMUP = 5
DEFAULT_TIMEOUT = 180.0
DTYPES = {"float32": 4, "fp32": 4, "bf16": 2, "bfloat16": 2}
# Variables that decide whether NCCL/PyTorch/NVSHMEM use NVLink multicast (NVLS).
REPORTED_ENV = ("NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST", "NVSHMEM_DISABLE_NVLS")
TAIL_LINES = 6

DETECT_SCRIPT = r"""
import json
r = {"torch": None, "cuda": None, "cuda_available": False, "device_count": 0,
     "nccl_version": None, "dist_available": False, "error": None}
try:
    import torch
    r["torch"] = str(torch.__version__)
    r["cuda"] = torch.version.cuda
    try:
        import torch.distributed as dist
        r["dist_available"] = bool(dist.is_available())
    except Exception:
        pass
    try:
        r["cuda_available"] = bool(torch.cuda.is_available())
        if r["cuda_available"]:
            r["device_count"] = int(torch.cuda.device_count())
    except Exception as e:
        r["error"] = "torch.cuda: %s: %s" % (type(e).__name__, e)
    try:
        v = torch.cuda.nccl.version()
        r["nccl_version"] = ".".join(str(x) for x in v) if isinstance(v, tuple) else str(v)
    except Exception:
        pass
except Exception as e:
    r["error"] = "import torch failed: %s: %s" % (type(e).__name__, e)
print(json.dumps(r))
"""


# --------------------------------------------------------------------------- arithmetic
def size_bytes(size_mb):
    """MiB -> bytes (nccl-tests sizes are binary)."""
    return int(round(float(size_mb) * (1 << 20)))


def numel_for(size_mb, dtype):
    """Elements of `dtype` that fill size_mb MiB (at least one)."""
    return max(1, size_bytes(size_mb) // DTYPES[dtype])


def alg_bandwidth(nbytes, seconds):
    """nccl-tests algbw in GB/s (1e9 bytes): bytes moved per all-reduce / its time."""
    if seconds <= 0:
        raise ValueError("time must be positive")
    return nbytes / seconds / 1e9


def bus_bandwidth(algbw, world_size):
    """nccl-tests busbw for all-reduce: algbw * 2*(n-1)/n."""
    if world_size < 1:
        raise ValueError("world size must be >= 1")
    return algbw * 2.0 * (world_size - 1) / world_size


# --------------------------------------------------------------------------- arguments
class ArgError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # answer with JSON, not a usage dump
        raise ArgError(message)


def _positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not an integer" % text)
    if v < 1:
        raise argparse.ArgumentTypeError("%r must be >= 1" % text)
    return v


def _nonneg_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not an integer" % text)
    if v < 0:
        raise argparse.ArgumentTypeError("%r must be >= 0" % text)
    return v


def _positive_float(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a number" % text)
    if not v > 0 or v != v or v == float("inf"):
        raise argparse.ArgumentTypeError("%r must be a positive number" % text)
    return v


def build_parser():
    ap = _Parser(description="NCCL all-reduce check (one process per GPU)")
    ap.add_argument("--gpus", type=_positive_int, default=None,
                    help="processes/GPUs to use (default: every GPU torch sees)")
    ap.add_argument("--size-mb", type=_positive_float, default=DEFAULT_SIZE_MB)
    ap.add_argument("--iters", type=_positive_int, default=DEFAULT_ITERS)
    ap.add_argument("--warmup", type=_nonneg_int, default=DEFAULT_WARMUP)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    ap.add_argument("--timeout", type=_positive_float, default=DEFAULT_TIMEOUT,
                    help="seconds for everything, detection and workers together")
    ap.add_argument("--python", default=sys.executable,
                    help="interpreter that has torch (default: this one)")
    ap.add_argument("--master-port", type=_positive_int, default=None)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    # CPU self-test of the launcher: gloo processes on the CPU instead of NCCL on GPUs.
    ap.add_argument("--backend", choices=("nccl", "gloo"), default="nccl", help=argparse.SUPPRESS)
    return ap


def parse_args(argv=None):
    args = build_parser().parse_args(argv)
    if args.backend == "gloo" and not args.gpus and not args.worker:
        raise ArgError("--backend gloo (the CPU self-test) needs --gpus N")
    if args.master_port is not None and args.master_port > 65535:
        raise ArgError("argument --master-port: %d is not a port" % args.master_port)
    return args


# --------------------------------------------------------------------------- processes
def _alive(pid):
    """True when pid exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True


def kill_group(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


def _tail(text, n=TAIL_LINES):
    lines = [l for l in text.splitlines() if l.strip()]
    return " | ".join(lines[-n:])


def _last_json(text):
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


def detect(python, timeout, total=None):
    """(info dict or None, error sentence or None). The child runs in its own process group."""
    try:
        p = subprocess.Popen([python, "-c", DETECT_SCRIPT], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                             start_new_session=True)
    except OSError as e:
        return None, "could not run %s: %s." % (python, e)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(p.pid)
        p.communicate()
        return None, ("asking torch for CUDA (%s) did not finish within the %g s timeout; "
                      "the process group was killed." % (python, total or timeout))
    info = _last_json(out.decode("utf-8", "replace"))
    if info is None:
        return None, ("the torch detection child (%s) exited with %s: %s." % (
            python, p.returncode, _tail(err.decode("utf-8", "replace"), 3) or "no output"))
    return info, None


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def run_workers(args, n, deadline):
    """Start n workers in one new process group; (per-rank results, error or None)."""
    port = args.master_port or free_port()
    script = os.path.abspath(__file__)
    procs = []
    pgid = None
    logs = []
    try:
        for rank in range(n):
            env = dict(os.environ)  # NCCL_* settings pass through untouched
            env.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(n),
                        "LOCAL_WORLD_SIZE": str(n), "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(port), "PYTHONUNBUFFERED": "1"})
            argv = [args.python, script, "--worker", "--size-mb", repr(args.size_mb),
                    "--iters", str(args.iters), "--warmup", str(args.warmup),
                    "--dtype", args.dtype, "--backend", args.backend, "--timeout",
                    repr(max(1.0, deadline - time.time()))]
            if pgid is None:
                pre = os.setpgrp
            else:
                pre = (lambda g: (lambda: os.setpgid(0, g)))(pgid)
            # Output goes to temp files: pipes could fill up and block a worker.
            log = tempfile.TemporaryFile()
            logs.append(log)
            p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, env=env, preexec_fn=pre)
            if pgid is None:
                pgid = p.pid
            procs.append(p)
    except (OSError, subprocess.SubprocessError) as e:
        if pgid is not None:
            kill_group(pgid)
        for p in procs:
            p.wait()
        return None, "could not start the NCCL workers with %s: %s." % (args.python, e)

    error = None
    failed = None
    while True:
        codes = [p.poll() for p in procs]
        if all(c is not None for c in codes):
            break
        bad = [i for i, c in enumerate(codes) if c not in (None, 0)]
        if bad:
            failed = bad[0]
            break
        if time.time() >= deadline:
            error = ("the all-reduce did not finish within the %g s timeout; the workers' "
                     "process group was killed." % args.timeout)
            break
        time.sleep(0.05)
    if error or failed is not None:
        kill_group(pgid)
    for p in procs:
        p.wait()

    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read().decode("utf-8", "replace"))
        log.close()
    results = [_last_json(o) for o in outputs]
    if error:
        tails = [_tail(o, 2) for o in outputs if o.strip()]
        if tails:
            error = error[:-1] + " (last output: %s)." % tails[0]
        return results, error
    if failed is None:
        for i, p in enumerate(procs):
            if p.returncode != 0 or results[i] is None:
                failed = i
                break
    if failed is not None:
        res = results[failed] or {}
        why = res.get("error") or _tail(outputs[failed]) or "no output"
        return results, "rank %d exited with %s: %s." % (failed, procs[failed].returncode,
                                                        why.rstrip("."))
    return results, None


# --------------------------------------------------------------------------- worker
def worker(args):
    """One rank: runs under torch; prints one JSON line."""
    import datetime
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    out = {"rank": rank, "ok": False, "seconds": None, "correct": None, "error": None,
           "device": None}
    try:
        import torch
        import torch.distributed as dist
        gpu = args.backend == "nccl"
        if gpu:
            torch.cuda.set_device(local)
            out["device"] = torch.cuda.get_device_name(local)
            device, sync = "cuda", torch.cuda.synchronize
        else:
            out["device"] = "cpu"
            device, sync = "cpu", (lambda: None)
        dist.init_process_group(args.backend, init_method="env://", rank=rank,
                                world_size=world,
                                timeout=datetime.timedelta(seconds=max(10.0, args.timeout)))
        dtype = torch.bfloat16 if args.dtype in ("bf16", "bfloat16") else torch.float32
        n = numel_for(args.size_mb, args.dtype)
        x = torch.zeros(n, dtype=dtype, device=device)  # sums stay 0: no overflow
        for _ in range(args.warmup):
            dist.all_reduce(x)
        sync()
        if gpu:
            dist.barrier(device_ids=[local])
        else:
            dist.barrier()
        sync()
        t0 = time.perf_counter()
        for _ in range(args.iters):
            dist.all_reduce(x)
        sync()
        elapsed = time.perf_counter() - t0
        slowest = torch.tensor([elapsed], dtype=torch.float64, device=device)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        out["seconds"] = float(slowest.item()) / args.iters
        # Correctness: every element sums 1 + 2 + ... + n (exact in fp32 and bf16 for n <= 8).
        x.fill_(rank + 1)
        dist.all_reduce(x)
        expect = world * (world + 1) / 2.0
        out["correct"] = bool(torch.all(x == expect).item())
        sync()
        dist.destroy_process_group()
        out["ok"] = bool(out["correct"])
        if not out["correct"]:
            out["error"] = "all-reduce of rank+1 did not give %g on rank %d" % (expect, rank)
    except Exception as e:  # reported, then a non-zero exit
        out["error"] = "%s: %s" % (type(e).__name__, str(e).splitlines()[0] if str(e) else "")
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    return 0 if out["ok"] else 1


# --------------------------------------------------------------------------- main
def run(args):
    start = time.time()
    deadline = start + args.timeout
    nbytes = size_bytes(args.size_mb)
    result = {
        "ok": False, "skipped": None, "world_size": None, "size_mb": args.size_mb,
        "bytes": nbytes, "dtype": args.dtype, "iters": args.iters, "warmup": args.warmup,
        "time_ms": None, "algbw_gbps": None, "busbw_gbps": None, "nccl_version": None,
        "torch": None, "cuda": None, "devices": None, "python": args.python,
        "env": {k: os.environ.get(k) for k in REPORTED_ENV},
        "elapsed_s": None, "error": None,
    }

    def done():
        result["elapsed_s"] = round(time.time() - start, 3)
        return result

    if args.backend == "gloo":  # CPU self-test: no CUDA needed, --gpus processes
        info, err = {"torch": "?", "cuda_available": True, "device_count": args.gpus,
                     "dist_available": True}, None
    else:
        info, err = detect(args.python, max(0.5, deadline - time.time()), args.timeout)
    if err:
        result["error"] = err
        return done()
    result["torch"], result["cuda"] = info.get("torch"), info.get("cuda")
    result["nccl_version"] = info.get("nccl_version")
    if info.get("torch") is None:
        result["error"] = "torch is not importable by %s (%s)." % (
            args.python, info.get("error") or "unknown reason")
        return done()
    count = int(info.get("device_count") or 0)
    if not info.get("cuda_available") or count < 1:
        why = info.get("error") or ("a CPU-only build" if not info.get("cuda")
                                    else "no usable GPU or driver")
        result["error"] = ("CUDA is not available to torch %s (%s), so there is no GPU to "
                           "run NCCL on." % (info.get("torch"), why))
        return done()
    n = args.gpus or count
    result["world_size"] = n
    if n > count:
        result["error"] = "asked for %d GPUs but torch sees only %d." % (n, count)
        return done()
    if n == 1:
        result.update(ok=True, skipped="single GPU")
        return done()
    if not info.get("dist_available"):
        result["error"] = "torch %s was built without torch.distributed." % info.get("torch")
        return done()

    results, err = run_workers(args, n, deadline)
    if results:
        result["devices"] = [r.get("device") if r else None for r in results]
    if err:
        result["error"] = err
        return done()
    secs = max(r["seconds"] for r in results)
    result["time_ms"] = round(secs * 1e3, 4)
    algbw = alg_bandwidth(nbytes, secs)
    result["algbw_gbps"] = round(algbw, 3)
    result["busbw_gbps"] = round(bus_bandwidth(algbw, n), 3)
    result["ok"] = all(r.get("ok") for r in results)
    if not result["ok"]:
        result["error"] = next(r.get("error") for r in results if not r.get("ok")) + "."
    return done()


def main(argv=None):
    try:
        args = parse_args(argv)
    except ArgError as e:
        sys.stdout.write(json.dumps({"ok": False, "error": "bad arguments: %s." % e}) + "\n")
        return 2
    if args.worker:
        return worker(args)
    try:
        result = run(args)
    except Exception as e:  # always answer with JSON
        result = {"ok": False, "error": "nccl_check crashed: %s: %s." % (type(e).__name__, e)}
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
