"""teardown: always runs; stops this run's Ray job and the Ray processes this run started."""
from __future__ import annotations

from slimeflow import builders
from slimeflow.operators.base import SlimeOperator


class TeardownOperator(SlimeOperator):
    def work(self, cfg, context):
        base_id = builders.submission_id(context["dag"].dag_id, context["run_id"])
        head = cfg.cluster.head
        res = self.run_step(cfg, builders.ray_job_cmd(cfg, "stop", base_id), check=False,
                            timeout=900, log=None)
        self.log.info("[%s] ray job stop %s: exit %d", head, base_id, res.rc)

        def stop(node):
            r = self.run_step(cfg, builders.ray_stop(cfg, node), check=False, timeout=300)
            return r.rc
        rcs = self.on_nodes(cfg.cluster.nodes, stop)
        failed = [n for n, rc in rcs.items() if rc != 0]
        if failed:
            raise RuntimeError(f"`ray stop` failed on node(s) {', '.join(failed)}; log in and run "
                               f"`ray stop` there before the next run.")
        return rcs
