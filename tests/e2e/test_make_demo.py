"""`make demo`, exactly as the README writes it, from the repository root: the flagship DAG on 2
namespaced nodes with real Ray, progress lines while it trains, the XCom JSON line at the end."""
import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def test_make_demo_trains_on_real_ray_and_prints_the_checkpoint():
    # as typed in a shell: CI runs this test under `make test`, and a make inherited from there
    # would run as a sub-make and print "make[1]: Leaving directory" after the JSON line
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    r = subprocess.run(["make", "demo"], cwd=ROOT, capture_output=True, text=True, timeout=900,
                       stdin=subprocess.DEVNULL, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    progress = [l for l in r.stderr.splitlines() if l.startswith("demo: progress: rollout ")]
    assert [l.split()[3] for l in progress] == ["1/4", "2/4", "3/4", "4/4"], r.stderr[-3000:]
    last = json.loads(r.stdout.strip().splitlines()[-1])
    assert last["checkpoint"]["iteration"] == 3
    assert last["checkpoint"]["path"].endswith("/Qwen3-Next-80B-A3B-Thinking_slime/iter_0000003")
    assert last["torch_dist"].endswith("/Qwen3-Next-80B-A3B-Thinking_torch_dist")
    # the demo took its cluster down: no node, bridge or claim is left
    from tests.simcluster.cluster import SimCluster

    c = SimCluster(ROOT / ".state" / "demo" / "cluster")
    assert not c.running()
    assert not Path(f"/sys/class/net/{c.bridge}").exists()
