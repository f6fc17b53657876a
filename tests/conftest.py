"""Shared test setup."""

from __future__ import annotations

import os
import socket

import pytest

# The Triton top-k kernels run on CPU tensors only under Triton's interpreter, which is chosen
# when a kernel is defined: set it before anything imports triton. On a GPU machine
# (SAE_TEST_DEVICE=cuda) the same tests run the compiled kernels instead.
if os.environ.get("SAE_TEST_DEVICE", "cpu") == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Safety net for every test: a name lookup other than loopback fails the test instead of
    reaching the network (the W&B client's Go side is pointed at the fake by WANDB_BASE_URL)."""
    real = socket.getaddrinfo

    def guarded(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise AssertionError(f"test tried to reach {host!r}: tests must stay on loopback")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)


@pytest.fixture(autouse=True)
def private_cache_dir(tmp_path_factory, monkeypatch):
    """Every test gets its own empty SAE_CACHE_DIR, so no test reads or fills ~/.cache."""
    from sae_backend.cache import default_cache

    monkeypatch.setenv("SAE_CACHE_DIR", str(tmp_path_factory.mktemp("sae_cache")))
    default_cache.cache_clear()
    yield
    default_cache.cache_clear()


@pytest.fixture(autouse=True)
def fresh_server_state():
    """Every test starts like a fresh server: the dashboard's shared in-memory store and its
    register of background jobs are emptied (if a test has imported them), so no result
    computed by an earlier test is found in memory."""
    import sys

    for module, name in (("dashboard.store", "shared_memory"), ("dashboard.background", "jobs")):
        if module in sys.modules:
            getattr(sys.modules[module], name).clear()
    yield
