"""Pure command builders: (RunConfig, facts) -> the argv/env/cwd of every remote step.

Nothing here touches the network. The DAG's operators and `python -m slimeflow plan` call the
same functions, so what `plan` prints is what runs.
"""
from __future__ import annotations

import functools
import hashlib
import json
import re
import shlex
from dataclasses import asdict, dataclass, field

from slimeflow.config import RunConfig
from slimeflow.recipes import ARG_GROUPS, include_dir

RAY_DASHBOARD = "http://127.0.0.1:8265"
# Ray's default grace between SIGTERM and SIGKILL for a stopped job is 3 s, shorter than an 80B
# checkpoint save; give the trainer time to finish writing before it is killed. The job
# supervisor reads it from ITS environment, which is the raylet's: it goes into `ray start`'s
# environment (head and workers); on `ray job stop` it would do nothing.
RAY_JOB_STOP_WAIT_TIME_S = "600"
# `ray stop` takes up to ~22 s for real (16 s grace, then raylet, the rest, gcs_server); every
# caller gives it a generous multiple of that.
RAY_STOP_TIMEOUT_S = 120
# Ray >= 2.56 joins `ray job submit -- TOKENS` with shlex.join on POSIX; older Ray with
# subprocess.list2cmdline. Both then run the line with shell=True on the head
# (ray/dashboard/modules/job/cli.py, job_supervisor.py).
SHLEX_JOIN_SINCE = (2, 56)
SECRET_ENV = ("HF_TOKEN", "WANDB_API_KEY")


@dataclass
class Step:
    node: str
    argv: list
    env: dict = field(default_factory=dict)
    cwd: str | None = None
    runtime_env: dict | None = None

    def public(self) -> dict:
        """The step as `plan` shows it and logs print it: secrets masked."""
        d = asdict(self)
        d["env"] = {k: ("***" if k in SECRET_ENV else val) for k, val in self.env.items()}
        if d["runtime_env"] is None:
            del d["runtime_env"]
        return d


# --- node scripts ---------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def node_bundle() -> tuple:
    """(digest, ((name, bytes), ...)) of include/node/*.py and include/patches/*.patch, read once
    per process so that the files uploaded are exactly the ones the digest names."""
    inc = include_dir()
    files = tuple((p.name, p.read_bytes()) for p in
                  sorted(inc.glob("node/*.py")) + sorted(inc.glob("patches/*.patch")))
    h = hashlib.sha256()
    for name, data in files:
        h.update(name.encode() + b"\0" + data + b"\0")
    return h.hexdigest()[:12], files


def node_bundle_digest() -> str:
    """The remote folder name: changed scripts land in a new folder, never over old ones."""
    return node_bundle()[0]


def node_dir(cfg: RunConfig) -> str:
    return f"{cfg.paths.state_dir}/node/{node_bundle_digest()}"


def node_script(cfg: RunConfig, node: str, script: str, *args, env=None, cwd=None) -> Step:
    return Step(node=node, argv=["python3", f"{node_dir(cfg)}/{script}", *args],
                env=dict(env or {}), cwd=cwd)


def hub_env(cfg: RunConfig) -> dict:
    env = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_UPDATE_CHECK": "1",
           "HF_XET_HIGH_PERFORMANCE": "1"}
    if cfg.source.hf_endpoint:
        env["HF_ENDPOINT"] = cfg.source.hf_endpoint
    return env


def hub_repos(cfg: RunConfig) -> list:
    """(repo_type, repo, revision, local dir) of everything the run downloads."""
    repos = [("model", cfg.source.hf_repo, cfg.source.hf_revision, cfg.paths.hf_checkpoint)]
    repos += [("dataset", d.repo, "main", cfg.paths.dataset_dir(d.local_name))
              for d in cfg.recipe.datasets]
    return repos


def preflight(cfg: RunConfig, node: str) -> Step:
    args = ["--base-folder", cfg.paths.base_folder, "--slime-dir", cfg.paths.slime_dir,
            "--megatron-dir", cfg.paths.megatron_dir,
            "--dcgm-level", str(cfg.train.dcgm_diag_level)]
    if node == cfg.cluster.head:
        for kind, repo, rev, _ in hub_repos(cfg):
            args += ["--hub-repo", f"{kind}:{repo}@{rev}"]
    return node_script(cfg, node, "probe.py", *args, env=hub_env(cfg))


def nccl_check(cfg: RunConfig, node: str) -> Step:
    """All-reduce over every GPU of the node (include/node/nccl_check.py). It never sets
    NCCL_NVLS_ENABLE: the node's own setting applies. 1 GiB: 256 MiB reaches only ~88% of the
    peak the floor is taken from (Azure ND H100 v5: 423 vs 479 GB/s at 8 GiB)."""
    return node_script(cfg, node, "nccl_check.py", "--gpus", str(cfg.cluster.gpus_per_node),
                       "--size-mb", "1024", "--iters", "10", "--timeout", "240")


# --- download -------------------------------------------------------------------------------

def hf_download(cfg: RunConfig, node: str, kind: str, repo: str, revision: str,
                local_dir: str) -> Step:
    argv = ["hf", "download", repo, "--local-dir", local_dir, "--revision", revision]
    if kind == "dataset":
        argv += ["--repo-type", "dataset"]
    return Step(node=node, argv=argv, env=hub_env(cfg), cwd=cfg.paths.base_folder)


def hf_verify(cfg: RunConfig, node: str, local_dir: str, fix: bool = False) -> Step:
    args = ["--local-dir", local_dir] + (["--fix"] if fix else [])
    return node_script(cfg, node, "hfverify.py", *args)


def download_nodes(cfg: RunConfig, storage_shared: bool) -> tuple:
    return (cfg.cluster.head,) if storage_shared else cfg.cluster.nodes


# --- fla patch ------------------------------------------------------------------------------

PATCH_NAME = "fla-wy-fast-sm100.patch"


def patch_fla(cfg: RunConfig, node: str) -> Step:
    return node_script(cfg, node, "flapatch.py", "--patch", f"{node_dir(cfg)}/{PATCH_NAME}",
                       "--apply")


def should_patch_fla(probes: list) -> bool:
    """The seed's rule: patch iff compute capability major == 10 and the line is still there."""
    def major(p):
        caps = [g.get("compute_cap") for g in p.get("gpus") or []]
        return {int(str(c).split(".")[0]) for c in caps if c}
    return any(10 in major(p) and (p.get("packages", {}).get("fla", {}).get("wy_fast")
                                  == "unpatched") for p in probes)


# --- convert --------------------------------------------------------------------------------

def _template_context(cfg: RunConfig, facts: dict) -> dict:
    num_layers = int(cfg.recipe.model_flag("--num-layers") or 0)
    nvls = cfg.train.nccl_nvls
    if nvls == "auto":
        nvls = "1" if facts.get("nvlink", True) else "0"
    return {
        "base": cfg.paths.base_folder, "hf_checkpoint": cfg.paths.hf_checkpoint,
        "torch_dist": cfg.paths.torch_dist, "save_dir": cfg.paths.save_dir,
        "megatron_dir": cfg.paths.megatron_dir, "slime_dir": cfg.paths.slime_dir,
        "num_rollout": cfg.train.num_rollout, "save_interval": cfg.train.save_interval,
        "nodes": len(cfg.cluster.nodes), "gpus_per_node": cfg.cluster.gpus_per_node,
        "cp": cfg.train.cp_size, "master_addr": cfg.cluster.master_addr,
        "socket_ifname": cfg.cluster.socket_ifname, "nccl_nvls": nvls,
        "moe_layer_freq": "[" + ",".join(["1"] * num_layers) + "]",
    }


def _expand(template: str, ctx: dict) -> list:
    # Split first, substitute second: a substituted value can never become two arguments.
    return [tok.format_map(ctx) for tok in shlex.split(template, comments=True)]


def model_args(cfg: RunConfig, facts: dict | None = None) -> list:
    return _expand(cfg.recipe.args["model_args"], _template_context(cfg, facts or {}))


def convert(cfg: RunConfig, facts: dict | None = None) -> Step:
    argv = ["torchrun", "--nproc-per-node", str(cfg.cluster.gpus_per_node),
            "tools/convert_hf_to_torch_dist.py", *model_args(cfg, facts),
            "--hf-checkpoint", cfg.paths.hf_checkpoint + "/", "--save", cfg.paths.torch_dist + "/"]
    return Step(node=cfg.cluster.head, argv=argv, cwd=cfg.paths.slime_dir,
                env={"PYTHONPATH": cfg.paths.megatron_dir + "/"})


def convert_manifest(cfg: RunConfig, hf_commit: str, facts: dict | None = None) -> dict:
    """What a torch_dist output was made from; a mismatch means it must be made again."""
    return {"recipe": cfg.recipe.name, "hf_repo": cfg.source.hf_repo, "hf_commit": hf_commit,
            "model_args": model_args(cfg, facts)}


# --- train ----------------------------------------------------------------------------------

# Flags that a newer sglang renamed, with the release that removed the old name and where it is
# documented: sglang 0.5.19 added --cuda-graph-bs-decode (and -prefill) and kept --cuda-graph-bs
# as a deprecated alias of -decode; 0.5.20 removed the alias (SLIME_FACTS.md, "Version drift").
SGLANG_RENAMES = (((0, 5, 20), "--sglang-cuda-graph-bs", "--sglang-cuda-graph-bs-decode"),)


def version_tuple(text) -> tuple | None:
    m = re.match(r"\s*(\d+)\.(\d+)\.(\d+)", str(text or ""))
    return tuple(int(x) for x in m.groups()) if m else None


def sglang_renames(sglang_version) -> list:
    """[(old flag, new flag, "0.5.20")] that the head's sglang needs."""
    v = version_tuple(sglang_version)
    if v is None:
        return []
    return [(old, new, ".".join(map(str, since))) for since, old, new in SGLANG_RENAMES
            if v >= since]


def train_args(cfg: RunConfig, facts: dict | None = None) -> list:
    """The train.py argument list, in the seed scripts' group order; flags that the head's
    sglang (facts["sglang_version"]) renamed are passed under their new name."""
    ctx = _template_context(cfg, facts or {})
    layout = cfg.layout
    args = _expand(layout.args.get("actor_args", ""), ctx)
    for group in ARG_GROUPS:
        template = layout.args[group] if group in layout.args else cfg.recipe.args[group]
        args += _expand(template or "", ctx)
    if cfg.train.grad_reduce_in_bf16:
        # the seed's advice when GPU memory runs out, applied where the seed comments it in
        args = ["--grad-reduce-in-bf16" if a == "--accumulate-allreduce-grads-in-fp32" else a
                for a in args]
    args = args + list(cfg.train.extra_train_args)
    renames = {old: new for old, new, _ in sglang_renames((facts or {}).get("sglang_version"))}
    return [renames.get(a, a) for a in args]


def argv_check(cfg: RunConfig, facts: dict | None = None) -> Step:
    """include/node/argvcheck.py on the head: the train.py arguments parsed by the head's own
    slime, Megatron and sglang (it puts slime_dir and megatron_dir first on its path, as the
    job's cwd and PYTHONPATH do)."""
    return node_script(cfg, cfg.cluster.head, "argvcheck.py", "--slime-dir", cfg.paths.slime_dir,
                       "--megatron-dir", cfg.paths.megatron_dir, "--", *train_args(cfg, facts),
                       cwd=cfg.paths.slime_dir)


def runtime_env(cfg: RunConfig, facts: dict | None = None) -> dict:
    ctx = _template_context(cfg, facts or {})
    env = {k: str(val).format_map(ctx) for k, val in cfg.layout.runtime_env.items()}
    if len(cfg.cluster.nodes) > 1:
        for k, val in cfg.layout.multi_node_runtime_env.items():
            env.setdefault(k, str(val).format_map(ctx))
    return {"env_vars": env}


def submission_id(dag_id: str, run_id: str) -> str:
    """One Ray job per DAG run: retries and re-runs find the same id instead of submitting again."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", run_id).strip("-")[:60]
    digest = hashlib.sha256(f"{dag_id}\0{run_id}".encode()).hexdigest()[:8]
    return f"slimeflow-{dag_id}-{slug}-{digest}"


def _ray_env(cfg: RunConfig) -> dict:
    """The environment of `ray start`, which the raylet and everything it starts inherit (the
    job supervisor reads RAY_JOB_STOP_WAIT_TIME_S from it)."""
    return {"PYTHONUNBUFFERED": "1", "no_proxy": f"127.0.0.1,{cfg.cluster.master_addr}",
            "RAY_JOB_STOP_WAIT_TIME_S": RAY_JOB_STOP_WAIT_TIME_S}


def ray_start_head(cfg: RunConfig, secret_env: dict | None = None) -> Step:
    """`secret_env` (secrets.ray_head_env(): WANDB_API_KEY) goes into the environment of the Ray
    daemons, which every job inherits; never into runtime_env (that is `ray job submit` argv)."""
    argv = ["ray", "start", "--head", "--node-ip-address", cfg.cluster.master_addr,
            "--num-gpus", str(cfg.cluster.gpus_per_node), "--disable-usage-stats",
            f"--dashboard-host={cfg.cluster.dashboard_host}", "--dashboard-port=8265"]
    return Step(node=cfg.cluster.head, argv=argv, env={**_ray_env(cfg), **(secret_env or {})},
                cwd=cfg.paths.slime_dir)


def ray_start_worker(cfg: RunConfig, node: str) -> Step:
    host = cfg.cluster.hosts[cfg.cluster.nodes.index(node)]
    argv = ["ray", "start", f"--address={cfg.cluster.master_addr}:6379",
            "--num-gpus", str(cfg.cluster.gpus_per_node), "--node-ip-address", host,
            "--disable-usage-stats"]
    return Step(node=node, argv=argv, env=_ray_env(cfg), cwd=cfg.paths.slime_dir)


def ray_version_tuple(text):
    """(major, minor) of a Ray version string such as 2.60.0 or 2.9.3rc1, else None."""
    m = re.match(r"\s*(\d+)\.(\d+)(?:[.\w+-]*)\s*$", str(text or ""))
    return (int(m.group(1)), int(m.group(2))) if m else None


def entry_quoting(facts: dict | None, node: str = "the head") -> str:
    """How this head's `ray job submit` turns the entrypoint tokens into its shell line:
    "shlex" (Ray >= 2.56: shlex.join) or "list2cmdline" (older Ray). check_cluster puts the
    head's Ray version into the facts (`ray_version`); without a version we cannot know which
    quoting reaches train.py intact, so we refuse rather than guess."""
    text = (facts or {}).get("ray_version")
    version = ray_version_tuple(text)
    if version is None:
        shown = "no Ray version" if not text else f"Ray version {str(text)[:40]!r}"
        raise ValueError(f"node {node} reports {shown}, so slimeflow cannot tell how its `ray "
                         f"job submit` quotes the train.py arguments; install ray[default] there "
                         f"(`pip install -U 'ray[default]'`) so that `ray --version` works, then "
                         f"clear check_cluster to probe it again.")
    return "shlex" if version >= SHLEX_JOIN_SINCE else "list2cmdline"


def _raw_token(tok: str) -> str:
    """One entrypoint token for Ray >= 2.56, passed as it is: shlex.join quotes it for the
    head's /bin/sh and sh takes the quotes off again, so train.py receives it byte for byte.
    Pre-quoting here would reach train.py WITH its quotes (seen: `'[1,1,1]'`). Only NUL cannot
    be an argv element at all."""
    if "\0" in tok:
        raise ValueError(f"train argument {tok[:60]!r} holds a NUL character, which no argv can "
                         f"carry; remove it.")
    return tok


def _entry_token(tok: str) -> str:
    """One entrypoint token for Ray < 2.56, quoted for the head's /bin/sh.

    That `ray job submit` joins the tokens with subprocess.list2cmdline (Windows quoting): a
    token holding whitespace or a double quote comes out wrapped in double quotes, inside which sh
    still expands $(...) and backticks, so shlex.quote alone would not protect it. Validation
    keeps such characters out of every param; this refuses them should a recipe ever hold one.
    """
    quoted = shlex.quote(tok)
    if not tok or any(c in quoted for c in ' \t\n\r"\\\0'):
        raise ValueError(f"train argument {tok[:60]!r} holds whitespace, a quote, a backslash "
                         f"or NUL, which cannot pass through Ray's entrypoint line intact; remove "
                         f"them.")
    return quoted


def entrypoint_tokens(entry: list, quoting: str) -> list:
    """The tokens after `ray job submit --` that make train.py receive exactly `entry`."""
    if quoting == "shlex":
        return [_raw_token(t) for t in entry]
    if quoting == "list2cmdline":
        return [_entry_token(t) for t in entry]
    raise ValueError(f"unknown entrypoint quoting {quoting!r}")


def train_entrypoint(cfg: RunConfig, facts: dict | None = None) -> list:
    """The argv the job's shell runs on the head: what `plan` shows and train.py receives."""
    return ["python3", "train.py", *train_args(cfg, facts)]


def ray_job_submit(cfg: RunConfig, sub_id: str, facts: dict | None = None) -> Step:
    renv = runtime_env(cfg, facts)
    quoting = entry_quoting(facts, cfg.cluster.head)
    argv = ["ray", "job", "submit", f"--address={RAY_DASHBOARD}",
            f"--runtime-env-json={json.dumps(renv)}", "--submission-id", sub_id, "--no-wait",
            "--", *entrypoint_tokens(train_entrypoint(cfg, facts), quoting)]
    return Step(node=cfg.cluster.head, argv=argv, cwd=cfg.paths.slime_dir, runtime_env=renv,
                env={"PYTHONUNBUFFERED": "1"})


def ray_job_cmd(cfg: RunConfig, verb: str, sub_id: str) -> Step:
    # no RAY_JOB_STOP_WAIT_TIME_S here: the CLI only posts the request; see _ray_env
    return Step(node=cfg.cluster.head,
                argv=["ray", "job", verb, f"--address={RAY_DASHBOARD}", sub_id],
                cwd=cfg.paths.slime_dir)


def ray_job_state(cfg: RunConfig, sub_id: str) -> Step:
    """The job's state from the dashboard's Jobs REST API, read on the head by
    include/node/raystate.py (the reader jobwatch.py uses on every poll): JSON with "status"."""
    return node_script(cfg, cfg.cluster.head, "raystate.py", "job", "--job", sub_id,
                       "--address", RAY_DASHBOARD)


def ray_stop(cfg: RunConfig, node: str) -> Step:
    return Step(node=node, argv=["ray", "stop"], cwd=cfg.paths.slime_dir)


def ray_node_state(cfg: RunConfig, node: str) -> Step:
    """Which raylets and GCS servers run on `node` (include/node/raystate.py)."""
    return node_script(cfg, node, "raystate.py", "local")


def ray_list_nodes(cfg: RunConfig) -> Step:
    """Every node the head's Ray knows, as JSON (Ray's State API; one entry per raylet, with
    its IP, ALIVE/DEAD and its GPUs). cluster.ray_start_plan reads it."""
    return Step(node=cfg.cluster.head,
                argv=["ray", "list", "nodes", "--format", "json", f"--address={RAY_DASHBOARD}",
                      "--limit", "10000"],
                cwd=cfg.paths.slime_dir)


# --- the whole plan -------------------------------------------------------------------------

def plan(cfg: RunConfig, facts: dict | None = None, dag_id: str | None = None,
         run_id: str = "manual__plan") -> dict:
    facts = facts or {}
    shared = facts.get("storage_shared", len(cfg.cluster.nodes) == 1)
    dl_nodes = download_nodes(cfg, shared)
    sub_id = submission_id(dag_id or cfg.recipe.dag_id, run_id)
    repos = hub_repos(cfg)
    steps = {
        "preflight": [preflight(cfg, n) for n in cfg.cluster.nodes],
        "download_model": [hf_download(cfg, n, *repos[0]) for n in dl_nodes],
        "download_datasets": [hf_download(cfg, n, *r) for r in repos[1:] for n in dl_nodes],
        "patch_fla": [patch_fla(cfg, n) for n in cfg.cluster.nodes],
        "convert": [convert(cfg, facts)],
        # Ray is checked first on every node; it is started only where none runs (after
        # `ray stop` where one does), or reused as it is when the whole cluster checks out
        "train": [ray_node_state(cfg, n) for n in cfg.cluster.nodes] + [ray_list_nodes(cfg)]
                 + [ray_start_head(cfg)] + [ray_start_worker(cfg, n) for n in cfg.cluster.workers]
                 + [ray_job_submit(cfg, sub_id, facts)],
        "teardown": [ray_job_cmd(cfg, "stop", sub_id)] + [ray_stop(cfg, n)
                                                           for n in cfg.cluster.nodes],
    }
    return {"recipe": cfg.recipe.name, "layout": cfg.layout.name,
            "ray_version": facts.get("ray_version"),
            # what train.py receives, whatever quoting the submit line needs for this Ray
            "train_py_argv": train_entrypoint(cfg, facts),
            "steps": {task: [s.public() for s in ss] for task, ss in steps.items()}}
