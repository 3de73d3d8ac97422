import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def plan(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "plugins"))
    return subprocess.run([sys.executable, "-m", "slimeflow", "plan", *args], env=env,
                          capture_output=True, text=True)


def test_plan_prints_every_step_with_the_dags_builders():
    r = plan("--recipe", "qwen3-next-80b-a3b", "--nodes", "4", "--gpus-per-node", "8",
             "--base-folder", "/data", "--master-addr", "10.0.0.1", "--param", "num_rollout=100")
    assert r.returncode == 0, r.stderr
    steps = json.loads(r.stdout)["steps"]
    assert set(steps) >= {"preflight", "download_model", "download_datasets", "patch_fla",
                          "convert", "train", "teardown"}
    assert len(steps["preflight"]) == 4
    submit = steps["train"][-1]
    assert submit["node"] == "node0" and submit["cwd"] == "/root/slime"
    assert submit["runtime_env"]["env_vars"]["MASTER_ADDR"] == "10.0.0.1"
    assert "'--num-rollout'" not in submit["argv"] and "100" in submit["argv"]
    assert steps["convert"][0]["argv"][-1] == "/data/Qwen3-Next-80B-A3B-Thinking_torch_dist/"


def test_plan_shows_the_argv_train_py_receives_as_plain_tokens():
    r = plan("--recipe", "qwen3-next-80b-a3b", "--nodes", "1", "--master-addr", "10.0.0.1")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    freq = "[" + ",".join(["1"] * 48) + "]"
    assert out["ray_version"] == "2.60.0"  # what a fresh slime node installs
    argv = out["train_py_argv"]
    assert argv[:2] == ["python3", "train.py"] and argv[argv.index("--moe-layer-freq") + 1] == freq
    # Ray >= 2.56 (shlex.join): the submit line carries the same plain tokens, no quotes
    submit = out["steps"]["train"][-1]["argv"]
    assert submit[submit.index("--") + 1:] == argv
    assert not any(t.startswith("'") for t in submit)


def test_plan_for_an_older_ray_quotes_the_submit_line_but_not_what_train_py_gets():
    r = plan("--recipe", "qwen3-next-80b-a3b", "--nodes", "1", "--master-addr", "10.0.0.1",
             "--ray-version", "2.49.1")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    freq = "[" + ",".join(["1"] * 48) + "]"
    submit = out["steps"]["train"][-1]["argv"]
    assert f"'{freq}'" in submit  # list2cmdline leaves it to sh, which would glob it
    assert freq in out["train_py_argv"]
    r = plan("--recipe", "qwen3-4b", "--nodes", "1", "--master-addr", "10.0.0.1",
             "--ray-version", "latest")
    assert r.returncode == 2
    assert r.stderr.strip() == ("error: --ray-version 'latest' is not a Ray version; give one "
                                "such as 2.60.0.")


def test_plan_rejects_bad_input_with_one_sentence():
    r = plan("--recipe", "qwen3-4b", "--nodes", "1", "--master-addr", "10.0.0.1",
             "--base-folder", "relative/path")
    assert r.returncode == 2
    assert r.stderr.strip() == ("error: Param `base_folder` must be an absolute path (start "
                                "with /); got 'relative/path'.")
    r = plan("--recipe", "nope", "--nodes", "1", "--master-addr", "10.0.0.1")
    assert r.returncode == 2 and "unknown recipe 'nope'" in r.stderr


def test_plan_masks_secrets():
    from slimeflow.builders import Step

    s = Step(node="n", argv=["hf"], env={"HF_TOKEN": "hf_secret", "A": "b"})
    assert s.public()["env"] == {"HF_TOKEN": "***", "A": "b"}
