"""convert: HF -> Megatron torch_dist with slime's converter under torchrun, at most once."""
from __future__ import annotations

import json

from slimeflow.operators.base import SlimeOperator
from slimeflow.utils.lazy import LazyModule

builders = LazyModule("slimeflow.builders")


class ConvertOperator(SlimeOperator):
    """Skipped when the output is finished and its manifest (HF commit + model args) matches.

    Anything else already at the output path (a crash half-way, other inputs) is moved aside,
    never trusted and never deleted: the converter has no resume and nests into an existing
    --save. XCom: the torch_dist path.
    """

    def work(self, cfg, context):
        head = cfg.cluster.head
        facts = self.facts(context)
        info = context["ti"].xcom_pull(task_ids="check_model_config") or {}
        manifest = builders.convert_manifest(cfg, info.get("hf_commit", cfg.source.hf_revision),
                                             facts)
        out = cfg.paths.torch_dist

        def fsops(*args):
            return self.run_json(cfg, builders.node_script(cfg, head, "fsops.py", *args))

        state = fsops("torch-dist-state", "--dir", out, "--manifest", json.dumps(manifest))
        if state["state"] == "complete":
            self.log.info("[%s] %s is a finished conversion of %s@%s; skipping", head, out,
                          manifest["hf_repo"], manifest["hf_commit"])
            return out
        if state["state"] in ("partial", "stale"):
            moved = fsops("move-aside", "--dir", out, "--reason",
                          "incomplete" if state["state"] == "partial" else "stale")
            self.log.warning("[%s] %s was %s (%s); moved it aside to %s (delete it when you no "
                             "longer need it)", head, out, state["state"],
                             state.get("reason", "no finished marker"), moved["moved"])
        # the conversion can take longer than lease_stale_minutes: keep the leases fresh
        with self.keep_leases(cfg, context):
            res = self.run_step(cfg, builders.convert(cfg, facts), check=False)
        if res.rc != 0:
            fsops("move-aside", "--dir", out, "--reason", "incomplete")
            raise RuntimeError(f"node {head}: the HF -> torch_dist conversion failed with exit "
                               f"code {res.rc} (output moved aside); last output: "
                               f"{' | '.join(res.tail[-8:])}")
        done = fsops("torch-dist-state", "--dir", out, "--manifest", json.dumps(manifest))
        if done["state"] not in ("stale", "complete") or done.get("reason", "").startswith(
                "manifest differs"):
            raise RuntimeError(f"node {head}: the converter exited 0 but {out} has no "
                               f"latest_checkpointed_iteration.txt with `release`; check the "
                               f"converter log above.")
        fsops("write-json", "--path", f"{out}/.slimeflow-manifest.json", "--json",
              json.dumps(manifest))
        return out
