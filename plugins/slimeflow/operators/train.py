"""train: start Ray, submit the slime job detached, follow it, hand back the checkpoint."""
from __future__ import annotations

import json
import re
import time
from collections import deque

from slimeflow import builders
from slimeflow.operators.base import SlimeOperator
from slimeflow.utils import logparse

# `ray job status` prints terminal states as sentences and the others as "Status for job".
_STATUS = [(re.compile(r"Job '[^']+' succeeded"), "SUCCEEDED"),
           (re.compile(r"Job '[^']+' was stopped"), "STOPPED"),
           (re.compile(r"Job '[^']+' failed"), "FAILED")]
_STATUS_LINE = re.compile(r"Status for job '[^']+': (\w+)")


def parse_job_status(text: str):
    """A Ray job state from `ray job status` output, None when it shows none."""
    for rx, state in _STATUS:
        if rx.search(text):
            return state
    m = _STATUS_LINE.search(text)
    return m.group(1) if m else None
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


class TrainingFailed(RuntimeError):
    pass


class TrainOperator(SlimeOperator):
    """XCom: {save_dir, iteration, path} of the latest checkpoint.

    The job is submitted with `ray job submit --no-wait` under a submission id derived from the
    DAG and run ids, so a retry or a re-run of this task finds and follows the same job instead
    of starting a second one. A job that FAILED is resubmitted under a new attempt id; slime then
    resumes from latest_checkpointed_iteration.txt in --load.
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

        def fsops(*args):
            return self.run_json(cfg, builders.node_script(cfg, head, "fsops.py", *args))

        status, sub_id = self.find_job(cfg, base_id)
        if status in ("PENDING", "RUNNING"):
            self.log.info("[%s] job %s is already %s; following it (no second submission)",
                          head, sub_id, status)
        elif status == "SUCCEEDED":
            self.log.info("[%s] job %s already succeeded", head, sub_id)
            return self.checkpoint(cfg, fsops)
        else:
            latest = fsops("latest-checkpoint", "--dir", cfg.paths.save_dir)
            if latest["iteration"] is not None and latest["iteration"] + 1 >= cfg.train.num_rollout:
                self.log.warning(
                    "[%s] %s already holds rollout %d and num_rollout is %d (a total, not an "
                    "increment): there is nothing left to train, so no job is submitted. Raise "
                    "num_rollout to train further.", head, cfg.paths.save_dir,
                    latest["iteration"], cfg.train.num_rollout)
                return self.checkpoint(cfg, fsops)
            if status is not None:  # FAILED or STOPPED earlier: resume under a new attempt id
                sub_id = self.next_attempt_id(cfg, base_id)
                self.log.info("[%s] resubmitting as %s; slime resumes from %s", head, sub_id,
                              latest)
            self.start_ray(cfg, facts)
            self.submit(cfg, sub_id, facts)
        final = self.follow(cfg, sub_id, fsops)
        if final != "SUCCEEDED":
            raise TrainingFailed(self.failure_message(cfg, sub_id, final))
        return self.checkpoint(cfg, fsops)

    # -- Ray ------------------------------------------------------------------------------

    def job_status(self, cfg, sub_id):
        """A Ray job state, None when the job does not exist, 'UNREACHABLE' with no cluster."""
        res = self.run_step(cfg, builders.ray_job_cmd(cfg, "status", sub_id), check=False,
                            log=None, timeout=120)
        state = parse_job_status(res.stdout + "\n" + res.stderr)
        if state:
            return state
        text = (res.stdout + res.stderr).lower()
        if "does not exist" in text or "not found" in text or "no job" in text:
            return None
        return "UNREACHABLE"

    def find_job(self, cfg, base_id):
        """The newest attempt of this run's job and its state."""
        found, sub_id = None, base_id
        for n in range(1, 50):
            cand = base_id if n == 1 else f"{base_id}-a{n}"
            st = self.job_status(cfg, cand)
            if st in (None, "UNREACHABLE"):
                return (found, sub_id) if n > 1 else (None, base_id)
            found, sub_id = st, cand
        return found, sub_id

    def next_attempt_id(self, cfg, base_id):
        n = 2
        while self.job_status(cfg, f"{base_id}-a{n}") not in (None, "UNREACHABLE"):
            n += 1
        return f"{base_id}-a{n}"

    def start_ray(self, cfg, facts):
        head_step = builders.ray_start_head(cfg)
        res = self.run_step(cfg, head_step, check=False, timeout=300)
        if res.rc != 0 and "already" not in (res.stdout + res.stderr).lower():
            raise TrainingFailed(f"`ray start --head` failed on node {cfg.cluster.head} (exit "
                                 f"{res.rc}): {' | '.join(res.tail[-6:])}; check master_addr and "
                                 f"that ports 6379/8265 are free.")

        def worker(node):
            r = self.run_step(cfg, builders.ray_start_worker(cfg, node), check=False,
                              timeout=300)
            if r.rc != 0 and "already" not in (r.stdout + r.stderr).lower():
                raise TrainingFailed(
                    f"`ray start` on worker node {node} could not join {cfg.cluster.master_addr}"
                    f":6379 (exit {r.rc}): {' | '.join(r.tail[-4:])}; check that the worker "
                    f"can reach master_addr and that socket_ifname is right.")
        if cfg.cluster.workers:
            self.on_nodes(cfg.cluster.workers, worker)

    def submit(self, cfg, sub_id, facts):
        from slimeflow.secrets import hf_token  # noqa: F401  (tokens never go to the job argv)

        step = builders.ray_job_submit(cfg, sub_id, facts)
        self.log.info("runtime env: %s", json.dumps(step.runtime_env))
        self.log.info("entrypoint: python3 train.py %s", " ".join(builders.train_args(cfg, facts)))
        res = self.run_step(cfg, step, check=False, timeout=300)
        if res.rc != 0:
            raise TrainingFailed(f"`ray job submit` failed on node {cfg.cluster.head} (exit "
                                 f"{res.rc}): {' | '.join(res.tail[-6:])}")

    # -- following the job ------------------------------------------------------------------

    def follow(self, cfg, sub_id, fsops) -> str:
        offset, self._tail = 0, deque(maxlen=50)
        started, first_rollout, last_rollout = time.monotonic(), None, None
        total = cfg.train.num_rollout
        while True:
            chunk = fsops("job-log", "--ray-job", sub_id, "--offset", str(offset))
            offset = chunk.get("offset", offset)
            for line in chunk.get("lines", []):
                self._tail.append(line)
                self.log.info("[%s] %s", cfg.cluster.head, line)
                parsed = logparse.parse_line(line)
                if parsed and parsed[0] == "rollout":
                    rid, metrics = parsed[1], parsed[2]
                    now = time.monotonic()
                    if first_rollout is None:
                        first_rollout = (rid, now)
                    eta = None
                    if rid > first_rollout[0]:
                        rate = (now - first_rollout[1]) / (rid - first_rollout[0])
                        eta = rate * (total - rid - 1)
                    last_rollout = (rid, metrics)
                    self.log.info("progress: %s", logparse.progress_line(
                        rid, total, logparse.reward_of(metrics), self._last_loss, eta))
                elif parsed and parsed[0] == "step":
                    self._last_loss = logparse.loss_of(parsed[2])
            status = self.job_status(cfg, sub_id)
            if status in TERMINAL:
                chunk = fsops("job-log", "--ray-job", sub_id, "--offset", str(offset))
                for line in chunk.get("lines", []):
                    self._tail.append(line)
                    self.log.info("[%s] %s", cfg.cluster.head, line)
                self.log.info("job %s ended %s after %.0fs", sub_id, status,
                              time.monotonic() - started)
                return status
            if status in (None, "UNREACHABLE"):
                return "LOST"
            time.sleep(cfg.train.poll_interval)

    _last_loss = None
    _tail = ()

    def failure_message(self, cfg, sub_id, final) -> str:
        lines = list(self._tail)
        if final == "LOST":
            cause, fix = "node lost", ("the Ray cluster on the head vanished (reboot or crash); "
                                       "check the node, then clear the task to resume")
        elif final == "STOPPED":
            cause, fix = "cancelled", "the job was stopped; clear the task to resume"
        else:
            cause, fix = logparse.classify(lines)
        return (f"training job {sub_id} on node {cfg.cluster.head} ended {final}: cause {cause}; "
                f"fix: {fix}. Last {len(lines)} log lines:\n" + "\n".join(lines))

    def checkpoint(self, cfg, fsops) -> dict:
        latest = fsops("latest-checkpoint", "--dir", cfg.paths.save_dir)
        if latest["iteration"] is None:
            raise TrainingFailed(f"the job ended but {cfg.paths.save_dir} has no "
                                 f"latest_checkpointed_iteration.txt; nothing was saved (check "
                                 f"save_interval and the job log).")
        return {"save_dir": latest["save_dir"], "iteration": latest["iteration"],
                "path": latest["path"]}
