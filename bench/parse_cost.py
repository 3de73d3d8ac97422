#!/usr/bin/env python3
"""Parse cost: a fresh process parsing our dags/ vs one parsing as many trivial one-task DAGs.

    .venv/bin/python bench/parse_cost.py [--runs 7]

Each sample is a fresh `python -c` that imports the DagBag, then fills it from a folder. The two
folders alternate run by run (so machine noise hits both alike). Per sample we record:
  - process: the child's whole wall time (interpreter start, airflow imports, parse, exit),
  - parse:   the DagBag fill alone, timed inside the child (what the dag-processor pays on every
             re-parse beyond its own start-up: our imports, the recipe YAML, Params, the DAG).
The baseline folder holds N generated files (N = our DAG count), each a one-task DAG built with
the same airflow imports our DAG files reach (airflow.sdk DAG + providers-standard EmptyOperator).
Goal: process ratio <= 1.5x. Prints a table; the median of --runs samples.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() \
    else sys.executable

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
from airflow.dag_processing.dagbag import DagBag
t1 = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
t2 = time.perf_counter()
assert not bag.import_errors, bag.import_errors
print(json.dumps({"dags": len(bag.dags), "import_s": t1 - t0, "parse_s": t2 - t1}))
"""

TRIVIAL = '''"""A trivial one-task DAG (parse-cost baseline)."""
from datetime import datetime

from airflow.sdk import DAG
from airflow.providers.standard.operators.empty import EmptyOperator

with DAG(dag_id="trivial_{i}", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
    EmptyOperator(task_id="only")
'''


def sample(folder: Path, env: dict) -> dict:
    t0 = time.perf_counter()
    res = subprocess.run([PY, "-c", CHILD, str(folder)], env=env, capture_output=True,
                         text=True, timeout=120)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"parse of {folder} failed:\n{res.stderr[-3000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out["process_s"] = wall
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--json", action="store_true", help="also print the medians as JSON")
    args = ap.parse_args(argv)
    ours = ROOT / "dags"
    n = len([p for p in ours.glob("*.py") if not p.name.startswith("_")])
    with tempfile.TemporaryDirectory(prefix="slimeflow-bench-parse-") as tmp:
        tmp = Path(tmp)
        base = tmp / "trivial"
        base.mkdir()
        for i in range(n):
            (base / f"trivial_{i}.py").write_text(TRIVIAL.format(i=i))
        home = tmp / "airflow_home"
        home.mkdir()
        env = dict(os.environ, AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False",
                   AIRFLOW__CORE__UNIT_TEST_MODE="False",
                   AIRFLOW__LOGGING__LOGGING_LEVEL="WARNING",
                   PYTHONPATH=os.pathsep.join([str(ROOT / "plugins"), str(ROOT)]))
        # warm the page cache and .pyc files for both before timing
        sample(ours, env), sample(base, env)
        rows = {"ours": [], "trivial": []}
        for _ in range(args.runs):
            rows["ours"].append(sample(ours, env))
            rows["trivial"].append(sample(base, env))
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("process_s", "parse_s", "import_s")}
           for k, v in rows.items()}
    dags = rows["ours"][0]["dags"], rows["trivial"][0]["dags"]
    ratio_p = med["ours"]["process_s"] / med["trivial"]["process_s"]
    ratio_parse = med["ours"]["parse_s"] / med["trivial"]["parse_s"]
    print(f"parse cost: {dags[0]} DAGs in dags/ vs {dags[1]} trivial one-task DAGs, "
          f"median of {args.runs} fresh processes each (alternating)")
    print(f"{'measure':<34}{'ours':>10}{'trivial':>10}{'ratio':>8}")
    print(f"{'fresh process wall (s)':<34}{med['ours']['process_s']:>10.3f}"
          f"{med['trivial']['process_s']:>10.3f}{ratio_p:>7.2f}x")
    print(f"{'  of which airflow import (s)':<34}{med['ours']['import_s']:>10.3f}"
          f"{med['trivial']['import_s']:>10.3f}")
    print(f"{'  of which DagBag fill (s)':<34}{med['ours']['parse_s']:>10.3f}"
          f"{med['trivial']['parse_s']:>10.3f}{ratio_parse:>7.2f}x")
    spread = [round(r["process_s"], 2) for r in rows["ours"]]
    print(f"ours process samples: {spread}")
    print(f"goal process ratio <= 1.5x: {'MET' if ratio_p <= 1.5 else 'MISSED'} ({ratio_p:.2f}x)")
    if args.json:
        print(json.dumps({"medians": med, "ratio_process": ratio_p, "ratio_parse": ratio_parse}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
