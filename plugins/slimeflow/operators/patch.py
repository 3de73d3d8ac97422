"""patch_fla: the seed's Blackwell-only fla patch, applied with `git apply` on every node."""
from __future__ import annotations

from slimeflow import builders
from slimeflow.operators.base import SlimeOperator


def choose_patch_branch(probes: list) -> str:
    return "patch_fla" if builders.should_patch_fla(probes) else "skip_patch_fla"


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
