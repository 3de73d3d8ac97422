#!/usr/bin/env python3
"""slime ``train.py`` stand-in for the simulated cluster (stdlib only).

Launched as ``python3 train.py <slime args>`` by the Ray stand-in's job driver, cwd = slime_dir.
It accepts the real argument lists of slime's run scripts, validates the inputs the real trainer
would choke on, does the GPU accounting slime's placement groups do, and then "trains": per rollout
it sleeps ``rollout_seconds`` (``$SIMCLUSTER_DIR/sim.json``, default 0.2) and prints log lines in
slime's format (``[%Y-%m-%d %H:%M:%S] file.py:N - msg``). Checkpoints follow Megatron/slime's
layout: ``<save>/iter_%07d/``, ``<save>/rollout/global_dataset_state_dict_<id>.pt`` and finally
``<save>/latest_checkpointed_iteration.txt`` (rewritten atomically, holds the rollout id).

Resume: when ``--load`` holds ``latest_checkpointed_iteration.txt`` it starts at that id + 1;
``--num-rollout`` is a total, so a finished run resumes into zero rollouts and exits 0.

SIGTERM: a checkpoint save in progress is finished, then the process dies of SIGTERM (exit
status 143 in a shell, like an unhandled SIGTERM in python). Outside a save it dies at once.

Faults, files under ``$SIMCLUSTER_DIR/faults/`` (checked before each rollout):
``oom``, ``nccl``, ``exception`` make the run fail (exit 1) with a realistic traceback; ``hang``
stops all progress and output while the file exists. A fault file's content may hold the words
``once`` (the file is deleted when the fault fires) and ``at=N`` (fire only at rollout id >= N).

``sim.json`` keys: ``rollout_seconds`` (0.2), ``save_seconds`` (0.05), ``startup_seconds`` (0.0).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import random
import signal
import sys
import threading
import time

START_TIME = time.time()
_state = {"saving": False, "term": False}
_term_event = threading.Event()


def log(src: str, line: int, msg: str) -> None:
    ts = time.strftime("%Y-%m-%d %H:%M:%S")
    sys.stdout.write(f"[{ts}] {src}:{line} - {msg}\n")
    sys.stdout.flush()


def err(text: str) -> None:
    sys.stdout.flush()
    sys.stderr.write(text if text.endswith("\n") else text + "\n")
    sys.stderr.flush()


def sim_dir() -> str | None:
    return os.environ.get("SIMCLUSTER_DIR")


def sim_conf() -> dict:
    d = sim_dir()
    conf = {"rollout_seconds": 0.2, "save_seconds": 0.05, "startup_seconds": 0.0}
    if d:
        try:
            with open(os.path.join(d, "sim.json")) as f:
                conf.update(json.load(f))
        except (OSError, ValueError):
            pass
    return conf


def cluster_gpu_name() -> str:
    d = sim_dir()
    if d:
        for name in ("sim.json", "cluster.json"):
            try:
                with open(os.path.join(d, name)) as f:
                    gpu = json.load(f).get("gpu")
                if gpu:
                    return str(gpu)
            except (OSError, ValueError):
                pass
    return "H100"


# --------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train.py", allow_abbrev=False, usage="train.py [-h] [slime/Megatron-LM arguments ...]")
    a = p.add_argument
    # cluster
    a("--actor-num-nodes", type=int, default=1)
    a("--actor-num-gpus-per-node", type=int, default=8)
    a("--rollout-num-gpus", type=int, default=None)
    a("--rollout-num-gpus-per-engine", type=int, default=1)
    a("--colocate", action="store_true")
    a("--offload", action="store_true")
    # checkpoints / data
    a("--hf-checkpoint", type=str, default=None)
    a("--ref-load", type=str, default=None)
    a("--load", type=str, default=None)
    a("--save", type=str, default=None)
    a("--save-interval", type=int, default=None)
    a("--no-save-optim", action="store_true")
    a("--prompt-data", type=str, default=None)
    a("--input-key", type=str, default="input")
    a("--label-key", type=str, default=None)
    a("--apply-chat-template", action="store_true")
    a("--rollout-shuffle", action="store_true")
    a("--rm-type", type=str, default=None)
    a("--eval-prompt-data", type=str, nargs="+", default=None)
    a("--eval-interval", type=int, default=None)
    a("--skip-eval-before-train", action="store_true")
    # rollout
    a("--num-rollout", type=int, default=None)
    a("--num-epoch", type=int, default=None)
    a("--rollout-batch-size", type=int, default=None)
    a("--n-samples-per-prompt", type=int, default=1)
    a("--rollout-max-response-len", type=int, default=1024)
    a("--rollout-temperature", type=float, default=1.0)
    a("--global-batch-size", type=int, default=None)
    a("--balance-data", action="store_true")
    a("--n-samples-per-eval-prompt", type=int, default=1)
    a("--eval-max-response-len", type=int, default=None)
    a("--eval-top-p", type=float, default=None)
    # parallelism (Megatron)
    a("--tensor-model-parallel-size", type=int, default=1)
    a("--sequence-parallel", action="store_true")
    a("--pipeline-model-parallel-size", type=int, default=1)
    a("--decoder-last-pipeline-num-layers", type=int, default=None)
    a("--context-parallel-size", type=int, default=1)
    a("--expert-model-parallel-size", type=int, default=1)
    a("--expert-tensor-parallel-size", type=int, default=None)
    a("--max-tokens-per-gpu", type=int, default=None)
    a("--use-dynamic-batch-size", action="store_true")
    # model (Megatron)
    a("--spec", type=str, nargs="+", default=None)
    a("--num-layers", type=int, default=None)
    a("--hidden-size", type=int, default=None)
    a("--ffn-hidden-size", type=int, default=None)
    a("--num-attention-heads", type=int, default=None)
    a("--num-query-groups", type=int, default=None)
    a("--kv-channels", type=int, default=None)
    a("--num-experts", type=int, default=None)
    a("--moe-router-topk", type=int, default=None)
    a("--moe-layer-freq", type=str, default=None)
    a("--moe-ffn-hidden-size", type=int, default=None)
    a("--moe-shared-expert-intermediate-size", type=int, default=None)
    a("--vocab-size", type=int, default=None)
    a("--rotary-base", type=float, default=None)
    a("--rotary-percent", type=float, default=None)
    a("--norm-epsilon", type=float, default=None)
    # sglang
    a("--sglang-mem-fraction-static", type=float, default=None)
    a("--sglang-cuda-graph-bs", type=int, nargs="+", default=None)
    a("--sglang-ep-size", type=int, default=None)
    a("--sglang-max-running-requests", type=int, default=None)
    # algorithm / optimizer (kept explicit because they carry values)
    a("--advantage-estimator", type=str, default="grpo")
    a("--lr", type=float, default=None)
    a("--optimizer", type=str, default="adam")
    # wandb
    a("--use-wandb", action="store_true")
    a("--wandb-project", type=str, default=None)
    a("--wandb-group", type=str, default=None)
    a("--wandb-key", type=str, default=None)
    return p


def parse_args(argv: list[str]):
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    # Unknown flags are accepted (slime has hundreds); their values follow them. A token that is
    # not a `--flag` and does not follow one, or a single-dash token, is an error.
    bad = []
    prev_flag = False
    for tok in extras:
        if tok.startswith("--") and len(tok) > 2:
            prev_flag = True
        elif tok.startswith("-") and not _is_number(tok):
            bad.append(tok)
        elif not prev_flag:
            bad.append(tok)
    if bad:
        parser.print_usage(sys.stderr)
        err(f"train.py: error: unrecognized arguments: {' '.join(bad)}")
        sys.exit(2)
    return args, extras


def _is_number(tok: str) -> bool:
    try:
        float(tok)
        return True
    except ValueError:
        return False


# --------------------------------------------------------------------------------------------
# Failures that look like the real ones
# --------------------------------------------------------------------------------------------
def _actor_tb_header(inner_exc: str, method: str = "train") -> str:
    pid = random.randint(20000, 60000)
    ip = os.environ.get("MASTER_ADDR", "127.0.0.1")
    return (
        "Traceback (most recent call last):\n"
        '  File "/root/slime/train.py", line 98, in <module>\n'
        "    train(args)\n"
        '  File "/root/slime/train.py", line 73, in train\n'
        "    ray.get(actor_model.async_train(rollout_id, rollout_data_ref))\n"
        '  File "/usr/local/lib/python3.12/dist-packages/ray/_private/auto_init_hook.py", line 22, in auto_init_wrapper\n'
        "    return fn(*args, **kwargs)\n"
        "           ^^^^^^^^^^^^^^^^^^^\n"
        '  File "/usr/local/lib/python3.12/dist-packages/ray/_private/client_mode_hook.py", line 104, in wrapper\n'
        "    return func(*args, **kwargs)\n"
        "           ^^^^^^^^^^^^^^^^^^^^^\n"
        '  File "/usr/local/lib/python3.12/dist-packages/ray/_private/worker.py", line 2961, in get\n'
        "    values, debugger_breakpoint = worker.get_objects(object_refs, timeout=timeout)\n"
        "                                  ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
        '  File "/usr/local/lib/python3.12/dist-packages/ray/_private/worker.py", line 1026, in get_objects\n'
        "    raise value.as_instanceof_cause()\n"
        f"ray.exceptions.RayTaskError({inner_exc}): ray::MegatronTrainRayActor.{method}() "
        f"(pid={pid}, ip={ip}, actor_id={random.getrandbits(96):024x}, "
        f"repr=<slime.backends.megatron_utils.actor.MegatronTrainRayActor object at 0x7f{random.getrandbits(40):010x}>)\n"
    )


def fail_oom(rollout_id: int) -> None:
    cap = {"H100": 79.19, "H200": 139.81, "B200": 178.36}.get(cluster_gpu_name(), 79.19)
    free = round(random.uniform(0.4, 1.6), 2)
    used = round(cap - free, 2)
    alloc = round(used - 3.1, 2)
    err(
        _actor_tb_header("OutOfMemoryError")
        + '  File "/root/slime/slime/backends/megatron_utils/actor.py", line 388, in train\n'
        "    self.train_actor(rollout_id, rollout_data)\n"
        '  File "/root/slime/slime/backends/megatron_utils/model.py", line 402, in train\n'
        "    loss_dict, grad_norm = train_one_step(\n"
        "                           ^^^^^^^^^^^^^^^\n"
        '  File "/root/Megatron-LM/megatron/core/optimizer/distrib_optimizer.py", line 2331, in step_with_ready_grads\n'
        "    update_successful = super().step_with_ready_grads()\n"
        "                        ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. "
        f"GPU 0 has a total capacity of {cap:.2f} GiB of which {free:.2f} GiB is free. Including non-PyTorch memory, "
        f"this process has {used:.2f} GiB memory in use. Of the allocated memory {alloc:.2f} GiB is allocated by "
        "PyTorch, and 2.31 GiB is reserved by PyTorch but unallocated. If reserved but unallocated memory is large "
        "try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation for "
        "Memory Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)\n"
    )
    sys.exit(1)


def fail_nccl(rollout_id: int) -> None:
    peer = os.environ.get("MASTER_ADDR", "127.0.0.1")
    err(
        _actor_tb_header("DistBackendError")
        + '  File "/root/slime/slime/backends/megatron_utils/actor.py", line 388, in train\n'
        "    self.train_actor(rollout_id, rollout_data)\n"
        '  File "/root/Megatron-LM/megatron/core/pipeline_parallel/p2p_communication.py", line 338, in _communicate\n'
        "    reqs = p2p_func(\n"
        "           ^^^^^^^^^^\n"
        '  File "/usr/local/lib/python3.12/dist-packages/torch/distributed/distributed_c10d.py", line 2776, in batch_isend_irecv\n'
        "    with _coalescing_manager(group, device, async_ops=True) as cm:\n"
        "torch.distributed.DistBackendError: NCCL error in: /pytorch/torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp:3356, "
        "unhandled system error (run with NCCL_DEBUG=INFO for details), NCCL version 2.27.3\n"
        "ncclSystemError: System call (e.g. socket, malloc) or external library call failed or device error. \n"
        "Last error:\n"
        f"socketProgress: Connection closed by remote peer {peer}<49536>\n"
    )
    sys.exit(1)


def fail_exception(rollout_id: int) -> None:
    err(
        "Traceback (most recent call last):\n"
        '  File "/root/slime/train.py", line 98, in <module>\n'
        "    train(args)\n"
        '  File "/root/slime/train.py", line 70, in train\n'
        "    rollout_data_ref = ray.get(rollout_manager.generate.remote(rollout_id))\n"
        '  File "/root/slime/slime/ray/rollout.py", line 217, in generate\n'
        "    data = self._convert_samples_to_train_data(data)\n"
        '  File "/root/slime/slime/ray/rollout.py", line 301, in _convert_samples_to_train_data\n'
        "    raw_rewards = [sample.get_reward_value(self.args) for sample in samples]\n"
        "KeyError: 'label'\n"
    )
    sys.exit(1)


def check_faults(rollout_id: int) -> None:
    d = sim_dir()
    if not d:
        return
    fdir = os.path.join(d, "faults")
    for kind, fn in (("oom", fail_oom), ("nccl", fail_nccl), ("exception", fail_exception), ("hang", None)):
        path = os.path.join(fdir, kind)
        try:
            with open(path) as f:
                content = f.read()
        except OSError:
            continue
        words = content.split()
        at = 0
        for w in words:
            if w.startswith("at="):
                try:
                    at = int(w[3:])
                except ValueError:
                    pass
        if rollout_id < at:
            continue
        if "once" in words:
            try:
                os.unlink(path)
            except OSError:
                pass
        if fn is None:  # hang: no output, no progress, until the file goes away
            while os.path.exists(path) and not _state["term"]:
                _term_event.wait(0.2)
            continue
        fn(rollout_id)


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------
TRACKER = "latest_checkpointed_iteration.txt"


def read_tracker(d: str | None):
    if not d:
        return None
    try:
        with open(os.path.join(d, TRACKER)) as f:
            return f.read().strip()
    except OSError:
        return None


def atomic_write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(args, rollout_id: int, world: int, conf: dict) -> None:
    _state["saving"] = True
    t0 = time.time()
    log("timer.py", 24, "Timer save_model start")
    log("checkpointing.py", 543, f"saving checkpoint at iteration {rollout_id:7d} to {args.save} in torch_dist format")
    it_dir = os.path.join(args.save, f"iter_{rollout_id:07d}")
    os.makedirs(it_dir, exist_ok=True)
    rng = random.Random(rollout_id)
    shards = min(world, 4)
    for r in range(shards):
        with open(os.path.join(it_dir, f"__{r}_0.distcp"), "wb") as f:
            f.write(rng.randbytes(4096 if not args.no_save_optim else 2048))
        if r == 0:
            time.sleep(float(conf.get("save_seconds", 0.05)))
    with open(os.path.join(it_dir, "common.pt"), "wb") as f:
        pickle.dump({"iteration": rollout_id, "args": {"num_layers": args.num_layers}}, f)
    with open(os.path.join(it_dir, "metadata.json"), "w") as f:
        json.dump({"sharded_backend": "torch_dist", "sharded_backend_version": 1,
                   "common_backend": "torch", "common_backend_version": 1}, f)
    with open(os.path.join(it_dir, ".metadata"), "wb") as f:
        f.write(rng.randbytes(512))
    rdir = os.path.join(args.save, "rollout")
    os.makedirs(rdir, exist_ok=True)
    with open(os.path.join(rdir, f"global_dataset_state_dict_{rollout_id}.pt"), "wb") as f:
        pickle.dump({"epoch_id": 0, "sample_offset": (rollout_id + 1) * (args.rollout_batch_size or 1),
                     "rollout_id": rollout_id}, f)
    atomic_write(os.path.join(args.save, TRACKER), str(rollout_id).encode())
    log("checkpointing.py", 622,
        f"  successfully saved checkpoint from iteration {rollout_id:7d} to {args.save} "
        f"[ t 1/{args.tensor_model_parallel_size}, p 1/{args.pipeline_model_parallel_size} ]")
    log("timer.py", 32, f"Timer save_model end (elapsed: {time.time() - t0:.1f}s)")
    _state["saving"] = False
    if _state["term"]:
        die_of_sigterm()


def die_of_sigterm() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)
    os._exit(143)


def on_sigterm(signum, frame) -> None:
    _state["term"] = True
    _term_event.set()
    if not _state["saving"]:
        die_of_sigterm()


def sleep_interruptible(seconds: float) -> None:
    if seconds > 0:
        _term_event.wait(seconds)
    if _state["term"] and not _state["saving"]:
        die_of_sigterm()


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------
def should_run(rollout_id: int, interval, num_rollout: int) -> bool:
    if interval is None:
        return False
    return (rollout_id + 1) % interval == 0 or rollout_id == num_rollout - 1


def record_argv(argv: list[str]) -> None:
    """Append this run's exact argv to $SIMCLUSTER_DIR/nodes/<i>/train_argv.jsonl (tests check that
    values arrive verbatim), with the sha256 of WANDB_API_KEY, never the key itself."""
    d, node = sim_dir(), os.environ.get("SIMCLUSTER_NODE")
    if not d or node is None:
        return
    import hashlib
    key = os.environ.get("WANDB_API_KEY")
    rec = {"argv": argv, "wandb_key_sha256": hashlib.sha256(key.encode()).hexdigest() if key else None}
    try:
        with open(os.path.join(d, "nodes", node, "train_argv.jsonl"), "a") as f:
            f.write(json.dumps(rec) + "\n")
    except OSError:
        pass


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, on_sigterm)
    record_argv(argv)
    args, extras = parse_args(argv)
    conf = sim_conf()
    rnd = random.Random(sum((args.save or "").encode()))

    log("arguments.py", 1542, "------------------------ arguments ------------------------")
    for k in ("actor_num_nodes", "actor_num_gpus_per_node", "colocate", "rollout_num_gpus", "hf_checkpoint",
              "ref_load", "load", "save", "num_rollout", "save_interval"):
        log("arguments.py", 1547, f"  {k} {'.' * max(1, 48 - len(k))} {getattr(args, k)}")
    log("arguments.py", 1549, "-------------------- end of arguments ---------------------")

    # ---- inputs
    if not args.hf_checkpoint or not os.path.isfile(os.path.join(args.hf_checkpoint, "config.json")):
        err(
            "Traceback (most recent call last):\n"
            '  File "/root/slime/train.py", line 97, in <module>\n'
            "    args = parse_args()\n"
            '  File "/root/slime/slime/utils/arguments.py", line 1436, in parse_args\n'
            "    hf_config = AutoConfig.from_pretrained(args.hf_checkpoint, trust_remote_code=True)\n"
            f"OSError: {args.hf_checkpoint} does not appear to have a file named config.json. Checkout "
            f"'https://huggingface.co/{args.hf_checkpoint}/tree/None' for available files.\n"
        )
        return 1
    for label, path in (("--prompt-data", args.prompt_data),):
        if not path or not os.path.isfile(path):
            err(
                "Traceback (most recent call last):\n"
                '  File "/root/slime/slime/utils/data.py", line 58, in __init__\n'
                "    for data in read_file(path):\n"
                f"FileNotFoundError: [Errno 2] No such file or directory: '{path}'\n"
            )
            return 1
    if args.eval_prompt_data:
        ev = args.eval_prompt_data
        if len(ev) % 2:
            err("AssertionError: --eval-prompt-data must be pairs of: name path")
            return 1
        for i in range(1, len(ev), 2):
            if not os.path.isfile(ev[i]):
                err(f"FileNotFoundError: [Errno 2] No such file or directory: '{ev[i]}'")
                return 1
    if args.num_rollout is None:
        err("AssertionError: num_rollout or num_epoch must be set")
        return 1

    # ---- GPU accounting, as slime's placement groups see it
    actor_gpus = args.actor_num_nodes * args.actor_num_gpus_per_node
    rollout_gpus = actor_gpus if args.colocate else (args.rollout_num_gpus or 0)
    needed = actor_gpus if args.colocate else actor_gpus + rollout_gpus
    tp, pp, cp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size, args.context_parallel_size
    if actor_gpus % (tp * pp * cp) != 0:
        err(
            "Traceback (most recent call last):\n"
            '  File "/root/Megatron-LM/megatron/core/parallel_state.py", line 603, in initialize_model_parallel\n'
            "    raise RuntimeError(\n"
            f"RuntimeError: world_size ({actor_gpus}) is not divisible by tensor_model_parallel_size ({tp}) x "
            f"pipeline_model_parallel_size ({pp}) x context_parallel_size ({cp})\n"
        )
        return 1
    if args.rollout_num_gpus_per_engine and rollout_gpus % args.rollout_num_gpus_per_engine:
        err(f"AssertionError: rollout_num_gpus ({rollout_gpus}) must be divisible by "
            f"rollout_num_gpus_per_engine ({args.rollout_num_gpus_per_engine})")
        return 1
    cluster = os.environ.get("SIM_RAY_CLUSTER_GPUS")
    if cluster is not None:
        have = int(float(cluster))
        log("placement_group.py", 82, f"Creating placement group with {needed} GPUs...")
        if needed > have:
            time.sleep(min(1.0, float(conf.get("rollout_seconds", 0.2))))
            err(
                "(autoscaler +12s) Tip: use `ray status` to view detailed cluster status. To disable these messages, "
                "set RAY_SCHEDULER_EVENTS=0.\n"
                f"(autoscaler +12s) Warning: The following resource request cannot be scheduled right now: "
                "{'GPU': 1.0}. This is likely due to all cluster resources being claimed by actors. Consider creating "
                "fewer actors or adding more nodes to this Ray cluster.\n"
                "Traceback (most recent call last):\n"
                '  File "/root/slime/train.py", line 98, in <module>\n'
                "    train(args)\n"
                '  File "/root/slime/train.py", line 14, in train\n'
                "    pgs = create_placement_groups(args)\n"
                '  File "/root/slime/slime/ray/placement_group.py", line 96, in create_placement_groups\n'
                "    pg, actor_pg_reordered_bundle_indices, actor_pg_reordered_gpu_ids = _create_placement_group(num_gpus)\n"
                '  File "/root/slime/slime/ray/placement_group.py", line 58, in _create_placement_group\n'
                "    ray.get(pg.ready(), timeout=PLACEMENT_GROUP_TIMEOUT_S)\n"
                f"ray.exceptions.GetTimeoutError: Placement group needs {needed} GPUs "
                f"(actor {args.actor_num_nodes}x{args.actor_num_gpus_per_node}"
                f"{'' if args.colocate else f' + rollout {rollout_gpus}'}) but the Ray cluster has {have} GPUs: "
                "Get timed out: some object(s) not ready.\n"
            )
            return 1

    time.sleep(float(conf.get("startup_seconds", 0.0)))

    # ---- checkpoint to start from
    it = read_tracker(args.load)
    if it is not None and it != "release":
        try:
            loaded = int(it)
        except ValueError:
            err(f"ValueError: invalid literal for int() with base 10: '{it}'")
            return 1
        start = loaded + 1
        log("checkpointing.py", 1253, f" loading checkpoint from {args.load} at iteration {loaded}")
        log("checkpointing.py", 1421,
            f"  successfully loaded checkpoint from {args.load} [ t 1/{tp}, p 1/{pp} ] at iteration {loaded}")
        state = os.path.join(args.load, "rollout", f"global_dataset_state_dict_{loaded}.pt")
        if os.path.exists(state):
            log("rollout.py", 128, f"load metadata from {state}")
        log("train.py", 31, f"resuming from rollout {start} (checkpoint iteration {loaded})")
    else:
        if args.load:
            log("checkpointing.py", 1193,
                f"WARNING: could not find the metadata file {os.path.join(args.load, TRACKER)}")
        ref_it = read_tracker(args.ref_load)
        if ref_it is None:
            err(
                f"WARNING: could not find the metadata file {os.path.join(args.ref_load or '', TRACKER)}\n"
                "    will not load any checkpoints and will start from random\n"
                "Traceback (most recent call last):\n"
                '  File "/root/slime/slime/backends/megatron_utils/model.py", line 707, in initialize_model_and_optimizer\n'
                "    assert iteration is not None and os.path.exists(args.ref_load)\n"
                f"AssertionError: --ref-load {args.ref_load} holds no Megatron checkpoint "
                f"({TRACKER} missing); convert the HF checkpoint with tools/convert_hf_to_torch_dist.py first\n"
            )
            return 1
        start = 0
        log("checkpointing.py", 1253, f" loading release checkpoint from {args.ref_load}")
        log("checkpointing.py", 1421,
            f"  successfully loaded checkpoint from {args.ref_load} [ t 1/{tp}, p 1/{pp} ] at iteration 0")
        log("train.py", 31, f"no checkpoint in --load; starting a new run from --ref-load {args.ref_load}")

    num_rollout = args.num_rollout
    if start >= num_rollout:
        log("train.py", 40, f"start_rollout_id {start} >= num_rollout {num_rollout}: no rollouts left to run")
        return 0

    gbs = args.global_batch_size or ((args.rollout_batch_size or 1) * args.n_samples_per_prompt)
    steps_per_rollout = max(1, (args.rollout_batch_size or 1) * args.n_samples_per_prompt // max(gbs, 1))
    if args.eval_interval and args.eval_prompt_data and start == 0 and not args.skip_eval_before_train:
        log("rollout.py", 187, f"eval 0: {{'eval/{args.eval_prompt_data[0]}': {0.2 + rnd.random() * 0.05:.4f}}}")

    for rollout_id in range(start, num_rollout):
        conf = sim_conf()
        check_faults(rollout_id)
        rs = float(conf.get("rollout_seconds", 0.2))
        log("timer.py", 24, "Timer rollout start")
        t0 = time.time()
        sleep_interruptible(rs * 0.6)
        trend = 1.0 - math.exp(-rollout_id / 100.0)
        reward = 0.25 + 0.45 * trend + rnd.uniform(-0.03, 0.03)
        resp_len = int(min(args.rollout_max_response_len, 1500 + 2500 * trend + rnd.uniform(-200, 200)))
        log("timer.py", 32, f"Timer rollout end (elapsed: {time.time() - t0:.1f}s)")
        log("rollout.py", 412, f"rollout {rollout_id}: {{'rollout/raw_reward': {reward:.4f}, "
            f"'rollout/response_lengths': {resp_len:.1f}, 'rollout/truncated': {rnd.uniform(0, 0.05):.4f}, "
            f"'rollout/log_probs': {-0.3 - rnd.random() * 0.1:.4f}}}")
        log("timer.py", 24, "Timer train start")
        t1 = time.time()
        sleep_interruptible(rs * 0.3)
        for k in range(steps_per_rollout):
            step = rollout_id * steps_per_rollout + k
            log("model.py", 498, f"step {step}: {{'train/loss': {rnd.uniform(-0.02, 0.02):.6f}, "
                f"'train/pg_loss': {rnd.uniform(-0.02, 0.02):.6f}, 'train/entropy_loss': {0.4 - 0.1 * trend:.6f}, "
                f"'train/pg_clipfrac': {rnd.uniform(0, 0.01):.6f}, 'train/grad_norm': {rnd.uniform(0.05, 0.4):.6f}, "
                f"'train/lr-pg': {args.lr or 1e-6}}}")
        log("timer.py", 32, f"Timer train end (elapsed: {time.time() - t1:.1f}s)")
        log("timer.py", 24, "Timer update_weights start")
        t2 = time.time()
        sleep_interruptible(rs * 0.1)
        log("timer.py", 32, f"Timer update_weights end (elapsed: {time.time() - t2:.1f}s)")
        tot = time.time() - t0
        log("train_metric_utils.py", 64, f"perf {rollout_id}: {{'perf/rollout_time': {rs * 0.6:.2f}, "
            f"'perf/train_time': {rs * 0.3:.2f}, 'perf/update_weights_time': {rs * 0.1:.2f}, "
            f"'perf/step_time': {tot:.2f}, 'perf/tokens_per_gpu_per_sec': {rnd.uniform(900, 1300):.1f}}}")
        if args.save and should_run(rollout_id, args.save_interval, num_rollout):
            save_checkpoint(args, rollout_id, actor_gpus, conf)
        if args.eval_prompt_data and should_run(rollout_id, args.eval_interval, num_rollout):
            name = args.eval_prompt_data[0]
            log("rollout.py", 187, f"eval {rollout_id}: {{'eval/{name}': {0.2 + 0.3 * trend + rnd.uniform(0, .05):.4f}, "
                f"'eval/{name}-truncated_ratio': {rnd.uniform(0, 0.1):.4f}}}")
        if _state["term"]:
            die_of_sigterm()
    log("train.py", 104, f"training finished: {num_rollout - start} rollouts ({start}..{num_rollout - 1})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
