"""The DAGs carry the operations wiring: callbacks, deadline, schedule, assets, links, docs."""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DAG = "slime_qwen3_next_80b_a3b"


def _build(monkeypatch, **env):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    from slimeflow.factory import build_dag

    return build_dag("qwen3-next-80b-a3b")


def test_callbacks_deadline_asset_and_links(monkeypatch):
    from slimeflow.notifiers.callbacks import SlimeflowNotifier

    dag = _build(monkeypatch, SLIMEFLOW_DEADLINES="on")
    for t in dag.tasks:
        assert isinstance(t.on_failure_callback[0], SlimeflowNotifier), t.task_id
        assert t.on_retry_callback[0].severity == "retry"
    assert dag.schedule is None and dag.catchup is False and dag.max_active_runs == 1
    (dl,) = dag.deadline
    assert dl.interval.total_seconds() == 72 * 3600
    assert dl.callback.path == "slimeflow.notifiers.callbacks.deadline_missed"
    train = dag.get_task("train")
    assert [o.uri for o in train.outlets] == ["x-slimeflow://checkpoints/qwen3-next-80b-a3b"]
    assert {l.name for l in train.operator_extra_links} == {"Ray dashboard", "W&B run"}
    for section in ("## Params", "## Adding nodes", "## Operations", "`grad_reduce_in_bf16`",
                    "0 3 * * 1"):
        assert section in dag.doc_md
    for name, p in dag.params.items():
        assert dag.params.get_param(name).description, name
    assert all(t.doc_md for t in dag.tasks if t.task_id != "preflight")


def test_schedule_cron_data_asset_and_expected_hours_from_env(monkeypatch):
    dag = _build(monkeypatch, **{f"SLIMEFLOW_SCHEDULE_{DAG.upper()}": "0 3 * * 1",
                                 f"SLIMEFLOW_EXPECTED_HOURS_{DAG.upper()}": "0.5",
                                 "SLIMEFLOW_DEADLINES": "on"})
    assert dag.timetable.expression == "0 3 * * 1"
    assert dag.deadline[0].interval.total_seconds() == 1800
    dag = _build(monkeypatch, **{f"SLIMEFLOW_DATA_ASSET_{DAG.upper()}": "s3://data/dapo"})
    from airflow.sdk import AssetOrTimeSchedule

    assert isinstance(dag.timetable, AssetOrTimeSchedule)
    monkeypatch.delenv(f"SLIMEFLOW_SCHEDULE_{DAG.upper()}")
    dag = _build(monkeypatch)
    assert dag.timetable.asset_condition.uri == "s3://data/dapo"
    # Airflow's DeadlineAlert is opt-in (3.3.2 breaks clearing tasks); the train trigger warns
    monkeypatch.setenv("SLIMEFLOW_DEADLINES", "off")
    assert _build(monkeypatch).deadline is None


def test_schedule_from_a_variable_only_when_parse_variables_is_on(monkeypatch):
    # a real Variable, through Airflow's environment-variable secrets backend
    monkeypatch.setenv(f"AIRFLOW_VAR_SLIMEFLOW_SCHEDULE_{DAG.upper()}", "0 4 * * *")
    monkeypatch.delenv("SLIMEFLOW_PARSE_VARIABLES", raising=False)
    assert _build(monkeypatch).schedule is None
    dag = _build(monkeypatch, SLIMEFLOW_PARSE_VARIABLES="on")
    assert dag.timetable.expression == "0 4 * * *"
    assert "`SLIMEFLOW_PARSE_VARIABLES=on`" in dag.doc_md
    # the environment still wins over the Variable
    dag = _build(monkeypatch, **{f"SLIMEFLOW_SCHEDULE_{DAG.upper()}": "0 5 * * *"})
    assert dag.timetable.expression == "0 5 * * *"


def test_serialized_dag_keeps_links_outlets_and_deadline(monkeypatch):
    monkeypatch.setenv("SLIMEFLOW_DEADLINES", "on")
    from airflow.dag_processing.dagbag import DagBag
    from airflow.serialization.serialized_objects import DagSerialization

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    data = DagSerialization.to_dict(bag.dags[DAG])
    train = next(t["__var"] for t in data["dag"]["tasks"] if t["__var"]["task_id"] == "train")
    assert set(train["_operator_extra_links"]) == {"Ray dashboard", "W&B run"}
    assert train["has_on_failure_callback"] and train["has_on_retry_callback"]
    assert data["dag"]["deadline"][0]["callback"]["__data__"]["kwargs"]["recipe"] == \
        "qwen3-next-80b-a3b"


def test_plugin_registers_the_link_classes():
    from airflow import plugins_manager

    plugins = plugins_manager.get_plugin_info() if hasattr(plugins_manager, "get_plugin_info") \
        else []
    names = {p["name"] for p in plugins}
    assert "slimeflow" in names, names
    info = next(p for p in plugins if p["name"] == "slimeflow")
    text = str(info)
    assert "RayDashboardLink" in text and "WandbRunLink" in text


def test_links_render_from_templates(monkeypatch):
    from types import SimpleNamespace

    from slimeflow.links import RayDashboardLink, WandbRunLink

    ti = SimpleNamespace(dag_id=DAG, run_id="manual__1", task_id="train",
                         get_template_context=lambda: {"params": {
                             "nodes": ["gpu0"], "master_addr": "10.0.0.5",
                             "extra_train_args": ["--use-wandb", "--wandb-team", "ml",
                                                  "--wandb-project", "rl", "--wandb-group",
                                                  "q3n"]}},
                         xcom_pull=lambda **kw: None)
    monkeypatch.setenv("SLIMEFLOW_RAY_DASHBOARD_URL", "http://{master_addr}:8265/#/jobs/{submission_id}")
    url = RayDashboardLink().get_link(None, ti_key=ti)
    assert url.startswith("http://10.0.0.5:8265/#/jobs/slimeflow-")
    op = SimpleNamespace(recipe="qwen3-next-80b-a3b")
    assert WandbRunLink().get_link(op, ti_key=ti) == "https://wandb.ai/ml/rl/groups/q3n"
    ti.get_template_context = lambda: {"params": {"nodes": ["gpu0"]}}
    assert WandbRunLink().get_link(op, ti_key=ti) == ""  # W&B off: no link


def test_links_by_default_the_heads_dashboard_when_it_answers_and_the_wandb_entity(monkeypatch):
    import socket
    from types import SimpleNamespace

    from slimeflow.links import RayDashboardLink, WandbRunLink

    monkeypatch.delenv("SLIMEFLOW_RAY_DASHBOARD_URL", raising=False)
    monkeypatch.delenv("SLIMEFLOW_WANDB_URL", raising=False)
    monkeypatch.setattr("slimeflow.links._config",
                        lambda env, var: __import__("os").environ.get(env))
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    params = {"nodes": ["gpu0"], "master_addr": "127.0.0.1", "extra_train_args": ["--use-wandb"]}
    ti = SimpleNamespace(dag_id=DAG, run_id="manual__1", task_id="train",
                         get_template_context=lambda: {"params": params},
                         xcom_pull=lambda **kw: None)
    import slimeflow.links as links

    real = links._answers
    monkeypatch.setattr(links, "_answers", lambda host, p: real(host, port))  # 8265 -> ours
    try:
        assert RayDashboardLink().get_link(None, ti_key=ti) == "http://127.0.0.1:8265/#/jobs"
        params["ray_dashboard_host"] = "127.0.0.1"  # kept on the head: no link to a dead end
        assert RayDashboardLink().get_link(None, ti_key=ti) == ""
    finally:
        srv.close()
    params.pop("ray_dashboard_host")
    assert RayDashboardLink().get_link(None, ti_key=ti) == ""  # nothing answers
    op = SimpleNamespace(recipe="qwen3-4b")
    assert WandbRunLink().get_link(op, ti_key=ti) == "https://wandb.ai"  # no entity known
    monkeypatch.setenv("SLIMEFLOW_WANDB_ENTITY", "ml-team")
    assert WandbRunLink().get_link(op, ti_key=ti) == "https://wandb.ai/ml-team/slime"
