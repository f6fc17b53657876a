"""UMAP of dictionary directions: one joint 2-D embedding of the alive features of several SAEs.

Why it looks like this:

* The k-nearest-neighbour graph UMAP starts from is exact: `topk_cosine` on the stacked unit
  directions (blocked, on the GPU when there is one), handed to umap-learn as `precomputed_knn`.
  umap's own approximate graph (pynndescent) had poor recall on SAE directions, which are
  nearly orthogonal in high dimension, and the exact blocked graph was faster at paper scale.
* Distances are cosine distances, 1 - cos, with each point listed first as its own neighbour at
  distance 0: the layout umap-learn expects from its own `nearest_neighbors`.
* Seeded (`random_state`), so the same inputs give the same coordinates; umap then runs its
  optimisation single-threaded, which is what makes it reproducible.
* Embeddings are cached on disk by the dictionaries' fingerprints and the parameters, so a page
  never computes one twice; `python -m sae_backend umap ...` precomputes them for a server.
* umap-learn is imported only when an embedding is computed: importing it (numba) takes seconds.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypedDict, overload

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

from .cache import ArrayCache, make_key, resolve_cache, through
from .dictionary import Dictionary
from .errors import InputError
from .geometry.compare import check_comparable
from .memory import return_free_memory
from .types import Directions, Float32, Int32, Int64, Progress

__all__ = [
    "MAX_NEIGHBORS",
    "UMAP_DEFAULTS",
    "Embedding",
    "default_epochs",
    "knn_graph",
    "stack",
    "umap_embedding",
]

MAX_NEIGHBORS = 200  # beyond this a UMAP graph stops being local; also bounds the kNN memory
METRIC = "cosine"


class UmapParams(TypedDict):
    n_neighbors: int
    min_dist: float
    seed: int


# What the UMAP page offers first and `precompute` fills the cache with: one place for both.
UMAP_DEFAULTS: UmapParams = {"n_neighbors": 15, "min_dist": 0.1, "seed": 0}

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Embedding:
    """A joint 2-D embedding of the included features of several dictionaries.

    xy:         coordinates.
    dict_index: which input dictionary each point comes from (position in the list).
    feature:    the feature index within that dictionary.
    params:     n_neighbors, min_dist, seed, directions, metric ("cosine"), n_epochs.
    """

    xy: Float32[np.ndarray, "N 2"]
    dict_index: Int32[np.ndarray, " N"]
    feature: Int64[np.ndarray, " N"]
    params: dict[str, Any]

    def __len__(self) -> int:
        return int(self.xy.shape[0])

    def to_rows(self, names: Sequence[str], picked: np.ndarray | None = None) -> pd.DataFrame:
        """The points as a table `RunType,EmbeddingIndex,X,Y` (RunType = `names[dict_index]`,
        EmbeddingIndex = the feature index): the layout e2e_sae's analysis writes. `picked`
        (positions into the embedding) keeps only those points."""
        import pandas as pd

        at = slice(None) if picked is None else np.asarray(picked)
        return pd.DataFrame(
            {
                "RunType": np.asarray(names, dtype=object)[self.dict_index[at]],
                "EmbeddingIndex": self.feature[at],
                "X": self.xy[at, 0],
                "Y": self.xy[at, 1],
            }
        )


def stack(
    dicts: Sequence[Dictionary], directions: Directions = "decoder"
) -> tuple[Float32[np.ndarray, "N d"], Int32[np.ndarray, " N"], Int64[np.ndarray, " N"]]:
    """The points of a joint embedding: every dictionary's alive features, in list order.

    Returns (unit rows x, dict_index, feature).
    Raises InputError for no dictionaries, mismatched d_model or a missing encoder.
    """
    if len(dicts) == 0:
        raise InputError("a UMAP embedding needs at least one dictionary")
    check_comparable(dicts, directions, what="embed")
    features = [d.alive_index for d in dicts]
    x = np.concatenate([d.directions(directions)[f] for d, f in zip(dicts, features, strict=True)])
    dict_index = np.concatenate(
        [np.full(len(f), i, dtype=np.int32) for i, f in enumerate(features)]
    )
    return x.astype(np.float32, copy=False), dict_index, np.concatenate(features).astype(np.int64)


def knn_graph(
    x: np.ndarray,
    n_neighbors: int,
    *,
    device: str = "auto",
    progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine kNN graph of unit rows `x` [N, d] in umap-learn's `precomputed_knn` layout.

    Returns (indices [N, n_neighbors] int64, distances [N, n_neighbors] float32): column 0 is the
    point itself at distance 0, then its n_neighbors - 1 nearest other points by cosine
    distance 1 - cos (ascending; ties towards the lower index), clipped to [0, 2] so float32
    rounding never makes a distance negative.
    """
    from .geometry.topk import topk_cosine  # torch: only when a graph is computed

    n = int(x.shape[0])
    top = topk_cosine(x, None, n_neighbors - 1, device=device, progress=progress)
    indices = np.empty((n, n_neighbors), dtype=np.int64)
    indices[:, 0] = np.arange(n)
    indices[:, 1:] = top.indices
    dists = np.zeros((n, n_neighbors), dtype=np.float32)
    dists[:, 1:] = np.clip(1.0 - top.values, 0.0, 2.0)
    return indices, dists


def default_epochs(n_points: int) -> int:
    """umap-learn's own default: 500 optimisation epochs up to 10,000 points, else 200."""
    return 500 if n_points <= 10_000 else 200


@overload
def umap_embedding(
    dicts: Sequence[Dictionary],
    *,
    directions: Directions = ...,
    n_neighbors: int = ...,
    min_dist: float = ...,
    seed: int = ...,
    n_epochs: int | None = ...,
    device: str = ...,
    cache: ArrayCache | bool | None = ...,
    progress: Progress | None = ...,
    only_cached: Literal[False] = ...,
    release_rows: bool = ...,
) -> Embedding: ...


@overload
def umap_embedding(
    dicts: Sequence[Dictionary],
    *,
    directions: Directions = ...,
    n_neighbors: int = ...,
    min_dist: float = ...,
    seed: int = ...,
    n_epochs: int | None = ...,
    device: str = ...,
    cache: ArrayCache | bool | None = ...,
    progress: Progress | None = ...,
    only_cached: bool,
    release_rows: bool = ...,
) -> Embedding | None: ...


def umap_embedding(
    dicts: Sequence[Dictionary],
    *,
    directions: Directions = "decoder",
    n_neighbors: int = UMAP_DEFAULTS["n_neighbors"],
    min_dist: float = UMAP_DEFAULTS["min_dist"],
    seed: int = UMAP_DEFAULTS["seed"],
    n_epochs: int | None = None,
    device: str = "auto",
    cache: ArrayCache | bool | None = True,
    progress: Progress | None = None,
    only_cached: bool = False,
    release_rows: bool = False,
) -> Embedding | None:
    """One UMAP (cosine metric) of the included features of all `dicts`, computed once.

    n_neighbors: 2..min(N - 1, MAX_NEIGHBORS), N the number of points; min_dist in [0, 1];
    seed: a whole number >= 0; n_epochs: None for umap's default (`default_epochs`).
    device: where the kNN graph is computed ("auto", "cpu", "cuda", "mps").
    cache: True uses the default disk cache, False none, or a given ArrayCache.
    progress(done, total): total = N + n_epochs; kNN rows first, then optimisation epochs,
    and a last call (total, total) when the embedding is ready (also on a cache hit).
    only_cached: return the cached embedding or None, never compute (a page can then show a
    precomputed embedding at once and ask before a long computation).
    release_rows: once the points are stacked, let the dictionaries forget their held unit
    rows (read again from the files when next used): a one-shot caller's memory (the CLI).
    Raises InputError for mismatched d_model, a missing encoder or parameters out of range.
    """
    if len(dicts) == 0:
        raise InputError("a UMAP embedding needs at least one dictionary")
    check_comparable(dicts, directions, what="embed")
    n = sum(d.n_alive for d in dicts)  # the points; their rows are read only to compute
    n_neighbors = _whole(n_neighbors, "n_neighbors")
    hi = min(n - 1, MAX_NEIGHBORS)
    if not 2 <= n_neighbors <= hi:
        raise InputError(
            f"n_neighbors must be between 2 and {max(hi, 2)} (fewer than the number of points), "
            f"got {n_neighbors}; the dictionaries have {n} alive features in all"
        )
    try:
        min_dist = float(min_dist)
    except (TypeError, ValueError):
        raise InputError(f"min_dist must be a number between 0 and 1, got {min_dist!r}") from None
    if not 0.0 <= min_dist <= 1.0:
        raise InputError(f"min_dist must be between 0 and 1, got {min_dist}")
    seed = _whole(seed, "seed")
    if not 0 <= seed < 2**32:
        raise InputError(f"seed must be between 0 and 2**32 - 1, got {seed}")
    n_epochs = default_epochs(n) if n_epochs is None else _whole(n_epochs, "n_epochs")
    if not 1 <= n_epochs <= 10_000:
        raise InputError(f"n_epochs must be between 1 and 10000, got {n_epochs}")

    params = {
        "n_neighbors": n_neighbors,
        "min_dist": min_dist,
        "seed": seed,
        "directions": directions,
        "metric": METRIC,
        "n_epochs": n_epochs,
    }
    total = n + n_epochs

    def compute() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        x, dict_index, feature = stack(dicts, directions)
        if release_rows:  # x holds the only copy the rest needs
            for d in dicts:
                d.release(directions)
        knn = knn_graph(x, n_neighbors, device=device, progress=_offset(progress, 0, total))
        return_free_memory()  # the kNN pass's freed blocks, before umap allocates its own
        xy = _fit(x, knn, params, _offset(progress, n, total))
        return {"xy": xy, "dict_index": dict_index, "feature": feature}, {"params": params}

    key = make_key("umap", *(d.fingerprint for d in dicts), knn="exact", **params)
    if only_cached:
        store = resolve_cache(cache)
        hit = store.get(key) if store is not None else None
        if hit is None:
            return None
        arrays = hit[0]
    else:
        arrays, _ = through(cache, key, compute)
    if progress is not None:
        progress(total, total)
    return Embedding(arrays["xy"], arrays["dict_index"], arrays["feature"], dict(params))


def _fit(
    x: np.ndarray,
    knn: tuple[np.ndarray, np.ndarray],
    params: dict[str, Any],
    epoch_progress: Progress | None,
) -> np.ndarray:
    """umap-learn on the precomputed graph; returns xy [N, 2] float32.

    Warnings umap-learn gives for this use (no search index, hence no `transform`; a graph
    with several components) are logged; one saying the graph was ignored is a bug here.
    """
    import umap

    tqdm_kwds: dict[str, Any] = {"disable": True}
    if epoch_progress is not None:
        # umap-learn reports epochs only through tqdm: let its bar write "done/total" into a
        # sink that forwards the numbers (it writes nothing anywhere else).
        tqdm_kwds = {"disable": False, "file": _EpochSink(epoch_progress), "leave": False,
                     "bar_format": "{n}/{total}", "mininterval": 0.25}  # fmt: skip
    reducer = umap.UMAP(
        n_neighbors=params["n_neighbors"],
        min_dist=params["min_dist"],
        metric=METRIC,
        n_epochs=params["n_epochs"],
        random_state=params["seed"],
        n_jobs=1,  # what a seed implies in umap-learn; said here to avoid its warning
        precomputed_knn=(knn[0].copy(), knn[1].copy()),  # umap edits these in place
        tqdm_kwds=tqdm_kwds,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        xy = reducer.fit_transform(x)
    for w in caught:
        text = str(w.message)
        if "precomputed_knn" in text and "ignored" in text:
            raise RuntimeError(f"umap-learn did not use the exact kNN graph: {text}")
        _log.info("umap-learn: %s", text)
    return np.ascontiguousarray(xy, dtype=np.float32)


class _EpochSink:
    """A write-only text file for tqdm whose lines are "done/total": calls progress with them."""

    _NUMBERS = re.compile(r"(\d+)/(\d+)")

    def __init__(self, progress: Progress):
        self.progress = progress

    def write(self, text: str) -> int:
        found = self._NUMBERS.findall(text)
        if found:
            done, total = found[-1]
            self.progress(int(done), int(total))
        return len(text)

    def flush(self) -> None:
        pass


def _offset(progress: Progress | None, start: int, total: int) -> Progress | None:
    """progress for one stage: its (done, _) becomes (start + done, total) of the whole."""
    if progress is None:
        return None
    return lambda done, _stage_total: progress(min(start + done, total), total)


def _whole(value: Any, name: str) -> int:
    """`value` as an int, or InputError (bools and fractional numbers are not whole numbers)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise InputError(f"{name} must be a whole number, got {value!r}")
    return int(value)
