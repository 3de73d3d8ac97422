"""check_cluster's judgement of the probes: one sentence per problem, naming the node and a fix."""
import copy

import pytest

from slimeflow.cluster import ClusterError, judge
from slimeflow.config import RunConfig

GB = 10 ** 9


def healthy_probe(name="NVIDIA H100 80GB HBM3", cc="9.0", n=8):
    pkg = {"present": True, "version": "1"}
    return {
        "gpus": [{"index": i, "name": name, "compute_cap": cc, "memory_mib": 81559,
                  "driver": "580.95.05"} for i in range(n)],
        "gpu_error": None, "gpu_processes": [], "nvlink": True,
        "torch": {"version": "2.8.0", "cuda": "12.8"},
        "packages": {k: dict(pkg) for k in ("slime", "megatron", "sglang", "causal_conv1d")}
        | {"ray": {"present": True, "version": "2.60.0", "cli_version": "2.60.0"}}
        | {"fla": {"present": True, "wy_fast": "unpatched"}},
        "hf_cli": {"present": True, "path": "/usr/bin/hf", "version": "1.33.0"}, "disk": {"writable": True, "free_bytes": 5000 * GB},
        "ram": {"total_bytes": 2000 * GB}, "ports": {"6379": False, "8265": False},
        "hub": [{"type": "model", "repo": "Qwen/Qwen3-Next-80B-A3B-Thinking",
                 "bytes": int(162.6 * GB), "files": 50}],
        "nccl": {"ok": True, "busbw_gbps": 350.0, "world_size": 8},
    }


def cfg(nodes=1):
    return RunConfig.from_params("qwen3-next-80b-a3b",
                                 {"nodes": [f"gpu{i}" for i in range(nodes)]},
                                 hosts=[f"10.0.0.{i + 1}" for i in range(nodes)])


def problems(c, probes, shared=True):
    with pytest.raises(ClusterError) as e:
        judge(c, probes, shared, {})
    return str(e.value)


def test_a_healthy_two_node_cluster_gives_the_facts_later_steps_use():
    c = cfg(2)
    facts = judge(c, {"gpu0": healthy_probe(), "gpu1": healthy_probe()}, True, {})
    assert facts["storage_shared"] and facts["nvlink"] and facts["cc_major"] == 9
    assert facts["blackwell"] is False and facts["model_bytes_source"] == "hub"
    # 162.6 GB HF + 162.6 GB torch_dist + 81.3e9 params x 13 bytes ≈ 1382 GB
    assert 1370 * GB < facts["disk_needed_bytes"] < 1395 * GB


def test_mixed_gpu_models_and_counts_name_the_node():
    c = cfg(2)
    text = problems(c, {"gpu0": healthy_probe(), "gpu1": healthy_probe("NVIDIA H200", n=4)})
    assert "node gpu1 has 4 GPUs but gpus_per_node is 8" in text
    assert "node gpu1 has NVIDIA H200 GPUs but gpu0 has NVIDIA H100 80GB HBM3" in text


def test_old_driver_foreign_processes_and_busy_ports():
    p = healthy_probe()
    for g in p["gpus"]:
        g["driver"] = "520.61.05"
    p["gpu_processes"] = [{"pid": 4242, "name": "python3", "used_mib": 30000}]
    p["ports"]["8265"] = True
    text = problems(cfg(), {"gpu0": p})
    assert "node gpu0 runs NVIDIA driver 520.61.05, too old for compute capability 9.0" in text
    assert "pid 4242 python3 using 30000 MiB" in text and "never kills" in text
    assert "port(s) 8265" in text


def test_not_enough_disk_states_the_sizes_and_the_fix():
    p = healthy_probe()
    p["disk"]["free_bytes"] = 500 * GB
    text = problems(cfg(), {"gpu0": p})
    assert "node gpu0 has 500.0 GB free" in text and "needs about 1382" in text
    assert "choose a base_folder on a larger volume" in text


def test_unshared_storage_on_two_nodes():
    c = cfg(2)
    text = problems(c, {"gpu0": healthy_probe(), "gpu1": healthy_probe()}, shared=["gpu1"])
    assert "node gpu1 cannot see the marker the head wrote" in text


@pytest.mark.parametrize("nccl,expect", [
    ({"ok": False, "error": "NCCL error: unhandled system error"},
     "node gpu0: NCCL could not run an all-reduce over its GPUs (NCCL error: unhandled system "
     "error)"),
    ({"ok": True, "busbw_gbps": 12.5},
     "drain gpu0: its NCCL all-reduce bus bandwidth is 12.5 GB/s, under the floor of 296 GB/s "
     "(80% of the 370 GB/s that healthy 8 x NVIDIA H100 80GB HBM3 nodes reach (NVLink4 8-GPU"),
])
def test_preflight_nccl_failures(nccl, expect):
    p = healthy_probe()
    p["nccl"] = nccl
    assert expect in problems(cfg(), {"gpu0": p})


def test_nccl_skipped_or_absent_is_not_a_problem():
    p = healthy_probe()
    p["nccl"] = {"ok": True, "skipped": "single GPU"}
    judge(cfg(), {"gpu0": p}, True, {})
    del p["nccl"]
    judge(cfg(), {"gpu0": copy.deepcopy(p)}, True, {})


def test_preflight_nccl_defaults_on_with_several_gpus():
    assert cfg().train.preflight_nccl is True
    off = RunConfig.from_params("qwen3-next-80b-a3b", {"nodes": ["g"], "preflight_nccl": False},
                                hosts=["h"])
    assert off.train.preflight_nccl is False


def _with_ray(raylets=(), gcs=(), ports=()):
    p = healthy_probe()
    p["ray_local"] = {"raylets": [{"pid": r, "node_ip": "10.0.0.2", "gcs_address": None,
                                   "head": False} for r in raylets],
                      "gcs_servers": list(gcs), "running": bool(raylets or gcs)}
    for port in ports:
        p["ports"][port] = True
    return p


def test_a_ray_this_run_did_not_start_refuses_the_node_whatever_its_ports():
    # someone's Ray on a worker, on ports of its own: the head's port check cannot see it
    c = cfg(2)
    text = problems(c, {"gpu0": healthy_probe(), "gpu1": _with_ray(raylets=[4711], gcs=[4700])})
    assert ("node gpu1 already runs a Ray that this run did not start (raylet pid(s) 4711, GCS "
            "server pid(s) 4700); stop it there (`ray stop`) if it is left over from an earlier "
            "run, or wait for its owner to finish: slimeflow never stops a Ray it did not "
            "start.") in text
    assert "gpu0" not in text
    # the head's Ray on the default ports is one problem, not two sentences
    text = problems(c, {"gpu0": _with_ray(raylets=[9], gcs=[8], ports=("6379", "8265")),
                        "gpu1": healthy_probe()})
    assert text.count("node gpu0") == 1 and "port(s)" not in text


def test_the_runs_own_ray_is_left_for_train_to_reuse_or_restart():
    c = cfg(2)
    probes = {"gpu0": _with_ray(raylets=[9], gcs=[8], ports=("6379", "8265")),
              "gpu1": _with_ray(raylets=[11])}
    facts = judge(c, probes, True, {}, ray_is_ours=True)
    assert facts["storage_shared"]
    # without Ray running, a busy Ray port on the head is still refused
    p = healthy_probe()
    p["ports"]["6379"] = True
    assert "port(s) 6379" in problems(c, {"gpu0": p, "gpu1": healthy_probe()})


def _check_op(monkeypatch, iteration, record):
    from slimeflow.operators.preflight import CheckClusterOperator

    op = CheckClusterOperator(task_id="check_cluster")

    op.recipe = "qwen3-next-80b-a3b"
    monkeypatch.setattr(op, "run_json", lambda c, step, **kw: {"iteration": iteration})
    return op, record


@pytest.mark.parametrize("experiment,save", [("", "/root/Qwen3-Next-80B-A3B-Thinking_slime"),
                                             ("lr2e-6", "/root/Qwen3-Next-80B-A3B-Thinking_slime_lr2e-6")])
def test_an_experiment_names_its_own_checkpoint_folder(experiment, save):
    c = RunConfig.from_params("qwen3-next-80b-a3b", {"nodes": ["g"], "experiment": experiment},
                              hosts=["10.0.0.1"])
    assert c.paths.save_dir == save


@pytest.mark.parametrize("bad", ["../x", "a/b", "-x", "a b", "x" * 65, "a..b"])
def test_a_bad_experiment_name_is_refused_naming_the_param(bad):
    from slimeflow.validation import ParamError

    with pytest.raises(ParamError, match=r"^Param `experiment` must be empty or a name"):
        RunConfig.from_params("qwen3-next-80b-a3b", {"nodes": ["g"], "experiment": bad},
                              hosts=["10.0.0.1"])


def test_fresh_refuses_an_earlier_runs_checkpoint_and_resume_says_where_it_continues(
        monkeypatch):
    fresh = RunConfig.from_params("qwen3-next-80b-a3b", {"nodes": ["g"], "start": "fresh",
                                                         "experiment": "e1"},
                                  hosts=["10.0.0.1"])
    op, record = _check_op(monkeypatch, 179, {})
    with pytest.raises(RuntimeError) as e:
        op.start_point(fresh, record)
    assert str(e.value) == (
        "start is fresh but /root/Qwen3-Next-80B-A3B-Thinking_slime_e1 already holds rollout 179 "
        "from an earlier run; choose a new experiment name (its checkpoint folder starts empty), "
        "or set start to resume to continue at rollout 180: slimeflow never deletes "
        "checkpoints.")
    # this run's own checkpoint (a retry after a failure): a fresh start goes on from it
    op, _ = _check_op(monkeypatch, 179, None)
    got = op.start_point(fresh, {"attempts": [{"id": "x"}]})
    assert got == {"mode": "fresh", "experiment": "e1", "from_rollout": 180,
                   "save_dir": "/root/Qwen3-Next-80B-A3B-Thinking_slime_e1"}
    op, _ = _check_op(monkeypatch, None, None)
    assert op.start_point(fresh, {})["from_rollout"] == 0
    resume = RunConfig.from_params("qwen3-next-80b-a3b", {"nodes": ["g"]}, hosts=["10.0.0.1"])
    op, _ = _check_op(monkeypatch, 19, None)
    assert op.start_point(resume, {})["from_rollout"] == 20
