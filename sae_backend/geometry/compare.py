"""Comparisons between dictionaries: what the CLI, the pages and the tests all read.

`compare(A, B)` takes the included features of A (alive, non-zero) and finds, for each, its
top-k neighbours among the included features of B (or of A itself, self excluded, when B is
None), by decoder or encoder direction. Indices in the result are the dictionaries' own
feature indices, not positions in the included subset. Results are cached on disk by the
dictionaries' fingerprints and the parameters, so a repeated comparison costs a lookup.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..activity import exclusive
from ..cache import ArrayCache, make_key, resolve_cache, through
from ..dictionary import Dictionary
from ..errors import InputError
from ..types import DIRECTIONS, Directions, Float32, Int64, Progress
from .matching import DEFAULT_TOLERANCE, K_CANDIDATES, DoubleCounting, Matching, double_counting
from .stats import Summary, summarize

if TYPE_CHECKING:
    import torch

    from ._cpu_select import Kernel

# torch (topk) and scipy/numba (matching's solvers) are imported inside the computations below,
# so a cached answer is read without them (`python -m sae_backend compare` on a warm cache)

MAX_K = 100

__all__ = [
    "DIRECTIONS",
    "MAX_K",
    "Comparison",
    "check_comparable",
    "compare",
    "compare_entry",
    "compare_with_reverse",
    "match",
]


@dataclass(frozen=True)
class Comparison:
    """Nearest neighbours of A's included features among B's (or A's own, self excluded).

    a_index:    feature indices in A that were compared (its `alive_index`).
    values:     cosines, descending (exact: float32 dot products).
    indices:    feature indices in B (in A when `b_fingerprint` is None).
    n_targets:  how many features of B (or A) were candidates.
    """

    a_fingerprint: str
    b_fingerprint: str | None
    directions: Directions
    a_index: Int64[np.ndarray, " m"]
    values: Float32[np.ndarray, "m k"]
    indices: Int64[np.ndarray, "m k"]
    n_targets: int

    @property
    def max_cos(self) -> Float32[np.ndarray, " m"]:
        return self.values[:, 0]

    @property
    def nearest(self) -> Int64[np.ndarray, " m"]:
        return self.indices[:, 0]

    @property
    def is_self(self) -> bool:
        return self.b_fingerprint is None

    def summary(self, thresholds=(0.5, 0.7, 0.9)) -> Summary:
        """MMCS (mean max cosine), median, fractions above thresholds."""
        return summarize(self.max_cos, thresholds)

    def double_counting(self, n_b: int) -> DoubleCounting:
        """How shared the max-cos targets are; n_b = number of features in B."""
        return double_counting(self.nearest, n_b)


def check_comparable(
    dicts: Sequence[Dictionary], directions: Directions, what: str = "compare"
) -> None:
    """One InputError line unless `dicts` can be compared by `directions`: a known direction
    kind, one d_model for all, and encoders where encoder directions are asked for. `what`
    names the operation in the message ("compare", "embed")."""
    if directions not in DIRECTIONS:
        raise InputError(f"directions must be 'decoder' or 'encoder', not {directions!r}")
    first = dicts[0]
    for d in dicts[1:]:
        if d.d_model != first.d_model:
            raise InputError(
                f"cannot {what} {first.meta.source} (d_model {first.d_model}) with "
                f"{d.meta.source} (d_model {d.d_model}): directions live in different spaces"
            )
    for d in dicts:
        if directions == "encoder" and not d.has_encoder:
            raise InputError(f"{d.meta.source} has no encoder directions; use decoder")


def compare(
    a: Dictionary,
    b: Dictionary | None = None,
    *,
    directions: Directions = "decoder",
    k: int = 1,
    device: str = "auto",
    progress: Progress | None = None,
    cache: ArrayCache | None | bool = True,
) -> Comparison:
    """Top-k neighbours of A's included features among B's (B=None: within A, self excluded).

    cache: True uses the default disk cache, False none, or a given ArrayCache.
    Raises InputError for mismatched d_model, a missing encoder or k out of range.
    """

    def compute() -> tuple[dict[str, np.ndarray], dict]:
        return compare_entry(a, b, directions=directions, k=k, device=device, progress=progress)

    return _cached_comparison(a, b, directions, k, cache, compute)


def _cached_comparison(
    a: Dictionary,
    b: Dictionary | None,
    directions: Directions,
    k: int,
    cache: ArrayCache | None | bool,
    compute: Callable[[], tuple[dict[str, np.ndarray], dict]],
) -> Comparison:
    """`compare`'s checks, then its cache entry: read, or `compute()`d and stored."""
    check_comparable([a] if b is None else [a, b], directions)
    ia = a.alive_index
    ib = ia if b is None else b.alive_index
    n_targets = len(ib) - (1 if b is None else 0)
    if len(ia) == 0:
        raise InputError(f"{a.meta.source} has no alive features to compare")
    if not 1 <= k <= min(MAX_K, n_targets):
        raise InputError(f"k must be between 1 and {min(MAX_K, n_targets)}, got {k}")
    fb = None if b is None else b.fingerprint
    arrays, _ = through(cache, _compare_key(a, b, directions, k), compute)
    return Comparison(
        a.fingerprint, fb, directions, ia, arrays["values"], arrays["indices"], n_targets
    )


def compare_with_reverse(
    a: Dictionary,
    b: Dictionary,
    *,
    directions: Directions = "decoder",
    k: int = 1,
    device: str = "auto",
    progress: Progress | None = None,
    cache: ArrayCache | None | bool = True,
) -> Comparison:
    """`compare(a, b)`, computing and caching `compare(b, a)` in the same pass where one pass
    serves both (`topk.tiles_kernel`: a CPU with the compiled kernel, a pass big enough for
    bf16 and tiles, k within both sets; about 1.3x one direction instead of 2x): what the
    dashboard and `precompute` ask for, since the pages that show A -> B show B -> A too.
    B -> A is then a lookup; concurrent callers of a pair in this process (a page's A -> B
    and B -> A jobs) compute it once. Without a cache, simply `compare(a, b)`. Whether the
    pass applies is decided only on a miss: a cached answer needs neither torch nor the
    compiled kernel."""
    store = resolve_cache(cache)
    if store is None:
        return compare(a, b, directions=directions, k=k, device=device, progress=progress,
                       cache=False)  # fmt: skip
    keys = [_compare_key(x, y, directions, k) for x, y in ((a, b), (b, a))]

    def compute() -> tuple[dict[str, np.ndarray], dict]:
        from .topk import pick_device

        dev = pick_device(device)
        kernel = _pair_kernel(a, b, dev, k)
        if kernel is None or store.get(keys[1]) is not None:  # one direction: A -> B alone
            return compare_entry(a, b, directions=directions, k=k, device=device,
                                 progress=progress)  # fmt: skip
        (v, i), (rv, ri) = _both_ways(a, b, directions, k, dev, kernel, progress)
        store.set(keys[1], {"values": rv, "indices": ri})
        return {"values": v, "indices": i}, {}

    with _pair_lock(keys):  # B -> A's caller waits here, then finds A -> B stored
        return _cached_comparison(a, b, directions, k, store, compute)


def _both_ways(
    a: Dictionary,
    b: Dictionary,
    directions: Directions,
    k: int,
    dev: torch.device,
    kernel: Kernel,
    progress: Progress | None,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((values, feature indices) of A -> B, the same of B -> A) from one two-sided pass."""
    from .topk import _to_device
    from .topk_tiles import pair_topk

    ia, ib = a.alive_index, b.alive_index
    ta, tb = (_to_device(_rows(d, directions, d.alive_index), dev) for d in (a, b))
    label = f"top-{k} of {len(ia):,} x {len(ib):,} both ways on {dev}"
    with exclusive(str(dev), label, len(ia) * len(ib)):
        (va, xa), (vb, xb), _ = pair_topk(ta, tb, k, kernel, progress=progress)
    return (va.numpy(), ib[xa.numpy()]), (vb.numpy(), ia[xb.numpy()])


def _pair_kernel(a: Dictionary, b: Dictionary, dev: torch.device, k: int) -> Kernel | None:
    """The kernel of a two-sided pass of A and B here (`topk.tiles_kernel`), or None."""
    from .topk import auto_precision, tiles_kernel

    n_a, n_b = len(a.alive_index), len(b.alive_index)
    if not 1 <= k <= min(MAX_K, n_a, n_b):
        return None
    return tiles_kernel(auto_precision(n_a, n_b, dev), dev, min(n_a, n_b), within=False)


def _compare_key(a: Dictionary, b: Dictionary | None, directions: Directions, k: int) -> str:
    fb = None if b is None else b.fingerprint
    return make_key("compare", a.fingerprint, fb or "self", directions=directions, k=k)


_PAIR_LOCKS: dict[frozenset[str], threading.Lock] = {}
_PAIR_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def _pair_lock(keys: list[str]) -> Iterator[None]:
    """One lock per unordered pair of comparison keys, for this process's threads."""
    with _PAIR_LOCKS_GUARD:
        lock = _PAIR_LOCKS.setdefault(frozenset(keys), threading.Lock())
    with lock:
        yield


def compare_entry(
    a: Dictionary,
    b: Dictionary | None,
    *,
    directions: Directions,
    k: int,
    device: str = "auto",
    rows: slice | None = None,
    progress: Progress | None = None,
) -> tuple[dict[str, np.ndarray], dict]:
    """What `compare` caches: ({"values", "indices"} [m, k], {}), row i for A's i-th included
    feature; with `rows`, only those rows: a shard of the pass, which `geometry.shards` merges
    back (bit-identical when shards start on block edges, see `topk_cosine`). No argument
    checks: `compare` makes them. Memory: a shard across dictionaries holds only its rows of
    A (and all of B); one within A holds all of A, its own targets."""
    from .topk import auto_precision, pick_device, topk_cosine

    ia = a.alive_index
    ib = ia if b is None else b.alive_index
    if b is None:
        res = topk_cosine(_rows(a, directions, ia), None, k, device=device, rows=rows,
                          progress=progress)  # fmt: skip
    else:
        mine = ia if rows is None else ia[rows]
        res = topk_cosine(
            _rows(a, directions, mine), _rows(b, directions, ib), k, device=device,
            precision=auto_precision(len(ia), len(ib), pick_device(device)),  # the whole pass's
            progress=progress,
        )  # fmt: skip
    return {"values": res.values, "indices": ib[res.indices]}, {}


def match(
    a: Dictionary,
    b: Dictionary,
    *,
    directions: Directions = "decoder",
    k_candidates: int = K_CANDIDATES,
    dense_limit: int = 4096,
    device: str = "auto",
    forward: Comparison | None = None,
    progress: Progress | None = None,
    cache: ArrayCache | None | bool = True,
    certify: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    info: dict | None = None,
) -> Matching:
    """One-to-one matching of A's included features to B's; indices are feature indices.

    `forward` (a Comparison of A with B, same directions, at least k_candidates wide) saves
    one top-k pass at scale. `certify` proves the sparse result optimal over all pairs (see
    `geometry.matching`). Dual potentials come back indexed by position in A's and B's
    `alive_index`. cache: True uses the default disk cache, False none, or a given
    ArrayCache. The key is the fingerprints, directions, k_candidates, dense_limit, certify,
    tolerance and the solver's version (`MATCHING_VERSION`: entries of an earlier, uncertified
    solver are never served): `forward` stands in for a top-k pass that gives the same
    candidates (the top-k is exact, ties to the lower index), and `device` does not change
    exact results, so neither is part of it (as in `compare`). `info` receives the solver's
    timings when it runs (nothing on a cache hit).
    Raises InputError for a `forward` that is not a comparison of A with B by `directions`.
    """
    ia, ib = a.alive_index, b.alive_index
    if forward is not None and (
        forward.a_fingerprint,
        forward.b_fingerprint,
        forward.directions,
    ) != (a.fingerprint, b.fingerprint, directions):
        raise InputError(
            f"forward is not a {directions} comparison of {a.meta.source} with "
            f"{b.meta.source}; pass compare(a, b, directions={directions!r}, k=...)"
        )

    def compute() -> tuple[dict[str, np.ndarray], dict]:
        from .matching import match_one_to_one
        from .topk import TopK

        fwd = None
        if forward is not None and forward.values.shape[1] >= k_candidates:
            position = np.full(b.n_features, -1, np.int64)
            position[ib] = np.arange(len(ib))
            fwd = TopK(forward.values, position[forward.indices])
        va, vb = _rows(a, directions, ia), _rows(b, directions, ib)
        m = match_one_to_one(
            va, vb, k_candidates=k_candidates, dense_limit=dense_limit, device=device,
            progress=progress, forward=fwd, certify=certify, tolerance=tolerance, info=info,
        )  # fmt: skip
        b_index = np.where(m.b_index >= 0, ib[np.maximum(m.b_index, 0)], -1)
        meta = {name: getattr(m, name) for name in _MATCHING_SCALARS}
        arrays = {name: getattr(m, name) for name in _MATCHING_ARRAYS}
        return {**arrays, "b_index": b_index}, meta

    key = make_key(
        "match", a.fingerprint, b.fingerprint, directions=directions,
        k_candidates=k_candidates, dense_limit=dense_limit, certify=certify,
        tolerance=tolerance, solver=MATCHING_VERSION,
    )  # fmt: skip
    arrays, meta = through(cache, key, compute)
    return Matching(
        b_index=arrays["b_index"], cosine=arrays["cosine"], potentials_a=arrays["potentials_a"],
        potentials_b=arrays["potentials_b"], **meta,
    )  # fmt: skip


def _rows(d: Dictionary, directions: Directions, index: np.ndarray) -> np.ndarray:
    """The unit rows of `index` (the alive features): the dictionary's own array, not a
    140 MB copy, when every feature is alive."""
    rows = d.directions(directions)
    return rows if len(index) == len(rows) else rows[index]


MATCHING_VERSION = 2  # 2: certified sparse solver (lap.py + certificate.py)
# Matching's fields besides its arrays: stored as JSON (floats round-trip exactly, NaN too).
_MATCHING_SCALARS = (
    "total", "mean", "n_matched", "method", "upper_bound", "n_candidates",
    "certified", "bound", "tolerance", "rounds",
)  # fmt: skip
_MATCHING_ARRAYS = ("b_index", "cosine", "potentials_a", "potentials_b")
