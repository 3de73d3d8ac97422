"""Judge the preflight probes of all nodes together. Pure: probes in, facts or problems out.

Every problem is one sentence that names the node and the fix, because it is what on-call reads.
"""
from __future__ import annotations

import re

from slimeflow.builders import ray_version_tuple, version_tuple
from slimeflow.config import RunConfig
from slimeflow.health import FAIL, FLOOR_FRACTION, grade_node, nccl_floor

GB = 1e9
# Bytes per parameter of a slime training checkpoint with optimizer state (SLIME_FACTS: 12-14).
CKPT_BYTES_PER_PARAM = 13
# fp32 master weights plus two Adam moments live in host RAM with --optimizer-cpu-offload.
OFFLOAD_RAM_BYTES_PER_PARAM = 12
# Oldest driver branch that supports each compute capability major (CUDA 12 on Hopper, 12.8 on
# Blackwell).
MIN_DRIVER = {9: (525, 60), 10: (570, 0), 12: (570, 0)}
BASE_PACKAGES = ("slime", "megatron", "ray", "sglang")
# huggingface_hub 0.34 introduced the `hf` CLI (and `hf download`).
MIN_HF_CLI = (0, 34)


class ClusterError(RuntimeError):
    pass


def _driver_tuple(text):
    try:
        parts = [int(x) for x in str(text).split(".")[:2]]
        return tuple(parts + [0] * (2 - len(parts)))
    except ValueError:
        return None


def _hf_version(text) -> tuple:
    m = re.match(r"(\d+)\.(\d+)", str(text))
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def _cc_major(gpu, probe):
    cc = gpu.get("compute_cap")
    if cc:
        return int(str(cc).split(".")[0])
    caps = (probe.get("torch") or {}).get("capabilities") or []
    idx = gpu.get("index", 0)
    if isinstance(idx, int) and idx < len(caps):
        return int(caps[idx][0])
    return None


def model_bytes(cfg: RunConfig, head_probe: dict) -> tuple:
    """(model bytes, dataset bytes, source): the hub's answer, else the recipe's estimate."""
    hub = {(h.get("type"), h.get("repo")): h for h in head_probe.get("hub") or []}
    m = hub.get(("model", cfg.source.hf_repo), {})
    if m.get("bytes"):
        data = sum((hub.get(("dataset", d.repo)) or {}).get("bytes") or 0
                   for d in cfg.recipe.datasets)
        return int(m["bytes"]), int(data), "hub"
    return int(cfg.recipe.hf_checkpoint_gb * GB), 0, "recipe estimate"


def disk_needed(cfg: RunConfig, head_probe: dict, present: dict) -> dict:
    model, data, source = model_bytes(cfg, head_probe)
    params = model / 2  # bf16 weights
    need = {
        "hf_checkpoint": max(0, model - present.get("hf_checkpoint", 0)),
        "datasets": max(0, data - present.get("datasets", 0)),
        "torch_dist": max(0, model - present.get("torch_dist", 0)),
        "checkpoint": params * CKPT_BYTES_PER_PARAM,
    }
    need["total"] = sum(need.values())
    need["source"] = source
    need["params"] = params
    return need


def judge(cfg: RunConfig, probes: dict, storage_shared, present: dict | None = None,
          ray_is_ours: bool = False) -> dict:
    """probes: {node: probe json}. Returns facts for later steps or raises ClusterError.
    ray_is_ours: this run started the Ray that may run on its nodes (its run record says so;
    train then reuses or restarts it); otherwise any Ray running on a node refuses it."""
    problems = []
    nodes = list(cfg.cluster.nodes)
    head = cfg.cluster.head
    ref_name = None
    cc_majors = set()
    for node in nodes:
        p = probes[node]
        gpus = p.get("gpus") or []
        if p.get("gpu_error") or not gpus:
            why = p.get("gpu_error") or "nvidia-smi lists none"
            problems.append(f"node {node} has no usable GPU ({why}); install or repair the "
                            f"NVIDIA driver there, or remove {node} from `nodes`.")
            continue
        if len(gpus) != cfg.cluster.gpus_per_node:
            problems.append(f"node {node} has {len(gpus)} GPUs but gpus_per_node is "
                            f"{cfg.cluster.gpus_per_node}; set gpus_per_node to match the nodes "
                            f"or fix the node (a GPU may have fallen off the bus).")
        names = {g.get("name") for g in gpus}
        if len(names) > 1:
            problems.append(f"node {node} mixes GPU models ({', '.join(sorted(map(str, names)))}); "
                            f"slime needs identical GPUs: use a homogeneous node.")
        name = gpus[0].get("name")
        if ref_name is None:
            ref_name = (node, name)
        elif name != ref_name[1]:
            problems.append(f"node {node} has {name} GPUs but {ref_name[0]} has {ref_name[1]}; "
                            f"every node must have the same GPU model: remove {node} from "
                            f"`nodes` or replace it.")
        for g in gpus:
            major = _cc_major(g, p)
            if major is None:
                problems.append(f"node {node} reports no compute capability for GPU "
                                f"{g.get('index')} (driver {g.get('driver')}) and torch could "
                                f"not tell either; upgrade the NVIDIA driver.")
                break
            cc_majors.add(major)
            drv, need = _driver_tuple(g.get("driver")), MIN_DRIVER.get(major)
            if drv and need and drv < need:
                problems.append(f"node {node} runs NVIDIA driver {g.get('driver')}, too old for "
                                f"compute capability {g.get('compute_cap') or major} (needs "
                                f"{need[0]}.{need[1]:02d} or newer); upgrade the driver.")
                break
        procs = p.get("gpu_processes") or []
        if procs:
            desc = ", ".join(f"pid {q.get('pid')} {q.get('name')} using {q.get('used_mib')} MiB"
                             for q in procs[:3])
            problems.append(f"node {node} already runs GPU processes this run did not start "
                            f"({desc}); stop them or choose another node; slimeflow never kills "
                            f"what it did not start.")
    for node in nodes:
        p = probes[node]
        pk = p.get("packages") or {}
        for name in BASE_PACKAGES + tuple(cfg.recipe.needs):
            if not (pk.get(name) or {}).get("present"):
                where = {"slime": cfg.paths.slime_dir, "megatron": cfg.paths.megatron_dir}
                hint = (f" (looked in {where[name]}; set `{name if name == 'slime' else 'megatron'}"
                        f"_dir`)" if name in where else "")
                problems.append(f"node {node} is missing {name}{hint}; install it as in the "
                                f"slime image (slimerl/slime) or fix the path.")
        slime = pk.get("slime") or {}
        if slime.get("present") and slime.get("train_py") is False:
            problems.append(f"node {node} has no train.py in slime_dir {cfg.paths.slime_dir}; set "
                            f"`slime_dir` to the slime checkout (the folder holding train.py and "
                            f"tools/).")
        torch = p.get("torch") or {}
        if not torch.get("version"):
            problems.append(f"node {node} has no usable torch in python3 "
                            f"({torch.get('error') or 'not installed'}); use the slime image's "
                            f"Python.")
        hf = p.get("hf_cli") or {}
        if node != head and storage_shared is True:
            pass  # with shared storage only the head downloads, so only it needs `hf`
        elif not hf.get("present"):
            problems.append(f"node {node} has no `hf` CLI on PATH; install huggingface_hub>=1.0 "
                            f"(`pip install -U huggingface_hub`) in the node's Python.")
        elif not hf.get("version"):
            problems.append(f"node {node} has an `hf` at {hf.get('path')} that does not run "
                            f"(`hf --version` failed); reinstall huggingface_hub>=1.0 "
                            f"(`pip install -U huggingface_hub`) in the node's Python.")
        elif _hf_version(hf["version"]) < MIN_HF_CLI:
            problems.append(f"node {node} has `hf` {hf['version']}, older than "
                            f"{MIN_HF_CLI[0]}.{MIN_HF_CLI[1]} (the first with `hf download`); "
                            f"upgrade it with `pip install -U huggingface_hub`.")
        disk = p.get("disk") or {}
        if not disk.get("writable"):
            problems.append(f"node {node} cannot write base_folder {cfg.paths.base_folder}; "
                            f"create it and make it writable by the SSH user, or choose another "
                            f"base_folder.")
    ray_versions = {}
    for node in nodes:
        ray = (probes[node].get("packages") or {}).get("ray") or {}
        if not ray.get("present"):
            continue  # reported as missing above
        # the `ray` on PATH is what runs `ray job submit`; the dist version is the fallback
        text = ray.get("cli_version") or ray.get("version")
        if ray_version_tuple(text) is None:
            shown = f"Ray version {str(text)[:40]!r}" if text else "no Ray version"
            problems.append(f"node {node} reports {shown}, so slimeflow cannot tell how `ray job "
                            f"submit` quotes the train.py arguments there; reinstall ray[default] "
                            f"(`pip install -U 'ray[default]'`) so that `ray --version` works.")
        else:
            ray_versions[node] = str(text).strip()
    head_ray = ray_versions.get(head)
    for node, version in ray_versions.items():
        if head_ray and version != head_ray:
            problems.append(f"node {node} runs Ray {version} but the head {head} runs Ray "
                            f"{head_ray}, and Ray nodes of different versions cannot form one "
                            f"cluster; install ray[default]=={head_ray} on {node}.")
    for node in nodes:
        nccl = probes[node].get("nccl")
        if not nccl or nccl.get("skipped"):
            continue
        if not nccl.get("ok"):
            problems.append(f"node {node}: NCCL could not run an all-reduce over its GPUs "
                            f"({nccl.get('error') or 'no result'}); check the driver, "
                            f"nvidia-fabricmanager and NCCL_* settings there, or set "
                            f"preflight_nccl=off to skip this check.")
            continue
        gpus = probes[node].get("gpus") or []
        floor, expected, source = nccl_floor(cfg.recipe.nccl_busbw_floor_gbps,
                                             gpus[0].get("name") if gpus else None, len(gpus),
                                             bool(probes[node].get("nvlink")))
        got = nccl.get("busbw_gbps") or 0
        if got < floor:
            against = (f"{FLOOR_FRACTION:.0%} of the {expected:g} GB/s that healthy "
                       f"{len(gpus)} x {gpus[0].get('name')} nodes reach ({source})"
                       if expected else source)
            problems.append(f"drain {node}: its NCCL all-reduce bus bandwidth is {got:g} GB/s, "
                            f"under the floor of {floor:g} GB/s ({against}); check `nvidia-smi "
                            f"topo -m`, `nvidia-smi nvlink --status` and nvidia-fabricmanager "
                            f"there, or remove {node} from `nodes`.")
    health = {"warn": [], "info": [], "marks": {}}
    for node in nodes:
        h = probes[node].get("health")
        if not (probes[node].get("gpus") or []):
            continue  # no GPU at all is reported above
        for f in grade_node(node, h):
            if f["grade"] == FAIL:
                problems.append(f["text"])
            else:
                health[f["grade"]].append(f["text"])
        if ((h or {}).get("xid") or {}).get("readable"):  # the trigger alerts on newer Xids
            health["marks"][node] = h.get("uptime")
    from slimeflow.hooks.ray import foreign_ray

    running = [n for n in nodes if (probes[n].get("ray_local") or {}).get("running")]
    if not ray_is_ours:
        problems += [foreign_ray(n, probes[n]["ray_local"]) for n in running]
    hp = probes[head]
    busy = [port for port, used in (hp.get("ports") or {}).items() if used]
    if busy and head not in running:  # a Ray there is judged above, whatever its ports
        problems.append(f"node {head} already has something listening on port(s) "
                        f"{', '.join(busy)} (another Ray cluster?); stop it (`ray stop` if it is "
                        f"left over from an earlier run) before starting this run.")
    if len(nodes) > 1 and storage_shared is not True:
        missing = storage_shared if isinstance(storage_shared, list) else nodes[1:]
        for node in missing:
            problems.append(f"node {node} cannot see the marker the head wrote under "
                            f"{cfg.paths.state_dir}; multi-node training needs base_folder on "
                            f"storage shared by every node (NFS, Lustre, ...): mount it there or "
                            f"train on one node.")
    need = disk_needed(cfg, hp, present or {})
    disk_nodes = [head] if storage_shared is True or len(nodes) == 1 else nodes
    for node in disk_nodes:
        free = (probes[node].get("disk") or {}).get("free_bytes")
        if free is not None and free < need["total"]:
            problems.append(
                f"node {node} has {free / GB:.1f} GB free at {cfg.paths.base_folder} but this run "
                f"needs about {need['total'] / GB:.1f} GB (HF checkpoint "
                f"{need['hf_checkpoint'] / GB:.1f} + datasets {need['datasets'] / GB:.1f} + "
                f"torch_dist {need['torch_dist'] / GB:.1f} + one training checkpoint "
                f"{need['checkpoint'] / GB:.1f}, sizes from the {need['source']}); free space or "
                f"choose a base_folder on a larger volume.")
    if "--optimizer-cpu-offload" in cfg.recipe.args.get("optimizer_args", ""):
        ram_need = need["params"] * OFFLOAD_RAM_BYTES_PER_PARAM / len(nodes)
        for node in nodes:
            total = (probes[node].get("ram") or {}).get("total_bytes")
            if total is not None and total < ram_need:
                problems.append(
                    f"node {node} has {total / GB:.0f} GB of RAM but the CPU-offloaded optimizer "
                    f"needs about {ram_need / GB:.0f} GB per node for this model (slime#1851); "
                    f"use nodes with more RAM or more nodes.")
    if problems:
        err = ClusterError(" ".join(problems))
        err.health = health  # the warnings still reach on-call when the node is refused
        raise err
    fla = {n: ((probes[n].get("packages") or {}).get("fla") or {}).get("wy_fast") for n in nodes}
    return {
        "gpu_name": ref_name[1] if ref_name else None,
        "cc_major": max(cc_majors) if cc_majors else None,
        "blackwell": 10 in cc_majors,
        "nvlink": all(probes[n].get("nvlink") for n in nodes),
        "storage_shared": bool(storage_shared) or len(nodes) == 1,
        "fla_wy_fast": fla,
        "disk_needed_bytes": int(need["total"]),
        "model_bytes_source": need["source"],
        # decides how the train.py arguments are quoted for `ray job submit` (builders)
        "ray_version": head_ray,
        # decides which sglang flag names train.py gets (builders.sglang_renames)
        "sglang_version": ((probes[head].get("packages") or {}).get("sglang") or {}).get("version"),
        # warn and info findings (the run goes on: check_cluster logs and alerts them), and
        # per node the kernel-log time (s since boot) after which an Xid is new to the trigger
        "health": health,
    }


# --- the train command line, parsed on the head (include/node/argvcheck.py) ------------------

PINNED = {"sglang": "0.5.15.post1", "megatron": "1dcf0dafa884ad52ffb243625717a3471643e087"}
SLIME_PATCH = "docker/patch/latest/megatron.patch"


def _short(commit) -> str:
    return (commit or "unknown")[:8]


def _parser_of(where, message) -> str:
    where = str(where or "")
    if "--sglang-" in str(message) or "sglang" in where:
        return "sglang's"
    if where.startswith("megatron"):
        return "Megatron's"
    return "slime's"


def judge_argv(cfg: RunConfig, result: dict) -> list:
    """One sentence per problem the head's own parsers found in the train command line: each
    names the node, the flag or module, the versions and the fix."""
    node = cfg.cluster.head
    slime = result.get("slime") or {}
    meg = result.get("megatron") or {}
    patch = meg.get("slime_patch")
    versions = (f"slime {_short(slime.get('commit'))}, Megatron-LM {_short(meg.get('commit'))} "
                f"(slime's Megatron patch {patch or 'unknown'}), sglang "
                f"{result.get('sglang') or 'not found'}, Python {result.get('python')}")
    problems = []
    dropped = result.get("dropped") or []
    if dropped:
        flags = ", ".join(dropped)
        it = "it" if len(dropped) == 1 else "them"
        if patch == "not applied":
            fix = (f"apply slime's {SLIME_PATCH} to {cfg.paths.megatron_dir} as slime's image does "
                   f"(`git apply {cfg.paths.slime_dir}/{SLIME_PATCH}` there)")
        else:
            fix = ("install the slime and Megatron-LM that know it (slime's image pins Megatron "
                   f"{_short(PINNED['megatron'])} with slime's patches)")
        problems.append(
            f"node {node} would drop {flags} without a word: none of slime's three parsers knows "
            f"{it} there ({versions}), so the model would be built without {it}; {fix}, or "
            f"remove {it} from extra_train_args if you added {it}.")
    err = result.get("error")
    if err:
        kind, msg, where = err.get("kind"), err.get("message", ""), err.get("where")
        if kind == "argv":
            parser = _parser_of(where, msg)
            fix = "fix that argument in the recipe or extra_train_args"
            if parser == "sglang's":
                fix = (f"install sglang {PINNED['sglang']} as slime's image does, or fix that "
                       f"argument in extra_train_args")
            problems.append(f"node {node}: {parser} parser rejects the train command line: "
                            f"\"{msg}\" ({versions}); {fix}. train.py would stop there at start, "
                            f"after Ray is up and the GPUs are reserved.")
        elif kind == "import" and "from 'typing'" in msg and \
                (version_tuple(result.get("python")) or (0, 0, 0)) < (3, 12, 0):
            problems.append(
                f"node {node}: Megatron-LM at {cfg.paths.megatron_dir} (commit "
                f"{_short(meg.get('commit'))}) needs Python 3.12 but python3 there is "
                f"{result.get('python')} (\"{msg}\" at {where}); check out the Megatron commit "
                f"slime's image pins ({_short(PINNED['megatron'])}) or use Python 3.12.")
        elif kind == "import":
            problems.append(f"node {node}: importing slime's argument parser failed there: "
                            f"\"{msg}\" at {where or 'unknown'} ({versions}); repair the slime, "
                            f"Megatron-LM or sglang install (train.py would fail the same way).")
        else:
            problems.append(f"node {node}: the train command line could not be checked with the "
                            f"node's own parsers ({kind}: {msg}); see the check_cluster log, or "
                            f"run include/node/argvcheck.py there by hand.")
    return problems
