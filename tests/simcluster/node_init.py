"""PID 1 of one simulated node (stdlib only).

Started by the cluster as ``unshare --net --pid --mount --uts --fork --mount-proc python3
node_init.py SPEC.json``, so it is the first process of a fresh PID namespace, with its own
network namespace (the host moves a veth end in and configures it), mount namespace (private
propagation, so nothing mounted here shows on the host) and hostname.

What it sets up, from SPEC (written by tests.simcluster.cluster):

- the hostname;
- a private ``/tmp`` (a bind of the node's own folder, so the host can read Ray's logs there)
  and a private ``/dev/shm`` (Ray's object store);
- paths under ``/tmp`` that the node must still see at the same place (the state folder, the
  repository and its venv when a test put them under /tmp), re-bound on top of the new /tmp;
- a fresh sysfs (this network namespace's interfaces), with ``/sys/devices/system/cpu/online``
  showing ``cpus`` CPUs: a GPU node has dozens of cores, and slime's per-GPU placement bundles
  each ask for one, while this machine has two. Ray's CPU count comes from that file (glibc's
  get_nprocs), and the empty ``/sys/fs/cgroup`` of the fresh sysfs holds no quota to override it;
- ``/etc/hosts`` listing every node of the cluster;
- storage: with local storage the node's own folder (or a tmpfs of ``disk_mb``) is mounted over
  the shared base path, so each node has its own disk at the same path;
- then sshd, which daemonizes and so becomes our child.

After that it only reaps: Ray daemonizes its processes, and in a PID namespace orphans come to
PID 1; without reaping they would stay as zombies. PID 1 of a namespace ignores signals it has
no handler for, so only SIGKILL from the host ends it, and the kernel then kills every process
of the node at once: a power cut.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time


def run(*cmd: str, **kw) -> None:
    r = subprocess.run(list(cmd), capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise SystemExit(f"node_init: {' '.join(cmd)} failed: {r.stderr.strip()}")


_MS_BIND = 4096


def bind_fd(fd: int, target: str) -> None:
    """Bind the folder open as `fd` onto `target` with mount(2) itself: mount(8) would resolve
    /proc/self/fd/N to a path string, which names the covered folder's new, empty twin."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(f"/proc/self/fd/{fd}".encode(), target.encode(), None, _MS_BIND, None) != 0:
        err = ctypes.get_errno()
        raise SystemExit(f"node_init: bind of fd {fd} onto {target} failed: {os.strerror(err)}")


def main(spec_path: str) -> None:
    spec = json.loads(open(spec_path).read())
    nd = spec["node_dir"]
    socket.sethostname(spec["hostname"])

    # 1. private /tmp, keeping what must stay visible beneath it
    keep = {}
    for p in spec.get("keep_under_tmp", []):
        keep[p] = os.open(p, os.O_RDONLY | os.O_DIRECTORY)
    tmp_fd = os.open(os.path.join(nd, "tmp"), os.O_RDONLY | os.O_DIRECTORY)
    bind_fd(tmp_fd, "/tmp")
    os.chmod("/tmp", 0o1777)
    for p, fd in sorted(keep.items()):
        os.makedirs(p, exist_ok=True)
        bind_fd(fd, p)
        os.close(fd)
    os.close(tmp_fd)
    run("mount", "-t", "tmpfs", "-o", "mode=1777", f"shm-{spec['hostname']}", "/dev/shm")

    # 2. this namespace's sysfs, and the CPU count of a GPU node
    run("mount", "-t", "sysfs", "sysfs", "/sys")
    online = os.path.join(nd, "cpu_online")
    with open(online, "w") as f:
        f.write(f"0-{int(spec['cpus']) - 1}\n")
    run("mount", "--bind", online, "/sys/devices/system/cpu/online")
    run("mount", "--bind", spec["hosts_file"], "/etc/hosts")

    # 3. storage
    if spec["storage"] == "local":
        if spec.get("disk_mb"):
            run("mount", "-t", "tmpfs", "-o", f"size={int(spec['disk_mb'])}m,mode=0755",
                f"disk-{spec['hostname']}", spec["base_folder"])
        else:
            run("mount", "--bind", os.path.join(nd, "base"), spec["base_folder"])

    # 4. wait until the host has given us our address, then sshd (it daemonizes: our child)
    end = time.monotonic() + 30
    while not os.path.exists(os.path.join(nd, "net.ready")):
        if time.monotonic() > end:
            raise SystemExit("node_init: the host never configured this node's network")
        time.sleep(0.01)
    env = {"PATH": "/usr/sbin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    subprocess.run([spec["sshd"], "-f", spec["sshd_config"], "-E", os.path.join(nd, "sshd.log")],
                   env=env, cwd="/", check=True)
    with open(os.path.join(nd, "init.ready"), "w") as f:
        f.write(f"{os.getpid()}\n")

    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            time.sleep(0.2)
        except InterruptedError:
            pass


if __name__ == "__main__":
    main(sys.argv[1])
