"""Checks for every value that can reach a node. Each failure is one sentence: field, problem, fix.

Values are checked here and then passed as argv elements (never through a shell on our side); the
few places where a shell does see them (Ray joins the job entrypoint into a shell line) quote them
as well, so a value must pass both.

Every pattern is applied with ``fullmatch``: with ``match`` and a ``$`` anchor Python accepts one
trailing newline (``"/root\n"`` would pass). Messages show at most 80 characters of a bad value,
through ``repr`` (control characters, RTL overrides and zero-width joiners appear escaped, never
raw, so a value cannot forge log lines). tests/hostile_corpus.py holds the values this must refuse.
"""
from __future__ import annotations

import ipaddress
import posixpath
import re


class ParamError(ValueError):
    """A trigger parameter is invalid; the message names the field and the fix."""


# Conservative on purpose: no whitespace, quotes, `$`, `;`, `|`, `&`, backticks, globs or
# non-ASCII look-alikes can pass, so a path is inert even if a shell ever saw it unquoted.
_PATH_CHARS = re.compile(r"[A-Za-z0-9._/+@=,-]+")
_CONN_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,249}")
_HOSTNAME = re.compile(r"(?=.{1,253}\Z)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")
_IFNAME = re.compile(r"[A-Za-z0-9_.:-]{1,15}")
# Hub repo ids: optional namespace, name; 96 chars each, no leading/trailing/double separators.
_REPO_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_HF_REPO = re.compile(rf"(?:{_REPO_PART}/)?{_REPO_PART}")
_REVISION = re.compile(r"[0-9a-f]{40}|[A-Za-z0-9][A-Za-z0-9._/-]{0,199}")
_FLAG = re.compile(r"--[a-z0-9][a-z0-9-]{0,99}")
# A value never starts with '-' (unless it is a number), so it cannot be read as an option.
_VALUE = re.compile(r"[A-Za-z0-9_.,:/=+@%\[\]][A-Za-z0-9_.,:/=+@%\[\]-]{0,4095}"
                    r"|-?[0-9]+(?:\.[0-9]+)?(?:e-?[0-9]+)?")
_URL = re.compile(r"https?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?(?:/[A-Za-z0-9._~/-]*)?")
# base_folder is written to: never a system folder (or one of its subfolders).
SYSTEM_FOLDERS = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc", "/sbin",
                  "/sys", "/usr")
# Flags that make train.py do something other than train (print and exit 0, or read options
# from a file the pipeline does not control).
FORBIDDEN_FLAGS = {"--help": "train.py would print its usage and exit without training",
                   "--version": "train.py would print a version and exit without training"}


def _show(value) -> str:
    """A bad value as messages show it: repr (escapes control and invisible characters), cut."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(str(value))} characters)"

# Flags the pipeline owns: setting them through extra_train_args would desynchronise XCom paths,
# resume logic or secrets handling, so each has its own param instead.
RESERVED_FLAGS = {
    "--hf-checkpoint": "hf_repo/base_folder", "--ref-load": "base_folder",
    "--load": "base_folder", "--save": "base_folder", "--num-rollout": "num_rollout",
    "--save-interval": "save_interval", "--wandb-key": "a W&B connection (never argv)",
    "--actor-num-nodes": "nodes", "--actor-num-gpus-per-node": "gpus_per_node",
}


def check_path(field: str, value) -> str:
    if not isinstance(value, str) or not value:
        raise ParamError(f"Param `{field}` must be a non-empty absolute path such as /root; "
                         f"got {_show(value)}.")
    if len(value) > 1024:
        raise ParamError(f"Param `{field}` is {len(value)} characters long; give a path under "
                         f"1024 characters.")
    if not value.startswith("/"):
        raise ParamError(f"Param `{field}` must be an absolute path (start with /); got "
                         f"{_show(value)}.")
    if ".." in value.split("/"):
        raise ParamError(f"Param `{field}` must not contain '..'; give the resolved absolute "
                         f"path instead of {_show(value)}.")
    if not _PATH_CHARS.fullmatch(value):
        raise ParamError(f"Param `{field}` may only contain ASCII letters, digits and . _ - / + @"
                         f" = , (no spaces, quotes, $ or control characters); got {_show(value)}.")
    norm = posixpath.normpath(value)
    if norm == "/":
        raise ParamError(f"Param `{field}` must not be the filesystem root; give a folder such "
                         f"as /root.")
    return norm


def check_data_folder(field: str, value) -> str:
    """A folder the pipeline writes into: a path, and not a system folder."""
    norm = check_path(field, value)
    top = "/" + norm.lstrip("/").split("/", 1)[0]
    if top in SYSTEM_FOLDERS:
        raise ParamError(f"Param `{field}` must not be inside the system folder {top}; choose a "
                         f"data folder such as /root or /data.")
    return norm


def check_conn_id(field: str, value) -> str:
    if not isinstance(value, str) or not _CONN_ID.fullmatch(value):
        raise ParamError(f"Param `{field}` entry {_show(value)} is not a valid Airflow "
                         f"connection id; use letters, digits, _ . - (for example gpu_node_0).")
    return value


def check_host(field: str, value) -> str:
    if not isinstance(value, str) or not value:
        raise ParamError(f"Param `{field}` must be an IP address or a hostname; got "
                         f"{_show(value)}.")
    if "%" in value:  # ipaddress accepts any IPv6 scope id, e.g. fe80::1%$(reboot)
        raise ParamError(f"Param `{field}` must be an IP address or a hostname without a %scope "
                         f"suffix; got {_show(value)}.")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if value.startswith("-") or not _HOSTNAME.fullmatch(value):
        raise ParamError(f"Param `{field}` must be an IP address or a hostname (letters, digits, "
                         f"-, dots); got {_show(value)}.")
    return value


def check_ifname(field: str, value) -> str:
    if not isinstance(value, str) or not _IFNAME.fullmatch(value) or value.startswith("-"):
        raise ParamError(f"Param `{field}` must be a network interface name such as eth0 or "
                         f"ib0 (at most 15 letters, digits, _ . : -); got {_show(value)}.")
    return value


def check_hf_repo(field: str, value) -> str:
    if (not isinstance(value, str) or not _HF_REPO.fullmatch(value) or "--" in value
            or ".." in value):
        raise ParamError(f"Param `{field}` must be a Hugging Face repo id like "
                         f"Qwen/Qwen3-Next-80B-A3B-Thinking; got {_show(value)}.")
    return value


def check_revision(field: str, value) -> str:
    if (not isinstance(value, str) or not _REVISION.fullmatch(value) or ".." in value
            or value.endswith(("/", ".lock"))):
        raise ParamError(f"Param `{field}` must be a branch, tag or 40-character commit sha "
                         f"(for example main); got {_show(value)}.")
    return value


def check_url(field: str, value) -> str:
    if not isinstance(value, str) or not _URL.fullmatch(value):
        raise ParamError(f"Param `{field}` must be an http(s) URL such as "
                         f"https://hf-mirror.example.com; got {_show(value)}.")
    return value.rstrip("/")


def check_int(field: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ParamError(f"Param `{field}` must be a whole number from {lo} to {hi}; got "
                         f"{_show(value)}.")
    return value


def check_bool(field: str, value) -> bool:
    if not isinstance(value, bool):
        raise ParamError(f"Param `{field}` must be true or false; got {_show(value)}.")
    return value


def check_auto_on_off(field: str, value):
    """"auto" (or empty) -> None, "on" -> True, "off" -> False; true/false as booleans are
    accepted too (runs triggered before the setting became a three-way choice)."""
    if value is None or value == "auto":
        return None
    if isinstance(value, bool):
        return value
    if value in ("on", "off"):
        return value == "on"
    raise ParamError(f"Param `{field}` must be auto, on or off; got {_show(value)}.")


EXPERIMENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}(?![\s\S])")


def check_experiment(field: str, value) -> str:
    """An experiment name: a suffix of the checkpoint folder's name, so no '/' and no '..'."""
    if value is None or value == "":
        return ""
    if not isinstance(value, str) or not EXPERIMENT_RE.match(value) or ".." in value:
        raise ParamError(f"Param `{field}` must be empty or a name of letters, digits, '.', '_' "
                         f"and '-' (at most 64, starting with a letter or digit), such as "
                         f"lr2e-6-try2; got {_show(value)}.")
    return value


def check_start(field: str, value) -> str:
    if value in (None, "", "resume"):
        return "resume"
    if value == "fresh":
        return value
    raise ParamError(f"Param `{field}` must be resume or fresh; got {_show(value)}.")


def check_extra_args(field: str, value) -> tuple:
    if not isinstance(value, (list, tuple)):
        raise ParamError(f"Param `{field}` must be a list of strings like "
                         f"[\"--lr\", \"2e-6\"]; got {type(value).__name__}.")
    if len(value) > 200:
        raise ParamError(f"Param `{field}` has {len(value)} entries; keep it under 200.")
    expect_flag = True
    for i, tok in enumerate(value):
        if not isinstance(tok, str):
            raise ParamError(f"Param `{field}` entry {i} must be a string; got {_show(tok)}.")
        if _FLAG.fullmatch(tok):
            if tok in FORBIDDEN_FLAGS:
                raise ParamError(f"Param `{field}` must not contain {tok}: "
                                 f"{FORBIDDEN_FLAGS[tok]}; remove it.")
            # argparse also accepts unambiguous prefixes (--sav means --save)
            owned = next((f for f in RESERVED_FLAGS if f.startswith(tok)), None)
            if owned:
                raise ParamError(f"Param `{field}` must not set {tok}"
                                 f"{'' if tok == owned else f' (argparse reads it as {owned})'}: "
                                 f"the pipeline owns it; use {RESERVED_FLAGS[owned]} instead.")
            expect_flag = False
            continue
        if expect_flag:
            raise ParamError(f"Param `{field}` entry {i} ({_show(tok)}) must be a --flag: the "
                             f"list holds `--flag [value ...]` tokens only.")
        if not _VALUE.fullmatch(tok):
            raise ParamError(f"Param `{field}` entry {i} ({_show(tok)}) may only contain ASCII "
                             f"letters, digits and _ . , : / = + @ % [ ] - and must not start "
                             f"with - unless it is a number (no spaces, quotes, $, ; or |).")
    return tuple(value)
