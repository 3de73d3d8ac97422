"""train: start Ray, submit the slime job detached, follow it, hand back the checkpoint."""
from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

from slimeflow import builders
from slimeflow.operators.base import SlimeOperator
from slimeflow.utils import nodescripts


def parse_job_status(text: str, sub_id: str):
    """The state of job `sub_id` in `ray job status` output: PENDING/RUNNING/SUCCEEDED/FAILED/
    STOPPED, MISSING (Ray does not know it), NO_CLUSTER (no Ray answers), or None. The parser is
    include/node/raystate.py's (its CLI fallback); job_status itself reads the REST API."""
    return nodescripts.load("raystate").job_state(text, sub_id)


# Right after `ray start`, the dashboard can answer a submit with HTTP 500 "No available agent
# to submit job, please try again later." until the head's job agent registers. Only that is
# retried, for at most SUBMIT_RETRY_S.
NO_AGENT = "No available agent to submit job"
SUBMIT_RETRY_S = 60
SUBMIT_RETRY_PAUSE_S = 3


def submit_failure(text: str, sub_id: str) -> str:
    """'no_agent' (retry), 'exists' (a job with this id is already there) or 'other'."""
    if NO_AGENT in text:
        return "no_agent"
    if f"Job with submission_id {sub_id} already exists" in text:
        return "exists"
    return "other"


TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


class TrainingFailed(RuntimeError):
    pass


def run_deadline(context, cfg) -> dict:
    """When this run is overdue: the recipe's expected duration after the run was queued."""
    from slimeflow.operations import expected_hours

    run = context["dag_run"]
    start = getattr(run, "queued_at", None) or getattr(run, "start_date", None)
    hours = expected_hours(cfg.recipe)
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

        record = self.read_record(cfg, base_id)
        attempts = record.get("attempts", [])
        last = attempts[-1] if attempts else None
        if last and last.get("final") == "SUCCEEDED":
            self.log.info("[%s] job %s of this run already succeeded; not submitting again",
                          head, last["id"])
            return self.checkpoint(cfg, fsops)
        sub_id = last["id"] if last else base_id
        status = self.job_status(cfg, sub_id)
        if status in ACTIVE:
            self.log.info("[%s] job %s is already %s; attaching to it (no second submission)",
                          head, sub_id, status)
            latest = fsops("latest-checkpoint", "--dir", cfg.paths.save_dir)
            return self.defer_to_trigger(cfg, base_id, sub_id, latest["iteration"],
                                         (last or {}).get("start_iteration", latest["iteration"]),
                                         context)
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
            sub_id = self.next_attempt_id(cfg, base_id, len(attempts) + 1)
            self.log.info("[%s] attempt %s ended %s; resubmitting as %s, slime resumes from "
                          "%s", head, prev, status or "(lost with its Ray cluster)",
                          sub_id, f"iteration {it}" if it is not None else "scratch (no "
                          f"checkpoint in {cfg.paths.save_dir} yet)")
        if it is not None:
            self.log.warning("[%s] resuming: --load %s/ holds rollout %d; slime continues at %d "
                             "and stops at the total --num-rollout %d", head, cfg.paths.save_dir,
                             it, it + 1, cfg.train.num_rollout)
        try:  # a Ray version we cannot quote the entrypoint for: refuse before starting Ray
            builders.entry_quoting(facts, head)
        except ValueError as e:
            raise TrainingFailed(str(e)) from None
        # Ray found running on a node is this run's only if this run started Ray before (the
        # record says so; records from before that flag: an attempt was submitted)
        started_by_run = bool(record.get("ray_started")) or any(a.get("submitted")
                                                                for a in attempts)
        self.record_attempt(cfg, base_id, record, sub_id, it, submitted=False)
        self.start_ray(cfg, base_id, started_by_run)
        self.submit(cfg, sub_id, facts)
        self._submitted = sub_id
        self.update_attempt(cfg, base_id, sub_id, submitted=True)
        return self.defer_to_trigger(cfg, base_id, sub_id, it, it, context)

    # -- deferral -----------------------------------------------------------------------------

    def defer_to_trigger(self, cfg, base_id, sub_id, iteration, start_iteration, context):
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
            node_ips=ray_node_ips(cfg), save_dir=cfg.paths.save_dir,
            lease_stale=cfg.train.lease_stale_s if self._lease_run else None)
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
        return super().execute(context)

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
            self.update_attempt(cfg, base_id, sub_id, final=status or "UNKNOWN")
            if status == "STALLED":
                # a hung job would be re-attached by a retry: stop it so the retry resumes
                # --no-wait: a hung trainer may not honour SIGTERM; teardown's `ray stop` ends it
                step = builders.ray_job_cmd(cfg, "stop", sub_id)
                step.argv.append("--no-wait")
                res = self.run_step(cfg, step, check=False, timeout=120, log=None)
                self.log.warning("[%s] stopped the stalled job %s (exit %d)", head, sub_id,
                                 res.rc)
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
        from slimeflow.hooks.node import NodeHook

        def run(node, step, timeout):
            hook = NodeHook(ssh_conn_id=node)
            try:
                res = hook.run(step, builders.node_dir(cfg), check=False, timeout=timeout)
                self.log.info("[%s] on_kill: %s -> exit %d", node, " ".join(step.argv[:3]),
                              res.rc)
            except Exception as e:  # best effort; teardown runs too
                self.log.warning("[%s] on_kill: %s failed: %s", node, step.argv[:3], e)
            finally:
                if getattr(hook, "client", None):
                    hook.client.close()

        from slimeflow.triggers.train_job import resume_note

        # no time to read the checkpoint here (SIGKILL follows): say where a resume starts
        self.log.warning("[%s] on_kill: stopping job %s; %s", cfg.cluster.head, sub_id,
                         resume_note(None, save_dir=cfg.paths.save_dir, known=False))
        stop = builders.ray_job_cmd(cfg, "stop", sub_id)
        stop.argv.append("--no-wait")  # only the request: the time goes to `ray stop`
        run(cfg.cluster.head, stop, 60)
        nodes = list(cfg.cluster.nodes)
        with ThreadPoolExecutor(max_workers=min(16, len(nodes))) as pool:
            list(pool.map(lambda n: run(n, builders.ray_stop(cfg, n),
                                        builders.RAY_STOP_TIMEOUT_S), nodes))

    # -- run record -------------------------------------------------------------------------

    def read_record(self, cfg, base_id) -> dict:
        res = self.run_json(cfg, builders.node_script(cfg, cfg.cluster.head, "fsops.py",
                                                      "read-text", "--path",
                                                      record_path(cfg, base_id)))
        if not res.get("exists"):
            return {"submission_id": base_id, "attempts": []}
        try:
            return json.loads(res["text"])
        except ValueError:
            return {"submission_id": base_id, "attempts": []}

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

    # -- Ray ------------------------------------------------------------------------------

    def job_status(self, cfg, sub_id):
        """A Ray job state, None when Ray does not know the job, 'NO_CLUSTER' without Ray.

        Read on the head by `raystate.py job` (the Jobs REST API, the same reader as jobwatch's
        polls) instead of `ray job status`, which imports Ray for one GET. A dead dashboard
        with a live GCS is refused: the job may still run, and resubmitting or restarting Ray
        there would kill it."""
        res = self.run_json(cfg, builders.ray_job_state(cfg, sub_id), timeout=120)
        state = res.get("status")
        if state == "MISSING":  # HTTP 404 "Job ID does not exist"
            return None
        if state == "DASHBOARD_DOWN":
            raise TrainingFailed(
                f"Ray's dashboard on node {cfg.cluster.head} does not answer but its GCS does "
                f"({res.get('text')}), so train cannot tell whether job {sub_id} still runs; "
                f"look at dashboard.log in the head's Ray session logs, or run `ray stop` on "
                f"every node (a running job then loses its work since its last checkpoint), "
                f"then clear the task.")
        return state if state and state not in ("NO_CLUSTER", "UNKNOWN") else "NO_CLUSTER"

    def next_attempt_id(self, cfg, base_id, n):
        while self.job_status(cfg, f"{base_id}-a{n}") not in (None, "NO_CLUSTER"):
            n += 1
        return f"{base_id}-a{n}"

    def start_ray(self, cfg, base_id, started_by_run):
        """Ray on every node, never a second raylet: a real `ray start --address` on a node
        that already runs Ray starts another raylet (and the cluster counts the node twice),
        and `ray start --head` on a running head refuses. So every node is asked first
        (raystate.py), and cluster.ray_start_plan decides: reuse, or stop then start."""
        from slimeflow.cluster import ClusterError, parse_ray_nodes, ray_start_plan
        from slimeflow.secrets import ray_head_env

        head, nodes = cfg.cluster.head, list(cfg.cluster.nodes)
        local = self.ray_on_nodes(cfg, nodes)
        alive = None
        if (local.get(head) or {}).get("running"):
            res = self.run_step(cfg, builders.ray_list_nodes(cfg), check=False, log=None,
                                timeout=120)
            alive = parse_ray_nodes(res.stdout) if res.rc == 0 else None
        try:
            plan = ray_start_plan(cfg, local, alive, started_by_run)
        except ClusterError as e:
            raise TrainingFailed(str(e)) from None
        if plan.reuse:
            self.log.info("[%s] reusing Ray: %s (ray list nodes)", head, plan.reason)
            return
        # from here on, the Ray on these nodes is this run's (written before any `ray start`)
        self.mark_record(cfg, base_id, ray_started=True)
        if plan.stop:
            self.log.warning("[%s] Ray runs on %s but cannot be reused (%s): `ray stop` there "
                             "first, then start Ray on every node", head,
                             ", ".join(plan.stop), plan.reason)
            rcs = self.on_nodes(plan.stop, lambda n: self.run_step(
                cfg, builders.ray_stop(cfg, n), check=False,
                timeout=builders.RAY_STOP_TIMEOUT_S).rc)
            left = {n: st for n, st in self.ray_on_nodes(cfg, plan.stop).items()
                    if st.get("running")}
            if left:
                n, st = next(iter(left.items()))
                pids = [r.get("pid") for r in st.get("raylets") or []] + list(
                    st.get("gcs_servers") or [])
                raise TrainingFailed(
                    f"`ray stop` on node {n} (exit {rcs.get(n)}) left Ray processes running "
                    f"(pids {', '.join(map(str, pids))}); run `ray stop --force` there, then "
                    f"clear the train task.")

        # secrets (W&B key) ride in the head's environment via runner.py's stdin: every job
        # inherits them, and they never appear in --runtime-env-json or any other argv
        head_step = builders.ray_start_head(cfg, secret_env=ray_head_env())
        res = self.run_step(cfg, head_step, check=False, timeout=300)
        if res.rc != 0:
            raise TrainingFailed(f"`ray start --head` failed on node {head} (exit "
                                 f"{res.rc}): {' | '.join(res.tail[-6:])}; check master_addr and "
                                 f"that ports 6379/8265 are free.")

        def worker(node):
            r = self.run_step(cfg, builders.ray_start_worker(cfg, node), check=False,
                              timeout=300)
            if r.rc != 0:
                raise TrainingFailed(
                    f"`ray start` on worker node {node} could not join {cfg.cluster.master_addr}"
                    f":6379 (exit {r.rc}): {' | '.join(r.tail[-4:])}; check that the worker "
                    f"can reach master_addr and that socket_ifname is right.")
        workers = [n for n in plan.start if n != head]
        if workers:
            self.on_nodes(workers, worker)

    def ray_on_nodes(self, cfg, nodes) -> dict:
        """{node: raystate.py local} (raylets and GCS servers running there), all at once."""
        return self.on_nodes(nodes, lambda n: self.run_json(
            cfg, builders.ray_node_state(cfg, n), timeout=60))

    # overridable in tests: the submit retry never waits for real there
    _clock = staticmethod(time.monotonic)
    _sleep = staticmethod(time.sleep)

    def submit(self, cfg, sub_id, facts):
        try:
            step = builders.ray_job_submit(cfg, sub_id, facts)
        except ValueError as e:  # a Ray version we cannot quote for
            raise TrainingFailed(str(e)) from None
        self.log.info("runtime env: %s", json.dumps(step.runtime_env))
        self.log.info("entrypoint (what train.py receives): %s",
                      " ".join(builders.train_entrypoint(cfg, facts)))
        deadline = self._clock() + SUBMIT_RETRY_S
        retried = False
        while True:
            res = self.run_step(cfg, step, check=False, timeout=300)
            if res.rc == 0:
                return
            why = submit_failure(res.stdout + "\n" + res.stderr, sub_id)
            if why == "exists" and retried:
                # a submit that timed out inside Ray can still have created the job; the id is
                # this attempt's own, so it is the job we asked for
                self.log.info("[%s] job %s exists after a retried submit: it was submitted",
                              cfg.cluster.head, sub_id)
                return
            if why == "no_agent" and self._clock() < deadline:
                self.log.warning("[%s] Ray's job agent is not up yet (HTTP 500: No available "
                                 "agent to submit job); retrying `ray job submit` in %d s (for "
                                 "up to %d s)", cfg.cluster.head, SUBMIT_RETRY_PAUSE_S,
                                 SUBMIT_RETRY_S)
                retried = True
                self._sleep(SUBMIT_RETRY_PAUSE_S)
                continue
            hint = (f"; Ray's job agent on the head did not come up within {SUBMIT_RETRY_S} s: "
                    f"look at dashboard_agent.log under the head's Ray session logs"
                    if why == "no_agent" else "")
            raise TrainingFailed(f"`ray job submit` failed on node {cfg.cluster.head} (exit "
                                 f"{res.rc}): {' | '.join(res.tail[-6:])}{hint}")

    def checkpoint(self, cfg, fsops) -> dict:
        latest = fsops("latest-checkpoint", "--dir", cfg.paths.save_dir)
        if latest["iteration"] is None:
            raise TrainingFailed(f"the job ended but {cfg.paths.save_dir} has no "
                                 f"latest_checkpointed_iteration.txt; nothing was saved (check "
                                 f"save_interval and the job log).")
        return {"save_dir": latest["save_dir"], "iteration": latest["iteration"],
                "path": latest["path"]}


ACTIVE = ("PENDING", "RUNNING")


def ray_node_ips(cfg) -> dict:
    """{IP Ray knows the node by: connection id}. Ray names nodes by their --node-ip-address:
    the head's is master_addr, a worker's its connection host (builders.ray_start_worker)."""
    ips = {h: n for n, h in zip(cfg.cluster.nodes, cfg.cluster.hosts)}
    ips[cfg.cluster.master_addr] = cfg.cluster.head
    return ips


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
