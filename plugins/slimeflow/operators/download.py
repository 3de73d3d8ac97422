"""download_model / download_datasets with the real `hf` CLI, and check_model_config."""
from __future__ import annotations

import json

from slimeflow.operators.base import SlimeOperator
from slimeflow.utils.lazy import LazyModule

builders = LazyModule("slimeflow.builders")


class DownloadOperator(SlimeOperator):
    """Fetch what is missing or bad, verify against hf's own metadata; XCom: the local path(s).

    A local copy that verifies (every file present, sizes and sha256/blob hashes equal to the
    etags hf recorded, as many files as the hub lists) is not downloaded again. Bad files are
    deleted with their metadata first, so `hf download` refetches exactly those.
    """

    # a class attribute, not an __init__ argument: each __init__ level of an operator makes
    # Airflow deep-copy the DAG's params once more at every parse (docs/benchmarks.md, P1)
    what = ""

    def work(self, cfg, context):
        facts = self.facts(context)
        repos = builders.hub_repos(cfg)
        repos = repos[:1] if self.what == "model" else repos[1:]
        head_probe = next((p for p in self.probes(context)
                           if p.get("node") == cfg.cluster.head), {})
        hub_files = {(h["type"], h["repo"]): h.get("files") for h in head_probe.get("hub") or []}
        nodes = builders.download_nodes(cfg, facts.get("storage_shared", True))
        token_env = _hf_token_env()

        def fetch(node):
            out = {}
            for kind, repo, rev, local_dir in repos:
                out[repo] = self.ensure(cfg, node, kind, repo, rev, local_dir,
                                        hub_files.get((kind, repo)), token_env)
            return out

        # a download can take longer than lease_stale_minutes: keep the leases fresh meanwhile
        with self.keep_leases(cfg, context):
            results = self.on_nodes(nodes, fetch)
        self.log.info("download summary: %s", json.dumps(results))
        if self.what == "model":
            return cfg.paths.hf_checkpoint
        return {d.local_name: cfg.paths.dataset_dir(d.local_name) for d in cfg.recipe.datasets}

    def ensure(self, cfg, node, kind, repo, rev, local_dir, expect_files, token_env) -> dict:
        check = self.run_json(cfg, builders.hf_verify(cfg, node, local_dir, fix=True))
        # Without the hub's file count (the probe could not ask the hub) a partial copy looks
        # like a complete one: let `hf download` decide (it skips files whose etag matches).
        complete = (check.get("ok") and expect_files is not None
                    and check.get("files", 0) >= expect_files)
        if complete:
            self.log.info("[%s] %s: %d files verified at %s (%.2f GB hashed); not downloading",
                          node, repo, check["files"], local_dir, check.get("bytes", 0) / 1e9)
            return {"downloaded": False, "files": check["files"]}
        if check.get("bad"):
            self.log.warning("[%s] %s: refetching %d bad file(s): %s", node, repo,
                             len(check["bad"]), ", ".join(b["path"] for b in check["bad"][:10]))
        step = builders.hf_download(cfg, node, kind, repo, rev, local_dir)
        step.env.update(token_env)
        res = self.run_step(cfg, step, check=False, timeout=None)
        if res.rc != 0:
            raise RuntimeError(_hf_failure(node, repo, res))
        after = self.run_json(cfg, builders.hf_verify(cfg, node, local_dir))
        if not after.get("ok"):
            raise RuntimeError(f"node {node}: {repo} still fails verification after download "
                               f"({after.get('bad') or after.get('missing')}); the hub copy or "
                               f"the disk is bad: retry, and check the disk if it repeats.")
        return {"downloaded": True, "files": after["files"], "refetched": check.get("bad", [])}


def _hf_token_env() -> dict:
    from slimeflow.secrets import hf_token

    token = hf_token()
    return {"HF_TOKEN": token} if token else {}


def _hf_failure(node, repo, res) -> str:
    text = " ".join(res.tail[-15:])
    low = text.lower()
    if ("GatedRepo" in text or "gated" in low or "401" in text or "403" in text
            or "access denied" in low or "requires approval" in low):
        return (f"node {node}: `hf download {repo}` was refused by the hub (gated or private "
                f"repo, or no token); accept the model's licence on the hub and store a token in "
                f"the Airflow connection `slimeflow_hf` (password) or Variable "
                f"`slimeflow_hf_token`.")
    if "No space left" in text:
        return (f"node {node}: the disk filled up while downloading {repo}; free space under "
                f"base_folder and clear the task (finished files are kept).")
    return (f"node {node}: `hf download {repo}` failed with exit code {res.rc}; last output: "
            f"{' | '.join(res.tail[-6:])}")



class DownloadModelOperator(DownloadOperator):
    what = "model"


class DownloadDatasetsOperator(DownloadOperator):
    what = "datasets"

class CheckModelConfigOperator(SlimeOperator):
    """Compare the recipe's model flags with config.json; XCom: the HF commit downloaded."""

    def work(self, cfg, context):
        from slimeflow.modelcheck import explain

        head = cfg.cluster.head
        path = f"{cfg.paths.hf_checkpoint}/config.json"
        got = self.run_json(cfg, builders.node_script(cfg, head, "fsops.py", "read-text",
                                                      "--path", path))
        if not got.get("exists"):
            raise RuntimeError(f"node {head}: {path} is missing after download; the repo is not "
                               f"a Hugging Face model checkpoint, check hf_repo.")
        problem = explain(cfg.recipe, path, json.loads(got["text"]))
        if problem:
            raise RuntimeError(problem)
        meta = self.run_json(cfg, builders.node_script(
            cfg, head, "fsops.py", "read-text", "--path",
            f"{cfg.paths.hf_checkpoint}/.cache/huggingface/download/config.json.metadata"))
        commit = (meta.get("text") or "").split("\n")[0].strip() or cfg.source.hf_revision
        self.log.info("config.json matches recipe %s (hf commit %s)", cfg.recipe.name, commit)
        return {"hf_commit": commit, "config": path}
