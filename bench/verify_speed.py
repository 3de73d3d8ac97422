#!/usr/bin/env python3
"""Verification at disk speed: include/node/hfverify.py vs sha256sum of the same files.

    .venv/bin/python bench/verify_speed.py [--runs 5] [--gb 2] [--shards 8]

Generates a multi-shard local model in huggingface_hub's `hf download --local-dir` layout in a
temp folder: model-0000i-of-0000N.safetensors shards (2 GB in all by default), config.json,
tokenizer files, and for every file D/.cache/huggingface/download/<name>.metadata in the format
hf 1.x writes (commit sha, etag, timestamp; the etag is the sha256 for LFS files and the git blob
sha1 for small files). Then, alternating, each timed as a fresh process:
  - hfverify:     python3 include/node/hfverify.py --local-dir D   (must answer ok, all files)
  - sha256sum:    sha256sum <the same files>                        (one process, one core)
  - xargs -P:     printf files | xargs -P <cores> -n 1 sha256sum    (one per core)
  - cat:          cat <the same files> > /dev/null                  (reading alone: the floor)
in two cache states: warm (the files are in the page cache: hashing speed) and cold (each file's
pages dropped first with posix_fadvise(DONTNEED): disk speed; in a VM the host's cache may
still serve those reads, which the `cat` row shows). Goal: hfverify <= 1.2x sha256sum.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HFVERIFY = ROOT / "include" / "node" / "hfverify.py"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
BLOCK = 32 << 20


def write_model(d: Path, total_bytes: int, shards: int) -> list:
    meta_dir = d / ".cache" / "huggingface" / "download"
    meta_dir.mkdir(parents=True)
    block = bytearray(os.urandom(BLOCK))
    per = total_bytes // shards
    files = []

    def record(name, etag):
        (meta_dir / f"{name}.metadata").write_text(f"{COMMIT}\n{etag}\n{time.time():.6f}\n")
        files.append(d / name)

    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        h = hashlib.sha256()
        with open(d / name, "wb") as f:
            left, k = per, 0
            while left > 0:
                block[:16] = i.to_bytes(8, "little") + k.to_bytes(8, "little")  # no two alike
                chunk = memoryview(block)[:min(BLOCK, left)]
                f.write(chunk)
                h.update(chunk)
                left -= len(chunk)
                k += 1
            f.flush()
            os.fsync(f.fileno())
        record(name, h.hexdigest())
    small = {"config.json": json.dumps({"architectures": ["Qwen3NextForCausalLM"]}).encode(),
             "tokenizer_config.json": b'{"model_max_length": 262144}',
             "model.safetensors.index.json": json.dumps(
                 {"weight_map": {f"w{i}": f.name for i, f in enumerate(files)}}).encode()}
    for name, data in small.items():
        (d / name).write_bytes(data)
        blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        record(name, blob)
    return files


def drop_cache(files):
    for p in files:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm_cache(files):
    for p in files:
        with open(p, "rb", buffering=0) as f:
            while f.read(BLOCK):
                pass


def timed(argv, **kw) -> tuple[float, str]:
    t0 = time.perf_counter()
    res = subprocess.run(argv, capture_output=True, text=True, timeout=900, **kw)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({res.returncode}): {res.stderr[-2000:]}")
    return wall, res.stdout


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--gb", type=float, default=2.0)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--dir", default=None, help="parent folder for the model (default: $TMPDIR)")
    args = ap.parse_args(argv)
    cores = os.cpu_count() or 1
    tmp = Path(tempfile.mkdtemp(prefix="slimeflow-bench-verify-", dir=args.dir))
    rows = {s: {"hfverify": [], "sha256sum": [], "xargs": [], "cat": []}
            for s in ("warm", "cold")}
    try:
        d = tmp / "Qwen3-Next-80B-A3B-Thinking"
        d.mkdir()
        t0 = time.perf_counter()
        files = write_model(d, int(args.gb * (1 << 30)), args.shards)
        gen = time.perf_counter() - t0
        total = sum(p.stat().st_size for p in files)
        names = [str(p) for p in files]
        cmds = {
            "hfverify": [sys.executable, str(HFVERIFY), "--local-dir", str(d)],
            "sha256sum": ["sha256sum", *names],
            "cat": ["bash", "-c", 'cat "$@" > /dev/null', "bash", *names],
            "xargs": ["bash", "-c", 'printf "%s\\0" "$@" | xargs -0 -P "$P" -n 1 sha256sum',
                      "bash", *names],
        }
        env = dict(os.environ, P=str(cores))
        for k in range(args.runs + 1):  # round 0 warms up and is dropped
            for state in ("warm", "cold"):
                for name, argv_ in cmds.items():
                    (drop_cache if state == "cold" else warm_cache)(files)
                    wall, out = timed(argv_, env=env)
                    if name == "hfverify":
                        res = json.loads(out.strip().splitlines()[-1])
                        if not res.get("ok") or res.get("files") != len(files):
                            raise SystemExit(f"hfverify did not verify the copy: {out[-1000:]}")
                    if k:
                        rows[state][name].append(wall)
            if k:
                print(f"round {k}: " + ", ".join(
                    f"{s} {n} {rows[s][n][-1]:.2f}s" for s in rows for n in rows[s]),
                    file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"verification speed: {len(files)} files, {total / 1e9:.2f} GB "
          f"({args.shards} shards; generated in {gen:.0f}s), median of {args.runs} rounds, "
          f"{cores} cores")
    print(f"{'cache':<6}{'tool':<34}{'wall s':>8}{'GB/s':>7}{'vs sha256sum':>14}")
    label = {"hfverify": "hfverify.py (threads, sha256+sha1)", "sha256sum": "sha256sum (1 process)",
             "xargs": f"xargs -P {cores} sha256sum",
             "cat": "cat > /dev/null (read only, no hash)"}
    goal = {}
    for state in ("warm", "cold"):
        base = statistics.median(rows[state]["sha256sum"])
        for name in ("hfverify", "sha256sum", "xargs", "cat"):
            m = statistics.median(rows[state][name])
            print(f"{state:<6}{label[name]:<34}{m:>8.2f}{total / m / 1e9:>7.2f}{m / base:>13.2f}x")
            if name == "hfverify":
                goal[state] = m / base
    for state, r in goal.items():
        print(f"goal hfverify <= 1.2x sha256sum ({state} cache): "
              f"{'MET' if r <= 1.2 else 'MISSED'} ({r:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
