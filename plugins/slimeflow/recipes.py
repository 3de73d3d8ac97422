"""Recipes: slime training set-ups written as data in include/recipes/*.yaml."""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

ARG_GROUPS = ("model_args", "ckpt_args", "rollout_args", "optimizer_args", "grpo_args",
              "wandb_args", "perf_args", "eval_args", "sglang_args", "misc_args")

# Megatron model flag -> Hugging Face config.json key. The converter trusts the flags blindly and
# writes bad weights from wrong ones (slime#1059), so these are compared after download.
HF_CONFIG_KEYS = {
    "--num-layers": "num_hidden_layers",
    "--hidden-size": "hidden_size",
    "--ffn-hidden-size": "intermediate_size",
    "--num-attention-heads": "num_attention_heads",
    "--num-query-groups": "num_key_value_heads",
    "--kv-channels": "head_dim",
    "--num-experts": "num_experts",
    "--moe-router-topk": "num_experts_per_tok",
    "--moe-ffn-hidden-size": "moe_intermediate_size",
    "--moe-shared-expert-intermediate-size": "shared_expert_intermediate_size",
    "--vocab-size": "vocab_size",
    "--rotary-base": "rope_theta",
}


def include_dir() -> Path:
    env = os.environ.get("SLIMEFLOW_INCLUDE_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "include"


@dataclass(frozen=True)
class Dataset:
    repo: str
    local_name: str


@dataclass(frozen=True)
class Layout:
    name: str
    gpus_per_node: int
    num_rollout: int
    args: dict
    runtime_env: dict
    multi_node_runtime_env: dict = field(default_factory=dict)
    nodes: int | None = None
    min_nodes: int | None = None
    tp: int = 1
    pp: int = 1
    cp: int = 1

    def fits(self, nodes: int) -> bool:
        if self.nodes is not None:
            return nodes == self.nodes
        return nodes >= (self.min_nodes or 1)


@dataclass(frozen=True)
class Recipe:
    name: str
    dag_id: str
    title: str
    hf_repo: str
    local_name: str
    hf_checkpoint_gb: float
    datasets: tuple
    args: dict
    layouts: tuple
    expected_hours: float
    stall_timeout_minutes: int
    needs: tuple = ()
    # all-reduce bus bandwidth under which check_cluster refuses a node; None: 80% of the
    # published figure for the nodes' GPU model, count and topology (slimeflow/health.py)
    nccl_busbw_floor_gbps: float | None = None

    def layout_for(self, nodes: int) -> Layout:
        for layout in self.layouts:
            if layout.fits(nodes):
                return layout
        counts = ", ".join(str(l.nodes) if l.nodes else f">={l.min_nodes}" for l in self.layouts)
        raise ValueError(f"recipe {self.name} has no layout for {nodes} node(s); it supports "
                         f"{counts} node(s): change `nodes`")

    def model_flag(self, flag: str) -> str | None:
        tokens = self.args["model_args"].split()
        if flag in tokens:
            i = tokens.index(flag)
            if i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
                return tokens[i + 1]
        return None


def _layout(raw: dict) -> Layout:
    return Layout(
        name=raw["name"], gpus_per_node=int(raw["gpus_per_node"]),
        num_rollout=int(raw["num_rollout"]),
        args={k: raw.get(k, "") for k in ("actor_args",) + ARG_GROUPS if k in raw},
        runtime_env=dict(raw["runtime_env"]),
        multi_node_runtime_env=dict(raw.get("multi_node_runtime_env") or {}),
        nodes=raw.get("nodes"), min_nodes=raw.get("min_nodes"),
        tp=int(raw.get("tp", 1)), pp=int(raw.get("pp", 1)), cp=int(raw.get("cp", 1)),
    )


def parse_recipe(raw: dict) -> Recipe:
    return Recipe(
        name=raw["name"], dag_id=raw["dag_id"], title=raw.get("title", raw["name"]),
        hf_repo=raw["model"]["hf_repo"], local_name=raw["model"]["local_name"],
        hf_checkpoint_gb=float(raw["model"]["hf_checkpoint_gb"]),
        datasets=tuple(Dataset(d["repo"], d["local_name"]) for d in raw.get("datasets", [])),
        args={k: raw.get(k, "") for k in ARG_GROUPS},
        layouts=tuple(_layout(l) for l in raw["layouts"]),
        expected_hours=float(raw.get("expected_hours", 72)),
        stall_timeout_minutes=int(raw.get("stall_timeout_minutes", 120)),
        needs=tuple(raw.get("needs") or ()),
        nccl_busbw_floor_gbps=(None if raw.get("nccl_busbw_floor_gbps") is None
                               else float(raw["nccl_busbw_floor_gbps"])),
    )


@functools.lru_cache(maxsize=None)
def load_recipe(name: str) -> Recipe:
    import yaml

    path = include_dir() / "recipes" / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown recipe {name!r}: known recipes are {', '.join(recipe_names())}")
    with open(path) as f:
        # libyaml's loader when present: a third of the parse time of every DAG file
        return parse_recipe(yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))


def recipe_for_dag(dag_id: str) -> str:
    """The recipe whose DAG this is (the factory gives each DAG its recipe's dag_id)."""
    for name in recipe_names():
        if load_recipe(name).dag_id == dag_id:
            return name
    raise ValueError(f"DAG {dag_id!r} is not a slimeflow recipe DAG (known: "
                     f"{', '.join(load_recipe(n).dag_id for n in recipe_names())}); build it with "
                     f"slimeflow.factory.build_dag(<recipe>) so its tasks know their recipe.")


def recipe_names() -> list:
    return sorted(p.stem for p in (include_dir() / "recipes").glob("*.yaml"))
