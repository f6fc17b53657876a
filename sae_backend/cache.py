"""On-disk cache of named numpy arrays, keyed by content fingerprints plus parameters.

Why it looks like this:

* Keys are short strings from `make_key(kind, *fingerprints, **params)`: the caller passes the
  fingerprints it already has (`Dictionary.fingerprint`), so no big array is hashed per lookup.
* Values are raw bytes in our own blob format (below), never pickles. diskcache pickles any
  value that is not bytes/str/int/float and unpickles whatever a row says is a pickle, so
  anyone able to write the cache folder could run code. `SafeDisk` refuses to write anything
  but bytes/str and refuses to read pickle-mode rows; such rows count as corrupt entries.
* A corrupt, truncated or unsafe entry is dropped and recomputed; it never reaches the caller
  and never raises.
* `get_or_compute` computes each key once at a time, across threads and processes, with a
  per-key `fcntl.flock` lock file: the kernel releases it when its holder dies.
* The folder (`$SAE_CACHE_DIR/sae_geometry`, else `~/.cache/sae_geometry`) is owner-only
  (0o700, files 0o600) and bounded by a size limit with least-recently-used eviction.

Blob format (all integers little-endian):

    offset 0      8 bytes   magic b"SAEARR01"
    offset 8      32 bytes  blake2b-256 digest of everything from offset 40 to the end
    offset 40     8 bytes   uint64 H, the length of the JSON header
    offset 48     H bytes   UTF-8 JSON: {"meta": {...}, "arrays": [{"name", "dtype", "shape",
                            "offset", "nbytes"}, ...]}; dtype is numpy's `dtype.str`
                            ("<f4", "|b1", ...), offset is relative to the payload start
    offset 48+H   payload   each array's bytes in C order, back to back

Arrays come back as read-only views of the blob, with the dtype and shape they went in with.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import math
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import diskcache
import numpy as np
from diskcache.core import MODE_BINARY, MODE_RAW, MODE_TEXT

from . import settings
from .activity import ACTIVITY
from .errors import InputError, SAEError

__all__ = [
    "ArrayCache",
    "CacheStats",
    "CorruptEntry",
    "SafeDisk",
    "decode_blob",
    "default_cache",
    "encode_blob",
    "make_key",
    "resolve_cache",
    "through",
]

KEY_VERSION = 1  # bump to invalidate every key when the meaning of cached results changes

MAGIC = b"SAEARR01"
_DIGEST_SIZE = 32
_PREFIX = len(MAGIC) + _DIGEST_SIZE  # the digest covers bytes [_PREFIX:]
_HEADER_LEN = 8

Arrays = dict[str, np.ndarray]
Entry = tuple[Arrays, dict[str, Any]]

_log = logging.getLogger(__name__)


class CorruptEntry(Exception):
    """An entry that must not be used (bad checksum, truncated, pickle mode); internal signal."""


# --------------------------------------------------------------------------------------------
# Keys


def make_key(kind: str, /, *fingerprints: str, **params: Any) -> str:
    """Stable key `"<kind>/<hash>"` from content fingerprints and small JSON parameters.

    The hash is blake2b of canonical JSON (sorted keys), so it is the same in every process and
    Python version. Order of `fingerprints` matters (compare(A, B) is not compare(B, A)); order
    of `params` does not. Types are kept apart: 1, 1.0 and True give different keys. Params may
    be int, float (finite), str, bool, None, lists/tuples of those, or numpy scalars; anything
    else (arrays, objects) raises TypeError, since big data belongs in a fingerprint.
    """
    if not isinstance(kind, str) or not kind:
        raise TypeError(f"cache key kind must be a non-empty string, got {kind!r}")
    for fp in fingerprints:
        if not isinstance(fp, str):
            raise TypeError(f"cache key fingerprints must be strings, got {type(fp).__name__}")
    doc = {
        "v": KEY_VERSION,
        "kind": kind,
        "fingerprints": list(fingerprints),
        "params": {name: _plain(value, name) for name, value in params.items()},
    }
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return f"{kind}/{hashlib.blake2b(text.encode(), digest_size=16).hexdigest()}"


def _plain(value: Any, name: str) -> Any:
    """`value` as plain JSON types, or TypeError naming the parameter."""
    if isinstance(value, np.generic) and not isinstance(value, np.object_):
        value = value.item()
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"cache key parameter {name}={value!r} must be finite")
        return value
    if isinstance(value, list | tuple):
        return [_plain(v, name) for v in value]
    raise TypeError(
        f"cache key parameter {name} has type {type(value).__name__}; use int, float, str, "
        "bool, None or lists of them (fingerprint big data instead)"
    )


# --------------------------------------------------------------------------------------------
# Blob format


def encode_blob(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None) -> bytes:
    """One self-checking bytes blob holding `arrays` and the JSON-able `meta` (see module doc).

    Raises TypeError for anything that is not a str -> numpy array mapping of plain dtypes
    (object, structured and sub-array dtypes are refused) or for meta that JSON cannot encode.
    """
    if not isinstance(arrays, Mapping):
        raise TypeError(f"cache values must be a dict of numpy arrays, got {type(arrays).__name__}")
    meta = {} if meta is None else meta
    if not isinstance(meta, Mapping):
        raise TypeError(f"cache metadata must be a dict, got {type(meta).__name__}")
    specs: list[dict[str, Any]] = []
    chunks: list[memoryview] = []
    offset = 0
    for name, arr in arrays.items():
        if not isinstance(name, str):
            raise TypeError(f"cache array names must be strings, got {name!r}")
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"cache value {name!r} is a {type(arr).__name__}, not a numpy array")
        dt = arr.dtype
        if dt.hasobject or dt.fields is not None or dt.subdtype is not None or dt.itemsize == 0:
            raise TypeError(f"cache value {name!r} has unsupported dtype {dt}")
        flat = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)  # [nbytes] no copy if C-order
        specs.append(
            {
                "name": name,
                "dtype": dt.str,
                "shape": list(arr.shape),
                "offset": offset,
                "nbytes": flat.size,
            }
        )
        chunks.append(flat.data)
        offset += flat.size
    try:
        header = json.dumps({"meta": dict(meta), "arrays": specs}, sort_keys=True).encode()
    except (TypeError, ValueError) as e:
        raise TypeError(f"cache metadata is not JSON-able: {e}") from None
    body: list[bytes | memoryview] = [len(header).to_bytes(_HEADER_LEN, "little"), header, *chunks]
    digest = hashlib.blake2b(digest_size=_DIGEST_SIZE)
    for part in body:
        digest.update(part)
    return b"".join([MAGIC, digest.digest(), *body])


def decode_blob(blob: bytes) -> Entry:
    """(arrays, meta) from `encode_blob`'s output; arrays are read-only views of `blob`.

    Raises CorruptEntry for anything that is not an intact blob (wrong magic, checksum
    mismatch, truncation, a header that does not describe the payload).
    """
    if not isinstance(blob, bytes):
        raise CorruptEntry(f"entry is a {type(blob).__name__}, not bytes")
    view = memoryview(blob)
    start = _PREFIX + _HEADER_LEN
    if len(blob) < start or view[: len(MAGIC)] != MAGIC:
        raise CorruptEntry("not a cache blob (bad magic or too short)")
    expected = view[len(MAGIC) : _PREFIX]
    if hashlib.blake2b(view[_PREFIX:], digest_size=_DIGEST_SIZE).digest() != expected:
        raise CorruptEntry("checksum mismatch")
    try:
        header_len = int.from_bytes(view[_PREFIX:start], "little")
        header = json.loads(bytes(view[start : start + header_len]))
        payload = start + header_len
        meta = header["meta"]
        if not isinstance(meta, dict):
            raise CorruptEntry("metadata is not a dict")
        arrays: Arrays = {}
        for spec in header["arrays"]:
            dt = np.dtype(spec["dtype"])
            shape = tuple(int(s) for s in spec["shape"])
            lo, nbytes = int(spec["offset"]), int(spec["nbytes"])
            count = math.prod(shape)
            if dt.hasobject or min(shape, default=0) < 0 or nbytes != count * dt.itemsize:
                raise CorruptEntry(f"array {spec['name']!r} does not match its header")
            if lo < 0 or payload + lo + nbytes > len(blob):
                raise CorruptEntry(f"array {spec['name']!r} lies outside the blob")
            arr = np.frombuffer(blob, dtype=dt, count=count, offset=payload + lo)
            arrays[str(spec["name"])] = arr.reshape(shape)
    except CorruptEntry:
        raise
    except (ValueError, TypeError, KeyError, IndexError, OverflowError) as e:
        raise CorruptEntry(f"unreadable header: {e}") from None
    return arrays, meta


# --------------------------------------------------------------------------------------------
# diskcache serialisation without pickles


class SafeDisk(diskcache.Disk):
    """diskcache.Disk that stores only str keys and bytes/str values and never unpickles.

    Writing anything else raises TypeError (instead of pickling it); reading a row whose key or
    value is in pickle mode raises CorruptEntry (instead of unpickling it). Value files and
    their folders are made owner-only as they are written.
    """

    def put(self, key: Any) -> tuple[Any, bool]:
        if not isinstance(key, str):
            raise TypeError(f"cache keys must be strings, got {type(key).__name__}")
        return super().put(key)

    def get(self, key: Any, raw: bool) -> Any:
        if not raw:
            raise CorruptEntry("pickled key refused")
        return super().get(key, raw)

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> tuple:
        if read or type(value) not in (bytes, str):
            raise TypeError(
                f"cache values must be bytes or str, got {type(value).__name__} (never pickled)"
            )
        size, mode, filename, db_value = super().store(value, read, key=key)
        if filename is not None:
            path = Path(self._directory, filename)
            os.chmod(path, 0o600)
            for folder in (path.parent, path.parent.parent):  # the two hex levels diskcache uses
                os.chmod(folder, 0o700)
        return size, mode, filename, db_value

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
        if mode not in (MODE_RAW, MODE_BINARY, MODE_TEXT):
            raise CorruptEntry(f"entry in diskcache mode {mode} refused (pickles are never read)")
        return super().fetch(mode, filename, value, read)


# --------------------------------------------------------------------------------------------
# The cache


@dataclass(frozen=True)
class CacheStats:
    """Counters of one ArrayCache instance (since it was created).

    hits:     get_or_compute calls answered from the cache (including after waiting for another
              caller that was computing the same key).
    misses:   get_or_compute calls that ran `compute`.
    failures: of those, computes that raised (nothing stored).
    dropped:  corrupt, truncated or unsafe entries found and deleted.
    """

    hits: int = 0
    misses: int = 0
    failures: int = 0
    dropped: int = 0


class ArrayCache:
    """Disk cache of (dict of named numpy arrays, JSON metadata) entries under string keys.

    directory:  the folder to use as is; None means `$SAE_CACHE_DIR/sae_geometry`, else
                `~/.cache/sae_geometry`. Created (and forced) owner-only.
    size_limit: bytes; None means `$SAE_CACHE_SIZE_LIMIT`, else 8 GB. Least-recently-used
                entries are evicted after each store, never the entry just stored (so one
                entry larger than the limit stays until the next store).

    Do not call get_or_compute for a key from inside that same key's compute (RuntimeError).
    """

    def __init__(self, directory: Path | str | None = None, size_limit: int | None = None):
        self.directory = settings.cache_dir() if directory is None else Path(directory)
        self.size_limit = settings.CACHE_SIZE_LIMIT.get() if size_limit is None else size_limit
        if isinstance(self.size_limit, bool) or not isinstance(self.size_limit, int):
            raise InputError(
                f"cache size limit must be a whole number of bytes, got {size_limit!r}"
            )
        if self.size_limit <= 0:
            raise InputError(f"cache size limit must be positive, got {self.size_limit}")
        settings.make_private_dir(self.directory)
        self._lock_dir = self.directory / "locks"
        settings.make_private_dir(self._lock_dir)
        try:
            self._cache = diskcache.Cache(
                str(self.directory),
                disk=SafeDisk,
                # Settings passed here override whatever the folder's database says.
                eviction_policy="least-recently-used",  # a get refreshes an entry's access time
                size_limit=self.size_limit,
                cull_limit=0,  # diskcache never culls on its own; _evict does, precisely
                statistics=0,
            )
        except sqlite3.DatabaseError as e:
            raise SAEError(
                f"cache database in {self.directory} is unreadable ({e}); delete the folder to reset"
            ) from None
        # SQLite creates later -wal/-shm files with the database file's mode, so this sticks.
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(self.directory / (diskcache.core.DBNAME + suffix), 0o600)
        self._stats = CacheStats()
        self._stats_lock = threading.Lock()
        self._held = threading.local()  # keys whose lock this thread holds (re-entry guard)

    def __repr__(self) -> str:
        return f"ArrayCache({str(self.directory)!r}, size_limit={self.size_limit})"

    @property
    def stats(self) -> CacheStats:
        """A snapshot of this instance's counters."""
        with self._stats_lock:
            return self._stats

    def get(self, key: str) -> Entry | None:
        """The stored (arrays, meta) for `key`, or None when absent or unusable (then dropped)."""
        _check_key(key)
        try:
            blob = self._cache.get(key, default=None, retry=True)
            return None if blob is None else decode_blob(blob)
        except CorruptEntry as e:
            self._drop(key, str(e))
        except (OSError, sqlite3.Error, diskcache.Timeout) as e:
            _log.warning("cache read of %s failed (%s); treating it as a miss", key, e)
        return None

    def set(
        self, key: str, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None
    ) -> None:
        """Store `arrays` ({name: ndarray}) and JSON-able `meta` under `key`, replacing any entry.

        The blob is built in full before one atomic database write, so readers see the old entry
        or the new one, never half of it. Raises TypeError for values that are not arrays.
        """
        _check_key(key)
        self._store(key, encode_blob(arrays, meta))

    def get_or_compute(
        self, key: str, compute: Callable[[], tuple[Arrays, dict[str, Any]]]
    ) -> Entry:
        """The entry for `key`, running `compute() -> (arrays, meta)` only if it is not stored.

        Concurrent callers of one key (threads or processes) run `compute` once: the others wait
        on the key's lock and then read the stored result. If `compute` raises, nothing is
        stored, the lock is released and the exception propagates. Arrays come back read-only,
        whether computed now or read from disk. A failure to store is logged, not raised.
        """
        hit = self.get(key)
        if hit is not None:
            self._count(hits=1)
            return hit
        with self._key_lock(key):
            hit = self.get(key)  # another caller may have computed it while we waited
            if hit is not None:
                self._count(hits=1)
                return hit
            self._count(misses=1)
            try:
                with ACTIVITY.track(key.split("/", 1)[0], key):
                    result = compute()
                if not (isinstance(result, tuple) and len(result) == 2):
                    raise TypeError(f"compute for {key} must return (arrays, meta)")
                blob = encode_blob(*result)
            except BaseException:
                self._count(failures=1)
                raise
            try:
                self._store(key, blob)
            except (OSError, sqlite3.Error, diskcache.Timeout) as e:
                _log.warning("cache write of %s failed (%s); result not cached", key, e)
            return decode_blob(blob)

    def clear(self) -> None:
        """Remove every entry (lock files stay: another process may be holding one)."""
        self._cache.clear(retry=True)

    def __len__(self) -> int:
        """Number of stored entries."""
        return len(self._cache)

    def volume(self) -> int:
        """Bytes on disk: the database plus the value files."""
        return int(self._cache.volume())

    def close(self) -> None:
        """Close this thread's database connection (reopened on next use)."""
        self._cache.close()

    # -- internals ---------------------------------------------------------------------------

    def _store(self, key: str, blob: bytes) -> None:
        self._cache.set(key, blob, retry=True)
        self._evict(keep=key)

    def _evict(self, keep: str) -> None:
        """Delete least-recently-used entries, never `keep`, until the volume fits the limit."""
        lru = "SELECT key FROM Cache WHERE raw = 1 AND key != ? ORDER BY access_time LIMIT 1"
        while self._cache.volume() > self.size_limit:
            # diskcache has no public "oldest key" query; this read-only SELECT is the only
            # use of its private connection, and `delete` below removes the value file too.
            rows = self._cache._sql(lru, (keep,)).fetchall()
            if not rows or not isinstance(rows[0][0], str):
                return
            self._cache.delete(rows[0][0], retry=True)

    def _drop(self, key: str, why: str) -> None:
        _log.warning("dropping cache entry %s: %s", key, why)
        self._count(dropped=1)
        with contextlib.suppress(OSError, sqlite3.Error, diskcache.Timeout):
            self._cache.delete(key, retry=True)

    def _count(self, **deltas: int) -> None:
        with self._stats_lock:
            now = self._stats
            self._stats = replace(now, **{k: getattr(now, k) + d for k, d in deltas.items()})

    @contextlib.contextmanager
    def _key_lock(self, key: str) -> Iterator[None]:
        """Exclusive per-key lock across threads and processes; the kernel frees it on death.

        flock locks belong to an open file description, so each call opens its own descriptor:
        two threads of one process then exclude each other just like two processes do.
        """
        held: set[str] = self._held.__dict__.setdefault("keys", set())
        if key in held:
            raise RuntimeError(f"get_or_compute({key!r}) called from inside its own compute")
        name = hashlib.blake2b(key.encode(), digest_size=16).hexdigest() + ".lock"
        fd = settings.open_lock_file(self._lock_dir / name)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            held.add(key)
            try:
                yield
            finally:
                held.discard(key)
        finally:
            os.close(fd)  # releases the flock


@functools.cache
def default_cache() -> ArrayCache:
    """The process-wide cache in the folder and with the size limit the environment names.

    Created on first use; `default_cache.cache_clear()` forgets it (tests that change the
    environment).
    """
    return ArrayCache()


def resolve_cache(cache: ArrayCache | bool | None) -> ArrayCache | None:
    """What a `cache=` argument means: True the default cache, False/None none, or the given one."""
    if cache is True:
        return default_cache()
    if cache is False or cache is None:
        return None
    return cache


def through(
    cache: ArrayCache | bool | None,
    key: str | Callable[[], str],
    compute: Callable[[], Entry],
) -> Entry:
    """`compute()` through the cache a `cache=` argument names (see `resolve_cache`): the stored
    entry, or computed once and stored; with no cache, simply `compute()`. `key` may be a
    function, for keys that cost work (a folder walk) and are not needed without a cache."""
    store = resolve_cache(cache)
    if store is None:
        return compute()
    return store.get_or_compute(key() if callable(key) else key, compute)


def _check_key(key: Any) -> None:
    if not isinstance(key, str) or not key:
        raise TypeError(f"cache keys are non-empty strings from make_key(), got {key!r}")
