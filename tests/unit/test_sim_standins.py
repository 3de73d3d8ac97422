"""The simulated cluster's hub and converter stand-in, without sshd: the real `hf download` against
the loopback hub, and the converter under the real torchrun. The trainer stand-in is a real Ray
driver; tests/unit/test_train_standin_ray.py runs it on real Ray."""
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SIM = REPO / "tests" / "simcluster"
VENV_BIN = Path(sys.executable).parent
HF = shutil.which("hf", path=str(VENV_BIN)) or str(REPO / ".venv" / "bin" / "hf")
TORCHRUN = shutil.which("torchrun", path=str(VENV_BIN)) or str(REPO / ".venv" / "bin" / "torchrun")
TRAIN = SIM / "standins" / "train.py"
CONVERT = SIM / "standins" / "convert_hf_to_torch_dist.py"

from tests.simcluster.hub import MODEL_CONFIGS, HubServer  # noqa: E402

NEXT = "Qwen/Qwen3-Next-80B-A3B-Thinking"


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def git_blob_sha1(p: Path) -> str:
    data = p.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


# ------------------------------------------------------------------------------------------------
# hub + real hf
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    d = tmp_path_factory.mktemp("hubstate")
    srv = HubServer(d)
    srv.start()
    yield srv
    srv.stop()


def hf(hub, *args, token=None, home=None):
    env = dict(os.environ, HF_ENDPOINT=hub.url, HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_DISABLE_UPDATE_CHECK="1", HF_HOME=str(home or hub.state_dir / "hfhome"), NO_COLOR="1")
    env.pop("HF_TOKEN", None)
    if token:
        env["HF_TOKEN"] = token
    return subprocess.run([HF, "download", *args], env=env, capture_output=True, text=True, timeout=120)


def test_hub_generates_real_configs(hub):
    idx = hub.state.index["repos"]
    cfg = json.loads((hub.state.hub_dir / "models" / NEXT / "config.json").read_text())
    assert cfg == MODEL_CONFIGS[NEXT]
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"],
            cfg["head_dim"], cfg["num_experts"], cfg["num_experts_per_tok"], cfg["moe_intermediate_size"],
            cfg["shared_expert_intermediate_size"], cfg["vocab_size"], cfg["rope_theta"],
            cfg["partial_rotary_factor"]) == (48, 2048, 16, 2, 256, 512, 10, 512, 512, 151936, 10000000, 0.25)
    shards = [f for f in idx[NEXT]["files"] if f["path"].endswith(".safetensors")]
    assert len(shards) == 4 and all("lfs" in f for f in shards)
    total = sum(f["size"] for f in shards)
    assert 2_000_000 < total < 4_500_000
    index = json.loads((hub.state.hub_dir / "models" / NEXT / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {f["path"] for f in shards}
    # deterministic: a second generation is byte-identical
    from tests.simcluster.hub import generate
    again = generate(hub.state_dir / "regen")
    assert again["repos"][NEXT]["sha"] == idx[NEXT]["sha"]


def test_hf_download_model_metadata_and_rerun(hub, tmp_path):
    hub.reset_stats()
    local = tmp_path / "m"
    r = hf(hub, NEXT, "--local-dir", str(local))
    assert r.returncode == 0, r.stderr
    info = hub.state.index["repos"][NEXT]
    for f in info["files"]:
        p = local / f["path"]
        assert p.stat().st_size == f["size"]
        meta = (local / ".cache/huggingface/download" / (f["path"] + ".metadata")).read_text().splitlines()
        assert meta[0] == info["sha"]
        if "lfs" in f:
            assert meta[1] == f["lfs"]["sha256"] == sha256(p)
        else:
            assert meta[1] == git_blob_sha1(p)
        float(meta[2])
    st = hub.stats()
    assert st["bytes"] == sum(f["size"] for f in info["files"])

    # the second run moves no bytes
    hub.reset_stats()
    r = hf(hub, NEXT, "--local-dir", str(local))
    assert r.returncode == 0, r.stderr
    assert hub.stats()["bytes"] == 0

    # a corrupted shard whose metadata is gone is fetched again, and only that one
    shard = local / "model-00002-of-00004.safetensors"
    good = sha256(shard)
    with open(shard, "r+b") as fh:
        fh.seek(100)
        fh.write(b"\0" * 64)
    (local / ".cache/huggingface/download/model-00002-of-00004.safetensors.metadata").unlink()
    hub.reset_stats()
    r = hf(hub, NEXT, "--local-dir", str(local))
    assert r.returncode == 0, r.stderr
    st = hub.stats()
    fetched = {p: v for p, v in st["repos"][NEXT]["files"].items() if v["bytes"]}
    assert list(fetched) == ["model-00002-of-00004.safetensors"]
    assert st["bytes"] == shard.stat().st_size and sha256(shard) == good


def test_hf_download_dataset_single_file_and_revision(hub, tmp_path):
    ds = "zhuzilin/dapo-math-17k"
    r = hf(hub, ds, "--repo-type", "dataset", "--local-dir", str(tmp_path / "d"))
    assert r.returncode == 0, r.stderr
    lines = (tmp_path / "d" / "dapo-math-17k.jsonl").read_text().splitlines()
    assert len(lines) == 50
    row = json.loads(lines[0])
    assert row["prompt"][0]["role"] == "user" and isinstance(row["label"], str)
    sha = hub.state.index["repos"]["Qwen/Qwen3-4B"]["sha"]
    r = hf(hub, "Qwen/Qwen3-4B", "config.json", "--revision", sha, "--local-dir", str(tmp_path / "one"))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "one" / "config.json").read_text())["num_hidden_layers"] == 36
    r = hf(hub, "Qwen/Qwen3-4B", "--revision", "v9", "--local-dir", str(tmp_path / "x"))
    assert r.returncode != 0 and "Revision not found" in r.stderr + r.stdout


def test_gated_repo(hub, tmp_path):
    repo = "Qwen/Qwen3-30B-A3B"
    hub.set_gated(repo, True)
    try:
        r = hf(hub, repo, "--local-dir", str(tmp_path / "g"))
        assert r.returncode != 0
        assert "requires approval" in r.stderr + r.stdout
        r = hf(hub, repo, "--local-dir", str(tmp_path / "g2"), token="hf_someoneelse0000000000000000")
        assert r.returncode != 0 and "requires approval" in r.stderr + r.stdout
        r = hf(hub, repo, "--local-dir", str(tmp_path / "g3"), token=hub.token)
        assert r.returncode == 0, r.stderr
        assert (tmp_path / "g3" / "config.json").exists()
    finally:
        hub.set_gated(repo, False)


def test_hub_cli_writes_hub_json_and_stops_on_sigterm(tmp_path):
    p = subprocess.Popen([sys.executable, "-m", "tests.simcluster.hub", "--state-dir", str(tmp_path), "--port", "0"],
                         cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(600):  # the hub writes hub.json once it listens
            if (tmp_path / "hub.json").exists() or p.poll() is not None:
                break
            time.sleep(0.05)
        assert p.poll() is None, p.stderr.read().decode()[-2000:]
        assert (tmp_path / "hub.json").exists(), "the hub never wrote hub.json"
        info = json.loads((tmp_path / "hub.json").read_text())
        assert info["pid"] == p.pid and info["url"].endswith(f":{info['port']}")
        import urllib.request
        with urllib.request.urlopen(info["url"] + "/_sim/stats") as r:
            assert json.load(r)["bytes"] == 0
        with urllib.request.urlopen(info["url"] + f"/api/models/{NEXT}/revision/main?blobs=true") as r:
            sib = {s["rfilename"]: s for s in json.load(r)["siblings"]}
        assert sib["model-00001-of-00004.safetensors"]["lfs"]["size"] == sib["model-00001-of-00004.safetensors"]["size"]
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 0


# ------------------------------------------------------------------------------------------------
# trainer stand-in
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def inputs(hub, tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    hfdir = hub.state.hub_dir / "models" / NEXT
    data = hub.state.hub_dir / "datasets" / "zhuzilin"
    ref = d / "torch_dist"
    (ref / "release").mkdir(parents=True)
    (ref / "latest_checkpointed_iteration.txt").write_text("release")
    sim = d / "sim"
    (sim / "faults").mkdir(parents=True)
    (sim / "sim.json").write_text(json.dumps({"rollout_seconds": 0.01, "save_seconds": 0.01}))
    return {"hf": hfdir, "ref": ref, "prompt": data / "dapo-math-17k" / "dapo-math-17k.jsonl",
            "aime": data / "aime-2024" / "aime-2024.jsonl", "sim": sim, "dir": d}


def train_args(inp, save, num_rollout, **kw):
    a = ["--hf-checkpoint", str(inp["hf"]), "--ref-load", str(inp["ref"]), "--load", str(save), "--save", str(save),
         "--save-interval", str(kw.get("save_interval", 2)), "--prompt-data", str(inp["prompt"]),
         "--input-key", "prompt", "--label-key", "label", "--apply-chat-template", "--rollout-shuffle",
         "--rm-type", "deepscaler", "--eval-prompt-data", "aime", str(inp["aime"]), "--eval-interval", "20",
         "--actor-num-nodes", "1", "--actor-num-gpus-per-node", "6", "--rollout-num-gpus", "2",
         "--rollout-num-gpus-per-engine", "2", "--sglang-ep-size", "1", "--tensor-model-parallel-size", "1",
         "--sequence-parallel", "--pipeline-model-parallel-size", "6", "--context-parallel-size", "1",
         "--expert-model-parallel-size", "1", "--expert-tensor-parallel-size", "1", "--max-tokens-per-gpu", "2048",
         "--num-rollout", str(num_rollout), "--rollout-batch-size", "16", "--n-samples-per-prompt", "4",
         "--rollout-max-response-len", "8192", "--rollout-temperature", "0.8", "--global-batch-size", "64",
         "--balance-data", "--sglang-mem-fraction-static", "0.8", "--sglang-cuda-graph-bs", "1", "2", "4", "8",
         "16", "24", "--moe-token-dispatcher-type", "alltoall", "--advantage-estimator", "gspo",
         "--kl-loss-coef", "0.00", "--eps-clip", "4e-4", "--optimizer", "adam", "--lr", "1e-6",
         "--optimizer-cpu-offload", "--use-precision-aware-optimizer", "--attention-dropout", "0.0",
         "--accumulate-allreduce-grads-in-fp32", "--attention-backend", "flash",
         "--spec", "slime_plugins.models.qwen3_next", "get_qwen3_next_spec", "--num-layers", "48",
         "--moe-layer-freq", "[1]*48", "--rotary-base", "10000000"]
    return a


def run_train(inp, args, gpus="8", **kw):
    env = dict(os.environ, SIMCLUSTER_DIR=str(inp["sim"]), SIM_RAY_CLUSTER_GPUS=gpus,
               PYTHONPATH=str(SIM / "megatron_standin"))
    return subprocess.run([sys.executable, str(TRAIN), *args], env=env, capture_output=True, text=True, timeout=60,
                          **kw)


def torchrun(inp, nproc, save, extra=(), sim=None):
    mega = inp["dir"] / "Megatron-LM"
    (mega / "megatron").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(mega), OMP_NUM_THREADS="1")
    if sim:
        env["SIMCLUSTER_DIR"] = str(sim)
    args = ["--spec", "slime_plugins.models.qwen3_next", "get_qwen3_next_spec", "--num-layers", "48",
            "--hidden-size", "2048", "--ffn-hidden-size", "5120", "--num-attention-heads", "16",
            "--group-query-attention", "--num-query-groups", "2", "--kv-channels", "256", "--swiglu",
            "--moe-layer-freq", "[1]*48", "--num-experts", "512", *extra,
            "--hf-checkpoint", str(inp["hf"]) + "/", "--save", str(save) + "/"]
    return subprocess.run([TORCHRUN, "--nproc-per-node", str(nproc), str(CONVERT), *args], env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("nproc", [2, 8])
def test_converter_under_torchrun(inputs, tmp_path, nproc):
    save = tmp_path / "td"
    r = torchrun(inputs, nproc, save)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (save / "latest_checkpointed_iteration.txt").read_text() == "release"
    rel = save / "release"
    names = sorted(p.name for p in rel.iterdir())
    assert names == sorted([f"__{i}_0.distcp" for i in range(nproc)] + [".metadata", "common.pt", "metadata.json"])
    hf_total = sum(p.stat().st_size for p in inputs["hf"].glob("*.safetensors"))
    assert sum((rel / f"__{i}_0.distcp").stat().st_size for i in range(nproc)) == hf_total
    if nproc == 2:  # not idempotent: a second run nests, as the real tool does
        r = torchrun(inputs, nproc, save)
        assert r.returncode == 0
        assert (rel / "iter_0000001" / "__0_0.distcp").exists()


def test_converter_crash_and_world_size(inputs, tmp_path):
    sim = tmp_path / "sim"
    (sim / "faults").mkdir(parents=True)
    (sim / "faults" / "convert-crash").touch()
    save = tmp_path / "td"
    r = torchrun(inputs, 2, save, sim=sim)
    assert r.returncode != 0
    assert not (save / "latest_checkpointed_iteration.txt").exists()
    assert (save / "iter_0000001" / "__0_0.distcp").exists()
    r = torchrun(inputs, 2, tmp_path / "td2", extra=["--num-layers", "1"])
    assert r.returncode != 0 and "num_layers (1) must be >= pipeline_model_parallel_size" in r.stderr


# ------------------------------------------------------------------------------------------------
# ray stand-in
# ------------------------------------------------------------------------------------------------
def free_port(host="127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def procs_with(marker: str) -> list[int]:
    out = []
    for ent in os.listdir("/proc"):
        if not ent.isdigit():
            continue
        try:
            env = Path(f"/proc/{ent}/environ").read_bytes()
            stat = Path(f"/proc/{ent}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in env and stat not in ("Z", "X"):
            out.append(int(ent))
    return out
