"""The Ray executor's parts that need no cluster: the worker's task run in-process for every
kind of item (equal to the one-machine cache, under the key the driver's probe finds), a rerun
that finds everything cached and starts no Ray, one-line errors for bad addresses, and a
`precompute` without --ray that never imports Ray. tests/test_ray.py runs it on a cluster."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sae_backend import settings
from sae_backend.cache import ArrayCache, decode_blob, encode_blob
from sae_backend.cli import main
from sae_backend.distributed import executor
from sae_backend.distributed.capture import Capture, Missing, Probe
from sae_backend.distributed.tasks import Call, Result, Slot, run_item, settings_of
from sae_backend.errors import InputError
from sae_backend.loader import load
from sae_backend.precompute import Item, plan, precompute
from tests.factories import write_saelens
from tests.ray_cluster import free_port

ROOT = Path(__file__).resolve().parents[1]
D = 24


@pytest.fixture()
def paths(tmp_path):
    """a [220, d] with encoder; b a noisy permuted copy of a's first 200 rows, with encoder;
    c [150, d] without: c's encoder items are skipped."""
    rng = np.random.default_rng(8)
    dec_a = rng.standard_normal((220, D))
    dec_b = dec_a[rng.permutation(200)] + 0.1 * rng.standard_normal((200, D))
    return {
        "a": str(write_saelens(tmp_path / "a", dec_a, rng.standard_normal((220, D)))),
        "b": str(write_saelens(tmp_path / "b", dec_b, rng.standard_normal((200, D)))),
        "c": str(write_saelens(tmp_path / "c", rng.standard_normal((150, D)), None)),
    }


def test_every_kind_of_item_runs_as_a_task_under_the_drivers_key(paths, tmp_path):
    """For each planned item (compare, null, match, umap): the driver's Probe of an empty
    cache raises Missing(key); the worker's run_item, given the dictionaries as its trailing
    arguments, returns that key's blob, equal to what the one-machine precompute stored."""
    dicts = {n: load(p) for n, p in paths.items()}
    reference = ArrayCache(tmp_path / "reference")
    outcomes = precompute(dicts, cache=reference)
    assert {o.status for o in outcomes} == {"computed", "skipped"}
    empty = ArrayCache(tmp_path / "empty")
    items = [i for i in plan(dicts, cache=empty) if i.call is not None]
    assert {i.kind for i in items} == {"compare", "null", "match", "umap"}
    for item in items:
        with pytest.raises(Missing) as missing:
            item.call(cache=Probe(empty))
        call, ds = Call.of(item.call)
        assert all(isinstance(d, type(dicts["a"])) for d in ds)
        assert "cache" not in call.kwargs and len(ds) == len({id(d) for d in ds})
        result = run_item(call, "cpu", {}, *ds)
        assert result.error is None and result.node == "local"
        assert [key for key, _ in result.entries] == [missing.value.key]
        arrays, meta = decode_blob(result.entries[0][1])
        stored = reference.get(missing.value.key)
        assert stored is not None, item.label
        assert meta == stored[1] and list(arrays) == list(stored[0])
        for name in arrays:
            np.testing.assert_array_equal(arrays[name], stored[0][name], err_msg=item.label)
    assert len(empty) == 0  # probing never writes


def test_call_keeps_dictionaries_out_of_its_arguments(paths):
    dicts = {n: load(p) for n, p in paths.items()}
    umap_item = next(i for i in plan(dicts, kinds=["umap"], cache=True) if i.call is not None)
    call, ds = Call.of(umap_item.call)
    assert call.args == ([Slot(0), Slot(1)],) and ds == [dicts["a"], dicts["b"]]
    bound = call.bind(ds, device="cpu")
    assert bound.args == ([dicts["a"], dicts["b"]],) and bound.keywords["device"] == "cpu"
    with pytest.raises(TypeError):
        Call.of(lambda: None)


def test_workers_get_the_drivers_settings(monkeypatch):
    monkeypatch.delenv("SAE_TOPK_BLOCK_MB", raising=False)
    monkeypatch.delenv("SAE_TOPK_ENGINE", raising=False)
    monkeypatch.delenv("SAE_TOPK_PRECISION", raising=False)
    assert executor.worker_env() == {"SAE_HEAVY_PAIRS": str(2**62)}  # the lock is lifted
    monkeypatch.setenv("SAE_TOPK_BLOCK_MB", " 3 ")
    monkeypatch.setenv("SAE_TOPK_ENGINE", "torch")
    monkeypatch.setenv("SAE_TOPK_PRECISION", "fp32")
    assert executor.worker_env() == {
        "SAE_HEAVY_PAIRS": str(2**62), "SAE_TOPK_BLOCK_MB": "3", "SAE_TOPK_ENGINE": "torch",
        "SAE_TOPK_PRECISION": "fp32",
    }  # fmt: skip
    monkeypatch.setenv("SAE_TOPK_BLOCK_MB", "lots")
    with pytest.raises(InputError, match="SAE_TOPK_BLOCK_MB"):
        executor.worker_env()
    # a task applies them around its work, then the node's own environment is back
    monkeypatch.setenv("SAE_TOPK_BLOCK_MB", "64")  # the node's
    monkeypatch.delenv("SAE_HEAVY_PAIRS", raising=False)
    with settings_of({"SAE_TOPK_BLOCK_MB": "1", "SAE_HEAVY_PAIRS": "7"}):
        assert settings.TOPK_BLOCK_MB.get() == 1 and settings.HEAVY_PAIRS.get() == 7
    assert os.environ["SAE_TOPK_BLOCK_MB"] == "64" and "SAE_HEAVY_PAIRS" not in os.environ


def test_the_run_knows_its_largest_pass_side(paths):
    """Whether a run must fix the CPU scoring path: the most rows on one side of an item's
    passes (a UMAP's kNN graph is one pass over all its points)."""
    dicts = {n: load(p) for n, p in paths.items()}
    sides = {}
    for item in plan(dicts, directions=["decoder"], cache=True):
        call, ds = Call.of(item.call)
        sides[(item.kind, item.label)] = executor._largest_side(call, ds)
    assert sides[("compare", "a -> b (decoder)")] == 220
    assert sides[("compare", "b within itself (decoder)")] == 200
    assert sides[("null", f"200 x 220, d {D} (as b -> a)")] == 220
    assert sides[("umap", "a + b (decoder)")] == 420


def test_capture_keeps_blobs_and_probe_only_reads(tmp_path):
    store = ArrayCache(tmp_path / "c")
    capture = Capture()
    arrays, meta = capture.get_or_compute("k/1", lambda: ({"x": np.arange(3)}, {"m": 1}))
    assert meta == {"m": 1} and arrays["x"].tolist() == [0, 1, 2] and capture.get("k/1") is None
    assert [k for k, _ in capture.entries] == ["k/1"] and len(store) == 0
    with pytest.raises(Missing):
        Probe(store).get_or_compute("k/1", lambda: pytest.fail("a probe never computes"))
    store.set("k/1", *decode_blob(capture.entries[0][1]))
    assert Probe(store).get_or_compute("k/1", lambda: pytest.fail("no"))[1] == {"m": 1}


def test_the_driver_stores_only_verified_complete_results(tmp_path):
    """What comes back from tasks: a damaged blob or a key the driver did not probe is a
    failed item and stores nothing; row shards arriving out of order are stored once all are
    in, concatenated in row order."""
    store = ArrayCache(tmp_path / "store")
    items = [Item("compare", f"item {i}", call=lambda: None) for i in range(3)]
    run = executor._Run(items, store, None, None)

    def blob(values: np.ndarray) -> bytes:
        return encode_blob({"values": values}, {})

    good = blob(np.arange(4, dtype=np.float32))
    damaged = good[:-1] + bytes([good[-1] ^ 1])
    run._collect(
        executor._Job(0, "compare/a", 0), 0, Result([("compare/a", damaged)], None, 1.0, "n")
    )
    run._collect(executor._Job(1, "compare/b", 0), 0, Result([("compare/x", good)], None, 1.0, "n"))
    job = executor._Job(2, "compare/c", 2)
    run._collect(job, 1, Result([("", blob(np.array([3.0, 4.0])))], None, 1.0, "n"))
    assert 2 not in run.done and store.get("compare/c") is None  # waits for shard 0
    run._collect(job, 0, Result([("", blob(np.array([1.0, 2.0])))], None, 2.0, "n"))
    assert [o.status for o in run.outcomes()] == ["failed", "failed", "computed"]
    assert "checksum" in run.done[0].message and "other keys" in run.done[1].message
    assert run.done[2].seconds == 3.0 and len(store) == 1
    np.testing.assert_array_equal(store.get("compare/c")[0]["values"], [1.0, 2.0, 3.0, 4.0])


def test_a_rerun_with_everything_cached_starts_no_ray(paths, tmp_path, monkeypatch):
    dicts = {n: load(p) for n, p in paths.items()}
    store = ArrayCache(tmp_path / "store")
    first = precompute(dicts, kinds=["compare", "null", "match"], cache=store)

    def no_cluster(*args, **kwargs):
        raise AssertionError("nothing to compute, yet a Ray connection was made")

    monkeypatch.setattr(executor, "connected", no_cluster)
    seen = []
    again = executor.precompute_on_ray(
        dicts, kinds=["compare", "null", "match"], cache=store,
        report=lambda i, n, o: seen.append((i, n)),
    )  # fmt: skip
    assert [(o.kind, o.label) for o in again] == [(o.kind, o.label) for o in first]
    assert [o.status for o in again] == [
        "skipped" if o.status == "skipped" else "cached" for o in first
    ]
    assert seen == [(i, len(first)) for i in range(1, len(first) + 1)]


def test_unreachable_or_malformed_address_is_one_line_in_seconds(paths, capsys, monkeypatch):
    port = free_port()  # nothing listens there once the probe socket is closed
    for address, needle in (
        (f"127.0.0.1:{port}", f"cannot reach a Ray cluster at 127.0.0.1:{port}"),
        ("127.0.0.1", "expected HOST:PORT"),
        ("127.0.0.1:99999", "expected HOST:PORT"),
        ("ray://127.0.0.1:10001", "Ray Client addresses"),
    ):
        start = time.monotonic()
        assert main(["precompute", paths["a"], "--ray", address]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
        assert time.monotonic() - start < 10  # before loading anything, without Ray
    assert main(["precompute", paths["a"], "--shard-rows", "10"]) == 2
    assert "give --ray too" in capsys.readouterr().err
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "ray", None)  # as if Ray were not installed
        assert main(["precompute", paths["a"], "--ray"]) == 2
        assert capsys.readouterr().err == (
            "error: --ray needs Ray: pip install -r requirements-ray.txt\n"
        )
    with pytest.raises(InputError, match="auto, cpu or cuda"):
        executor.precompute_on_ray({}, device="mps", cache=True)


def test_precompute_without_ray_never_imports_ray(paths, tmp_path):
    """`python -m sae_backend precompute` (and its --help) run without importing Ray."""
    script = (
        "import sys, runpy\n"
        "sys.argv = ['sae_backend', *sys.argv[1:]]\n"
        "try:\n"
        "    runpy.run_module('sae_backend', run_name='__main__')\n"
        "finally:\n"
        "    print('ray imported' if 'ray' in sys.modules else 'no ray', file=sys.stderr)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script, "precompute", paths["a"], "--no-umap",
         "--directions", "decoder", "--json"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT), "SAE_CACHE_DIR": str(tmp_path / "cache")},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stderr.strip().endswith("no ray"), run.stderr
