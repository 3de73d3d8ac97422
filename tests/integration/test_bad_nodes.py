"""Bad node state: each gives one clear sentence naming the node and the fix, and nothing half
written is trusted later.

Unit-level over real SSH: the operators' own steps (bundle upload, probe, judge, download) run
against a simulated cluster, without the Airflow scheduler (the DAG adds nothing here;
tests/integration/test_secrets.py covers SSH trust end to end). One cluster for the module: two
nodes, each with a private 24 MB disk.
"""
import json
import os
import subprocess
import urllib.request

import pytest

from slimeflow import builders
from slimeflow.cluster import ClusterError, judge
from slimeflow.config import RunConfig
from slimeflow.hooks.node import NodeError, NodeHook
from tests.simcluster.airflow_run import run_conf
from tests.simcluster.cluster import DEFAULT_DRIVER, SimCluster, procs_of

pytestmark = pytest.mark.integration
RECIPE = "qwen3-next-80b-a3b"
MODEL = "Qwen/Qwen3-Next-80B-A3B-Thinking"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = SimCluster.up(tmp_path_factory.mktemp("badnodes") / "cluster", nodes=2, gpu="H100",
                      disk_mb=24)
    saved = {k: os.environ.get(k) for k in c.env()}
    os.environ.update(c.env())  # the node connections, as AIRFLOW_CONN_SIM_NODE_<I>
    yield c
    for k, val in saved.items():
        if val is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = val
    c.down()
    assert procs_of(str(c.dir)) == []


def config(c, i=0, **overrides) -> RunConfig:
    conf = run_conf(c, nodes=[c.conn_ids[i]], **overrides)
    return RunConfig.from_params(RECIPE, conf, hosts=[c.nodes[i]["host"]])


def operator(cls=None, **kw):
    from slimeflow.operators.preflight import PreflightOperator

    cls = cls or PreflightOperator
    op = cls(task_id=f"t{os.urandom(3).hex()}", **kw)
    op.recipe = RECIPE  # outside a DAG: no DAG to take the recipe from
    return op


def probe(c, i=0, cfg=None):
    cfg = cfg or config(c, i)
    node = cfg.cluster.head
    op = operator(node=node)
    try:
        op.ensure_bundle(cfg, node)
        return cfg, op.run_json(cfg, builders.preflight(cfg, node), timeout=120)
    finally:
        op.close_hooks()


def judged(c, i=0) -> str:
    cfg, p = probe(c, i)
    with pytest.raises(ClusterError) as e:
        judge(cfg, {cfg.cluster.head: p}, True, {})
    return str(e.value)


# -- GPUs and drivers -----------------------------------------------------------------------

def test_no_gpu(cluster):
    cluster.set_gpu(0, count=0)
    try:
        msg = judged(cluster)
    finally:
        cluster.set_gpu(0, count=8)
    assert ("node sim_node_0 has no usable GPU" in msg and "install or repair the NVIDIA driver "
            "there, or remove sim_node_0 from `nodes`" in msg), msg


def test_driver_too_old_to_report_a_compute_capability(cluster):
    # nvidia-smi before 510 has no compute_cap field (and 470 cannot drive an H100 at all)
    cluster.set_gpu(0, driver_version="470.82.01")
    try:
        msg = judged(cluster)
    finally:
        cluster.set_gpu(0, driver_version=DEFAULT_DRIVER)
    assert ("node sim_node_0 reports no compute capability for GPU 0 (driver 470.82.01) and "
            "torch could not tell either; upgrade the NVIDIA driver." in msg), msg


@pytest.mark.parametrize("gpu,driver,need", [("H100", "520.61.05", "525.60"),
                                             ("B200", "535.104.05", "570.00")])
def test_driver_too_old_for_the_compute_capability(cluster, gpu, driver, need):
    cluster.set_gpu(0, gpu=gpu, driver_version=driver)
    try:
        msg = judged(cluster)
    finally:
        cluster.set_gpu(0, gpu="H100", driver_version=DEFAULT_DRIVER)
    cc = "10.0" if gpu == "B200" else "9.0"
    assert (f"node sim_node_0 runs NVIDIA driver {driver}, too old for compute capability {cc} "
            f"(needs {need} or newer); upgrade the driver." in msg), msg


# -- tools: missing, broken, too old ----------------------------------------------------------

@pytest.mark.parametrize("script,expect", [
    ("echo 'hf: error while loading shared libraries: libpython3.so' >&2; exit 127",
     "node sim_node_0 has an `hf` at {bin}/hf that does not run (`hf --version` failed); "
     "reinstall huggingface_hub>=1.0"),
    ("echo 'huggingface_hub version: 0.30.2'",
     "node sim_node_0 has `hf` 0.30.2, older than 0.34 (the first with `hf download`); upgrade "
     "it with `pip install -U huggingface_hub`."),
])
def test_broken_or_old_hf_cli(cluster, script, expect):
    shadow = cluster.dir / "bin" / "hf"  # first on the nodes' PATH, before the venv's real hf
    shadow.write_text(f"#!/bin/sh\n{script}\n")
    shadow.chmod(0o755)
    try:
        msg = judged(cluster)
    finally:
        shadow.unlink()
    assert expect.format(bin=cluster.dir / "bin") in msg, msg


def test_missing_hf_cli_is_named():
    # the probe reports presence with shutil.which; on a node without it:
    cfg = RunConfig.from_params(RECIPE, {"nodes": ["gpu0"], "base_folder": "/data"},
                                hosts=["10.0.0.1"])
    p = {"gpus": [{"index": g, "name": "NVIDIA H100 80GB HBM3", "compute_cap": "9.0",
                   "driver": DEFAULT_DRIVER} for g in range(8)],
         "hf_cli": {"present": False}, "disk": {"writable": True}, "torch": {"version": "2.8"},
         "packages": {k: {"present": True} for k in ("slime", "megatron", "ray", "sglang",
                                                     "fla", "causal_conv1d")}}
    with pytest.raises(ClusterError) as e:
        judge(cfg, {"gpu0": p}, True, {})
    assert str(e.value).startswith("node gpu0 has no `hf` CLI on PATH; install "
                                   "huggingface_hub>=1.0"), e.value


def test_wrong_slime_dir_names_the_param(cluster):
    cfg, p = probe(cluster, cfg=config(cluster, slime_dir=str(cluster.dir / "no-such-slime")))
    with pytest.raises(ClusterError) as e:
        judge(cfg, {cfg.cluster.head: p}, True, {})
    assert (f"node sim_node_0 has no train.py in slime_dir {cluster.dir}/no-such-slime; set "
            f"`slime_dir` to the slime checkout" in str(e.value)), e.value


# -- storage ------------------------------------------------------------------------------------

def _in_node_ns(cluster, i, *cmd):
    r = cluster.nsenter(i, list(cmd))
    assert r.returncode == 0, r.stderr


def test_read_only_base_folder(cluster):
    base = cluster.base_folder / "ro"
    (cluster.node_base(0) / "ro").mkdir(exist_ok=True)
    _in_node_ns(cluster, 0, "mount", "--bind", str(base), str(base))
    _in_node_ns(cluster, 0, "mount", "-o", "remount,ro,bind", str(base))
    try:
        cfg = config(cluster, base_folder=str(base))
        with pytest.raises(NodeError) as e:
            probe(cluster, cfg=cfg)
    finally:
        _in_node_ns(cluster, 0, "umount", str(base))
    msg = str(e.value)
    assert msg.startswith(f"cannot write {base}/.slimeflow/node/") and "on node sim_node_0" in msg, msg
    assert "read-only file system" in msg, msg
    assert "make base_folder writable by the SSH user or choose another base_folder" in msg, msg
    assert not list((cluster.node_base(0) / "ro").iterdir())


def _download(cluster, i, token_env, expect_files):
    from slimeflow.operators.download import DownloadModelOperator

    cfg = config(cluster, i)
    op = operator(DownloadModelOperator)
    try:
        op.ensure_bundle(cfg, cfg.cluster.head)
        return cfg, op.ensure(cfg, cfg.cluster.head, "model", MODEL, "main",
                              cfg.paths.hf_checkpoint, expect_files, token_env)
    finally:
        op.close_hooks()


def _verify(cluster, i, cfg):
    op = operator(node=cfg.cluster.head)
    try:
        return op.run_json(cfg, builders.hf_verify(cfg, cfg.cluster.head, cfg.paths.hf_checkpoint))
    finally:
        op.close_hooks()


def hub_files(p) -> int:
    return next(h["files"] for h in p["hub"] if h["repo"] == MODEL)


def test_full_disk_during_download_then_nothing_half_written_is_trusted(cluster):
    cfg, p = probe(cluster, 1)  # the node scripts take their place first; the hub's file count
    expect = hub_files(p)
    cluster.fault("fill-disk", node=1, headroom_kb=512)
    try:
        with pytest.raises(RuntimeError) as e:
            _download(cluster, 1, {}, expect)
    finally:
        cluster.fault("unfill-disk", node=1)
    msg = str(e.value)
    assert msg.startswith("node sim_node_1: the disk filled up while downloading "
                          f"{MODEL}; free space under base_folder"), msg
    partial = _verify(cluster, 1, cfg)
    assert not partial["ok"] or partial["files"] < expect  # what landed is not a complete copy
    _, got = _download(cluster, 1, {}, expect)  # the next try fetches, it does not trust
    assert got["downloaded"] is True and got["files"] == expect
    done = _verify(cluster, 1, cfg)
    assert done["ok"] is True and done["files"] == expect


def test_gated_repo_without_a_token(cluster):
    def gate(on):
        req = urllib.request.Request(cluster.hub_url + "/_sim/gated", method="POST",
                                     data=json.dumps({"repo": MODEL, "gated": on}).encode())
        urllib.request.urlopen(req, timeout=10).read()

    cfg, p = probe(cluster, 0)
    gate(True)
    try:
        with pytest.raises(RuntimeError) as e:
            _download(cluster, 0, {}, hub_files(p))
    finally:
        gate(False)
    msg = str(e.value)
    assert msg.startswith(f"node sim_node_0: `hf download {MODEL}` was refused by the hub"), msg
    assert "store a token in the Airflow connection `slimeflow_hf` (password)" in msg
    partial = _verify(cluster, 0, cfg)
    assert not partial["ok"] or partial["files"] < hub_files(p)


# -- reaching the node ------------------------------------------------------------------------

def test_unreachable_node(cluster):
    cluster.stop_sshd(1)
    try:
        with pytest.raises(NodeError) as e:
            NodeHook(ssh_conn_id="sim_node_1", conn_timeout=5).connect()
    finally:
        cluster.start_sshd(1)
    n = cluster.nodes[1]
    assert str(e.value).startswith(f"node sim_node_1 ({n['host']}:{n['port']}) is unreachable"), e.value
    assert f"check that it is up, that sshd listens on port {n['port']}" in str(e.value)


def test_ssh_auth_failure(cluster, tmp_path):
    key = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    conn = json.loads(os.environ["AIRFLOW_CONN_SIM_NODE_0"])
    conn["extra"]["key_file"] = str(key)
    os.environ["AIRFLOW_CONN_SIM_BAD_KEY"] = json.dumps(conn)
    try:
        with pytest.raises(NodeError) as e:
            NodeHook(ssh_conn_id="sim_bad_key").connect()
    finally:
        os.environ.pop("AIRFLOW_CONN_SIM_BAD_KEY")
    assert str(e.value).startswith(f"SSH login to node sim_bad_key ({conn['host']}:22) as root failed"), e.value
    assert "check the connection's login and key_file/private_key" in str(e.value)


# -- a Ray that is not ours -------------------------------------------------------------------

def test_a_foreign_ray_on_other_ports_refuses_the_node_and_survives_teardown(cluster):
    """Someone's real Ray on worker node 1, on ports of its own (the head's port check cannot
    see it): check_cluster refuses that node in one sentence, and this run's teardown, which
    never started Ray, leaves it running."""
    from types import SimpleNamespace

    from slimeflow.operators.teardown import TeardownOperator

    rc, out, err = cluster.exec(1, "ray start --head --port=7379 --dashboard-port=8365 "
                                   "--include-dashboard=false --num-gpus 8 "
                                   "--disable-usage-stats", timeout=180)
    assert rc == 0, out + err

    def raylets():
        return {p.pid for p in cluster.procs(1) if p.cmdline and
                p.cmdline[0].endswith("/raylet")}
    try:
        theirs = raylets()
        assert theirs
        conf = run_conf(cluster, nodes=list(cluster.conn_ids[:2]))
        cfg = RunConfig.from_params(RECIPE, conf, hosts=[n["host"] for n in cluster.nodes[:2]])
        probes = {}
        for i, node in enumerate(cfg.cluster.nodes):
            one = config(cluster, i)
            probes[node] = probe(cluster, i, one)[1]
        assert probes["sim_node_1"]["ray_local"]["running"]
        with pytest.raises(ClusterError) as e:
            judge(cfg, probes, True, {})
        msg = str(e.value)
        assert "node sim_node_1 already runs a Ray that this run did not start (raylet pid(s) " \
            in msg and "slimeflow never stops a Ray it did not start." in msg
        assert "sim_node_0" not in msg
        op = operator(TeardownOperator)
        try:
            assert op.work(cfg, {"dag": SimpleNamespace(dag_id="slime_foreign"),
                                 "run_id": "manual__foreign"}) == {}
        finally:
            op.close_hooks()
        assert raylets() == theirs  # still running, the same processes
    finally:
        cluster.exec(1, "ray stop --force", timeout=120)
    assert not raylets()


# -- GPU health (gpuhealth.py through the probe, judged by check_cluster) ---------------------

SICK = [  # one fault per GPU of sim_node_1, all at once: one probe, one sentence each
    ("gpu-ecc", {"gpu": 5, "count": 3},
     "drain sim_node_1: GPU 5 (0000:ab:00.0) has 3 uncorrectable ECC errors since the driver "
     "loaded; reset the GPU (nvidia-smi -r -i 5) or RMA it, then run again."),
    ("gpu-remap", {"gpu": 2},
     "drain sim_node_1: GPU 2 (0000:3a:00.0) has a pending row remap; reset the GPU "
     "(nvidia-smi -r -i 2) or reboot the node so that the remap takes effect."),
    ("gpu-xid", {"gpu": 1, "code": 79},
     "drain sim_node_1: GPU 1 (0000:2a:00.0) logged Xid 79 (GPU has fallen off the bus) once "
     "since boot, last at "),
    ("gpu-xid", {"gpu": 0, "code": 48},
     "drain sim_node_1: GPU 0 (0000:18:00.0) logged Xid 48 (double-bit ECC error) once since "
     "boot, last at "),
    ("gpu-nvlink-down", {"gpu": 4, "links": [3]},
     "drain sim_node_1: GPU 4 (0000:9a:00.0) has 1 of 18 NVLink links down (link 3); reset the "
     "GPU or check the baseboard, since NCCL over the node would slow down or hang."),
]


def health_of(cfg, p) -> tuple:
    """(health findings, refusal text or ""): the module's earlier tests leave the node's
    small disk too full for a run, which check_cluster refuses too; only health matters here."""
    try:
        return judge(cfg, {cfg.cluster.head: p}, True, {})["health"], ""
    except ClusterError as e:
        return e.health, str(e)


def test_sick_gpus_refuse_their_node_before_anything_starts(cluster):
    for fault, kw, _ in SICK:
        cluster.fault(fault, node=1, **kw)
    try:
        msg = judged(cluster, 1)
    finally:
        cluster.fault("gpu-heal", node=1)
    for _, _, expect in SICK:
        assert expect in msg, msg
    assert msg.count("drain sim_node_1") == len(SICK), msg  # one sentence per problem


def test_warnings_let_the_run_go_on_and_say_what_to_do(cluster):
    cluster.fault("gpu-pcie", node=1, gpu=3, width=8)
    cluster.fault("gpu-thermal", node=1, gpu=6)
    cluster.fault("dmesg-restrict", node=1)
    try:
        cfg, p = probe(cluster, 1)
        h, refused = health_of(cfg, p)
    finally:
        cluster.fault("gpu-heal", node=1)
    assert "drain sim_node_1" not in refused and "GPU" not in refused, refused
    assert [t for t in h["warn"] if t.startswith(
        "sim_node_1: GPU 3 (0000:5d:00.0)'s PCIe link runs at x8 of x16; reseat the GPU")], h
    assert [t for t in h["warn"] if t.startswith(
        "sim_node_1: GPU 6 (0000:ba:00.0) is slowed by hardware thermal slowdown")], h
    # an unreadable kernel log is "unknown", never a pass, and gives the trigger no Xid mark
    assert [t for t in h["info"] if t.startswith(
        "sim_node_1: Xid events are unknown because the kernel log cannot be read (dmesg: read "
        "kernel buffer failed: Operation not permitted)")], h
    assert "sim_node_1" not in h["marks"]


def test_a_healthy_node_passes_every_health_check(cluster):
    cfg, p = probe(cluster, 1)
    h, refused = health_of(cfg, p)
    assert "GPU" not in refused and "NCCL" not in refused, refused
    assert h["warn"] == [] and p["health"]["xid"]["readable"] is True
    assert len(p["health"]["gpus"]) == 8 and p["health"]["fabric"]["state"] == "Completed"
    assert "sim_node_1" in h["marks"]


# -- the node's own slime, Megatron and sglang parse the train command line -------------------

def test_version_drift_on_the_node_is_caught_before_anything_starts(cluster, capfd):
    """check_cluster runs include/node/argvcheck.py on the head over SSH, with the node's own
    (simulated) slime, Megatron-LM and sglang."""
    from slimeflow.operators.preflight import CheckClusterOperator

    def facts_of():
        cfg, p = probe(cluster, 0)
        return cfg, judge(cfg, {cfg.cluster.head: p}, True, {})

    op = operator(CheckClusterOperator)
    cfg, facts = facts_of()
    try:
        op.ensure_bundle(cfg, cfg.cluster.head)
        assert facts["sglang_version"] == "0.5.6"
        op.check_argv(cfg, facts)  # slime's image as pinned: nothing to say
        # a stock Megatron: slime's patch is what adds --use-gated-attention
        cluster.set_megatron_patch(False)
        try:
            with pytest.raises(ClusterError) as e:
                op.check_argv(cfg, facts)
        finally:
            cluster.set_megatron_patch(True)
        msg = str(e.value)
        assert msg.startswith("node sim_node_0 would drop --use-gated-attention without a word"), msg
        assert "apply slime's docker/patch/latest/megatron.patch to " in msg, msg
        # sglang 0.5.23 on the node: the flag it removed is renamed, and said so
        cluster.set_dist_version("sglang", "0.5.23")
        try:
            cfg, facts = facts_of()
            assert facts["sglang_version"] == "0.5.23"
            capfd.readouterr()
            op.check_argv(cfg, facts)
            logged = "".join(capfd.readouterr())  # the task log (Airflow's structlog output)
            assert ("[sim_node_0] sglang 0.5.23 removed --sglang-cuda-graph-bs (in 0.5.20): "
                    "train.py gets its values as --sglang-cuda-graph-bs-decode") in logged, logged
            # without the rename (an older slimeflow's command line) the node's sglang refuses it
            with pytest.raises(ClusterError) as e:
                op.check_argv(cfg, {k: v for k, v in facts.items() if k != "sglang_version"})
            assert "sglang's parser rejects the train command line: \"ambiguous option: " \
                   "--sglang-cuda-graph-bs could match" in str(e.value), str(e.value)
        finally:
            cluster.set_dist_version("sglang", "0.5.6")
    finally:
        op.close_hooks()
