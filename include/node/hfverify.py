#!/usr/bin/env python3
"""Verify a local `hf download --local-dir D` copy against the metadata hf writes.

    python3 hfverify.py --local-dir D [--fix] [--workers N]
                        [--expect-files F1,F2,...] [--expect-json PATH]

huggingface_hub 1.x records every finished file at
D/.cache/huggingface/download/<relpath>.metadata (3 lines: commit sha, etag, timestamp).
A file is good when it exists and its content matches the etag:
  - 64 hex chars: sha256 of the content (LFS / xet files),
  - 40 hex chars: git blob sha1, sha1(b"blob <size>\\0" + content) (small files).
Files are hashed in parallel (hashlib releases the GIL), 8 MiB at a time.

Also reported: `missing` (metadata without file, or an expected file hf never started) and
`untracked` (a file without metadata). --expect-json takes the hub's
/api/{models,datasets}/REPO/revision/REV?blobs=true answer (its `siblings`, with sizes and
sha256/blob ids) or a list of {"path", "size"} / a {path: size} map.

--fix deletes bad files, their .metadata and their .incomplete leftovers (and stale metadata of
missing files), so that the next `hf download` refetches exactly those.

Prints ONE JSON object as its last stdout line:
{"ok", "local_dir", "files", "bytes", "bad": [{"path", "reason"}], "missing", "untracked",
 "seconds", "fixed"}. Stdlib only, Python 3.8+.
"""
import argparse
import base64
import hashlib
import json
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor

CHUNK = 8 * 1024 * 1024
META_SUFFIX = ".metadata"
HEX64 = re.compile(r"^[0-9a-f]{64}$")
HEX40 = re.compile(r"^[0-9a-f]{40}$")


def download_dir(local_dir):
    return os.path.join(local_dir, ".cache", "huggingface", "download")


def parse_metadata(text):
    """(commit, etag, timestamp) from a hf download .metadata file; ValueError if malformed."""
    lines = text.splitlines()
    if len(lines) < 3:
        raise ValueError("expected 3 lines, got %d" % len(lines))
    commit, etag = lines[0].strip(), lines[1].strip().strip('"').lower()
    if etag.startswith("w/"):
        etag = etag[2:].strip('"')
    return commit, etag, float(lines[2].strip())


def etag_kind(etag):
    if HEX64.match(etag or ""):
        return "sha256"
    if HEX40.match(etag or ""):
        return "git-sha1"
    return None


def hash_file(path, kind, buf_size=CHUNK):
    """Hex digest of path for kind 'sha256' or 'git-sha1'; returns (digest, size)."""
    size = os.path.getsize(path)
    if kind == "sha256":
        h = hashlib.sha256()
    else:
        h = hashlib.sha1()
        h.update(b"blob %d\0" % size)
    buf = bytearray(buf_size)
    view = memoryview(buf)
    n_total = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])
            n_total += n
    if n_total != size:  # the file changed while we read it
        raise IOError("size changed while hashing (%d != %d)" % (n_total, size))
    return h.hexdigest(), n_total


def scan_metadata(local_dir):
    """{relpath (with '/'): metadata path} for every .metadata under the download dir."""
    root = download_dir(local_dir)
    found = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if name.endswith(META_SUFFIX):
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, root)[:-len(META_SUFFIX)]
                found[rel.replace(os.sep, "/")] = full
    return found


def scan_files(local_dir):
    """{relpath: size} for every regular file under local_dir, outside .cache/huggingface."""
    found = {}
    cache = os.path.join(local_dir, ".cache")
    for dirpath, dirs, files in os.walk(local_dir):
        if dirpath == cache:
            dirs[:] = [d for d in dirs if d != "huggingface"]
        for name in files:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, local_dir).replace(os.sep, "/")
            try:
                found[rel] = os.path.getsize(full)
            except OSError:
                pass
    return found


def load_expectations(expect_files=None, expect_json=None):
    """{relpath: {"size": int|None, "sha256": str|None, "blob": str|None}}."""
    exp = {}
    if expect_files:
        for name in expect_files.split(","):
            name = name.strip()
            if name:
                exp[name] = {"size": None, "sha256": None, "blob": None}
    if expect_json:
        with open(expect_json, "r", encoding="utf-8") as f:
            data = json.load(f)
        if isinstance(data, dict) and "siblings" in data:
            data = data["siblings"]
        if isinstance(data, dict) and "files" in data:
            data = data["files"]
        if isinstance(data, dict):
            data = [{"path": k, "size": v} for k, v in data.items()]
        for item in data:
            if isinstance(item, str):
                item = {"path": item}
            path = item.get("rfilename") or item.get("path")
            if not path:
                continue
            lfs = item.get("lfs") if isinstance(item.get("lfs"), dict) else {}
            size = item.get("size", lfs.get("size"))
            exp[path] = {"size": int(size) if size is not None else None,
                         "sha256": (lfs.get("sha256") or lfs.get("oid") or item.get("sha256")),
                         "blob": item.get("blobId")}
    return exp


def short_hash(name):
    """huggingface_hub's _short_hash, used in .incomplete file names."""
    return base64.urlsafe_b64encode(hashlib.sha1(name.encode()).digest()).decode()


def incomplete_paths(meta_path, etag=None):
    """Leftover partial downloads belonging to one metadata file."""
    d = os.path.dirname(meta_path)
    prefix = short_hash(os.path.basename(meta_path)) + "."
    out = []
    try:
        for name in os.listdir(d):
            if name.endswith(".incomplete") and (name.startswith(prefix) or
                                                 (etag and name.endswith("." + etag + ".incomplete"))):
                out.append(os.path.join(d, name))
    except OSError:
        pass
    return out


def check_one(local_dir, rel, meta_path, expected):
    """Returns (rel, reason or None, bytes hashed, etag)."""
    try:
        with open(meta_path, "r", encoding="utf-8", errors="replace") as f:
            _commit, etag, _ts = parse_metadata(f.read())
    except (OSError, ValueError) as e:
        return rel, "unreadable metadata: %s" % e, 0, None
    path = os.path.join(local_dir, *rel.split("/"))
    if not os.path.isfile(path):
        return rel, "missing", 0, etag
    exp = expected or {}
    size = os.path.getsize(path)
    if exp.get("size") is not None and exp["size"] != size:
        return rel, "size %d != expected %d" % (size, exp["size"]), 0, etag
    kind = etag_kind(etag)
    if kind is None:
        return rel, "metadata etag %r is neither a sha256 nor a git blob sha1" % etag, 0, etag
    try:
        digest, n = hash_file(path, kind)
    except (OSError, IOError) as e:
        return rel, "read error: %s" % e, 0, etag
    if digest != etag:
        return rel, "%s mismatch: got %s, metadata says %s" % (kind, digest, etag), n, etag
    want = exp.get("sha256") if kind == "sha256" else exp.get("blob")
    if want and want.lower() != digest:
        return rel, "%s %s differs from the hub's %s" % (kind, digest, want), n, etag
    return rel, None, n, etag


def _remove(path, removed):
    try:
        os.unlink(path)
        removed.append(path)
    except FileNotFoundError:
        pass


def verify(local_dir, fix=False, workers=None, expectations=None):
    t0 = time.time()
    local_dir = os.path.abspath(local_dir)
    result = {"ok": False, "local_dir": local_dir, "files": 0, "bytes": 0, "bad": [],
              "missing": [], "untracked": [], "seconds": 0.0, "fixed": []}
    if not os.path.isdir(local_dir):
        result["missing"] = sorted((expectations or {}).keys())
        result["error"] = "%s does not exist" % local_dir
        result["seconds"] = round(time.time() - t0, 3)
        return result
    expectations = expectations or {}
    metas = scan_metadata(local_dir)
    files = scan_files(local_dir)
    result["untracked"] = sorted(r for r in files if r not in metas)

    # Largest first, so a single huge shard does not start last.
    order = sorted(metas, key=lambda r: -files.get(r, 0))
    workers = workers or min(16, max(4, (os.cpu_count() or 4)))
    bad, missing_meta = [], {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(check_one, local_dir, r, metas[r], expectations.get(r))
                   for r in order]
        for fut in futures:
            rel, reason, n, etag = fut.result()
            result["bytes"] += n
            if reason == "missing":
                missing_meta[rel] = etag
            elif reason:
                bad.append({"path": rel, "reason": reason, "_etag": etag})
            else:
                result["files"] += 1
    missing = set(missing_meta)
    for rel in expectations:
        if rel not in metas and rel not in files:
            missing.add(rel)  # hf never started it
        elif rel not in metas and rel in files:
            exp = expectations[rel]
            if exp.get("size") is not None and exp["size"] != files[rel]:
                bad.append({"path": rel, "reason": "size %d != expected %d (no metadata)"
                            % (files[rel], exp["size"]), "_etag": None})
    result["missing"] = sorted(missing)

    if fix:
        removed = []
        root = download_dir(local_dir)
        for item in bad:
            rel = item["path"]
            meta = os.path.join(root, *rel.split("/")) + META_SUFFIX
            _remove(os.path.join(local_dir, *rel.split("/")), removed)
            for p in incomplete_paths(meta, item["_etag"]):
                _remove(p, removed)
            _remove(meta, removed)
        for rel, etag in missing_meta.items():
            meta = os.path.join(root, *rel.split("/")) + META_SUFFIX
            for p in incomplete_paths(meta, etag):
                _remove(p, removed)
            _remove(meta, removed)
        result["fixed"] = sorted(os.path.relpath(p, local_dir).replace(os.sep, "/")
                                 for p in removed)
    for item in bad:
        item.pop("_etag", None)
    result["bad"] = sorted(bad, key=lambda b: b["path"])
    result["ok"] = not result["bad"] and not result["missing"]
    result["seconds"] = round(time.time() - t0, 3)
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description="verify a local hf download against its metadata")
    ap.add_argument("--local-dir", required=True)
    ap.add_argument("--fix", action="store_true")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--expect-files", default=None)
    ap.add_argument("--expect-json", default=None)
    args = ap.parse_args(argv)
    try:
        exp = load_expectations(args.expect_files, args.expect_json)
    except (OSError, ValueError) as e:
        print(json.dumps({"ok": False, "local_dir": os.path.abspath(args.local_dir), "files": 0,
                          "bytes": 0, "bad": [], "missing": [], "untracked": [],
                          "seconds": 0.0, "error": "cannot read expectations: %s" % e}))
        return 0
    print(json.dumps(verify(args.local_dir, args.fix, args.workers, exp)))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - always answer with JSON
        print(json.dumps({"ok": False, "error": "hfverify crashed: %s: %s"
                          % (type(e).__name__, e)}))
        sys.exit(1)
