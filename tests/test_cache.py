"""Tests for sae_backend.cache: round trips, keys, no pickles, integrity, permissions, eviction,
one compute per key across threads and processes."""

from __future__ import annotations

import functools
import json
import multiprocessing as mp
import os
import pickle
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import diskcache
import numpy as np
import pytest

from sae_backend import settings
from sae_backend.cache import (
    MAGIC,
    ArrayCache,
    CorruptEntry,
    SafeDisk,
    decode_blob,
    default_cache,
    encode_blob,
    make_key,
)
from sae_backend.errors import InputError, SAEError

SMALL = 1_000  # bytes: stored inline in the sqlite database
LARGE = 100_000  # bytes: stored as a separate value file (diskcache's threshold is 32 KiB)


def _sample_arrays(nbytes: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    n = max(1, nbytes // 4)
    return {
        "f32": rng.standard_normal((n // 8, 8)).astype(np.float32),
        "i64": rng.integers(-(2**62), 2**62, size=7, dtype=np.int64),
        "bool": rng.random((3, 5)) > 0.5,
        "scalar": np.array(3.25, dtype=np.float64),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "f16": np.array([1.5, -2.0, np.inf], dtype=np.float16),
        "big_endian": np.arange(5, dtype=">i4"),
        "strided": np.arange(20, dtype=np.int32)[::3],
        "fortran": np.asfortranarray(rng.standard_normal((4, 3))),
        "unicode": np.array(["ab", "c"], dtype="<U2"),
    }


def _db_rows(directory: Path) -> list[tuple]:
    con = sqlite3.connect(directory / "cache.db")
    try:
        return con.execute("SELECT key, raw, mode, filename, value FROM Cache").fetchall()
    finally:
        con.close()


def _stored_bytes(directory: Path, key: str) -> bytes:
    """The bytes a key's entry holds on disk, inline or in its value file."""
    ((mode, filename, value),) = [(m, f, v) for k, _, m, f, v in _db_rows(directory) if k == key]
    return bytes(value) if filename is None else (directory / filename).read_bytes()


def _counting_compute(calls: list[int], value: float = 1.0):
    def compute():
        calls.append(1)
        return {"x": np.full((4, 3), value, dtype=np.float32)}, {"value": value}

    return compute


# ---------------------------------------------------------------------------------------------
# Round trip and format


@pytest.mark.parametrize("nbytes", [SMALL, LARGE])
def test_round_trip_keeps_dtype_shape_values(tmp_path, nbytes):
    arrays = _sample_arrays(nbytes)
    meta = {"source": "x.safetensors", "k": 5, "ratio": 0.25, "tags": ["a", None], "ok": True}
    ArrayCache(tmp_path).set("k", arrays, meta)

    got, got_meta = ArrayCache(tmp_path).get("k")  # a fresh instance reads what the first wrote
    assert list(got) == list(arrays)
    for name, want in arrays.items():
        assert got[name].dtype == want.dtype, name
        assert got[name].shape == want.shape, name
        np.testing.assert_array_equal(got[name], want, err_msg=name)
    assert got_meta == meta
    modes = {mode for _, _, mode, _, _ in _db_rows(tmp_path)}
    expected_mode = diskcache.core.MODE_RAW if nbytes == SMALL else diskcache.core.MODE_BINARY
    assert modes == {expected_mode}


def test_missing_key_is_none_and_set_replaces(tmp_path):
    cache = ArrayCache(tmp_path)
    assert cache.get("absent") is None
    cache.set("k", {"a": np.arange(3)})
    cache.set("k", {"b": np.ones(2, dtype=np.float32)}, {"n": 2})
    got, meta = cache.get("k")
    assert list(got) == ["b"] and meta == {"n": 2}
    np.testing.assert_array_equal(got["b"], np.ones(2, dtype=np.float32))


def test_every_single_byte_flip_is_detected():
    blob = encode_blob({"a": np.arange(6, dtype=np.int16).reshape(2, 3)}, {"m": 1})
    assert decode_blob(blob)[1] == {"m": 1}
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 0x01
        with pytest.raises(CorruptEntry):
            decode_blob(bytes(bad))
    for cut in (0, 10, len(blob) // 2, len(blob) - 1):
        with pytest.raises(CorruptEntry):
            decode_blob(blob[:cut])


# ---------------------------------------------------------------------------------------------
# Keys

_KEY_CASES = [
    ("neighbours", ("fp1",), {"k": 10, "kind": "decoder"}),
    ("match", ("fpA", "fpB"), {"thresholds": [0.5, 0.9], "alive_only": True, "limit": None}),
    ("umap", ("fp1",), {"seed": 0, "min_dist": 0.1}),
]


def test_keys_are_stable_across_processes():
    here = [make_key(kind, *fps, **params) for kind, fps, params in _KEY_CASES]
    script = (
        "import json, sys; from sae_backend.cache import make_key; "
        "cases = json.loads(sys.argv[1]); "
        "print(json.dumps([make_key(k, *f, **p) for k, f, p in cases]))"
    )
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", script, json.dumps(_KEY_CASES)],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        )
        assert json.loads(out.stdout) == here


def test_keys_differ_by_kind_fingerprint_and_params():
    base = make_key("match", "fpA", "fpB", k=10, t=0.5)
    variants = [
        make_key("neighbours", "fpA", "fpB", k=10, t=0.5),
        make_key("match", "fpB", "fpA", k=10, t=0.5),  # order of fingerprints matters
        make_key("match", "fpA", "fpC", k=10, t=0.5),
        make_key("match", "fpA", "fpB", k=11, t=0.5),
        make_key("match", "fpA", "fpB", k=10.0, t=0.5),  # 10 and 10.0 are different params
        make_key("match", "fpA", "fpB", k=True, t=0.5),
        make_key("match", "fpA", "fpB", k=10, t=0.5, extra=None),
        make_key("match", "fpA", "fpB", k=10, t=[0.5]),
        make_key("match", "fpAfpB", k=10, t=0.5),  # no ambiguity from concatenation
    ]
    assert len({base, *variants}) == len(variants) + 1
    assert make_key("match", "fpA", "fpB", t=0.5, k=10) == base  # keyword order does not matter
    assert make_key("match", "fpA", "fpB", k=np.int64(10), t=np.float64(0.5)) == base
    assert base.startswith("match/")


@pytest.mark.parametrize("bad", [np.zeros(3), {"a": 1}, float("nan"), object(), [1, {2}], b"bytes"])
def test_keys_refuse_non_plain_params(bad):
    with pytest.raises(TypeError):
        make_key("kind", "fp", p=bad)


def test_keys_refuse_non_string_fingerprints():
    with pytest.raises(TypeError):
        make_key("kind", np.zeros(3))
    with pytest.raises(TypeError):
        make_key("", "fp")


# ---------------------------------------------------------------------------------------------
# No pickles, ever


def test_stored_values_are_raw_blobs_not_pickles(tmp_path):
    cache = ArrayCache(tmp_path)
    cache.set("small", _sample_arrays(SMALL), {"a": 1})
    cache.set("large", _sample_arrays(LARGE), {"a": 2})
    rows = _db_rows(tmp_path)
    assert len(rows) == 2
    for key, raw, mode, _, _ in rows:
        assert raw == 1 and isinstance(key, str)
        assert mode in (diskcache.core.MODE_RAW, diskcache.core.MODE_BINARY)
        data = _stored_bytes(tmp_path, key)
        assert data.startswith(MAGIC)
        assert not data.startswith(b"\x80")  # the pickle PROTO opcode
        with pytest.raises(pickle.UnpicklingError):
            pickle.loads(data)


@pytest.mark.parametrize(
    "arrays",
    [
        {"a": [1.0, 2.0]},  # a list, not an array
        {"a": np.array([object()], dtype=object)},
        {"a": np.zeros(2, dtype=[("x", "<f4"), ("y", "<i4")])},
        {1: np.zeros(2)},
        np.zeros(3),
    ],
)
def test_set_refuses_non_arrays_and_stores_nothing(tmp_path, arrays):
    cache = ArrayCache(tmp_path)
    with pytest.raises(TypeError):
        cache.set("k", arrays)
    assert cache.get("k") is None
    assert _db_rows(tmp_path) == []


def test_set_refuses_meta_that_is_not_json(tmp_path):
    cache = ArrayCache(tmp_path)
    with pytest.raises(TypeError):
        cache.set("k", {"a": np.zeros(2)}, {"when": object()})
    assert _db_rows(tmp_path) == []


def test_safe_disk_never_pickles_or_unpickles(tmp_path):
    cache = ArrayCache(tmp_path)
    raw = cache._cache  # the diskcache.Cache underneath, with SafeDisk
    assert isinstance(raw.disk, SafeDisk)
    for value in ({"a": 1}, [1, 2], 5, 1.5, np.zeros(3)):
        with pytest.raises(TypeError):
            raw.set("k", value)
    with pytest.raises(TypeError):
        raw.set(("tuple", "key"), b"bytes")  # a non-str key would be pickled
    assert _db_rows(tmp_path) == []
    with pytest.raises(CorruptEntry):
        raw.disk.get(pickle.dumps("k"), False)
    with pytest.raises(CorruptEntry):
        raw.disk.fetch(diskcache.core.MODE_PICKLE, None, pickle.dumps("v"), False)


class _Exploit:
    """Unpickling this runs os.mkdir(marker): what an attacker would plant."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.mark.parametrize("in_file", [False, True])
def test_planted_pickle_row_is_never_unpickled_and_is_recomputed(tmp_path, in_file):
    folder, marker = tmp_path / "cache", tmp_path / "PWNED"
    cache = ArrayCache(folder)
    key = make_key("neighbours", "fp", k=3)
    payload = pickle.dumps(_Exploit(marker))
    pickle.loads(payload)  # sanity: the payload really does create the marker when unpickled
    assert marker.is_dir()
    marker.rmdir()

    filename, value = None, payload
    if in_file:
        filename, value = "ab/cd/planted.val", None
        (folder / "ab" / "cd").mkdir(parents=True)
        (folder / filename).write_bytes(payload)
    con = sqlite3.connect(folder / "cache.db")
    with con:
        con.execute(
            "INSERT INTO Cache(key, raw, store_time, expire_time, access_time, access_count,"
            " tag, size, mode, filename, value) VALUES (?, 1, ?, NULL, ?, 0, NULL, ?, ?, ?, ?)",
            (
                key,
                time.time(),
                time.time(),
                len(payload),
                diskcache.core.MODE_PICKLE,
                filename,
                value,
            ),
        )
    con.close()

    assert cache.get(key) is None
    assert not marker.exists()
    calls: list[int] = []
    arrays, meta = cache.get_or_compute(key, _counting_compute(calls, 2.0))
    assert calls == [1] and meta == {"value": 2.0}
    np.testing.assert_array_equal(arrays["x"], np.full((4, 3), 2.0, dtype=np.float32))
    assert not marker.exists()
    assert cache.stats.dropped >= 1
    assert _stored_bytes(folder, key).startswith(MAGIC)  # the planted row was replaced


# ---------------------------------------------------------------------------------------------
# Integrity


def _flip_inline_value(directory: Path, key: str) -> None:
    con = sqlite3.connect(directory / "cache.db")
    with con:
        (value,) = con.execute("SELECT value FROM Cache WHERE key = ?", (key,)).fetchone()
        bad = bytearray(value)
        bad[len(bad) // 2] ^= 0xFF
        con.execute("UPDATE Cache SET value = ? WHERE key = ?", (bytes(bad), key))
    con.close()


def _flip_file_value(directory: Path, key: str) -> None:
    path = directory / next(f for k, _, _, f, _ in _db_rows(directory) if k == key)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate_file_value(directory: Path, key: str) -> None:
    path = directory / next(f for k, _, _, f, _ in _db_rows(directory) if k == key)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    ("nbytes", "damage"),
    [(SMALL, _flip_inline_value), (LARGE, _flip_file_value), (LARGE, _truncate_file_value)],
)
def test_corrupt_entry_is_dropped_and_recomputed(tmp_path, nbytes, damage):
    cache = ArrayCache(tmp_path)
    key = make_key("stats", "fp")
    want = _sample_arrays(nbytes)
    calls: list[int] = []

    def compute():
        calls.append(1)
        return want, {"n": len(calls)}

    cache.get_or_compute(key, compute)
    damage(tmp_path, key)
    assert cache.get(key) is None  # never returned, never raised
    arrays, meta = cache.get_or_compute(key, compute)
    assert len(calls) == 2 and meta == {"n": 2}
    for name in want:
        np.testing.assert_array_equal(arrays[name], want[name])
    assert cache.stats.dropped == 1
    assert cache.get(key)[1] == {"n": 2}  # the recomputed entry is stored intact


# ---------------------------------------------------------------------------------------------
# Folder, permissions, size limit


def test_folder_and_files_are_owner_only(tmp_path):
    old = os.umask(0o022)
    try:
        folder = tmp_path / "cache"
        folder.mkdir(mode=0o755)  # an existing, too-open folder is tightened
        cache = ArrayCache(folder)
        cache.set("small", _sample_arrays(SMALL))
        cache.get_or_compute("large", lambda: (_sample_arrays(LARGE), {}))
        assert cache.get("large") is not None
    finally:
        os.umask(old)
    files = dirs = 0
    for root, _dirs, filenames in os.walk(folder):
        assert stat.S_IMODE(os.stat(root).st_mode) == 0o700, root
        dirs += 1
        for name in filenames:
            assert stat.S_IMODE(os.stat(Path(root, name)).st_mode) == 0o600, name
            files += 1
    assert dirs >= 4 and files >= 3  # root, locks, two value levels; db, value file, lock file


def test_size_limit_evicts_least_recently_used(tmp_path):
    limit = 600_000
    cache = ArrayCache(tmp_path, size_limit=limit)
    keys = [f"k{i}" for i in range(10)]
    for i, key in enumerate(keys):
        cache.set(key, {"x": np.full(LARGE // 8, i, dtype=np.float64)})
        assert cache.volume() <= limit
        assert cache.get(keys[0]) is not None  # k0 is used after every store, so it stays
    present = [key for key in keys if cache.get(key) is not None]
    assert keys[0] in present and keys[-1] in present
    assert keys[1] not in present  # the least recently used one went first
    assert 3 <= len(present) < len(keys)
    np.testing.assert_array_equal(cache.get(keys[-1])[0]["x"], np.full(LARGE // 8, 9.0))


def test_entry_larger_than_limit_is_kept_until_next_store(tmp_path):
    cache = ArrayCache(tmp_path, size_limit=50_000)
    cache.set("big", {"x": np.zeros(LARGE // 8)})
    assert cache.get("big") is not None
    cache.set("small", {"x": np.zeros(4)})
    assert cache.get("big") is None and cache.get("small") is not None


def test_clear_and_volume(tmp_path):
    cache = ArrayCache(tmp_path)
    empty = cache.volume()
    cache.set("a", {"x": np.zeros(LARGE // 8)})
    assert cache.volume() >= empty + LARGE
    cache.clear()
    assert cache.get("a") is None and cache.volume() < empty + LARGE


def test_default_cache_honours_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SAE_CACHE_DIR", str(tmp_path / "root"))
    monkeypatch.setenv("SAE_CACHE_SIZE_LIMIT", "123456789")
    default_cache.cache_clear()
    try:
        cache = default_cache()
        assert cache is default_cache()
        assert cache.directory == tmp_path / "root" / "sae_geometry"
        assert cache.size_limit == 123456789
        assert stat.S_IMODE(os.stat(cache.directory).st_mode) == 0o700

        monkeypatch.delenv("SAE_CACHE_DIR")
        monkeypatch.delenv("SAE_CACHE_SIZE_LIMIT")
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        default_cache.cache_clear()
        cache = default_cache()
        assert cache.directory == tmp_path / "home" / ".cache" / "sae_geometry"
        assert cache.size_limit == settings.CACHE_SIZE_LIMIT.default == 8 * 10**9

        monkeypatch.setenv("SAE_CACHE_SIZE_LIMIT", "lots")
        default_cache.cache_clear()
        with pytest.raises(InputError, match="SAE_CACHE_SIZE_LIMIT"):
            default_cache()
    finally:
        default_cache.cache_clear()


# ---------------------------------------------------------------------------------------------
# One compute per key


def test_threads_compute_once(tmp_path):
    cache = ArrayCache(tmp_path)
    calls: list[int] = []
    start = threading.Barrier(8)
    results: list = [None] * 8

    def compute():
        calls.append(1)
        time.sleep(0.3)
        return {"x": np.arange(50, dtype=np.float32) * 2}, {"who": threading.get_ident()}

    def worker(i):
        start.wait()
        results[i] = cache.get_or_compute("shared", compute)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert calls == [1]
    for arrays, meta in results:
        np.testing.assert_array_equal(arrays["x"], np.arange(50, dtype=np.float32) * 2)
        assert meta == results[0][1]
    assert cache.stats.misses == 1 and cache.stats.hits == 7


def _slow_compute(counter: str):
    with open(counter, "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(0.5)
    return {"x": np.arange(1000, dtype=np.float32) * 3}, {"pid": os.getpid()}


def _process_worker(directory: str, key: str, counter: str, barrier, out: str) -> None:
    cache = ArrayCache(directory)
    barrier.wait()
    arrays, meta = cache.get_or_compute(key, functools.partial(_slow_compute, counter))
    np.save(out + ".npy", arrays["x"], allow_pickle=False)
    Path(out + ".json").write_text(json.dumps(meta))


def test_processes_compute_once(tmp_path):
    ctx = mp.get_context("spawn")
    n = 3
    barrier = ctx.Barrier(n)
    counter = tmp_path / "computes.txt"
    procs = [
        ctx.Process(
            target=_process_worker,
            args=(
                str(tmp_path / "cache"),
                "shared",
                str(counter),
                barrier,
                str(tmp_path / f"o{i}"),
            ),
        )
        for i in range(n)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * n
    assert len(counter.read_text().splitlines()) == 1
    metas = [json.loads((tmp_path / f"o{i}.json").read_text()) for i in range(n)]
    assert all(m == metas[0] for m in metas)  # everyone got the one computed result
    for i in range(n):
        got = np.load(tmp_path / f"o{i}.npy", allow_pickle=False)
        np.testing.assert_array_equal(got, np.arange(1000, dtype=np.float32) * 3)


def _run_in_thread(fn, timeout: float = 20.0):
    """fn() in a thread; fails instead of hanging if it does not finish in time."""
    out: dict = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as e:  # re-raised in the test's thread below
            out["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "get_or_compute is still waiting: the key's lock was not released"
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_compute_that_raises_stores_nothing_and_releases_the_lock(tmp_path):
    cache = ArrayCache(tmp_path)

    def boom():
        raise ValueError("compute failed")

    with pytest.raises(ValueError, match="compute failed"):
        cache.get_or_compute("k", boom)
    assert cache.get("k") is None and _db_rows(tmp_path) == []
    assert cache.stats.failures == 1

    calls: list[int] = []
    other = ArrayCache(tmp_path)  # another instance, another thread: separate lock descriptor
    _run_in_thread(lambda: other.get_or_compute("k", _counting_compute(calls)))
    assert calls == [1]
    assert cache.get("k")[1] == {"value": 1.0}


def test_compute_returning_junk_stores_nothing(tmp_path):
    cache = ArrayCache(tmp_path)
    with pytest.raises(TypeError):
        cache.get_or_compute("k", lambda: {"x": np.zeros(2)})  # not (arrays, meta)
    with pytest.raises(TypeError):
        cache.get_or_compute("k", lambda: ({"x": [1, 2]}, {}))
    assert _db_rows(tmp_path) == [] and cache.stats.failures == 2


def _die_while_computing(directory: str, started: str) -> None:
    def compute():
        Path(started).touch()
        os._exit(3)  # the holder dies without any cleanup

    ArrayCache(directory).get_or_compute("k", compute)


def test_lock_is_released_when_its_holder_dies(tmp_path):
    started = tmp_path / "started"
    proc = mp.get_context("spawn").Process(
        target=_die_while_computing, args=(str(tmp_path / "cache"), str(started))
    )
    proc.start()
    proc.join(60)
    assert proc.exitcode == 3 and started.exists()
    cache = ArrayCache(tmp_path / "cache")
    calls: list[int] = []
    arrays, _ = _run_in_thread(lambda: cache.get_or_compute("k", _counting_compute(calls)))
    assert calls == [1] and arrays["x"].shape == (4, 3)


def test_reentrant_compute_of_same_key_raises_instead_of_deadlocking(tmp_path):
    cache = ArrayCache(tmp_path)

    def compute():
        return cache.get_or_compute("k", lambda: ({}, {}))

    with pytest.raises(RuntimeError, match="inside its own compute"):
        _run_in_thread(lambda: cache.get_or_compute("k", compute))
    assert cache.get("k") is None


def test_computed_and_cached_results_look_alike(tmp_path):
    cache = ArrayCache(tmp_path)
    fresh, _ = cache.get_or_compute("k", lambda: ({"x": np.arange(3.0)}, {}))
    cached, _ = cache.get_or_compute("k", lambda: pytest.fail("should be cached"))
    for arr in (fresh["x"], cached["x"]):
        assert arr.dtype == np.float64 and not arr.flags.writeable
        np.testing.assert_array_equal(arr, np.arange(3.0))
    assert cache.stats.hits == 1 and cache.stats.misses == 1


def test_bad_size_limit_is_an_input_error(tmp_path):
    with pytest.raises(InputError):
        ArrayCache(tmp_path, size_limit=0)
    with pytest.raises(InputError):
        ArrayCache(tmp_path, size_limit=1.5)


def test_unreadable_database_is_one_clear_error(tmp_path):
    (tmp_path / "cache.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(SAEError, match="unreadable") as info:
        ArrayCache(tmp_path)
    assert "\n" not in str(info.value)


def test_text_values_are_read_back_but_never_returned_as_entries(tmp_path):
    cache = ArrayCache(tmp_path)
    cache._cache.set("k", "x" * 100_000)  # str is allowed by SafeDisk (text file, no pickle)
    assert cache._cache.get("k") == "x" * 100_000
    assert cache.get("k") is None and cache.stats.dropped == 1
