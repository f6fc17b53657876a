"""A real Ray cluster of several nodes on this machine, on loopback only, for the tests.

Each node is `ray start --block` (through tests/ray_node.py, which keeps it on 127.0.0.1) with
one CPU, no dashboard, its own temp folder and its own SAE_CACHE_DIR, in a session of its
own; every node and driver gets the cluster's own auth token through its environment. Stopping: SIGTERM to each node's `ray start` pid (joined nodes first, then the head), then
SIGKILL to whatever is left of the node's session; never `ray stop`, which ends every Ray
process on the machine. A test run that is killed still takes its cluster down: each `ray
start` gets SIGTERM when its parent dies (prctl PR_SET_PDEATHSIG), and Ray ties the node's own
processes to it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NODE_SCRIPT = Path(__file__).with_name("ray_node.py")
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # Ray keeps 127.0.0.1 (ray_node.py)
QUIET_ENV = {"RAY_USAGE_STATS_ENABLED": "0"}  # no usage report to the network
_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """preexec_fn: SIGTERM this child when the process that started it dies."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Node:
    proc: subprocess.Popen
    temp_dir: Path  # Ray's --temp-dir (sessions, logs, sockets)
    cache_dir: Path  # the node's SAE_CACHE_DIR: what its workers inherit
    log: Path

    @property
    def sid(self) -> int:
        return self.proc.pid  # start_new_session: the node's `ray start` leads its session

    def pids(self) -> list[int]:
        """Every live process of this node: its session (Ray puts each worker in a process
        group of its own, but all stay in the session of the node's `ray start`)."""
        return session_pids(self.sid)

    def worker_pids(self, task: str) -> list[int]:
        """Worker processes of this node now running a task named `task` (title ray::task)."""
        return [pid for pid in self.pids() if _cmdline(pid).startswith(f"ray::{task}")]


@dataclass
class LocalCluster:
    address: str
    nodes: list[Node] = field(default_factory=list)  # the head first
    root: Path | None = None
    object_store_mb: int = 200  # each node's
    token: str = field(default_factory=lambda: secrets.token_hex(32))

    @property
    def auth_env(self) -> dict[str, str]:
        """Token auth with this cluster's own token, given to every node and driver through
        the environment: no ~/.ray/auth_token is read or written, and no other process on
        the machine can use the cluster's loopback ports."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    def driver_env(self, **extra: str) -> dict[str, str]:
        """Environment for a driver process (the CLI) connecting to this cluster."""
        return {**os.environ, **LOOPBACK_ENV, **QUIET_ENV, **self.auth_env,
                "PYTHONPATH": str(ROOT), **extra}  # fmt: skip

    def pids(self) -> list[int]:
        return [pid for node in self.nodes for pid in node.pids()]


def start_cluster(
    n_nodes: int = 2, *, node_env: dict[str, str] | None = None, object_store_mb: int = 200
) -> LocalCluster:
    """A head and n_nodes - 1 joined nodes, one CPU each, all up and registered."""
    root = Path(tempfile.mkdtemp(prefix="sae-ray-", dir="/tmp"))  # short: Ray's socket paths
    port = free_port()
    cluster = LocalCluster(f"127.0.0.1:{port}", root=root, object_store_mb=object_store_mb)
    try:
        head = ["--head", f"--port={port}", "--include-dashboard=false"]
        cluster.nodes.append(_start_node(cluster, root / "n0", head, node_env))
        _wait_listening(port, cluster.nodes[0])  # the GCS: the others may join meanwhile
        for _ in range(1, n_nodes):
            add_node(cluster, node_env=node_env, wait=False)
        for node in cluster.nodes:
            _wait_ready(node)
    except BaseException:
        stop_cluster(cluster)
        raise
    return cluster


def add_node(
    cluster: LocalCluster, *, node_env: dict[str, str] | None = None, wait: bool = True
) -> Node:
    """One more node (one CPU) joining `cluster`."""
    assert cluster.root is not None
    where = [f"--address={cluster.address}"]
    node = _start_node(cluster, cluster.root / f"n{len(cluster.nodes)}", where, node_env)
    cluster.nodes.append(node)
    if wait:
        _wait_ready(node)
    return node


def _start_node(
    cluster: LocalCluster, folder: Path, where: list[str], node_env: dict[str, str] | None
) -> Node:
    cache_dir = folder / "cache"
    cache_dir.mkdir(parents=True)
    log = folder / "ray_start.log"
    env = {**os.environ, **LOOPBACK_ENV, **QUIET_ENV, **cluster.auth_env,
           "PYTHONPATH": str(ROOT), "SAE_CACHE_DIR": str(cache_dir), **(node_env or {})}  # fmt: skip
    args = [
        sys.executable, str(NODE_SCRIPT), "start", *where, "--num-cpus=1", "--num-gpus=0",
        f"--object-store-memory={cluster.object_store_mb * 10**6}", f"--temp-dir={folder / 'ray'}",
        f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
        "--disable-usage-stats", "--block",
    ]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            args, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=_die_with_parent,
        )  # fmt: skip
    return Node(proc, folder / "ray", cache_dir, log)


def _wait_listening(port: int, node: Node, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.proc.poll() is not None:
            raise RuntimeError(f"ray start exited: {node.log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.1)
    raise RuntimeError(
        f"no head on port {port} after {timeout:.0f} s: {node.log.read_text()[-2000:]}"
    )


def _wait_ready(node: Node, timeout: float = 120.0) -> None:
    """Until the node's raylet has registered (it logs "Raylet of id ... started")."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.proc.poll() is not None:
            raise RuntimeError(f"ray start exited: {node.log.read_text()[-2000:]}")
        for path in node.temp_dir.glob("session_*/logs/raylet.out"):
            if "Raylet of id" in path.read_text(errors="replace"):
                return
        time.sleep(0.2)
    raise RuntimeError(f"node not ready after {timeout:.0f} s: {node.log.read_text()[-2000:]}")


def stop_cluster(cluster: LocalCluster) -> None:
    """Stop every node by pid (joined nodes first), sweep each node's session, and
    remove the cluster's folders."""
    for node in reversed(cluster.nodes):
        if node.proc.poll() is None:
            node.proc.terminate()
            try:
                node.proc.wait(30)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait(10)
    for node in cluster.nodes:
        for pid in node.pids():  # what outlived its node's SIGTERM (agents, workers)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    if cluster.root is not None:
        shutil.rmtree(cluster.root, ignore_errors=True)


# ---- processes and their sockets, from /proc -------------------------------------------------


def session_pids(sid: int) -> list[int]:
    """Every live process of the session `sid` (a process started with start_new_session)."""
    return [pid for pid in _all_pids() if _sid(pid) == sid]


def _all_pids() -> Iterator[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    return inodes


def _address(hex_addr: str) -> str:
    """'0100007F:1F90' or a 32-hex-digit IPv6 address with port -> 'host'."""
    host = hex_addr.split(":")[0]
    if len(host) == 8:
        return socket.inet_ntop(socket.AF_INET, bytes.fromhex(host)[::-1])
    words = [bytes.fromhex(host[i : i + 8])[::-1] for i in range(0, 32, 8)]
    return socket.inet_ntop(socket.AF_INET6, b"".join(words))


def listening(pids: Iterable[int]) -> list[tuple[int, str, str, int]]:
    """(pid, protocol, local host, port) of every listening TCP socket and bound UDP socket
    held by `pids`."""
    owner = {inode: pid for pid in pids for inode in _socket_inodes(pid)}
    found = []
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        with contextlib.suppress(OSError):
            lines = Path(f"/proc/net/{proto}").read_text().splitlines()[1:]
            for line in lines:
                cols = line.split()
                local, state, inode = cols[1], cols[3], int(cols[9])
                if inode in owner and (proto.startswith("udp") or state == "0A"):
                    port = int(local.rsplit(":", 1)[1], 16)
                    found.append((owner[inode], proto, _address(local), port))
    return found


LOOPBACK_HOSTS = ("127.0.0.1", "::1", "::ffff:127.0.0.1")
