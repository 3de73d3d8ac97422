"""GPU health: the node script against the nvidia-smi and dmesg stand-ins, its parsers against
real answers of an H200 (driver 580.159.04), the grading sentences, the NCCL floor, and the
telemetry judge the trigger runs during training."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from slimeflow.health import FAIL, INFO, WARN, grade_node, nccl_floor
from slimeflow.utils.gpuwatch import GpuWatch, hang_signature

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "include" / "node"))
import gpuhealth  # noqa: E402  (a node script: stdlib only, imported by path)

# `nvidia-smi --query-gpu=<gpuhealth.HEALTH_FIELDS> --format=csv,noheader,nounits` as the lent
# H200 answered it (docs/gpu-validation.md), and its `-q` Fabric section.
H200_ROW = ("0, 00000000:00:06.0, NVIDIA H200, Enabled, 0, 0, [N/A], No, No, 0, 5, 5, 16, 16, "
            "Not Active, Not Active, Not Active, Enabled, 0, 80.42, 700.00, 0, 143771, 28")
H200_FABRIC = """    GPU C2C Mode                                       : Disabled
    Fabric
        State                                          : N/A
        Status                                         : N/A
        CliqueId                                       : N/A
        ClusterUUID                                    : N/A
        Health
            Summary                                    : N/A
    Processes                                          : None
"""


def h200_health():
    row = dict(zip(gpuhealth.HEALTH_FIELDS, [gpuhealth.value(c) for c in H200_ROW.split(", ")]))
    row["pci.bus_id"] = gpuhealth.short_bus_id(row["pci.bus_id"])
    return {"gpus": [row], "missing_fields": [], "nvlink": {}, "fabric":
            gpuhealth.parse_fabric(H200_FABRIC), "dcgm": None,
            "xid": {"readable": True, "events": [], "count": 0}}


def test_the_real_h200_answers_parse_and_grade_healthy():
    h = h200_health()
    g = h["gpus"][0]
    assert g["pci.bus_id"] == "0000:00:06.0" and g["retired_pages.pending"] is None
    assert g["power.limit"] == 700.0 and g["pcie.link.width.max"] == 16
    assert h["fabric"] == {"state": None, "status": None}  # N/A: no NVSwitch fabric in that VM
    assert [f for f in grade_node("h200", h) if f["grade"] != INFO] == []


# -- the node script against the stand-ins -------------------------------------------------

@pytest.fixture
def node(tmp_path, monkeypatch):
    """A one-node stand-in setup: DIR/bin/{nvidia-smi,dmesg}, DIR/nodes/0/gpu.json."""
    (tmp_path / "bin").mkdir()
    for src, name in (("nvidia_smi.py", "nvidia-smi"), ("dmesg.py", "dmesg")):
        shutil.copy(ROOT / "tests/simcluster" / src, tmp_path / "bin" / name)
        os.chmod(tmp_path / "bin" / name, 0o755)
    nd = tmp_path / "nodes" / "0"
    nd.mkdir(parents=True)

    def setup(**gpu):
        (nd / "gpu.json").write_text(json.dumps(dict({"count": 8, "gpu": "H100",
                                                      "name": "NVIDIA H100 80GB HBM3"}, **gpu)))
    setup()
    setup.dir = tmp_path
    setup.kmsg = nd / "kmsg.jsonl"
    monkeypatch.setenv("SIMCLUSTER_DIR", str(tmp_path))
    monkeypatch.setenv("SIMCLUSTER_NODE", "0")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    return setup


def check(mode="check"):
    out = subprocess.run([sys.executable, str(ROOT / "include/node/gpuhealth.py"), mode],
                         capture_output=True, text=True, check=True, env=os.environ)
    return json.loads(out.stdout)


def texts(findings, grade=None):
    return [f["text"] for f in findings if grade is None or f["grade"] == grade]


def test_a_healthy_node_has_no_fail_or_warn(node):
    h = check()
    assert len(h["gpus"]) == 8 and h["nvlink"]["7"]["active"] == 18
    assert h["fabric"] == {"state": "Completed", "status": "Success"}
    assert h["xid"]["readable"] and h["xid"]["events"] == []
    assert texts(grade_node("gpu_node_2", h), FAIL) + texts(grade_node("gpu_node_2", h), WARN) == []


@pytest.mark.parametrize("gpu,grade,expect", [
    ({"faults": {"5": {"ecc_volatile": 3, "remap_pending": True}}}, FAIL,
     "drain gpu_node_2: GPU 5 (0000:ab:00.0) has 3 uncorrectable ECC errors since the driver "
     "loaded and a pending row remap; reset the GPU (nvidia-smi -r -i 5) or RMA it, then run "
     "again."),
    ({"faults": {"2": {"remap_pending": True}}}, FAIL,
     "drain gpu_node_2: GPU 2 (0000:3a:00.0) has a pending row remap; reset the GPU "
     "(nvidia-smi -r -i 2) or reboot the node so that the remap takes effect."),
    ({"faults": {"1": {"remap_failure": True}}}, FAIL,
     "drain gpu_node_2: GPU 1 (0000:2a:00.0) failed to remap a row of its memory"),
    ({"faults": {"3": {"pcie_width": 8}}}, WARN,
     "gpu_node_2: GPU 3 (0000:5d:00.0)'s PCIe link runs at x8 of x16; reseat the GPU"),
    ({"faults": {"4": {"nvlink_down": [0, 1]}}}, FAIL,
     "drain gpu_node_2: GPU 4 (0000:9a:00.0) has 2 of 18 NVLink links down (links 0, 1); reset "
     "the GPU or check the baseboard"),
    ({"faults": {"6": {"thermal": True}}}, WARN,
     "gpu_node_2: GPU 6 (0000:ba:00.0) is slowed by hardware thermal slowdown (the GPU is too "
     "hot); check the node's cooling"),
    ({"fabric": {"state": "In Progress", "status": "N/A"}}, FAIL,
     "drain gpu_node_2: its NVSwitch fabric is not ready (fabric state In Progress, status N/A); "
     "start or restart nvidia-fabricmanager"),
    ({"dmesg_restricted": True}, INFO,
     "gpu_node_2: Xid events are unknown because the kernel log cannot be read (dmesg: read "
     "kernel buffer failed: Operation not permitted)"),
])
def test_each_injected_fault_gets_its_grade_and_sentence(node, gpu, grade, expect):
    node(**gpu)
    found = [f for f in grade_node("gpu_node_2", check()) if f["text"].startswith(expect)]
    assert found, texts(grade_node("gpu_node_2", check()))
    assert found[0]["grade"] == grade


@pytest.mark.parametrize("code,grade,expect", [
    (79, FAIL, "drain gpu_node_2: GPU 1 (0000:2a:00.0) logged Xid 79 (GPU has fallen off the "
               "bus) once since boot, last at 4242 s after boot; reboot the node and RMA the GPU "
               "if it recurs."),
    (48, FAIL, "drain gpu_node_2: GPU 1 (0000:2a:00.0) logged Xid 48 (double-bit ECC error) "
               "once since boot"),
    (13, INFO, "gpu_node_2: GPU 1 (0000:2a:00.0) logged Xid 13 (Graphics Engine Exception) "),
    (999, WARN, "gpu_node_2: GPU 1 (0000:2a:00.0) logged Xid 999 once since boot"),
])
def test_xids_in_the_kernel_log_are_graded_by_nvidias_catalog(node, code, grade, expect):
    node.kmsg.write_text(json.dumps({"t": 4242.125, "msg": "eth0: link up"}) + "\n" + json.dumps(
        {"t": 4242.5, "msg": f"NVRM: Xid (PCI:0000:2a:00): {code}, pid=1, name=python3, x"}) + "\n")
    h = check()
    assert h["xid"]["events"][0]["t"] == 4242.5 and h["xid"]["count"] == 1
    found = [f for f in grade_node("gpu_node_2", h) if f["text"].startswith(expect)]
    assert found and found[0]["grade"] == grade, texts(grade_node("gpu_node_2", h))


def test_an_old_driver_is_asked_the_old_names_and_the_rest_is_unknown(node):
    node(driver_version="525.147.05")  # knows clocks_throttle_reasons.*, not clocks_event_...
    h = check()
    assert h["missing_fields"] == [] and h["gpus"][0]["clocks_event_reasons.hw_thermal_slowdown"]
    assert gpuhealth.INVALID_FIELD.search('Field "fabric.state" is not a valid field to query.')


def test_the_sampler_sees_an_actor_and_the_hang_signature(node):
    s = check("sample")
    assert s["gpus"][0]["utilization.gpu"] == 0 and not hang_signature(s)
    node(telemetry="hang")
    s = check("sample")
    assert s["gpus"][0]["utilization.gpu"] == 100 and s["gpus"][0]["power.draw"] < 200
    assert hang_signature(s)
    node(telemetry="train")
    assert not hang_signature(check("sample"))


# -- DCGM ----------------------------------------------------------------------------------

DCGM4 = {"DCGM Diagnostic": {"test_categories": [
    {"category": "Deployment", "tests": [{"name": "software", "results": [
        {"entity_group": "GPU", "entity_id": 0, "status": "Pass"}]}]},
    {"category": "Hardware", "tests": [{"name": "memory", "results": [
        {"entity_group": "GPU", "entity_id": 3, "status": "Fail",
         "warnings": [{"warning": "GPU 3 has uncorrectable memory errors", "error_id": 6}]}],
        "test_summary": {"status": "Fail"}}]}]},
    "metadata": {"version": "4.6.0"}}


def test_dcgm_failures_refuse_the_node_with_dcgms_own_words():
    found, err = gpuhealth.parse_dcgm("noise\n" + json.dumps(DCGM4))
    assert err is None and found == [{"test": "memory", "status": "Fail", "gpu": 3,
                                      "info": "GPU 3 has uncorrectable memory errors"}]
    f = grade_node("n1", {"gpus": [], "dcgm": {"ran": True, "level": 1, "problems": found},
                          "xid": {"readable": True, "events": []}})
    assert texts(f, FAIL) == ["drain n1: DCGM diagnostics level 1 test memory failed on GPU 3: "
                              "GPU 3 has uncorrectable memory errors; run `dcgmi diag -r 1` "
                              "there and follow its advice."]
    assert gpuhealth.parse_dcgm(json.dumps({"DCGM Diagnostic": {"runtime_error": "no GPUs"}})) \
        == (None, "no GPUs")


# -- NCCL floor ----------------------------------------------------------------------------

@pytest.mark.parametrize("name,count,nvlink,floor", [
    ("NVIDIA H100 80GB HBM3", 8, True, 296.0),
    ("NVIDIA H200", 8, True, 296.0),
    ("NVIDIA B200", 8, True, 544.0),
    ("NVIDIA H100 PCIe", 8, False, 22.4),
    ("NVIDIA H100 80GB HBM3", 4, True, 22.4),  # nothing published for 4: the PCIe figure
])
def test_the_nccl_floor_is_80_percent_of_a_cited_figure(name, count, nvlink, floor):
    got, _, source = nccl_floor(None, name, count, nvlink)
    assert got == pytest.approx(floor) and source
    assert nccl_floor(380, name, count, nvlink)[0] == 380.0  # a recipe's number wins


# -- during training -----------------------------------------------------------------------

def sample(util=97, power=600.0, ecc=0, events=(), uptime=100.0, n=2):
    return {"gpus": [{"index": i, "pci.bus_id": f"0000:{0x18 + i:02x}:00.0",
                      "utilization.gpu": util, "power.draw": power, "power.limit": 700.0,
                      "memory.used": 60000, "memory.total": 81559,
                      "ecc.errors.uncorrected.volatile.total": ecc if i == 1 else 0}
                     for i in range(n)],
            "uptime": uptime, "xid": {"readable": True, "events": list(events)}}


def test_new_ecc_and_xid_alert_once_and_survive_a_triggerer_restart():
    w = GpuWatch(["a", "b"], hang_timeout=600)
    w.xid_after["a"] = 50.0  # what check_cluster saw last
    got = w.observe({"a": sample(), "b": sample()}, 1000, 1000)
    assert got["alerts"] == [] and got["hang"] is None
    xid = {"t": 120.0, "pci": "0000:19:00", "xid": 79, "text": "GPU has fallen off the bus."}
    got = w.observe({"a": sample(ecc=2, events=[xid]), "b": sample()}, 1060, 1060)
    assert got["alerts"] == [
        "a: GPU 1 (0000:19:00.0) logged 2 new uncorrectable ECC errors during training (2 since "
        "the driver loaded); the job may die of it: drain a and reset or RMA that GPU before the "
        "next run.",
        "a: GPU 1 (0000:19:00) logged Xid 79 (GPU has fallen off the bus) during training: GPU "
        "has fallen off the bus.; reboot the node and RMA the GPU if it recurs; the job will "
        "likely fail."]
    w2 = GpuWatch(["a", "b"], 600, json.loads(json.dumps(w.state())))  # progress.json round trip
    assert w2.observe({"a": sample(ecc=2, events=[xid]), "b": sample()}, 1120, 1120)["alerts"] == []


def test_the_hang_signature_stalls_only_after_hang_timeout_without_progress():
    w = GpuWatch(["a"], hang_timeout=600)
    hung = {"a": sample(util=100, power=85.0)}
    assert w.observe(hung, 1000, 990)["hang"] is None
    assert w.observe(hung, 1500, 990)["hang"] is None  # held 500 s < 600
    assert w.observe({"a": sample()}, 1550, 990)["hang"] is None  # computing again: reset
    w.observe(hung, 1600, 990)
    assert w.observe(hung, 2100, 990)["hang"] is None  # held 500 s
    text = w.observe(hung, 2210, 990)["hang"]
    assert text.startswith("the GPUs of a have sat at 100.0% utilization while drawing 85.0 W "
                           "of 700.0 W for 610 s with no rollout line for 1220 s")
    w = GpuWatch(["a"], hang_timeout=600)
    w.observe(hung, 1000, 990)
    assert w.observe(hung, 1700, 1690)["hang"] is None  # rollouts still come: not a hang


def test_a_node_idle_while_the_others_train_is_named_once():
    w = GpuWatch(["a", "b"], hang_timeout=600, idle_after=180)
    idle = sample(util=0, power=70.0)
    for t in (0, 60, 120):
        assert w.observe({"a": sample(), "b": idle}, t, t)["idle"] == []
    got = w.observe({"a": sample(), "b": idle}, 180, 180)["idle"]
    assert got == ["b's GPUs have been idle (0% utilization, 70.0 W) for 180 s while a at 97% "
                   "trains; its training actors may have died or hung outside NCCL: look at the "
                   "Ray workers on b."]
    assert w.observe({"a": sample(), "b": idle}, 240, 240)["idle"] == []
    # every node idle together (a phase, a checkpoint save) is not named
    w = GpuWatch(["a", "b"], hang_timeout=600, idle_after=0)
    assert w.observe({"a": idle, "b": idle}, 0, 0)["idle"] == []


def test_the_training_view_shows_each_nodes_gpus_and_what_was_wrong():
    from slimeflow.ui.render import gpu_table

    w = GpuWatch(["a", "b"], hang_timeout=600)
    w.observe({"a": sample(), "b": sample(util=100, power=85.0)}, 1000, 1000)
    w.observe({"a": sample(ecc=1), "b": sample(util=100, power=85.0)}, 1060, 1000)
    html = gpu_table(w.state())
    assert "<td>a</td><td>2</td><td>97.0% (min 97%)</td><td>600 / 700 W</td>" in html
    assert "1 new ECC error(s)" in html and "NCCL-hang signature (busy on idle power)" in html
    assert "no sample yet" in gpu_table({})
