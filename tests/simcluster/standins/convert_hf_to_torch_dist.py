#!/usr/bin/env python3
"""slime ``tools/convert_hf_to_torch_dist.py`` stand-in (stdlib only).

Launched by the real ``torchrun --nproc-per-node G tools/convert_hf_to_torch_dist.py <Megatron model
args> --hf-checkpoint H --save S`` with cwd = slime_dir and PYTHONPATH = megatron_dir. It reads
RANK / WORLD_SIZE / LOCAL_RANK from the environment torchrun sets.

What it does, like the real tool:
- ``--hf-checkpoint`` is required (argparse error otherwise), ``megatron`` must be importable from
  PYTHONPATH, the HF dir must hold ``config.json``.
- PP = 1 and world > 1 -> PP is set to the world size, so world size must be <= ``--num-layers``.
- Megatron saves ``S/iter_0000001/`` (each rank its ``__{rank}_0.distcp``, about the HF safetensors
  total / world bytes; rank 0 then ``.metadata``, ``common.pt``, ``metadata.json`` and the tracker
  ``1``); rank 0 then rewrites ``S/latest_checkpointed_iteration.txt`` to ``release`` and
  ``shutil.move``s ``iter_0000001`` to ``release``. There is no skip and no resume: when
  ``S/release`` already exists the move nests it (``S/release/iter_0000001/``), as the real tool does.
- It does NOT check the model args against config.json (neither does the real tool).

Fault: if ``$SIMCLUSTER_DIR/faults/convert-crash`` exists, rank 0 dies (exit 1) half-way through
its shard, leaving partial output and no tracker file. ``sim.json`` key ``convert_seconds``
(default 0.5) is the time the weight loading takes.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import shutil
import sys
import time


def err(msg: str) -> None:
    sys.stdout.flush()
    sys.stderr.write(msg if msg.endswith("\n") else msg + "\n")
    sys.stderr.flush()


def log(rank: int, msg: str) -> None:
    if rank == 0:
        print(msg, flush=True)


def sim_conf() -> dict:
    conf = {"convert_seconds": 0.5}
    d = os.environ.get("SIMCLUSTER_DIR")
    if d:
        try:
            with open(os.path.join(d, "sim.json")) as f:
                conf.update(json.load(f))
        except (OSError, ValueError):
            pass
    return conf


def parse(argv):
    p = argparse.ArgumentParser(prog="convert_hf_to_torch_dist.py", allow_abbrev=False,
                                usage="convert_hf_to_torch_dist.py [-h] [Megatron-LM arguments ...] --hf-checkpoint H --save S")
    p.add_argument("--hf-checkpoint", type=str, required=True)
    p.add_argument("--save", type=str, default=None)
    p.add_argument("--num-layers", type=int, default=None)
    p.add_argument("--hidden-size", type=int, default=None)
    p.add_argument("--num-attention-heads", type=int, default=None)
    p.add_argument("--num-experts", type=int, default=None)
    p.add_argument("--tensor-model-parallel-size", type=int, default=1)
    p.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    p.add_argument("--expert-model-parallel-size", type=int, default=1)
    p.add_argument("--spec", type=str, nargs="+", default=None)
    args, extras = p.parse_known_args(argv)
    bad, prev_flag = [], False
    for tok in extras:
        if tok.startswith("--") and len(tok) > 2:
            prev_flag = True
        elif tok.startswith("-") and not _num(tok):
            bad.append(tok)
        elif not prev_flag:
            bad.append(tok)
    if bad:
        p.print_usage(sys.stderr)
        err(f"convert_hf_to_torch_dist.py: error: unrecognized arguments: {' '.join(bad)}")
        sys.exit(2)
    return args


def _num(tok: str) -> bool:
    try:
        float(tok)
        return True
    except ValueError:
        return False


def megatron_importable() -> bool:
    for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        if not entry:
            continue
        if os.path.isdir(os.path.join(entry, "megatron")) or os.path.basename(entry.rstrip("/")) == "Megatron-LM":
            return True
    return False


def wait_for(paths, timeout=120.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if all(os.path.exists(p) for p in paths):
            return True
        time.sleep(0.05)
    return False


def main(argv) -> int:
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    args = parse(argv)
    if not megatron_importable():
        err("Traceback (most recent call last):\n"
            '  File "/root/slime/tools/convert_hf_to_torch_dist.py", line 8, in <module>\n'
            "    from megatron.core import mpu\n"
            "ModuleNotFoundError: No module named 'megatron'\n")
        return 1
    if args.save is None:
        err("Traceback (most recent call last):\n"
            '  File "/root/slime/tools/convert_hf_to_torch_dist.py", line 131, in <module>\n'
            "    main()\n"
            "AssertionError: --save is required to write the torch_dist checkpoint\n")
        return 1
    if args.num_layers is None:
        err("AssertionError: num_layers must be set (--num-layers)")
        return 1
    cfg = os.path.join(args.hf_checkpoint, "config.json")
    if not os.path.isfile(cfg):
        err("Traceback (most recent call last):\n"
            '  File "/root/slime/tools/convert_hf_to_torch_dist.py", line 101, in main\n'
            "    bridge = AutoBridge.from_pretrained(args.hf_checkpoint, trust_remote_code=True)\n"
            f"OSError: {args.hf_checkpoint} does not appear to have a file named config.json. Checkout "
            f"'https://huggingface.co/{args.hf_checkpoint}/tree/None' for available files.\n")
        return 1
    pp = args.pipeline_model_parallel_size
    if pp == 1 and world > 1:
        pp = world
        log(rank, f"set pipeline_model_parallel_size to world size {world}")
        if world > args.num_layers:
            err("Traceback (most recent call last):\n"
                '  File "/root/slime/tools/convert_hf_to_torch_dist.py", line 47, in get_args\n'
                "    assert args.num_layers >= pp_size\n"
                f"AssertionError: num_layers ({args.num_layers}) must be >= pipeline_model_parallel_size "
                f"(world size {world})\n")
            return 1
    total = 0
    for name in sorted(os.listdir(args.hf_checkpoint)):
        if name.endswith(".safetensors"):
            total += os.path.getsize(os.path.join(args.hf_checkpoint, name))
    if total == 0:
        err(f"FileNotFoundError: no *.safetensors files found in {args.hf_checkpoint}")
        return 1

    save = args.save.rstrip("/") or "/"
    it_dir = os.path.join(save, "iter_0000001")
    conf = sim_conf()
    log(rank, f"> building {os.path.basename(args.hf_checkpoint.rstrip('/'))} model, pipeline parallel size {pp} ...")
    log(rank, f"loading HF weights from {args.hf_checkpoint} ({total} bytes of safetensors)")
    os.makedirs(it_dir, exist_ok=True)
    share = total // world + (1 if rank < total % world else 0)
    rng = random.Random(rank * 7919 + total)
    crash = rank == 0 and os.path.exists(os.path.join(os.environ.get("SIMCLUSTER_DIR", "/nonexistent"),
                                                        "faults", "convert-crash"))
    per_step = float(conf.get("convert_seconds", 0.5)) / 4
    shard = os.path.join(it_dir, f"__{rank}_0.distcp")
    tmp = shard + ".partial"
    with open(tmp if not crash else shard, "wb") as f:
        written = 0
        for step in range(4):
            n = share // 4 if step < 3 else share - written
            f.write(rng.randbytes(n))
            written += n
            f.flush()
            time.sleep(per_step)
            if crash and step == 1:
                err("Traceback (most recent call last):\n"
                    '  File "/root/slime/tools/convert_hf_to_torch_dist.py", line 131, in <module>\n'
                    "    main()\n"
                    '  File "/root/slime/tools/convert_hf_to_torch_dist.py", line 118, in main\n'
                    "    save_checkpoint(1, [model], None, None, 0)\n"
                    '  File "/root/Megatron-LM/megatron/training/checkpointing.py", line 496, in save_checkpoint\n'
                    "    async_save_request = dist_checkpointing.save(state_dict, checkpoint_name, save_strategy,\n"
                    "RuntimeError: [enforce fail at inline_container.cc:778] . PytorchStreamWriter failed "
                    "writing file data/1: file write failed\n")
                os._exit(1)
    if not crash:
        os.replace(tmp, shard)
    if rank != 0:
        return 0
    shards = [os.path.join(it_dir, f"__{r}_0.distcp") for r in range(world)]
    if not wait_for(shards):
        err("RuntimeError: timed out waiting for the other ranks' shards")
        return 1
    with open(os.path.join(it_dir, ".metadata"), "wb") as f:
        f.write(random.Random(total).randbytes(4096))
    with open(os.path.join(it_dir, "common.pt"), "wb") as f:
        pickle.dump({"iteration": 1, "checkpoint_version": 3.0,
                     "args": {"num_layers": args.num_layers, "hidden_size": args.hidden_size,
                              "num_attention_heads": args.num_attention_heads, "num_experts": args.num_experts,
                              "pipeline_model_parallel_size": pp}}, f)
    with open(os.path.join(it_dir, "metadata.json"), "w") as f:
        json.dump({"sharded_backend": "torch_dist", "sharded_backend_version": 1,
                   "common_backend": "torch", "common_backend_version": 1}, f)
    tracker = os.path.join(save, "latest_checkpointed_iteration.txt")
    with open(tracker, "w") as f:
        f.write("1")
    print(f"  successfully saved checkpoint from iteration       1 to {save} [ t 1/1, p 1/{pp} ]", flush=True)
    # change to release ckpt (what the real tool does after Megatron's save)
    with open(tracker, "w") as f:
        f.write("release")
    shutil.move(it_dir, os.path.join(save, "release"))
    print(f"Conversion finished: {save}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
