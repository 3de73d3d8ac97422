"""train: start Ray, submit the slime job detached, follow it, hand back the checkpoint."""
from __future__ import annotations

import json
import time

from slimeflow.operators.base import SlimeOperator
from slimeflow.utils.lazy import LazyModule

builders = LazyModule("slimeflow.builders")
ray_hook = LazyModule("slimeflow.hooks.ray")


# the trigger samples every node's GPUs every this many polls (a minute at the default poll)
GPU_SAMPLE_POLLS = 4


class TrainingFailed(RuntimeError):
    pass


def run_deadline(context, cfg) -> dict:
    """When this run is overdue: the recipe's expected duration after the run was queued."""
    from slimeflow.operations import expected_hours

    run = context["dag_run"]
    start = getattr(run, "queued_at", None) or getattr(run, "start_date", None)
    hours = expected_hours(cfg.recipe, at_parse=False)
    base = start.timestamp() if start else time.time()
    return {"at": base + hours * 3600, "recipe": cfg.recipe.name, "expected_hours": hours,
            "dag_id": run.dag_id, "run_id": run.run_id, "started": str(start)}


class TrainOperator(SlimeOperator):
    """XCom: {save_dir, iteration, path} of the latest checkpoint.

    Deferrable. The job is submitted with `ray job submit --no-wait` under a submission id derived
    from the DAG and run ids, then the task defers to TrainJobTrigger, which follows the job from
    the triggerer (no worker slot is held while training). A run record on the head
    (<state_dir>/runs/<id>/attempts.json) lists every attempt, so a retry, a re-run or a restarted
    triggerer attaches to a PENDING/RUNNING job instead of starting a second one, and a job that
    FAILED (or was lost with its Ray cluster) is resubmitted under a new attempt id; slime then
    resumes from latest_checkpointed_iteration.txt in --load. See docs/supervision.md.
    """

    def work(self, cfg, context):
        facts = self.facts(context)
        if facts.get("blackwell") and not cfg.train.allow_blackwell_training:
            raise TrainingFailed(
                f"the nodes have Blackwell GPUs ({facts.get('gpu_name')}), and slime's Megatron "
                f"training does not support Blackwell yet; set allow_blackwell_training=true to "
                f"try anyway.")
        head = cfg.cluster.head
        base_id = builders.submission_id(context["dag"].dag_id, context["run_id"])
        self._cfg, self._base_id = cfg, base_id

        def fsops(*args):
            return self.run_json(cfg, builders.node_script(cfg, head, "fsops.py", *args))

        ray = self.ray(cfg)
        record = self.read_record(cfg, base_id)
        attempts = record.get("attempts", [])
        last = attempts[-1] if attempts else None
        if last and last.get("final") == "SUCCEEDED":
            self.log.info("[%s] job %s of this run already succeeded; not submitting again",
                          head, last["id"])
            return self.checkpoint(cfg, fsops)
        sub_id = last["id"] if last else base_id
        status = ray.job_state(sub_id)
        if status in ray_hook.ACTIVE:
            self.log.info("[%s] job %s is already %s; attaching to it (no second submission)",
                          head, sub_id, status)
            latest = fsops("latest-checkpoint", "--dir", cfg.paths.save_dir)
            return self.defer_to_trigger(cfg, base_id, sub_id, latest["iteration"],
                                         (last or {}).get("start_iteration", latest["iteration"]),
                                         context, facts)
        if status == "SUCCEEDED":
            self.log.info("[%s] job %s already succeeded", head, sub_id)
            self.update_attempt(cfg, base_id, sub_id, final="SUCCEEDED")
            return self.checkpoint(cfg, fsops)
        latest = fsops("latest-checkpoint", "--dir", cfg.paths.save_dir)
        it = latest["iteration"]
        if it is not None and it + 1 >= cfg.train.num_rollout:
            self.log.warning(
                "[%s] NOTHING TO TRAIN: %s already holds rollout %d and num_rollout is %d (a "
                "total, not an increment): there is nothing left to train, so no job is "
                "submitted and this task returns the existing checkpoint. Raise num_rollout to "
                "train further.", head, cfg.paths.save_dir, it, cfg.train.num_rollout)
            return self.checkpoint(cfg, fsops)
        if status in ("FAILED", "STOPPED") or (last is not None and last.get("submitted")):
            # the last attempt ended, or its Ray cluster is gone: resume under a new attempt id
            prev = sub_id
            sub_id = ray.free_attempt_id(base_id, len(attempts) + 1)
            self.log.info("[%s] attempt %s ended %s; resubmitting as %s, slime resumes from "
                          "%s", head, prev, status or "(lost with its Ray cluster)",
                          sub_id, f"iteration {it}" if it is not None else "scratch (no "
                          f"checkpoint in {cfg.paths.save_dir} yet)")
        if it is not None:
            self.log.warning("[%s] resuming: --load %s/ holds rollout %d; slime continues at %d "
                             "and stops at the total --num-rollout %d", head, cfg.paths.save_dir,
                             it, it + 1, cfg.train.num_rollout)
        else:
            self.log.info("[%s] starting fresh: %s holds no checkpoint; slime trains rollouts 0 "
                          "to %d", head, cfg.paths.save_dir, cfg.train.num_rollout - 1)
        try:  # a Ray version we cannot quote the entrypoint for: refuse before starting Ray
            builders.entry_quoting(facts, head)
        except ValueError as e:
            raise TrainingFailed(str(e)) from None
        self.record_attempt(cfg, base_id, record, sub_id, it, submitted=False)
        from slimeflow.secrets import ray_head_env

        # from the first `ray start` on, the Ray on these nodes is this run's (recorded before)
        ray.ensure_cluster(ray_hook.started_by_run(record), secret_env=ray_head_env(),
                           before_start=lambda: self.mark_record(cfg, base_id,
                                                                 ray_started=True))
        ray.submit(sub_id, facts)
        self._submitted = sub_id
        self.update_attempt(cfg, base_id, sub_id, submitted=True)
        return self.defer_to_trigger(cfg, base_id, sub_id, it, it, context, facts)

    # -- deferral -----------------------------------------------------------------------------

    def defer_to_trigger(self, cfg, base_id, sub_id, iteration, start_iteration, context, facts):
        from slimeflow.triggers.train_job import TrainJobTrigger

        head = cfg.cluster.head
        stop = builders.ray_job_cmd(cfg, "stop", sub_id)
        trigger = TrainJobTrigger(
            head=head, nodes=list(cfg.cluster.nodes), node_dir=builders.node_dir(cfg),
            base_id=base_id, sub_id=sub_id, watch_argv=watch_argv(cfg, base_id, sub_id,
                                                                   self._lease_run),
            stop_argv=stop.argv, stop_env=stop.env,
            ray_stop_argv=builders.ray_stop(cfg, head).argv, cwd=cfg.paths.slime_dir,
            total=cfg.train.num_rollout, poll_interval=cfg.train.poll_interval,
            unreachable_timeout=cfg.train.unreachable_timeout_s,
            stall_timeout=cfg.train.stall_timeout_s, start_iteration=start_iteration,
            deferred_at=time.time(), deadline=run_deadline(context, cfg),
            node_ips=ray_hook.ray_node_ips(cfg), save_dir=cfg.paths.save_dir,
            lease_stale=cfg.train.lease_stale_s if self._lease_run else None,
            hang_timeout=cfg.train.hang_timeout_s,
            health_interval=GPU_SAMPLE_POLLS * cfg.train.poll_interval,
            xid_marks=(facts.get("health") or {}).get("marks") or {},
            run_ref={"dag_id": context["dag"].dag_id, "run_id": context["run_id"]})
        self.log.info("[%s] deferring: the triggerer follows job %s every %ss (stall timeout "
                      "%.0fs, unreachable timeout %.0fs); progress in %s", head, sub_id,
                      cfg.train.poll_interval, cfg.train.stall_timeout_s,
                      cfg.train.unreachable_timeout_s, progress_path(cfg, base_id))
        self.close_hooks()
        self.defer(trigger=trigger, method_name="execute_complete",
                   kwargs={"sub_id": sub_id, "start_iteration": start_iteration})

    _lease_run = None
    _submitted = None
    _cfg = None

    def execute(self, context):
        self._lease_run = lease_run_key(context)
        try:
            return super().execute(context)
        except ray_hook.RayError as e:
            raise TrainingFailed(str(e)) from None

    def ray(self, cfg):
        from slimeflow.hooks.ray import RayClusterHook

        return RayClusterHook(cfg, self, self.log)

    def execute_complete(self, context, event=None, sub_id=None, start_iteration=None):
        cfg = self.run_config(context)
        head = cfg.cluster.head
        base_id = builders.submission_id(context["dag"].dag_id, context["run_id"])
        event = event or {}
        status = event.get("status")
        sub_id = event.get("sub_id") or sub_id
        if start_iteration is None:
            start_iteration = event.get("start_iteration")
        try:
            def fsops(*args):
                return self.run_json(cfg, builders.node_script(cfg, head, "fsops.py", *args))

            if status == "SUCCEEDED":
                self.update_attempt(cfg, base_id, sub_id, final="SUCCEEDED")
                ckpt = self.checkpoint(cfg, fsops)
                if (event.get("rollouts_seen") == 0 and start_iteration is not None
                        and ckpt["iteration"] == start_iteration):
                    self.log.warning(
                        "[%s] THE JOB TRAINED NOTHING: %s succeeded without a single rollout; "
                        "slime resumed from rollout %s in --load and --num-rollout %d is a "
                        "total, not an increment. Raise num_rollout to train further.", head,
                        sub_id, start_iteration, cfg.train.num_rollout)
                self.log.info("[%s] job %s succeeded; checkpoint %s (rollout %s)", head, sub_id,
                              ckpt["path"], ckpt["iteration"])
                return ckpt
            try:
                self.update_attempt(cfg, base_id, sub_id, final=status or "UNKNOWN")
            except Exception as e:  # UNREACHABLE: the head may still be out of reach
                self.log.warning("[%s] could not note the end of job %s in the run record (%s); "
                                 "a retry asks Ray for the job's state instead", head, sub_id, e)
            if status == "STALLED":
                # a hung job would be re-attached by a retry: stop it so the retry resumes
                # --no-wait: a hung trainer may not honour SIGTERM; teardown's `ray stop` ends it
                rc = self.ray(cfg).stop_job(sub_id, wait=False, timeout=120)
                self.log.warning("[%s] stopped the stalled job %s (exit %d)", head, sub_id, rc)
            raise TrainingFailed(event.get("message") or f"training job {sub_id} on node {head} "
                                 f"ended {status}")
        finally:
            self.close_hooks()

    def on_kill(self):
        """Killed on the worker before deferring (mark failed/success, clear, run cancelled):
        stop what this attempt submitted, then Ray on every node at once. Once deferred, the
        trigger's on_kill does this. The task supervisor SIGKILLs this process a few seconds
        after SIGTERM, so this is best effort; teardown runs `ray stop` again and checks it."""
        cfg, sub_id = self._cfg, self._submitted or self._base_id
        if cfg is None or sub_id is None:
            return
        from slimeflow.hooks.ray import NodeRunner, RayClusterHook
        from slimeflow.triggers.train_job import resume_note

        # no time to read the checkpoint here (SIGKILL follows): say where a resume starts
        self.log.warning("[%s] on_kill: stopping job %s; %s", cfg.cluster.head, sub_id,
                         resume_note(None, save_dir=cfg.paths.save_dir, known=False))
        runner = NodeRunner(self.log)
        ray = RayClusterHook(cfg, runner, self.log)
        try:
            try:  # only the request: the time goes to `ray stop`
                ray.stop_job(sub_id, wait=False, timeout=60)
            except Exception as e:  # best effort; teardown runs too
                self.log.warning("[%s] on_kill: ray job stop failed: %s", cfg.cluster.head, e)
            rcs = ray.stop_nodes(cfg.cluster.nodes)
            self.log.info("on_kill: ray stop exit codes %s", rcs)
        finally:
            runner.close()

    # -- run record -------------------------------------------------------------------------

    def write_record(self, cfg, base_id, record):
        self.run_json(cfg, builders.node_script(cfg, cfg.cluster.head, "fsops.py", "write-json",
                                                "--path", record_path(cfg, base_id),
                                                "--json", json.dumps(record)))

    def record_attempt(self, cfg, base_id, record, sub_id, start_iteration, submitted):
        record = dict(record)
        attempts = [a for a in record.get("attempts", []) if a["id"] != sub_id]
        attempts.append({"id": sub_id, "start_iteration": start_iteration,
                         "submitted": submitted, "at": time.time(), "final": None})
        record["attempts"] = attempts
        self.write_record(cfg, base_id, record)

    def mark_record(self, cfg, base_id, **fields):
        record = self.read_record(cfg, base_id)
        record.update(fields)
        self.write_record(cfg, base_id, record)

    def update_attempt(self, cfg, base_id, sub_id, **fields):
        record = self.read_record(cfg, base_id)
        for a in record.get("attempts", []):
            if a["id"] == sub_id:
                a.update(fields)
        self.write_record(cfg, base_id, record)

    def checkpoint(self, cfg, fsops) -> dict:
        latest = fsops("latest-checkpoint", "--dir", cfg.paths.save_dir)
        if latest["iteration"] is None:
            raise TrainingFailed(f"the job ended but {cfg.paths.save_dir} has no "
                                 f"latest_checkpointed_iteration.txt; nothing was saved (check "
                                 f"save_interval and the job log).")
        return {"save_dir": latest["save_dir"], "iteration": latest["iteration"],
                "path": latest["path"]}


def lease_run_key(context) -> str:
    return f"{context['dag'].dag_id}/{context['run_id']}"


def run_dir(cfg, base_id) -> str:
    return f"{cfg.paths.state_dir}/runs/{base_id}"


def record_path(cfg, base_id) -> str:
    return f"{run_dir(cfg, base_id)}/attempts.json"


def progress_path(cfg, base_id) -> str:
    return f"{run_dir(cfg, base_id)}/progress.json"


def lease_dir(cfg) -> str:
    return f"{cfg.paths.state_dir}/leases"


def watch_argv(cfg, base_id, sub_id, lease_run=None) -> list:
    """jobwatch.py's argv for one poll of `sub_id` (the trigger appends --offset etc.)."""
    args = ["--ray-job", sub_id, "--ray-address", builders.RAY_DASHBOARD,
            "--progress", progress_path(cfg, base_id), "--save-dir", cfg.paths.save_dir]
    if lease_run:
        args += ["--lease-dir", lease_dir(cfg), "--lease-run", lease_run]
        for n in cfg.cluster.nodes:
            args += ["--lease-node", n]
    return builders.node_script(cfg, cfg.cluster.head, "jobwatch.py", *args).argv
