"""`precompute --ray` on a real Ray cluster: a head and a second node of one CPU each, started
here on loopback (tests/ray_cluster.py), driven by the CLI in a subprocess as a user runs it.

* Killing the second node's worker in the middle of a task: Ray retries it and the run
  completes; the results it stores in the driver's cache are, key for key and bit for bit,
  those of the one-machine precompute (comparisons above --shard-rows split into row
  shards), and equal float64 on the planted structure; the nodes' own cache folders stay
  empty; --json stdout stays clean of Ray's messages.
* A rerun computes nothing (and connects to nothing).
* Every listening socket of the cluster, its workers and the driver is on loopback.
* `--ray` without an address starts a private Ray on loopback, with a token of its own, and
  leaves no process behind.

Deselect with `-m "not ray"` (about a minute on a quiet 2-core machine).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import diskcache
import numpy as np
import pytest

from sae_backend.cache import ArrayCache, SafeDisk, decode_blob
from sae_backend.geometry.compare import compare
from sae_backend.loader import load
from sae_backend.precompute import precompute
from tests.factories import unit_rows, write_saelens
from tests.ray_cluster import (
    LOOPBACK_HOSTS,
    ROOT,
    listening,
    session_pids,
    start_cluster,
    stop_cluster,
)

pytestmark = pytest.mark.ray

D = 48
SHARD_ROWS = "1300"  # with 1 MiB blocks: A's and B's comparisons split in two, C's not
DRIVER_SETTINGS = {"SAE_TOPK_BLOCK_MB": "1"}
NODE_SETTINGS = {"SAE_TOPK_BLOCK_MB": "64", "SAE_HEAVY_PAIRS": "1"}  # the driver's must win
COMPUTED_KINDS = ("compare", "match", "random_null")


@pytest.fixture(scope="module")
def cluster():
    c = start_cluster(2, node_env=NODE_SETTINGS)
    yield c
    stop_cluster(c)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A [1600, d] (three dead), B = a noisy copy of A's rows perm[:1400], C [1200, d]
    without encoder; and the one-machine precompute of them (no UMAP) as the reference."""
    root = tmp_path_factory.mktemp("planted")
    rng = np.random.default_rng(21)
    dec_a, enc_a = rng.standard_normal((1600, D)), rng.standard_normal((1600, D))
    dens_a = rng.uniform(1e-3, 1e-1, 1600)
    dens_a[[3, 700, 1599]] = 0.0
    perm = rng.permutation(1600)[:1400]
    dec_b = dec_a[perm] + 0.1 * rng.standard_normal((1400, D))
    enc_b = enc_a[perm] + 0.1 * rng.standard_normal((1400, D))
    paths = {
        "A": str(write_saelens(root / "A", dec_a, enc_a, density=dens_a)),
        "B": str(write_saelens(root / "B", dec_b, enc_b)),
        "C": str(write_saelens(root / "C", rng.standard_normal((1200, D)), None)),
    }
    reference = ArrayCache(root / "reference")
    with pytest.MonkeyPatch.context() as mp:
        for name, value in DRIVER_SETTINGS.items():
            mp.setenv(name, value)
        dicts = {p: load(p, cache=False) for p in paths.values()}
        outcomes = precompute(dicts, kinds=["compare", "null", "match"], cache=reference)
    counts = {s: sum(o.status == s for o in outcomes) for s in ("computed", "skipped")}
    return {"paths": paths, "perm": perm, "dec": (dec_a, dec_b), "reference": reference,
            "counts": counts, "root": root}  # fmt: skip


def cli(cluster, planted) -> list[str]:
    return [sys.executable, "-m", "sae_backend", "precompute", *planted["paths"].values(),
            "--no-umap", "--ray", cluster.address, "--shard-rows", SHARD_ROWS, "--json"]  # fmt: skip


def driver_env(cluster, cache_dir: Path) -> dict[str, str]:
    return cluster.driver_env(
        SAE_CACHE_DIR=str(cache_dir), PYTHONFAULTHANDLER="1", **DRIVER_SETTINGS
    )


def entries(folder: Path) -> dict[str, tuple[dict, dict]]:
    """Every computed entry (compare, match, random_null) of a cache folder, decoded."""
    with diskcache.Cache(str(folder), disk=SafeDisk) as c:
        return {k: decode_blob(c[k]) for k in c if k.split("/")[0] in COMPUTED_KINDS}


def assert_same_entries(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for key, (arrays, meta) in want.items():
        assert got[key][1] == meta and list(got[key][0]) == list(arrays), key
        for name, arr in arrays.items():
            np.testing.assert_array_equal(got[key][0][name], arr, err_msg=f"{key} {name}")


def summary(stdout: str) -> dict:
    return json.loads(stdout)  # the whole of stdout is the JSON summary, nothing of Ray's


def test_precompute_over_ray_survives_a_killed_worker_and_equals_one_machine(
    cluster, planted, tmp_path
):
    """One run over the two nodes, during which the second node's worker is killed (SIGKILL)
    while it runs one of the run's tasks: Ray re-runs the task; the driver's cache then holds,
    key for key and bit for bit, what the one-machine precompute stored, equal to float64 on
    the planted copies; stdout is the JSON summary only (Ray's "will be retried" lines went to
    stderr); every socket of the driver, the nodes and their workers is on loopback; the
    nodes' own cache folders stay empty. A rerun then computes nothing."""
    cache_dir = tmp_path / "driver"
    second = cluster.nodes[1]
    proc = subprocess.Popen(cli(cluster, planted), env=driver_env(cluster, cache_dir),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    killed, sockets, looked = None, set(), 0.0
    try:
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            if time.monotonic() - looked > 0.5:
                sockets.update(listening([proc.pid, *cluster.pids()]))
                looked = time.monotonic()
            busy = second.worker_pids("sae:") if killed is None else []
            if busy:  # its title says it is running one of the run's tasks
                os.kill(busy[0], signal.SIGKILL)
                killed = busy[0]
            time.sleep(0.01)
        if proc.poll() is None:  # stuck: PYTHONFAULTHANDLER prints every thread's stack
            os.kill(proc.pid, signal.SIGABRT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert killed is not None, "no task of the run ran on the second node"
    assert f"Worker PID: {killed}" in err and "will be retried" in err  # Ray said so, on stderr
    counts = summary(out)["counts"]
    # compare: 3 within + 6 pairs (decoder), 2 + 2 (encoder; C has none); 9 null sizes;
    # match: 6 decoder + 2 encoder; skipped: C's 5 encoder comparisons and 4 matchings
    assert counts == {"computed": 30, "cached": 0, "failed": 0, "skipped": 9}
    assert counts["computed"] == planted["counts"]["computed"]
    assert "ray: 2 nodes at 127.0.0.1:" in err and "Traceback" not in err
    assert sockets and {host for _, _, host, _ in sockets} <= set(LOOPBACK_HOSTS), sockets
    assert any(pid == proc.pid for pid, *_ in sockets)  # the driver's own server, on loopback

    store_dir = cache_dir / "sae_geometry"
    assert_same_entries(entries(store_dir), entries(planted["reference"].directory))
    for node in cluster.nodes:  # workers wrote nothing on their node: no cache, no lock file
        assert list(node.cache_dir.iterdir()) == [], node.cache_dir

    # what the pages read from the driver's cache equals float64 on the planted copies
    store = ArrayCache(store_dir)
    a, b = (load(planted["paths"][n], cache=False) for n in ("A", "B"))
    res = compare(b, a, cache=store)  # B's row j is a noisy copy of A's row perm[j]
    assert store.stats.misses == 0
    alive_source = a.alive[planted["perm"]]
    np.testing.assert_array_equal(res.nearest[alive_source], planted["perm"][alive_source])
    ua, ub = (unit_rows(m)[0] for m in planted["dec"])
    s64 = ub @ ua[a.alive_index].T
    np.testing.assert_allclose(res.max_cos, s64.max(1), atol=1e-6)
    np.testing.assert_array_equal(res.nearest, a.alive_index[s64.argmax(1)])

    again = subprocess.run(cli(cluster, planted), env=driver_env(cluster, cache_dir),
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert summary(again.stdout)["counts"] == {
        "computed": 0,
        "cached": 30,
        "failed": 0,
        "skipped": 9,
    }
    assert "ray: " not in again.stderr  # nothing to compute: no connection made


def test_ray_without_address_starts_a_private_ray_on_loopback(tmp_path):
    """`--ray` alone: a Ray started for the run, listening on loopback only, with a token of
    its own (nothing written to ~/.ray), gone when the run ends; same results as one machine."""
    rng = np.random.default_rng(3)
    paths = [str(write_saelens(tmp_path / n, rng.standard_normal((m, 16)), None))
             for n, m in (("p", 300), ("q", 250))]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(tmp_path / "home"),
           "SAE_CACHE_DIR": str(tmp_path / "driver"), "PYTHONFAULTHANDLER": "1"}  # fmt: skip
    for name in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(name, None)
    args = [sys.executable, "-m", "sae_backend", "precompute", *paths, "--ray", "--json",
            "--no-umap", "--no-match", "--directions", "decoder"]  # fmt: skip
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip
    sockets: set = set()
    try:
        deadline = time.monotonic() + 180
        while proc.poll() is None and time.monotonic() < deadline:
            sockets.update(listening(session_pids(proc.pid)))
            time.sleep(0.3)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGABRT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    # 2 within + 2 pairs, and their 4 nulls
    assert summary(out)["counts"] == {"computed": 8, "cached": 0, "failed": 0, "skipped": 0}
    assert "ray: 1 node at local" in err
    assert sockets and {host for _, _, host, _ in sockets} <= set(LOOPBACK_HOSTS), sockets
    gone = time.monotonic() + 20  # Ray's own processes wind down after the driver
    while session_pids(proc.pid) and time.monotonic() < gone:
        time.sleep(0.2)
    assert session_pids(proc.pid) == []
    assert not (tmp_path / "home" / ".ray").exists()
    reference = ArrayCache(tmp_path / "reference")
    dicts = {p: load(p, cache=False) for p in paths}
    precompute(dicts, kinds=["compare", "null"], directions=["decoder"], cache=reference)
    assert_same_entries(entries(tmp_path / "driver" / "sae_geometry"),
                        entries(reference.directory))  # fmt: skip
