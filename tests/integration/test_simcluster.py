"""The simulated cluster's node layer: namespaced nodes with sshd and real Ray, stand-ins, storage, faults."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import paramiko
import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.simcluster.cluster import (FLA_UNPATCHED, GPUS, SimCluster, SimClusterError,  # noqa: E402
                                      port_open, procs_of)

pytestmark = pytest.mark.integration

QUERY = "nvidia-smi --query-gpu=index,name,compute_cap,memory.total,driver_version --format=csv,noheader,nounits"




def connect(node: dict, key_file, host_key: str | None = None) -> paramiko.SSHClient:
    """paramiko with host key checking ON: pinned key, RejectPolicy."""
    c = paramiko.SSHClient()
    kt, kb = (host_key or node["host_key"]).split()[:2]
    name = node["host"] if node["port"] == 22 else f"[{node['host']}]:{node['port']}"
    c.get_host_keys().add(name, kt, paramiko.Ed25519Key(data=base64.b64decode(kb)))
    c.set_missing_host_key_policy(paramiko.RejectPolicy())
    c.connect(node["host"], node["port"], username="root", key_filename=str(key_file), look_for_keys=False,
              allow_agent=False, timeout=10, banner_timeout=10, auth_timeout=10)
    return c


def run(c: paramiko.SSHClient, cmd: str, timeout=30):
    _, out, err = c.exec_command(cmd, timeout=timeout)
    o, e = out.read().decode(), err.read().decode()
    return out.channel.recv_exit_status(), o, e


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    d = tmp_path_factory.mktemp("simshared")
    c = SimCluster.up(d, nodes=2, gpu="H100", gpus_per_node=8)
    yield c
    c.down()


@pytest.fixture(scope="module")
def clients(shared):
    cs = [connect(n, shared.key_file) for n in shared.nodes]
    yield cs
    for c in cs:
        c.close()


def test_up_writes_its_facts(shared):
    info = json.loads((shared.dir / "cluster.json").read_text())
    x = info["net"]["x"]
    assert [n["conn_id"] for n in info["nodes"]] == ["sim_node_0", "sim_node_1"]
    assert [n["host"] for n in info["nodes"]] == [f"10.231.{x}.11", f"10.231.{x}.12"]
    assert [n["port"] for n in info["nodes"]] == [22, 22]
    sim = json.loads((shared.dir / "sim.json").read_text())
    assert sim["nodes"] == 2 and sim["gpu"] == "H100" and sim["gpus_per_node"] == 8 and sim["storage"] == "shared"
    env_sh = (shared.dir / "env.sh").read_text()
    for var in ("AIRFLOW_CONN_SIM_NODE_0", "AIRFLOW_CONN_SIM_NODE_1", "SIMCLUSTER_DIR", "SIM_BASE_FOLDER",
                "SIM_SLIME_DIR", "SIM_MEGATRON_DIR", "SIM_HF_ENDPOINT", "SIM_MASTER_ADDR"):
        assert f"export {var}=" in env_sh
    conn = json.loads(shared.env()["AIRFLOW_CONN_SIM_NODE_0"])
    assert conn["conn_type"] == "ssh" and conn["login"] == "root" and conn["port"] == 22
    assert conn["host"] == f"10.231.{x}.11"
    assert conn["extra"]["host_key"].startswith("ssh-ed25519 AAAA")
    assert Path(conn["extra"]["key_file"]).is_file()


def test_up_refuses_a_running_cluster(shared):
    with pytest.raises(SimClusterError, match="already running"):
        SimCluster.up(shared.dir, nodes=2)


def test_each_node_is_its_own_host(shared, clients):
    """Own hostname, address, /tmp, process table; no default route; 32 CPUs as Ray counts."""
    x = shared.info["net"]["x"]
    run(clients[1], "setsid nohup sleep 3601 > /dev/null 2>&1 < /dev/null &")
    for i, c in enumerate(clients):
        rc, out, err = run(c, "hostname; ip -4 -o addr show eth0 | awk '{print $4}'; ip route; "
                              "python3 -c 'import os; print(os.cpu_count())'; echo node$SIMCLUSTER_NODE > /tmp/whoami; "
                              "ps -e -o args= | grep -c '^sleep 3601' || true")
        assert rc == 0, err
        host, addr, route, cpus, sleepers = out.splitlines()
        assert (host, addr, cpus) == (f"sim-node-{i}", f"10.231.{x}.{11 + i}/24", "32")
        assert route.startswith(f"10.231.{x}.0/24 dev eth0") and "default" not in out
        assert sleepers == ("1" if i == 1 else "0")  # node 0 does not see node 1's processes
    assert run(clients[0], "cat /tmp/whoami")[1] == "node0\n"  # /tmp is private
    assert (shared.node_tmp(1) / "whoami").read_text() == "node1\n"
    # nodes reach each other and the host's side of the bridge, and nothing else is routed
    rc, out, _ = run(clients[0], f"python3 -c \"import socket; socket.create_connection(('10.231.{x}.12', 22), 5); "
                                 f"print('ok')\"; ip route get 198.51.100.7 2>&1 || true")
    first, second = out.splitlines()[:2]
    assert first == "ok" and "unreachable" in second.lower()


def test_two_clusters_side_by_side_do_not_collide(shared, tmp_path):
    with SimCluster.up(tmp_path / "other", nodes=1, hub=False) as other:
        assert other.info["net"]["x"] != shared.info["net"]["x"]
        assert other.bridge != shared.bridge and other.nodes[0]["host"] != shared.nodes[0]["host"]
        assert other.exec(0, "hostname")[1] == "sim-node-0\n"
        assert shared.exec(0, "hostname")[1] == "sim-node-0\n"
    assert not Path(f"/sys/class/net/{other.bridge}").exists()
    assert Path(f"/sys/class/net/{shared.bridge}").exists()


def test_real_ray_sees_two_nodes_and_ray_stop_is_per_node(shared):
    """The seed's own `ray start` lines; Ray's own view; `ray stop` on the worker only."""
    head, worker = shared.nodes
    rc, out, err = shared.exec(0, f"cd {shared.slime_dir} && ray start --head --node-ip-address {head['host']} "
                                  "--num-gpus 8 --disable-usage-stats --dashboard-host=0.0.0.0 "
                                  "--dashboard-port=8265", timeout=180)
    assert rc == 0, err + out
    try:
        rc, out, err = shared.exec(1, f"ray start --address={head['host']}:6379 --num-gpus 8 --node-ip-address "
                                      f"{worker['host']} --disable-usage-stats", timeout=180)
        assert rc == 0, err + out
        nodes, status = [], ""
        for _ in range(60):  # the worker registers a moment after its start returns; `ray status`
            # (the autoscaler's view) follows a few seconds later
            rc, out, _ = shared.exec(0, "ray list nodes --format json --filter state=ALIVE 2>/dev/null", timeout=60)
            nodes = json.loads(out) if rc == 0 and out.strip().startswith("[") else []
            status = shared.exec(0, "ray status", timeout=60)[1]
            if len(nodes) == 2 and "0.0/16.0 GPU" in status:
                break
            time.sleep(1)
        assert sorted(n["node_ip"] for n in nodes) == [head["host"], worker["host"]]
        assert [n["resources_total"]["GPU"] for n in nodes] == [8.0, 8.0]
        assert "0.0/16.0 GPU" in status and status.count("node_") == 2, status
        # the process tables are separate: the worker's Ray processes are its own
        assert any("raylet" in " ".join(p.cmdline) for p in shared.procs(1))
        head_ray = {p.pid for p in shared.procs(0) if "ray" in " ".join(p.cmdline)}
        rc, out, err = shared.exec(1, "ray stop", timeout=120)
        assert rc == 0 and "Stopped all" in out + err, out + err
        assert not any("raylet" in " ".join(p.cmdline) or "gcs_server" in " ".join(p.cmdline)
                       for p in shared.procs(1))
        assert head_ray <= {p.pid for p in shared.procs(0)}  # ray stop on the worker left the head alone
        rc, out, _ = shared.exec(0, "ray list nodes --format json --filter state=ALIVE 2>/dev/null", timeout=60)
        assert [n["node_ip"] for n in json.loads(out)] == [head["host"]]
    finally:
        shared.exec(1, "ray stop --force", timeout=120)
        shared.exec(0, "ray stop --force", timeout=120)


def test_nvidia_smi_query_gpu(shared, clients):
    for c in clients:
        rc, out, _ = run(c, QUERY)
        assert rc == 0
        rows = [r.split(", ") for r in out.strip().splitlines()]
        assert len(rows) == 8
        assert rows[0] == ["0", "NVIDIA H100 80GB HBM3", "9.0", "81559", "580.95.05"]
        assert [r[0] for r in rows] == [str(i) for i in range(8)]
    rc, out, _ = run(clients[0], "nvidia-smi --query-gpu=memory.total,name --format=csv -i 1")
    assert out.splitlines() == ["memory.total [MiB], name", "81559 MiB, NVIDIA H100 80GB HBM3"]
    rc, out, _ = run(clients[0], "nvidia-smi topo -m | grep -o 'NV[0-9][0-9]*' | wc -l")
    assert int(out) == 56
    rc, out, _ = run(clients[0], "nvidia-smi --query-compute-apps=pid,process_name,used_memory,gpu_uuid "
                                 "--format=csv,noheader,nounits; echo rc=$?")
    assert out == "rc=0\n"
    rc, out, _ = run(clients[0], "nvidia-smi -L | head -1")
    assert out.startswith("GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-")


def test_nvidia_smi_driver_470_and_no_gpu(shared, clients):
    try:
        shared.set_gpu(1, driver_version="470.256.02")
        rc, out, _ = run(clients[1], QUERY)
        assert rc == 2 and 'Field "compute_cap" is not a valid field to query.' in out
        rc, out, _ = run(clients[1], "nvidia-smi --query-gpu=index,name --format=csv,noheader")
        assert rc == 0 and out.splitlines()[0] == "0, NVIDIA H100 80GB HBM3"
        shared.set_gpu(1, driver_version="580.95.05", count=0)
        rc, out, _ = run(clients[1], QUERY)
        assert rc == 6 and out.strip() == "No devices were found"
        shared.set_gpu(1, count=8, gpu="B200")
        rc, out, _ = run(clients[1], QUERY + " -i 0")
        assert out.strip() == "0, NVIDIA B200, 10.0, 183359, 580.95.05"
    finally:
        shared.set_gpu(1, count=8, gpu="H100", driver_version="580.95.05")


def test_session_environment(shared, clients):
    d = shared.dir
    for i, c in enumerate(clients):
        rc, out, _ = run(c, 'echo "$PATH|$PYTHONPATH|$SIMCLUSTER_DIR|$SIMCLUSTER_NODE|${RAY_TMPDIR-unset}|$HF_ENDPOINT"; '
                            "command -v python3 nvidia-smi ray")
        assert rc == 0
        line, py, smi, ray = out.splitlines()
        path, pypath, sdir, node, ray_tmp, hf = line.split("|")
        assert path == f"{d}/bin:{REPO}/.venv/bin:/usr/local/bin:/usr/bin:/bin"
        # no RAY_TMPDIR: Ray uses the node's own /tmp, as on a real machine
        assert (pypath, sdir, node, ray_tmp) == (f"{d}/site", str(d), str(i), "unset")
        assert py == f"{REPO}/.venv/bin/python3" and smi == f"{d}/bin/nvidia-smi"
        assert ray == f"{REPO}/.venv/bin/ray"
        assert hf == (shared.hub_url or "http://127.0.0.1:9")


def test_sftp_uses_the_same_node(shared, clients):
    sftp = clients[0].open_sftp()
    try:
        target = f"{shared.base_folder}/sftp-probe.txt"
        with sftp.open(target, "w") as f:
            f.write("via sftp\n")
        assert sftp.stat(target).st_size == 9
    finally:
        sftp.close()
    assert run(clients[1], f"cat {target}")[1] == "via sftp\n"  # shared storage


@pytest.mark.skipif(not (REPO / "tests/simcluster/hub.py").exists(), reason="hub not there yet")
def test_hub_reachable_from_nodes(shared, clients):
    assert shared.hub_url
    rc, out, err = run(clients[1], 'python3 -c "import os, urllib.request; '
                                   "print(urllib.request.urlopen(os.environ['HF_ENDPOINT'] + '/_sim/stats').status)\"")
    assert (rc, out.strip()) == (0, "200"), err


def test_site_packages_without_importing_fla(shared, clients):
    rc, out, _ = run(clients[0], 'grep -c "b_dk += tl.dot(tl.trans(b_dA), b_kb)" '
                                 '"$PYTHONPATH/fla/ops/gated_delta_rule/wy_fast.py"')
    assert rc == 0 and int(out) == 1
    assert FLA_UNPATCHED in (shared.dir / "site/fla/ops/gated_delta_rule/wy_fast.py").read_text()
    code = ("import importlib.metadata as m, sys; "
            "print(' '.join(m.version(d) for d in ['flash-linear-attention', 'sglang', 'causal-conv1d', "
            "'triton', 'ray', 'slime'])); print('fla' in sys.modules)")
    rc, out, err = run(clients[0], f'python3 -c "{code}"')
    assert rc == 0, err
    assert out.splitlines() == ["0.4.0 0.5.6 1.5.4 3.4.0 2.60.0 0.2.0", "False"]  # Ray is the real one


def test_slime_and_megatron_are_git_repos(shared, clients):
    rc, out, _ = run(clients[1], f"git -C {shared.slime_dir} rev-parse HEAD && git -C {shared.megatron_dir} "
                                 "rev-parse HEAD && ls $SIMCLUSTER_DIR/Megatron-LM/megatron/core")
    assert rc == 0
    lines = out.split()
    assert len(lines[0]) == 40 and len(lines[1]) == 40 and "package_info.py" in lines
    for f in ("train.py", "tools/convert_hf_to_torch_dist.py"):
        if (REPO / "tests/simcluster/standins" / Path(f).name).exists():
            assert (shared.slime_dir / f).is_file()


def test_wrong_host_key_is_rejected(shared):
    n0, n1 = shared.nodes
    with pytest.raises(paramiko.BadHostKeyException):
        connect(n0, shared.key_file, host_key=n1["host_key"])
    c = paramiko.SSHClient()  # no key pinned at all: RejectPolicy refuses
    c.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        c.connect(n0["host"], n0["port"], username="root", key_filename=str(shared.key_file),
                  look_for_keys=False, allow_agent=False, timeout=10)
    c.close()


def test_airflow_ssh_hook_reads_the_connection(shared, monkeypatch):
    pytest.importorskip("airflow.providers.ssh.hooks.ssh")
    from airflow.providers.ssh.hooks.ssh import SSHHook

    for k, v in shared.env().items():
        monkeypatch.setenv(k, v)
    hook = SSHHook(ssh_conn_id="sim_node_1")
    with hook.get_conn() as client:
        rc, out, _ = hook.exec_ssh_client_command(client, "echo $SIMCLUSTER_NODE", get_pty=False,
                                                  environment=None, timeout=20)
    assert rc == 0 and out.decode().strip() == "1"


def _start_fake_trainer(c, d: Path, name="train.py") -> int:
    script = f"{d}/fake/{name}"
    run(c, f"mkdir -p {d}/fake && printf 'import time\\nwhile True: time.sleep(0.05)\\n' > {script}")
    rc, out, _ = run(c, f"setsid nohup python3 -u {script} --foo 1 > /dev/null 2>&1 < /dev/null & echo $!")
    return int(out)


def _wait(pred, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def _pstate(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "X"


def _start_fake_actor(c) -> int:
    """A process titled like Ray's worker for slime's training actor."""
    rc, out, _ = run(c, "setsid nohup bash -c \"exec -a 'ray::MegatronTrainRayActor.train' sleep 60\" "
                        "> /dev/null 2>&1 < /dev/null & echo $!")
    return int(out)


def _host_pid(cluster, node, ns_pid):
    return next(p.pid for p in cluster.procs(node) if p.ns_pid == ns_pid)


def test_faults_on_trainers_and_actors(shared, clients):
    trainer = _host_pid(shared, 1, _start_fake_trainer(clients[1], shared.dir))
    actor_ns = _start_fake_actor(clients[1])
    assert _wait(lambda: any(p.ns_pid == actor_ns for p in shared.procs(1)))
    actor = _host_pid(shared, 1, actor_ns)
    try:
        r = shared.fault("hang-trainer", node=1)
        assert r["pids"] == [actor]  # the actors freeze, not the driver
        assert _wait(lambda: _pstate(actor) == "T") and _pstate(trainer) in ("S", "R")
        shared.fault("resume-trainer")
        assert _wait(lambda: _pstate(actor) in ("S", "R"))
        r = shared.fault("kill-actor")
        assert (r["node"], r["pid"]) == (1, actor) and r["title"].startswith("ray::MegatronTrainRayActor")
        assert _wait(lambda: _pstate(actor) in ("Z", "X"))
        shared.fault("kill-trainer")
        assert _wait(lambda: _pstate(trainer) in ("Z", "X"))
        with pytest.raises(SimClusterError, match="nothing of the training job"):
            shared.fault("kill-trainer")
    finally:
        for pid in (trainer, actor):
            try:
                os.kill(pid, 9)
            except (ProcessLookupError, TypeError):
                pass


def test_drop_ssh_keeps_the_listener_and_the_commands(shared):
    # note: this also drops the module's `clients[0]` session; later tests use shared.exec(0, ...)
    c = shared.connect(0)
    _, out, _ = c.exec_command("sleep 30 & echo $!; wait")
    sleeper = _host_pid(shared, 0, int(out.readline()))
    r = shared.fault("drop-ssh", node=0)
    assert r["killed"]
    assert _wait(lambda: out.channel.exit_status_ready() or out.channel.closed or not c.get_transport().is_active())
    assert _pstate(sleeper) in ("S", "R")  # the remote command survives the dropped connection
    os.kill(sleeper, 9)
    c.close()
    assert shared.exec(0, "echo back")[1] == "back\n"  # the listener is untouched


def test_restart_sshd_keeps_port_key_and_storage(shared):
    before = shared.listener_pid(0)
    r = shared.fault("restart-sshd", node=0)
    assert r["pid"] and r["pid"] != before
    assert shared.exec(0, "echo $SIMCLUSTER_NODE")[1] == "0\n"  # same port, same pinned host key


def test_corrupt_shard_and_foreign_gpu_proc(shared, clients):
    model = shared.base_folder / "Org" / "Model"
    model.mkdir(parents=True)
    data = bytes(range(256)) * 64
    for k in (1, 2):
        (model / f"model-0000{k}-of-00002.safetensors").write_bytes(data)
    r = shared.fault("corrupt-shard", path="Org/Model")
    first = model / "model-00001-of-00002.safetensors"
    assert r["path"] == str(first)
    assert first.stat().st_size == len(data) and first.read_bytes() != data
    assert (model / "model-00002-of-00002.safetensors").read_bytes() == data

    r = shared.fault("foreign-gpu-proc", node=1)
    rc, out, _ = run(clients[1], "nvidia-smi --query-compute-apps=pid,process_name,used_memory,gpu_uuid "
                                 "--format=csv,noheader,nounits")
    pid, name, mem, uuid = out.strip().split(", ")
    assert int(pid) == r["pid"] and mem == "30000" and uuid.startswith("GPU-")
    rc, out, _ = run(clients[1], "nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0")
    assert out.strip() == "30000"
    assert shared.exec(0, "nvidia-smi --query-compute-apps=pid --format=csv,noheader")[1] == ""
    assert r["pid"] not in {p.pid for p in procs_of(shared.dir)}  # not ours


def test_vanish_head_is_a_power_cut_then_reboot(tmp_path):
    c = SimCluster.up(tmp_path / "sim", nodes=2, gpu="H200")
    try:
        n0 = c.nodes[0]
        keys = [n["host_key"] for n in c.nodes]
        run_c = c.connect(0)
        run(run_c, "mkdir -p /tmp/ray/session_latest/logs && touch /tmp/ray/session_latest/logs/x")
        _, bg, _ = run_c.exec_command("setsid nohup sleep 60 > /dev/null 2>&1 < /dev/null & echo $!")
        bg_pid = _host_pid(c, 0, int(bg.read()))
        init = n0["init_pid"]
        r = c.fault("vanish-head")
        assert bg_pid in r["killed"] and init in r["killed"]
        assert not port_open(n0["host"], n0["port"])
        assert not c.procs(0) and c.procs(1)
        c.fault("reboot-node", node=0)  # the machine comes back: same address and host key, empty /tmp
        assert c.nodes[0]["init_pid"] != init
        assert c.exec(0, "nvidia-smi --query-gpu=name --format=csv,noheader -i 0")[1] == "NVIDIA H200\n"
        assert c.exec(0, "ls -A /tmp/ray 2>&1 || true")[1].endswith("No such file or directory\n")
        assert [n["host_key"] for n in SimCluster(c.dir).nodes] == keys
        run_c.close()
    finally:
        c.down()


def test_local_storage_is_private_per_node(tmp_path):
    with SimCluster.up(tmp_path / "sim", nodes=2, storage="local") as c:
        assert c.exec(0, "echo zero > $SIMCLUSTER_DIR/base/only-here && cat $SIMCLUSTER_DIR/base/only-here")[1] == "zero\n"
        rc, out, _ = c.exec(1, "ls -A $SIMCLUSTER_DIR/base")
        assert rc == 0 and out == ""
        assert (c.node_base(0) / "only-here").read_text() == "zero\n"
        assert not (c.dir / "base" / "only-here").exists()
        # the mount namespace outlives an sshd restart
        c.fault("restart-sshd", node=0)
        assert c.exec(0, "cat $SIMCLUSTER_DIR/base/only-here")[1] == "zero\n"
        # sftp writes land in the node's own storage too
        client = c.connect(1)
        sftp = client.open_sftp()
        with sftp.open(f"{c.base_folder}/from-sftp", "w") as f:
            f.write("one")
        sftp.close()
        client.close()
        assert (c.node_base(1) / "from-sftp").read_text() == "one"
        assert c.exec(0, "ls $SIMCLUSTER_DIR/base")[1] == "only-here\n"


def test_disk_mb_gives_a_small_filesystem_that_fills(tmp_path):
    with SimCluster.up(tmp_path / "sim", nodes=1, disk_mb=32) as c:
        assert c.sim["storage"] == "local"
        rc, out, _ = c.exec(0, "df -Pk $SIMCLUSTER_DIR/base | tail -1")
        size_kb = int(out.split()[1])
        assert 30 * 1024 <= size_kb <= 34 * 1024
        r = c.fault("fill-disk", node=0)
        assert r["free"] < 1024 * 1024
        rc, out, err = c.exec(0, "head -c 2000000 /dev/zero > $SIMCLUSTER_DIR/base/big")
        assert rc != 0 and "No space left on device" in err
        c.fault("unfill-disk", node=0)
        assert c.exec(0, "head -c 2000000 /dev/zero > $SIMCLUSTER_DIR/base/big")[0] == 0
    assert not c.running()


def _leftovers(c) -> dict:
    x = c.info["net"]["x"]
    links = os.listdir("/sys/class/net")
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
              if str(c.dir) in line.split()[4]]
    return {"procs": procs_of(c.dir), "links": [l for l in links if l == f"sfbr{x}" or l.startswith(f"sf{x}h")],
            "claim": Path(f"/run/slimeflow-sim/{x}").exists(), "mounts": mounts}


def test_down_leaves_no_process_namespace_bridge_or_mount(tmp_path):
    c = SimCluster.up(tmp_path / "sim", nodes=2)
    run_c = c.connect(1)
    run(run_c, "setsid nohup sleep 60 > /dev/null 2>&1 < /dev/null &")
    foreign = c.fault("foreign-gpu-proc", node=0)["host_pid"]
    inits = [n["init_pid"] for n in c.nodes]
    pidns = {os.readlink(f"/proc/{p}/ns/pid") for p in inits}
    assert c.procs() and _leftovers(c)["links"]
    r = subprocess.run([sys.executable, "-m", "tests.simcluster", "down", "--state-dir", str(c.dir)],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    run_c.close()
    for n in c.nodes:
        assert not port_open(n["host"], n["port"])
    if c.hub_url:
        host, port = c.hub_url.rsplit("//", 1)[1].split(":")
        assert not port_open(host, int(port))
    assert _leftovers(c) == {"procs": [], "links": [], "claim": False, "mounts": []}
    assert _pstate(foreign) in ("Z", "X") and all(_pstate(p) in ("Z", "X") for p in inits)
    still = set()
    for ent in os.listdir("/proc"):  # no process anywhere is left in the nodes' PID namespaces
        try:
            if ent.isdigit() and os.readlink(f"/proc/{ent}/ns/pid") in pidns:
                still.add(int(ent))
        except OSError:
            pass
    assert not still
    # down is idempotent, and up works again in the same folder with the same host keys
    assert SimCluster(c.dir).down()["killed"] == []
    keys = [n["host_key"] for n in c.nodes]
    c2 = SimCluster.up(c.dir, nodes=2)
    try:
        assert [n["host_key"] for n in c2.nodes] == keys
        assert c2.exec(1, "echo ok")[1] == "ok\n"
    finally:
        c2.down()


def test_down_of_a_dead_cluster_leaves_a_live_one_on_the_same_subnet_alone(tmp_path):
    old = SimCluster.up(tmp_path / "old", nodes=1, hub=False)
    old.down()
    with SimCluster.up(tmp_path / "new", nodes=1, hub=False) as new:
        assert new.info["net"]["x"] == old.info["net"]["x"]  # the subnet was free again
        SimCluster(old.dir).down()  # e.g. `make demo` cleaning up its previous state folder
        assert Path(f"/sys/class/net/{new.bridge}").exists()
        assert new.exec(0, "hostname")[1] == "sim-node-0\n"


def test_a_killed_owner_takes_its_cluster_down(tmp_path):
    """A SIGKILLed test never runs its teardown; the cluster's watchdog does it instead."""
    owner = subprocess.Popen(["sleep", "600"])
    r = subprocess.run([sys.executable, "-m", "tests.simcluster", "up", "--nodes", "1", "--no-hub",
                        "--state-dir", str(tmp_path / "sim"), "--owner", str(owner.pid)],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    c = SimCluster(tmp_path / "sim")
    assert c.running()
    owner.kill()
    owner.wait()
    assert _wait(lambda: not c.running() and not _leftovers(c)["links"] and not _leftovers(c)["claim"], 30)
    assert "owner" in (c.dir / "watchdog.log").read_text()


def test_up_without_root_says_what_it_needs(tmp_path):
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
                        "tests.simcluster", "up", "--nodes", "1", "--state-dir", str(tmp_path / "x")],
                       cwd=REPO, capture_output=True, text=True, env=dict(os.environ, HOME=str(tmp_path)))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "simcluster: the simulated cluster needs root: each node is made of network, PID, mount and UTS "
        "namespaces; run `make test` / `make demo` as root"]


def test_cli_up_down(tmp_path):
    d = tmp_path / "cli"
    py = [sys.executable, "-m", "tests.simcluster"]
    r = subprocess.run(py + ["up", "--nodes", "2", "--gpu", "B200", "--state-dir", str(d), "--driver",
                             "570.124.06", "--rollout-seconds", "0.1"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    try:
        x = SimCluster(d).info["net"]["x"]
        assert f"sim_node_1: root@10.231.{x}.12:22" in r.stdout
        r2 = subprocess.run(py + ["up", "--nodes", "2", "--state-dir", str(d)], cwd=REPO, capture_output=True,
                            text=True)
        assert r2.returncode == 1 and "already running" in r2.stderr
        env = dict(os.environ)
        out = subprocess.run(["bash", "-c", f"source {d}/env.sh && echo $SIM_SLIME_DIR"], capture_output=True,
                             text=True, env=env).stdout.strip()
        assert out == str(d / "slime")
        c = SimCluster(d)
        assert c.sim["rollout_seconds"] == 0.1
        assert c.exec(0, QUERY + " -i 7")[1] == f"7, {GPUS['B200']['name']}, 10.0, 183359, 570.124.06\n"
    finally:
        r = subprocess.run(py + ["down", "--state-dir", str(d)], cwd=REPO, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
