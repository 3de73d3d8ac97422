"""slime's parse_args as train.py calls it (simcluster stand-in).

Mirrors (read, not copied) THUDM/slime at 624b824a898ab0ec1fcb4d373004c7f3852bf515:
- slime/utils/arguments.py `parse_args()`: `_pre_parse_mode()` (a parser of four flags,
  parse_known_args), then `sglang_parse_args()`, then `megatron_parse_args(extra_args_provider=
  <slime's arguments>)`, then merges the three namespaces;
- slime/backends/sglang_utils/arguments.py `sglang_parse_args()`: `ArgumentParser(add_help=False)`
  with sglang's ServerArgs flags prefixed `--sglang-` (so abbreviations are allowed there), a
  second small parser for `--rollout-num-gpus-per-engine`, both parse_known_args;
- slime/backends/megatron_utils/arguments.py `megatron_parse_args()`: Megatron's
  `parse_args(extra_args_provider, ignore_unknown_args=True)` (imported from Megatron-LM on
  PYTHONPATH: megatron.training.arguments), then `AutoConfig.from_pretrained(args.hf_checkpoint)`,
  which fails with transformers' OSError when config.json is not there.
All three parsers use parse_known_args: a flag that none of them knows is dropped without a word.
slime's own validation (slime_validate_args) is the trainer stand-in's `validate_args`.

The sglang flags follow the sglang version this Python sees (importlib.metadata), as slime
derives them from the installed sglang's ServerArgs: sglang 0.5.19 added `--cuda-graph-bs-decode`
and `--cuda-graph-bs-prefill` and kept `--cuda-graph-bs` as a deprecated alias; 0.5.20 removed it,
after which `--sglang-cuda-graph-bs` is an ambiguous abbreviation of the two.
"""
import argparse
import os
import re

# slime's flags that the recipes pass and the trainer stand-in never reads (store_true / valued)
SLIME_FLAGS = ("--kl-loss-type", "--kl-loss-coef", "--entropy-coef", "--eps-clip",
               "--eps-clip-high")


def sglang_version():
    try:
        from importlib.metadata import version

        text = version("sglang")
    except Exception:
        return None
    m = re.match(r"(\d+)\.(\d+)\.(\d+)", text)
    return tuple(int(x) for x in m.groups()) if m else None


def _pre_parse_mode():
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    p.add_argument("--train-backend", type=str, choices=["megatron"], default="megatron")
    p.add_argument("--debug-rollout-only", action="store_true", default=False)
    p.add_argument("--debug-train-only", action="store_true", default=False)
    p.add_argument("--load-debug-rollout-data", type=str, default=None)
    args, _ = p.parse_known_args()
    return args


def add_sglang_arguments(parser):
    a = parser.add_argument
    a("--sglang-mem-fraction-static", type=float, default=None)
    a("--sglang-ep-size", type=int, default=None)
    a("--sglang-max-running-requests", type=int, default=None)
    a("--sglang-speculative-algorithm", type=str, default=None)
    a("--sglang-speculative-num-steps", type=int, default=None)
    a("--sglang-speculative-eagle-topk", type=int, default=None)
    a("--sglang-speculative-num-draft-tokens", type=int, default=None)
    a("--sglang-pp-size", type=int, default=1)
    v = sglang_version() or (0, 0, 0)
    if v < (0, 5, 20):
        a("--sglang-cuda-graph-bs", type=int, nargs="+", default=None)
    if v >= (0, 5, 19):
        a("--sglang-cuda-graph-bs-decode", type=int, nargs="+", default=None)
        a("--sglang-cuda-graph-bs-prefill", type=int, nargs="+", default=None)
    return parser


def sglang_parse_args():
    parser = argparse.ArgumentParser(add_help=False)
    add_sglang_arguments(parser)
    temp = argparse.ArgumentParser(add_help=False)
    temp.add_argument("--rollout-num-gpus-per-engine", type=int, default=1)
    temp_args, _ = temp.parse_known_args()
    parser.set_defaults(sglang_tensor_parallel_size=temp_args.rollout_num_gpus_per_engine)
    args, _ = parser.parse_known_args()
    if getattr(args, "sglang_cuda_graph_bs", None) is None:
        args.sglang_cuda_graph_bs = getattr(args, "sglang_cuda_graph_bs_decode", None)
    return args


def add_slime_arguments(parser):
    a = parser.add_argument
    # cluster
    a("--actor-num-nodes", type=int, default=1)
    a("--actor-num-gpus-per-node", type=int, default=8)
    a("--rollout-num-gpus", type=int, default=None)
    a("--rollout-num-gpus-per-engine", type=int, default=1)
    a("--num-gpus-per-node", type=int, default=8)
    a("--colocate", action="store_true")
    a("--offload", action="store_true")
    # checkpoints / data
    a("--hf-checkpoint", type=str, default=None)
    a("--ref-load", type=str, default=None)
    a("--start-rollout-id", type=int, default=None)
    a("--prompt-data", type=str, default=None)
    a("--input-key", type=str, default="input")
    a("--label-key", type=str, default=None)
    a("--apply-chat-template", action="store_true")
    a("--rollout-shuffle", action="store_true")
    a("--disable-rollout-global-dataset", action="store_false", dest="rollout_global_dataset")
    a("--rm-type", type=str, default=None)
    a("--eval-prompt-data", type=str, nargs="+", default=None)
    a("--skip-eval-before-train", action="store_true")
    # rollout
    a("--num-rollout", type=int, default=None)
    a("--num-epoch", type=int, default=None)
    a("--rollout-batch-size", type=int, default=None)
    a("--n-samples-per-prompt", type=int, default=1)
    a("--rollout-max-response-len", type=int, default=1024)
    a("--rollout-temperature", type=float, default=1.0)
    a("--num-steps-per-rollout", type=int, default=None)
    a("--balance-data", action="store_true")
    a("--n-samples-per-eval-prompt", type=int, default=1)
    a("--eval-max-response-len", type=int, default=None)
    a("--eval-top-p", type=float, default=None)
    a("--max-tokens-per-gpu", type=int, default=None)
    a("--use-dynamic-batch-size", action="store_true")
    # algorithm
    a("--advantage-estimator", type=str, default="grpo")
    a("--kl-coef", type=float, default=0.0)
    a("--use-kl-loss", action="store_true")
    for flag in SLIME_FLAGS:
        a(flag, type=str, default=None)
    # The simulation's own flags, not slime's: tests pass shell-special values through them to
    # prove they reach train.py verbatim (tests/hostile_corpus.py INERT). Real slime has none, so
    # argvcheck would rightly report them as dropped there.
    for c in "abcde":
        a(f"--sim-inert-{c}", type=str, default=None)
    # wandb
    a("--use-wandb", action="store_true")
    a("--wandb-project", type=str, default=None)
    a("--wandb-group", type=str, default=None)
    a("--wandb-key", type=str, default=None)
    return parser


def megatron_parse_args(extra_args_provider):
    from megatron.training.arguments import parse_args as _megatron_parse_args

    args = _megatron_parse_args(extra_args_provider=extra_args_provider, ignore_unknown_args=True)
    if args.hf_checkpoint and not os.path.isfile(os.path.join(args.hf_checkpoint, "config.json")):
        raise OSError(f"{args.hf_checkpoint} does not appear to have a file named config.json. "
                      f"Checkout 'https://huggingface.co/{args.hf_checkpoint}/tree/None' for "
                      f"available files.")
    return args


def parse_args():
    pre = _pre_parse_mode()
    sglang_ns = None
    if not (pre.debug_train_only or pre.load_debug_rollout_data is not None):
        sglang_ns = sglang_parse_args()
    args = megatron_parse_args(extra_args_provider=add_slime_arguments)
    for key, value in vars(pre).items():
        setattr(args, key, value)
    if sglang_ns is not None:
        for key, value in vars(sglang_ns).items():
            setattr(args, key, value)
    return args
