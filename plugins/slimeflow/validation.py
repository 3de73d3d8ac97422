"""Checks for every value that can reach a node. Each failure is one sentence: field, problem, fix.

Values are checked here and then passed as argv elements (never through a shell on our side); the
few places where a shell does see them (Ray joins the job entrypoint into a shell line) quote them
as well, so a value must pass both.
"""
from __future__ import annotations

import ipaddress
import posixpath
import re


class ParamError(ValueError):
    """A trigger parameter is invalid; the message names the field and the fix."""


# Conservative on purpose: no whitespace, quotes, `$`, `;`, `|`, `&`, backticks, globs or
# non-ASCII look-alikes can pass, so a path is inert even if a shell ever saw it unquoted.
_PATH_CHARS = re.compile(r"^[A-Za-z0-9._/+@=,-]+$")
_CONN_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,249}$")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
_IFNAME = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")
# Hub repo ids: optional namespace, name; 96 chars each, no leading/trailing/double separators.
_REPO_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_HF_REPO = re.compile(rf"^(?:{_REPO_PART}/)?{_REPO_PART}$")
_REVISION = re.compile(r"^(?:[0-9a-f]{40}|[A-Za-z0-9][A-Za-z0-9._/-]{0,199})$")
_FLAG = re.compile(r"^--[a-z0-9][a-z0-9-]{0,99}$")
_VALUE = re.compile(r"^(?:[A-Za-z0-9_.,:/=+@%\[\]]{1,4096}|-?[0-9]+(?:\.[0-9]+)?(?:e-?[0-9]+)?)$")
_URL = re.compile(r"^https?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?(?:/[A-Za-z0-9._~/-]*)?$")

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
                         f"got {value!r}.")
    if len(value) > 1024:
        raise ParamError(f"Param `{field}` is {len(value)} characters long; give a path under "
                         f"1024 characters.")
    if not value.startswith("/"):
        raise ParamError(f"Param `{field}` must be an absolute path (start with /); got "
                         f"{value!r}.")
    if ".." in value.split("/"):
        raise ParamError(f"Param `{field}` must not contain '..'; give the resolved absolute "
                         f"path instead of {value!r}.")
    if not _PATH_CHARS.match(value):
        raise ParamError(f"Param `{field}` may only contain ASCII letters, digits and . _ - / + @"
                         f" = , (no spaces, quotes, $ or control characters); got {value!r}.")
    norm = posixpath.normpath(value)
    if norm == "/":
        raise ParamError(f"Param `{field}` must not be the filesystem root; give a folder such "
                         f"as /root.")
    return norm


def check_conn_id(field: str, value) -> str:
    if not isinstance(value, str) or not _CONN_ID.match(value):
        raise ParamError(f"Param `{field}` entry {value!r} is not a valid Airflow connection id; "
                         f"use letters, digits, _ . - (for example gpu_node_0).")
    return value


def check_host(field: str, value) -> str:
    if not isinstance(value, str) or not value:
        raise ParamError(f"Param `{field}` must be an IP address or a hostname; got {value!r}.")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if value.startswith("-") or not _HOSTNAME.match(value):
        raise ParamError(f"Param `{field}` must be an IP address or a hostname (letters, digits, "
                         f"-, dots); got {value!r}.")
    return value


def check_ifname(field: str, value) -> str:
    if not isinstance(value, str) or not _IFNAME.match(value) or value.startswith("-"):
        raise ParamError(f"Param `{field}` must be a network interface name such as eth0 or "
                         f"ib0 (at most 15 letters, digits, _ . : -); got {value!r}.")
    return value


def check_hf_repo(field: str, value) -> str:
    if not isinstance(value, str) or not _HF_REPO.match(value) or "--" in value or ".." in value:
        raise ParamError(f"Param `{field}` must be a Hugging Face repo id like "
                         f"Qwen/Qwen3-Next-80B-A3B-Thinking; got {value!r}.")
    return value


def check_revision(field: str, value) -> str:
    if (not isinstance(value, str) or not _REVISION.match(value) or ".." in value
            or value.endswith(("/", ".lock"))):
        raise ParamError(f"Param `{field}` must be a branch, tag or 40-character commit sha "
                         f"(for example main); got {value!r}.")
    return value


def check_url(field: str, value) -> str:
    if not isinstance(value, str) or not _URL.match(value):
        raise ParamError(f"Param `{field}` must be an http(s) URL such as "
                         f"https://hf-mirror.example.com; got {value!r}.")
    return value.rstrip("/")


def check_int(field: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ParamError(f"Param `{field}` must be a whole number from {lo} to {hi}; got "
                         f"{value!r}.")
    return value


def check_bool(field: str, value) -> bool:
    if not isinstance(value, bool):
        raise ParamError(f"Param `{field}` must be true or false; got {value!r}.")
    return value


def check_extra_args(field: str, value) -> tuple:
    if not isinstance(value, (list, tuple)):
        raise ParamError(f"Param `{field}` must be a list of strings like "
                         f"[\"--lr\", \"2e-6\"]; got {type(value).__name__}.")
    if len(value) > 200:
        raise ParamError(f"Param `{field}` has {len(value)} entries; keep it under 200.")
    expect_flag = True
    for i, tok in enumerate(value):
        if not isinstance(tok, str):
            raise ParamError(f"Param `{field}` entry {i} must be a string; got {tok!r}.")
        if _FLAG.match(tok):
            if tok in RESERVED_FLAGS:
                raise ParamError(f"Param `{field}` must not set {tok}: the pipeline owns it; "
                                 f"use {RESERVED_FLAGS[tok]} instead.")
            expect_flag = False
            continue
        if expect_flag:
            raise ParamError(f"Param `{field}` entry {i} ({tok[:60]!r}) must be a --flag: the "
                             f"list holds `--flag [value ...]` tokens only.")
        if not _VALUE.match(tok):
            raise ParamError(f"Param `{field}` entry {i} ({tok[:60]!r}) may only contain ASCII "
                             f"letters, digits and _ . , : / = + @ % [ ] (no spaces, quotes, $, "
                             f"; or |).")
    return tuple(value)
