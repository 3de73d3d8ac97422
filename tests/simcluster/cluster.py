"""The simulated GPU cluster's node layer: N small hosts made of Linux namespaces (stdlib only;
paramiko for the test helpers).

Each node is a real little host (see docs/internals.md):

- its own network namespace, joined by a veth pair to this cluster's own bridge ``sfbr<X>``,
  with the address ``10.231.<X>.<11+i>/24``. The host side of the bridge is ``10.231.<X>.1``
  (the hub listens there). Nodes have no default route and the host does no forwarding or NAT
  for them, so no packet leaves the machine. ``<X>`` is claimed per cluster under
  /run/slimeflow-sim/, so two clusters on one machine never share a bridge or a subnet;
- its own PID, mount and UTS namespaces (tests/simcluster/node_init.py is its PID 1): a
  hostname, a private ``/tmp`` and ``/dev/shm``, a process table in which `ray stop` sees only
  this node, and 32 CPUs as Ray counts them;
- sshd on port 22 at its address, key-only, with its own host key (pinned in AIRFLOW_CONN_*);
- real Ray, which the DAG starts with the seed's command lines (``.venv/bin/ray``).

Layout of a state folder ``DIR`` (all paths absolute, ``DIR`` resolved):

    DIR/sim.json          facts for the stand-ins (nodes, gpu, gpus_per_node, rollout_seconds, storage, ...)
    DIR/cluster.json      the same facts for Python tests (nodes: conn_id, host, port, host_key, init_pid, ...)
    DIR/env.sh            AIRFLOW_CONN_SIM_NODE_<I>, SIMCLUSTER_DIR, SIM_BASE_FOLDER, SIM_SLIME_DIR, ...
    DIR/id_ed25519        the one client key accepted by every node (root login)
    DIR/hosts             /etc/hosts of every node
    DIR/bin/              nvidia-smi and dmesg stand-ins
    DIR/site/             PYTHONPATH of every session: real flash-linear-attention 0.4.0 (+ fla-core),
                          stand-in dist-infos for sglang, causal_conv1d, triton, slime
    DIR/slime/            slime_dir (git repo): train.py, tools/convert_hf_to_torch_dist.py, scripts/
    DIR/Megatron-LM/      megatron_dir (git repo)
    DIR/base/             base_folder: shared storage, the same folder at the same path on every node
    DIR/hub.json          written by the hub (tests.simcluster.hub) once it listens
    DIR/nodes/<i>/        spec.json, init.log, sshd_config, host key, sshd.log, gpu.json, gpu_procs.json,
                          home/ (HOME of sessions), tmp/ (the node's /tmp: Ray's logs are in tmp/ray),
                          base/ (the node's own disk with local storage)

Sessions on node i get (sshd ``SetEnv``): PATH, HOME=DIR/nodes/<i>/home, HF_ENDPOINT, PYTHONPATH,
SIMCLUSTER_DIR, SIMCLUSTER_NODE. HOME is per node because root's real ~/.bashrc (which bash
sources for ssh commands) may rewrite PATH (pyenv, cargo); with our own HOME the SetEnv PATH
stays what the contract says, and each node gets its own ~/.cache like a real machine.

A node's processes are the processes of its PID namespace (:func:`procs_of`); the hub carries
``SIMCLUSTER_ROLE=hub`` in its environment. Nothing else on the machine is ever signalled.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PKG = Path(__file__).resolve().parent
SSHD = "/usr/sbin/sshd"
SSH_PORT = 22
NET_PREFIX = "10.231"      # this project's test range: 10.231.<X>.0/24, one <X> per cluster
NET_REGISTRY = Path(os.environ.get("SIMCLUSTER_NET_REGISTRY", "/run/slimeflow-sim"))
NODE_CPUS = 32             # what Ray counts on a node (a GPU node has dozens of cores)

GPUS = {
    "H100": {"name": "NVIDIA H100 80GB HBM3", "compute_cap": "9.0", "memory_total_mib": 81559},
    "H200": {"name": "NVIDIA H200", "compute_cap": "9.0", "memory_total_mib": 143771},
    "B200": {"name": "NVIDIA B200", "compute_cap": "10.0", "memory_total_mib": 183359},
}
DEFAULT_DRIVER = "580.95.05"
FLA_VERSION = "0.4.0"
FLA_PACKAGES = ["flash-linear-attention==0.4.0", "fla-core==0.4.0"]  # 0.4.0 keeps fla/ops in fla-core
FLA_UNPATCHED = "b_dk += tl.dot(tl.trans(b_dA), b_kb)"
# ray is real (the venv's); these need GPUs, so only their metadata is on the nodes
STANDIN_DISTS = {"sglang": "0.5.6", "causal_conv1d": "1.5.4", "triton": "3.4.0", "slime": "0.2.0"}
MEGATRON_VERSION = (0, 14, 0, "rc0")
CACHE_DIR = Path(os.environ.get("SLIMEFLOW_SIM_CACHE", "~/.cache/slimeflow-sim")).expanduser()
FAULTS = ("drop-ssh", "restart-sshd", "block-ssh", "unblock-ssh", "vanish-node", "vanish-head", "reboot-node", "kill-actor",
          "kill-trainer", "hang-trainer", "resume-trainer", "corrupt-shard", "fill-disk", "unfill-disk",
          "foreign-gpu-proc", "gpu-ecc", "gpu-remap", "gpu-xid", "gpu-pcie", "gpu-nvlink-down",
          "gpu-thermal", "gpu-hang", "gpu-idle", "gpu-heal", "dmesg-restrict")
FILL_NAME = ".simcluster-fill"
FOREIGN_ARG = "86399"  # `sleep 86399`: the foreign GPU process


class SimClusterError(RuntimeError):
    pass


def cuda_for_driver(driver: str) -> str:
    major = int(str(driver).split(".")[0] or 0)
    for floor, cuda in ((580, "13.0"), (575, "12.9"), (570, "12.8"), (560, "12.6"), (550, "12.4"),
                        (535, "12.2"), (525, "12.0"), (520, "11.8"), (510, "11.6"), (470, "11.4")):
        if major >= floor:
            return cuda
    return "11.0"


def subnet_host(x: int, i: int | None = None) -> str:
    """The bridge's own address (i None) or node i's, in cluster subnet <x>."""
    return f"{NET_PREFIX}.{x}.{1 if i is None else 11 + i}"


# --------------------------------------------------------------------------------------------
# processes
@dataclass
class Proc:
    pid: int
    node: int | None
    role: str | None
    cmdline: list[str] = field(default_factory=list)
    state: str = "?"
    ns_pid: int | None = None   # the pid as the node itself sees it


def _environ(pid: int) -> dict[str, str] | None:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    env = {}
    for item in raw.split(b"\0"):
        k, sep, v = item.partition(b"=")
        if sep:
            env[k.decode(errors="replace")] = v.decode(errors="replace")
    return env


def _pstate(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "X"
    return stat.rsplit(")", 1)[-1].split()[0]


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]] if raw else []


def alive(pid: int) -> bool:
    return _pstate(pid) not in ("X", "Z")


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def _pidns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def ns_pid(pid: int) -> int | None:
    """The pid of host process `pid` inside its own (innermost) PID namespace."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
    except (OSError, ValueError):
        pass
    return None


def _role(pid: int, cmd: list[str], init_pid: int) -> str:
    if pid == init_pid:
        return "init"
    if _exe(pid) == SSHD:
        return "sshd" if "[listener]" in " ".join(cmd) or "-f" in cmd else "sshd-session"
    return "proc"


def procs_of(state_dir, node: int | None = None) -> list[Proc]:
    """Every live process of the cluster in ``state_dir``: the processes of each node's PID
    namespace (role "init" for its PID 1, "sshd" for the listener, "sshd-session" per
    connection, else "proc") and the hub (``SIMCLUSTER_ROLE=hub``)."""
    d = Path(state_dir).resolve()
    try:
        nodes = json.loads((d / "cluster.json").read_text())["nodes"]
    except (OSError, ValueError, KeyError):
        nodes = []
    ns = {}
    for n in nodes:
        init = n.get("init_pid")
        if init and alive(init) and _pidns(init):
            ns[_pidns(init)] = (int(n["index"]), init)
    out = []
    me = os.getpid()
    for ent in os.listdir("/proc"):
        if not ent.isdigit() or int(ent) == me:
            continue
        pid = int(ent)
        st = _pstate(pid)
        if st in ("X", "Z"):
            continue
        hit = ns.get(_pidns(pid))
        if hit:
            cmd = _cmdline(pid)
            out.append(Proc(pid, hit[0], _role(pid, cmd, hit[1]), cmd, st, ns_pid(pid)))
        elif node is None:
            env = _environ(pid)
            if env and env.get("SIMCLUSTER_DIR") == str(d) and env.get("SIMCLUSTER_ROLE") == "hub":
                out.append(Proc(pid, None, "hub", _cmdline(pid), st))
    if node is not None:
        out = [p for p in out if p.node == node]
    return out


def _signal(pids, sig) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _wait_dead(pids, timeout: float) -> list[int]:
    end = time.monotonic() + timeout
    left = [p for p in pids if alive(p)]
    while left and time.monotonic() < end:
        time.sleep(0.02)
        left = [p for p in left if alive(p)]
    return left


def _reap() -> None:
    """Reap our own exited children (node launchers, the hub) so they don't linger."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _wait_port(host, port, want_open: bool, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while True:
        if port_open(host, port) == want_open:
            return True
        if time.monotonic() > end:
            return False
        time.sleep(0.01)


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise SimClusterError(f"{shlex.join(map(str, cmd))} failed ({r.returncode}): {r.stderr.strip()}")
    return r


def _write(path: Path, text: str, mode: int | None = None) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text)
    if mode is not None:
        os.chmod(tmp, mode)
    os.replace(tmp, path)


def _write_json(path: Path, obj) -> None:
    _write(path, json.dumps(obj, indent=2) + "\n")


# --------------------------------------------------------------------------------------------
# the network: one bridge and one /24 per cluster
def check_namespaces() -> None:
    """One sentence saying what is missing when this machine cannot make namespaced nodes."""
    if os.geteuid() != 0:
        raise SimClusterError("the simulated cluster needs root: each node is made of network, PID, "
                              "mount and UTS namespaces; run `make test` / `make demo` as root")
    for tool in ("unshare", "nsenter", "ip"):
        if not shutil.which(tool):
            raise SimClusterError(f"the simulated cluster needs `{tool}` (Debian packages util-linux "
                                  f"and iproute2); install it and retry")
    r = subprocess.run(["unshare", "--net", "--pid", "--mount", "--uts", "--fork", "true"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SimClusterError("the simulated cluster needs permission to create network, PID, mount "
                              f"and UTS namespaces, and this machine refused ({r.stderr.strip()}); run "
                              "it as root on a host or in a privileged container")


def _bridge_exists(name: str) -> bool:
    return Path(f"/sys/class/net/{name}").exists()


def _claim_subnet(state_dir: Path) -> int:
    """A free <X> for 10.231.<X>.0/24 and bridge sfbr<X>, claimed by mkdir (atomic); claims of
    clusters whose nodes are all dead (a killed test) are collected first."""
    NET_REGISTRY.mkdir(parents=True, exist_ok=True)
    for entry in NET_REGISTRY.iterdir():
        if entry.name.isdigit():
            _collect_stale(entry)
    for x in range(1, 255):
        claim = NET_REGISTRY / str(x)
        if _bridge_exists(f"sfbr{x}"):
            continue
        try:
            claim.mkdir()
        except FileExistsError:
            continue
        (claim / "owner").write_text(str(state_dir) + "\n")
        return x
    raise SimClusterError(f"no free test subnet {NET_PREFIX}.1-254.0/24: every one is claimed under "
                          f"{NET_REGISTRY}; take some clusters down")


def _claim_owner(x: int) -> Path | None:
    try:
        return Path((NET_REGISTRY / str(x) / "owner").read_text().strip())
    except OSError:
        return None


def _collect_stale(claim: Path) -> None:
    try:
        owner = Path(claim.joinpath("owner").read_text().strip())
        info = json.loads((owner / "cluster.json").read_text())
        if info.get("net", {}).get("x") == int(claim.name) and any(
                alive(n.get("init_pid") or 0) for n in info["nodes"]):
            return
        if (owner / "cluster.starting").exists() and \
                alive(int((owner / "cluster.starting").read_text() or 0)):
            return
    except (OSError, ValueError, KeyError):
        if claim.joinpath("owner").exists() and time.time() - claim.stat().st_mtime < 120:
            return  # being claimed right now
    _teardown_net(int(claim.name))


def _iptables_rule(bridge: str) -> list[str]:
    return ["FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT"]


def _teardown_net(x: int) -> None:
    bridge = f"sfbr{x}"
    if shutil.which("iptables"):
        while subprocess.run(["iptables", "-D", *_iptables_rule(bridge)], capture_output=True).returncode == 0:
            pass
    # a dead node's namespace (and the veth end in it) is freed by the kernel a moment later;
    # deleting the host ends now takes the pairs down at once
    for link in os.listdir("/sys/class/net"):
        if re.fullmatch(rf"sf{x}h\d+", link):
            subprocess.run(["ip", "link", "del", link], capture_output=True)
    if _bridge_exists(bridge):
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
    shutil.rmtree(NET_REGISTRY / str(x), ignore_errors=True)


def guard_route() -> None:
    """Route the whole test range 10.231.0.0/16 to `unreachable` on the host. Each bridge's /24 is
    more specific and wins while it exists; once a bridge is gone (down, a killed test), a
    connection to one of its old addresses fails here at once instead of following the host's
    default route off the machine. It stays after down: it is the guard for late connections."""
    _run(["ip", "route", "replace", "unreachable", f"{NET_PREFIX}.0.0/16"])


def _make_bridge(x: int) -> str:
    guard_route()
    bridge = f"sfbr{x}"
    _run(["ip", "link", "add", bridge, "type", "bridge"])
    _run(["ip", "addr", "add", f"{subnet_host(x)}/24", "dev", bridge])
    _run(["ip", "link", "set", bridge, "up"])
    # dockerd sets the FORWARD policy to DROP with bridge-nf-call-iptables=1, which also drops
    # node-to-node frames on a plain bridge; let traffic pass within this bridge and nowhere else
    if shutil.which("iptables"):
        pol = subprocess.run(["iptables", "-S", "FORWARD"], capture_output=True, text=True)
        if pol.returncode == 0 and "-P FORWARD DROP" in pol.stdout:
            _run(["iptables", "-I", *_iptables_rule(bridge)])
    return bridge

# --------------------------------------------------------------------------------------------
# layout pieces
def ensure_fla_cache() -> Path:
    """The installed fla 0.4.0 tree, cached once under ~/.cache/slimeflow-sim (pip on a miss)."""
    dest = CACHE_DIR / f"fla-{FLA_VERSION}"
    if (dest / ".complete").exists():
        return dest
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = CACHE_DIR / f".fla-{FLA_VERSION}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile",
          "--disable-pip-version-check", "--target", str(tmp), *FLA_PACKAGES])
    wy = tmp / "fla/ops/gated_delta_rule/wy_fast.py"
    if FLA_UNPATCHED not in wy.read_text():
        raise SimClusterError(f"{wy} lacks the unpatched line; wrong fla build in the cache")
    shutil.rmtree(tmp / "bin", ignore_errors=True)
    (tmp / ".complete").write_text(" ".join(FLA_PACKAGES) + "\n")
    try:
        os.rename(tmp, dest)
    except OSError:  # raced with another up: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def ensure_sshd() -> None:
    """Debian's openssh-server (its service start is blocked in containers, which is fine)."""
    if not os.path.exists(SSHD):
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            raise SimClusterError(f"{SSHD} missing: apt-get install -y openssh-server")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        _run(["apt-get", "update", "-qq"], env=env)
        _run(["apt-get", "install", "-y", "-qq", "openssh-server"], env=env)
    os.makedirs("/run/sshd", exist_ok=True)


def _build_site(site: Path) -> None:
    shutil.rmtree(site, ignore_errors=True)
    src = ensure_fla_cache()
    shutil.copytree(src, site, ignore=shutil.ignore_patterns(".complete", "__pycache__"))
    for name, version in STANDIN_DISTS.items():
        di = site / f"{name}-{version}.dist-info"
        di.mkdir()
        (di / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
            "Summary: simcluster stand-in metadata (the real package needs GPUs)\n")
        (di / "INSTALLER").write_text("simcluster\n")
        (di / "top_level.txt").write_text(name + "\n")
        (di / "RECORD").write_text("")
        pkg = site / name
        pkg.mkdir(exist_ok=True)
        (pkg / "__init__.py").write_text(f'"""simcluster stand-in: metadata only."""\n__version__ = "{version}"\n')


def _git_repo(path: Path, message: str) -> None:
    env = dict(os.environ, GIT_CONFIG_NOSYSTEM="1", GIT_AUTHOR_DATE="2026-01-01T00:00:00Z",
               GIT_COMMITTER_DATE="2026-01-01T00:00:00Z", HOME=str(path))
    _run(["git", "init", "-q", "-b", "main", str(path)], env=env)
    _run(["git", "-C", str(path), "config", "user.name", "simcluster"], env=env)
    _run(["git", "-C", str(path), "config", "user.email", "simcluster@localhost"], env=env)
    _run(["git", "-C", str(path), "add", "-A"], env=env)
    _run(["git", "-C", str(path), "commit", "-q", "-m", message], env=env)


QWEN3_NEXT_MODEL_ARGS = """\
MODEL_ARGS=(
   --spec "slime_plugins.models.qwen3_next" "get_qwen3_next_spec"
   --disable-bias-linear
   --qk-layernorm
   --group-query-attention
   --num-attention-heads 16
   --num-query-groups 2
   --kv-channels 256
   --num-layers 48
   --hidden-size 2048
   --ffn-hidden-size 5120
   --use-gated-attention
   --normalization RMSNorm
   --apply-layernorm-1p
   --position-embedding-type rope
   --norm-epsilon 1e-6
   --rotary-percent 0.25
   --swiglu
   --untie-embeddings-and-output-weights
   --vocab-size 151936
   --rotary-base 10000000
   --moe-ffn-hidden-size 512
   --moe-shared-expert-intermediate-size 512
   --moe-router-score-function softmax
   --moe-token-dispatcher-type alltoall
   --moe-router-topk 10
   --moe-layer-freq [1]*48
   --num-experts 512
   --moe-grouped-gemm
   --moe-token-drop-policy probs
   --moe-router-dtype fp32
   --moe-permute-fusion
   --moe-aux-loss-coeff 0
   --attention-output-gate
   --moe-shared-expert-gate
)
"""


def _build_slime(slime: Path) -> None:
    shutil.rmtree(slime, ignore_errors=True)
    (slime / "tools").mkdir(parents=True)
    (slime / "scripts/models").mkdir(parents=True)
    standins = PKG / "standins"
    if standins.is_dir():
        for src in sorted(standins.rglob("*")):
            rel = src.relative_to(standins)
            if src.is_dir() or "__pycache__" in rel.parts or rel.as_posix() == "__init__.py":
                continue
            if rel.as_posix() == "convert_hf_to_torch_dist.py":
                rel = Path("tools/convert_hf_to_torch_dist.py")
            dst = slime / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    (slime / "scripts/models/qwen3-next-80B-A3B.sh").write_text(QWEN3_NEXT_MODEL_ARGS)
    (slime / "README.md").write_text("simcluster stand-in of THUDM/slime (train.py and the converter "
                                     "are stand-ins that need no GPU)\n")
    _git_repo(slime, "simcluster slime stand-in")


MEGATRON_PATCH = PKG / "standins/docker/patch/latest/megatron.patch"


def _build_megatron(meg: Path) -> None:
    """A git checkout of the Megatron stand-in (its argument parser, megatron_standin/), with
    slime's (stand-in) Megatron patch applied on top as slime's image does: uncommitted, so
    `git apply --check -R` finds it applied."""
    shutil.rmtree(meg, ignore_errors=True)
    shutil.copytree(PKG / "megatron_standin", meg, ignore=shutil.ignore_patterns("__pycache__"))
    core = meg / "megatron/core"
    core.mkdir(parents=True)
    ma, mi, pa, pre = MEGATRON_VERSION
    (core / "package_info.py").write_text(
        f"MAJOR = {ma}\nMINOR = {mi}\nPATCH = {pa}\nPRE_RELEASE = {pre!r}\n\n"
        "VERSION = (MAJOR, MINOR, PATCH, PRE_RELEASE)\n\n"
        "__shortversion__ = '.'.join(map(str, VERSION[:3]))\n"
        "__version__ = '.'.join(map(str, VERSION[:3])) + ''.join(VERSION[3:])\n"
        "__package_name__ = 'megatron_core'\n")
    (core / "__init__.py").write_text(
        '"""simcluster stand-in of megatron.core (metadata only)."""\n'
        "from megatron.core.package_info import __version__  # noqa: F401\n")
    (meg / "README.md").write_text("simcluster stand-in of NVIDIA/Megatron-LM\n")
    _git_repo(meg, "simcluster Megatron-LM stand-in")
    _run(["git", "-C", str(meg), "apply", str(MEGATRON_PATCH)])


def _build_bin(binp: Path) -> None:
    shutil.rmtree(binp, ignore_errors=True)
    binp.mkdir()
    for src, name in (("nvidia_smi.py", "nvidia-smi"), ("dmesg.py", "dmesg")):
        shutil.copy2(PKG / src, binp / name)
        os.chmod(binp / name, 0o755)
    other = PKG / "bin"
    if other.is_dir():
        for src in sorted(other.iterdir()):
            if src.is_file() and src.name != "nvidia-smi" and not src.name.startswith("."):
                shutil.copy2(src, binp / src.name)
                os.chmod(binp / src.name, 0o755)


def _keygen(path: Path, comment: str) -> subprocess.Popen | None:
    if path.exists() and path.with_name(path.name + ".pub").exists():
        return None
    for p in (path, path.with_name(path.name + ".pub")):
        p.unlink(missing_ok=True)
    return subprocess.Popen(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _setenv_value(v: str) -> str:
    if '"' in v or "\n" in v:
        raise SimClusterError(f"cannot pass {v!r} through sshd SetEnv")
    return f'"{v}"' if any(c.isspace() for c in v) else v




# --------------------------------------------------------------------------------------------
class SimCluster:
    """A simulated cluster living in ``state_dir``. ``SimCluster.up(...)`` starts one;
    ``SimCluster(state_dir)`` attaches to an existing one (reads cluster.json)."""

    def __init__(self, state_dir):
        self.dir = Path(state_dir).resolve()
        self._info = None

    # ---- facts
    @property
    def info(self) -> dict:
        if self._info is None:
            p = self.dir / "cluster.json"
            if not p.exists():
                raise SimClusterError(f"no simulated cluster in {self.dir} (cluster.json missing)")
            self._info = json.loads(p.read_text())
        return self._info

    def set_megatron_patch(self, applied: bool) -> None:
        """Apply or take back slime's Megatron patch on the (shared) Megatron-LM checkout: a
        node with a stock Megatron."""
        meg = str(self.dir / "Megatron-LM")
        _run(["git", "-C", meg, "apply", *([] if applied else ["-R"]), str(MEGATRON_PATCH)])

    def set_dist_version(self, name: str, version: str) -> None:
        """Make the nodes' Python see package `name` at `version` (its stand-in dist-info)."""
        site = self.dir / "site"
        (di,) = site.glob(f"{name}-*.dist-info")
        meta = di / "METADATA"
        meta.write_text(re.sub(r"(?m)^Version: .*$", f"Version: {version}", meta.read_text()))
        di.rename(site / f"{name}-{version}.dist-info")

    @property
    def sim(self) -> dict:
        return json.loads((self.dir / "sim.json").read_text())

    @property
    def nodes(self) -> list[dict]:
        return self.info["nodes"]

    @property
    def conn_ids(self) -> list[str]:
        return [n["conn_id"] for n in self.nodes]

    @property
    def base_folder(self) -> Path:
        return self.dir / "base"

    @property
    def slime_dir(self) -> Path:
        return self.dir / "slime"

    @property
    def megatron_dir(self) -> Path:
        return self.dir / "Megatron-LM"

    @property
    def key_file(self) -> Path:
        return self.dir / "id_ed25519"

    @property
    def hub_url(self) -> str | None:
        return self.info.get("hub_url")

    @property
    def bridge(self) -> str:
        return self.info["net"]["bridge"]

    def node_dir(self, i: int) -> Path:
        return self.dir / "nodes" / str(i)

    def node_tmp(self, i: int) -> Path:
        """Node i's /tmp, as this (host) process sees it."""
        return self.node_dir(i) / "tmp"

    def node_base(self, i: int) -> Path:
        """Where this (host) process sees node i's base_folder."""
        if self.info["storage"] != "local":
            return self.base_folder
        if self.info.get("disk_mb"):  # a tmpfs mounted inside the node: reach it through its root
            return Path(f"/proc/{self.nodes[i]['init_pid']}/root") / str(self.base_folder).lstrip("/")
        return self.node_dir(i) / "base"

    def env(self) -> dict[str, str]:
        return dict(self.info["env"])

    # ---- lifecycle
    @classmethod
    def up(cls, state_dir, nodes: int = 1, gpu: str = "H100", gpus_per_node: int = 8,
           storage: str = "shared", disk_mb: int | None = None, driver: str = DEFAULT_DRIVER,
           rollout_seconds: float = 0.5, hub: bool = True, owner_pid: int | None = None) -> "SimCluster":
        """`owner_pid` (default: $SIMCLUSTER_OWNER_PID, which tests/conftest.py sets to the pytest
        process): tear the cluster down when that process dies, e.g. a killed test."""
        if owner_pid is None and os.environ.get("SIMCLUSTER_OWNER_PID", "").isdigit():
            owner_pid = int(os.environ["SIMCLUSTER_OWNER_PID"])
        self = cls(state_dir)
        self._up(nodes, gpu, gpus_per_node, storage, disk_mb, driver, rollout_seconds, hub, owner_pid)
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.down()

    def running(self) -> bool:
        try:
            info = json.loads((self.dir / "cluster.json").read_text())
        except (OSError, ValueError):
            return False
        return any(alive(n.get("init_pid") or 0) and _pidns(n["init_pid"]) != _pidns(os.getpid())
                   for n in info.get("nodes", []))

    def _up(self, n_nodes, gpu, gpus_per_node, storage, disk_mb, driver, rollout_seconds, hub, owner_pid):
        t0 = time.monotonic()
        if gpu not in GPUS:
            raise SimClusterError(f"--gpu must be one of {', '.join(GPUS)}, not {gpu!r}")
        if storage not in ("shared", "local"):
            raise SimClusterError("--storage must be shared or local")
        if n_nodes < 1 or n_nodes > 200:
            raise SimClusterError("--nodes must be between 1 and 200")
        if disk_mb is not None:
            storage = "local"
        check_namespaces()
        ensure_sshd()
        d = self.dir
        d.mkdir(parents=True, exist_ok=True)
        if self.running():
            raise SimClusterError(f"a simulated cluster is already running in {d}; "
                                  f"run `python -m tests.simcluster down --state-dir {d}` first")
        _write(d / "cluster.starting", f"{os.getpid()}\n")
        (d / "cluster.json").unlink(missing_ok=True)
        for sub in ("base", "nodes"):
            (d / sub).mkdir(exist_ok=True)
        x = _claim_subnet(d)
        net = {"x": x, "bridge": f"sfbr{x}", "subnet": f"{NET_PREFIX}.{x}.0/24", "host": subnet_host(x)}
        hub_proc = None
        try:
            _make_bridge(x)
            # 1. the hub (slowest to start), in the background, on the bridge's host address
            (d / "hub.json").unlink(missing_ok=True)
            if hub and (PKG / "hub.py").exists():
                env = {k: v for k, v in os.environ.items() if not k.startswith("SIMCLUSTER_")}
                env.update(PYTHONPATH=str(REPO), SIMCLUSTER_DIR=str(d), SIMCLUSTER_ROLE="hub")
                with open(d / "hub.log", "ab") as log:
                    hub_proc = subprocess.Popen(
                        [sys.executable, "-m", "tests.simcluster.hub", "--state-dir", str(d), "--port", "0",
                         "--host", net["host"]],
                        cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                        start_new_session=True)
                (d / "hub.pid").write_text(f"{hub_proc.pid}\n")

            # 2. keys and the file layout, in parallel
            keygens = [_keygen(d / "id_ed25519", "simcluster-client")]
            for i in range(n_nodes):
                nd = self.node_dir(i)
                nd.mkdir(parents=True, exist_ok=True)
                keygens.append(_keygen(nd / "ssh_host_ed25519_key", f"simcluster-node-{i}"))
            with ThreadPoolExecutor(4) as ex:
                futs = [ex.submit(_build_site, d / "site"), ex.submit(_build_slime, d / "slime"),
                        ex.submit(_build_megatron, d / "Megatron-LM"), ex.submit(_build_bin, d / "bin")]
                for p in keygens:
                    if p is not None and p.wait() != 0:
                        raise SimClusterError(f"ssh-keygen failed: {p.stderr.read().decode()}")
                for f in futs:
                    f.result()

            gpu_facts = GPUS[gpu]
            sim = {"nodes": n_nodes, "gpu": gpu, "gpus_per_node": gpus_per_node,
                   "rollout_seconds": rollout_seconds, "storage": storage, "disk_mb": disk_mb,
                   "driver": driver, "state_dir": str(d), "repo": str(REPO),
                   "base_folder": str(d / "base"), "slime_dir": str(d / "slime"),
                   "megatron_dir": str(d / "Megatron-LM"), "site": str(d / "site"), "net": net}
            hosts = ["127.0.0.1\tlocalhost", f"{net['host']}\tsimcluster-host"]
            for i in range(n_nodes):
                nd = self.node_dir(i)
                for sub in ("home", "tmp", "base"):
                    (nd / sub).mkdir(exist_ok=True)
                shutil.rmtree(nd / "tmp" / "ray", ignore_errors=True)  # a fresh boot: no old Ray session
                tag = hashlib.sha1(f"{d}/{i}".encode()).hexdigest()
                uuids = [f"GPU-{tag[:8]}-{tag[8:12]}-{tag[12:16]}-{tag[16:20]}-{tag[20:28]}{g:04x}"
                         for g in range(gpus_per_node)]
                _write_json(nd / "gpu.json", dict(gpu_facts, gpu=gpu, count=gpus_per_node,
                                                  driver_version=driver, cuda_version=cuda_for_driver(driver),
                                                  nvlink=True, uuids=uuids, driver_loaded=True))
                _write_json(nd / "gpu_procs.json", [])
                hosts.append(f"{subnet_host(x, i)}\tsim-node-{i}")
            _write(d / "hosts", "\n".join(hosts) + "\n")

            # 3. wait for the hub's url (sessions get it through SetEnv)
            hub_url = None
            if hub_proc is not None:
                end = time.monotonic() + 60
                while not (d / "hub.json").exists():
                    if hub_proc.poll() is not None or time.monotonic() > end:
                        log = (d / "hub.log").read_text(errors="replace")[-2000:]
                        raise SimClusterError(f"the hub did not start (see {d / 'hub.log'}):\n{log}")
                    time.sleep(0.01)
                hub_url = json.loads((d / "hub.json").read_text())["url"]
            sim["hub_url"] = hub_url
            _write_json(d / "sim.json", sim)

            # 4. the nodes
            client_pub = (d / "id_ed25519.pub").read_text()
            _write(d / "authorized_keys", client_pub)
            os.chmod(d / "id_ed25519", 0o600)
            nodes = [self._node_facts(i, net) for i in range(n_nodes)]
            self._info = dict(sim, nodes=nodes, env={})
            _write_json(d / "cluster.json", self._info)   # init pids land here as nodes boot
            with ThreadPoolExecutor(min(8, n_nodes)) as ex:
                for i, pid in enumerate(ex.map(lambda i: self.boot_node(i), range(n_nodes))):
                    nodes[i]["init_pid"] = pid
        except BaseException:
            self._power_off_all()
            if hub_proc is not None:
                _signal([hub_proc.pid], signal.SIGKILL)
            _teardown_net(x)
            (d / "cluster.starting").unlink(missing_ok=True)
            raise

        env = {}
        for node in nodes:
            conn = {"conn_type": "ssh", "host": node["host"], "port": node["port"], "login": "root",
                    "extra": {"key_file": str(d / "id_ed25519"), "host_key": node["host_key"]}}
            env[f"AIRFLOW_CONN_{node['conn_id'].upper()}"] = json.dumps(conn)
        env.update(SIMCLUSTER_DIR=str(d), SIM_BASE_FOLDER=str(d / "base"), SIM_SLIME_DIR=str(d / "slime"),
                   SIM_MEGATRON_DIR=str(d / "Megatron-LM"), SIM_HF_ENDPOINT=hub_url or "",
                   SIM_CONN_IDS=",".join(n["conn_id"] for n in nodes), SIM_MASTER_ADDR=nodes[0]["host"])
        if (d / "hub_token").exists():
            env["SIM_HF_TOKEN"] = (d / "hub_token").read_text().strip()
        info = dict(sim, nodes=nodes, env=env, key_file=str(d / "id_ed25519"),
                    hub_pid=hub_proc.pid if hub_proc else None, up_seconds=round(time.monotonic() - t0, 3))
        lines = ["# generated by `python -m tests.simcluster up`; source it to reach the simulated nodes"]
        lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
        _write(d / "env.sh", "\n".join(lines) + "\n")
        _write_json(d / "cluster.json", info)
        self._info = info
        (d / "cluster.starting").unlink(missing_ok=True)
        if owner_pid:
            self._start_watchdog(owner_pid)
        return self

    def _node_facts(self, i: int, net: dict) -> dict:
        nd = self.node_dir(i)
        pub = (nd / "ssh_host_ed25519_key.pub").read_text().split()
        return {"index": i, "conn_id": f"sim_node_{i}", "host": subnet_host(net["x"], i), "port": SSH_PORT,
                "login": "root", "hostname": f"sim-node-{i}", "host_key": f"{pub[0]} {pub[1]}",
                "root": str(nd), "node_dir": str(nd), "init_pid": None,
                "base_view": str(nd / "base" if self.info_storage == "local" else self.dir / "base")}

    @property
    def info_storage(self) -> str:
        return (self._info or json.loads((self.dir / "sim.json").read_text()))["storage"]

    def _sshd_config(self, i: int) -> Path:
        d, nd, sim = self.dir, self.node_dir(i), self.sim
        setenv = {
            "PATH": f"{d / 'bin'}:{REPO / '.venv/bin'}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(nd / "home"),
            # with no hub, point hf at a closed port rather than at the real Hub
            "HF_ENDPOINT": sim.get("hub_url") or "http://127.0.0.1:9",
            "PYTHONPATH": str(d / "site"),
            "SIMCLUSTER_DIR": str(d),
            "SIMCLUSTER_NODE": str(i),
        }
        cfg = f"""\
# simcluster node {i}
Port {SSH_PORT}
ListenAddress {subnet_host(sim['net']['x'], i)}
AddressFamily inet
HostKey {nd / 'ssh_host_ed25519_key'}
PidFile {nd / 'sshd.pid'}
AuthorizedKeysFile {d / 'authorized_keys'}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitUserRC no
PermitUserEnvironment no
X11Forwarding no
PrintMotd no
PrintLastLog no
UseDNS no
MaxStartups 100:30:200
MaxSessions 50
LogLevel INFO
Subsystem sftp internal-sftp
SetEnv {' '.join(f'{k}={_setenv_value(v)}' for k, v in setenv.items())}
"""
        path = nd / "sshd_config"
        _write(path, cfg)
        return path

    def boot_node(self, i: int) -> int:
        """Start node i (its namespaces, network, mounts and sshd); its init's host pid. Also a
        reboot of a node that vanished: same address, host key and disk, empty /tmp."""
        d, nd, sim = self.dir, self.node_dir(i), self.sim
        net = sim["net"]
        for f in ("net.ready", "init.ready", "sshd.pid"):
            (nd / f).unlink(missing_ok=True)
        shutil.rmtree(nd / "tmp", ignore_errors=True)
        (nd / "tmp").mkdir()
        keep = sorted({str(p) for p in (d, REPO, Path(sys.prefix).resolve())
                       if str(p).startswith("/tmp/")})
        spec = {"node_dir": str(nd), "hostname": f"sim-node-{i}", "cpus": NODE_CPUS,
                "hosts_file": str(d / "hosts"), "storage": sim["storage"], "disk_mb": sim.get("disk_mb"),
                "base_folder": str(d / "base"), "sshd": SSHD, "sshd_config": str(self._sshd_config(i)),
                "keep_under_tmp": keep}
        _write_json(nd / "spec.json", spec)
        env = {"PATH": "/usr/sbin:/usr/bin:/bin", "LANG": "C.UTF-8", "SIMCLUSTER_DIR": str(d),
               "SIMCLUSTER_NODE": str(i)}
        with open(nd / "init.log", "ab") as log:
            launcher = subprocess.Popen(
                ["unshare", "--net", "--pid", "--mount", "--uts", "--fork", "--mount-proc", "--kill-child",
                 sys.executable, "-S", str(PKG / "node_init.py"), str(nd / "spec.json")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True, cwd="/")
        init = None
        end = time.monotonic() + 15
        while init is None:
            try:
                kids = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
                init = int(kids[0]) if kids else None
            except OSError:
                pass
            if init is None:
                if launcher.poll() is not None or time.monotonic() > end:
                    raise SimClusterError(f"node {i} did not start: "
                                          f"{(nd / 'init.log').read_text(errors='replace')[-1500:]}")
                time.sleep(0.005)
        self._record_init(i, init)
        host_if, node_if = f"sf{net['x']}h{i}", f"sf{net['x']}n{i}"
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)  # left by a power cut
        # a fixed MAC per node address: after a reboot the host's ARP entry for it stays right
        mac = f"02:5f:{net['x']:02x}:00:{i >> 8:02x}:{i & 0xff:02x}"
        _run(["ip", "link", "add", host_if, "type", "veth", "peer", "name", node_if, "address", mac])
        subprocess.run(["ip", "neigh", "flush", "to", subnet_host(net["x"], i)], capture_output=True)
        _run(["ip", "link", "set", host_if, "master", net["bridge"], "up"])
        _run(["ip", "link", "set", node_if, "netns", str(init)])
        ip = subnet_host(net["x"], i)
        _run(["nsenter", "-t", str(init), "-n", "sh", "-c",
              f"ip link set {node_if} name eth0 && ip addr add {ip}/24 dev eth0 && "
              f"ip link set eth0 up && ip link set lo up"])
        (nd / "net.ready").write_text("1\n")
        end = time.monotonic() + 30
        while not (nd / "init.ready").exists():
            if not alive(init) or time.monotonic() > end:
                raise SimClusterError(f"node {i} did not come up: "
                                      f"{(nd / 'init.log').read_text(errors='replace')[-1500:]}")
            time.sleep(0.01)
        if not _wait_port(ip, SSH_PORT, True, 15):
            raise SimClusterError(f"sshd of node {i} does not listen on {ip}:{SSH_PORT}: "
                                  f"{(nd / 'sshd.log').read_text(errors='replace')[-1500:]}")
        return init

    _record_lock = threading.Lock()  # nodes boot in parallel threads

    def _record_init(self, i: int, pid: int) -> None:
        """cluster.json holds each node's init pid as soon as it exists, so that `down` (or the
        next `up` collecting a killed test's leftovers) can power it off."""
        p = self.dir / "cluster.json"
        with self._record_lock:
            try:
                info = json.loads(p.read_text())
            except (OSError, ValueError):
                return
            info["nodes"][i]["init_pid"] = pid
            _write_json(p, info)
            if self._info is not None:
                self._info["nodes"][i]["init_pid"] = pid

    def nsenter(self, i: int, argv: list, **kw) -> subprocess.CompletedProcess:
        """Run argv inside node i (all its namespaces), as root, with the node's session env."""
        init = self.nodes[i]["init_pid"]
        env = {"PATH": f"{self.dir / 'bin'}:{REPO / '.venv/bin'}:/usr/sbin:/usr/bin:/bin", "LANG": "C.UTF-8",
               "SIMCLUSTER_DIR": str(self.dir), "SIMCLUSTER_NODE": str(i), "PYTHONPATH": str(self.dir / "site"),
               "HOME": str(self.node_dir(i) / "home")}
        return subprocess.run(["nsenter", "-t", str(init), "-n", "-p", "-m", "-u", "--wd=/", *argv],
                              env=env, capture_output=True, text=True, **kw)

    def listener_pid(self, i: int) -> int | None:
        pids = [p.pid for p in procs_of(self.dir, i) if p.role == "sshd"]
        return pids[0] if pids else None

    def start_sshd(self, i: int) -> None:
        node = self.nodes[i]
        if port_open(node["host"], node["port"]):
            return
        nd = self.node_dir(i)
        r = self.nsenter(i, [SSHD, "-f", str(nd / "sshd_config"), "-E", str(nd / "sshd.log")])
        if r.returncode != 0 or not _wait_port(node["host"], node["port"], True, 10):
            raise SimClusterError(f"sshd of node {i} did not come back on port {node['port']}: "
                                  f"{r.stderr.strip()} {(nd / 'sshd.log').read_text()[-2000:]}")

    def stop_sshd(self, i: int, sig=signal.SIGTERM) -> None:
        node = self.nodes[i]
        pids = [p.pid for p in procs_of(self.dir, i) if p.role == "sshd"]
        _signal(pids, sig)
        _wait_dead(pids, 5)
        if not _wait_port(node["host"], node["port"], False, 5):
            raise SimClusterError(f"port {node['port']} of node {i} is still open")

    def power_off(self, i: int) -> list[int]:
        """Node i is gone at once, like a power cut: SIGKILL its PID 1, and the kernel kills every
        process of its PID namespace; its network namespace and veth go with them."""
        init = (self.nodes[i] if self._info or (self.dir / "cluster.json").exists() else {}).get("init_pid")
        if not init or not alive(init) or _pidns(init) == _pidns(os.getpid()):
            return []
        victims = [p.pid for p in procs_of(self.dir, i)]
        _signal([init], signal.SIGKILL)
        left = _wait_dead(victims, 10)
        if left:
            raise SimClusterError(f"node {i} still has processes {left} after its power cut")
        _reap()
        return victims

    def _power_off_all(self) -> list[int]:
        try:
            info = json.loads((self.dir / "cluster.json").read_text())
        except (OSError, ValueError):
            return []
        self._info = info
        killed = []
        for n in info.get("nodes", []):
            killed += self.power_off(int(n["index"]))
        return killed

    def _start_watchdog(self, owner_pid: int) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIMCLUSTER_")}
        env.update(PYTHONPATH=str(REPO))
        with open(self.dir / "watchdog.log", "ab") as log:
            p = subprocess.Popen([sys.executable, "-m", "tests.simcluster", "watch", "--state-dir", str(self.dir),
                                  "--owner", str(owner_pid)], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        (self.dir / "watchdog.pid").write_text(f"{p.pid}\n")

    def down(self) -> dict:
        t0 = time.monotonic()
        killed = self._power_off_all()
        hub_pid = self.dir / "hub.pid"
        if hub_pid.exists():
            try:
                pid = int(hub_pid.read_text())
                if (_environ(pid) or {}).get("SIMCLUSTER_ROLE") == "hub":
                    _signal([pid], signal.SIGKILL)
                    _wait_dead([pid], 5)
                    killed.append(pid)
            except ValueError:
                pass
            hub_pid.unlink(missing_ok=True)
        net = (self._info or {}).get("net")
        if net and _claim_owner(int(net["x"])) == self.dir:
            # only while the claim is still ours: a cluster that died long ago may have had the
            # same <X> as one that runs now, and its bridge is not ours to delete
            _teardown_net(int(net["x"]))
        wd = self.dir / "watchdog.pid"
        if wd.exists():
            try:
                pid = int(wd.read_text())
                if pid != os.getpid() and "watch" in _cmdline(pid):
                    _signal([pid], signal.SIGTERM)
            except ValueError:
                pass
            wd.unlink(missing_ok=True)
        _reap()
        left = [p for p in procs_of(self.dir)]
        if left:
            raise SimClusterError("processes still alive after down: " +
                                  ", ".join(f"{p.pid} ({' '.join(p.cmdline)[:60]})" for p in left))
        return {"killed": sorted(set(killed)), "seconds": round(time.monotonic() - t0, 3)}


    # ---- helpers for tests
    def connect(self, i: int, timeout: float = 10):
        """A paramiko client to node i, host key pinned, RejectPolicy (host key checking on)."""
        import paramiko
        node = self.nodes[i]
        c = paramiko.SSHClient()
        kt, kb = node["host_key"].split()[:2]
        name = node["host"] if int(node["port"]) == 22 else f"[{node['host']}]:{node['port']}"
        c.get_host_keys().add(name, kt,
                              paramiko.Ed25519Key(data=base64.b64decode(kb)))
        c.set_missing_host_key_policy(paramiko.RejectPolicy())
        c.connect(node["host"], node["port"], username="root", key_filename=str(self.key_file),
                  look_for_keys=False, allow_agent=False, timeout=timeout, banner_timeout=timeout,
                  auth_timeout=timeout)
        return c

    def exec(self, i: int, command: str, timeout: float = 60) -> tuple[int, str, str]:
        c = self.connect(i)
        try:
            _, out, err = c.exec_command(command, timeout=timeout)
            o, e = out.read().decode(), err.read().decode()
            return out.channel.recv_exit_status(), o, e
        finally:
            c.close()

    def set_gpu(self, i: int, **fields) -> dict:
        """Change node i's gpu.json (e.g. count=0, driver_version="470.256.02", gpu="B200")."""
        p = self.node_dir(i) / "gpu.json"
        g = json.loads(p.read_text())
        if "gpu" in fields:
            g.update(GPUS[fields["gpu"]])
        if "driver_version" in fields and "cuda_version" not in fields:
            g["cuda_version"] = cuda_for_driver(fields["driver_version"])
        g.update(fields)
        _write_json(p, g)
        return g

    def procs(self, node: int | None = None) -> list[Proc]:
        return procs_of(self.dir, node)

    def fault(self, kind: str, node: int | None = None, **kw) -> dict:
        from tests.simcluster.faults import inject
        return inject(self, kind, node=node, **kw)

