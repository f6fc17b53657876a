"""The one dictionary model every loader produces and every computation reads.

Orientation everywhere: rows are features, so `decoder` is [n_features, d_model].
Decoder (and encoder) rows are normalised here, on load, whatever the file claims;
zero-norm rows stay zero and count as dead, never NaN.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .errors import FormatError
from .types import Directions, Float32, Int64

# Rows whose norm is at most this (relative to the largest row) are treated as zero (dead).
_ZERO_NORM = 1e-12


@dataclass
class RawSAE:
    """What a format reader returns: raw arrays in feature-row orientation plus metadata.

    decoder: [n, d] raw decoder rows (any float dtype), one row per feature.
    encoder: [n, d] raw encoder rows, or None when the file has no encoder.
    density: [n] feature firing density (fraction of tokens), or None when unknown.
    alive:   [n] bool, which features the source says are alive, or None when it does not say.
    meta:    free-form metadata (model_name, hook, layer, neuronpedia_id, config ...).
    """

    decoder: np.ndarray
    encoder: np.ndarray | None = None
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


@dataclass(frozen=True, eq=False)
class Dictionary:
    """A loaded SAE dictionary.

    decoder:       [n, d] float32, unit rows (zero rows for zero-norm features).
    encoder:       [n, d] float32 unit rows, or None.
    decoder_norms: [n] float32, raw decoder row norms before normalisation.
    alive:         [n] bool: alive per the source (when it says) and non-zero decoder.
    density:       [n] float32 firing density, or None.
    fingerprint:   hex digest of the content (unit decoder, encoder, alive); cache key.
    """

    decoder: np.ndarray
    encoder: np.ndarray | None
    decoder_norms: np.ndarray
    alive: np.ndarray
    density: np.ndarray | None
    meta: Metadata
    fingerprint: str

    @property
    def n_features(self) -> int:
        return int(self.decoder.shape[0])

    @property
    def d_model(self) -> int:
        return int(self.decoder.shape[1])

    @property
    def n_alive(self) -> int:
        return int(self.alive.sum())

    @property
    def has_encoder(self) -> bool:
        return self.encoder is not None

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
            if self.encoder is None:
                raise FormatError(f"{self.meta.source}: this dictionary has no encoder directions")
            return self.encoder
        raise ValueError(f"unknown direction kind {kind!r}; use 'decoder' or 'encoder'")

    def to_entry(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(arrays, JSON metadata) for the disk cache; `from_entry` rebuilds the dictionary."""
        arrays = {"decoder": self.decoder, "decoder_norms": self.decoder_norms, "alive": self.alive}
        if self.encoder is not None:
            arrays["encoder"] = self.encoder
        if self.density is not None:
            arrays["density"] = self.density
        meta = json.loads(json.dumps(asdict(self.meta), default=str))  # JSON-safe extra
        return arrays, {"meta": meta, "fingerprint": self.fingerprint}

    @classmethod
    def from_entry(cls, arrays: dict[str, np.ndarray], info: dict[str, Any]) -> Dictionary:
        """Inverse of `to_entry` (the cache checks integrity, so no re-validation here)."""
        return cls(
            arrays["decoder"],
            arrays.get("encoder"),
            arrays["decoder_norms"],
            arrays["alive"],
            arrays.get("density"),
            Metadata(**info["meta"]),
            info["fingerprint"],
        )

    @classmethod
    def from_raw(cls, raw: RawSAE, *, source: str, format: str) -> Dictionary:
        """Validate and normalise a reader's output; raises FormatError naming `source`."""
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
        unit_dec, norms = _normalise_rows(dec)
        unit_enc = None if enc is None else _normalise_rows(enc)[0]
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
        fp = fingerprint_arrays(unit_dec, unit_enc, alive)
        for arr in (unit_dec, norms, alive, unit_enc, density):
            if arr is not None:
                arr.setflags(write=False)
        return cls(unit_dec, unit_enc, norms, alive, density, md, fp)


def fingerprint_arrays(*arrays: np.ndarray | None) -> str:
    """Content hash of arrays (dtype, shape and bytes); None entries are hashed as absent."""
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        if a is None:
            h.update(b"none;")
            continue
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(a.view(np.uint8).reshape(-1).data if a.ndim else a.tobytes())
    return h.hexdigest()


def _as_matrix(x: Any, what: str, source: str) -> np.ndarray:
    """[n, d] float32 array from any float array; rejects other ranks, dtypes and NaN/Inf."""
    a = np.asarray(x)
    if a.ndim != 2:
        raise FormatError(f"{source}: {what} must be a 2-D matrix, got shape {list(a.shape)}")
    if not np.issubdtype(a.dtype, np.floating):
        raise FormatError(f"{source}: {what} has dtype {a.dtype}, expected a float matrix")
    a = a.astype(np.float32, copy=False)
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise FormatError(f"{source}: {what} is empty (shape {list(a.shape)})")
    if not np.isfinite(a).all():
        bad = int((~np.isfinite(a)).sum())
        raise FormatError(f"{source}: {what} contains {bad} NaN/Inf values")
    return a


def _normalise_rows(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit rows [n, d] float32 and raw norms [n] float32; zero rows stay zero.

    Norms are taken in float64 so large or tiny rows neither overflow nor lose precision.
    """
    m64 = m.astype(np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", m64, m64))
    scale = norms.max() if norms.size else 0.0
    live = norms > _ZERO_NORM * max(scale, 1e-300)
    unit = np.zeros_like(m64)
    unit[live] = m64[live] / norms[live, None]
    return unit.astype(np.float32), np.where(live, norms, 0.0).astype(np.float32)
