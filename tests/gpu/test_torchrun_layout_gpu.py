"""`torchrun --nproc-per-node N` over every visible GPU: world size N, and each rank on its own
GPU (distinct device index and UUID), with a working NCCL all-reduce across all of them."""
import json
import subprocess
import sys

import pytest

from tests.gpu._helpers import REPO, record
from tests.gpu.test_nccl_gpu import visible_gpus

pytestmark = pytest.mark.gpu


def test_torchrun_one_process_per_gpu():
    n = visible_gpus()
    if n < 2:
        pytest.skip("needs 2 or more GPUs")
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node", str(n), str(REPO / "tests" / "gpu" / "torchrun_layout.py")]
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300)
    out = p.stdout.decode()
    assert p.returncode == 0, p.stderr.decode()[-3000:]
    result = json.loads([l for l in out.splitlines() if l.startswith("{")][-1])
    record("torchrun layout on %d GPUs" % n, result)
    assert result["world_size"] == n
    assert result["rank_sum"] == n * (n - 1) / 2
    ranks = sorted(result["ranks"], key=lambda r: r["rank"])
    assert [r["rank"] for r in ranks] == list(range(n))
    assert [r["device"] for r in ranks] == [r["local_rank"] for r in ranks] == list(range(n))
    assert len({r["uuid"] for r in ranks}) == n, "two ranks share a GPU"
