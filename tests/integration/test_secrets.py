"""Secrets, hostile params and SSH trust, end to end: `airflow dags test` on the simulated cluster.

One cluster for the module. Order matters: the hostile-conf runs come first (the base folder is
still empty, so "nothing reached a node" is checkable), the host-key change last (it re-keys
node 0).
"""
import json
import os
import sqlite3
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.hostile_corpus import INERT, MARKER
from tests.simcluster.airflow_run import airflow, airflow_env, dags_test, read_xcoms, run_conf
from tests.simcluster.cluster import SimCluster, procs_of

pytestmark = pytest.mark.integration
DAG = "slime_qwen3_next_80b_a3b"
MODEL = "Qwen/Qwen3-Next-80B-A3B-Thinking"
WANDB_KEY = "wandb-sim-" + os.urandom(12).hex()
# The harness's own files, which hold the hub token by design (they are not on any node).
HARNESS_FILES = {"hub_token", "env.sh", "cluster.json"}


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    d = tmp_path_factory.mktemp("secrets")
    # two nodes: runs use node 0 alone, except the SSH-trust run, which breaks one way on each
    c = SimCluster.up(d / "cluster", nodes=2, gpu="H100", rollout_seconds=0.3)
    env = airflow_env(c, d / "airflow")
    airflow(env, "db", "migrate", capture_output=True, check=True)
    yield c, env, d
    c.down()
    assert procs_of(str(c.dir)) == [], "the simulated cluster left processes behind"


def sshd_log(cluster, i=0) -> str:
    return (cluster.node_dir(i) / "sshd.log").read_text(errors="replace")


def fail_text(r):
    return "\n".join(l for l in r["log"].splitlines() if "rror" in l)[-4000:]


# -- 1. hostile values never reach a node ---------------------------------------------------

def test_hostile_conf_fails_validate_params_before_any_connection(sim):
    """A value the form's schema lets through but validation refuses (a system folder as
    base_folder: slimeflow would create folders in /etc/cron.d). Values the schema refuses never
    make a DAG run at all (tests/unit/test_hostile_params.py checks the schema with Airflow's
    own Param)."""
    cluster, env, d = sim
    before = [sshd_log(cluster, i) for i in range(len(cluster.nodes))]
    r = dags_test(env, DAG, run_conf(cluster, nodes=cluster.conn_ids[:1],
                                     base_folder="/etc/cron.d"), d / "hostile.log")
    assert r["rc"] != 0
    st = r["states"]
    assert st["validate_params"] == "failed"
    assert st.get("preflight") in ("upstream_failed", None), st
    assert all(s in ("upstream_failed", "skipped", "removed") for t, s in st.items()
               if t != "validate_params"), st
    assert "ParamError: Param `base_folder` must not be inside the system folder /etc" in r["log"]
    # no SSH session was opened: sshd logged nothing, nothing was written under base_folder
    assert [sshd_log(cluster, i) for i in range(len(cluster.nodes))] == before
    assert list(cluster.base_folder.iterdir()) == []


# -- 2. secrets: in, used, and found nowhere --------------------------------------------------

class ProcSampler(threading.Thread):
    """Samples /proc/*/cmdline and /proc/*/environ of every process of the simulated cluster."""

    def __init__(self, state_dir, secrets: dict):
        super().__init__(daemon=True)
        self.dir, self.secrets = str(state_dir), {k: v.encode() for k, v in secrets.items()}
        self.halt = threading.Event()
        self.seen = {}          # pid -> cmdline
        self.argv_hits = []     # (name, cmdline)
        self.env_holders = {}   # pid -> (cmdline, {names})
        self.nodes = {}         # pid -> the node it runs on


    def run(self):
        while not self.halt.is_set():
            for p in procs_of(self.dir):
                try:
                    raw_cmd = Path(f"/proc/{p.pid}/cmdline").read_bytes()
                    raw_env = Path(f"/proc/{p.pid}/environ").read_bytes()
                except OSError:
                    continue
                cmd = [a.decode(errors="replace") for a in raw_cmd.split(b"\0") if a]
                self.seen[p.pid] = cmd
                self.nodes[p.pid] = p.node
                for name, s in self.secrets.items():
                    if s in raw_cmd:
                        self.argv_hits.append((name, cmd))
                    if s in raw_env:
                        self.env_holders.setdefault(p.pid, (cmd, set()))[1].add(name)
            time.sleep(0.03)

    def stop(self):
        self.halt.set()
        self.join(10)


def may_hold(name: str, cmd: list, node: int | None = None) -> bool:
    """Processes that legitimately have a secret in their environment."""
    if name == "HF":  # `hf download` (and nothing else: not runner.py, not the probe)
        return (bool(cmd) and (os.path.basename(cmd[0]) == "hf" or
                               (len(cmd) > 1 and os.path.basename(cmd[1]) == "hf"))
                and "download" in cmd)
    # W&B: on the head only, in what `ray start --head` started. Real Ray's process family on the head is large and changes with versions (GCS, raylet,
    # dashboard and its agents, the job supervisor's watchdog shell and its `sleep 1`, the
    # workers hosting the driver and actors, multiprocessing's resource tracker), so this is a
    # deny-list: our own node scripts, hf and sshd never hold it, and no worker node does.
    if node not in (None, 0):
        return False
    ours = {"runner.py", "probe.py", "jobwatch.py", "fsops.py", "lease.py", "raystate.py", "hfverify.py",
            "flapatch.py", "nccl_check.py", "wheelname.py"}
    return not any(os.path.basename(a) in ours for a in cmd[:3]) and \
        not (cmd and os.path.basename(cmd[0]) in ("hf", "sshd")) and not (cmd and cmd[0].startswith("sshd"))


def grep_tree(root: Path, secrets: dict, skip=()) -> list:
    hits = []
    for dirpath, dirnames, files in os.walk(root):
        for f in files:
            p = Path(dirpath, f)
            if p.name in skip or p.is_symlink() or not p.is_file():
                continue
            try:
                data = p.read_bytes()
            except OSError:
                continue
            hits += [(name, str(p)) for name, s in secrets.items() if s.encode() in data]
    return hits


def test_secrets_are_used_and_leak_nowhere(sim):
    cluster, env, d = sim
    hf_token = cluster.env()["SIM_HF_TOKEN"]
    secrets = {"HF": hf_token, "WANDB": WANDB_KEY}
    req = urllib.request.Request(cluster.hub_url + "/_sim/gated", method="POST",
                                 data=json.dumps({"repo": MODEL, "gated": True}).encode())
    urllib.request.urlopen(req, timeout=10).read()
    env = dict(env)
    # HF token from a connection, W&B key from a Variable: both through the env secrets backend
    env["AIRFLOW_CONN_SLIMEFLOW_HF"] = json.dumps({"conn_type": "generic",
                                                   "password": hf_token})
    env["AIRFLOW_VAR_SLIMEFLOW_WANDB_KEY"] = WANDB_KEY
    Path(MARKER).unlink(missing_ok=True)

    sampler = ProcSampler(cluster.dir, secrets)
    sampler.start()
    try:
        r = dags_test(env, DAG, run_conf(cluster, nodes=cluster.conn_ids[:1],
                                         extra_train_args=INERT,
                                         ray_dashboard_host="127.0.0.1"), d / "secrets.log")
    finally:
        sampler.stop()
    assert r["rc"] == 0, fail_text(r)
    # the token was required: the repo is gated, and the download went through
    assert Path(r["xcom"]["download_model"]["return_value"], "config.json").is_file()
    assert "--dashboard-host=127.0.0.1" in r["log"]

    # task logs, XCom, rendered fields: everything Airflow wrote (logs and the metadata DB,
    # which holds XCom and rendered_task_instance_fields), plus the run's stdout
    for name, s in secrets.items():
        assert s not in r["log"], f"{name} secret in the task log"
        assert s not in json.dumps(read_xcoms(env, DAG)), f"{name} secret in XCom"
    db = Path(env["AIRFLOW_HOME"]) / "airflow.db"
    with sqlite3.connect(db) as con:
        rendered = json.dumps(con.execute("select * from rendered_task_instance_fields")
                              .fetchall(), default=str)
    assert not any(s in rendered for s in secrets.values())
    assert grep_tree(Path(env["AIRFLOW_HOME"]), secrets) == []
    # the nodes' filesystems: base folder, homes, Ray's temp dir, slime, site-packages
    assert grep_tree(cluster.dir, secrets, skip=HARNESS_FILES) == []

    # process lists sampled during the run: never in any argv; in an environment only where
    # the secret is used
    assert len(sampler.seen) > 10, "the sampler saw nothing"
    assert sampler.argv_hits == [], sampler.argv_hits
    wrong = [(pid, cmd, names) for pid, (cmd, names) in sampler.env_holders.items()
             if not all(may_hold(n, cmd, sampler.nodes.get(pid)) for n in names)]
    assert wrong == [], wrong
    assert not any("runner.py" in " ".join(cmd) for cmd, _ in sampler.env_holders.values())

    # the inert extra_train_args reached train.py verbatim, and ran nothing
    recs = [json.loads(l) for l in
            (cluster.node_dir(0) / "train_argv.jsonl").read_text().splitlines()]
    assert recs[-1]["argv"][-len(INERT):] == INERT
    assert not Path(MARKER).exists()

    # the W&B key reached the job (through the Ray head's environment, not its argv)
    import hashlib
    want = hashlib.sha256(WANDB_KEY.encode()).hexdigest()
    assert recs[-1]["wandb_key_sha256"] == want
    assert any("WANDB" in names for _, names in sampler.env_holders.values())


# -- 3. SSH trust ------------------------------------------------------------------------------

def test_ssh_auth_failure_and_changed_host_key_fail_preflight_naming_the_node(sim):
    """Node 0: the connection's key_file is not authorized. Node 1: re-keyed (sshd stopped, new
    host key, started), so it no longer matches the pinned host_key. One run, both messages."""
    cluster, env, d = sim
    key = d / "stranger_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    env = dict(env)
    conn = json.loads(env["AIRFLOW_CONN_SIM_NODE_0"])
    conn["extra"]["key_file"] = str(key)
    env["AIRFLOW_CONN_SIM_NODE_0"] = json.dumps(conn)
    nd = cluster.node_dir(1)
    cluster.stop_sshd(1)
    for f in ("ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"):
        (nd / f).unlink()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                    str(nd / "ssh_host_ed25519_key")], check=True)
    cluster.start_sshd(1)

    r = dags_test(env, DAG, run_conf(cluster), d / "trust.log")
    assert r["rc"] != 0
    assert r["states"]["preflight[0]"] == "failed" and r["states"]["preflight[1]"] == "failed"
    assert r["states"]["check_cluster"] == "upstream_failed"
    n0, n1 = cluster.nodes
    assert (f"SSH login to node sim_node_0 ({n0['host']}:{n0['port']}) as root failed"
            in r["log"]), fail_text(r)
    assert "check the connection's login and key_file/private_key" in r["log"]
    assert (f"node sim_node_1 ({n1['host']}:{n1['port']}) presented a host key that does not "
            f"match the pinned one" in r["log"]), fail_text(r)
    assert "possible man-in-the-middle" in r["log"]
    # host key checking was on: the re-keyed node never saw a login
    assert "Accepted publickey" not in sshd_log(cluster, 1).split("Server listening")[-1]
