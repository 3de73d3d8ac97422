"""The simulated GPU cluster's node layer: N real sshd's on loopback (stdlib + paramiko only).

Layout of a state folder ``DIR`` (all paths absolute, ``DIR`` resolved):

    DIR/sim.json          facts for the stand-ins (nodes, gpu, gpus_per_node, rollout_seconds, storage, ...)
    DIR/cluster.json      the same facts for Python tests (nodes: conn_id, host, port, host_key, root, ...)
    DIR/env.sh            AIRFLOW_CONN_SIM_NODE_<I>, SIMCLUSTER_DIR, SIM_BASE_FOLDER, SIM_SLIME_DIR, ...
    DIR/id_ed25519        the one client key accepted by every node (root login)
    DIR/bin/              nvidia-smi stand-in, ray stand-in (copied from tests/simcluster/bin/)
    DIR/site/             PYTHONPATH of every session: real flash-linear-attention 0.4.0 (+ fla-core),
                          stand-in dist-infos for sglang, causal_conv1d, triton, ray, slime
    DIR/slime/            slime_dir (git repo): train.py, tools/convert_hf_to_torch_dist.py, scripts/
    DIR/Megatron-LM/      megatron_dir (git repo)
    DIR/base/             base_folder (what every node sees at that path)
    DIR/hub.json          written by the hub (tests.simcluster.hub) once it listens
    DIR/nodes/<i>/        sshd_config, host key, sshd.log, sshd.pid, gpu.json, gpu_procs.json,
                          home/ (HOME of sessions), ray/ (RAY_TMPDIR),
                          base/ (the node's private disk with local storage), ns/mnt (its mount ns)

Sessions on node i get (sshd ``SetEnv``): PATH, HOME=DIR/nodes/<i>/home, HF_ENDPOINT, PYTHONPATH,
SIMCLUSTER_DIR, SIMCLUSTER_NODE, RAY_TMPDIR. HOME is per node because root's real ~/.bashrc (which
bash sources for ssh commands) may rewrite PATH (pyenv, cargo); with our own HOME the SetEnv PATH
stays what the contract says, and each node gets its own ~/.cache like a real machine.

Every process the cluster starts carries ``SIMCLUSTER_DIR=DIR`` and either ``SIMCLUSTER_NODE=<i>``
(sshd's and everything started through SSH) or ``SIMCLUSTER_ROLE`` (the hub). :func:`procs_of` finds
them through ``/proc/<pid>/environ``; client processes that merely export ``SIMCLUSTER_DIR`` (from
env.sh) are not counted and never killed.
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
import struct
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PKG = Path(__file__).resolve().parent
SSHD = "/usr/sbin/sshd"

GPUS = {
    "H100": {"name": "NVIDIA H100 80GB HBM3", "compute_cap": "9.0", "memory_total_mib": 81559},
    "H200": {"name": "NVIDIA H200", "compute_cap": "9.0", "memory_total_mib": 143771},
    "B200": {"name": "NVIDIA B200", "compute_cap": "10.0", "memory_total_mib": 183359},
}
DEFAULT_DRIVER = "580.95.05"
FLA_VERSION = "0.4.0"
FLA_PACKAGES = ["flash-linear-attention==0.4.0", "fla-core==0.4.0"]  # 0.4.0 keeps fla/ops in fla-core
FLA_UNPATCHED = "b_dk += tl.dot(tl.trans(b_dA), b_kb)"
STANDIN_DISTS = {"sglang": "0.5.6", "causal_conv1d": "1.5.4", "triton": "3.4.0", "ray": "2.49.0",
                 "slime": "0.2.0"}
MEGATRON_VERSION = (0, 14, 0, "rc0")
CACHE_DIR = Path(os.environ.get("SLIMEFLOW_SIM_CACHE", "~/.cache/slimeflow-sim")).expanduser()
FAULTS = ("drop-ssh", "restart-sshd", "vanish-head", "kill-trainer", "hang-trainer", "resume-trainer",
          "corrupt-shard", "fill-disk", "unfill-disk", "foreign-gpu-proc")
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


def node_host(i: int) -> str:
    return f"127.0.0.{11 + i}"


# --------------------------------------------------------------------------------------------
# processes
@dataclass
class Proc:
    pid: int
    node: int | None
    role: str | None
    cmdline: list[str] = field(default_factory=list)
    state: str = "?"


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


def _tcp_sockets(addrs: dict) -> dict[int, tuple[int, str]]:
    """inode -> (node, "listen"|"conn") for TCP sockets whose LOCAL address is one of `addrs`
    ({(ip, port): node})."""
    out = {}
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return out
    for line in lines:
        f = line.split()
        if len(f) < 10:
            continue
        hip, hport = f[1].split(":")
        ip = socket.inet_ntoa(struct.pack("<I", int(hip, 16)))
        key = (ip, int(hport, 16))
        if key in addrs and f[9] != "0":
            out[int(f[9])] = (addrs[key], "listen" if f[3] == "0A" else "conn")
    return out


def _sshd_procs(state_dir: str, nodes: list[dict]) -> list[Proc]:
    """sshd overwrites its environ with its process title, so the environ tag cannot find it.
    Its processes are found instead as holders of node sockets (the listener holds the LISTEN
    socket, every per-connection sshd its connection) plus the pid files."""
    addrs = {(n["host"], int(n["port"])): int(n["index"]) for n in nodes}
    inodes = _tcp_sockets(addrs)
    cfg_re = re.compile(re.escape(state_dir) + r"/nodes/(\d+)/sshd_config\b")
    found: dict[int, Proc] = {}
    for ent in os.listdir("/proc"):
        if not ent.isdigit():
            continue
        pid = int(ent)
        if _exe(pid) != SSHD:
            continue
        cmd = _cmdline(pid)
        node = role = None
        m = cfg_re.search(" ".join(cmd))
        if m:  # the listener keeps its command line in its title
            node, role = int(m.group(1)), "sshd"
        else:
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            for fd in fds:
                try:
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if link.startswith("socket:["):
                    hit = inodes.get(int(link[8:-1]))
                    if hit:
                        node, role = hit[0], "sshd" if hit[1] == "listen" else "sshd-session"
                        if hit[1] == "listen":
                            break
        if node is None:
            continue
        st = _pstate(pid)
        if st not in ("X", "Z"):
            found[pid] = Proc(pid, node, role, cmd, st)
    return list(found.values())


def procs_of(state_dir, node: int | None = None) -> list[Proc]:
    """Every live process of the cluster in ``state_dir``: those whose environ has
    SIMCLUSTER_DIR=DIR and SIMCLUSTER_NODE or SIMCLUSTER_ROLE (hub, everything started through
    SSH), plus the nodes' sshd processes (role "sshd" for listeners, "sshd-session" per
    connection), which cannot be tagged (see :func:`_sshd_procs`)."""
    d = str(Path(state_dir).resolve())
    out = []
    me = os.getpid()
    for ent in os.listdir("/proc"):
        if not ent.isdigit() or int(ent) == me:
            continue
        pid = int(ent)
        env = _environ(pid)
        if not env or env.get("SIMCLUSTER_DIR") != d:
            continue
        n, role = env.get("SIMCLUSTER_NODE"), env.get("SIMCLUSTER_ROLE")
        if n is None and role is None:
            continue
        st = _pstate(pid)
        if st in ("X", "Z"):
            continue
        nn = int(n) if n is not None and n.isdigit() else None
        out.append(Proc(pid, nn, role, _cmdline(pid), st))
    try:
        nodes = json.loads((Path(d) / "cluster.json").read_text())["nodes"]
    except (OSError, ValueError, KeyError):
        nodes = []
    seen = {p.pid for p in out}
    out += [p for p in _sshd_procs(d, nodes) if p.pid not in seen]
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
    """Reap our own exited children (sshd's started by this process) so they don't linger."""
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


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise SimClusterError(f"{shlex.join(map(str, cmd))} failed ({r.returncode}): {r.stderr.strip()}")
    return r


def _ismount(p: Path) -> bool:
    """Also true for a bind mount of a folder onto itself (os.path.ismount misses those)."""
    target = str(Path(p).absolute())
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return os.path.ismount(p)
    for line in lines:
        mp = line.split()[4]
        mp = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), mp)
        if mp == target:
            return True
    return False


def _write(path: Path, text: str, mode: int | None = None) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    if mode is not None:
        os.chmod(tmp, mode)
    os.replace(tmp, path)


def _write_json(path: Path, obj) -> None:
    _write(path, json.dumps(obj, indent=2) + "\n")


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
            if src.is_dir() or "__pycache__" in rel.parts or rel.name == "__init__.py":
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


def _build_megatron(meg: Path) -> None:
    shutil.rmtree(meg, ignore_errors=True)
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


def _build_bin(binp: Path) -> None:
    shutil.rmtree(binp, ignore_errors=True)
    binp.mkdir()
    shutil.copy2(PKG / "nvidia_smi.py", binp / "nvidia-smi")
    os.chmod(binp / "nvidia-smi", 0o755)
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

    def node_dir(self, i: int) -> Path:
        return self.dir / "nodes" / str(i)

    def node_base(self, i: int) -> Path:
        """Where this (host) process sees node i's base_folder."""
        return self.node_dir(i) / "base" if self.info["storage"] == "local" else self.base_folder

    def env(self) -> dict[str, str]:
        return dict(self.info["env"])

    # ---- lifecycle
    @classmethod
    def up(cls, state_dir, nodes: int = 1, gpu: str = "H100", gpus_per_node: int = 8,
           storage: str = "shared", disk_mb: int | None = None, driver: str = DEFAULT_DRIVER,
           rollout_seconds: float = 0.5, hub: bool = True) -> "SimCluster":
        self = cls(state_dir)
        self._up(nodes, gpu, gpus_per_node, storage, disk_mb, driver, rollout_seconds, hub)
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.down()

    def running(self) -> bool:
        if procs_of(self.dir):
            return True
        try:
            nodes = json.loads((self.dir / "cluster.json").read_text())["nodes"]
        except (OSError, ValueError, KeyError):
            return False
        return any(port_open(n["host"], n["port"]) for n in nodes)

    def _up(self, n_nodes, gpu, gpus_per_node, storage, disk_mb, driver, rollout_seconds, hub):
        t0 = time.monotonic()
        if gpu not in GPUS:
            raise SimClusterError(f"--gpu must be one of {', '.join(GPUS)}, not {gpu!r}")
        if storage not in ("shared", "local"):
            raise SimClusterError("--storage must be shared or local")
        if n_nodes < 1 or n_nodes > 200:
            raise SimClusterError("--nodes must be between 1 and 200")
        if disk_mb is not None:
            storage = "local"
        ensure_sshd()
        d = self.dir
        d.mkdir(parents=True, exist_ok=True)
        if self.running():
            raise SimClusterError(f"a simulated cluster is already running in {d}; "
                                  f"run `python -m tests.simcluster down --state-dir {d}` first")
        self._unmount_all()  # leftovers of a cluster that was never taken down
        (d / "cluster.json").unlink(missing_ok=True)
        for sub in ("base", "nodes"):
            (d / sub).mkdir(exist_ok=True)

        # 1. the hub (slowest to start), in the background
        hub_proc = None
        (d / "hub.json").unlink(missing_ok=True)
        if hub and (PKG / "hub.py").exists():
            env = {k: v for k, v in os.environ.items() if not k.startswith("SIMCLUSTER_")}
            env.update(PYTHONPATH=str(REPO), SIMCLUSTER_DIR=str(d), SIMCLUSTER_ROLE="hub")
            with open(d / "hub.log", "ab") as log:
                hub_proc = subprocess.Popen(
                    [sys.executable, "-m", "tests.simcluster.hub", "--state-dir", str(d), "--port", "0"],
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
               "megatron_dir": str(d / "Megatron-LM"), "site": str(d / "site")}
        for i in range(n_nodes):
            nd = self.node_dir(i)
            for sub in ("home", "ray"):
                (nd / sub).mkdir(exist_ok=True)
            tag = hashlib.sha1(f"{d}/{i}".encode()).hexdigest()
            uuids = [f"GPU-{tag[:8]}-{tag[8:12]}-{tag[12:16]}-{tag[16:20]}-{tag[20:28]}{g:04x}"
                     for g in range(gpus_per_node)]
            _write_json(nd / "gpu.json", dict(gpu_facts, gpu=gpu, count=gpus_per_node,
                                              driver_version=driver, cuda_version=cuda_for_driver(driver),
                                              nvlink=True, uuids=uuids, driver_loaded=True))
            _write_json(nd / "gpu_procs.json", [])
            (nd / "foreign.pids").unlink(missing_ok=True)

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
        try:
            nodes = self._start_nodes(n_nodes, storage, disk_mb, hub_url)
        except BaseException:
            self._kill_all()
            self._unmount_all()
            raise

        env = {}
        for node in nodes:
            conn = {"conn_type": "ssh", "host": node["host"], "port": node["port"], "login": "root",
                    "extra": {"key_file": str(d / "id_ed25519"), "host_key": node["host_key"]}}
            env[f"AIRFLOW_CONN_{node['conn_id'].upper()}"] = json.dumps(conn)
        env.update(SIMCLUSTER_DIR=str(d), SIM_BASE_FOLDER=str(d / "base"), SIM_SLIME_DIR=str(d / "slime"),
                   SIM_MEGATRON_DIR=str(d / "Megatron-LM"), SIM_HF_ENDPOINT=hub_url or "",
                   SIM_CONN_IDS=",".join(n["conn_id"] for n in nodes))
        if (d / "hub_token").exists():
            env["SIM_HF_TOKEN"] = (d / "hub_token").read_text().strip()
        info = dict(sim, nodes=nodes, env=env, key_file=str(d / "id_ed25519"),
                    hub_pid=hub_proc.pid if hub_proc else None, up_seconds=round(time.monotonic() - t0, 3))
        lines = ["# generated by `python -m tests.simcluster up`; source it to reach the simulated nodes"]
        lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
        _write(d / "env.sh", "\n".join(lines) + "\n")
        _write_json(d / "cluster.json", info)
        self._info = info
        return self

    def _sshd_config(self, i: int, port: int, hub_url: str | None) -> Path:
        d, nd = self.dir, self.node_dir(i)
        setenv = {
            "PATH": f"{d / 'bin'}:{REPO / '.venv/bin'}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(nd / "home"),
            # with no hub, point hf at a closed port rather than at the real Hub
            "HF_ENDPOINT": hub_url or "http://127.0.0.1:9",
            "PYTHONPATH": str(d / "site"),
            "SIMCLUSTER_DIR": str(d),
            "SIMCLUSTER_NODE": str(i),
            "RAY_TMPDIR": str(nd / "ray"),
        }
        cfg = f"""\
# simcluster node {i}
Port {port}
ListenAddress {node_host(i)}
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

    def _ns_file(self, i: int) -> Path:
        return self.node_dir(i) / "ns" / "mnt"

    def _make_namespace(self, i: int, disk_mb: int | None) -> Path:
        nd = self.node_dir(i)
        nsdir, nsfile, priv = nd / "ns", nd / "ns" / "mnt", nd / "base"
        nsdir.mkdir(exist_ok=True)
        priv.mkdir(exist_ok=True)
        if not _ismount(nsdir):  # a private mount to hold the namespace file
            _run(["mount", "--bind", str(nsdir), str(nsdir)])
            _run(["mount", "--make-private", str(nsdir)])
        nsfile.touch()
        if disk_mb is not None and not _ismount(priv):
            _run(["mount", "-t", "tmpfs", "-o", f"size={int(disk_mb)}m,mode=0755", f"simcluster-node{i}", str(priv)])
        _run(["unshare", f"--mount={nsfile}", "--propagation", "private",
              "mount", "--bind", str(priv), str(self.dir / "base")])
        return nsfile

    def _start_nodes(self, n_nodes: int, storage: str, disk_mb: int | None, hub_url: str | None) -> list[dict]:
        nsfiles = [self._make_namespace(i, disk_mb) if storage == "local" else None for i in range(n_nodes)]
        ports, procs = {}, {}
        for i in range(n_nodes):
            ports[i] = _free_port(node_host(i))
            self._sshd_config(i, ports[i], hub_url)
            procs[i] = self._spawn_sshd(i, nsfiles[i])
        attempts = {i: 1 for i in range(n_nodes)}
        pending = set(range(n_nodes))
        end = time.monotonic() + 15
        while pending:
            for i in sorted(pending):
                if port_open(node_host(i), ports[i]):
                    pending.discard(i)
                elif procs[i].poll() is not None:  # e.g. the port was taken meanwhile: try another
                    if attempts[i] >= 5:
                        log = (self.node_dir(i) / "sshd.log").read_text(errors="replace")
                        raise SimClusterError(f"sshd of node {i} failed to start:\n{log[-2000:]}")
                    attempts[i] += 1
                    ports[i] = _free_port(node_host(i))
                    self._sshd_config(i, ports[i], hub_url)
                    procs[i] = self._spawn_sshd(i, nsfiles[i])
            if pending:
                if time.monotonic() > end:
                    raise SimClusterError(f"sshd of nodes {sorted(pending)} did not listen within 15 s")
                time.sleep(0.005)
        nodes = []
        for i in range(n_nodes):
            nd = self.node_dir(i)
            pub = (nd / "ssh_host_ed25519_key.pub").read_text().split()
            nodes.append({
                "index": i, "conn_id": f"sim_node_{i}", "host": node_host(i), "port": ports[i],
                "login": "root", "host_key": f"{pub[0]} {pub[1]}", "root": str(nd), "node_dir": str(nd),
                "namespace": str(nsfiles[i]) if nsfiles[i] else None,
                "base_view": str(nd / "base" if storage == "local" else self.dir / "base")})
        return nodes

    def _spawn_sshd(self, i: int, nsfile: Path | None) -> subprocess.Popen:
        nd = self.node_dir(i)
        cmd = [SSHD, "-D", "-e", "-f", str(nd / "sshd_config")]
        if nsfile is not None:
            cmd = ["nsenter", f"--mount={nsfile}", "--"] + cmd
        env = {"PATH": "/usr/sbin:/usr/bin:/bin", "LANG": "C.UTF-8", "SIMCLUSTER_DIR": str(self.dir),
               "SIMCLUSTER_NODE": str(i), "SIMCLUSTER_ROLE": "sshd"}
        (nd / "sshd.pid").unlink(missing_ok=True)
        with open(nd / "sshd.log", "ab") as log:
            p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                 env=env, start_new_session=True, cwd="/")
        (nd / "sshd.listener").write_text(f"{p.pid}\n")
        return p

    def listener_pid(self, i: int) -> int | None:
        pids = [p.pid for p in procs_of(self.dir, i) if p.role == "sshd"]
        return pids[0] if pids else None

    def start_sshd(self, i: int) -> None:
        node = self.nodes[i]
        if port_open(node["host"], node["port"]):
            return
        self._spawn_sshd(i, Path(node["namespace"]) if node.get("namespace") else None)
        if not _wait_port(node["host"], node["port"], True, 10):
            raise SimClusterError(f"sshd of node {i} did not come back on port {node['port']}: "
                                  f"{(self.node_dir(i) / 'sshd.log').read_text()[-2000:]}")

    def stop_sshd(self, i: int, sig=signal.SIGTERM) -> None:
        node = self.nodes[i]
        pids = [p.pid for p in procs_of(self.dir, i) if p.role == "sshd"]
        _signal(pids, sig)
        _wait_dead(pids, 5)
        if not _wait_port(node["host"], node["port"], False, 5):
            raise SimClusterError(f"port {node['port']} of node {i} is still open")

    def _kill_all(self) -> list[int]:
        killed = []
        for _round in range(4):
            procs = procs_of(self.dir)
            if not procs:
                break
            pids = [p.pid for p in procs]
            killed += pids
            # listeners first so that no new sessions start, then everything else
            _signal([p.pid for p in procs if p.role == "sshd"], signal.SIGTERM)
            _signal(pids, signal.SIGTERM)
            _signal(pids, signal.SIGCONT)
            left = _wait_dead(pids, 2.0 if _round == 0 else 0.5)
            _signal(left, signal.SIGKILL)
            _wait_dead(left, 2.0)
        for nd in (self.dir / "nodes").glob("*"):
            killed += _kill_foreign(nd)
        hub_pid = self.dir / "hub.pid"
        if hub_pid.exists():
            try:
                pid = int(hub_pid.read_text())
                if (_environ(pid) or {}).get("SIMCLUSTER_ROLE") == "hub":
                    _signal([pid], signal.SIGKILL)
            except ValueError:
                pass
            hub_pid.unlink(missing_ok=True)
        _reap()
        return killed

    def _unmount_all(self) -> None:
        for nd in sorted((self.dir / "nodes").glob("*"), reverse=True):
            for m in (nd / "ns" / "mnt", nd / "ns", nd / "base"):
                for _ in range(3):
                    if not _ismount(m):
                        break
                    r = subprocess.run(["umount", str(m)], capture_output=True)
                    if r.returncode != 0:
                        subprocess.run(["umount", "-l", str(m)], capture_output=True)

    def down(self) -> dict:
        t0 = time.monotonic()
        try:
            nodes = self.nodes
        except SimClusterError:
            nodes = []
        killed = self._kill_all()
        still = [n for n in nodes if not _wait_port(n["host"], n["port"], False, 5)]
        hub = None
        try:
            hub = json.loads((self.dir / "hub.json").read_text())
        except (OSError, ValueError):
            pass
        if hub and hub.get("port") and not _wait_port("127.0.0.1", hub["port"], False, 5):
            still.append({"host": "127.0.0.1", "port": hub["port"], "conn_id": "hub"})
        self._unmount_all()
        if still:
            raise SimClusterError("ports still open after down: " +
                                  ", ".join(f"{n['conn_id']} {n['host']}:{n['port']}" for n in still))
        return {"killed": sorted(set(killed)), "seconds": round(time.monotonic() - t0, 3)}

    # ---- helpers for tests
    def connect(self, i: int, timeout: float = 10):
        """A paramiko client to node i, host key pinned, RejectPolicy (host key checking on)."""
        import paramiko
        node = self.nodes[i]
        c = paramiko.SSHClient()
        kt, kb = node["host_key"].split()[:2]
        c.get_host_keys().add(f"[{node['host']}]:{node['port']}", kt,
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


def _kill_foreign(nd: Path) -> list[int]:
    f = nd / "foreign.pids"
    if not f.exists():
        return []
    killed = []
    for tok in f.read_text().split():
        try:
            pid = int(tok)
        except ValueError:
            continue
        if alive(pid) and _cmdline(pid) == ["sleep", FOREIGN_ARG]:
            _signal([pid], signal.SIGKILL)
            killed.append(pid)
    _wait_dead(killed, 2)
    f.unlink(missing_ok=True)
    return killed
