"""The whole DAG, run by `airflow dags test`, against the simulated cluster over real SSH."""
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.simcluster.airflow_run import ROOT, airflow, airflow_env, dags_test, run_conf
from tests.simcluster.cluster import SimCluster, procs_of

pytestmark = pytest.mark.integration
DAG = "slime_qwen3_next_80b_a3b"
SAVE = "Qwen3-Next-80B-A3B-Thinking_slime"


def hub_stats(cluster):
    with urllib.request.urlopen(cluster.hub_url + "/_sim/stats", timeout=10) as r:
        return json.load(r)


def hub_reset(cluster):
    req = urllib.request.Request(cluster.hub_url + "/_sim/reset", method="POST", data=b"")
    urllib.request.urlopen(req, timeout=10).read()


@pytest.fixture
def sim(tmp_path):
    made = []

    def make(**kw):
        c = SimCluster.up(tmp_path / f"cluster{len(made)}", rollout_seconds=0.05, **kw)
        made.append(c)
        env = airflow_env(c, tmp_path / "airflow")
        airflow(env, "db", "migrate", capture_output=True, check=True)
        return c, env

    yield make
    for c in made:
        c.down()
        assert procs_of(str(c.dir)) == [], "the simulated cluster left processes behind"


def run(cluster, env, tmp_path, name, **conf):
    return dags_test(env, DAG, run_conf(cluster, **conf), tmp_path / f"{name}.log")


def fail_text(result):
    return "\n".join(l for l in result["log"].splitlines() if "Error" in l or "error" in l)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One 1-node H100 cluster for the single-node tests, and its first full run. The tests after
    the first start from the state it leaves (a finished run), as a re-run would."""
    d = tmp_path_factory.mktemp("single")
    c = SimCluster.up(d / "cluster", rollout_seconds=0.05, nodes=1, gpu="H100")
    try:
        env = airflow_env(c, d / "airflow")
        airflow(env, "db", "migrate", capture_output=True, check=True)
        yield c, env, run(c, env, d, "first")
    finally:
        c.down()
        assert procs_of(str(c.dir)) == [], "the simulated cluster left processes behind"


def test_single_node_h100_end_to_end(finished):
    cluster, env, r = finished
    assert r["rc"] == 0, fail_text(r)
    x, st = r["xcom"], r["states"]
    base = str(cluster.base_folder)
    assert x["download_model"]["return_value"] == f"{base}/Qwen3-Next-80B-A3B-Thinking"
    assert x["convert"]["return_value"] == f"{base}/Qwen3-Next-80B-A3B-Thinking_torch_dist"
    ckpt = x["train"]["return_value"]
    assert ckpt["save_dir"] == f"{base}/Qwen3-Next-80B-A3B-Thinking_slime"
    assert ckpt["iteration"] == 3 and ckpt["path"].endswith("iter_0000003")
    assert Path(ckpt["path"]).is_dir()
    # Hopper: no patch
    assert st["patch_fla"] == "skipped" and st["skip_patch_fla"] == "success"
    assert st["teardown"] == "success"
    # check_cluster says how the run starts
    assert (f"START: resume, experiment (default): {base}/Qwen3-Next-80B-A3B-Thinking_slime "
            f"holds no checkpoint; training starts at rollout 0") in r["log"]
    # the 1x8 layout ran: 6 actor GPUs + 2 rollout GPUs, the seed's runtime env on the head
    assert "--actor-num-gpus-per-node 6" in r["log"]
    # progress came from the lines real Ray wrote: slime's actor lines, behind Ray's prefix
    assert "progress: rollout 4/4 (100.0%)" in r["log"]
    assert "(MegatronTrainRayActor pid=" in r["log"]
    # the SSH libraries' per-connection chatter stays out of the task logs
    for chatter in ("Authentication (publickey) successful", "Opened sftp connection",
                    "Requesting new SSH session", "Opening SSH connection to"):
        assert chatter not in r["log"], chatter
    # converter output is the real layout, marked as ours
    td = Path(x["convert"]["return_value"])
    assert (td / "latest_checkpointed_iteration.txt").read_text().strip() == "release"
    assert json.loads((td / ".slimeflow-manifest.json").read_text())["recipe"] == "qwen3-next-80b-a3b"


def test_train_py_receives_exactly_the_builders_argv(finished):
    """Through real `ray job submit` (Ray 2.60 joins with shlex.join, then sh -c): the argv that
    train.py received equals, token for token, what `slimeflow plan` says it will receive."""
    cluster, env, r = finished
    assert r["rc"] == 0, fail_text(r)
    got = [json.loads(l)["argv"] for l in
           (cluster.node_dir(0) / "train_argv.jsonl").read_text().splitlines()][-1]
    conf = run_conf(cluster)
    params = [f"--param={k}={json.dumps(v)}" for k, v in conf.items()
              if k not in ("nodes", "base_folder", "gpus_per_node")]
    p = subprocess.run([sys.executable, "-m", "slimeflow", "plan", "--recipe", "qwen3-next-80b-a3b",
                        "--nodes", "1", "--base-folder", str(cluster.base_folder),
                        "--master-addr", cluster.nodes[0]["host"], "--ray-version", "2.60.0", *params],
                       capture_output=True, text=True, env=dict(env, PYTHONPATH=str(ROOT / "plugins")))
    assert p.returncode == 0, p.stderr
    want = json.loads(p.stdout)["train_py_argv"]
    assert want[:2] == ["python3", "train.py"]
    assert got == want[2:]
    # --moe-layer-freq arrives as Megatron parses it: a bare list, not "'[1,...]'" in quotes
    assert got[got.index("--moe-layer-freq") + 1] == "[" + ",".join(["1"] * 48) + "]"


def test_rerun_of_a_finished_run_moves_no_bytes_and_trains_nothing(finished, tmp_path):
    cluster, env, first = finished
    assert first["rc"] == 0
    td = cluster.base_folder / "Qwen3-Next-80B-A3B-Thinking_torch_dist"
    stamp = (td / ".slimeflow-manifest.json").stat().st_mtime_ns
    hub_reset(cluster)
    r = run(cluster, env, tmp_path, "again")
    assert r["rc"] == 0, fail_text(r)
    stats = hub_stats(cluster)
    downloads = sum(f.get("get", 0) for repo in stats["repos"].values()
                    for f in repo["files"].values())
    assert downloads == 0 and stats["bytes"] < 100_000, stats  # only the API's file listings
    assert "not downloading" in r["log"]
    assert "is a finished conversion" in r["log"] and "skipping" in r["log"]
    assert (td / ".slimeflow-manifest.json").stat().st_mtime_ns == stamp
    assert "nothing left to train, so no job is submitted" in r["log"]
    assert r["xcom"]["train"]["return_value"]["iteration"] == 3


def test_a_fresh_start_on_an_earlier_runs_checkpoint_is_refused_before_any_download(
        finished, tmp_path):
    cluster, env, _ = finished
    hub_reset(cluster)
    r = run(cluster, env, tmp_path, "fresh", start="fresh", num_rollout=8)
    assert r["rc"] != 0 and r["states"]["check_cluster"] == "failed", r["states"]
    assert r["states"]["download_model"] == "upstream_failed"
    save = f"{cluster.base_folder}/Qwen3-Next-80B-A3B-Thinking_slime"
    assert (f"start is fresh but {save} already holds rollout 3 from an earlier run; choose a "
            f"new experiment name") in r["log"]
    stats = hub_stats(cluster)  # preflight's size queries only: no file was fetched
    assert sum(f.get("get", 0) for repo in stats["repos"].values()
               for f in repo["files"].values()) == 0, stats


def test_corrupted_shard_is_the_only_file_fetched_again(finished, tmp_path):
    cluster, env, first = finished
    assert first["rc"] == 0
    shard = sorted((cluster.base_folder / "Qwen3-Next-80B-A3B-Thinking").glob("*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))
    hub_reset(cluster)
    r = run(cluster, env, tmp_path, "repair")
    assert r["rc"] == 0, fail_text(r)
    files = hub_stats(cluster)["repos"]["Qwen/Qwen3-Next-80B-A3B-Thinking"]["files"]
    fetched = {name for name, f in files.items() if f.get("get")}
    assert fetched == {shard.name}
    assert f"refetching 1 bad file(s): {shard.name}" in r["log"]


def test_two_nodes_multi_node_ray_and_shared_storage(sim, tmp_path):
    cluster, env = sim(nodes=2, gpu="H100", storage="shared")
    r = run(cluster, env, tmp_path, "two")
    assert r["rc"] == 0, fail_text(r)
    head, worker = cluster.nodes[0]["host"], cluster.nodes[1]["host"]
    assert f"ray start --address={head}:6379 --num-gpus 8 --node-ip-address {worker}" in r["log"]
    assert f'"MASTER_ADDR": "{head}"' in r["log"]
    assert "--actor-num-nodes 2" in r["log"] and "--colocate" in r["log"]
    assert r["states"]["preflight[1]"] == "success"
    assert r["xcom"]["train"]["return_value"]["iteration"] == 3

    # the worker machine dies mid-run (power cut): train fails naming it, nothing saved is lost
    import threading

    from tests.simcluster.faults import train_actors

    kept = sorted(p.name for p in (cluster.base_folder / SAVE).glob("iter_*"))
    got = {}
    runner = threading.Thread(target=lambda: got.update(
        run(cluster, env, tmp_path, "worker-dies", num_rollout=4000)))
    runner.start()
    for _ in range(600):  # until slime's training actor runs on the worker
        if train_actors(cluster, 1) or not runner.is_alive():
            break
        time.sleep(0.5)
    assert train_actors(cluster, 1), "no training actor came up on the worker"
    cluster.fault("vanish-node", node=1)
    runner.join(600)
    assert not runner.is_alive() and got["rc"] != 0
    assert got["states"]["train"] == "failed", got["states"]
    train_fail = [l for l in got["log"].splitlines() if "ended FAILED: cause" in l or
                  "ended LOST: cause" in l]
    assert train_fail and "on node sim_node_1" in train_fail[0], fail_text(got)
    assert set(kept) <= {p.name for p in (cluster.base_folder / SAVE).glob("iter_*")}
    # the next run's preflight refuses the dead node before anything else touches it
    again = run(cluster, env, tmp_path, "after-worker-died")
    assert again["rc"] != 0 and again["states"]["preflight[1]"] == "failed", again["states"]
    assert again["states"]["train"] == "upstream_failed"
    assert "node sim_node_1 (" in again["log"] and ") is unreachable" in again["log"]


def test_two_nodes_without_shared_storage_fail_in_check_cluster(sim, tmp_path):
    cluster, env = sim(nodes=2, gpu="H100", storage="local")
    r = run(cluster, env, tmp_path, "local")
    assert r["rc"] != 0
    assert r["states"]["check_cluster"] == "failed"
    assert r["states"]["download_model"] == "upstream_failed"
    assert ("node sim_node_1 cannot see the marker the head wrote" in r["log"]
            and "storage shared by every node" in r["log"])


def test_not_enough_disk_is_a_clear_preflight_failure(sim, tmp_path):
    cluster, env = sim(nodes=1, gpu="H100", disk_mb=8)
    r = run(cluster, env, tmp_path, "disk")
    assert r["rc"] != 0
    assert r["states"]["check_cluster"] == "failed"
    assert "node sim_node_0 has 0.0 GB free at" in r["log"]
    assert "choose a base_folder on a larger volume" in r["log"]
    assert not (cluster.node_base(0) / "Qwen3-Next-80B-A3B-Thinking").exists()


def test_blackwell_patches_fla_and_refuses_training_unless_allowed(sim, tmp_path):
    cluster, env = sim(nodes=1, gpu="B200")
    wy = next(Path(cluster.dir, "site").rglob("gated_delta_rule/wy_fast.py"))
    assert "b_dk += tl.dot(tl.trans(b_dA), b_kb)" in wy.read_text()
    r = run(cluster, env, tmp_path, "b200")
    assert r["states"]["patch_fla"] == "success" and r["states"]["skip_patch_fla"] == "skipped"
    assert "b_dk += tl.dot(tl.trans(b_dA), b_kb)" not in wy.read_text()
    assert r["states"]["train"] == "failed" and r["states"]["convert"] == "success"
    assert "slime's Megatron training does not support Blackwell yet" in r["log"]
    assert "allow_blackwell_training=true" in r["log"]
    # second run: the patch is already there, nothing changes; training allowed this time
    r2 = run(cluster, env, tmp_path, "b200-allowed", allow_blackwell_training=True)
    assert r2["rc"] == 0, fail_text(r2)
    assert r2["states"]["skip_patch_fla"] == "success"  # probe now sees the patched file
    assert r2["xcom"]["train"]["return_value"]["iteration"] == 3
