"""Load a node script (include/node/<name>.py, stdlib only) as a module, so that Airflow-side
code shares a parser with the node instead of keeping a copy that could drift."""
from __future__ import annotations

import functools
import importlib.util

from slimeflow.recipes import include_dir


@functools.lru_cache(maxsize=None)
def load(name: str):
    path = include_dir() / "node" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"slimeflow_node_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
