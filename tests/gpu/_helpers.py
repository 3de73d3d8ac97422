"""Shared by the GPU tests: run a node script the way the SSH step does, keep what it printed.

Self-contained on a bare lent GPU machine: stdlib + pytest here; torch only in subprocesses
(and in the fla comparison). Figures are printed (run pytest with -s) and, when GPU_TEST_OUT
names a folder, appended to GPU_TEST_OUT/results.jsonl.
"""
import json
import os
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NODE = REPO / "include" / "node"
PROBE_ARGS = ["--base-folder", "/tmp/sf", "--slime-dir", "/tmp/none", "--megatron-dir", "/tmp/none"]


def run_node(script, args=(), env=None, timeout=600, python="python3"):
    """`python3 include/node/<script> ARGS` from the repo root; (rc, last-line JSON, stdout, stderr)."""
    argv = [python, "include/node/%s" % script] + list(args)
    t0 = time.time()
    p = subprocess.run(argv, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       stdin=subprocess.DEVNULL, timeout=timeout, env=env)
    out, err = p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")
    lines = [l for l in out.splitlines() if l.strip()]
    data = None
    if lines:
        try:
            data = json.loads(lines[-1])
        except ValueError:
            data = None
    assert data is not None, ("%s printed no JSON (rc %s):\n%s\n%s"
                              % (" ".join(argv), p.returncode, out[-3000:], err[-3000:]))
    record("cmd", {"argv": argv, "rc": p.returncode, "seconds": round(time.time() - t0, 2)})
    return p.returncode, data, out, err


def record(name, obj):
    """Print obj as JSON and keep it in $GPU_TEST_OUT/results.jsonl."""
    text = json.dumps(obj, indent=1, sort_keys=True, default=str)
    print("\n===== %s =====\n%s" % (name, text), flush=True)
    folder = os.environ.get("GPU_TEST_OUT")
    if folder:
        with open(os.path.join(folder, "results.jsonl"), "a") as f:
            f.write(json.dumps({"name": name, "data": obj}, default=str) + "\n")


def probe(env=None):
    rc, data, _, err = run_node("probe.py", PROBE_ARGS, env=env, timeout=300)
    assert rc == 0, err[-2000:]
    return data


def should_patch_fla(probes):
    """slimeflow's rule from plugins/slimeflow/builders.py (plugins/ is on sys.path through
    pytest.ini); the import is stdlib-only at module level."""
    from slimeflow.builders import should_patch_fla as rule
    return rule(probes)
