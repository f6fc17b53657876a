"""Connecting to a Ray cluster, or starting a private Ray for one run, with Ray's output kept
off stdout. The only module that imports Ray, and only when `connected` or `check_reachable`
runs (`precompute --ray`); see ../shared/reference/ray-notes.md for what is measured here:

* An unreachable address makes `ray.init` hang for minutes, printing C++ warnings: a TCP
  probe of the address comes first and fails in seconds with one line.
* Ray prints lines such as "(raylet) Task ... will be retried" on the driver's stdout even
  with log_to_driver=False, which would break `--json`: while connected, file descriptor 1 is
  pointed at stderr, so whatever Ray (Python or C++) writes there lands on stderr.
* Without an address, the Ray started here listens on loopback only (Ray's own switch,
  RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, set before Ray is imported), sends no usage report,
  and requires a token that only this run knows (RAY_AUTH_TOKEN in its environment): a
  plain local `ray.init()` would write one to ~/.ray/auth_token, which later `ray start`
  clusters of the same user then silently require.
* Workers run in their node's environment, not the driver's: the settings a computation
  reads travel with each task as an argument (`executor.worker_env`, `tasks.settings_of`),
  which, unlike a job-wide runtime_env, lets Ray hand tasks to the workers it started in
  advance (1-5 s less per run here).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import secrets
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType

from ..errors import ClusterError, one_line

__all__ = ["Cluster", "check_installed", "check_reachable", "connected", "parse_address"]

PROBE_SECONDS = 5.0  # a TCP connect to a live head answers in milliseconds, even across a WAN


@dataclass(frozen=True)
class Cluster:
    """A connected Ray (the module, to call) and what it offers."""

    ray: ModuleType
    address: str  # "local" for a Ray started by this run
    nodes: int
    cpus: float
    gpus: float

    def describe(self) -> str:
        return (
            f"ray: {self.nodes} node{'s' * (self.nodes != 1)} at {self.address}, "
            f"{self.cpus:g} CPUs, {self.gpus:g} GPUs"
        )


def check_installed() -> None:
    """One ClusterError line unless Ray can be imported (it is an optional extra)."""
    try:
        found = importlib.util.find_spec("ray") is not None
    except ValueError:  # sys.modules["ray"] is None: imports of it are blocked
        found = False
    if not found:
        raise ClusterError("--ray needs Ray: pip install -r requirements-ray.txt")


def parse_address(address: str) -> tuple[str, int]:
    """(host, port) of a head's GCS address "HOST:PORT", or one ClusterError line."""
    if address.startswith("ray://"):
        raise ClusterError(
            f"--ray {address}: give the head's address HOST:PORT (`ray start --head --port=PORT`); "
            "Ray Client addresses (ray://) are not supported"
        )
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")  # [::1]:6379
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClusterError(f"--ray {address!r}: expected HOST:PORT, e.g. 10.0.0.5:6379")
    return host, int(port)


def check_reachable(address: str, timeout: float = PROBE_SECONDS) -> None:
    """One ClusterError line, within `timeout` seconds, unless something listens at `address`."""
    host, port = parse_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except socket.gaierror as e:
        why = f"unknown host ({e.strerror})"
    except TimeoutError:
        why = f"no answer in {timeout:g} s"
    except OSError as e:
        why = e.strerror or type(e).__name__
    raise ClusterError(
        f"cannot reach a Ray cluster at {address}: {why}; start one with "
        "`ray start --head --port=PORT` or check the address"
    )


@contextlib.contextmanager
def connected(address: str | None) -> Iterator[Cluster]:
    """Ray connected to the cluster at `address` (None: a private Ray on this machine, on
    loopback, stopped at the end), stdout pointed at stderr meanwhile, shut down after."""
    check_installed()
    if address is not None:
        check_reachable(address)
    else:
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # loopback only (read at import)
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if "RAY_AUTH_MODE" not in os.environ:  # token auth with a token of this run only
            os.environ["RAY_AUTH_MODE"] = "token"
            os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    with _stdout_to_stderr():
        import ray

        try:
            ray.init(
                address=address or "local",  # "local": a new Ray, never one found running here
                include_dashboard=False if address is None else None,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
        except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as e:
            raise ClusterError(
                f"cannot connect to Ray at {address or 'a local instance'}: {one_line(e, 160)}"
            ) from None
        try:
            resources = ray.cluster_resources()
            nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
            yield Cluster(
                ray, address or "local", nodes,
                float(resources.get("CPU", 0)), float(resources.get("GPU", 0)),
            )  # fmt: skip
        finally:
            ray.shutdown()


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Point file descriptor 1 at stderr (Python's and C++'s writes alike), then restore it."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
