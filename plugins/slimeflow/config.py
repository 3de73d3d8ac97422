"""Typed run configuration: what one DAG run will do, built once from the trigger params.

Four small config objects (cluster, paths, source, train) plus the recipe and its layout, in the
manner of astronomer-cosmos' project/profile/execution/render configs. `RunConfig.from_params` is
the single converter from the trigger form's values.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from slimeflow import validation as v
from slimeflow.recipes import Layout, Recipe, load_recipe


@dataclass(frozen=True)
class ClusterConfig:
    nodes: tuple          # Airflow connection ids; nodes[0] is the head
    hosts: tuple          # the address each node is reached at (its connection's host)
    master_addr: str
    socket_ifname: str
    gpus_per_node: int
    # where Ray's dashboard (and with it the job-submission API) listens; docs/security.md
    dashboard_host: str = "0.0.0.0"

    @property
    def head(self) -> str:
        return self.nodes[0]

    @property
    def workers(self) -> tuple:
        return self.nodes[1:]


@dataclass(frozen=True)
class PathsConfig:
    base_folder: str
    slime_dir: str
    megatron_dir: str
    local_name: str
    experiment: str = ""

    @property
    def hf_checkpoint(self) -> str:
        return f"{self.base_folder}/{self.local_name}"

    @property
    def torch_dist(self) -> str:
        return f"{self.base_folder}/{self.local_name}_torch_dist"

    @property
    def save_dir(self) -> str:
        """The seed's <model>_slime; an experiment gets its own <model>_slime_<experiment>."""
        suffix = f"_{self.experiment}" if self.experiment else ""
        return f"{self.base_folder}/{self.local_name}_slime{suffix}"

    def dataset_dir(self, local_name: str) -> str:
        return f"{self.base_folder}/{local_name}"

    @property
    def state_dir(self) -> str:
        """Where slimeflow keeps its own files on a node (node scripts, run records, leases)."""
        return f"{self.base_folder}/.slimeflow"


@dataclass(frozen=True)
class SourceConfig:
    hf_repo: str
    hf_revision: str
    hf_endpoint: str      # "" = the hub default (or the node's own HF_ENDPOINT)


@dataclass(frozen=True)
class TrainConfig:
    num_rollout: int
    save_interval: int
    grad_reduce_in_bf16: bool
    allow_blackwell_training: bool
    extra_train_args: tuple
    cp_size: int
    nccl_nvls: str        # "auto" (seed: on when NVLink is present), "0" or "1"
    poll_interval: int
    preflight_nccl: bool = False
    # supervision (docs/supervision.md); seconds
    unreachable_timeout_s: float = 600.0
    stall_timeout_s: float = 7200.0
    lease_wait_s: float = 600.0
    lease_stale_s: float = 900.0
    start: str = "resume"  # or "fresh": refuse a save dir that holds an earlier run's checkpoint
    hang_timeout_s: float = 1200.0
    dcgm_diag_level: int = 1


@dataclass(frozen=True)
class RunConfig:
    recipe: Recipe
    layout: Layout
    cluster: ClusterConfig
    paths: PathsConfig
    source: SourceConfig
    train: TrainConfig

    @classmethod
    def from_params(cls, recipe, params: dict, hosts=None) -> "RunConfig":
        """Validate trigger params. `hosts` are the nodes' connection hosts, when known."""
        if isinstance(recipe, str):
            recipe = load_recipe(recipe)
        p = dict(params)
        raw_nodes = p.get("nodes")
        if not isinstance(raw_nodes, (list, tuple)) or not raw_nodes:
            raise v.ParamError("Param `nodes` must be a non-empty list of SSH connection ids, "
                               "head first (for example [\"gpu_node_0\"]).")
        if len(raw_nodes) > 64:
            raise v.ParamError(f"Param `nodes` lists {len(raw_nodes)} nodes; at most 64 are "
                               f"supported.")
        nodes = tuple(v.check_conn_id("nodes", n) for n in raw_nodes)
        if len(set(nodes)) != len(nodes):
            dup = next(n for n in nodes if nodes.count(n) > 1)
            raise v.ParamError(f"Param `nodes` lists {dup!r} twice; name each node once.")
        if hosts is None:
            hosts = tuple(f"<host of {n}>" for n in nodes)
        else:
            hosts = tuple(v.check_host(f"host of connection {n}", h) for n, h in zip(nodes, hosts))
            if len(set(hosts)) != len(hosts):
                raise v.ParamError("Param `nodes` names two connections with the same host; each "
                                   "node must be a different machine.")
        gpus = v.check_int("gpus_per_node", p.get("gpus_per_node", 8), 1, 16)
        nccl_check = v.check_auto_on_off("preflight_nccl", p.get("preflight_nccl"))
        try:
            layout = recipe.layout_for(len(nodes))
        except ValueError as e:
            raise v.ParamError(f"Param `nodes`: {e}.") from None
        if gpus != layout.gpus_per_node and layout.nodes == 1:
            raise v.ParamError(f"Param `gpus_per_node` is {gpus}, but recipe {recipe.name}'s "
                               f"{layout.name} layout needs exactly {layout.gpus_per_node} GPUs "
                               f"per node; set gpus_per_node to {layout.gpus_per_node}.")
        num_layers = int(recipe.model_flag("--num-layers") or 0)
        if num_layers and gpus > num_layers:
            raise v.ParamError(f"Param `gpus_per_node` ({gpus}) exceeds the model's {num_layers} "
                               f"layers, which the converter's pipeline split cannot do; use "
                               f"fewer GPUs per node.")
        master = p.get("master_addr") or ""
        master = v.check_host("master_addr", master) if master else hosts[0]
        world = len(nodes) * gpus
        cp = p.get("cp_size")
        if cp is None:
            cp = _fit_cp(layout, world)
            if cp is None:
                raise v.ParamError(
                    f"Param `nodes`: {len(nodes)} node(s) x {gpus} GPUs cannot hold recipe "
                    f"{recipe.name}'s TP{layout.tp} x PP{layout.pp} model split; use more nodes or "
                    f"GPUs per node.")
        else:
            cp = v.check_int("cp_size", cp, 1, 64)
            if world % (layout.tp * layout.pp * cp):
                raise v.ParamError(
                    f"Param `cp_size` {cp}: TP{layout.tp} x PP{layout.pp} x CP{cp} does not "
                    f"divide the {world} GPUs; pick a CP that does.")
        num_rollout = p.get("num_rollout")
        num_rollout = layout.num_rollout if num_rollout is None else \
            v.check_int("num_rollout", num_rollout, 1, 10_000_000)
        nvls = p.get("nccl_nvls", "auto")
        if nvls not in ("auto", "0", "1"):
            raise v.ParamError(f"Param `nccl_nvls` must be auto, 0 or 1; got {nvls!r}.")
        endpoint = p.get("hf_endpoint") or ""
        dash = p.get("ray_dashboard_host") or "0.0.0.0"
        if dash not in ("0.0.0.0", "127.0.0.1"):
            raise v.ParamError(f"Param `ray_dashboard_host` must be 0.0.0.0 (the seed: every "
                               f"network) or 127.0.0.1 (the head only); got {v._show(dash)}.")
        return cls(
            recipe=recipe, layout=layout,
            cluster=ClusterConfig(
                nodes=nodes, hosts=hosts, master_addr=master,
                socket_ifname=v.check_ifname("socket_ifname", p.get("socket_ifname", "eth0")),
                gpus_per_node=gpus, dashboard_host=dash),
            paths=PathsConfig(
                base_folder=v.check_data_folder("base_folder", p.get("base_folder", "/root")),
                slime_dir=v.check_path("slime_dir", p.get("slime_dir", "/root/slime")),
                megatron_dir=v.check_path("megatron_dir", p.get("megatron_dir",
                                                                "/root/Megatron-LM")),
                local_name=_local_name(recipe, v.check_hf_repo(
                    "hf_repo", p.get("hf_repo") or recipe.hf_repo)),
                experiment=v.check_experiment("experiment", p.get("experiment"))),
            source=SourceConfig(
                hf_repo=v.check_hf_repo("hf_repo", p.get("hf_repo") or recipe.hf_repo),
                hf_revision=v.check_revision("hf_revision", p.get("hf_revision") or "main"),
                hf_endpoint=v.check_url("hf_endpoint", endpoint) if endpoint else ""),
            train=TrainConfig(
                num_rollout=num_rollout,
                save_interval=v.check_int("save_interval", p.get("save_interval", 20), 1,
                                          1_000_000),
                grad_reduce_in_bf16=v.check_bool("grad_reduce_in_bf16",
                                                 p.get("grad_reduce_in_bf16", False)),
                allow_blackwell_training=v.check_bool("allow_blackwell_training",
                                                      p.get("allow_blackwell_training", False)),
                extra_train_args=v.check_extra_args("extra_train_args",
                                                    p.get("extra_train_args") or []),
                cp_size=cp, nccl_nvls=nvls,
                poll_interval=v.check_int("poll_interval", p.get("poll_interval", 15), 1, 600),
                preflight_nccl=(gpus > 1 if nccl_check is None else nccl_check),
                unreachable_timeout_s=60 * _minutes("unreachable_timeout_minutes",
                                                    p.get("unreachable_timeout_minutes"), 10),
                stall_timeout_s=60 * _minutes("stall_timeout_minutes",
                                              p.get("stall_timeout_minutes"),
                                              recipe.stall_timeout_minutes),
                lease_wait_s=60 * _minutes("lease_wait_minutes", p.get("lease_wait_minutes"),
                                           10, lo=0.0),
                lease_stale_s=60 * _minutes("lease_stale_minutes", p.get("lease_stale_minutes"),
                                            15),
                start=v.check_start("start", p.get("start")),
                hang_timeout_s=60 * _minutes("hang_timeout_minutes",
                                             p.get("hang_timeout_minutes"), 20),
                dcgm_diag_level=_dcgm_level(p.get("dcgm_diag_level"))),
        )


def _minutes(field: str, value, default, lo: float = 0.01, hi: float = 100_000.0) -> float:
    """A duration param in minutes (fractions allowed); None means the default."""
    if value is None or value == "":
        return float(default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise v.ParamError(f"Param `{field}` must be a number of minutes between {lo} and {hi}; "
                           f"got {value!r}.")
    return float(value)


def _dcgm_level(value) -> int:
    if value is None or value == "":
        return 1
    if isinstance(value, bool) or value not in (0, 1, 2):
        raise v.ParamError(f"Param `dcgm_diag_level` must be 0 (skip), 1 or 2; got {value!r}.")
    return int(value)


def _fit_cp(layout: Layout, world: int):
    # The seed's CP_SIZE defaults to 4 on 4x8; on fewer GPUs take the largest CP that still fits.
    for cp in range(layout.cp, 0, -1):
        if world % (layout.tp * layout.pp * cp) == 0:
            return cp
    return None


def _local_name(recipe: Recipe, repo: str) -> str:
    if repo == recipe.hf_repo:
        return recipe.local_name
    return re.sub(r"[^A-Za-z0-9._-]", "_", repo.rsplit("/", 1)[-1])
