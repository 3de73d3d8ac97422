"""The builders must reproduce the seed scripts' commands flag for flag.

The goldens in tests/golden/ were produced by running the seed scripts themselves with recording
stubs (tests/golden/regen_from_seed.sh), not transcribed by hand. Their "entrypoint" is the argv
the seed hands `ray job submit --`, which is what the seed's train.py receives on Ray >= 2.56;
what OUR train.py receives must equal it, whichever quoting the head's Ray needs.
"""
import json
import shlex
import subprocess
from pathlib import Path

import pytest

from slimeflow import builders
from slimeflow.config import RunConfig

GOLDEN = Path(__file__).resolve().parents[1] / "golden"

CASES = {
    # golden file: (recipe, nodes)
    "seed_next_1x8": ("qwen3-next-80b-a3b", 1),
    "seed_next_4x8": ("qwen3-next-80b-a3b", 4),
    "seed_q30b": ("qwen3-30b-a3b", 1),
    "seed_q4b": ("qwen3-4b", 1),
}


def _cfg(recipe, nodes, master, **params):
    hosts = [master] + [f"10.0.0.{i + 2}" for i in range(nodes - 1)]
    base = {"nodes": [f"n{i}" for i in range(nodes)], "base_folder": "/root",
            "slime_dir": "/root/slime", "megatron_dir": "/root/Megatron-LM"}
    return RunConfig.from_params(recipe, {**base, **params}, hosts=hosts)


def received_by_train_py(tokens: list, ray_version: str) -> list:
    """What the job's shell passes on: Ray joins the tokens after `--` (shlex.join since 2.56,
    subprocess.list2cmdline before) and runs the line with /bin/sh -c, here parsed as sh would."""
    if builders.ray_version_tuple(ray_version) >= (2, 56):
        line = shlex.join(tokens)
    else:
        line = subprocess.list2cmdline(tokens)
    return shlex.split(line)


@pytest.mark.parametrize("ray_version", ["2.60.0", "2.56.0", "2.55.1", "2.49.1"])
@pytest.mark.parametrize("golden", sorted(CASES))
def test_train_entrypoint_and_runtime_env_equal_seed(golden, ray_version):
    seed = json.loads((GOLDEN / f"{golden}.json").read_text())
    recipe, nodes = CASES[golden]
    # the 30B/4B seeds hard-code MASTER_ADDR=127.0.0.1; the Qwen3-Next seeds were run with 10.0.0.1
    master = "10.0.0.1" if "next" in golden else "127.0.0.1"
    cfg = _cfg(recipe, nodes, master)
    facts = {"nvlink": True, "ray_version": ray_version}
    step = builders.ray_job_submit(cfg, "sid", facts)
    entry = step.argv[step.argv.index("--") + 1:]
    assert builders.train_entrypoint(cfg, facts) == seed["entrypoint"]
    assert received_by_train_py(entry, ray_version) == seed["entrypoint"]
    if builders.ray_version_tuple(ray_version) >= (2, 56):
        # shlex.join quotes by itself: our tokens are the seed's, byte for byte
        assert entry == seed["entrypoint"]
    assert step.runtime_env == seed["runtime_env"]
    assert builders.ray_start_head(cfg).argv == seed["ray_start_head"]
    workers = sorted(builders.ray_start_worker(cfg, n).argv for n in cfg.cluster.workers)
    assert workers == seed["ray_start_workers"]


def test_layout_is_picked_from_node_count():
    assert _cfg("qwen3-next-80b-a3b", 1, "10.0.0.1").layout.name == "1x8"
    assert _cfg("qwen3-next-80b-a3b", 4, "10.0.0.1").layout.name == "multi-node"
    two = _cfg("qwen3-next-80b-a3b", 2, "10.0.0.1")
    args = builders.train_args(two)
    # 16 GPUs cannot hold TP2 x PP4 x CP4; CP shrinks to 2, everything else stays the seed's
    assert args[args.index("--context-parallel-size") + 1] == "2"
    assert args[args.index("--actor-num-nodes") + 1] == "2"


def test_grad_reduce_in_bf16_swaps_the_seed_flag_in_place():
    plain = builders.train_args(_cfg("qwen3-next-80b-a3b", 1, "10.0.0.1"))
    bf16 = builders.train_args(_cfg("qwen3-next-80b-a3b", 1, "10.0.0.1", grad_reduce_in_bf16=True))
    i = plain.index("--accumulate-allreduce-grads-in-fp32")
    assert bf16[i] == "--grad-reduce-in-bf16"
    assert "--accumulate-allreduce-grads-in-fp32" not in bf16
    assert len(bf16) == len(plain)


def test_params_reach_the_train_args():
    cfg = _cfg("qwen3-next-80b-a3b", 1, "10.0.0.1", num_rollout=7, save_interval=3,
               extra_train_args=["--lr", "2e-6", "--use-wandb"])
    args = builders.train_args(cfg)
    assert args[args.index("--num-rollout") + 1] == "7"
    assert args[args.index("--save-interval") + 1] == "3"
    assert args[-3:] == ["--lr", "2e-6", "--use-wandb"]


def test_no_nvlink_turns_nvls_off():
    cfg = _cfg("qwen3-next-80b-a3b", 1, "10.0.0.1")
    assert builders.runtime_env(cfg, {"nvlink": False})["env_vars"]["NCCL_NVLS_ENABLE"] == "0"


def test_convert_command_is_the_seeds():
    # SLIME_FACTS.md step 4: PYTHONPATH=/root/Megatron-LM/ torchrun --nproc-per-node 8
    # tools/convert_hf_to_torch_dist.py ${MODEL_ARGS[@]} --hf-checkpoint /root/X/ --save /root/X_torch_dist/
    cfg = _cfg("qwen3-next-80b-a3b", 1, "10.0.0.1")
    step = builders.convert(cfg)
    seed = json.loads((GOLDEN / "seed_next_1x8.json").read_text())["entrypoint"]
    model = seed[seed.index("--spec"):seed.index("--hf-checkpoint")]
    assert step.argv == ["torchrun", "--nproc-per-node", "8", "tools/convert_hf_to_torch_dist.py",
                         *model, "--hf-checkpoint", "/root/Qwen3-Next-80B-A3B-Thinking/",
                         "--save", "/root/Qwen3-Next-80B-A3B-Thinking_torch_dist/"]
    assert step.cwd == "/root/slime"
    assert step.env == {"PYTHONPATH": "/root/Megatron-LM/"}


def test_download_commands():
    cfg = _cfg("qwen3-next-80b-a3b", 1, "10.0.0.1")
    plan = builders.plan(cfg, {"ray_version": "2.60.0"})
    steps = {s["argv"][2]: s for s in plan["steps"]["download_model"]
             + plan["steps"]["download_datasets"]}
    assert steps["Qwen/Qwen3-Next-80B-A3B-Thinking"]["argv"] == [
        "hf", "download", "Qwen/Qwen3-Next-80B-A3B-Thinking", "--local-dir",
        "/root/Qwen3-Next-80B-A3B-Thinking", "--revision", "main"]
    assert steps["zhuzilin/dapo-math-17k"]["argv"][-2:] == ["--repo-type", "dataset"]
    assert steps["zhuzilin/aime-2024"]["argv"][4] == "/root/aime-2024"


def test_submission_id_is_stable_per_run_and_distinct_across_runs():
    a = builders.submission_id("slime_qwen3_4b", "manual__2026-11-28T07:00:00+00:00")
    assert a == builders.submission_id("slime_qwen3_4b", "manual__2026-11-28T07:00:00+00:00")
    assert a != builders.submission_id("slime_qwen3_4b", "manual__2026-11-28T07:00:01+00:00")
    assert all(c.isalnum() or c in "-_" for c in a)
