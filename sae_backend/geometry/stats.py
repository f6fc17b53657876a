"""Summary statistics of per-feature cosines, the chance baseline, and bootstrap intervals.

Everything here is vectorised and memory-bounded: arrays of n features are processed whole
(or in fixed-size blocks), never as n x n matrices; neighbour search goes through the exact
blocked `topk_cosine`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ..cache import ArrayCache, make_key, through
from ..errors import InputError
from ..types import Progress

# Rows per block for row-wise float64 work, and (boots x samples) elements per bootstrap chunk.
_ROW_BLOCK = 8192
_BOOT_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class Summary:
    """Summary of per-feature values (e.g. max cosines: `mean` is then the MMCS).

    n:         number of values summarised (NaN entries excluded).
    n_nan:     number of NaN entries dropped (e.g. unmatched features of a Matching).
    mean, median, std: float64; std is the population std (ddof=0); NaN when n == 0.
    above:     {threshold: fraction of the n values strictly greater than it}.
    """

    n: int
    n_nan: int
    mean: float
    median: float
    std: float
    above: dict[float, float]


def summarize(
    values: np.ndarray,  # [n] float
    thresholds: Sequence[float] = (0.5, 0.7, 0.9),
) -> Summary:
    """n, mean, median, std and fractions above `thresholds`, in float64; NaN = missing."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        raise InputError(f"values: expected a 1-D array, got shape {list(x.shape)}")
    nan = np.isnan(x)
    x = x[~nan]
    if np.isinf(x).any():
        raise InputError("values: contains Inf (expected finite values, NaN for missing)")
    n = int(x.size)
    if n == 0:
        nan_f = float("nan")
        return Summary(
            0, int(nan.sum()), nan_f, nan_f, nan_f, {float(t): nan_f for t in thresholds}
        )
    return Summary(
        n=n,
        n_nan=int(nan.sum()),
        mean=float(x.mean()),
        median=float(np.median(x)),
        std=float(x.std()),
        above={float(t): float((x > t).mean()) for t in thresholds},
    )


def encoder_decoder_cosine(
    encoder: np.ndarray,  # [n, d]
    decoder: np.ndarray,  # [n, d]
) -> np.ndarray:  # [n] float32
    """Cosine between each feature's encoder row and decoder row (float64, in row blocks).

    Rows need not be unit norm. A feature whose encoder or decoder row is zero (dead) gets
    0.0, never NaN, so the result can be averaged and histogrammed directly.
    """
    enc, dec = np.asarray(encoder), np.asarray(decoder)
    if enc.ndim != 2 or enc.shape != dec.shape:
        raise InputError(
            f"encoder {list(enc.shape)} and decoder {list(dec.shape)} must both be [n, d] "
            "with the same shape"
        )
    n = enc.shape[0]
    out = np.empty(n, np.float32)
    for s in range(0, n, _ROW_BLOCK):
        e = enc[s : s + _ROW_BLOCK].astype(np.float64)
        k = dec[s : s + _ROW_BLOCK].astype(np.float64)
        if not (np.isfinite(e).all() and np.isfinite(k).all()):
            raise InputError(f"encoder/decoder rows {s}..{s + len(e) - 1} contain NaN or Inf")
        dot = np.einsum("ij,ij->i", e, k)
        norms = np.linalg.norm(e, axis=1) * np.linalg.norm(k, axis=1)
        cos = np.divide(dot, norms, out=np.zeros_like(dot), where=norms > 0)
        out[s : s + len(e)] = np.clip(cos, -1.0, 1.0)
    return out


def random_unit_rows(n: int, d: int, rng: np.random.Generator) -> np.ndarray:  # [n, d] float32
    """n directions uniform on the sphere in R^d (normalised Gaussians), float32 unit rows."""
    out = np.empty((n, d), np.float32)
    for s in range(0, n, _ROW_BLOCK):  # float64 draws in blocks: bounded temporary memory
        x = rng.standard_normal((min(n, s + _ROW_BLOCK) - s, d))
        out[s : s + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def random_null(
    n_a: int,
    n_b: int | None,
    d: int,
    *,
    k: int = 1,
    seed: int = 0,
    device: str = "auto",
    cache: ArrayCache | None | bool = True,
    progress: Progress | None = None,
) -> np.ndarray:  # [n_a] float32
    """What chance looks like: k-th largest cosine (k=1: the max) of random unit directions.

    Draws A ([n_a, d]) and then B ([n_b, d]) from `np.random.default_rng(seed)` with
    `random_unit_rows`, and returns, for each row of A, its k-th nearest cosine among B, or
    among the other rows of A when `n_b` is None. Same seed, same values.
    cache: True uses the default disk cache, False none, or a given ArrayCache; the key is
    (n_a, n_b, d, k, seed), since at 46,080 features this is a full top-k pass.
    progress: progress(done, total) over A's rows, as `topk_cosine` reports it.
    """
    if d < 1 or n_a < 1 or (n_b is not None and n_b < 1):
        raise InputError(f"random_null needs n_a >= 1, n_b >= 1 and d >= 1, got {n_a}, {n_b}, {d}")
    limit = n_a - 1 if n_b is None else n_b
    if not 1 <= k <= limit:
        raise InputError(f"k={k} must be between 1 and {limit} (the number of candidates)")

    def compute() -> tuple[dict[str, np.ndarray], dict]:
        from .topk import topk_cosine  # torch: only when computed

        rng = np.random.default_rng(seed)
        a = random_unit_rows(n_a, d, rng)
        b = None if n_b is None else random_unit_rows(n_b, d, rng)
        values = topk_cosine(a, b, k, device=device, progress=progress).values[:, k - 1]
        return {"values": values.copy()}, {}

    nb = None if n_b is None else int(n_b)  # int(): numpy and Python integers, one key
    key = make_key("random_null", n_a=int(n_a), n_b=nb, d=int(d), k=int(k), seed=int(seed))
    return through(cache, key, compute)[0]["values"].copy()  # [n_a]: small, writable


class BootstrapCI(NamedTuple):
    """mean(x) - mean(y) and its percentile-bootstrap interval [low, high] (float64)."""

    diff: float
    low: float
    high: float


def bootstrap_mean_difference(
    x: np.ndarray,  # [n] float
    y: np.ndarray,  # [m] float
    *,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> BootstrapCI:
    """Percentile bootstrap (1 - alpha) interval of mean(x) - mean(y), x and y resampled apart.

    Vectorised over resamples in chunks of bounded size; deterministic for a seed. Values must
    be finite (drop NaN, e.g. unmatched features, before calling).
    """
    xs, ys = (_finite_1d(v, name) for v, name in ((x, "x"), (y, "y")))
    if n_boot < 1:
        raise InputError(f"n_boot must be at least 1, got {n_boot}")
    if not 0 < alpha < 1:
        raise InputError(f"alpha must lie in (0, 1), got {alpha}")
    rx, ry = np.random.default_rng(seed).spawn(2)
    diffs = _boot_means(xs, n_boot, rx) - _boot_means(ys, n_boot, ry)
    low, high = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    return BootstrapCI(float(xs.mean() - ys.mean()), float(low), float(high))


def _boot_means(v: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """[n_boot] means of resamples of v with replacement, chunked to bound memory."""
    out = np.empty(n_boot)
    chunk = max(1, _BOOT_ELEMENTS // v.size)
    for s in range(0, n_boot, chunk):
        e = min(n_boot, s + chunk)
        out[s:e] = v[rng.integers(0, v.size, size=(e - s, v.size))].mean(axis=1)
    return out


def _finite_1d(v: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise InputError(f"{name}: expected a non-empty 1-D array, got shape {list(a.shape)}")
    if not np.isfinite(a).all():
        raise InputError(f"{name}: contains NaN or Inf (drop missing values first)")
    return a
