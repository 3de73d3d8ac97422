"""The trigger form: one Param per setting, each with a JSON schema and a description.

A deployment sets defaults (used by scheduled runs and pre-filled in the form) with environment
variables `SLIMEFLOW_DEFAULT_<NAME>`, e.g. SLIMEFLOW_DEFAULT_NODES='["gpu0","gpu1"]'.
"""
from __future__ import annotations

import json
import os

from slimeflow.recipes import Recipe

# The form's first line of defence; validation.py is the authority (and also refuses what a
# pattern cannot say, such as system folders). Patterns run under both Python's `re.search` and
# the browser's ECMAScript regex: Python's `$` also matches before a trailing newline, so each
# pattern ends with `(?![\s\S])` ("nothing follows"), which means the same in both.
_END = r"(?![\s\S])"
PATH_SCHEMA = {"type": "string", "minLength": 2, "maxLength": 1024,
               "pattern": r"^(?!.*(?:^|/)\.\.(?:/|$))/[A-Za-z0-9._/+@=,-]*" + _END}
_REPO_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
HF_REPO_PATTERN = rf"^(?!.*(?:--|\.\.))(?:{_REPO_PART}/)?{_REPO_PART}" + _END
REVISION_PATTERN = r"^(?!.*\.\.)(?:[0-9a-f]{40}|[A-Za-z0-9][A-Za-z0-9._/-]{0,199})" + _END
URL_PATTERN = r"^(?:https?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?(?:/[A-Za-z0-9._~/-]*)?)?" + _END
HOST_PATTERN = r"^(?:[A-Za-z0-9:][A-Za-z0-9.:-]{0,252})?" + _END
EXTRA_ARG_PATTERN = (r"^(?:--[a-z0-9][a-z0-9-]{0,99}|[A-Za-z0-9_.,:/=+@%\[\]][A-Za-z0-9_.,:/=+@%\[\]-]*"
                     r"|-?[0-9]+(?:\.[0-9]+)?(?:e-?[0-9]+)?)" + _END)


def _default(name: str, fallback):
    raw = os.environ.get(f"SLIMEFLOW_DEFAULT_{name.upper()}")
    if raw is None:
        return fallback
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def param_specs(recipe: Recipe) -> dict:
    """name -> (default, schema, title, description)."""
    layouts = ", ".join(f"{l.name} ({l.nodes or str(l.min_nodes) + '+'} node(s), "
                        f"{l.num_rollout} rollouts)" for l in recipe.layouts)
    return {
        "nodes": (["gpu_node_0"], {"type": "array", "minItems": 1, "maxItems": 64,
                                   "items": {"type": "string",
                                             "pattern": r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,249}" + _END}},
                  "Nodes", "SSH connection ids of the GPU nodes; the first is the head (Ray head, "
                  "downloads, conversion). Add nodes under Admin > Connections (type ssh, with "
                  f"host_key pinned). The node count picks the layout: {layouts}."),
        "master_addr": (None, {"type": ["null", "string"], "maxLength": 253, "pattern": HOST_PATTERN},
                        "Master address", "Address the other nodes reach the head at "
                        "(MASTER_ADDR, Ray's --node-ip-address). Empty: the head connection's host."),
        "socket_ifname": ("eth0", {"type": "string", "pattern": r"^[A-Za-z0-9_.:][A-Za-z0-9_.:-]{0,14}" + _END},
                          "Socket interface", "Network interface for GLOO/TP sockets on "
                          "multi-node runs (GLOO_SOCKET_IFNAME, TP_SOCKET_IFNAME)."),
        "base_folder": ("/root", PATH_SCHEMA, "Base folder", "Absolute folder on the nodes for "
                        "the HF checkpoint, datasets, torch_dist and training checkpoints. Must "
                        "be shared storage when there is more than one node."),
        "slime_dir": ("/root/slime", PATH_SCHEMA, "slime folder",
                      "Where slime is checked out on the nodes (cwd of conversion and training)."),
        "megatron_dir": ("/root/Megatron-LM", PATH_SCHEMA, "Megatron-LM folder",
                         "Megatron-LM checkout on the nodes (PYTHONPATH of the converter and job)."),
        "hf_repo": (recipe.hf_repo, {"type": "string", "maxLength": 193, "pattern": HF_REPO_PATTERN},
                    "Hugging Face repo", "Model repo to download; its config.json must match "
                    "the recipe's model arguments."),
        "hf_revision": ("main", {"type": "string", "maxLength": 200, "pattern": REVISION_PATTERN}, "Revision",
                        "Branch, tag or commit sha of the model repo."),
        "hf_endpoint": (None, {"type": ["null", "string"], "maxLength": 300, "pattern": URL_PATTERN},
                        "Hub endpoint",
                        "Optional Hugging Face mirror URL (HF_ENDPOINT). Empty: the nodes' own "
                        "setting or huggingface.co."),
        "gpus_per_node": (8, {"type": "integer", "minimum": 1, "maximum": 16}, "GPUs per node",
                          "GPUs on every node; preflight checks every node has exactly this many."),
        "grad_reduce_in_bf16": (False, {"type": "boolean"}, "Reduce grads in bf16",
                                "The seed's out-of-memory advice: drop "
                                "--accumulate-allreduce-grads-in-fp32 and add --grad-reduce-in-bf16."),
        "num_rollout": (None, {"type": ["null", "integer"], "minimum": 1, "maximum": 10000000},
                        "Rollouts (total)", "Total rollouts (slime's --num-rollout is a total, not "
                        "an increment). Empty: the layout's default."),
        # nullable: the form marks an empty non-null string as a missing required value
        "experiment": (None, {"type": ["null", "string"], "maxLength": 64,
                            "pattern": r"^(?!.*\.\.)(?:[A-Za-z0-9][A-Za-z0-9._-]{0,63})?" + _END},
                       "Experiment", "Names the checkpoint folder: <base_folder>/<model>_slime_"
                       "<experiment> (empty: <model>_slime, the seed's). Runs of one experiment "
                       "continue each other's training; a new name starts in an empty folder."),
        "start": ("resume", {"type": "string", "enum": ["resume", "fresh"]}, "Start",
                  "resume: continue from the latest checkpoint in the experiment's folder, if "
                  "any. fresh: train from rollout 0; refused before anything runs when the "
                  "folder already holds an earlier run's checkpoint (choose a new experiment "
                  "name: slimeflow never deletes checkpoints)."),
        "save_interval": (20, {"type": "integer", "minimum": 1, "maximum": 1000000},
                          "Save interval", "Save a checkpoint every this many rollouts."),
        "allow_blackwell_training": (False, {"type": "boolean"}, "Allow Blackwell training",
                                     "slime's Megatron training does not support Blackwell "
                                     "(B200/B300) yet; set to try anyway."),
        "extra_train_args": ([], {"type": "array", "maxItems": 200,
                                  "items": {"type": "string", "maxLength": 4096,
                                            "pattern": EXTRA_ARG_PATTERN}},
                             "Extra train.py args", "Appended to slime's train.py arguments, "
                             "one token per line: a flag on one line, each of its values on "
                             "the next (e.g. --lr, then 2e-6)."),
        "cp_size": (None, {"type": ["null", "integer"], "minimum": 1, "maximum": 64},
                    "Context parallel size", "Multi-node layout only. Empty: the seed's 4, or "
                    "the largest that fits the GPUs."),
        "nccl_nvls": ("auto", {"type": "string", "enum": ["auto", "0", "1"]}, "NCCL NVLS",
                      "NCCL_NVLS_ENABLE for the job; auto = on when nvidia-smi shows NVLink, as "
                      "the seed does."),
        "ray_dashboard_host": ("0.0.0.0", {"type": "string", "enum": ["0.0.0.0", "127.0.0.1"]},
                               "Ray dashboard bind address", "Where the head's Ray dashboard and "
                               "job API listen. 0.0.0.0 (the seed) lets anyone who reaches port "
                               "8265 run code on the nodes: firewall it, or choose 127.0.0.1 "
                               "(slimeflow submits jobs from the head itself; reach the dashboard "
                               "through an SSH tunnel). See docs/security.md."),
        # true/false stay valid: a run triggered with the old boolean must still resume (Airflow
        # re-validates a deferred task's params when it resumes)
        "preflight_nccl": ("auto", {"type": ["string", "boolean"],
                                    "enum": ["auto", "on", "off", True, False],
                                    "values_display": {"auto": "auto", "on": "on", "off": "off",
                                                       "true": "on (true)",
                                                       "false": "off (false)"}},
                           "NCCL check in preflight",
                           "Run an NCCL all-reduce over every GPU of each node in preflight and "
                           "fail check_cluster when NCCL cannot start or the bus bandwidth is far "
                           "below the recipe's floor. auto: on when a node has more than one GPU; "
                           "off where there is no CUDA (the simulated cluster)."),
        "poll_interval": (15, {"type": "integer", "minimum": 1, "maximum": 600},
                          "Poll interval (s)", "How often train checks the job and copies its "
                          "log into the task log."),
        "unreachable_timeout_minutes": (10, {"type": "number", "minimum": 0.01, "maximum": 100000},
                                        "Head unreachable timeout (min)",
                                        "train fails (cause: node lost) when the head node cannot "
                                        "be reached over SSH for this long. The job keeps running; "
                                        "a retry reattaches to it."),
        "stall_timeout_minutes": (None, {"type": ["null", "number"], "minimum": 0.01,
                                         "maximum": 100000},
                                  "Stall timeout (min)", "train stops the job and fails (cause: "
                                  "stalled) when no rollout line appears for this long. Empty: the "
                                  f"recipe's {recipe.stall_timeout_minutes} min."),
        "hang_timeout_minutes": (20, {"type": "number", "minimum": 0.01, "maximum": 100000},
                                 "NCCL hang timeout (min)", "train stops the job and fails "
                                 "(cause: NCCL hang; a retry resumes) when every GPU of a node "
                                 "has sat at high utilization on near-idle power, with no rollout "
                                 "line, for this long: a collective waiting on a peer. Well under "
                                 "the stall timeout, which catches every other silence."),
        "dcgm_diag_level": (1, {"type": "integer", "enum": [0, 1, 2]}, "DCGM diagnostics level",
                            "preflight runs `dcgmi diag -r <level>` on each node where dcgmi is "
                            "installed: 1 takes seconds, 2 a few minutes; 0 skips it."),
        "lease_wait_minutes": (10, {"type": "number", "minimum": 0, "maximum": 100000},
                               "Node lease wait (min)", "How long preflight waits for nodes that "
                               "another run holds before failing with that run's name."),
        "lease_stale_minutes": (15, {"type": "number", "minimum": 0.01, "maximum": 100000},
                                "Stale lease age (min)", "A node lease whose heartbeat is older "
                                "than this, and whose Ray job is not running, is broken."),
    }


def build_params(recipe: Recipe) -> dict:
    from airflow.sdk import Param

    out = {}
    for name, (default, schema, title, desc) in param_specs(recipe).items():
        out[name] = Param(_default(name, default), title=title, description=desc, **schema)
    return out
