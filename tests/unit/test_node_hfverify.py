"""include/node/hfverify.py on local dirs laid out exactly as `hf download --local-dir` leaves them."""
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NODE = REPO / "include" / "node"
PY38 = os.path.expanduser("~/.pyenv/versions/3.8.18/bin/python3.8")


def _load(name):
    spec = importlib.util.spec_from_file_location("node_" + name, NODE / (name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


hfverify = _load("hfverify")
COMMIT = "3f0c3a8b1d2e4f5a6b7c8d9e0f1a2b3c4d5e6f70"


def git_blob_sha1(data):
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def put(local, rel, data, lfs=None, metadata=True):
    """Write a file and the .metadata hf 1.x writes for it (commit, etag, timestamp)."""
    path = local / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if lfs is None:
        lfs = len(data) > 1000
    etag = hashlib.sha256(data).hexdigest() if lfs else git_blob_sha1(data)
    if metadata:
        meta = local / ".cache" / "huggingface" / "download" / (rel + ".metadata")
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text("%s\n%s\n%s\n" % (COMMIT, etag, time.time()))
    return etag


def corrupt_one_byte(path, offset):
    st = os.stat(str(path))
    with open(str(path), "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))
    os.utime(str(path), ns=(st.st_atime_ns, st.st_mtime_ns))  # bit rot keeps the mtime


@pytest.fixture
def model(tmp_path):
    """A model dir: 3 LFS shards, config/tokenizer (git blobs), a nested file, hf bookkeeping."""
    local = tmp_path / "Qwen3-Next-80B-A3B-Thinking"
    blobs = {}
    for i in range(1, 4):
        rel = "model-%05d-of-00003.safetensors" % i
        blobs[rel] = os.urandom(300_000 + i)
    blobs["config.json"] = b'{"num_hidden_layers": 48, "hidden_size": 2048}\n'
    blobs["tokenizer_config.json"] = b'{"model_max_length": 262144}\n'
    blobs["sub/dir/vocab.txt"] = b"a\nb\n"
    blobs[".gitattributes"] = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
    etags = {rel: put(local, rel, data) for rel, data in blobs.items()}
    dl = local / ".cache" / "huggingface" / "download"
    (local / ".cache" / "huggingface" / ".gitignore").write_text("*")
    (local / ".cache" / "huggingface" / "CACHEDIR.TAG").write_text("Signature: 8a477f597d28d172789f06886806bc55")
    for rel in blobs:
        (dl / (rel + ".lock")).parent.mkdir(parents=True, exist_ok=True)
        (dl / (rel + ".lock")).write_text("")
    return {"dir": local, "blobs": blobs, "etags": etags, "dl": dl}


def run_cli(*args, python=None):
    p = subprocess.run([python or sys.executable, str(NODE / "hfverify.py")] + [str(a) for a in args],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    assert p.returncode == 0, p.stderr.decode()
    return json.loads(p.stdout.decode().strip().splitlines()[-1])


def test_good_copy(model):
    r = run_cli("--local-dir", model["dir"])
    assert r["ok"] is True
    assert r["files"] == 7
    assert r["bytes"] == sum(len(b) for b in model["blobs"].values())
    assert r["bad"] == [] and r["missing"] == [] and r["untracked"] == []
    assert r["local_dir"] == str(model["dir"]) and r["seconds"] >= 0


def test_corrupted_truncated_missing_untracked(model):
    d = model["dir"]
    corrupt_one_byte(d / "model-00002-of-00003.safetensors", 123_456)
    with open(str(d / "model-00003-of-00003.safetensors"), "r+b") as f:
        f.truncate(1000)
    corrupt_one_byte(d / "config.json", 3)
    os.unlink(str(d / "sub/dir/vocab.txt"))
    (d / "notes.md").write_text("mine")

    r = run_cli("--local-dir", d)
    assert r["ok"] is False
    assert r["files"] == 3  # shard 1, tokenizer_config.json, .gitattributes
    reasons = {b["path"]: b["reason"] for b in r["bad"]}
    assert sorted(reasons) == ["config.json", "model-00002-of-00003.safetensors",
                               "model-00003-of-00003.safetensors"]
    assert reasons["model-00002-of-00003.safetensors"].startswith("sha256 mismatch: got ")
    assert model["etags"]["model-00002-of-00003.safetensors"] in reasons["model-00002-of-00003.safetensors"]
    assert reasons["config.json"].startswith("git-sha1 mismatch")
    assert r["missing"] == ["sub/dir/vocab.txt"]
    assert r["untracked"] == ["notes.md"]


def test_fix_deletes_exactly_the_bad_ones_and_a_refetch_makes_it_ok(model):
    d, dl = model["dir"], model["dl"]
    bad_rel = "model-00002-of-00003.safetensors"
    corrupt_one_byte(d / bad_rel, 10)
    os.unlink(str(d / "sub/dir/vocab.txt"))
    # A partial download hf left behind for the bad shard (name as huggingface_hub builds it).
    meta_name = bad_rel + ".metadata"
    leftover = dl / ("%s.%s.incomplete" % (hfverify.short_hash(meta_name), model["etags"][bad_rel]))
    leftover.write_bytes(b"partial")
    good_before = {rel: (d / rel).stat().st_mtime_ns for rel in model["blobs"]
                   if rel not in (bad_rel, "sub/dir/vocab.txt")}

    r = run_cli("--local-dir", d, "--fix")
    assert r["ok"] is False and [b["path"] for b in r["bad"]] == [bad_rel]
    assert not (d / bad_rel).exists()
    assert not (dl / meta_name).exists()
    assert not leftover.exists()
    assert not (dl / "sub/dir/vocab.txt.metadata").exists()
    assert sorted(r["fixed"]) == sorted([
        bad_rel, ".cache/huggingface/download/" + meta_name,
        ".cache/huggingface/download/" + leftover.name,
        ".cache/huggingface/download/sub/dir/vocab.txt.metadata"])
    assert {rel: (d / rel).stat().st_mtime_ns for rel in good_before} == good_before

    # What a following `hf download` leaves: the bad and missing files fetched again.
    put(d, bad_rel, model["blobs"][bad_rel])
    put(d, "sub/dir/vocab.txt", model["blobs"]["sub/dir/vocab.txt"])
    r = run_cli("--local-dir", d)
    assert r["ok"] is True and r["files"] == 7


def test_expected_files_that_hf_never_started(model):
    r = run_cli("--local-dir", model["dir"], "--expect-files",
                "config.json,model-00001-of-00003.safetensors,model-00004-of-00004.safetensors")
    assert r["ok"] is False and r["missing"] == ["model-00004-of-00004.safetensors"]


def test_expect_json_from_the_hub_api(model, tmp_path):
    """The probe/hook can save the hub's ?blobs=true answer and pass it as --expect-json."""
    b = model["blobs"]
    siblings = []
    for rel, data in b.items():
        s = {"rfilename": rel, "size": len(data), "blobId": git_blob_sha1(data)}
        if rel.endswith(".safetensors"):
            s["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        siblings.append(s)
    siblings.append({"rfilename": "generation_config.json", "size": 10, "blobId": "0" * 40})
    siblings[0]["size"] += 1  # the hub says shard 1 is one byte longer than what we have
    path = tmp_path / "info.json"
    path.write_text(json.dumps({"sha": COMMIT, "siblings": siblings}))
    r = run_cli("--local-dir", model["dir"], "--expect-json", path)
    assert r["missing"] == ["generation_config.json"]
    assert r["bad"] == [{"path": "model-00001-of-00003.safetensors",
                         "reason": "size %d != expected %d" % (len(b["model-00001-of-00003.safetensors"]),
                                                               len(b["model-00001-of-00003.safetensors"]) + 1)}]


def test_metadata_that_disagrees_with_the_hub(model, tmp_path):
    rel = "model-00001-of-00003.safetensors"
    path = tmp_path / "exp.json"
    path.write_text(json.dumps([{"rfilename": rel, "size": len(model["blobs"][rel]),
                                 "lfs": {"sha256": "e" * 64}}]))
    r = run_cli("--local-dir", model["dir"], "--expect-json", path)
    assert [b["path"] for b in r["bad"]] == [rel]
    assert "differs from the hub's " + "e" * 64 in r["bad"][0]["reason"]


def test_malformed_metadata_is_bad(model):
    (model["dl"] / "config.json.metadata").write_text("only one line\n")
    r = run_cli("--local-dir", model["dir"])
    assert [(b["path"], b["reason"].split(":")[0]) for b in r["bad"]] == \
        [("config.json", "unreadable metadata")]


def test_missing_local_dir(tmp_path):
    r = run_cli("--local-dir", tmp_path / "nope", "--expect-files", "a,b")
    assert r["ok"] is False and r["missing"] == ["a", "b"] and "does not exist" in r["error"]


def test_empty_dir_is_ok_without_expectations(tmp_path):
    r = run_cli("--local-dir", tmp_path)
    assert r["ok"] is True and r["files"] == 0


def test_same_answer_with_one_or_many_workers(model):
    corrupt_one_byte(model["dir"] / "model-00001-of-00003.safetensors", 0)
    one = hfverify.verify(str(model["dir"]), workers=1)
    many = hfverify.verify(str(model["dir"]), workers=8)
    for r in (one, many):
        r.pop("seconds")
    assert one == many and one["files"] == 6


def test_hash_file_git_blob_and_sha256(tmp_path):
    p = tmp_path / "f"
    data = os.urandom(3 * 1024 * 1024 + 7)
    p.write_bytes(data)
    assert hfverify.hash_file(str(p), "sha256", buf_size=1 << 20) == (hashlib.sha256(data).hexdigest(), len(data))
    assert hfverify.hash_file(str(p), "git-sha1", buf_size=1 << 20) == (git_blob_sha1(data), len(data))
    # `git hash-object` agrees on what a git blob sha1 is
    out = subprocess.run(["git", "hash-object", str(p)], stdout=subprocess.PIPE, check=True)
    assert out.stdout.decode().strip() == git_blob_sha1(data)


def test_parse_metadata():
    assert hfverify.parse_metadata("%s\n\"%s\"\n1700000000.5\n" % (COMMIT, "A" * 64)) == \
        (COMMIT, "a" * 64, 1700000000.5)
    with pytest.raises(ValueError):
        hfverify.parse_metadata("x\ny\n")


def test_matches_huggingface_hub_own_bookkeeping(tmp_path):
    """Cross-check the layout against huggingface_hub's writer and incomplete-file naming."""
    lf = pytest.importorskip("huggingface_hub._local_folder")
    local = tmp_path / "d"
    data = os.urandom(5000)
    (local / "nested").mkdir(parents=True)
    (local / "nested" / "w.bin").write_bytes(data)
    etag = hashlib.sha256(data).hexdigest()
    lf.write_download_metadata(local, "nested/w.bin", COMMIT, etag)
    paths = lf.get_local_download_paths(local, "nested/w.bin")
    paths.incomplete_path(etag).write_bytes(b"half")
    assert hfverify.verify(str(local))["ok"] is True
    corrupt_one_byte(local / "nested" / "w.bin", 1)
    r = hfverify.verify(str(local), fix=True)
    assert [b["path"] for b in r["bad"]] == ["nested/w.bin"]
    assert not paths.incomplete_path(etag).exists() and not paths.metadata_path.exists()
    assert lf.read_download_metadata(local, "nested/w.bin") is None


@pytest.mark.skipif(not os.path.isfile(PY38), reason="no python3.8 here")
def test_runs_on_python38(model):
    r = run_cli("--local-dir", model["dir"], "--workers", "3", python=PY38)
    assert r["ok"] is True and r["files"] == 7
