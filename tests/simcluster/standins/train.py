#!/usr/bin/env python3
"""slime ``train.py`` stand-in for the simulated cluster: a real Ray driver with slime's shape.

Launched as a Ray job entrypoint, ``ray job submit ... -- python3 train.py <slime args>``, on a
running Ray cluster (real Ray, ``ray.init()`` with no address joins it from inside a job). It needs
only the standard library and ``ray``; nothing of torch, Megatron or sglang.

Source it mirrors (read, not copied): THUDM/slime at commit 624b824a898ab0ec1fcb4d373004c7f3852bf515
(2026-08-21), files ``train.py`` (the driver loop), ``slime/ray/placement_group.py``
(create_placement_groups, _create_placement_group, create_rollout_manager, create_training_models),
``slime/ray/actor_group.py`` (RayTrainGroup), ``slime/ray/train_actor.py`` and
``slime/backends/megatron_utils/actor.py`` (MegatronTrainRayActor), ``slime/ray/rollout.py``
(RolloutManager), ``slime/rollout/data_source.py`` (global dataset state), ``slime/utils/arguments.py``
(slime_validate_args), ``slime/utils/misc.py`` (should_run_periodic_action),
``slime/observability/{logging_utils,timer,train_metric_utils,rollout_metrics}.py`` (log lines) and
``slime/backends/megatron_utils/{model,checkpoint}.py``. Megatron's checkpoint lines follow
NVIDIA/Megatron-LM ``megatron/training/checkpointing.py`` (``print_rank_0``, so plain prints).

Shape (as slime)
----------------
* Driver: prints ``slimeflow-standin argv: [...]`` (argv as one JSON list, first line of stdout),
  parses and validates the arguments (what slime's ``parse_args`` would reject fails here, before
  Ray), ``ray.init()``, then ``create_placement_groups`` -> ``create_rollout_manager`` ->
  ``create_training_models`` -> ``update_weights`` -> the rollout loop of slime's ``train.py``
  (eval at 0, generate, async_train, save_model + rollout_manager.save, update_weights, eval) ->
  ``rollout_manager.dispose``.
* Placement group: one PACK group of per-GPU bundles ``{"GPU": 1, "CPU": 1}``; actor GPUs
  (nodes x gpus per node) plus ``--rollout-num-gpus``, or ``max(actor, rollout)`` with
  ``--colocate``. It waits for the group without a bound, as slime does, logging
  ``Waiting for placement group of N GPUs (elapsed Es): T GPUs registered with Ray, A available.``
  every ``pg_wait_log_seconds`` (slime: 30). A layout that does not fit stays pending (the job stays
  RUNNING). Deviation: slime learns each bundle's node/GPU with one short-lived ``InfoActor`` per
  bundle; here the bundle->node map comes from ``ray.util.placement_group_table`` (no extra worker
  processes) and GPU ids are the bundle's ordinal on its node.
* ``RolloutManager`` actor (``num_cpus=1, num_gpus=0``, outside the placement group, as slime):
  reads ``--prompt-data`` / ``--eval-prompt-data`` (FileNotFoundError in its constructor, so the
  driver gets an ActorDiedError carrying it), logs ``perf {id}: {'rollout/...', 'perf/...'}`` per
  rollout and ``eval {id}: {'eval/<name>': ...}``, writes/reads
  ``<save>/rollout/global_dataset_state_dict_<id>.pt``. No sglang engines are started; the rollout
  bundles stay reserved but empty.
* ``MegatronTrainRayActor`` actors (``num_gpus=0.4, num_cpus=0.4`` in the bundles, with slime's
  ``RAY_EXPERIMENTAL_NOSET_*_VISIBLE_DEVICES`` env). They log through Python ``logging`` configured
  exactly like slime's ``configure_logger`` (``[%Y-%m-%d %H:%M:%S] file.py:N - msg``, file:line of
  slime's source), so Ray prefixes them ``(MegatronTrainRayActor pid=N[, ip=X])`` in the driver log:
  ``Timer <name> start|end (elapsed: Xs)`` (rank 0), ``rollout {id}: {'rollout/raw_reward': ...}``
  (rank 0), ``step {n}: {'train/loss': ..., 'train/grad_norm': ...}`` (the rank holding the last
  pipeline stage, dp 0, tp 0), ``perf {id}: {...}`` (rank 0). They load ``--load`` (or
  ``--ref-load``) and write the checkpoints.
* ``train_actors`` (sim.json): ``"per-node"`` (default) creates ONE training actor per node, on
  that node's first actor bundle, standing for all of the node's ranks (it writes their shards); the
  node's other bundles stay reserved. ``"per-gpu"`` creates one actor per GPU as slime does. Why
  per-node by default: this machine has 2 CPU cores; every Ray actor is its own ~90 MB python
  process that takes about a CPU-second to start, so a 2x8 layout per GPU means 16 workers (+1 for
  the RolloutManager) started two at a time; per node it is 2 (+1). The measured numbers are in
  tests/unit/test_train_standin_ray.py's module docstring.

Checkpoints and resume
----------------------
Layout as Megatron/slime: ``<save>/iter_%07d/`` (``__<rank>_0.distcp`` per rank, ``common.pt``,
``metadata.json``, ``.metadata``), then ``<save>/latest_checkpointed_iteration.txt`` (the rollout id,
written atomically by rank 0 after every rank's shard is there), then (RolloutManager)
``<save>/rollout/global_dataset_state_dict_<id>.pt``. Saves run when ``(id + 1) % --save-interval
== 0`` and at the last rollout. When ``--load`` holds a tracker the actors load it and the run starts
at id + 1; otherwise ``--load`` becomes ``--ref-load`` (slime_validate_args) and the run starts at
0. ``--num-rollout`` is a TOTAL: a finished run resumes into zero rollouts and succeeds.

Signals
-------
No handler of its own (slime installs none): ``ray.init`` installs Ray's (Python ``sys.exit`` plus
the core worker's ``*** SIGTERM received ...`` dump), so the driver exits at once, even during a
save; Ray then kills the job's actors (a save in flight is cut off, the tracker is not rewritten).
``ray job stop`` therefore ends the job STOPPED well inside ``RAY_JOB_STOP_WAIT_TIME_S`` (the
supervisor logs "terminated gracefully with SIGTERM"); a SIGTERM sent straight to the driver
process ends it with exit status 1, so the job is FAILED.

Faults
------
Files under ``$SIMCLUSTER_DIR/faults/``, looked at by the actors at the start of each rollout (and
``hang`` also inside long waits). Content may hold ``once`` (the first actor that fires it removes
the file; an atomic rename decides) and ``at=N`` (fire only at rollout id >= N).

* ``oom``: the actor holding rank 0 raises ``torch.OutOfMemoryError: CUDA out of memory. Tried to
  allocate ...`` in ``train``; the driver shows ``ray.exceptions.RayTaskError(OutOfMemoryError):
  ray::MegatronTrainRayActor.train() ...`` and the job FAILS.
* ``nccl``: that actor prints an ``NCCL WARN`` line and raises
  ``torch.distributed.DistBackendError: NCCL error in: ...ProcessGroupNCCL.cpp...``; job FAILS.
* ``exception``: the RolloutManager raises ``KeyError: 'label'`` in ``generate``; job FAILS.
* ``hang``: every actor blocks (RolloutManager in ``generate``, training actors in ``train``) and
  prints nothing while the file exists; progress resumes when it is removed.
* Killing an actor process from outside (SIGKILL): Ray's own ``ray.exceptions.ActorDiedError``
  in the driver, the job FAILS. Losing the actor's node (its raylet and workers SIGKILLed): Ray
  raises ``ray.exceptions.ActorUnavailableError`` (seen here; ActorDiedError once the GCS has
  marked the node dead), the job FAILS.

Finding the actors (for the fault injector)
-------------------------------------------
Under Ray the actor processes' command lines read ``ray::MegatronTrainRayActor`` (idle) or
``ray::MegatronTrainRayActor.<method>`` (busy), and ``ray::RolloutManager...``; they inherit the
raylet's environment (so ``SIMCLUSTER_DIR`` / ``SIMCLUSTER_NODE`` of the node that runs them).
When ``$SIMCLUSTER_DIR`` is set, each writes ``$SIMCLUSTER_DIR/actors/<key>/<name>.json`` once it
is up, with ``<key>`` the job's submission id (else the Ray job id hex) and ``<name>``
``MegatronTrainRayActor-<rank>`` (rank = the first rank it holds), ``RolloutManager`` or
``driver``. Fields: ``role``, ``pid`` (as seen inside the node's PID namespace: the ``pid=N`` of
Ray's log prefix), ``pid_ns`` (``readlink /proc/self/ns/pid``, e.g. ``pid:[4026532xxx]``; from the
host, the process is the one whose ``/proc/P/ns/pid`` is that link and whose ``NSpid:`` line in
``/proc/P/status`` ends with ``pid``), ``node`` (``$SIMCLUSTER_NODE`` or null), ``hostname``,
``ip``, ``rank``, ``ranks``, ``bundle_index``, ``actor_id``, ``job_id``, ``submission_id``,
``started`` (epoch seconds). The files are written atomically and never removed by the stand-in.

Other contracts
---------------
* ``$SIMCLUSTER_DIR/nodes/$SIMCLUSTER_NODE/train_argv.jsonl``: one ``{"argv": [...],
  "wandb_key_sha256": ...}`` per run (the driver), never the key itself.
* ``$SIMCLUSTER_DIR/sim.json`` keys (re-read every rollout): ``rollout_seconds`` (0.2; 60 % in
  generate, 30 % in train, 10 % in update_weights), ``save_seconds`` (0.05), ``startup_seconds``
  (0.0, in actor init), ``pg_wait_log_seconds`` (30), ``train_actors`` (``per-node``), ``gpu``
  (for the OOM text's capacity).
* Exit status: 0 on success; 1 on any exception (validation, actor errors) and after a SIGTERM;
  2 for an argument that is not a ``--flag`` or its value (``unrecognized arguments``).
* Outside a Ray job: argument errors and validation still answer as above, but where real slime's
  ``ray.init()`` would start a local Ray instance the stand-in exits 1 instead (``RAY_ADDRESS``
  unset: not a job entrypoint), so that no test ever starts Ray in the host's namespaces. The Ray
  job supervisor always sets ``RAY_ADDRESS`` for its entrypoint.
* Logs: the driver log is ``$RAY_TMPDIR/ray/session_latest/logs/job-driver-<submission id>.log``
  (Ray's temp dir is ``$RAY_TMPDIR/ray``); progress lines there carry Ray's prefix, e.g.
  ``\x1b[36m(MegatronTrainRayActor pid=565)\x1b[0m [2026-12-02 04:55:16] train_metric_utils.py:135 -
  rollout 0: {...}``; placement-group lines come from the driver without a prefix. Megatron's
  checkpoint lines are plain prints (stdout) while slime's records go to stderr, so their order in
  the log may interleave, as with real slime.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import random
import socket
import sys
import threading
import time

TRACKER = "latest_checkpointed_iteration.txt"
SLIME = "/root/slime/slime"  # where slime's files live in its image; used for the log records' paths
logger = logging.getLogger("slime")


# --------------------------------------------------------------------------------------------
# Logging as slime configures it (slime/observability/logging_utils.py: configure_logger)
# --------------------------------------------------------------------------------------------
def configure_logger() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(filename)s:%(lineno)d - %(message)s",
                        datefmt="%Y-%m-%d %H:%M:%S", force=True)


def slog(path: str, line: int, msg: str, level: int = logging.INFO) -> None:
    """One log record that names slime's file:line (the call site slime logs it from)."""
    if logger.isEnabledFor(level):
        logger.handle(logger.makeRecord(logger.name, level, f"{SLIME}/{path}", line, msg, None, None))


def mprint(msg: str) -> None:
    """Megatron's print_rank_0: a plain print."""
    print(msg, flush=True)


def timer_start(name: str) -> float:
    slog("observability/timer.py", 24, f"Timer {name} start")
    return time.time()


def timer_end(name: str, t0: float) -> None:
    slog("observability/timer.py", 32, f"Timer {name} end (elapsed: {time.time() - t0:.1f}s)")


# --------------------------------------------------------------------------------------------
# Simulation settings
# --------------------------------------------------------------------------------------------
def sim_dir() -> str | None:
    return os.environ.get("SIMCLUSTER_DIR") or None


def sim_conf() -> dict:
    conf = {"rollout_seconds": 0.2, "save_seconds": 0.05, "startup_seconds": 0.0, "pg_wait_log_seconds": 30,
            "train_actors": "per-node"}
    d = sim_dir()
    if d:
        try:
            with open(os.path.join(d, "sim.json")) as f:
                conf.update(json.load(f))
        except (OSError, ValueError):
            pass
    return conf


def atomic_write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp.{os.getpid()}.{threading.get_ident()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def record_process(args, name: str, role: str, **extra) -> None:
    """$SIMCLUSTER_DIR/actors/<key>/<name>.json: how the fault injector finds this process."""
    d = sim_dir()
    if not d:
        return
    try:
        pid_ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pid_ns = None
    info = {"role": role, "pid": os.getpid(), "pid_ns": pid_ns, "node": os.environ.get("SIMCLUSTER_NODE"),
            "hostname": socket.gethostname(), "ip": None, "actor_id": None, "job_id": None,
            "submission_id": args.sim_submission_id, "started": time.time(), **extra}
    try:
        import ray
        ctx = ray.get_runtime_context()
        info["job_id"] = ctx.get_job_id()
        info["actor_id"] = ctx.get_actor_id()
        info["ip"] = ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - best effort
        pass
    try:
        out = os.path.join(d, "actors", args.sim_job_key)
        os.makedirs(out, exist_ok=True)
        atomic_write(os.path.join(out, f"{name}.json"), (json.dumps(info) + "\n").encode())
    except OSError:
        pass


# --------------------------------------------------------------------------------------------
# Arguments: slime's parse_args (stand-in in slime/utils/arguments.py, with Megatron's parser from
# Megatron-LM on PYTHONPATH, as in slime's image). Every parser uses parse_known_args, so unknown
# `--flags` are dropped, as with real slime.
# --------------------------------------------------------------------------------------------
def _is_number(tok: str) -> bool:
    try:
        float(tok)
        return True
    except ValueError:
        return False


def parse_args(argv: list[str]):
    # Deviation: real slime also drops a stray token silently; the stand-in refuses a token that
    # comes before any --flag, or a single-dash one, so a broken argv is seen in tests.
    bad = []
    for i, tok in enumerate(argv):
        if tok.startswith("--") and len(tok) > 2:
            break
        bad.append(tok)
    bad += [t for t in argv if t.startswith("-") and not t.startswith("--") and not _is_number(t)
            and t not in bad]
    if bad:
        sys.stderr.write("usage: train.py [-h] [slime/Megatron-LM arguments ...]\n")
        sys.stderr.write(f"train.py: error: unrecognized arguments: {' '.join(bad)}\n")
        sys.exit(2)
    from slime.utils.arguments import parse_args as slime_parse_args

    sys.argv = ["train.py", *argv]
    return slime_parse_args()


def print_args(args) -> None:
    """Megatron's _print_args (plain prints in the driver)."""
    mprint("------------------------ arguments ------------------------")
    for k in sorted(vars(args)):
        if k.startswith("sim_"):
            continue
        mprint(f"  {k} {'.' * max(1, 48 - len(k))} {getattr(args, k)}")
    mprint("-------------------- end of arguments ---------------------")


def validate_args(args) -> None:
    """What slime's parse_args / slime_validate_args reject in the driver, before Ray."""
    if not args.hf_checkpoint or not os.path.isfile(os.path.join(args.hf_checkpoint, "config.json")):
        # transformers.AutoConfig.from_pretrained(args.hf_checkpoint) in slime/utils/arguments.py
        raise OSError(f"{args.hf_checkpoint} does not appear to have a file named config.json. Checkout "
                      f"'https://huggingface.co/{args.hf_checkpoint}/tree/None' for available files.")
    if args.rollout_temperature <= 0:
        raise ValueError("--rollout-temperature must be > 0; temperature 0 is greedy decoding and is not a "
                         "valid RL policy.")
    if args.kl_coef != 0 or args.use_kl_loss:
        if not args.ref_load or not os.path.exists(args.ref_load):
            raise FileNotFoundError(f"ref_load {args.ref_load} does not exist, please check the path.")
        if not os.path.exists(os.path.join(args.ref_load, TRACKER)):
            slog("utils/arguments.py", 1780,
                 f"ref_load {args.ref_load} does not have {TRACKER}, please make sure it is a valid megatron "
                 "checkpoint directory.")
    if args.colocate and args.rollout_num_gpus is None:
        args.rollout_num_gpus = args.actor_num_gpus_per_node * args.actor_num_nodes
    if args.rollout_num_gpus is None:
        args.rollout_num_gpus = 0
    load_is_megatron = bool(args.load) and os.path.exists(os.path.join(args.load, TRACKER))
    load_is_hf = bool(args.load) and os.path.isfile(os.path.join(args.load, "config.json"))
    args.finetune = False
    if not load_is_megatron:
        args.finetune = True
        if not load_is_hf:
            args.load = args.ref_load
        if args.start_rollout_id is None:
            args.start_rollout_id = 0
    if args.eval_prompt_data is not None and len(args.eval_prompt_data) % 2:
        raise AssertionError("--eval-prompt-data must be given as pairs: NAME PATH [NAME PATH ...]")
    if args.eval_interval is not None:
        assert args.eval_prompt_data, "Evaluation datasets must be configured when eval_interval is set."
    if args.save_interval is not None:
        assert args.save is not None, "'--save' is required when save_interval is set."
    if args.num_steps_per_rollout is not None and args.rollout_batch_size:
        args.global_batch_size = args.rollout_batch_size * args.n_samples_per_prompt // args.num_steps_per_rollout
    if args.num_epoch is not None:
        if args.num_rollout is not None:
            slog("utils/arguments.py", 1995, "Both num_epoch and num_rollout are set, num_epoch will be ignored.")
        else:
            assert args.rollout_global_dataset, ("num_epoch is set, but rollout_global_dataset is not set, "
                                                 "please remove --disable-rollout-global-dataset to use num_epoch")
    else:
        assert args.num_rollout is not None, ("num_epoch is not set, but num_rollout is not set, "
                                              "please set --num-rollout or --num-epoch")
    engine = args.rollout_num_gpus_per_engine
    assert not engine or args.rollout_num_gpus % engine == 0, (
        f"rollout_num_gpus ({args.rollout_num_gpus}) must be divisible by rollout_num_gpus_per_engine ({engine})")


def should_run_periodic_action(rollout_id, interval, num_rollout_per_epoch=None, num_rollout=None) -> bool:
    if interval is None:
        return False
    if num_rollout is not None and rollout_id == num_rollout - 1:
        return True
    step = rollout_id + 1
    return step % interval == 0 or (num_rollout_per_epoch is not None and step % num_rollout_per_epoch == 0)


# --------------------------------------------------------------------------------------------
# Faults ($SIMCLUSTER_DIR/faults/<kind>)
# --------------------------------------------------------------------------------------------
def _fault_words(kind: str):
    d = sim_dir()
    if not d:
        return None, None
    path = os.path.join(d, "faults", kind)
    try:
        with open(path) as f:
            return path, f.read().split()
    except OSError:
        return None, None


def fault_fires(kind: str, rollout_id: int) -> bool:
    """True when the fault file applies to this rollout; a `once` fault is claimed (renamed away
    atomically, so exactly one actor fires it) and removed."""
    path, words = _fault_words(kind)
    if path is None:
        return False
    at = 0
    for w in words:
        if w.startswith("at="):
            try:
                at = int(w[3:])
            except ValueError:
                pass
    if rollout_id < at:
        return False
    if "once" in words:
        claim = f"{path}.fired.{socket.gethostname()}.{os.getpid()}"
        try:
            os.rename(path, claim)
        except OSError:
            return False  # another actor fired it
        try:
            os.unlink(claim)
        except OSError:
            pass
    return True


def hang_point(rollout_id: int) -> None:
    """`hang`: no progress and no output while the file exists."""
    if not fault_fires("hang", rollout_id):
        return
    path = os.path.join(sim_dir() or "", "faults", "hang")
    while os.path.exists(path):
        time.sleep(0.2)


def _exc_class(module: str, name: str):
    # torch's own classes, without importing torch: the traceback's last line then reads
    # `torch.OutOfMemoryError: ...` and Ray's wrapper `RayTaskError(OutOfMemoryError)`.
    return type(name, (RuntimeError,), {"__module__": module})


OutOfMemoryError = _exc_class("torch", "OutOfMemoryError")
DistBackendError = _exc_class("torch.distributed", "DistBackendError")


def gpu_capacity_gib() -> float:
    name = sim_conf().get("gpu") or "H100"
    return {"H100": 79.19, "H200": 139.81, "B200": 178.36}.get(str(name), 79.19)


# --------------------------------------------------------------------------------------------
# Actors
# --------------------------------------------------------------------------------------------
class RolloutManager:
    """slime/ray/rollout.py RolloutManager, without sglang engines."""

    def __init__(self, args, pg):
        configure_logger()
        self.args, self.pg = args, pg
        self.data = self._read_prompts(args.prompt_data)
        if args.eval_prompt_data:
            for i in range(1, len(args.eval_prompt_data), 2):
                self._read_prompts(args.eval_prompt_data[i])
        self.sample_offset, self.epoch_id, self.metadata = 0, 0, {}
        fn = "slime.rollout.sglang_rollout.generate_rollout"
        slog("ray/rollout.py", 396, f"import {fn} as generate_rollout function.")
        slog("ray/rollout.py", 397, f"import {fn} as eval_generate_rollout function.")
        self.rnd = random.Random(f"{args.save}-rollout")
        record_process(args, "RolloutManager", "RolloutManager")

    @staticmethod
    def _read_prompts(path):
        n = 0
        # a missing file: FileNotFoundError in the constructor, as slime's Dataset reading it
        with open(path, "rb") as f:
            for _ in f:
                n += 1
        return n

    def get_num_rollout_per_epoch(self):
        assert self.args.rollout_global_dataset
        return self.data // self.args.rollout_batch_size

    def set_train_parallel_config(self, config):
        self.train_parallel_config = config

    def _convert_samples_to_train_data(self, samples):
        if fault_fires("exception", self.rollout_id):
            # the `exception` fault: a sample without its label
            raw_rewards = [sample["label"] for sample in samples]
            return raw_rewards
        return {"samples": len(samples)}

    def generate(self, rollout_id):
        t0 = time.time()
        self.rollout_id = rollout_id
        hang_point(rollout_id)
        conf = sim_conf()
        rs = float(conf.get("rollout_seconds", 0.2))
        time.sleep(rs * 0.6)
        hang_point(rollout_id)
        args, rnd = self.args, self.rnd
        n = (args.rollout_batch_size or 1) * args.n_samples_per_prompt
        trend = 1.0 - math.exp(-rollout_id / 100.0)
        resp_len = min(args.rollout_max_response_len, 1500 + 2500 * trend + rnd.uniform(-200, 200))
        elapsed = time.time() - t0
        slog("observability/rollout_metrics.py", 268,
             f"perf {rollout_id}: {{'rollout/response_len/mean': {resp_len:.1f}, "
             f"'rollout/truncated_ratio': {rnd.uniform(0, 0.05):.4f}, 'perf/rollout_time': {elapsed:.2f}, "
             f"'perf/tokens_per_gpu_per_sec': {rnd.uniform(900, 1300):.1f}, "
             f"'perf/longest_sample_tokens_per_sec': {rnd.uniform(40, 80):.1f}}}")
        samples = [{"reward": 0.0} for _ in range(min(n, 4))]
        data = self._convert_samples_to_train_data(samples)
        self.sample_offset += args.rollout_batch_size or 1
        return {"rollout_id": rollout_id, "n": n, "trend": trend, "resp_len": resp_len, **data}

    def eval(self, rollout_id):
        hang_point(rollout_id)
        trend = 1.0 - math.exp(-rollout_id / 100.0)
        name = self.args.eval_prompt_data[0]
        slog("observability/rollout_metrics.py", 247,
             f"eval {rollout_id}: {{'eval/{name}': {0.2 + 0.3 * trend + self.rnd.uniform(0, .05):.4f}, "
             f"'eval/{name}-truncated_ratio': {self.rnd.uniform(0, 0.1):.4f}}}")

    def save(self, rollout_id):
        if not self.args.rollout_global_dataset:
            return
        path = os.path.join(self.args.save, f"rollout/global_dataset_state_dict_{rollout_id}.pt")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        state = {"sample_offset": self.sample_offset, "epoch_id": self.epoch_id, "sample_group_index": 0,
                 "sample_index": 0, "metadata": self.metadata}
        with open(path, "wb") as f:
            pickle.dump(state, f)

    def load(self, rollout_id=None):
        if not self.args.rollout_global_dataset or self.args.load is None:
            return
        path = os.path.join(self.args.load, f"rollout/global_dataset_state_dict_{rollout_id}.pt")
        if not os.path.exists(path):
            slog("rollout/data_source.py", 147, f"Checkpoint {path} does not exist.")
            return
        slog("rollout/data_source.py", 150, f"load metadata from {path}")
        slog("rollout/data_source.py", 151, f"load metadata: {self.metadata}")
        with open(path, "rb") as f:
            state = pickle.load(f)
        self.sample_offset = state.get("sample_offset", 0)
        self.epoch_id = state.get("epoch_id", 0)
        self.metadata = state.get("metadata", {})

    def dispose(self):
        pass


class MegatronTrainRayActor:
    """slime/backends/megatron_utils/actor.py MegatronTrainRayActor; one actor may stand for
    several ranks (`ranks`), see the module docstring (train_actors)."""

    def __init__(self, world_size, rank, ranks, bundle_index, master_addr, master_port):
        configure_logger()
        self._world_size, self._rank, self._ranks = world_size, rank, list(ranks)
        if master_addr:
            self.master_addr, self.master_port = master_addr, master_port
        else:
            import ray
            self.master_addr = ray.util.get_node_ip_address()
            with socket.socket() as s:
                s.bind(("", 0))
                self.master_port = s.getsockname()[1]
        os.environ.update(MASTER_ADDR=self.master_addr, MASTER_PORT=str(self.master_port),
                          WORLD_SIZE=str(world_size), RANK=str(rank), LOCAL_RANK=str(rank % 8))
        self._bundle_index = bundle_index

    def get_master_addr_and_port(self):
        return self.master_addr, self.master_port

    # -- ranks this actor speaks for
    def _holds(self, rank: int) -> bool:
        return rank in self._ranks

    @property
    def _step_rank(self) -> int:
        # (pp last, dp 0, cp 0, tp 0) in Megatron's tp-cp-ep-dp-pp rank order
        pp = self.args.pipeline_model_parallel_size
        return (pp - 1) * (self._world_size // pp)

    def init(self, args, role, with_ref=False, with_opd_teacher=False):
        self.args, self.role = args, role
        record_process(args, f"MegatronTrainRayActor-{self._rank}", "MegatronTrainRayActor", rank=self._rank,
                       ranks=self._ranks, bundle_index=self._bundle_index)
        self.rnd = random.Random(f"{args.save}-{self._rank}")
        tp, pp, cp = (args.tensor_model_parallel_size, args.pipeline_model_parallel_size,
                      args.context_parallel_size)
        if self._world_size % (tp * pp * cp) != 0:  # megatron/core/parallel_state.py initialize_model_parallel
            raise RuntimeError(f"world_size ({self._world_size}) is not divisible by tensor_model_parallel_size "
                               f"({tp}) x pipeline_model_parallel_size ({pp}) x context_parallel_size ({cp})")
        time.sleep(float(sim_conf().get("startup_seconds", 0.0)))
        iteration = self._load_checkpoint(args.load, tp, pp)
        self.train_parallel_config = {"dp_size": self._world_size // (tp * pp * cp), "cp_size": cp, "vpp_size": 1,
                                      "microbatch_group_size_per_vp_stage": 1}
        self._train_wait = time.time()
        return iteration + 1

    def _load_checkpoint(self, load, tp, pp) -> int:
        """slime/backends/megatron_utils/checkpoint.py load_checkpoint + Megatron's."""
        assert load and os.path.isdir(load) and os.listdir(load), (
            f"args.load={load!r} does not exist or is an empty directory. Did you specify the wrong folder?")
        first = self._holds(0)
        tracker = os.path.join(load, TRACKER)
        if os.path.isfile(tracker):
            with open(tracker) as f:
                it = f.read().strip()
            release = it == "release"
            # garbage in the tracker: ValueError, as Megatron's int()
            iteration = 0 if release else int(it)
            if first:
                if release:
                    mprint(f" loading release checkpoint from {load}")
                else:
                    mprint(f" loading checkpoint from {load} at iteration {iteration}")
            if self.args.finetune:
                iteration = 0
            if first:
                mprint(f"  successfully loaded checkpoint from {load} [ t 1/{tp}, p 1/{pp} ] at iteration {iteration}")
            return iteration
        if os.path.isfile(os.path.join(load, "config.json")):
            if first:
                slog("backends/megatron_utils/checkpoint.py", 128,
                     f"Load checkpoint from HuggingFace model into Megatron (path={load})")
            return 0
        raise FileNotFoundError(f"{load} holds neither a Megatron checkpoint ({TRACKER}) nor a HuggingFace "
                                "checkpoint (config.json)")

    def set_rollout_manager(self, rollout_manager):
        self.rollout_manager = rollout_manager
        if self._holds(0):
            import ray
            ray.get(rollout_manager.set_train_parallel_config.remote(self.train_parallel_config))

    # -- training
    def train(self, rollout_id, rollout_data_ref, external_data=None):
        hang_point(rollout_id)
        first = self._holds(0)
        t_pre = timer_start("data_preprocess") if first else 0
        rollout_data = dict(rollout_data_ref)
        if first:
            timer_end("data_preprocess", t_pre)
        self.train_actor(rollout_id, rollout_data)

    def train_actor(self, rollout_id, rollout_data):
        args, rnd, first = self.args, self.rnd, self._holds(0)
        rs = float(sim_conf().get("rollout_seconds", 0.2))
        if first:
            timer_end("train_wait", self._train_wait)
        t_train = timer_start("train") if first else 0
        trend = rollout_data["trend"]
        if first:
            slog("observability/train_metric_utils.py", 135,
                 f"rollout {rollout_id}: {{'rollout/raw_reward': {0.25 + 0.45 * trend + rnd.uniform(-0.03, 0.03):.4f}, "
                 f"'rollout/response_lengths': {rollout_data['resp_len']:.1f}, "
                 f"'rollout/truncated': {rnd.uniform(0, 0.05):.4f}, "
                 f"'rollout/log_probs': {-0.3 - rnd.random() * 0.1:.4f}, "
                 f"'rollout/ref_log_probs': {-0.3 - rnd.random() * 0.1:.4f}}}")
        t_act = timer_start("actor_train") if first else 0
        self.train_one_step(rollout_id)
        hang_point(rollout_id)
        time.sleep(rs * 0.3)
        hang_point(rollout_id)
        gbs = args.global_batch_size or rollout_data["n"]
        steps = max(1, rollout_data["n"] // max(gbs, 1))
        if self._holds(self._step_rank):
            for k in range(steps):
                step = rollout_id * steps + k
                slog("backends/megatron_utils/model.py", 918,
                     f"step {step}: {{'train/loss': {rnd.uniform(-0.02, 0.02):.6f}, "
                     f"'train/pg_loss': {rnd.uniform(-0.02, 0.02):.6f}, 'train/entropy_loss': {0.4 - 0.1 * trend:.6f}, "
                     f"'train/pg_clipfrac': {rnd.uniform(0, 0.01):.6f}, 'train/ppo_kl': 0.0, "
                     f"'train/grad_norm': {rnd.uniform(0.05, 0.4):.6f}, 'train/lr-pg': {args.lr or 1e-6}, "
                     f"'train/global_batch_size': {gbs}, 'train/step': {step}}}")
        if first:
            timer_end("actor_train", t_act)
            timer_end("train", t_train)
            self._train_wait = timer_start("train_wait")
            slog("observability/train_metric_utils.py", 401,
                 f"perf {rollout_id}: {{'perf/actor_train_time': {rs * 0.3:.2f}, "
                 f"'perf/actor_train_tflops': {rnd.uniform(150, 260):.1f}, "
                 f"'perf/actor_train_tok_per_s': {rnd.uniform(9000, 13000):.1f}, "
                 f"'perf/train_wait_time': {rs * 0.7:.2f}, 'perf/train_time': {rs * 0.3:.2f}, "
                 f"'perf/step_time': {rs:.2f}, 'perf/wait_time_ratio': 0.7}}")

    def train_one_step(self, rollout_id):
        if self._holds(0) and fault_fires("oom", rollout_id):
            self.step_with_ready_grads()
        if self._holds(0) and fault_fires("nccl", rollout_id):
            self._communicate()

    def step_with_ready_grads(self):
        cap = gpu_capacity_gib()
        free = round(random.uniform(0.4, 1.6), 2)
        used = round(cap - free, 2)
        raise OutOfMemoryError(
            f"CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of {cap:.2f} GiB of which "
            f"{free:.2f} GiB is free. Including non-PyTorch memory, this process has {used:.2f} GiB memory in use. "
            f"Of the allocated memory {used - 3.1:.2f} GiB is allocated by PyTorch, and 2.31 GiB is reserved by "
            "PyTorch but unallocated. If reserved but unallocated memory is large try setting "
            "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation for Memory "
            "Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)")

    def _communicate(self):
        peer = self.master_addr
        host = socket.gethostname()
        sys.stderr.write(f"{host}:{os.getpid()}:{os.getpid() + 17} [{self._rank % 8}] NCCL WARN socketProgress: "
                         f"Connection closed by remote peer {peer}<49536>\n")
        sys.stderr.flush()
        raise DistBackendError(
            "NCCL error in: /pytorch/torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp:3356, unhandled system error "
            "(run with NCCL_DEBUG=INFO for details), NCCL version 2.27.3\n"
            "ncclSystemError: System call (e.g. socket, malloc) or external library call failed or device error. \n"
            "Last error:\n"
            f"socketProgress: Connection closed by remote peer {peer}<49536>")

    # -- checkpoints (Megatron torch_dist layout)
    def save_model(self, rollout_id, force_sync=False):
        args, first = self.args, self._holds(0)
        t0 = timer_start("save_model") if first else 0
        it_dir = os.path.join(args.save, f"iter_{rollout_id:07d}")
        if first:
            mprint(f"saving checkpoint at iteration {rollout_id:7d} to {args.save} in torch_dist format")
        os.makedirs(it_dir, exist_ok=True)
        rng = random.Random(rollout_id)
        for r in self._ranks:
            atomic_write(os.path.join(it_dir, f"__{r}_0.distcp"), rng.randbytes(2048 if args.no_save_optim else 4096))
        time.sleep(float(sim_conf().get("save_seconds", 0.05)))
        if first:
            # rank 0 finalizes once every rank's shard is there (Megatron: a barrier, then the tracker)
            deadline = time.time() + 600
            missing = list(range(self._world_size))
            while missing:
                missing = [r for r in missing if not os.path.exists(os.path.join(it_dir, f"__{r}_0.distcp"))]
                if missing and time.time() > deadline:
                    raise DistBackendError(f"[Rank 0] Watchdog caught collective operation timeout: barrier before "
                                           f"finalizing iter_{rollout_id:07d}; ranks {missing} never arrived")
                if missing:
                    time.sleep(0.05)
            with open(os.path.join(it_dir, "common.pt"), "wb") as f:
                pickle.dump({"iteration": rollout_id, "args": {"num_layers": args.num_layers}}, f)
            with open(os.path.join(it_dir, "metadata.json"), "w") as f:
                json.dump({"sharded_backend": "torch_dist", "sharded_backend_version": 1,
                           "common_backend": "torch", "common_backend_version": 1}, f)
            with open(os.path.join(it_dir, ".metadata"), "wb") as f:
                f.write(rng.randbytes(512))
            atomic_write(os.path.join(args.save, TRACKER), str(rollout_id).encode())
            mprint(f"  successfully saved checkpoint from iteration {rollout_id:7d} to {args.save} "
                   f"[ t 1/{args.tensor_model_parallel_size}, p 1/{args.pipeline_model_parallel_size} ]")
            timer_end("save_model", t0)

    def update_weights(self):
        first = self._holds(0)
        t0 = timer_start("update_weights") if first else 0
        time.sleep(float(sim_conf().get("rollout_seconds", 0.2)) * 0.1)
        if first:
            timer_end("update_weights", t0)

    def clear_memory(self):
        pass


# --------------------------------------------------------------------------------------------
# Driver side: placement groups and actor groups (slime/ray/placement_group.py, actor_group.py)
# --------------------------------------------------------------------------------------------
NOSET_VISIBLE_DEVICES_ENV_VARS_LIST = [
    "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES", "RAY_EXPERIMENTAL_NOSET_MUSA_VISIBLE_DEVICES",
    "RAY_EXPERIMENTAL_NOSET_ROCR_VISIBLE_DEVICES", "RAY_EXPERIMENTAL_NOSET_ASCEND_RT_VISIBLE_DEVICES",
    "RAY_EXPERIMENTAL_NOSET_HABANA_VISIBLE_MODULES", "RAY_EXPERIMENTAL_NOSET_NEURON_RT_VISIBLE_CORES",
    "RAY_EXPERIMENTAL_NOSET_TPU_VISIBLE_CHIPS", "RAY_EXPERIMENTAL_NOSET_ONEAPI_DEVICE_SELECTOR",
]


def placement_group_layout(args) -> tuple[int, int]:
    actor_gpus = args.actor_num_nodes * args.actor_num_gpus_per_node
    if args.colocate:
        return max(actor_gpus, args.rollout_num_gpus), 0
    return actor_gpus + args.rollout_num_gpus, actor_gpus


def _ip_key(ip: str):
    try:
        return [int(p) for p in ip.split(".")]
    except ValueError:
        return [ord(c) for c in ip]


def create_placement_group(num_gpus: int, conf: dict):
    import ray
    from ray.util.placement_group import placement_group, placement_group_table

    if num_gpus == 0:
        return None, [], []
    pg = placement_group([{"GPU": 1, "CPU": 1} for _ in range(num_gpus)], strategy="PACK")
    ready_ref = pg.ready()
    interval = float(conf.get("pg_wait_log_seconds", 30))
    elapsed = 0.0
    while not ray.wait([ready_ref], timeout=interval)[0]:
        elapsed += interval
        total = ray.cluster_resources().get("GPU", 0)
        available = ray.available_resources().get("GPU", 0)
        slog("ray/placement_group.py", 64, f"Waiting for placement group of {num_gpus} GPUs (elapsed {elapsed:g}s): "
                                           f"{total:g} GPUs registered with Ray, {available:g} available.")
    table = placement_group_table(pg)
    nodes = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes()}
    per_node: dict[str, int] = {}
    infos = []
    for i in range(num_gpus):
        node_id = table["bundles_to_node_id"][i]
        gpu = per_node.get(node_id, 0)
        per_node[node_id] = gpu + 1
        infos.append((i, nodes.get(node_id, node_id), gpu, node_id))
    order = sorted(infos, key=lambda x: (_ip_key(x[1]), x[2]))
    for i, info in enumerate(order):
        slog("ray/placement_group.py", 92,
             f"  bundle {i:4}, actual_bundle_index: {info[0]:4}, node: {info[1]}, gpu: {info[2]}")
    return pg, [x[0] for x in order], [x[3] for x in order]


def create_placement_groups(args, conf: dict) -> dict:
    num_gpus, rollout_offset = placement_group_layout(args)
    slog("ray/placement_group.py", 125, f"Creating placement group with {num_gpus} GPUs...")
    pg, bundles, node_ids = create_placement_group(num_gpus, conf)
    return {"actor": (pg, bundles, node_ids), "rollout": (pg, bundles[rollout_offset:], node_ids[rollout_offset:])}


class RayTrainGroup:
    def __init__(self, args, pg, conf):
        self.args, self._pg, self.conf = args, pg, conf
        self._actor_handlers = []

    def create(self, rollout_manager):
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        args = self.args
        world = args.actor_num_nodes * args.actor_num_gpus_per_node
        pg, bundles, node_ids = self._pg
        per_gpu = str(self.conf.get("train_actors", "per-node")) == "per-gpu"
        groups: dict = {}  # ranks by node, in rank order (per-gpu: one rank each)
        for rank in range(world):
            groups.setdefault(rank if per_gpu else node_ids[rank], []).append(rank)
        env_vars = {"NCCL_CUMEM_ENABLE": os.environ.get("NCCL_CUMEM_ENABLE", "0"),
                    "NVTE_FP8_BLOCK_SCALING_FP32_SCALES": os.environ.get("NVTE_FP8_BLOCK_SCALING_FP32_SCALES", "1"),
                    "RAY_USE_UVLOOP": "0", **{name: "1" for name in NOSET_VISIBLE_DEVICES_ENV_VARS_LIST}}
        cls = ray.remote(num_gpus=1, runtime_env={"env_vars": env_vars})(MegatronTrainRayActor)
        master_addr = master_port = None
        for ranks in groups.values():
            actor = cls.options(
                num_cpus=0.4, num_gpus=0.4,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=pg, placement_group_bundle_index=bundles[ranks[0]]),
            ).remote(world, ranks[0], ranks, bundles[ranks[0]], master_addr, master_port)
            if ranks[0] == 0:
                master_addr, master_port = ray.get(actor.get_master_addr_and_port.remote())
            self._actor_handlers.append(actor)
        start_ids = ray.get([a.init.remote(args, "actor", with_ref=args.kl_coef != 0 or args.use_kl_loss)
                             for a in self._actor_handlers])
        ray.get([a.set_rollout_manager.remote(rollout_manager) for a in self._actor_handlers])
        return start_ids

    def async_train(self, rollout_id, rollout_data_ref):
        return [a.train.remote(rollout_id, rollout_data_ref) for a in self._actor_handlers]

    def save_model(self, rollout_id, force_sync=False):
        import ray
        return ray.get([a.save_model.remote(rollout_id, force_sync=force_sync) for a in self._actor_handlers])

    def update_weights(self):
        import ray
        return ray.get([a.update_weights.remote() for a in self._actor_handlers])

    def clear_memory(self):
        import ray
        return ray.get([a.clear_memory.remote() for a in self._actor_handlers])


def train(args, conf: dict) -> None:
    """slime's train.py train(args)."""
    import ray

    pgs = create_placement_groups(args, conf)
    rollout_manager = ray.remote(RolloutManager).options(num_cpus=1, num_gpus=0,
                                                         runtime_env={"env_vars": {"RAY_USE_UVLOOP": "0"}}
                                                         ).remote(args, pgs["rollout"][0])
    num_rollout_per_epoch = None
    if args.num_rollout is None:
        num_rollout_per_epoch = ray.get(rollout_manager.get_num_rollout_per_epoch.remote())
        args.num_rollout = num_rollout_per_epoch * args.num_epoch
        assert args.num_rollout > 0

    actor_model = RayTrainGroup(args, pgs["actor"], conf)
    start_ids = actor_model.create(rollout_manager)
    assert len(set(start_ids)) == 1
    if args.start_rollout_id is None:
        args.start_rollout_id = start_ids[0]
    if args.rollout_global_dataset:
        ray.get(rollout_manager.load.remote(args.start_rollout_id - 1))

    actor_model.update_weights()

    if args.num_rollout == 0 and args.eval_interval is not None:
        ray.get(rollout_manager.eval.remote(rollout_id=0))

    for rollout_id in range(args.start_rollout_id, args.num_rollout):
        if args.eval_interval is not None and rollout_id == 0 and not args.skip_eval_before_train:
            ray.get(rollout_manager.eval.remote(rollout_id))
        rollout_data_ref = ray.get(rollout_manager.generate.remote(rollout_id))
        ray.get(actor_model.async_train(rollout_id, rollout_data_ref))
        if should_run_periodic_action(rollout_id, args.save_interval, num_rollout_per_epoch, args.num_rollout):
            actor_model.save_model(rollout_id, force_sync=rollout_id == args.num_rollout - 1)
            if args.rollout_global_dataset:
                ray.get(rollout_manager.save.remote(rollout_id))
        actor_model.clear_memory()
        actor_model.update_weights()
        if should_run_periodic_action(rollout_id, args.eval_interval, num_rollout_per_epoch):
            ray.get(rollout_manager.eval.remote(rollout_id))

    ray.get(rollout_manager.dispose.remote())


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------
def record_argv(argv: list[str]) -> None:
    """Append this run's exact argv to $SIMCLUSTER_DIR/nodes/<i>/train_argv.jsonl, with the sha256
    of WANDB_API_KEY, never the key itself."""
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


def submission_id() -> str | None:
    try:
        meta = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")).get("metadata") or {}
    except ValueError:
        return None
    return meta.get("job_submission_id")


def main(argv: list[str]) -> int:
    sys.stdout.write("slimeflow-standin argv: " + json.dumps(argv) + "\n")
    sys.stdout.flush()
    record_argv(argv)
    args = parse_args(argv)
    configure_logger()
    print_args(args)
    validate_args(args)
    conf = sim_conf()
    if not os.environ.get("RAY_ADDRESS"):
        # Real slime would let ray.init() start a local Ray instance here; on a shared test host that
        # is another user's Ray (and ~/.ray/auth_token) in the host's namespaces. Refuse instead.
        sys.stderr.write("train.py (simcluster stand-in): not running as a Ray job entrypoint (RAY_ADDRESS is "
                         "unset); refusing to start a local Ray instance. Submit it with `ray job submit`.\n")
        return 1

    import ray
    ray.init()
    args.sim_submission_id = submission_id()
    args.sim_job_key = args.sim_submission_id or ray.get_runtime_context().get_job_id()
    record_process(args, "driver", "driver")
    train(args, conf)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
