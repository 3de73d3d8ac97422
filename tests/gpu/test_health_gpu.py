"""GPU health on a real GPU: the health check reads the real fields and grades the card healthy;
the telemetry sampler sees a real load rise and fall, and tells computing from spinning.

    python3 include/node/gpuhealth.py check --dcgm-level 1
    python3 include/node/gpuhealth.py sample
"""
import statistics
import subprocess
import sys
import time

import pytest

from tests.gpu._helpers import REPO, record, run_node

pytestmark = pytest.mark.gpu


def sample():
    rc, s, _, err = run_node("gpuhealth.py", ["sample"], timeout=120)
    assert rc == 0 and s["gpus"], (s, err[-1000:])
    return s


def means(s):
    g = s["gpus"]
    return {"util": statistics.mean(x["utilization.gpu"] for x in g),
            "power_w": statistics.mean(x["power.draw"] for x in g),
            "limit_w": statistics.mean(x["power.limit"] for x in g),
            "mem_mib": sum(x["memory.used"] for x in g), "seconds": s["seconds"]}


def test_the_health_check_reads_the_real_fields_and_grades_the_card_healthy():
    from slimeflow.health import grade_node

    t0 = time.time()
    rc, h, _, err = run_node("gpuhealth.py", ["check", "--dcgm-level", "1"], timeout=600)
    wall = time.time() - t0
    findings = grade_node("lent_gpu", h)
    record("health check", {"wall_s": round(wall, 2), "check_s": h["seconds"],
                            "missing_fields": h["missing_fields"], "gpus": h["gpus"],
                            "nvlink": h["nvlink"], "nvlink_error": h["nvlink_error"],
                            "fabric": h["fabric"], "xid": h["xid"], "dcgm": h["dcgm"],
                            "findings": findings})
    assert rc == 0 and h["error"] is None and h["gpus"], h.get("error")
    assert h["missing_fields"] == [], h["missing_fields"]  # a current driver knows every field
    g = h["gpus"][0]
    for field in ("ecc.errors.uncorrected.volatile.total", "pcie.link.width.max",
                  "power.limit", "remapped_rows.pending", "persistence_mode"):
        assert g[field] is not None, field
    assert [f for f in findings if f["grade"] != "info"] == [], findings


def test_the_sampler_sees_a_real_load_rise_and_fall_and_a_spin_as_a_hang_signature():
    from slimeflow.utils.gpuwatch import hang_signature

    idle = means(sample())
    seen = {"idle": idle}
    for mode in ("compute", "spin"):
        p = subprocess.Popen([sys.executable, str(REPO / "tests/gpu/gpu_load.py"), mode, "12"],
                             stdout=subprocess.PIPE, text=True)
        try:
            assert p.stdout.readline().strip() == "ready"
            time.sleep(4)  # power.draw is a 1 s average on Hopper
            busy = [sample() for _ in range(3)]
            seen[mode] = [means(s) for s in busy]
            seen[mode + "_hang_signature"] = [hang_signature(s) for s in busy]
            assert p.stdout.readline().strip() == "idle"  # the load sleeps, context held
            time.sleep(4)
            seen[mode + "_after"] = means(sample())
        finally:
            p.kill()
            p.wait()
    record("telemetry", seen)
    compute = seen["compute"]
    assert min(m["util"] for m in compute) >= 80, compute
    assert min(m["power_w"] for m in compute) > idle["power_w"] + 100, (idle, compute)
    assert not any(seen["compute_hang_signature"])  # real work is never a hang
    after = seen["compute_after"]
    assert after["util"] <= 10 and after["power_w"] < min(m["power_w"] for m in compute) - 100
    assert all(seen["spin_hang_signature"]), seen["spin"]  # busy, drawing next to nothing
