"""include/node/nccl_check.py over every visible GPU of the device.

On a one-GPU machine it must answer {"ok": true, "skipped": "single GPU"}; with 2 or more it
runs NCCL all-reduces, one process per GPU. NVLink multicast must be off on the lent machines
(KINDS.md): the caller exports NCCL_NVLS_ENABLE=0, and the script must pass it on untouched.
"""
import os
import subprocess

import pytest

from tests.gpu._helpers import record, run_node

pytestmark = pytest.mark.gpu


def visible_gpus():
    out = subprocess.run(["nvidia-smi", "-L"], stdout=subprocess.PIPE, timeout=60)
    n = len([l for l in out.stdout.decode().splitlines() if l.startswith("GPU ")])
    vis = os.environ.get("CUDA_VISIBLE_DEVICES")
    if vis is not None:
        n = min(n, len([v for v in vis.split(",") if v.strip()]))
    return n


@pytest.mark.parametrize("size_mb,dtype", [(256, "float32"), (1024, "float32"), (256, "bf16")])
def test_nccl_all_reduce(size_mb, dtype):
    n = visible_gpus()
    assert n >= 1
    if n >= 2:
        assert "NCCL_NVLS_ENABLE" in os.environ, (
            "set NCCL_NVLS_ENABLE explicitly before a multi-GPU NCCL test (0 on lent machines)")
    rc, r, _, err = run_node("nccl_check.py", ["--size-mb", str(size_mb), "--dtype", dtype,
                                               "--iters", "20", "--timeout", "240"], timeout=300)
    record("nccl %d MiB %s on %d GPU(s)" % (size_mb, dtype, n), r)
    assert r["env"]["NCCL_NVLS_ENABLE"] == os.environ.get("NCCL_NVLS_ENABLE")
    if n == 1:
        assert rc == 0 and r["ok"] is True and r["skipped"] == "single GPU", r
        assert r["world_size"] == 1
        return
    assert rc == 0 and r["ok"] is True, (r.get("error"), err[-2000:])
    assert r["world_size"] == n and r["skipped"] is None
    assert r["busbw_gbps"] > 0 and r["algbw_gbps"] > 0
    assert abs(r["busbw_gbps"] - r["algbw_gbps"] * 2 * (n - 1) / n) < 0.01 * r["busbw_gbps"] + 1e-3
    assert r["nccl_version"] and r["devices"] and len(r["devices"]) == n
    record("nccl summary", {k: r[k] for k in ("world_size", "size_mb", "dtype", "iters",
                                              "time_ms", "algbw_gbps", "busbw_gbps",
                                              "nccl_version", "torch", "env", "devices")})
