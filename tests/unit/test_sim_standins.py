"""The simulated cluster's hub and stand-ins, without sshd: the real `hf download` against the
loopback hub, the trainer and converter stand-ins (the converter under the real torchrun), and the
Ray CLI stand-in (head + worker + jobs) in a private RAY_TMPDIR on free loopback ports."""
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
RAY = SIM / "bin" / "ray"

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
        deadline = time.time() + 30
        while not (tmp_path / "hub.json").exists():
            assert p.poll() is None and time.time() < deadline
            time.sleep(0.05)
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
    env = dict(os.environ, SIMCLUSTER_DIR=str(inp["sim"]), SIM_RAY_CLUSTER_GPUS=gpus)
    return subprocess.run([sys.executable, str(TRAIN), *args], env=env, capture_output=True, text=True, timeout=60,
                          **kw)


def test_trainer_save_resume_zero(inputs, tmp_path):
    save = tmp_path / "slime"
    r = run_train(inputs, train_args(inputs, save, 5))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in save.iterdir()) == ["iter_0000001", "iter_0000003", "iter_0000004",
                                                       "latest_checkpointed_iteration.txt", "rollout"]
    assert (save / "latest_checkpointed_iteration.txt").read_text() == "4"
    assert (save / "rollout" / "global_dataset_state_dict_4.pt").exists()
    lines = r.stdout.splitlines()
    import re
    pat = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] [\w.]+\.py:\d+ - ")
    assert all(pat.match(ln) for ln in lines)
    assert any(re.search(r"rollout.py:\d+ - rollout 0: \{'rollout/raw_reward': ", ln) for ln in lines)
    assert any(re.search(r" - step 4: \{'train/loss': .*'train/grad_norm': ", ln) for ln in lines)
    assert any(" - Timer train end (elapsed: " in ln for ln in lines)
    assert any(" - perf 4: {" in ln for ln in lines)
    assert any(" - eval " in ln and "'eval/aime'" in ln for ln in lines)

    r = run_train(inputs, train_args(inputs, save, 7))
    assert r.returncode == 0, r.stderr
    assert "rollout 5:" in r.stdout and "rollout 4:" not in r.stdout
    assert (save / "latest_checkpointed_iteration.txt").read_text() == "6"

    r = run_train(inputs, train_args(inputs, save, 7))
    assert r.returncode == 0
    assert "no rollouts left" in r.stdout and " - rollout 7:" not in r.stdout


def test_trainer_validation_and_gpu_accounting(inputs, tmp_path):
    save = tmp_path / "s"
    args = train_args(inputs, save, 3)
    r = run_train(inputs, args, gpus="4")
    assert r.returncode == 1 and "Placement group needs 8 GPUs" in r.stderr
    bad = list(args)
    bad[bad.index("--ref-load") + 1] = str(tmp_path / "nope")
    r = run_train(inputs, bad)
    assert r.returncode == 1 and "latest_checkpointed_iteration.txt" in r.stderr
    bad = list(args)
    bad[bad.index("--hf-checkpoint") + 1] = str(tmp_path)
    r = run_train(inputs, bad)
    assert r.returncode == 1 and "config.json" in r.stderr
    bad = list(args)
    bad[bad.index("--prompt-data") + 1] = str(tmp_path / "x.jsonl")
    r = run_train(inputs, bad)
    assert r.returncode == 1 and "FileNotFoundError" in r.stderr
    r = run_train(inputs, ["stray"] + args)
    assert r.returncode == 2 and "unrecognized arguments: stray" in r.stderr


@pytest.mark.parametrize("kind,needle", [("oom", "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate"),
                                         ("nccl", "torch.distributed.DistBackendError: NCCL error in:"),
                                         ("exception", "KeyError:")])
def test_trainer_faults(inputs, tmp_path, kind, needle):
    f = inputs["sim"] / "faults" / kind
    f.write_text("once at=1")
    try:
        save = tmp_path / "s"
        r = run_train(inputs, train_args(inputs, save, 5, save_interval=1))
        assert r.returncode == 1 and needle in r.stderr
        assert (save / "latest_checkpointed_iteration.txt").read_text() == "0"
        assert not f.exists()
    finally:
        f.unlink(missing_ok=True)


def test_trainer_sigterm_finishes_save(inputs, tmp_path):
    sim = tmp_path / "sim"
    sim.mkdir()
    (sim / "sim.json").write_text(json.dumps({"rollout_seconds": 0.05, "save_seconds": 1.5}))
    save = tmp_path / "s"
    env = dict(os.environ, SIMCLUSTER_DIR=str(sim), SIM_RAY_CLUSTER_GPUS="8")
    p = subprocess.Popen([sys.executable, str(TRAIN), *train_args(inputs, save, 50, save_interval=1)], env=env,
                         stdout=subprocess.PIPE, text=True)
    for line in p.stdout:
        if "saving checkpoint at iteration" in line:
            break
    p.send_signal(signal.SIGTERM)
    rest = p.stdout.read()
    assert p.wait(10) == -signal.SIGTERM
    assert "successfully saved checkpoint from iteration       0" in rest
    assert (save / "latest_checkpointed_iteration.txt").read_text() == "0"


# ------------------------------------------------------------------------------------------------
# converter stand-in under the real torchrun
# ------------------------------------------------------------------------------------------------
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
    t0 = time.time()
    r = torchrun(inputs, nproc, save)
    assert r.returncode == 0, r.stderr[-3000:]
    assert time.time() - t0 < 60
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


@pytest.fixture
def ray_env(tmp_path, inputs):
    marker = f"SIMRAYTEST_{os.getpid()}_{time.time_ns()}"
    nodes = [tmp_path / "n0", tmp_path / "n1"]
    for n in nodes:
        n.mkdir()
    cwd = tmp_path / "slime"
    cwd.mkdir()
    shutil.copy(TRAIN, cwd / "train.py")
    base = dict(os.environ, PATH=f"{RAY.parent}:{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
                SIMCLUSTER_DIR=str(inputs["sim"]), SIM_TEST_MARKER=marker)
    envs = [dict(base, RAY_TMPDIR=str(n), SIMCLUSTER_NODE=str(i)) for i, n in enumerate(nodes)]
    gport, dport = free_port(), free_port()

    def ray(i, *args, timeout=60):
        return subprocess.run([str(RAY), *args], env=envs[i], cwd=cwd, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    yield {"ray": ray, "nodes": nodes, "gport": gport, "dport": dport, "cwd": cwd, "marker": marker}
    for i in (1, 0):
        ray(i, "stop", "--force")
    left = procs_with(marker)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not left, f"processes left behind: {left}"


def test_ray_cluster_jobs_and_stop(ray_env, inputs, tmp_path):
    ray, g, dp = ray_env["ray"], ray_env["gport"], ray_env["dport"]
    r = ray(0, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(g), "--num-gpus", "8",
            "--disable-usage-stats", "--dashboard-host=127.0.0.1", f"--dashboard-port={dp}")
    assert r.returncode == 0, r.stderr
    assert "Ray runtime started." in r.stdout and f"ray start --address='127.0.0.1:{g}'" in r.stdout
    r = ray(0, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(g), "--num-gpus", "8")
    assert r.returncode == 1 and "but is already running at" in r.stderr
    r = ray(1, "start", f"--address=127.0.0.1:{g}", "--num-gpus", "8", "--node-ip-address", "127.0.0.1",
            "--disable-usage-stats")
    assert r.returncode == 0, r.stderr
    addr = f"--address=http://127.0.0.1:{dp}"
    save = tmp_path / "save"
    args = train_args(inputs, save, 3)
    args[args.index("--actor-num-gpus-per-node") + 1] = "8"
    args[args.index("--actor-num-nodes") + 1] = "2"
    args[args.index("--pipeline-model-parallel-size") + 1] = "4"
    args.insert(0, "--colocate")
    env_json = json.dumps({"env_vars": {"PYTHONPATH": "/root/Megatron-LM/", "CUDA_DEVICE_MAX_CONNECTIONS": "1"}})
    # attached: tails the logs and exits 0 on success
    r = ray(0, "job", "submit", addr, "--submission-id", "sf-1", f"--runtime-env-json={env_json}", "--",
            "python3", "train.py", *args)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Job 'sf-1' submitted successfully" in r.stdout and "rollout 2:" in r.stdout
    assert "Job 'sf-1' succeeded" in r.stdout
    log = ray_env["nodes"][0] / "session_latest" / "logs" / "job-driver-sf-1.log"
    assert "Creating placement group with 16 GPUs" in log.read_text()
    # a duplicate submission id is refused
    r = ray(0, "job", "submit", addr, "--submission-id", "sf-1", "--no-wait", "--", "true")
    assert r.returncode == 1 and "Job with submission_id sf-1 already exists" in r.stderr
    # too many GPUs -> FAILED, attached submit exits 1
    bad = list(args)
    bad[bad.index("--actor-num-nodes") + 1] = "3"
    r = ray(0, "job", "submit", addr, "--submission-id", "sf-2", "--", "python3", "train.py", *bad)
    assert r.returncode == 1 and "Job 'sf-2' failed" in r.stdout
    r = ray(0, "job", "status", addr, "sf-2")
    assert r.returncode == 0 and "failed with exit code 1" in r.stdout
    # detached + stop
    (inputs["sim"] / "sim.json").write_text(json.dumps({"rollout_seconds": 0.2, "save_seconds": 0.01}))
    try:
        long = train_args(inputs, tmp_path / "save2", 1000)
        r = ray(0, "job", "submit", addr, "--submission-id", "sf-3", "--no-wait", "--", "python3", "train.py",
                *long)
        assert r.returncode == 0 and "Tailing logs" not in r.stdout
        time.sleep(1.0)
        r = ray(0, "job", "status", addr, "sf-3")
        assert "Status for job 'sf-3': RUNNING" in r.stdout
        r = ray(0, "job", "logs", addr, "sf-3")
        assert "rollout 0:" in r.stdout
        r = ray(0, "job", "stop", addr, "sf-3")
        assert r.returncode == 0 and "Job 'sf-3' was stopped" in r.stdout
        assert not [p for p in procs_with(ray_env["marker"]) if b"train.py" in Path(f"/proc/{p}/cmdline").read_bytes()]
    finally:
        (inputs["sim"] / "sim.json").write_text(json.dumps({"rollout_seconds": 0.01, "save_seconds": 0.01}))
    r = ray(0, "job", "list", addr)
    assert "sf-3" in r.stdout
    # ray stop on each node
    r = ray(1, "stop")
    assert "Stopped all" in r.stdout
    r = ray(0, "stop")
    assert "Stopped all" in r.stdout
    r = ray(0, "stop")
    assert "Did not find any active Ray processes." in r.stdout
    r = ray(0, "job", "status", addr, "sf-3")
    assert r.returncode == 1 and f"ConnectionError: Failed to connect to Ray at address: http://127.0.0.1:{dp}." \
        in r.stderr
    assert procs_with(ray_env["marker"]) == []


def test_ray_head_vanishes_takes_jobs_along(ray_env):
    ray, g, dp = ray_env["ray"], ray_env["gport"], ray_env["dport"]
    r = ray(0, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(g), "--num-gpus", "8",
            "--disable-usage-stats", "--dashboard-host=127.0.0.1", f"--dashboard-port={dp}")
    assert r.returncode == 0, r.stderr
    r = ray(0, "job", "submit", f"--address=http://127.0.0.1:{dp}", "--submission-id", "v1", "--no-wait", "--",
            "sleep", "300")
    assert r.returncode == 0
    st = json.loads((ray_env["nodes"][0] / "ray" / "sim_node.json").read_text())
    os.kill(st["pid"], signal.SIGKILL)
    deadline = time.time() + 5
    while procs_with(ray_env["marker"]) and time.time() < deadline:
        time.sleep(0.1)
    assert procs_with(ray_env["marker"]) == []
    r = ray(0, "job", "status", f"--address=http://127.0.0.1:{dp}", "v1")
    assert r.returncode == 1 and "Failed to connect to Ray at address" in r.stderr
    r = ray(1, "start", f"--address=127.0.0.1:{g}", "--num-gpus", "8")
    assert r.returncode == 1 and "Unable to connect to GCS" in r.stderr
