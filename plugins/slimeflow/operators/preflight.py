"""preflight (one per node) and check_cluster (all nodes together)."""
from __future__ import annotations

import secrets

from slimeflow.operators.base import SlimeOperator
from slimeflow.utils.lazy import LazyModule

builders = LazyModule("slimeflow.builders")


class PreflightOperator(SlimeOperator):
    """Upload include/node (SFTP) and run the probe; XCom: the probe's JSON."""

    def __init__(self, *, node: str, **kwargs):
        super().__init__(**kwargs)
        self.node = node

    def work(self, cfg, context):
        uploaded = self.ensure_bundle(cfg, self.node)
        self.log.info("[%s] node scripts %s at %s", self.node,
                      "uploaded" if uploaded else "already present", builders.node_dir(cfg))
        self.take_lease(cfg, context)
        probe = self.run_json(cfg, builders.preflight(cfg, self.node), timeout=300)
        probe["node"] = self.node
        gpus = probe.get("gpus") or []
        if cfg.train.preflight_nccl and len(gpus) > 1:
            res = self.run_step(cfg, builders.nccl_check(cfg, self.node), check=False,
                                timeout=300, log=None)
            try:
                probe["nccl"] = res.last_json()
            except Exception:
                probe["nccl"] = {"ok": False, "error": " | ".join(res.tail[-3:]) or
                                 f"nccl_check exited {res.rc} without a result"}
            self.log.info("[%s] NCCL all-reduce over %s GPUs: %s", self.node, len(gpus),
                          f"{probe['nccl'].get('busbw_gbps')} GB/s bus bandwidth"
                          if probe["nccl"].get("ok") else probe["nccl"].get("error"))
        self.log.info("[%s] %d x %s, driver %s, free disk %.1f GB, fla wy_fast: %s", self.node,
                      len(gpus), gpus[0]["name"] if gpus else "no GPU",
                      gpus[0].get("driver") if gpus else "-",
                      (probe.get("disk") or {}).get("free_bytes", 0) / 1e9,
                      ((probe.get("packages") or {}).get("fla") or {}).get("wy_fast"))
        return probe

    def take_lease(self, cfg, context):
        """Exclusive use of this node for this run (include/node/lease.py); waits up to
        lease_wait_minutes for another run's lease, then fails naming that run."""
        import json
        import time

        from slimeflow.operators.train import lease_dir, lease_run_key

        run = lease_run_key(context)
        holder = {"dag_id": context["dag"].dag_id, "run_id": context["run_id"],
                  "submission_id": builders.submission_id(context["dag"].dag_id,
                                                          context["run_id"]),
                  "host": cfg.cluster.hosts[cfg.cluster.nodes.index(self.node)]}
        step = builders.node_script(
            cfg, self.node, "lease.py", "acquire", "--dir", lease_dir(cfg), "--node", self.node,
            "--run", run, "--holder-json", json.dumps(holder),
            "--stale-after", str(cfg.train.lease_stale_s),
            "--ray-address", f"http://{cfg.cluster.master_addr}:8265")
        deadline = time.monotonic() + cfg.train.lease_wait_s
        while True:
            res = self.run_json(cfg, step, timeout=120)
            if res.get("acquired"):
                if res.get("broken"):
                    b = res["broken"]
                    self.log.warning("[%s] broke the stale lease of run %s (heartbeat %.0f s "
                                     "old, its Ray job not running); kept at %s", self.node,
                                     b["lease"].get("run"), b.get("age_s") or 0, b["moved_to"])
                self.log.info("[%s] node lease taken for run %s", self.node, run)
                return
            held = res.get("held_by") or {}
            msg = (f"node {self.node} is in use by run {held.get('run')} (Ray job "
                   f"{held.get('submission_id')}, lease heartbeat {res.get('age_s')} s ago"
                   f"{', job still running' if res.get('job_running') else ''}); wait for that "
                   f"run to finish or stop it. Its lease is broken automatically once its "
                   f"heartbeat is older than {cfg.train.lease_stale_s / 60:g} min and its Ray "
                   f"job is not running (lease file {lease_dir(cfg)}/{self.node}.json).")
            if time.monotonic() >= deadline:
                raise RuntimeError(msg)
            self.log.info("[%s] waiting for the node: %s", self.node, msg)
            time.sleep(min(15.0, max(1.0, deadline - time.monotonic())))


class CheckClusterOperator(SlimeOperator):
    """Judge all probes; check shared storage. XCom: facts for the later steps."""

    def work(self, cfg, context):
        from slimeflow.cluster import ClusterError, judge

        probes = {p["node"]: p for p in self.probes(context)}
        missing = [n for n in cfg.cluster.nodes if n not in probes]
        if missing:
            raise RuntimeError(f"no preflight result for node(s) {', '.join(missing)}; clear "
                               f"preflight for them and retry.")
        shared = self.storage_shared(cfg)
        present = self.present_bytes(cfg)
        record = self.read_record(cfg, builders.submission_id(context["dag"].dag_id,
                                                             context["run_id"]))
        try:
            facts = judge(cfg, probes, shared, present,
                          ray_is_ours=self.ray_is_ours(probes, record))
        except ClusterError as e:
            self.report_health(getattr(e, "health", None) or {}, context, refused=True)
            raise
        self.report_health(facts["health"], context)
        self.check_argv(cfg, facts)
        facts["start"] = self.start_point(cfg, record)
        self.log.info("cluster OK: %s", facts)
        return facts

    def check_argv(self, cfg, facts) -> None:
        """The train command line parsed on the head by its own slime, Megatron and sglang,
        before anything starts: what they would drop or reject fails the run here."""
        from slimeflow.cluster import ClusterError, judge_argv

        head = cfg.cluster.head
        for old, new, since in builders.sglang_renames(facts.get("sglang_version")):
            self.log.warning("[%s] sglang %s removed %s (in %s): train.py gets its values as %s, "
                             "its documented replacement", head, facts["sglang_version"], old,
                             since, new)
        res = self.run_json(cfg, builders.argv_check(cfg, facts), timeout=600)
        meg = res.get("megatron") or {}
        self.log.info("[%s] train argv checked with the node's parsers: slime %s, Megatron-LM %s "
                      "(slime's patch %s), sglang %s, Python %s; %d parser runs, dropped: %s",
                      head, (res.get("slime") or {}).get("commit"), meg.get("commit"),
                      meg.get("slime_patch"), res.get("sglang"), res.get("python"),
                      res.get("parsers", 0), ", ".join(res.get("dropped") or []) or "none")
        if res.get("needs_gpu"):
            self.log.info("[%s] Megatron's validation stopped where it asks the GPU (%s): the "
                          "rest is validated when train.py starts", head, res["needs_gpu"])
        elif res.get("needs_files"):
            self.log.info("[%s] validation stopped for a file later steps make (%s at %s)", head,
                          res["needs_files"], res.get("needs_files_at"))
        problems = judge_argv(cfg, res)
        if problems:
            raise ClusterError(" ".join(problems))

    def report_health(self, health: dict, context, refused: bool = False) -> None:
        """The warn findings go to on-call at once (the run goes on); info ones to the log."""
        from slimeflow.notifiers.callbacks import health_alert

        for text in health.get("info") or []:
            self.log.info("GPU health: %s", text)
        for text in health.get("warn") or []:
            self.log.warning("GPU health: %s", text)
            try:
                health_alert(dag_id=context["dag"].dag_id, run_id=context["run_id"],
                             task_id=self.task_id, node=text.split(":", 1)[0], text=text)
            except Exception as e:  # an alert problem must never stop the run
                self.log.warning("GPU health alert could not be sent: %s", e)
        if not (refused or health.get("warn") or health.get("info")):
            self.log.info("GPU health: every check passed on every node")

    @staticmethod
    def ray_is_ours(probes, record) -> bool:
        """Only asked when Ray runs on a node: did this run start it (a cleared run whose
        teardown could not stop it)? The run record says so."""
        from slimeflow.hooks.ray import started_by_run

        if not any((p.get("ray_local") or {}).get("running") for p in probes.values()):
            return False
        return started_by_run(record)

    def start_point(self, cfg, record) -> dict:
        """Fresh or resumed, and from which rollout: said in the log now, refused now when a
        fresh start would train on top of an earlier run's checkpoint."""
        save = cfg.paths.save_dir
        latest = self.run_json(cfg, builders.node_script(cfg, cfg.cluster.head, "fsops.py",
                                                         "latest-checkpoint", "--dir", save))
        it = latest.get("iteration")
        ours = bool(record.get("attempts"))  # this run trained there already (a retry/clear)
        exp = cfg.paths.experiment or "(default)"
        if cfg.train.start == "fresh" and it is not None and not ours:
            raise RuntimeError(
                f"start is fresh but {save} already holds rollout {it} from an earlier run; "
                f"choose a new experiment name (its checkpoint folder starts empty), or set "
                f"start to resume to continue at rollout {it + 1}: slimeflow never deletes "
                f"checkpoints.")
        if it is None:
            self.log.info("START: %s, experiment %s: %s holds no checkpoint; training starts "
                          "at rollout 0", cfg.train.start, exp, save)
        else:
            self.log.info("START: %s, experiment %s: %s holds rollout %d%s; training continues "
                          "at rollout %d", cfg.train.start, exp, save, it,
                          " (saved by this run)" if ours else "", it + 1)
        return {"mode": cfg.train.start, "experiment": cfg.paths.experiment,
                "save_dir": save, "from_rollout": 0 if it is None else it + 1}

    def storage_shared(self, cfg):
        """True, or the list of nodes that cannot see a marker the head writes."""
        if len(cfg.cluster.nodes) == 1:
            return True
        token = secrets.token_hex(16)
        path = f"{cfg.paths.state_dir}/markers/{token}"
        head = cfg.cluster.head
        self.run_json(cfg, builders.node_script(cfg, head, "fsops.py", "marker-write",
                                                "--path", path, "--token", token))
        try:
            seen = self.on_nodes(cfg.cluster.workers, lambda n: self.run_json(
                cfg, builders.node_script(cfg, n, "fsops.py", "marker-check", "--path", path,
                                          "--token", token))["visible"])
        finally:
            self.run_json(cfg, builders.node_script(cfg, head, "fsops.py", "remove",
                                                    "--path", path))
        blind = [n for n, ok in seen.items() if not ok]
        return True if not blind else blind

    def present_bytes(self, cfg) -> dict:
        def du(path):
            return self.run_json(cfg, builders.node_script(cfg, cfg.cluster.head, "fsops.py",
                                                           "du", "--dir", path))["bytes"]
        return {"hf_checkpoint": du(cfg.paths.hf_checkpoint),
                "torch_dist": du(cfg.paths.torch_dist),
                "datasets": sum(du(cfg.paths.dataset_dir(d.local_name))
                                for d in cfg.recipe.datasets)}
