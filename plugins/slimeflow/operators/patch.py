"""patch_fla: the seed's Blackwell-only fla patch, applied with `git apply` on every node."""
from __future__ import annotations

from airflow.sdk import BaseBranchOperator

from slimeflow.operators.base import SlimeOperator
from slimeflow.utils.lazy import LazyModule

builders = LazyModule("slimeflow.builders")


def choose_patch_branch(probes: list) -> str:
    return "patch_fla" if builders.should_patch_fla(probes) else "skip_patch_fla"


class DecidePatchOperator(BaseBranchOperator):
    """decide_patch: branch to patch_fla or skip_patch_fla from the preflight probes. A plain
    BaseBranchOperator rather than @task.branch, which would pull airflow's decorator and
    PythonOperator modules into every parse of the DAG files."""

    def choose_branch(self, context):
        probes = context["ti"].xcom_pull(task_ids="preflight")
        return choose_patch_branch([probes] if isinstance(probes, dict) else list(probes or []))


class PatchFlaOperator(SlimeOperator):
    """Idempotent: a node whose fla already carries the patch is left unchanged."""

    def work(self, cfg, context):
        def apply(node):
            res = self.run_step(cfg, builders.patch_fla(cfg, node), check=False, log=None)
            out = res.last_json()
            if res.rc != 0:
                raise RuntimeError(f"node {node}: {out.get('error') or 'the fla patch failed'}")
            self.log.info("[%s] fla wy_fast.py %s (%s)", node,
                          "patched now" if out.get("changed") else "already patched",
                          out.get("path") or out.get("wy_fast_path"))
            return out
        return {n: bool(r.get("changed")) for n, r in self.on_nodes(cfg.cluster.nodes,
                                                                     apply).items()}
