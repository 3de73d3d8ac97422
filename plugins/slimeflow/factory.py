"""The one DAG factory: a recipe name in, the full pipeline DAG out."""
from __future__ import annotations

from datetime import datetime, timedelta

from slimeflow import operations
from slimeflow.recipes import load_recipe

TASK_DOCS = {
    "validate_params": "Checks every param (paths, repo ids, flags, bounds, connections) before "
                       "any node is contacted.",
    "preflight": "One per node: uploads include/node by SFTP and runs the probe (GPUs, driver, "
                 "CUDA/torch/triton, slime/Megatron/sglang/ray/fla/causal_conv1d, hf CLI, disk, "
                 "RAM, GPU processes, Ray ports). XCom: the probe JSON.",
    "check_cluster": "Judges all probes together: same GPUs everywhere, enough disk and RAM, "
                     "shared storage, no foreign GPU processes; then parses the train command "
                     "line on the head with its own slime, Megatron and sglang (flags they would "
                     "drop or reject fail the run here). XCom: facts for later steps.",
    "download_model": "`hf download` of the model (head, or every node without shared "
                      "storage); skipped when the local copy verifies. XCom: local path.",
    "download_datasets": "`hf download --repo-type dataset` of the recipe's datasets. XCom: "
                         "{name: path}.",
    "check_model_config": "Compares the recipe's model args with config.json (the converter "
                          "silently writes bad weights otherwise).",
    "decide_patch": "Patch fla only on compute capability 10.x with the unpatched line present.",
    "patch_fla": "`git apply` of include/patches on every node; idempotent.",
    "skip_patch_fla": "No fla patch needed (not Blackwell, or fla already fixed).",
    "fla_ready": "Join of the patch branch.",
    "convert": "torchrun tools/convert_hf_to_torch_dist.py; skipped when the finished output's "
               "manifest matches. XCom: torch_dist path.",
    "train": "Starts Ray, submits slime's train.py with `ray job submit --no-wait`, follows the "
             "job. XCom: {save_dir, iteration, path}.",
    "teardown": "Always runs: stops this run's Ray job and `ray stop` on every node.",
}


def _doc_md(recipe) -> str:
    tasks = "\n".join(f"- **{t}**: {d}" for t, d in TASK_DOCS.items())
    return (f"# {recipe.title}\n\nRuns slime's pipeline for `{recipe.hf_repo}` on GPU nodes over "
            f"SSH: env check, download, Blackwell-only fla patch, HF to torch_dist conversion, "
            f"training. Checkpoint paths travel through XCom.\n\n"
            f"**Nodes**: add one Airflow connection of type ssh per node (host, login, key_file, "
            f"and `host_key` pinned in the extra), then list their ids in the `nodes` param, head "
            f"first.\n\n## Tasks\n{tasks}\n")


def build_dag(recipe_name: str):
    from airflow.sdk import DAG, XComArg
    from airflow.providers.standard.operators.empty import EmptyOperator

    from slimeflow.operators.convert import ConvertOperator
    from slimeflow.operators.download import (CheckModelConfigOperator, DownloadDatasetsOperator,
                                             DownloadModelOperator)
    from slimeflow.operators.patch import DecidePatchOperator, PatchFlaOperator
    from slimeflow.operators.preflight import CheckClusterOperator, PreflightOperator
    from slimeflow.operators.teardown import TeardownOperator
    from slimeflow.operators.train import TrainOperator
    from slimeflow.operators.validate import ValidateParamsOperator
    from slimeflow.links import RayDashboardLink, WandbRunLink
    from slimeflow.notifiers.callbacks import on_failure, on_retry
    from slimeflow.params import build_params

    recipe = load_recipe(recipe_name)
    schedule = operations.schedule(recipe)  # SLIMEFLOW_SCHEDULE_<DAG> / _DATA_ASSET_ or Variables
    with DAG(
        dag_id=recipe.dag_id,
        description=recipe.title,
        params=build_params(recipe),
        schedule=schedule,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        deadline=operations.deadline(recipe),
        doc_md=_doc_md(recipe) + operations.doc_sections(recipe, schedule),
        tags=["slime", "rl", recipe.name],
        default_args={"owner": "ml-platform", "retries": 0,
                      "retry_delay": timedelta(minutes=2),
                      "on_failure_callback": on_failure, "on_retry_callback": on_retry},
        render_template_as_native_obj=True,
    ) as dag:
        validate = ValidateParamsOperator(task_id="validate_params")
        preflight = PreflightOperator.partial(task_id="preflight",
                                              doc_md=TASK_DOCS["preflight"]).expand(
            node=XComArg(validate))
        check = CheckClusterOperator(task_id="check_cluster")
        dl_model = DownloadModelOperator(task_id="download_model")
        dl_data = DownloadDatasetsOperator(task_id="download_datasets")
        model_cfg = CheckModelConfigOperator(task_id="check_model_config")

        branch = DecidePatchOperator(task_id="decide_patch")
        patch = PatchFlaOperator(task_id="patch_fla")
        skip = EmptyOperator(task_id="skip_patch_fla")
        fla_ready = EmptyOperator(task_id="fla_ready",
                                  trigger_rule="none_failed_min_one_success")
        convert = ConvertOperator(task_id="convert")
        train = TrainOperator(task_id="train", outlets=[operations.checkpoint_asset(recipe)],
                              post_execute=operations.publish_checkpoint)
        train.operator_extra_links = (RayDashboardLink(), WandbRunLink())
        teardown = TeardownOperator(task_id="teardown")

        validate >> preflight >> check >> [dl_model, dl_data, branch]
        dl_model >> model_cfg
        branch >> [patch, skip] >> fla_ready
        [model_cfg, dl_data, fla_ready] >> convert >> train >> teardown
        teardown.as_teardown(setups=validate)
        for t in dag.tasks:
            if t.task_id != "preflight":
                t.doc_md = TASK_DOCS.get(t.task_id)
    return dag
