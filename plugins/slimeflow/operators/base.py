"""What every slimeflow operator shares: the run config, node hooks, parallel fan-out."""
from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor

from airflow.sdk import BaseOperator

from slimeflow.utils.lazy import LazyModule

builders = LazyModule("slimeflow.builders")


def resolve_hosts(nodes) -> list:
    from airflow.sdk import BaseHook

    return [BaseHook.get_connection(n).host for n in nodes]


class SlimeOperator(BaseOperator):
    """Base for the pipeline's operators. Subclasses implement `work(cfg, context)`."""

    ui_color = "#e8f1fb"

    # No __init__ here on purpose: Airflow deep-copies the DAG's params once per __init__ level
    # of an operator class at every parse, which made parsing twice as dear (docs/benchmarks.md,
    # P1). So the recipe is the DAG's (the factory names each DAG after its recipe) and the hook
    # cache is made on first use.

    @property
    def recipe(self) -> str:
        from slimeflow.recipes import recipe_for_dag

        return self.__dict__.get("_recipe") or recipe_for_dag(self.dag_id)

    @recipe.setter
    def recipe(self, name: str):  # an operator used outside its DAG (node tests, the CLI)
        self.__dict__["_recipe"] = name

    @property
    def _hooks(self) -> dict:
        return self.__dict__.setdefault("_hook_cache", {})

    # config and facts -------------------------------------------------------------------

    def run_config(self, context) -> RunConfig:
        from slimeflow.config import RunConfig

        params = dict(context["params"])
        return RunConfig.from_params(self.recipe, params, hosts=resolve_hosts(params["nodes"]))

    @staticmethod
    def probes(context) -> list:
        """Every node's preflight JSON (a mapped task: one XCom per node)."""
        got = context["ti"].xcom_pull(task_ids="preflight")
        if isinstance(got, dict):  # a single mapped instance comes back unwrapped
            return [got]
        return [p for p in (got or []) if p]

    @staticmethod
    def facts(context) -> dict:
        return context["ti"].xcom_pull(task_ids="check_cluster") or {}

    # nodes ------------------------------------------------------------------------------

    def hook(self, node: str):
        from slimeflow.hooks.node import NodeHook

        if node not in self._hooks:
            self._hooks[node] = NodeHook(ssh_conn_id=node)
        return self._hooks[node]

    def log_line(self, node: str, line: str):
        self.log.info("[%s] %s", node, line)

    def ensure_bundle(self, cfg, node: str) -> bool:
        """Make sure this task's node scripts are on the node. Every task checks (one SFTP
        stat), so a deployment that changes include/ mid-run cannot leave a task without them."""
        key = ("bundle", node)
        if key not in self._hooks:
            self._hooks[key] = self.hook(node).upload_files(builders.node_bundle()[1],
                                                            builders.node_dir(cfg))
        return self._hooks[key]

    def run_step(self, cfg, step, **kwargs):
        self.ensure_bundle(cfg, step.node)

        self.log.info("[%s] $ %s%s", step.node, " ".join(step.argv[:12]),
                      " ..." if len(step.argv) > 12 else "")
        kwargs.setdefault("log", self.log_line)
        return self.hook(step.node).run(step, builders.node_dir(cfg), **kwargs)

    def run_json(self, cfg, step, **kwargs) -> dict:
        kwargs.setdefault("log", None)
        return self.run_step(cfg, step, **kwargs).last_json()

    def read_record(self, cfg, base_id) -> dict:
        """This run's record on the head (<state_dir>/runs/<id>/attempts.json); an empty one
        before train's first attempt or when the file is unreadable."""
        import json

        from slimeflow.operators.train import record_path

        res = self.run_json(cfg, builders.node_script(cfg, cfg.cluster.head, "fsops.py",
                                                      "read-text", "--path",
                                                      record_path(cfg, base_id)))
        try:
            if res.get("exists"):
                return json.loads(res["text"])
        except ValueError:
            pass
        return {"submission_id": base_id, "attempts": []}

    @staticmethod
    def on_nodes(nodes, fn) -> dict:
        """fn(node) on every node at once; results by node, first failure re-raised."""
        nodes = list(nodes)
        if len(nodes) == 1:
            return {nodes[0]: fn(nodes[0])}
        with ThreadPoolExecutor(max_workers=min(16, len(nodes))) as pool:
            futures = {n: pool.submit(fn, n) for n in nodes}
            return {n: f.result() for n, f in futures.items()}

    @contextlib.contextmanager
    def keep_leases(self, cfg, context):
        """Refresh this run's node leases while the block runs (slimeflow/leases.py): a long
        download or conversion must not leave a lease that another run may break as stale.
        Each node refreshes its own lease file (`lease.py heartbeat` there), so this holds
        with shared and with local storage. The beats use their own SSH connections: the
        task's connections are busy streaming the long step."""
        from slimeflow.hooks.node import NodeHook
        from slimeflow.leases import LeaseKeeper, heartbeat_interval
        from slimeflow.operators.train import lease_dir, lease_run_key

        run = lease_run_key(context)
        nodes = list(cfg.cluster.nodes)
        hooks = {}

        def one(node):
            if node not in hooks:
                hooks[node] = NodeHook(ssh_conn_id=node)
            step = builders.node_script(cfg, node, "lease.py", "heartbeat", "--dir",
                                        lease_dir(cfg), "--node", node, "--run", run)
            try:
                res = hooks[node].run(step, builders.node_dir(cfg), check=False, timeout=60)
                return (res.last_json() or {}).get(node, {"error": "no answer"})
            except Exception as e:  # this node's beat failed; the others still count
                client = getattr(hooks.pop(node, None), "client", None)
                if client:
                    client.close()
                return {"error": f"{type(e).__name__}: {e}"}

        keeper = LeaseKeeper(lambda: self.on_nodes(nodes, one),
                             heartbeat_interval(cfg.train.lease_stale_s), self.log)
        try:
            with keeper:
                yield keeper
        finally:
            for h in hooks.values():
                if getattr(h, "client", None):
                    h.client.close()

    def close_hooks(self):
        for h in self._hooks.values():
            if getattr(h, "client", None):
                h.client.close()
        self._hooks.clear()

    def execute(self, context):
        cfg = self.run_config(context)
        try:
            return self.work(cfg, context)
        finally:
            self.close_hooks()

    def work(self, cfg: RunConfig, context):  # pragma: no cover - abstract
        raise NotImplementedError
