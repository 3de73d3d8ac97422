from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = {"slime_qwen3_next_80b_a3b", "slime_qwen3_30b_a3b", "slime_qwen3_4b"}
FIXED_TASKS = {"preflight", "check_cluster", "download_model", "download_datasets", "patch_fla",
               "skip_patch_fla", "convert", "train", "teardown"}


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


def test_dags_import_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == EXPECTED


@pytest.mark.parametrize("dag_id", sorted(EXPECTED))
def test_pipeline_shape(dagbag, dag_id):
    dag = dagbag.dags[dag_id]
    assert FIXED_TASKS <= set(dag.task_ids)
    assert dag.max_active_runs == 1 and dag.catchup is False
    t = dag.task_dict
    assert "check_cluster" in t["preflight"].downstream_task_ids
    assert {"patch_fla", "skip_patch_fla"} == t["decide_patch"].downstream_task_ids
    assert t["fla_ready"].trigger_rule == "none_failed_min_one_success"
    assert t["teardown"].is_teardown
    assert t["train"].upstream_task_ids == {"convert"}
    for name in ("nodes", "master_addr", "socket_ifname", "base_folder", "slime_dir",
                 "megatron_dir", "hf_repo", "hf_revision", "gpus_per_node", "grad_reduce_in_bf16",
                 "num_rollout", "save_interval", "allow_blackwell_training", "extra_train_args"):
        assert dag.params.get_param(name).description, name


def test_dag_files_only_call_the_factory():
    for path in (ROOT / "dags").glob("*.py"):
        code = [l for l in path.read_text().splitlines()
                if l.strip() and not l.startswith(("#", '"""'))]
        assert code[0].startswith("from slimeflow.factory import build_dag"), path
        assert len(code) == 2 and code[1].startswith("dag = build_dag("), path


def test_no_form_field_starts_out_invalid():
    """Airflow's trigger form marks a string field whose value is empty as a missing required
    value (a red mark on Run Parameters) unless its schema allows null; every default must
    also pass its own schema."""
    from airflow.sdk import Param

    from slimeflow.params import param_specs
    from slimeflow.recipes import load_recipe, recipe_names

    for name in recipe_names():
        for field, (default, schema, _, _) in param_specs(load_recipe(name)).items():
            Param(default, **schema).resolve()  # raises if the default breaks its schema
            types = schema.get("type")
            types = types if isinstance(types, list) else [types]
            if default in ("", None):
                assert "null" in types, f"{name}: {field} starts empty but is not nullable"
