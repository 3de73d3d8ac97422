"""A real Docker engine for `make test-compose`, owned by the test: Debian's docker.io 20.10 and
docker-compose 1.29 (installed with apt when missing), one `dockerd` started with `setsid` whose
data, sockets and pidfile all live in a state folder, stopped by its pid at the end.

The engine runs without iptables or IP forwarding: dockerd would otherwise set the host's
FORWARD policy to DROP (which cuts node-to-node traffic of every simulated cluster on the
machine, ours and other tests') and add NAT. Builds use the host network instead, and
containers publish ports through docker-proxy on 127.0.0.1, which needs neither.

No image registry is reachable, so the base image is Debian bookworm made by debootstrap and
`docker import`ed (the test's Dockerfiles under tests/compose/ build on it).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

DOCKER = "/usr/bin/docker"  # /usr/local/bin/docker (a static 28.x) may shadow it and lacks compose
DOCKERD = "/usr/sbin/dockerd"
COMPOSE = "/usr/bin/docker-compose"
DEBOOTSTRAP = "/usr/sbin/debootstrap"
PACKAGES = {"docker.io": DOCKERD, "docker-compose": COMPOSE, "debootstrap": DEBOOTSTRAP}
BASE_IMAGE = "slimeflow-test/bookworm:minbase"
MIRROR = "http://deb.debian.org/debian"


class EngineError(RuntimeError):
    pass


def why_not() -> str | None:
    """One sentence saying why this machine cannot run the compose test, or None."""
    if os.geteuid() != 0:
        return "make test-compose needs root (it starts its own dockerd and the simulated nodes)"
    missing = [pkg for pkg, path in PACKAGES.items() if not os.path.exists(path)]
    if missing and not shutil.which("apt-get"):
        return f"make test-compose needs {', '.join(missing)} and this machine has no apt-get"
    return None


def ensure_packages() -> None:
    missing = [pkg for pkg, path in PACKAGES.items() if not os.path.exists(path)]
    if not missing:
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise EngineError(f"installing {', '.join(missing)} failed ({' '.join(cmd)}): "
                              f"{r.stderr.strip()[-500:]}")


class Engine:
    def __init__(self, state: Path):
        self.state = Path(state).resolve()
        self.sock = self.state / "docker.sock"
        self.pidfile = self.state / "docker.pid"
        self.log = self.state / "dockerd.log"
        self.proc: subprocess.Popen | None = None
        self.made_bridge = False

    @property
    def host(self) -> str:
        return f"unix://{self.sock}"

    def env(self) -> dict:
        return dict(os.environ, DOCKER_HOST=self.host)

    def docker(self, *args, check=True, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        r = subprocess.run([DOCKER, *args], env=self.env(), **kw)
        if check and r.returncode != 0:
            raise EngineError(f"docker {' '.join(args)} failed ({r.returncode}): "
                              f"{(r.stderr or '').strip()[-1500:]}")
        return r

    def start(self) -> None:
        ensure_packages()
        self.state.mkdir(parents=True, exist_ok=True)
        old = self._pid()
        if old and _alive(old) and "dockerd" in _cmdline(old):
            raise EngineError(f"a dockerd (pid {old}) already runs on {self.state}; stop it "
                              f"(kill {old}) or use another state folder")
        self.pidfile.unlink(missing_ok=True)
        # dockerd leaves its default bridge behind when it exits; remove it then only if we
        # made it
        self.made_bridge = not Path("/sys/class/net/docker0").exists()
        log = open(self.log, "ab")
        self.proc = subprocess.Popen(
            ["setsid", DOCKERD, "--data-root", str(self.state / "data"),
             "--exec-root", str(self.state / "exec"), "--pidfile", str(self.pidfile),
             "-H", self.host, "--iptables=false", "--ip-forward=false",
             "--storage-driver", "overlay2"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        end = time.monotonic() + 60
        while self.docker("version", check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > end:
                raise EngineError(f"dockerd did not start (see {self.log}): "
                                  f"{self.log.read_text(errors='replace')[-1500:]}")
            time.sleep(0.5)

    def _pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        """SIGTERM to our dockerd (it stops its containers and its containerd), SIGKILL after
        60 s; nothing else is signalled."""
        pid = self.proc.pid if self.proc else self._pid()
        if not pid or not _alive(pid):
            return
        os.kill(pid, signal.SIGTERM)
        end = time.monotonic() + 60
        while _alive(pid) and time.monotonic() < end:
            if self.proc:
                self.proc.poll()
            time.sleep(0.2)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        if self.proc:
            self.proc.wait(10)
        self._leftovers()

    def _leftovers(self) -> None:
        """What an exited dockerd leaves: its default netns mount and (if ours) docker0."""
        netns = self.state / "exec" / "netns"
        if netns.is_dir():
            for m in netns.iterdir():
                subprocess.run(["umount", str(m)], capture_output=True)
        if self.made_bridge and Path("/sys/class/net/docker0").exists():
            subprocess.run(["ip", "link", "del", "docker0"], capture_output=True)

    def remove_project(self, project: str) -> None:
        """Containers, volumes and networks of compose project `project`, by compose's labels."""
        label = f"label=com.docker.compose.project={project}"
        for kind, ls, rm in (("containers", ["ps", "-aq"], ["rm", "-f"]),
                             ("volumes", ["volume", "ls", "-q"], ["volume", "rm", "-f"]),
                             ("networks", ["network", "ls", "-q"], ["network", "rm"])):
            ids = self.docker(*ls, "--filter", label).stdout.split()
            if ids:
                self.docker(*rm, *ids)

    def has_image(self, name: str) -> bool:
        return self.docker("image", "inspect", name, check=False).returncode == 0

    def base_image(self) -> str:
        """Debian bookworm (minbase) as an image, made once per state folder."""
        if self.has_image(BASE_IMAGE):
            return BASE_IMAGE
        root = self.state / "rootfs"
        if root.exists():
            shutil.rmtree(root)
        r = subprocess.run([DEBOOTSTRAP, "--variant=minbase", "bookworm", str(root), MIRROR],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise EngineError(f"debootstrap of bookworm from {MIRROR} failed: "
                              f"{(r.stdout + r.stderr).strip()[-1500:]}")
        shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        imp = subprocess.run([DOCKER, "import", "-", BASE_IMAGE], stdin=tar.stdout,
                             env=self.env(), capture_output=True, text=True)
        tar.stdout.close()
        if tar.wait() != 0 or imp.returncode != 0:
            raise EngineError(f"docker import of {root} failed: {imp.stderr.strip()}")
        shutil.rmtree(root)
        return BASE_IMAGE


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
