"""preflight (one per node) and check_cluster (all nodes together)."""
from __future__ import annotations

import secrets

from slimeflow import builders
from slimeflow.operators.base import SlimeOperator

class PreflightOperator(SlimeOperator):
    """Upload include/node (SFTP) and run the probe; XCom: the probe's JSON."""

    def __init__(self, *, node: str, **kwargs):
        super().__init__(**kwargs)
        self.node = node

    def work(self, cfg, context):
        uploaded = self.ensure_bundle(cfg, self.node)
        self.log.info("[%s] node scripts %s at %s", self.node,
                      "uploaded" if uploaded else "already present", builders.node_dir(cfg))
        probe = self.run_json(cfg, builders.preflight(cfg, self.node), timeout=300)
        probe["node"] = self.node
        gpus = probe.get("gpus") or []
        self.log.info("[%s] %d x %s, driver %s, free disk %.1f GB, fla wy_fast: %s", self.node,
                      len(gpus), gpus[0]["name"] if gpus else "no GPU",
                      gpus[0].get("driver") if gpus else "-",
                      (probe.get("disk") or {}).get("free_bytes", 0) / 1e9,
                      ((probe.get("packages") or {}).get("fla") or {}).get("wy_fast"))
        return probe


class CheckClusterOperator(SlimeOperator):
    """Judge all probes; check shared storage. XCom: facts for the later steps."""

    def work(self, cfg, context):
        from slimeflow.cluster import judge

        probes = {p["node"]: p for p in self.probes(context)}
        missing = [n for n in cfg.cluster.nodes if n not in probes]
        if missing:
            raise RuntimeError(f"no preflight result for node(s) {', '.join(missing)}; clear "
                               f"preflight for them and retry.")
        shared = self.storage_shared(cfg)
        present = self.present_bytes(cfg)
        facts = judge(cfg, probes, shared, present)
        self.log.info("cluster OK: %s", facts)
        return facts

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
