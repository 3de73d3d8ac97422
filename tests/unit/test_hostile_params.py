"""The hostile-value corpus (tests/hostile_corpus.py) against validation, the form schema and the
one place a shell sees our values (Ray's entrypoint line, for both ways Ray builds it)."""
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from slimeflow import builders
from slimeflow.config import RunConfig
from slimeflow.params import param_specs
from slimeflow.recipes import load_recipe
from slimeflow.validation import ParamError
from tests.hostile_corpus import CORPUS, INERT, MARKER, SCHEMA_BLIND

RECIPE = load_recipe("qwen3-next-80b-a3b")
BASE = {"nodes": ["gpu_node_0"], "gpus_per_node": 8, "base_folder": "/data",
        "slime_dir": "/root/slime", "megatron_dir": "/root/Megatron-LM"}
IDS = [f"{f}-{why}-{i}" for i, (f, _, why) in enumerate(CORPUS)]


def test_the_corpus_is_big_and_covers_every_field():
    assert len(CORPUS) >= 40
    fields = {f for f, _, _ in CORPUS}
    assert {"base_folder", "slime_dir", "megatron_dir", "hf_repo", "hf_revision", "hf_endpoint",
            "master_addr", "socket_ifname", "nodes", "extra_train_args", "gpus_per_node",
            "num_rollout", "save_interval", "cp_size", "poll_interval"} <= fields
    assert set(param_specs(RECIPE)) <= fields | {"nccl_nvls"}


@pytest.mark.parametrize("field,value,why", CORPUS, ids=IDS)
def test_validation_refuses_with_one_sentence_naming_the_field(field, value, why):
    with pytest.raises(ParamError) as e:
        RunConfig.from_params(RECIPE, dict(BASE, **{field: value}), hosts=["10.0.0.1"])
    msg = str(e.value)
    assert msg.startswith(f"Param `{field}`"), msg
    assert msg.endswith(".") and "\n" not in msg and "\x00" not in msg, msg
    assert len(msg) < 400, msg
    # invisible or direction-changing characters only ever appear escaped
    assert not any(c in msg for c in "\u202e\u200d\x00"), msg


@pytest.mark.parametrize("field,value,why", CORPUS, ids=IDS)
def test_the_form_schema_refuses_too(field, value, why):
    from airflow.sdk import Param
    from airflow.sdk.definitions.param import ParamValidationError

    specs = param_specs(RECIPE)
    if field not in specs:
        pytest.skip(f"{field} is not a form param")
    default, schema, _, _ = specs[field]
    param = Param(default, **schema)
    blind = (field, why) in SCHEMA_BLIND
    try:
        param.resolve(value=value)
    except ParamValidationError:
        assert not blind, f"the schema refuses {field} {why}: drop it from SCHEMA_BLIND"
    else:
        assert blind, f"the Param schema for {field} accepts {why}: {value!r:.80}"


def test_every_pattern_refuses_a_trailing_newline():
    # Python's `$` matches before a final newline; the schema patterns must not.
    from airflow.sdk import Param
    from airflow.sdk.definitions.param import ParamValidationError

    for name, (default, schema, _, _) in param_specs(RECIPE).items():
        if "pattern" in schema:
            with pytest.raises(ParamValidationError):
                Param(default, **schema).resolve(value=(default or "x") + "\n")


def test_valid_values_pass_schema_and_validation():
    from airflow.sdk import Param

    good = dict(BASE, master_addr="fe80::1", hf_endpoint="https://hf-mirror.example.com/",
                hf_revision="0123456789abcdef0123456789abcdef01234567",
                hf_repo="Qwen/Qwen3-Next-80B-A3B-Thinking", socket_ifname="ib0.8001",
                extra_train_args=INERT + ["--wandb-project", "my-project"])
    cfg = RunConfig.from_params(RECIPE, good, hosts=["10.0.0.1"])
    assert cfg.train.extra_train_args[-1] == "my-project"
    specs = param_specs(RECIPE)
    for k, val in good.items():
        Param(specs[k][0], **specs[k][1]).resolve(value=val)


# -- the one shell: Ray joins the entrypoint into a line (shlex.join since Ray 2.56,
# subprocess.list2cmdline before) and the head runs it with /bin/sh -c ------------------------

ARGV_DUMP = "import json, sys; open(sys.argv[1], 'w').write(json.dumps(sys.argv[2:]))"
QUOTINGS = ["shlex", "list2cmdline"]
JOIN = {"shlex": shlex.join, "list2cmdline": subprocess.list2cmdline}


def _through_ray_shell(tmp_path: Path, tokens: list, quoting: str, raw: bool = False) -> list:
    """Run tokens exactly as a Ray job would: the builder's tokens for this Ray (or the tokens
    as they are, raw=True), Ray's join, /bin/sh -c."""
    script = tmp_path / "dump.py"
    script.write_text(ARGV_DUMP)
    out = tmp_path / "argv.json"
    out.unlink(missing_ok=True)
    entry = [sys.executable, str(script), str(out), *tokens]
    line = JOIN[quoting](entry if raw else builders.entrypoint_tokens(entry, quoting))
    subprocess.run(["/bin/sh", "-c", line], cwd=tmp_path, check=True, timeout=30,
                   env={"PATH": os.environ["PATH"], "HOME": "/nonexistent-home"})
    return json.loads(out.read_text())


def _glob_bait(tmp_path):
    # files that an unquoted [1,1,1], [a-z] or a* would expand to
    for name in ("a", "1", ","):
        (tmp_path / name).write_text("a file a glob would match")


@pytest.mark.parametrize("quoting", QUOTINGS)
def test_inert_values_reach_the_trainer_verbatim_through_rays_shell(tmp_path, quoting):
    _glob_bait(tmp_path)
    assert _through_ray_shell(tmp_path, INERT, quoting) == INERT


def _corpus_strings():
    strings = {v for _, v, _ in CORPUS if isinstance(v, str) and len(v) < 10_000}
    strings |= {t for _, v, _ in CORPUS if isinstance(v, list)
                for t in v if isinstance(t, str) and len(t) < 10_000}
    return sorted(strings)


@pytest.mark.parametrize("quoting", QUOTINGS)
def test_the_entrypoint_quoting_holds_even_for_values_validation_refuses(tmp_path, quoting):
    """Defence in depth: every string in the corpus either reaches the shell's argv verbatim or is
    refused by the builder; the marker never appears."""
    Path(MARKER).unlink(missing_ok=True)
    _glob_bait(tmp_path)
    refused, passed = [], []
    for s in _corpus_strings():
        try:
            builders.entrypoint_tokens([s], quoting)
        except ValueError:
            refused.append(s)
            continue
        passed.append(s)
    extra = ["$HOME", "[1,1,1]", "a*", "~", "#x", "{a,b}"]
    if quoting == "shlex":
        extra += ["'q'", "a b", 'say "hi"', "back\\slash", "two\nlines"]
    assert _through_ray_shell(tmp_path, passed + extra, quoting) == passed + extra
    assert not Path(MARKER).exists()
    if quoting == "shlex":
        # shlex.join + sh -c carries everything but NUL (which no argv can hold)
        assert all("\x00" in s for s in refused), refused
    else:
        # what the builder refuses is exactly what list2cmdline would wrap in double quotes
        # (where sh expands $(...)) or what cannot be an argv element
        for s in refused:
            assert not s or any(c in s for c in ' \t\n\r"\\\x00') or "'" in s, s


def test_validation_refuses_whatever_rays_shlex_join_would_not_carry():
    """On Ray >= 2.56 only NUL cannot reach train.py; validation refuses it in every field that
    becomes a train argument (paths and extra_train_args)."""
    for field, value in (("base_folder", "/root\x00/etc"), ("extra_train_args", ["--lr", "1\x00"])):
        with pytest.raises(ParamError):
            RunConfig.from_params(RECIPE, dict(BASE, **{field: value}), hosts=["10.0.0.1"])


def test_pre_quoted_tokens_reach_train_py_with_their_quotes_under_shlex_join(tmp_path):
    """Why Ray >= 2.56 gets raw tokens: its shlex.join quotes by itself, so the old pre-quoting
    arrives literally (seen on a real Ray 2.60: `'[1,1,1]'` reached the script quotes and all,
    which Megatron refuses: invalid moe_freq_type value)."""
    _glob_bait(tmp_path)
    pre_quoted = builders.entrypoint_tokens(["[1,1,1]", "$HOME"], "list2cmdline")
    assert _through_ray_shell(tmp_path, pre_quoted, "shlex", raw=True) == ["'[1,1,1]'",
                                                                           "'$HOME'"]
    assert _through_ray_shell(tmp_path, ["[1,1,1]", "$HOME"], "shlex") == ["[1,1,1]", "$HOME"]


def test_plain_shlex_quote_is_not_enough_under_list2cmdline(tmp_path):
    """Why builders._entry_token exists (Ray < 2.56): a quoted token with a space is
    double-quoted again."""
    Path(MARKER).unlink(missing_ok=True)
    tok = f"a $(touch {MARKER})"
    line = subprocess.list2cmdline(["echo", shlex.quote(tok)])
    subprocess.run(["/bin/sh", "-c", line], capture_output=True, timeout=10)
    assert Path(MARKER).exists()  # the hole the builder closes
    Path(MARKER).unlink()
    with pytest.raises(ValueError):
        builders._entry_token(tok)


def test_secrets_go_to_the_environment_never_argv():
    cfg = RunConfig.from_params(RECIPE, dict(BASE, ray_dashboard_host="127.0.0.1"),
                                hosts=["10.0.0.1"])
    head = builders.ray_start_head(cfg, secret_env={"WANDB_API_KEY": "wk-123"})
    assert head.env["WANDB_API_KEY"] == "wk-123"
    assert "wk-123" not in json.dumps(head.argv)
    assert head.public()["env"]["WANDB_API_KEY"] == "***"
    assert "--dashboard-host=127.0.0.1" in head.argv
    sub = builders.ray_job_submit(cfg, "sid", {"ray_version": "2.60.0"})
    assert "WANDB" not in json.dumps(sub.argv) and "HF_TOKEN" not in json.dumps(sub.argv)
    # the seed's default is kept (golden tests), so the exposure is opt-out
    default = RunConfig.from_params(RECIPE, BASE, hosts=["10.0.0.1"])
    assert "--dashboard-host=0.0.0.0" in builders.ray_start_head(default).argv
