"""`python -m slimeflow argvcheck`: the argv it hands include/node/argvcheck.py, the environment,
the exit status and the summary line. The real-tree runs are `make argvcheck-real`
(docs/pipeline.md, "Argv check against the real parsers"); here a fake node Python stands in."""
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "plugins"))

from slimeflow.__main__ import exit_status, node_env, quote_literal, summary  # noqa: E402

# A node Python: answers the sglang version probe from $FAKE_SGLANG, and for argvcheck.py
# records its argv and PYTHONPATH into $FAKE_RECORD and prints $FAKE_RESULT as its last line.
FAKE_PY = """#!/bin/sh
if [ "$1" = "-c" ]; then echo "$FAKE_SGLANG"; exit 0; fi
"%s" -c 'import json, os, sys; json.dump({"argv": sys.argv[1:], "pythonpath": os.environ["PYTHONPATH"]}, open(os.environ["FAKE_RECORD"], "w"))' "$@"
echo "noise from the child"
echo "$FAKE_RESULT"
""" % sys.executable


@pytest.fixture
def fake_python(tmp_path):
    py = tmp_path / "python"
    py.write_text(FAKE_PY)
    py.chmod(py.stat().st_mode | stat.S_IEXEC)
    return py


def run_cli(tmp_path, py, *args, sglang="0.5.15.post1", result=None):
    rec = tmp_path / "record.json"
    result = result or {"ok": True, "parsed": True, "dropped": [], "error": None,
                        "needs_gpu": "torch.cuda.get_device_capability() at "
                                     "megatron/training/arguments.py:852", "sglang": sglang}
    env = dict(os.environ, PYTHONPATH=str(ROOT / "plugins"), FAKE_SGLANG=sglang,
               FAKE_RECORD=str(rec), FAKE_RESULT=json.dumps(result))
    r = subprocess.run([sys.executable, "-m", "slimeflow", "argvcheck", "--python", str(py),
                        "--slime-dir", "/s", "--megatron-dir", "/m", *args], env=env,
                       capture_output=True, text=True, cwd=tmp_path)
    return r, (json.loads(rec.read_text()) if rec.exists() else None)


def test_hands_argvcheck_the_argv_plan_renders_with_megatron_then_sglang_on_the_path(
        tmp_path, fake_python):
    r, rec = run_cli(tmp_path, fake_python, "--recipe", "qwen3-30b-a3b", "--nodes", "1",
                     "--sglang-path", "/sg")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert rec["pythonpath"] == "/m:/sg"  # not our own PYTHONPATH
    argv = rec["argv"]
    assert argv[0].endswith("include/node/argvcheck.py")
    assert argv[1:5] == ["--slime-dir", "/s", "--megatron-dir", "/m"]
    train = argv[argv.index("--") + 1:]
    plan = subprocess.run([sys.executable, "-m", "slimeflow", "plan", "--recipe",
                           "qwen3-30b-a3b", "--nodes", "1", "--master-addr", "10.0.0.1"],
                          env=dict(os.environ, PYTHONPATH=str(ROOT / "plugins")),
                          capture_output=True, text=True)
    assert train == json.loads(plan.stdout)["train_py_argv"][2:]
    assert out["train_py_argv"] == train and out["sglang_version_used"] == "0.5.15.post1"
    assert "--sglang-cuda-graph-bs" in train
    assert "stops at needs_gpu" in r.stderr


def test_argv_follows_the_sglang_the_node_python_sees_unless_forced(tmp_path, fake_python):
    r, rec = run_cli(tmp_path, fake_python, "--recipe", "qwen3-30b-a3b", "--nodes", "1",
                     sglang="0.5.23")
    train = rec["argv"][rec["argv"].index("--") + 1:]
    assert "--sglang-cuda-graph-bs-decode" in train and "--sglang-cuda-graph-bs" not in train
    r, rec = run_cli(tmp_path, fake_python, "--recipe", "qwen3-30b-a3b", "--nodes", "1",
                     "--sglang-version", "0.5.15.post1", sglang="0.5.23")
    train = rec["argv"][rec["argv"].index("--") + 1:]
    assert "--sglang-cuda-graph-bs" in train
    assert json.loads(r.stdout)["sglang_version_seen"] == "0.5.23"


def test_quote_literal_keeps_the_quotes_on_list_tokens(tmp_path, fake_python):
    r, rec = run_cli(tmp_path, fake_python, "--recipe", "qwen3-30b-a3b", "--nodes", "1",
                     "--quote-literal")
    train = rec["argv"][rec["argv"].index("--") + 1:]
    freq = train[train.index("--moe-layer-freq") + 1]
    assert freq == "'[" + ",".join(["1"] * 48) + "]'"
    assert train[train.index("--num-layers") + 1] == "48"  # plain tokens stay plain
    assert quote_literal(["a", "[1,1]"]) == ["a", "'[1,1]'"]


def test_exit_status_and_out_file(tmp_path, fake_python):
    bad = {"ok": False, "parsed": False, "dropped": [], "needs_gpu": None,
           "error": {"kind": "argv", "message": "ambiguous option: --sglang-cuda-graph-bs could "
                     "match --sglang-cuda-graph-bs-decode, --sglang-cuda-graph-bs-prefill",
                     "where": "slime/backends/sglang_utils/arguments.py:225"}}
    out_file = tmp_path / "res" / "x.json"
    r, _ = run_cli(tmp_path, fake_python, "--recipe", "qwen3-4b", "--nodes", "1",
                   "--out", str(out_file), result=bad)
    assert r.returncode == 1
    assert json.loads(out_file.read_text())["error"]["kind"] == "argv"
    assert "FAIL argv: ambiguous option" in r.stderr
    assert exit_status({"ok": True, "needs_files": "FileNotFoundError: x"}) == 0
    assert exit_status({"ok": True, "dropped": ["--use-gated-attention"]}) == 1
    assert exit_status({"ok": False}) == 1


def test_summary_names_dropped_flags_and_needs_files():
    base = {"recipe": "r", "layout": "l", "nodes": 1, "gpus_per_node": 8, "sglang": "0.5.15",
            "sglang_version_used": "0.5.15"}
    assert summary({**base, "ok": False, "dropped": ["--use-gated-attention"]}).endswith(
        "FAIL dropped --use-gated-attention")
    assert "needs_files: FileNotFoundError: ref_load" in summary(
        {**base, "ok": True, "needs_files": "FileNotFoundError: ref_load /x does not exist",
         "needs_files_at": "slime/utils/arguments.py:1777"})


def test_bad_python_and_no_result(tmp_path):
    r, _ = run_cli(tmp_path, tmp_path / "nope", "--recipe", "qwen3-4b", "--nodes", "1")
    assert r.returncode == 2 and "not an executable" in r.stderr
    silent = tmp_path / "silent"
    silent.write_text("#!/bin/sh\n[ \"$1\" = -c ] && echo 0.5.15 && exit 0\necho boom >&2\n"
                      "exit 3\n")
    silent.chmod(0o755)
    r, _ = run_cli(tmp_path, silent, "--recipe", "qwen3-4b", "--nodes", "1")
    assert r.returncode == 1 and "without a result" in r.stderr and "boom" in r.stderr


def test_node_env_puts_only_the_node_trees_on_pythonpath():
    env = node_env(["/m", "", "/sg"], {"env_vars": {"PYTHONPATH": "/root/Megatron-LM/",
                                                    "CUDA_DEVICE_MAX_CONNECTIONS": "1"}},
                   base={"PYTHONPATH": "/ours/plugins", "HOME": "/h"})
    assert env == {"PYTHONPATH": "/m:/sg", "CUDA_DEVICE_MAX_CONNECTIONS": "1", "HOME": "/h"}
