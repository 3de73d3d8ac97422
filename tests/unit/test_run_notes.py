"""Run notes for failures: the sentence comes from the failed task's own log, read as Airflow's
log reader yields it (StructuredLogMessage), on log text recorded from real runs of
`make up-sim` (frames of the tracebacks cut to the last two)."""
import json

import pytest
from airflow.utils.log.file_task_handler import StructuredLogMessage

from slimeflow.ui import runs

# validate_params, base_folder /etc/slime typed into the trigger form (whole log)
VALIDATE_PARAMS = r'''
{"timestamp":"2026-12-02T17:32:16.815265Z","level":"info","event":"::group::Pre Execute","logger":"task","filename":"task_runner.py","lineno":2412}
{"timestamp":"2026-12-02T17:32:17.053278Z","level":"warning","event":"GitWildMatchPattern ('gitwildmatch') is deprecated. Use 'gitignore' for GitIgnoreBasicPattern or GitIgnoreSpecPattern instead.","category":"DeprecationWarning","filename":"/work/main/.venv/lib/python3.11/site-packages/airflow/sdk/_shared/module_loading/file_discovery.py","lineno":106,"map_index":-1,"ti_id":"01a237d0-6797-7429-8ee5-0c6598d7e05a","dag_id":"slime_qwen3_next_80b_a3b","task_id":"validate_params","try_number":1,"run_id":"manual__2026-12-02T17:32:14.411629+00:00","logger":"py.warnings"}
{"timestamp":"2026-12-02T17:32:17.066676Z","level":"info","event":"DAG bundles loaded: dags-folder","map_index":-1,"ti_id":"01a237d0-6797-7429-8ee5-0c6598d7e05a","dag_id":"slime_qwen3_next_80b_a3b","task_id":"validate_params","try_number":1,"run_id":"manual__2026-12-02T17:32:14.411629+00:00","logger":"airflow.dag_processing.bundles.manager.DagBundlesManager","filename":"manager.py","lineno":304}
{"timestamp":"2026-12-02T17:32:17.102388Z","level":"info","event":"Filling up the DagBag from /work/main/dags/slime_qwen3_next_80b_a3b.py","map_index":-1,"ti_id":"01a237d0-6797-7429-8ee5-0c6598d7e05a","dag_id":"slime_qwen3_next_80b_a3b","task_id":"validate_params","try_number":1,"run_id":"manual__2026-12-02T17:32:14.411629+00:00","logger":"airflow.dag_processing.dagbag.BundleDagBag","filename":"dagbag.py","lineno":460}
{"timestamp":"2026-12-02T17:32:17.584376Z","level":"info","event":"Worker startup parse complete","bundle_name":"dags-folder","bundle_version":null,"dag_file":"slime_qwen3_next_80b_a3b.py","dag_id":"slime_qwen3_next_80b_a3b","bundle_prepare_ms":2,"dag_file_parse_ms":516,"map_index":-1,"ti_id":"01a237d0-6797-7429-8ee5-0c6598d7e05a","task_id":"validate_params","try_number":1,"run_id":"manual__2026-12-02T17:32:14.411629+00:00","logger":"task","filename":"task_runner.py","lineno":1073}
{"timestamp":"2026-12-02T17:32:17.992337Z","level":"info","event":"::endgroup::","map_index":-1,"ti_id":"01a237d0-6797-7429-8ee5-0c6598d7e05a","dag_id":"slime_qwen3_next_80b_a3b","task_id":"validate_params","try_number":1,"run_id":"manual__2026-12-02T17:32:14.411629+00:00","logger":"task","filename":"task_runner.py","lineno":2232}
{"timestamp":"2026-12-02T17:32:17.995397Z","level":"error","event":"Task failed with exception","map_index":-1,"ti_id":"01a237d0-6797-7429-8ee5-0c6598d7e05a","dag_id":"slime_qwen3_next_80b_a3b","task_id":"validate_params","try_number":1,"run_id":"manual__2026-12-02T17:32:14.411629+00:00","logger":"task","filename":"task_runner.py","lineno":1676,"error_detail":[{"exc_type":"ParamError","exc_value":"Param `base_folder` must not be inside the system folder /etc; choose a data folder such as /root or /data.","exc_notes":[],"syntax_error":null,"is_cause":false,"frames":[{"filename":"/work/main/plugins/slimeflow/config.py","lineno":177,"name":"from_params"},{"filename":"/work/main/plugins/slimeflow/validation.py","lineno":91,"name":"check_data_folder"}],"is_group":false,"exceptions":[]}]}
{"timestamp":"2026-12-02T17:32:17.998732Z","level":"info","event":"::group::Post Execute","map_index":-1,"ti_id":"01a237d0-6797-7429-8ee5-0c6598d7e05a","dag_id":"slime_qwen3_next_80b_a3b","task_id":"validate_params","try_number":1,"run_id":"manual__2026-12-02T17:32:14.411629+00:00","logger":"task","filename":"task_runner.py","lineno":1677}
{"timestamp":"2026-12-02T17:32:18.551320Z","level":"warning","event":"slimeflow alert (no channel configured, so only logged here; see docs/operations.md to set up Slack, e-mail or Apprise):\n[slimeflow] slime_qwen3_next_80b_a3b validate_params FAILED: bad params\nParam `base_folder` must not be inside the system folder /etc; choose a data folder such as /root or /data.\nDAG: slime_qwen3_next_80b_a3b\nRun: manual__2026-12-02T17:32:14.411629+00:00\nTask: validate_params\nNode: sim_node_0 (head)\nTry: 1 of 1\nCause: bad params\nFix: choose a data folder such as /root or /data\nLog: http://127.0.0.1:18080/dags/slime_qwen3_next_80b_a3b/runs/manual__2026-12-02T17%3A32%3A14.411629%2B00%3A00/tasks/validate_params?try_number=1\nLast 12 log lines:\nGitWildMatchPattern ('gitwildmatch') is deprecated. Use 'gitignore' for GitIgnoreBasicPattern or GitIgnoreSpecPattern instead.\nDAG bundles loaded: dags-folder\nWorker startup parse complete\nParamError: Param `base_folder` must not be inside the system folder /etc; choose a data folder such as /root or /data.\nTask failed with exception\n  File \"/work/main/plugins/slimeflow/operators/validate.py\", line 22, in execute\n    RunConfig.from_params(self.recipe, params)\n  File \"/work/main/plugins/slimeflow/config.py\", line 177, in from_params\n    base_folder=v.check_data_folder(\"base_folder\", p.get(\"base_folder\", \"/root\")),\n                ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n  File \"/work/main/plugins/slimeflow/validation.py\", line 91, in check_data_folder\n    raise ParamError(f\"Param `{field}` must not be inside the system folder {top}; choose a \"","map_index":-1,"ti_id":"01a237d0-6797-7429-8ee5-0c6598d7e05a","dag_id":"slime_qwen3_next_80b_a3b","task_id":"validate_params","try_number":1,"run_id":"manual__2026-12-02T17:32:14.411629+00:00","logger":"slimeflow.notifiers.callbacks.SlimeflowNotifier","filename":"channels.py","lineno":184}
{"timestamp":"2026-12-02T17:32:18.556061Z","level":"info","event":"::endgroup::","map_index":-1,"ti_id":"01a237d0-6797-7429-8ee5-0c6598d7e05a","dag_id":"slime_qwen3_next_80b_a3b","task_id":"validate_params","try_number":1,"run_id":"manual__2026-12-02T17:32:14.411629+00:00","logger":"task","filename":"task_runner.py","lineno":2379}
'''

# check_cluster refusing sim_node_1, which runs a foreign GPU process (the log's last lines)
CHECK_CLUSTER = r'''
{"timestamp":"2026-12-02T17:29:10.602914Z","level":"info","event":"[sim_node_0] $ python3 /tmp/explore/state/up-sim/cluster/base/.slimeflow/node/20b1f9e4e227/fsops.py du --dir /tmp/explore/state/up-sim/cluster/base/aime-2024","dag_id":"slime_qwen3_next_80b_a3b","try_number":1,"map_index":-1,"ti_id":"01a237cd-06a0-7959-95b8-3183efcd3f9c","run_id":"manual__2026-12-02T17:28:33.132207+00:00","task_id":"check_cluster","logger":"airflow.task.operators.slimeflow.operators.preflight.CheckClusterOperator","filename":"base.py","lineno":74}
{"timestamp":"2026-12-02T17:29:10.712550Z","level":"info","event":"[sim_node_0] $ python3 /tmp/explore/state/up-sim/cluster/base/.slimeflow/node/20b1f9e4e227/fsops.py read-text --path /tmp/explore/state/up-sim/cluster/base/.slimeflow/runs/slimeflow-slime_qwen3_next_80b_a3b-manual__2026-12-02T17-28-33-132207-00-00-67c8543e/attempts.json","dag_id":"slime_qwen3_next_80b_a3b","try_number":1,"map_index":-1,"ti_id":"01a237cd-06a0-7959-95b8-3183efcd3f9c","run_id":"manual__2026-12-02T17:28:33.132207+00:00","task_id":"check_cluster","logger":"airflow.task.operators.slimeflow.operators.preflight.CheckClusterOperator","filename":"base.py","lineno":74}
{"timestamp":"2026-12-02T17:29:10.831873Z","level":"error","event":"Task failed with exception","dag_id":"slime_qwen3_next_80b_a3b","try_number":1,"map_index":-1,"ti_id":"01a237cd-06a0-7959-95b8-3183efcd3f9c","run_id":"manual__2026-12-02T17:28:33.132207+00:00","task_id":"check_cluster","logger":"task","filename":"task_runner.py","lineno":1676,"error_detail":[{"exc_type":"ClusterError","exc_value":"node sim_node_1 already runs GPU processes this run did not start (pid 974 /usr/bin/sleep using 30000 MiB); stop them or choose another node; slimeflow never kills what it did not start.","exc_notes":[],"syntax_error":null,"is_cause":false,"frames":[{"filename":"/work/main/plugins/slimeflow/operators/preflight.py","lineno":99,"name":"work"},{"filename":"/work/main/plugins/slimeflow/cluster.py","lineno":270,"name":"judge"}],"is_group":false,"exceptions":[]}]}
{"timestamp":"2026-12-02T17:29:10.833678Z","level":"info","event":"::group::Post Execute","dag_id":"slime_qwen3_next_80b_a3b","try_number":1,"map_index":-1,"ti_id":"01a237cd-06a0-7959-95b8-3183efcd3f9c","run_id":"manual__2026-12-02T17:28:33.132207+00:00","task_id":"check_cluster","logger":"task","filename":"task_runner.py","lineno":1677}
{"timestamp":"2026-12-02T17:29:10.906605Z","level":"warning","event":"slimeflow alert (no channel configured, so only logged here; see docs/operations.md to set up Slack, e-mail or Apprise):\n[slimeflow] slime_qwen3_next_80b_a3b check_cluster FAILED: preflight\nnode sim_node_1 already runs GPU processes this run did not start (pid 974 /usr/bin/sleep using 30000 MiB); stop them or choose another node; slimeflow never kills what it did not start.\nDAG: slime_qwen3_next_80b_a3b\nRun: manual__2026-12-02T17:28:33.132207+00:00\nTask: check_cluster\nNode: sim_node_1\nTry: 1 of 1\nCause: preflight\nFix: slimeflow never kills what it did not start\nLog: http://127.0.0.1:18080/dags/slime_qwen3_next_80b_a3b/runs/manual__2026-12-02T17%3A28%3A33.132207%2B00%3A00/tasks/check_cluster?try_number=1\nLast 21 log lines:\nGitWildMatchPattern ('gitwildmatch') is deprecated. Use 'gitignore' for GitIgnoreBasicPattern or GitIgnoreSpecPattern instead.\nDAG bundles loaded: dags-folder\nWorker startup parse complete\n[sim_node_0] $ python3 /tmp/explore/state/up-sim/cluster/base/.slimeflow/node/20b1f9e4e227/fsops.py marker-write --path /tmp/explore/state/up-sim/cluster/base/.slimeflow/markers/3edb6bd35baa22af43f141172a1b6853 --token 3edb6bd35baa22af43f141172a1b6853\n[sim_node_1] $ python3 /tmp/explore/state/up-sim/cluster/base/.slimeflow/node/20b1f9e4e227/fsops.py marker-check --path /tmp/explore/state/up-sim/cluster/base/.slimeflow/markers/3edb6bd35baa22af43f141172a1b6853 --token 3edb6bd35baa22af43f141172a1b6853\n[sim_node_0] $ python3 /tmp/explore/state/up-sim/cluster/base/.slimeflow/node/20b1f9e4e227/fsops.py remove --path /tmp/explore/state/up-sim/cluster/base/.slimeflow/markers/3edb6bd35baa22af43f141172a1b6853\n[sim_node_0] $ python3 /tmp/explore/state/up-sim/cluster/base/.slimeflow/node/20b1f9e4e227/fsops.py du --dir /tmp/explore/state/up-sim/cluster/base/Qwen3-Next-80B-A3B-Thinking\n[sim_node_0] $ python3 /tmp/explore/state/up-sim/cluster/base/.slimeflow/node/20b1f9e4e227/fsops.py du --dir /tmp/explore/state/up-sim/cluster/base/Qwen3-Next-80B-A3B-Thinking_torch_dist\n[sim_node_0] $ python3 /tmp/explore/state/up-sim/cluster/base/.slimeflow/node/20b1f9e4e227/fsops.py du --dir /tmp/explore/state/up-sim/cluster/base/dapo-math-17k\n[sim_node_0] $ python3 /tmp/explore/state/up-sim/cluster/base/.slimeflow/node/20b1f9e4e227/fsops.py du --dir /tmp/explore/state/up-sim/cluster/base/aime-2024\n[sim_node_0] $ python3 /tmp/explore/state/up-sim/cluster/base/.slimeflow/node/20b1f9e4e227/fsops.py read-text --path /tmp/explore/state/up-sim/cluster/base/.slimeflow/runs/slimeflow-slime_qwen3_next_80b_a3b-manual__2026-12-02T17-28-33-132207-00-00-67c8543e/attempts.json\nClusterError: node sim_node_1 already runs GPU processes this run did not start (pid 974 /usr/bin/sleep using 30000 MiB); stop them or choose another node; slimeflow never kills what it did not start.\nTask failed with exception\n  File \"/work/main/plugins/slimeflow/operators/base.py\", line 160, in execute\n    return self.work(cfg, context)\n           ^^^^^^^^^^^^^^^^^^^^^^^\n  File \"/work/main/plugins/slimeflow/operators/preflight.py\", line 99, in work\n    facts = judge(cfg, probes, shared, present, ray_is_ours=self.ray_is_ours(probes, record))\n            ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n  File \"/work/main/plugins/slimeflow/cluster.py\", line 270, in judge\n    raise ClusterError(\" \".join(problems))","dag_id":"slime_qwen3_next_80b_a3b","try_number":1,"map_index":-1,"ti_id":"01a237cd-06a0-7959-95b8-3183efcd3f9c","run_id":"manual__2026-12-02T17:28:33.132207+00:00","task_id":"check_cluster","logger":"slimeflow.notifiers.callbacks.SlimeflowNotifier","filename":"channels.py","lineno":184}
{"timestamp":"2026-12-02T17:29:10.906920Z","level":"info","event":"::endgroup::","dag_id":"slime_qwen3_next_80b_a3b","try_number":1,"map_index":-1,"ti_id":"01a237cd-06a0-7959-95b8-3183efcd3f9c","run_id":"manual__2026-12-02T17:28:33.132207+00:00","task_id":"check_cluster","logger":"task","filename":"task_runner.py","lineno":2379}
'''

# train deferred, its run marked failed from the run page (the trigger log's last lines)
TRAIN_CANCELLED = r'''
{"timestamp":"2026-12-02T17:26:58.931547Z","level":"info","event":"[sim_node_0] (MegatronTrainRayActor pid=4208) [2026-12-02 17:26:58] timer.py:32 - Timer update_weights end (elapsed: 0.1s)","try_number":1,"run_id":"manual__2026-12-02T17:14:46.998939+00:00","ti_id":"01a237c0-6bb9-7603-8ed7-1263c27baef7","map_index":-1,"dag_id":"slime_qwen3_next_80b_a3b","task_id":"train","logger":"slimeflow.triggers.train_job.TrainJobTrigger","filename":"train_job.py","lineno":390}
{"timestamp":"2026-12-02T17:26:59.798263Z","level":"info","event":"Trigger cancelled by user action, invoking on_kill","name":"slime_qwen3_next_80b_a3b/manual__2026-12-02T17:14:46.998939+00:00/train/-1/1 (ID 1)","try_number":1,"run_id":"manual__2026-12-02T17:14:46.998939+00:00","ti_id":"01a237c0-6bb9-7603-8ed7-1263c27baef7","map_index":-1,"dag_id":"slime_qwen3_next_80b_a3b","task_id":"train","filename":"triggerer_job_runner.py","lineno":1656}
{"timestamp":"2026-12-02T17:26:59.799024Z","level":"warning","event":"[sim_node_0] task killed by a user: stopping Ray job slimeflow-slime_qwen3_next_80b_a3b-manual__2026-12-02T17-14-46-998939-00-00-7401b683, then Ray on sim_node_0, sim_node_1","try_number":1,"run_id":"manual__2026-12-02T17:14:46.998939+00:00","ti_id":"01a237c0-6bb9-7603-8ed7-1263c27baef7","map_index":-1,"dag_id":"slime_qwen3_next_80b_a3b","task_id":"train","logger":"slimeflow.triggers.train_job.TrainJobTrigger","filename":"train_job.py","lineno":637}
{"timestamp":"2026-12-02T17:27:00.831044Z","level":"error","event":"_GatheringFuture exception was never retrieved\nfuture: <_GatheringFuture finished exception=CancelledError()>","logger":"asyncio","try_number":1,"run_id":"manual__2026-12-02T17:14:46.998939+00:00","ti_id":"01a237c0-6bb9-7603-8ed7-1263c27baef7","map_index":-1,"dag_id":"slime_qwen3_next_80b_a3b","task_id":"train","filename":"base_events.py","lineno":1771,"error_detail":[{"exc_type":"CancelledError","exc_value":"","exc_notes":[],"syntax_error":null,"is_cause":false,"frames":[{"filename":"/work/main/.venv/lib/python3.11/site-packages/asyncssh/stream.py","lineno":157,"name":"read"},{"filename":"/work/main/.venv/lib/python3.11/site-packages/asyncssh/stream.py","lineno":573,"name":"read"},{"filename":"/work/main/.venv/lib/python3.11/site-packages/asyncssh/stream.py","lineno":407,"name":"_block_read"}],"is_group":false,"exceptions":[]}]}
{"timestamp":"2026-12-02T17:27:00.854585Z","level":"info","event":"trigger completed","name":"slime_qwen3_next_80b_a3b/manual__2026-12-02T17:14:46.998939+00:00/train/-1/1 (ID 1)","try_number":1,"run_id":"manual__2026-12-02T17:14:46.998939+00:00","ti_id":"01a237c0-6bb9-7603-8ed7-1263c27baef7","map_index":-1,"dag_id":"slime_qwen3_next_80b_a3b","task_id":"train","filename":"triggerer_job_runner.py","lineno":1692}
'''

# that run's teardown (its stop lines)
TEARDOWN_AFTER_CANCEL = r'''
{"timestamp":"2026-12-02T17:27:02.851611Z","level":"info","event":"[sim_node_0] $ ray job stop --address=http://127.0.0.1:8265 slimeflow-slime_qwen3_next_80b_a3b-manual__2026-12-02T17-14-46-998939-00-00-7401b683","run_id":"manual__2026-12-02T17:14:46.998939+00:00","ti_id":"01a237c0-6bba-7a7f-a9c8-8fafc2d21b8f","dag_id":"slime_qwen3_next_80b_a3b","task_id":"teardown","map_index":-1,"try_number":1,"logger":"airflow.task.operators.slimeflow.operators.teardown.TeardownOperator","filename":"base.py","lineno":74}
{"timestamp":"2026-12-02T17:27:09.274201Z","level":"info","event":"[sim_node_0] ray job stop slimeflow-slime_qwen3_next_80b_a3b-manual__2026-12-02T17-14-46-998939-00-00-7401b683: exit 0","run_id":"manual__2026-12-02T17:14:46.998939+00:00","ti_id":"01a237c0-6bba-7a7f-a9c8-8fafc2d21b8f","dag_id":"slime_qwen3_next_80b_a3b","task_id":"teardown","map_index":-1,"try_number":1,"logger":"airflow.task.operators.slimeflow.operators.teardown.TeardownOperator","filename":"ray.py","lineno":383}
{"timestamp":"2026-12-02T17:27:09.275728Z","level":"info","event":"[sim_node_0] $ ray stop","logger":"airflow.task.operators.slimeflow.operators.teardown.TeardownOperator","filename":"base.py","lineno":74}
{"timestamp":"2026-12-02T17:27:09.286229Z","level":"info","event":"[sim_node_1] $ ray stop","logger":"airflow.task.operators.slimeflow.operators.teardown.TeardownOperator","filename":"base.py","lineno":74}
{"timestamp":"2026-12-02T17:27:14.681898Z","level":"info","event":"[sim_node_1] 2026-12-02 17:27:14,666\tINFO scripts.py:1451 -- 1/1 stopped.\r2026-12-02 17:27:14,672\tSUCC scripts.py:1496 -- Stopped all 2 Ray processes.","logger":"airflow.task.operators.slimeflow.operators.teardown.TeardownOperator","filename":"base.py","lineno":56}
{"timestamp":"2026-12-02T17:27:15.389135Z","level":"info","event":"[sim_node_0] 2026-12-02 17:27:15,384\tINFO scripts.py:1451 -- 1/1 stopped.\r2026-12-02 17:27:15,384\tSUCC scripts.py:1496 -- Stopped all 15 Ray processes.","logger":"airflow.task.operators.slimeflow.operators.teardown.TeardownOperator","filename":"base.py","lineno":56}
{"timestamp":"2026-12-02T17:27:16.783341Z","level":"info","event":"[sim_node_0] lease release: {'released': True}","run_id":"manual__2026-12-02T17:14:46.998939+00:00","ti_id":"01a237c0-6bba-7a7f-a9c8-8fafc2d21b8f","dag_id":"slime_qwen3_next_80b_a3b","task_id":"teardown","map_index":-1,"try_number":1,"logger":"airflow.task.operators.slimeflow.operators.teardown.TeardownOperator","filename":"teardown.py","lineno":64}
{"timestamp":"2026-12-02T17:27:16.897798Z","level":"info","event":"[sim_node_1] lease release: {'released': True}","run_id":"manual__2026-12-02T17:14:46.998939+00:00","ti_id":"01a237c0-6bba-7a7f-a9c8-8fafc2d21b8f","dag_id":"slime_qwen3_next_80b_a3b","task_id":"teardown","map_index":-1,"try_number":1,"logger":"airflow.task.operators.slimeflow.operators.teardown.TeardownOperator","filename":"teardown.py","lineno":64}
{"timestamp":"2026-12-02T17:27:16.899319Z","level":"info","event":"::group::Post Execute","run_id":"manual__2026-12-02T17:14:46.998939+00:00","ti_id":"01a237c0-6bba-7a7f-a9c8-8fafc2d21b8f","dag_id":"slime_qwen3_next_80b_a3b","task_id":"teardown","map_index":-1,"try_number":1,"logger":"task","filename":"task_runner.py","lineno":1580}
{"timestamp":"2026-12-02T17:27:16.899710Z","level":"info","event":"Pushing xcom","ti":"RuntimeTaskInstance(id=UUID('01a237c0-6bba-7a7f-a9c8-8fafc2d21b8f'), task_id='teardown', dag_id='slime_qwen3_next_80b_a3b', run_id='manual__2026-12-02T17:14:46.998939+00:00', try_number=1, dag_version_id=UUID('01a237bc-0a24-724e-b823-c499cc9494d4'), map_index=-1, hostname='vm', context_carrier={'traceparent': '00-57f3a72db1e229bd0189a433b7a95c97-c3f06b724c9d22c7-00'}, queue='default', task=<Task(TeardownOperator): teardown>, bundle_instance=LocalDagBundle(name=dags-folder), max_tries=0, start_date=datetime.datetime(2026, 12, 2, 17, 27, 0, 188638, tzinfo=datetime.timezone.utc), end_date=None, state=<TaskInstanceState.RUNNING: 'running'>, is_mapped=False, rendered_map_index=None, sentry_integration='')","run_id":"manual__2026-12-02T17:14:46.998939+00:00","ti_id":"01a237c0-6bba-7a7f-a9c8-8fafc2d21b8f","dag_id":"slime_qwen3_next_80b_a3b","task_id":"teardown","map_index":-1,"try_number":1,"logger":"task","filename":"task_runner.py","lineno":2280}
'''

def messages(text):
    """The records as the log reader hands them over."""
    return [StructuredLogMessage.model_validate(json.loads(line))
            for line in text.strip().splitlines()]


def test_a_failed_param_check_gives_its_own_sentence():
    story = runs.log_story(messages(VALIDATE_PARAMS))
    assert story["error"] == ("Param `base_folder` must not be inside the system folder /etc; "
                              "choose a data folder such as /root or /data.")
    assert not story["cancelled"] and not story["job_stops"] and not story["ray_stopped"]


def test_a_refused_node_gives_check_clusters_sentence():
    story = runs.log_story(messages(CHECK_CLUSTER))
    assert story["error"] == (
        "node sim_node_1 already runs GPU processes this run did not start (pid 974 "
        "/usr/bin/sleep using 30000 MiB); stop them or choose another node; slimeflow never "
        "kills what it did not start.")


def test_a_cancelled_train_and_what_teardown_stopped():
    train = runs.log_story(messages(TRAIN_CANCELLED))
    assert train["cancelled"] and train["error"] is None  # asyncio's own noise is not a cause
    td = runs.log_story(messages(TEARDOWN_AFTER_CANCEL))
    job = "slimeflow-slime_qwen3_next_80b_a3b-manual__2026-12-02T17-14-46-998939-00-00-7401b683"
    assert td["job_stops"] == {job: 0} and td["ray_stopped"] == ["sim_node_0", "sim_node_1"]
    view = {"state": "failed", "head": "sim_node_0", "total": 5000,
            "progress": {"rollout": 1037, "total": 5000, "status": "RUNNING"},
            "checkpoint": {"iteration": 1035, "path": "/b/x/iter_0001035"}}
    failure = {"task_id": "train", "map_index": -1, **train}
    note = runs.note_for(dict(view, failures=[failure], teardown={"state": "success", **td}))
    assert note == ("slimeflow: CANCELLED in train at rollout 1037/5000: stopped by a user; "
                    "latest checkpoint rollout 1035 (a resume continues at rollout 1036); "
                    f"teardown stopped Ray on sim_node_0, sim_node_1 and Ray job {job}")
    assert runs.ti_note_for(failure, view) == (
        "slimeflow: cancelled at rollout 1037/5000: a user stopped this task (marked it or "
        "its run failed, or cleared it)")
    # teardown could not do it: the note says so instead of claiming a stop
    bad = runs.note_for(dict(view, failures=[failure], teardown={
        "state": "failed", "error": "`ray stop` failed on node(s) sim_node_1 (exit 1); log in "
                                    "and run `ray stop` there before the next run."}))
    assert "teardown FAILED: `ray stop` failed on node(s) sim_node_1" in bad
    assert "stopped Ray" not in bad


@pytest.mark.parametrize("detail,sentence", [
    ({"exc_type": "TrainingFailed", "exc_value": "training job J on node gpu0 ended FAILED: "
      "cause OOM; fix: lower --max-tokens-per-gpu. Last 50 log lines:\n(actor) CUDA out of "
      "memory"}, "training job J on node gpu0 ended FAILED: cause OOM; fix: lower "
                 "--max-tokens-per-gpu."),
    ({"exc_type": "KeyError", "exc_value": "'nodes'"}, "KeyError: 'nodes'"),
    ({"exc_type": "AirflowException", "exc_value": ""}, "AirflowException"),
])
def test_the_sentence_is_the_first_line_named_by_type_unless_ours(detail, sentence):
    assert runs.error_sentence(detail) == sentence


def test_the_run_note_names_the_first_failed_task_and_each_task_keeps_its_own():
    view = {"state": "failed", "head": "gpu0", "total": 300, "error": "ParamError: ..."}
    first = {"task_id": "preflight", "map_index": 1, "error": "node gpu1 has no GPU.",
             "cancelled": False}
    teardown = {"task_id": "teardown", "map_index": -1, "cancelled": False,
                "error": "teardown could not reach node(s) gpu1."}
    assert runs.note_for(dict(view, failures=[first, teardown])) == \
        "slimeflow: FAILED in preflight[1]: node gpu1 has no GPU."
    assert runs.ti_note_for(teardown, view) == "slimeflow: teardown could not reach node(s) gpu1."
    # train's own cause (progress.json on the head) names the node of the dead actor
    train = dict(view, node_ips={"10.0.0.2": "gpu1"}, progress={
        "rollout": 4, "status": "FAILED", "cause": {"cause": "Ray actor died", "ip": "10.0.0.2",
                                                    "fix": "look at the actor's log"}})
    f = {"task_id": "train", "map_index": -1, "cancelled": False, "error": "training job ..."}
    assert runs.note_for(dict(train, failures=[f])) == \
        "slimeflow: FAILED in train: Ray actor died on node gpu1; fix: look at the actor's log"
    assert runs.ti_note_for(f, train) == \
        "slimeflow: Ray actor died on node gpu1; fix: look at the actor's log"


def test_a_note_is_written_but_never_over_a_persons_note():
    class Note:
        def __init__(self, content):
            self.content = content

    class TI:  # the shape of TaskInstance.note (an association proxy) and its row
        def __init__(self, note=None):
            self.task_instance_note = Note(note) if note else None

        @property
        def note(self):
            return self.task_instance_note and self.task_instance_note.content

        @note.setter
        def note(self, value):
            self.task_instance_note = Note(value)

    blank, ours, theirs = TI(), TI("slimeflow: rollout 3/5"), TI("rebooting gpu1, ignore")
    assert runs.set_note(blank, "slimeflow: x.", "task_instance_note") and blank.note == \
        "slimeflow: x."
    assert runs.set_note(ours, "slimeflow: y.", "task_instance_note") and ours.note == \
        "slimeflow: y."
    assert not runs.set_note(theirs, "slimeflow: z.", "task_instance_note")
    assert theirs.note == "rebooting gpu1, ignore"
    assert not runs.set_note(ours, "slimeflow: y.", "task_instance_note")  # nothing new
    assert not runs.set_note(blank, None, "task_instance_note")


def test_one_run_gets_its_note_and_each_failed_task_its_own(monkeypatch):
    failures = [{"task_id": "check_cluster", "map_index": -1, "cancelled": False,
                 "error": "node gpu1 has no GPU."},
                {"task_id": "teardown", "map_index": -1, "cancelled": False,
                 "error": "teardown could not reach node(s) gpu1."}]
    written = []
    monkeypatch.setattr(runs, "cached_view", lambda *a: {"state": "failed", "progress": {}})
    monkeypatch.setattr(runs, "run_failures", lambda d, r: (failures, None))
    monkeypatch.setattr(runs, "write_notes", lambda *a: written.append(a) or 3)
    assert runs._note_run("slime_qwen3_4b", "r1", "failed", {}) == 3
    assert written == [("slime_qwen3_4b", "r1",
                        "slimeflow: FAILED in check_cluster: node gpu1 has no GPU.",
                        {("check_cluster", -1): "slimeflow: node gpu1 has no GPU.",
                         ("teardown", -1): "slimeflow: teardown could not reach node(s) gpu1."})]


def test_a_log_that_does_not_say_yet_why_the_task_failed_is_read_again(monkeypatch):
    """Marked failed by a user: the task is failed a moment before the triggerer logs the
    cancel, so the first read finds no cause and must not be the one kept."""
    logs = [[], messages(TRAIN_CANCELLED)]
    monkeypatch.setattr(runs, "_STORIES", {})
    monkeypatch.setattr(runs, "read_story", lambda *a: runs.log_story(logs.pop(0)))
    key = ("d", "r", "train", -1, 1)
    assert not runs._story(*key)["cancelled"]
    assert runs._story(*key)["cancelled"]
    assert runs._story(*key)["cancelled"] and logs == []  # kept now: no third read
    # while the run goes on, no note is written for a failure without a cause yet
    written = []
    monkeypatch.setattr(runs, "cached_view", lambda *a: {"state": "running", "progress": {}})
    monkeypatch.setattr(runs, "run_failures", lambda d, r: ([
        {"task_id": "train", "map_index": -1, "cancelled": False, "error": None}], None))
    monkeypatch.setattr(runs, "write_notes", lambda *a: written.append(a) or 0)
    runs._note_run("d", "r", "running", {})
    assert written[0][3] == {}
