"""Hostile trigger-param values: what anyone with trigger rights could type into the form.

Each entry is (field, value, why). Every one must be refused by `RunConfig.from_params` with a
ParamError naming the field, before any node is contacted (tests/unit/test_hostile_params.py).
`SCHEMA_BLIND` lists the (field, why) pairs the Param JSON schema cannot express (semantics such
as system folders or argparse prefixes); every other entry is refused by the schema too.

`INERT` holds values that are *valid* and contain characters a shell would care about; they must
reach train.py verbatim (tests/integration/test_secrets.py runs them through the simulated
cluster, and tests/unit/test_hostile_params.py through a real /bin/sh exactly as Ray does).
"""
from __future__ import annotations

MARKER = "/tmp/slimeflow-pwned"  # no test value may ever create this file
MB = 1024 * 1024

_SUBST = f"$(touch {MARKER})"
_TICKS = f"`touch {MARKER}`"

PATHS = [
    ("subst", f"/root/{_SUBST}"),
    ("backticks", f"/root/{_TICKS}"),
    ("semicolon", f"/root;touch {MARKER}"),
    ("and", f"/root&&touch {MARKER}"),
    ("pipe", f"/root|touch {MARKER}"),
    ("newline", f"/root\ntouch {MARKER}"),
    ("trailing newline", "/root\n"),
    ("nul", "/root\x00/etc"),
    ("single quote", "/root/'x"),
    ("double quote", '/root/"x'),
    ("space", "/root/my folder"),
    ("glob", "/root/*"),
    ("tilde", "~/slime"),
    ("relative", "root/slime"),
    ("traversal", "/root/../etc"),
    ("traversal at end", "/root/.."),
    ("fullwidth solidus", "/root\uff0fetc"),
    ("cyrillic a", "/r\u043eot/sl\u0456me"),
    ("rtl override", "/root/\u202egnp.exe"),
    ("zero-width joiner", "/root/sl\u200dime"),
    ("huge", "/" + "a" * MB),
    ("root", "/"),
    ("option", "--help"),
    ("option with value", "--config=/etc/passwd"),
    ("empty", ""),
    ("not a string", ["/root"]),
    ("number", 0),
]

CORPUS = []
for _field in ("base_folder", "slime_dir", "megatron_dir"):
    for _why, _value in PATHS:
        CORPUS.append((_field, _value, _why))

CORPUS += [
    ("base_folder", "/etc", "system folder"),
    ("base_folder", "/etc/cron.d", "inside a system folder"),
    ("base_folder", "/usr/lib/python3", "inside /usr"),
    ("base_folder", "/proc/self", "procfs"),
    ("base_folder", "/dev/shm/../sda", "traversal into /dev"),
    # hf_repo
    ("hf_repo", f"Qwen/x;touch {MARKER}", "semicolon"),
    ("hf_repo", f"Qwen/{_SUBST}", "subst"),
    ("hf_repo", "Qwen/Qwen3\n", "trailing newline"),
    ("hf_repo", "--help", "option"),
    ("hf_repo", "-oProxyCommand=touch", "option"),
    ("hf_repo", "../../etc/passwd", "traversal"),
    ("hf_repo", "Qwen/../../x", "traversal"),
    ("hf_repo", "Qwen/x/y", "three parts"),
    ("hf_repo", "Qwen/Qw\u0435n3", "cyrillic e"),
    ("hf_repo", "Qwen\uff0fQwen3", "fullwidth solidus"),
    ("hf_repo", "Qwen/Qwen3\u200d", "zero-width joiner"),
    ("hf_repo", "Qwen/" + "x" * MB, "huge"),
    ("hf_repo", "Qwen/x--y", "double dash"),
    ("hf_repo", 123, "not a string"),
    # hf_revision
    ("hf_revision", "main;reboot", "semicolon"),
    ("hf_revision", "--help", "option"),
    ("hf_revision", "-b", "option"),
    ("hf_revision", "main\n", "trailing newline"),
    ("hf_revision", "refs/../../x", "traversal"),
    ("hf_revision", "main.lock", "lock ref"),
    ("hf_revision", "m\u0430in", "cyrillic a"),
    ("hf_revision", "a" * MB, "huge"),
    ("hf_revision", True, "bool"),
    # hf_endpoint
    ("hf_endpoint", f"http://hub/{_SUBST}", "subst"),
    ("hf_endpoint", "file:///etc/passwd", "file url"),
    ("hf_endpoint", "http://user:pw@hub.example.com", "credentials in url"),
    ("hf_endpoint", "http://hub.example.com\n", "trailing newline"),
    ("hf_endpoint", "https://hub.example.com/ x", "space"),
    ("hf_endpoint", "--config=/etc/passwd", "option"),
    ("hf_endpoint", "http://h\u0443b.example.com", "cyrillic u"),
    # master_addr
    ("master_addr", f"10.0.0.1;touch {MARKER}", "semicolon"),
    ("master_addr", f"fe80::1%{_SUBST}", "ipv6 scope id"),
    ("master_addr", "-oProxyCommand=x", "option"),
    ("master_addr", "head\n", "trailing newline"),
    ("master_addr", "\uff11\uff10.0.0.1", "fullwidth digits"),
    ("master_addr", "h\u0435ad.example.com", "cyrillic e"),
    ("master_addr", "a" * MB, "huge"),
    ("master_addr", "head node", "space"),
    # socket_ifname
    ("socket_ifname", "eth0;reboot", "semicolon"),
    ("socket_ifname", "-o", "option"),
    ("socket_ifname", "eth0\n", "trailing newline"),
    ("socket_ifname", "eth0" + "0" * 20, "too long"),
    ("socket_ifname", "\u0435th0", "cyrillic e"),
    # nodes
    ("nodes", [f"gpu0;touch {MARKER}"], "semicolon"),
    ("nodes", ["-oProxyCommand=touch /tmp/x"], "option"),
    ("nodes", ["gpu0\n"], "trailing newline"),
    ("nodes", ["gpu\u200d0"], "zero-width joiner"),
    ("nodes", ["g" * MB], "huge"),
    ("nodes", "gpu0", "not a list"),
    ("nodes", [], "empty"),
    ("nodes", [1], "not a string"),
    ("nodes", ["gpu0", "gpu0"], "twice"),
    ("nodes", [f"n{i}" for i in range(65)], "too many"),
    # extra_train_args
    ("extra_train_args", [_SUBST], "subst"),
    ("extra_train_args", ["--lr", _SUBST], "subst value"),
    ("extra_train_args", ["--lr", _TICKS], "backticks"),
    ("extra_train_args", ["--lr", f"1;touch {MARKER}"], "semicolon"),
    ("extra_train_args", ["--lr", f"1&&touch {MARKER}"], "and"),
    ("extra_train_args", ["--lr", f"1|touch {MARKER}"], "pipe"),
    ("extra_train_args", ["--lr", f"1\ntouch {MARKER}"], "newline"),
    ("extra_train_args", ["--lr", "1\n"], "trailing newline"),
    ("extra_train_args", ["--lr\n", "1"], "trailing newline flag"),
    ("extra_train_args", ["--lr", "1\x00"], "nul"),
    ("extra_train_args", ["--lr", "'1'"], "single quotes"),
    ("extra_train_args", ["--lr", '"1"'], "double quotes"),
    ("extra_train_args", ["--lr", "1 2"], "space"),
    ("extra_train_args", ["--lr", "\u20132e-6"], "en dash"),
    ("extra_train_args", ["--l\u0433"], "cyrillic flag"),
    ("extra_train_args", ["--lr", "x" * MB], "huge"),
    ("extra_train_args", ["--help"], "help"),
    ("extra_train_args", ["--version"], "version"),
    ("extra_train_args", ["-o", "x"], "short option"),
    ("extra_train_args", ["--lr", "-o"], "short option as value"),
    ("extra_train_args", ["--lr", "--config=/etc/passwd"], "option as value"),
    ("extra_train_args", ["--config=/etc/passwd"], "flag with ="),
    ("extra_train_args", ["--save", "/tmp/elsewhere"], "reserved"),
    ("extra_train_args", ["--sav", "/tmp/elsewhere"], "argparse prefix of reserved"),
    ("extra_train_args", ["--wandb-k", "secret"], "argparse prefix of --wandb-key"),
    ("extra_train_args", ["--num-rollout", "99"], "reserved"),
    ("extra_train_args", ["positional"], "positional"),
    ("extra_train_args", "--lr 1", "string, not list"),
    ("extra_train_args", ["--lr", 1], "not a string"),
    ("extra_train_args", ["--x"] * 201, "too many"),
    # numbers and booleans
    ("gpus_per_node", True, "bool"),
    ("gpus_per_node", 8.0, "float"),
    ("gpus_per_node", -8, "negative"),
    ("gpus_per_node", 10 ** 30, "huge"),
    ("gpus_per_node", "8", "string"),
    ("num_rollout", 0, "zero"),
    ("num_rollout", -1, "negative"),
    ("num_rollout", 10 ** 100, "huge"),
    ("num_rollout", 1.5, "float"),
    ("num_rollout", False, "bool"),
    ("save_interval", "20; reboot", "string"),
    ("save_interval", 0, "zero"),
    ("cp_size", 0, "zero"),
    ("cp_size", True, "bool"),
    ("poll_interval", 0, "zero"),
    ("poll_interval", 10 ** 9, "huge"),
    ("grad_reduce_in_bf16", "true", "string"),
    ("grad_reduce_in_bf16", 1, "int"),
    ("allow_blackwell_training", "yes", "string"),
    ("preflight_nccl", "false; touch /tmp/x", "string"),
    ("preflight_nccl", 0, "int"),
    ("nccl_nvls", "1;reboot", "semicolon"),
    ("nccl_nvls", 1, "int"),
    ("ray_dashboard_host", "0.0.0.0 --include-dashboard", "option"),
    ("ray_dashboard_host", "10.0.0.1", "not loopback or all"),
    ("stall_timeout_minutes", float("nan"), "nan"),
    ("stall_timeout_minutes", float("inf"), "inf"),
    ("unreachable_timeout_minutes", -1, "negative"),
    ("lease_wait_minutes", True, "bool"),
    ("lease_stale_minutes", "15", "string"),
    ("experiment", "../../etc", "traversal"),
    ("experiment", "a/b", "slash"),
    ("experiment", "x;rm -rf /", "semicolon"),
    ("experiment", "-rf", "option"),
    ("experiment", "a..b", "dots"),
    ("start", "fresh --force", "option"),
    ("start", True, "bool"),
    ("hang_timeout_minutes", 0, "zero"),
    ("hang_timeout_minutes", "20", "string"),
    ("dcgm_diag_level", 3, "out of range"),
    ("dcgm_diag_level", True, "bool"),
]

# The Param schema checks types, bounds, lengths and character sets; these need our own code.
SCHEMA_BLIND = {
    ("base_folder", "system folder"), ("base_folder", "inside a system folder"),
    ("base_folder", "inside /usr"), ("base_folder", "procfs"),
    ("hf_revision", "lock ref"),
    ("nodes", "twice"),
    ("extra_train_args", "help"), ("extra_train_args", "version"),
    ("extra_train_args", "reserved"), ("extra_train_args", "argparse prefix of reserved"),
    ("extra_train_args", "argparse prefix of --wandb-key"), ("extra_train_args", "positional"),
    ("gpus_per_node", "float"),  # JSON schema counts 8.0 as an integer
    ("stall_timeout_minutes", "nan"),  # NaN compares false with both bounds
}

# Valid values holding characters a shell treats specially: they must arrive verbatim.
INERT = ["--sim-inert-a", "x=[1,2]:%40@host+y", "--sim-inert-b", "[a-z]",
         "--sim-inert-c", "%PATH%,a:b", "--sim-inert-d", "1e-6", "--sim-inert-e", "-3"]
