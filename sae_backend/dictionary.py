"""The one dictionary model every loader produces and every computation reads.

Orientation everywhere: rows are features, so `decoder` is [n_features, d_model].
Decoder (and encoder) rows are normalised here, on load, whatever the file claims;
zero-norm rows stay zero and count as dead, never NaN.

Why the big arrays are lazy: at the paper's size a decoder and an encoder are 140 MB each,
and most work needs one of them or neither (a cached comparison needs only the
fingerprint; a decoder comparison no encoder). A loaded `Dictionary` therefore holds its
small arrays (norms, alive, density) and fingerprint, and reads `decoder` / `encoder` on
first access through a `reload` function (the loader's: the same files, re-read and
normalised the same way). Normalisation and fingerprinting stream over row chunks, so an
encoder is hashed without ever being held whole, and the fingerprint is byte for byte the
one the whole arrays would give.
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from .errors import FormatError, SAEError
from .types import Directions, Float32, Int64

# Rows whose norm is at most this (relative to the largest row) are treated as zero (dead).
_ZERO_NORM = 1e-12
_CHUNK_BYTES = 32 * 2**20  # float64 rows per chunk when normalising: bounded, not n x d


class RowSource(Protocol):
    """A matrix a reader hands over without reading it whole: `rows(lo, hi)` reads rows
    lo..hi-1 (any float dtype). `nonfinite()` is the error for NaN/Inf values, naming the
    file and key (the whole matrix counted)."""

    shape: tuple[int, ...]
    ndim: int
    dtype: np.dtype

    def rows(self, lo: int, hi: int) -> np.ndarray: ...

    def nonfinite(self) -> SAEError: ...


Rows = np.ndarray | RowSource
"""A matrix as a reader returns it: in memory, or read on demand (`RowSource`)."""


@dataclass
class RawSAE:
    """What a format reader returns: raw arrays in feature-row orientation plus metadata.

    decoder: [n, d] raw decoder rows (any float dtype), one row per feature; an array or a
             `RowSource` read on demand.
    encoder: [n, d] raw encoder rows (likewise), or None when the file has no encoder.
    density: [n] feature firing density (fraction of tokens), or None when unknown.
    alive:   [n] bool, which features the source says are alive, or None when it does not say.
    meta:    free-form metadata (model_name, hook, layer, neuronpedia_id, config ...).
    """

    decoder: Rows
    encoder: Rows | None = None
    density: np.ndarray | None = None
    alive: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Metadata:
    """Where a dictionary came from and what it is of (all optional but `source`, `format`)."""

    source: str
    format: str
    model_name: str | None = None
    hook: str | None = None
    layer: int | None = None
    neuronpedia_id: str | None = None
    alive_from: str = "nonzero"  # what decided `alive`: "nonzero" or the source that said so
    extra: dict[str, Any] = field(default_factory=dict)  # anything else worth showing (JSON-able)


Reload = Callable[[Directions], Float32[np.ndarray, "n d"]]
"""Reads a dictionary's unit decoder or encoder rows again from its source (the loader's)."""


class _UnitRows:
    """The decoder and encoder unit rows of one dictionary: held once read, read on demand.

    Thread-safe: sessions of a dashboard share dictionaries, and two first reads of one
    matrix must not both read it."""

    def __init__(self, held: dict[str, np.ndarray], reload: Reload | None):
        self.held, self.reload = held, reload
        self.lock = threading.Lock()

    def get(self, kind: Directions, source: str) -> np.ndarray:
        found = self.held.get(kind)
        if found is not None:
            return found
        with self.lock:
            if kind not in self.held:
                if self.reload is None:
                    raise SAEError(f"{source}: its {kind} rows are not held and cannot be re-read")
                unit = self.reload(kind)
                unit.setflags(write=False)
                self.held[kind] = unit
            return self.held[kind]

    def __getstate__(self) -> dict[str, Any]:
        # a pickled copy (Ray's object store) keeps the rows it was given, not the lock or
        # the reader: it may live where the files are not
        return {"held": dict(self.held)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["held"], None)  # type: ignore[misc]

    def release(self, kind: Directions | None) -> None:
        if self.reload is not None:
            with self.lock:
                for name in ("decoder", "encoder") if kind is None else (kind,):
                    self.held.pop(name, None)


@dataclass(frozen=True, eq=False)
class Dictionary:
    """A loaded SAE dictionary.

    decoder:       [n, d] float32, unit rows (zero rows for zero-norm features); read on
                   first use when the dictionary came from the cache.
    encoder:       [n, d] float32 unit rows, or None; read on first use.
    decoder_norms: [n] float32, raw decoder row norms before normalisation.
    alive:         [n] bool: alive per the source (when it says) and non-zero decoder.
    density:       [n] float32 firing density, or None.
    fingerprint:   hex digest of the content (unit decoder, encoder, alive); cache key.
    """

    decoder_norms: np.ndarray
    alive: np.ndarray
    density: np.ndarray | None
    meta: Metadata
    fingerprint: str
    d_model: int
    has_encoder: bool
    _rows: _UnitRows = field(repr=False)

    @property
    def decoder(self) -> Float32[np.ndarray, "n d"]:
        return self._rows.get("decoder", self.meta.source)

    @property
    def encoder(self) -> Float32[np.ndarray, "n d"] | None:
        return self._rows.get("encoder", self.meta.source) if self.has_encoder else None

    @property
    def n_features(self) -> int:
        return int(self.alive.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes of its arrays once its unit rows are read (decoder, and encoder if any): what
        a memory budget must count for it, whether or not they are read yet."""
        small = sum(a.nbytes for a in (self.decoder_norms, self.alive, self.density)
                    if a is not None)  # fmt: skip
        return small + self.n_features * self.d_model * 4 * (2 if self.has_encoder else 1)

    @property
    def n_alive(self) -> int:
        return int(self.alive.sum())

    @property
    def alive_index(self) -> Int64[np.ndarray, " m"]:
        """Indices of the features every comparison takes part in: alive per the source and
        non-zero, ascending. Computed results index features by these, never by position."""
        return np.flatnonzero(self.alive)

    def directions(self, kind: Directions = "decoder") -> Float32[np.ndarray, "n d"]:
        """Unit rows of the decoder or the encoder."""
        if kind == "decoder":
            return self.decoder
        if kind == "encoder":
            if not self.has_encoder:
                raise FormatError(f"{self.meta.source}: this dictionary has no encoder directions")
            return self._rows.get("encoder", self.meta.source)
        raise ValueError(f"unknown direction kind {kind!r}; use 'decoder' or 'encoder'")

    def release(self, kind: Directions | None = None) -> None:
        """Forget the held unit rows of `kind` (None: both) when they can be read again from
        the files (else keep them): for a caller that holds its own copy meanwhile."""
        self._rows.release(kind)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (Ray's object store ships dictionaries to workers) with its unit rows read:
        the copy cannot read them again, the files may not be where it runs."""
        _ = self.decoder, self.encoder
        return dict(self.__dict__)

    def to_entry(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(arrays, JSON metadata) for the disk cache: everything but the unit rows, which
        `from_entry`'s dictionary reads from the source when first used."""
        arrays = {"decoder_norms": self.decoder_norms, "alive": self.alive}
        if self.density is not None:
            arrays["density"] = self.density
        meta = json.loads(json.dumps(asdict(self.meta), default=str))  # JSON-safe extra
        info = {"meta": meta, "fingerprint": self.fingerprint, "d_model": self.d_model,
                "has_encoder": self.has_encoder}  # fmt: skip
        return arrays, info

    @classmethod
    def from_entry(
        cls, arrays: dict[str, np.ndarray], info: dict[str, Any], reload: Reload | None
    ) -> Dictionary:
        """Inverse of `to_entry` (the cache checks integrity, so no re-validation here);
        `reload` reads the unit rows when they are first used."""
        return cls(
            arrays["decoder_norms"],
            arrays["alive"],
            arrays.get("density"),
            Metadata(**info["meta"]),
            info["fingerprint"],
            int(info["d_model"]),
            bool(info["has_encoder"]),
            _UnitRows({}, reload),
        )

    @classmethod
    def from_raw(
        cls, raw: RawSAE, *, source: str, format: str, reload: Reload | None = None
    ) -> Dictionary:
        """Validate and normalise a reader's output; raises FormatError naming `source`.

        The unit decoder is kept; the unit encoder is kept only without `reload` (with it,
        the encoder is hashed a chunk at a time and read again when first used)."""
        dec = _as_matrix(raw.decoder, "decoder", source)
        n, d = dec.shape
        enc = None
        if raw.encoder is not None:
            enc = _as_matrix(raw.encoder, "encoder", source)
            if enc.shape != dec.shape:
                raise FormatError(
                    f"{source}: encoder has shape {list(enc.shape)} but decoder has "
                    f"{list(dec.shape)} (both should be [n_features, d_model] after orientation)"
                )
        digest = hashlib.blake2b(digest_size=16)
        unit_dec, norms = unit_rows(dec, digest=digest)
        assert unit_dec is not None  # kept
        held = {"decoder": unit_dec}
        if enc is None:
            digest.update(b"none;")
        else:
            unit_enc, _ = unit_rows(enc, digest=digest, keep=reload is None)
            if unit_enc is not None:
                held["encoder"] = unit_enc
        alive = norms > 0
        meta = dict(raw.meta)
        alive_from = "nonzero"
        if raw.alive is not None:
            said = np.asarray(raw.alive, dtype=bool).reshape(-1)
            if said.shape != (n,):
                raise FormatError(f"{source}: alive mask has {said.size} entries, expected {n}")
            alive &= said
            alive_from = str(meta.pop("alive_from", "source"))
        density = None
        if raw.density is not None:
            density = np.asarray(raw.density, dtype=np.float32).reshape(-1)
            if density.shape != (n,):
                raise FormatError(f"{source}: density has {density.size} entries, expected {n}")
            if not np.all(np.isfinite(density) | np.isneginf(density)):
                raise FormatError(f"{source}: feature density contains NaN")
        md = Metadata(
            source=source,
            format=format,
            model_name=meta.pop("model_name", None),
            hook=meta.pop("hook", None),
            layer=meta.pop("layer", None),
            neuronpedia_id=meta.pop("neuronpedia_id", None),
            alive_from=alive_from,
            extra=meta,
        )
        _hash_array(digest, alive)
        for arr in (norms, alive, density, *held.values()):
            if arr is not None:
                arr.setflags(write=False)
        return cls(norms, alive, density, md, digest.hexdigest(), int(d), enc is not None,
                   _UnitRows(held, reload))  # fmt: skip


def fingerprint_arrays(*arrays: np.ndarray | None) -> str:
    """Content hash of arrays (dtype, shape and bytes); None entries are hashed as absent.
    A dictionary's fingerprint is this of (unit decoder, unit encoder, alive)."""
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        if a is None:
            h.update(b"none;")
            continue
        _hash_array(h, np.ascontiguousarray(a))
    return h.hexdigest()


def _hash_array(h: Any, a: np.ndarray) -> None:
    h.update(f"{a.dtype.str}{a.shape};".encode())
    h.update(a.view(np.uint8).reshape(-1).data if a.ndim else a.tobytes())


def unit_rows(
    m: Rows, *, digest: Any = None, keep: bool = True, what: str = "matrix", source: str = ""
) -> tuple[np.ndarray | None, np.ndarray]:
    """Unit rows [n, d] float32 (None unless `keep`) and raw norms [n] float32 of `m`; zero
    rows stay zero. `digest` (a hashlib object), if given, is fed the unit rows as
    `fingerprint_arrays` would hash them.

    Two passes over row chunks, never n x d float64 temporaries: norms first (in float64, so
    large or tiny rows neither overflow nor lose precision; the zero threshold needs the
    largest), then the division. A kept matrix is read once (its raw rows wait in the output
    array); one that is not kept is read twice. Per row the arithmetic is that of the whole
    matrix at once, so the result does not depend on the chunking; norms are summed over
    row-major copies, so neither does it depend on how the reader laid the matrix out.
    """
    src = _ArrayRows(m, what, source) if isinstance(m, np.ndarray) else m
    n, d = (int(x) for x in src.shape)
    step = max(1, _CHUNK_BYTES // (8 * max(d, 1)))
    norms = np.empty(n, np.float64)
    out = np.empty((n, d), np.float32) if keep else None
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        raw32 = np.asarray(src.rows(lo, hi)).astype(np.float32, copy=False)
        if out is not None:
            out[lo:hi] = raw32
        m64 = np.ascontiguousarray(raw32, dtype=np.float64)  # summation order: row-major
        norms[lo:hi] = np.sqrt(np.einsum("ij,ij->i", m64, m64))
    if not np.isfinite(norms).all():
        raise src.nonfinite()
    scale = norms.max() if n else 0.0
    live = norms > _ZERO_NORM * max(scale, 1e-300)
    divisor = np.where(live, norms, 1.0)
    if digest is not None:
        digest.update(f"{np.dtype(np.float32).str}{(n, d)};".encode())
    with _Hasher(digest) as hasher:
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            raw = out[lo:hi] if out is not None else src.rows(lo, hi)
            m64 = np.ascontiguousarray(np.asarray(raw).astype(np.float32, copy=False), np.float64)
            unit = out[lo:hi] if out is not None else np.empty((hi - lo, d), np.float32)
            # the float64 quotient rounded to float32, as (m64 / norms).astype(float32) gives;
            # dead rows (divided by 1 here) are zeroed after
            np.divide(m64, divisor[lo:hi, None], out=unit, casting="same_kind")
            unit[~live[lo:hi]] = 0.0
            hasher.update(unit)
    return out, np.where(live, norms, 0.0).astype(np.float32)


class _Hasher:
    """Feeds chunks to a hashlib object from a thread, in order: hashlib lets go of the GIL
    on big buffers, so hashing one chunk overlaps the arithmetic of the next."""

    def __init__(self, digest: Any):
        self.digest = digest
        self.queue: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=2)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _Hasher:
        if self.digest is not None:
            self.thread.start()
        return self

    def update(self, chunk: np.ndarray) -> None:
        if self.digest is not None:
            self.queue.put(chunk)  # not written to again by the caller

    def _run(self) -> None:
        while (chunk := self.queue.get()) is not None:
            self.digest.update(chunk.data)

    def __exit__(self, *exc: object) -> None:
        if self.digest is not None:
            self.queue.put(None)
            self.thread.join()


def unit_matrix(m: Rows, what: str, source: str) -> Float32[np.ndarray, "n d"]:
    """Validated unit rows of a reader's matrix: what `Dictionary.from_raw` makes of it."""
    unit, _ = unit_rows(_as_matrix(m, what, source))
    assert unit is not None  # kept
    unit.setflags(write=False)
    return unit


class _ArrayRows:
    """A RowSource over an array in memory."""

    def __init__(self, a: np.ndarray, what: str, source: str):
        self.a, self.what, self.source = a, what, source
        self.shape, self.ndim, self.dtype = a.shape, a.ndim, a.dtype

    def rows(self, lo: int, hi: int) -> np.ndarray:
        return self.a[lo:hi]

    def nonfinite(self) -> SAEError:
        bad = int((~np.isfinite(self.a.astype(np.float32, copy=False))).sum())
        return FormatError(f"{self.source}: {self.what} contains {bad} NaN/Inf values")


def _as_matrix(x: Any, what: str, source: str) -> RowSource:
    """[n, d] float rows (an array or a RowSource); rejects other ranks, dtypes and empty
    matrices here, NaN/Inf as the rows are normalised."""
    src = x if hasattr(x, "rows") else _ArrayRows(np.asarray(x), what, source)
    if src.ndim != 2:
        raise FormatError(f"{source}: {what} must be a 2-D matrix, got shape {list(src.shape)}")
    if not np.issubdtype(src.dtype, np.floating):
        raise FormatError(f"{source}: {what} has dtype {src.dtype}, expected a float matrix")
    if src.shape[0] == 0 or src.shape[1] == 0:
        raise FormatError(f"{source}: {what} is empty (shape {list(src.shape)})")
    return src
