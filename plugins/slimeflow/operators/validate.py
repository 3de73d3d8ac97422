"""validate_params: every trigger value checked before any node is contacted."""
from __future__ import annotations

from slimeflow.operators.base import SlimeOperator


class ValidateParamsOperator(SlimeOperator):
    ui_color = "#fff4d6"

    def execute(self, context):
        from airflow.sdk import BaseHook

        from slimeflow.config import RunConfig
        from slimeflow.validation import ParamError

        params = dict(context["params"])
        # every value first (no lookups yet: a hostile node id must not reach the secrets backend)
        RunConfig.from_params(self.recipe, params)
        nodes = params.get("nodes")
        hosts = []
        for node in nodes if isinstance(nodes, list) else []:
            try:
                conn = BaseHook.get_connection(node)
            except Exception:
                raise ParamError(
                    f"Param `nodes`: connection {node!r} does not exist; add it under Admin > "
                    f"Connections (type ssh, host, login, key_file, host_key) or as "
                    f"AIRFLOW_CONN_{node.upper()}.") from None
            if conn.conn_type not in ("ssh", "sftp") or not conn.host:
                raise ParamError(f"Param `nodes`: connection {node!r} must be of type ssh and "
                                 f"have a host; fix it under Admin > Connections.")
            hosts.append(conn.host)
        cfg = RunConfig.from_params(self.recipe, params, hosts=hosts or None)
        self.log.info("recipe %s, layout %s, %d node(s) x %d GPUs, master_addr %s",
                      cfg.recipe.name, cfg.layout.name, len(cfg.cluster.nodes),
                      cfg.cluster.gpus_per_node, cfg.cluster.master_addr)
        context["ti"].xcom_push(key="summary", value={
            "layout": cfg.layout.name, "master_addr": cfg.cluster.master_addr,
            "num_rollout": cfg.train.num_rollout})
        # the return value is what preflight maps over: one task per node
        return list(cfg.cluster.nodes)
