#!/usr/bin/env python3
"""P1, parse cost: our dags/ against stock DAGs of the same size, after the imports any DAG needs.

    .venv/bin/python bench/parse_cost.py [--runs 7] [--json]

What the dag-processor pays on every re-parse is the DagBag fill of a file, in a process that
already has Airflow imported. So each sample is a fresh process that first imports what every DAG
needs (the DagBag, airflow.sdk, the standard EmptyOperator) and fills a DagBag from a one-task
warm-up DAG, and only then times the fill of the folder under test.

The baseline folder is generated from our own DAGs: per DAG one file with the same dag_id, the
same tasks and dependencies, the same Params with the same schemas, titles and descriptions, the
same doc_md and tags, all built from EmptyOperators with no package of ours imported. The folders
alternate sample by sample so machine noise hits both alike. Goal: ratio <= 1.5x (median).

Both folders parse with bytecode caches (in a temporary PYTHONPYCACHEPREFIX, written by the
untimed first sample), as Python runs by default and as a dag-processor re-parses a file it has
seen. `--no-bytecode` compiles every module from source in every sample instead, as under
PYTHONDONTWRITEBYTECODE=1 (which this machine's environment sets).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() \
    else sys.executable

CHILD = r"""
import json, sys, time
from airflow.dag_processing.dagbag import DagBag
import airflow.sdk
from airflow.sdk import DAG, Param
from airflow.providers.standard.operators.empty import EmptyOperator
DagBag(dag_folder=sys.argv[2])
mods = set(sys.modules)
t1 = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
t2 = time.perf_counter()
if bag.import_errors:
    raise SystemExit(json.dumps(bag.import_errors))
new = sorted(set(sys.modules) - mods)
print(json.dumps({"dags": len(bag.dags), "tasks": sum(len(d.tasks) for d in bag.dags.values()),
                  "parse_s": t2 - t1, "new_modules": new}))
"""

WARMUP = '''from datetime import datetime
from airflow.sdk import DAG
from airflow.providers.standard.operators.empty import EmptyOperator
with DAG(dag_id="warmup", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
    EmptyOperator(task_id="only")
'''

STOCK = '''"""Stock DAG of the same size as {dag_id} (parse-cost baseline, generated)."""
from datetime import datetime

from airflow.sdk import DAG, Param
from airflow.providers.standard.operators.empty import EmptyOperator

PARAMS = {params!r}
TASKS = {tasks!r}

with DAG(dag_id={dag_id!r}, params={{k: Param(v, **s) for k, (v, s) in PARAMS.items()}},
         schedule=None, start_date=datetime(2026, 1, 1), catchup=False, max_active_runs=1,
         doc_md={doc!r}, tags={tags!r}, render_template_as_native_obj=True):
    ops = {{t: EmptyOperator(task_id=t, doc_md=d) for t, (d, _) in TASKS.items()}}
    for t, (_, ups) in TASKS.items():
        for u in ups:
            ops[u] >> ops[t]
'''


def write_stock(folder: Path, env: dict) -> None:
    """One stock file per DAG of ours, generated from the parsed DAGs themselves."""
    script = r"""
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
out = []
for dag in bag.dags.values():
    out.append({"dag_id": dag.dag_id, "doc": dag.doc_md, "tags": sorted(dag.tags),
                "params": {k: [dag.params.get_param(k).value, dag.params.get_param(k).schema]
                           for k in dag.params},
                "tasks": {t.task_id: [t.doc_md, sorted(t.upstream_task_ids)] for t in dag.tasks}})
print(json.dumps(out))
"""
    res = subprocess.run([PY, "-c", script, str(ROOT / "dags")], env=env, capture_output=True,
                         text=True, timeout=300)
    if res.returncode != 0:
        raise SystemExit(f"could not read dags/ to size the baseline:\n{res.stderr[-3000:]}")
    dags = json.loads(res.stdout.strip().splitlines()[-1])
    for d in dags:
        (folder / f"stock_{d['dag_id']}.py").write_text(STOCK.format(
            dag_id=d["dag_id"], params=d["params"], tasks=d["tasks"], doc=d["doc"],
            tags=d["tags"]))


def sample(folder: Path, warm: Path, env: dict) -> dict:
    res = subprocess.run([PY, "-c", CHILD, str(folder), str(warm)], env=env,
                         capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        raise SystemExit(f"parse of {folder} failed:\n{res.stdout[-2000:]}{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--json", action="store_true", help="also print the medians as JSON")
    ap.add_argument("--no-bytecode", action="store_true",
                    help="compile every module from source in every sample (no .pyc caches)")
    ap.add_argument("--modules", action="store_true",
                    help="list the modules parsing our DAGs imports beyond the stock ones")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="slimeflow-bench-parse-") as tmp:
        tmp = Path(tmp)
        stock, warm, home = tmp / "stock", tmp / "warm", tmp / "airflow_home"
        for d in (stock, warm, home):
            d.mkdir()
        (warm / "warmup.py").write_text(WARMUP)
        env = dict(os.environ, AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False",
                   AIRFLOW__CORE__UNIT_TEST_MODE="False",
                   AIRFLOW__LOGGING__LOGGING_LEVEL="WARNING",
                   PYTHONPATH=os.pathsep.join([str(ROOT / "plugins"), str(ROOT)]))
        env.pop("SLIMEFLOW_PARSE_VARIABLES", None)  # the default deployment: no Variable reads
        if args.no_bytecode:
            env["PYTHONDONTWRITEBYTECODE"] = "1"
        else:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")  # nothing written into the repo
        write_stock(stock, env)
        ours = ROOT / "dags"
        sample(ours, warm, env), sample(stock, warm, env)  # page cache and .pyc files
        rows = {"ours": [], "stock": []}
        for _ in range(args.runs):
            rows["ours"].append(sample(ours, warm, env))
            rows["stock"].append(sample(stock, warm, env))
    med = {k: statistics.median(r["parse_s"] for r in v) for k, v in rows.items()}
    ratio = med["ours"] / med["stock"]
    o, s = rows["ours"][0], rows["stock"][0]
    print(f"P1 parse cost: DagBag fill after common imports, median of {args.runs} fresh "
          f"processes each (alternating), "
          f"{'no bytecode caches' if args.no_bytecode else 'with bytecode caches'}")
    print(f"  ours : {o['dags']} DAGs, {o['tasks']} tasks  {med['ours'] * 1000:7.1f} ms  "
          f"samples {[round(r['parse_s'] * 1000, 1) for r in rows['ours']]}")
    print(f"  stock: {s['dags']} DAGs, {s['tasks']} tasks  {med['stock'] * 1000:7.1f} ms  "
          f"samples {[round(r['parse_s'] * 1000, 1) for r in rows['stock']]}")
    # the DagBag names each file's module after its path: those differ by construction
    extra = sorted(m for m in set(o["new_modules"]) - set(s["new_modules"])
                   if not m.startswith("unusual_prefix_"))
    foreign = [m for m in extra if not m.startswith("slimeflow")]
    print(f"  modules imported beyond the stock parse: {len(extra)} "
          f"({len(foreign)} not slimeflow's)")
    if args.modules:
        for m in extra:
            print(f"    {m}")
    print(f"goal ratio <= 1.5x: {'MET' if ratio <= 1.5 else 'MISSED'} ({ratio:.2f}x)")
    if args.json:
        print(json.dumps({"median_ms": {k: v * 1000 for k, v in med.items()}, "ratio": ratio,
                          "extra_modules": extra}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
