"""Megatron-LM's argument parser as slime's train.py meets it (simcluster stand-in).

Mirrors (read, not copied) NVIDIA/Megatron-LM at 1dcf0dafa884ad52ffb243625717a3471643e087, the
commit slime's docker/Dockerfile pins, file megatron/training/arguments.py: `parse_args(
extra_args_provider=None, ignore_unknown_args=False)` builds ONE
`ArgumentParser(description='Megatron-LM Arguments', allow_abbrev=False)`, adds Megatron's
groups, lets `extra_args_provider` add the caller's (slime's) arguments, then runs
`parse_known_args()` when `ignore_unknown_args` (slime always passes True: an unknown flag is
dropped without a word) or `parse_args()`. `--moe-layer-freq` goes through `moe_freq_type`, an
int or a list pattern; anything else is a ValueError, which argparse reports as
`invalid moe_freq_type value: '...'`.

Declared here: the Megatron flags slimeflow's recipes pass (their arity as the recipes use
them), typed where the trainer stand-in reads them. `--use-gated-attention` is NOT declared:
only slime's docker/patch/latest/megatron.patch adds it (the simulated cluster applies the
stand-in patch, tests/simcluster/standins/docker/patch/latest/megatron.patch, as slime's image
applies the real one), so a stock Megatron drops it silently.
"""
import argparse
import ast

FLAGS = (  # store_true flags of Megatron that the recipes pass
    "--accumulate-allreduce-grads-in-fp32", "--apply-layernorm-1p", "--attention-output-gate",
    "--attention-softmax-in-fp32", "--disable-bias-linear", "--group-query-attention",
    "--moe-enable-deepep", "--moe-grouped-gemm", "--moe-permute-fusion",
    "--moe-shared-expert-gate", "--optimizer-cpu-offload", "--overlap-cpu-optimizer-d2h-h2d",
    "--qk-layernorm", "--swiglu", "--untie-embeddings-and-output-weights",
    "--use-precision-aware-optimizer", "--use-rotary-position-embeddings", "--no-save-optim",
    "--sequence-parallel", "--grad-reduce-in-bf16",
)
VALUED = (  # Megatron flags with one value that the recipes pass and the stand-in never reads
    "--adam-beta1", "--adam-beta2", "--attention-backend", "--attention-dropout",
    "--hidden-dropout", "--lr-decay-style", "--moe-aux-loss-coeff", "--moe-router-dtype",
    "--moe-router-score-function", "--moe-token-dispatcher-type", "--moe-token-drop-policy",
    "--normalization", "--position-embedding-type", "--recompute-granularity",
    "--recompute-method", "--recompute-num-layers", "--weight-decay",
)


def moe_freq_type(x):
    """An int (every Nth layer is MoE) or a list pattern such as [1,0,1] or [1]*48."""
    if isinstance(x, int):
        return x
    if x.isdigit():
        return int(x)
    try:
        value = _pattern(ast.parse(x, mode="eval").body)
    except (SyntaxError, TypeError):
        raise ValueError(x) from None
    if not isinstance(value, list):
        raise ValueError(x)
    return value


def _pattern(node):
    if isinstance(node, ast.List):
        return [_pattern(e) for e in node.elts]
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mult, ast.Add)):
        left, right = _pattern(node.left), _pattern(node.right)
        return left * right if isinstance(node.op, ast.Mult) else left + right
    raise TypeError(ast.dump(node))


def _add_megatron_args(parser):
    a = parser.add_argument
    # network size
    a("--num-layers", type=int, default=None)
    a("--hidden-size", type=int, default=None)
    a("--ffn-hidden-size", type=int, default=None)
    a("--num-attention-heads", type=int, default=None)
    a("--num-query-groups", type=int, default=1)
    a("--kv-channels", type=int, default=None)
    a("--vocab-size", type=int, default=None)
    a("--rotary-base", type=float, default=10000)
    a("--rotary-percent", type=float, default=1.0)
    a("--norm-epsilon", type=float, default=1e-5)
    a("--spec", type=str, nargs="*", default=None)
    # MoE
    a("--num-experts", type=int, default=None)
    a("--moe-router-topk", type=int, default=2)
    a("--moe-layer-freq", type=moe_freq_type, default=1)
    a("--moe-ffn-hidden-size", type=int, default=None)
    a("--moe-shared-expert-intermediate-size", type=int, default=None)
    # parallelism
    a("--tensor-model-parallel-size", type=int, default=1)
    a("--pipeline-model-parallel-size", type=int, default=1)
    a("--decoder-last-pipeline-num-layers", type=int, default=None)
    a("--context-parallel-size", type=int, default=1)
    a("--expert-model-parallel-size", type=int, default=1)
    a("--expert-tensor-parallel-size", type=int, default=None)
    # training, checkpointing, optimizer
    a("--global-batch-size", type=int, default=None)
    a("--lr", type=float, default=None)
    a("--optimizer", type=str, default="adam")
    a("--load", type=str, default=None)
    a("--save", type=str, default=None)
    a("--save-interval", type=int, default=None)
    a("--eval-interval", type=int, default=None)
    for flag in FLAGS:
        a(flag, action="store_true")
    for flag in VALUED:
        a(flag, type=str, default=None)
    return parser


def parse_args(extra_args_provider=None, ignore_unknown_args=False):
    parser = argparse.ArgumentParser(description="Megatron-LM Arguments", allow_abbrev=False)
    parser = _add_megatron_args(parser)
    if extra_args_provider is not None:
        parser = extra_args_provider(parser)
    if ignore_unknown_args:
        args, _ = parser.parse_known_args()
    else:
        args = parser.parse_args()
    return args
