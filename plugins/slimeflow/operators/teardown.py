"""teardown: always runs; stops this run's Ray job, the Ray processes this run started, and
releases the node leases this run holds. A node leased by ANOTHER run is left alone (its Ray is
not ours to stop)."""
from __future__ import annotations

import json

from slimeflow import builders
from slimeflow.operators.base import SlimeOperator
from slimeflow.operators.train import lease_dir, lease_run_key, record_path


class TeardownOperator(SlimeOperator):
    def work(self, cfg, context):
        base_id = builders.submission_id(context["dag"].dag_id, context["run_id"])
        head = cfg.cluster.head
        run = lease_run_key(context)

        def lease(node, verb):
            return self.run_json(cfg, builders.node_script(
                cfg, node, "lease.py", verb, "--dir", lease_dir(cfg), "--node", node,
                "--run", run))

        def holder(node):
            try:
                return (lease(node, "show").get("lease") or {}).get("run")
            except Exception as e:  # unreachable node: try ray stop anyway below
                self.log.warning("[%s] cannot read the node lease: %s", node, e)
                return None

        holders = self.on_nodes(cfg.cluster.nodes, holder)
        foreign = {n: h for n, h in holders.items() if h and h != run}
        for n, h in foreign.items():
            self.log.warning("[%s] is leased by run %s, not this one: leaving its Ray alone",
                             n, h)
        ours = [n for n in cfg.cluster.nodes if n not in foreign]

        if head in ours:
            for sub_id, final in self.attempt_ids(cfg, base_id):
                step = builders.ray_job_cmd(cfg, "stop", sub_id)
                if final == "STALLED":  # a hung trainer ignores SIGTERM; `ray stop` ends it
                    step.argv.append("--no-wait")
                res = self.run_step(cfg, step, check=False, timeout=900, log=None)
                self.log.info("[%s] ray job stop %s: exit %d", head, sub_id, res.rc)

        def stop(node):
            r = self.run_step(cfg, builders.ray_stop(cfg, node), check=False,
                              timeout=builders.RAY_STOP_TIMEOUT_S)
            return r.rc
        # every node at once (on_nodes): one `ray stop` takes up to ~22 s for real
        rcs = self.on_nodes(ours, stop) if ours else {}
        for n in ours:
            try:
                self.log.info("[%s] lease release: %s", n, lease(n, "release"))
            except Exception as e:
                self.log.warning("[%s] could not release the node lease: %s", n, e)
        failed = [n for n, rc in rcs.items() if rc != 0]
        if failed:
            raise RuntimeError(f"`ray stop` failed on node(s) {', '.join(failed)}; log in and run "
                               f"`ray stop` there before the next run.")
        return rcs

    def attempt_ids(self, cfg, base_id) -> list:
        """This run's attempts that may still run (from the run record), else the base id."""
        res = self.run_json(cfg, builders.node_script(cfg, cfg.cluster.head, "fsops.py",
                                                      "read-text", "--path",
                                                      record_path(cfg, base_id)))
        try:
            attempts = json.loads(res["text"]).get("attempts", []) if res.get("exists") else []
        except ValueError:
            attempts = []
        ids = [(a["id"], a.get("final")) for a in attempts
               if a.get("final") in (None, "UNKNOWN", "UNREACHABLE", "STALLED", "LOST")]
        return ids or ([] if attempts else [(base_id, None)])
