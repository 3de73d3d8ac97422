"""The train command line parsed by a node's own slime, Megatron and sglang
(include/node/argvcheck.py), and check_cluster's sentences about what it finds.

The trees are the simulated cluster's: the slime stand-in's parse_args (three parse_known_args
parsers, as slime 624b824) and the Megatron-LM parser stand-in, with or without the stand-in of
slime's Megatron patch. The real parsers' run is in docs/pipeline.md (`make argvcheck-real`)."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from slimeflow import builders
from slimeflow.cluster import judge_argv
from slimeflow.config import RunConfig
from tests.simcluster.cluster import MEGATRON_PATCH, _build_megatron, _build_slime

REPO = Path(__file__).resolve().parents[2]
ARGVCHECK = REPO / "include" / "node" / "argvcheck.py"


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    d = tmp_path_factory.mktemp("trees")
    _build_slime(d / "slime")
    _build_megatron(d / "Megatron-LM")
    return d


def cfg(trees, recipe="qwen3-next-80b-a3b", nodes=1, **params):
    return RunConfig.from_params(recipe, {"nodes": [f"g{i}" for i in range(nodes)],
                                          "slime_dir": str(trees / "slime"),
                                          "megatron_dir": str(trees / "Megatron-LM"), **params},
                                 hosts=[f"10.0.0.{i + 1}" for i in range(nodes)])


def check(c, facts=None, argv=None, pythonpath=None, megatron=None):
    step = builders.argv_check(c, facts)
    args = list(step.argv[2:])
    if megatron:
        args[args.index("--megatron-dir") + 1] = str(megatron)
    if argv is not None:
        args = args[:args.index("--") + 1] + argv
    env = {"PATH": "/usr/bin:/bin"}
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath)
    r = subprocess.run([sys.executable, str(ARGVCHECK), *args], capture_output=True, text=True,
                       env=env, cwd=step.cwd, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


def sglang_site(tmp_path, version):
    di = tmp_path / "site" / f"sglang-{version}.dist-info"
    di.mkdir(parents=True)
    (di / "METADATA").write_text(f"Metadata-Version: 2.1\nName: sglang\nVersion: {version}\n")
    return tmp_path / "site"


@pytest.mark.parametrize("recipe,nodes", [("qwen3-next-80b-a3b", 1), ("qwen3-next-80b-a3b", 4),
                                          ("qwen3-30b-a3b", 1), ("qwen3-4b", 1)])
def test_every_recipe_parses_with_slimes_pinned_trees(trees, recipe, nodes):
    res = check(cfg(trees, recipe, nodes))
    assert res["ok"] and res["parsed"] and res["dropped"] == [] and res["error"] is None, res
    assert res["megatron"]["slime_patch"] == "applied"
    assert len(res["slime"]["commit"]) == 40 and len(res["megatron"]["commit"]) == 40
    # before download_model, validation stops at the missing config.json, after every parser
    assert "does not appear to have a file named config.json" in res["needs_files"]
    assert res["parsers"] >= 4
    assert judge_argv(cfg(trees, recipe, nodes), res) == []


def test_with_the_model_present_validation_runs_through(trees, tmp_path):
    (tmp_path / "Qwen3-4B").mkdir()
    (tmp_path / "Qwen3-4B" / "config.json").write_text("{}")
    c = cfg(trees, "qwen3-4b", base_folder=str(tmp_path))
    res = check(c)
    assert res["ok"] and res.get("needs_files") is None and res["needs_gpu"] is None, res


def test_a_stock_megatron_drops_gated_attention_and_check_cluster_says_so(trees):
    meg = trees / "Megatron-LM"
    subprocess.run(["git", "-C", str(meg), "apply", "-R", str(MEGATRON_PATCH)], check=True)
    try:
        c = cfg(trees)
        res = check(c)
    finally:
        subprocess.run(["git", "-C", str(meg), "apply", str(MEGATRON_PATCH)], check=True)
    assert res["dropped"] == ["--use-gated-attention"] and not res["ok"], res
    assert res["megatron"]["slime_patch"] == "not applied"
    (sentence,) = judge_argv(c, res)
    assert sentence.startswith("node g0 would drop --use-gated-attention without a word: none of "
                               "slime's three parsers knows it there (slime "), sentence
    assert "slime's Megatron patch not applied" in sentence
    assert f"apply slime's docker/patch/latest/megatron.patch to {meg} as slime's image does " \
           f"(`git apply {trees}/slime/docker/patch/latest/megatron.patch` there)" in sentence
    # the 4B recipe does not use it: nothing dropped there
    subprocess.run(["git", "-C", str(meg), "apply", "-R", str(MEGATRON_PATCH)], check=True)
    try:
        assert check(cfg(trees, "qwen3-4b"))["ok"]
    finally:
        subprocess.run(["git", "-C", str(meg), "apply", str(MEGATRON_PATCH)], check=True)


def test_sglang_0_5_23_rejects_cuda_graph_bs_unless_renamed(trees, tmp_path):
    site = sglang_site(tmp_path, "0.5.23")
    c = cfg(trees)
    res = check(c, facts={}, pythonpath=site)
    assert res["sglang"] == "0.5.23"
    assert res["error"]["kind"] == "argv" and res["error"]["message"] == (
        "ambiguous option: --sglang-cuda-graph-bs could match --sglang-cuda-graph-bs-decode, "
        "--sglang-cuda-graph-bs-prefill"), res
    assert res["error"]["where"].startswith("slime/utils/arguments.py:")
    (sentence,) = judge_argv(c, res)
    assert sentence.startswith("node g0: sglang's parser rejects the train command line: "
                               "\"ambiguous option: --sglang-cuda-graph-bs could match"), sentence
    assert "sglang 0.5.23" in sentence and "install sglang 0.5.15.post1 as slime's image does" \
        in sentence
    # with the head's version in the facts (check_cluster puts it there) the flag is renamed
    facts = {"sglang_version": "0.5.23"}
    argv = builders.train_args(c, facts)
    assert "--sglang-cuda-graph-bs" not in argv and "--sglang-cuda-graph-bs-decode" in argv
    assert argv[argv.index("--sglang-cuda-graph-bs-decode") + 1] == "1"
    res = check(c, facts=facts, pythonpath=site)
    assert res["ok"], res
    # the 4B recipe passes no cuda-graph sizes: fine on either version
    assert check(cfg(trees, "qwen3-4b"), facts={}, pythonpath=site)["ok"]


def test_renames_follow_the_version():
    assert builders.sglang_renames("0.5.15.post1") == []
    assert builders.sglang_renames("0.5.19") == []
    assert builders.sglang_renames("0.5.20") == [("--sglang-cuda-graph-bs",
                                                  "--sglang-cuda-graph-bs-decode", "0.5.20")]
    assert builders.sglang_renames("0.6.0rc1")[0][1] == "--sglang-cuda-graph-bs-decode"
    assert builders.sglang_renames(None) == [] and builders.sglang_renames("unknown") == []


def test_a_literally_quoted_list_is_an_invalid_moe_layer_freq(trees):
    c = cfg(trees)
    argv = [("'" + t + "'") if t.startswith("[") else t for t in builders.train_args(c)]
    res = check(c, argv=argv)
    assert res["error"]["kind"] == "argv"
    assert res["error"]["message"].startswith("argument --moe-layer-freq: invalid moe_freq_type "
                                              "value: \"'[1,1,1,"), res["error"]
    (sentence,) = judge_argv(c, res)
    assert sentence.startswith("node g0: Megatron's parser rejects the train command line: "
                               "\"argument --moe-layer-freq: invalid moe_freq_type value"), sentence
    assert "fix that argument in the recipe or extra_train_args" in sentence


def test_a_megatron_that_needs_python_3_12(trees, tmp_path):
    meg = tmp_path / "Megatron-LM"
    shutil.copytree(trees / "Megatron-LM", meg)
    args_py = meg / "megatron" / "training" / "arguments.py"
    args_py.write_text("from typing import override\n" + args_py.read_text())
    c = cfg(trees)
    res = check(c, megatron=meg)
    if sys.version_info >= (3, 12):
        pytest.skip("typing.override exists on this Python")
    assert res["error"]["kind"] == "import"
    assert res["error"]["message"] == ("ImportError: cannot import name 'override' from 'typing' "
                                       f"({Path(shutil.__file__).parent}/typing.py)"), res["error"]
    assert res["error"]["where"] == "megatron/training/arguments.py:1"
    (sentence,) = judge_argv(c, res)
    assert "needs Python 3.12 but python3 there is 3.11" in sentence, sentence
    assert "check out the Megatron commit slime's image pins (1dcf0daf) or use Python 3.12" \
        in sentence


def test_validation_that_asks_the_gpu_stops_without_cuda(trees, tmp_path):
    pytest.importorskip("torch")
    meg = tmp_path / "Megatron-LM"
    shutil.copytree(trees / "Megatron-LM", meg)
    args_py = meg / "megatron" / "training" / "arguments.py"
    text = args_py.read_text().replace(
        "    return args\n",
        "    import torch\n    if torch.cuda.get_device_capability()[0] < 9:\n"
        "        args.moe_grouped_gemm = False\n    return args\n")
    args_py.write_text(text)
    line = text.splitlines().index("    if torch.cuda.get_device_capability()[0] < 9:") + 1
    c = cfg(trees)
    res = check(c, megatron=meg)
    assert res["parsed"] and res["error"] is None, res
    assert res["needs_gpu"] == (f"torch.cuda.get_device_capability() at "
                                f"megatron/training/arguments.py:{line}"), res
    assert res["ok"] and judge_argv(c, res) == []
