"""A module that is imported on first use.

The dag-processor imports every operator module at each parse (every 30 s per file), while
`builders`, `config` and the Ray hook are only needed once a task runs. A plain proxy over
`importlib.import_module` rather than `importlib.util.LazyLoader`: operators fan out over
threads, and LazyLoader's first-access swap is not thread-safe on Python 3.11.
"""
from __future__ import annotations

import importlib


class LazyModule:
    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        return getattr(importlib.import_module(self._name), attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"
