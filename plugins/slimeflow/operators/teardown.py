"""teardown: always runs; stops this run's Ray job, the Ray processes this run started, and
releases the node leases this run holds. A node leased by ANOTHER run is left alone, and so is
every node when this run never started Ray (its run record says so): that Ray is not ours to
stop."""
from __future__ import annotations

from slimeflow.operators.base import SlimeOperator
from slimeflow.operators.train import lease_dir, lease_run_key
from slimeflow.utils.lazy import LazyModule

builders = LazyModule("slimeflow.builders")
ray_hook = LazyModule("slimeflow.hooks.ray")


class TeardownOperator(SlimeOperator):
    def work(self, cfg, context):
        base_id = builders.submission_id(context["dag"].dag_id, context["run_id"])
        head = cfg.cluster.head
        run = lease_run_key(context)

        def lease(node, verb):
            return self.run_json(cfg, builders.node_script(
                cfg, node, "lease.py", verb, "--dir", lease_dir(cfg), "--node", node,
                "--run", run))

        unreached = []

        def holder(node):
            try:
                return (lease(node, "show").get("lease") or {}).get("run")
            except Exception as e:  # unreachable node: try ray stop anyway below
                self.log.warning("[%s] cannot read the node lease: %s", node, e)
                unreached.append(node)
                return None

        holders = self.on_nodes(cfg.cluster.nodes, holder)
        foreign = {n: h for n, h in holders.items() if h and h != run}
        for n, h in foreign.items():
            self.log.warning("[%s] is leased by run %s, not this one: leaving its Ray alone",
                             n, h)
        ours = [n for n in cfg.cluster.nodes if n not in foreign]

        ray = ray_hook.RayClusterHook(cfg, self, self.log)
        try:
            record = self.read_record(cfg, base_id)
        except Exception as e:  # the head is down: its record cannot say, the leases can
            self.log.warning("[%s] cannot read this run's record (%s); stopping Ray only on "
                             "the nodes this run holds the lease of", head, e)
            ours = [n for n in ours if holders.get(n) == run]
            record = {"ray_started": bool(ours), "attempts": []}
        rcs = {}
        if not ray_hook.started_by_run(record):
            # a run that failed before train started Ray (preflight refused a node where a
            # foreign Ray runs, say): whatever Ray runs on these nodes is not this run's
            self.log.info("[%s] nothing to stop: this run never started Ray on its nodes; "
                          "leaving any Ray there alone", head)
        else:
            if head in ours:
                for sub_id, final in self.attempt_ids(record, base_id):
                    # a hung trainer ignores SIGTERM; `ray stop` below ends it
                    ray.stop_job(sub_id, wait=final != "STALLED")
            # every node at once: one real `ray stop` with a job running takes seconds
            rcs = ray.stop_nodes(ours) if ours else {}
        for n in ours:
            try:
                self.log.info("[%s] lease release: %s", n, lease(n, "release"))
            except Exception as e:
                self.log.warning("[%s] could not release the node lease: %s", n, e)
        failed = [n for n, rc in rcs.items() if rc != 0]
        if unreached:
            raise RuntimeError(f"teardown could not reach node(s) {', '.join(sorted(unreached))}, "
                               f"so Ray this run started may still run there; once they answer "
                               f"over SSH, clear the teardown task (or clear train to reattach "
                               f"to a job that still runs).")
        if failed:
            why = "; ".join(f"{n}: {ray.stop_errors.get(n, 'exit %s' % rcs[n])}" for n in failed)
            raise RuntimeError(f"`ray stop` failed on node(s) {', '.join(failed)} ({why}); log in "
                               f"and run `ray stop` there before the next run.")
        return rcs

    @staticmethod
    def attempt_ids(record, base_id) -> list:
        """This run's attempts that may still run (from the run record), else the base id."""
        attempts = record.get("attempts", [])
        ids = [(a["id"], a.get("final")) for a in attempts
               if a.get("final") in (None, "UNKNOWN", "UNREACHABLE", "STALLED", "LOST")]
        return ids or ([] if attempts else [(base_id, None)])
