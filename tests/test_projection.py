"""UMAP projection: exact kNN graph vs a float64 brute force, planted clusters stay apart in the
joint embedding, seeds, point bookkeeping, the disk cache and bad input.

umap-learn compiles its numba kernels once per process (~10 s here), so the embeddings below
are small (300 points, d = 16) and shared through a module fixture where they can be.
"""

from __future__ import annotations

import numpy as np
import pytest

from sae_backend import projection
from sae_backend.cache import ArrayCache
from sae_backend.dictionary import Dictionary, RawSAE
from sae_backend.errors import InputError
from sae_backend.projection import Embedding, knn_graph, stack, umap_embedding
from tests.factories import unit_rows

D = 16
N_A, N_B = 160, 140
DEAD_A = (3, 50, 77)  # zero rows: never points
SAID_DEAD_B = (0, 9)  # the source says these are dead


def _clustered(n: int, centers: np.ndarray, rng: np.random.Generator):
    """[n, d] rows around 3 centres (cos ~0.9 within a cluster, ~0 across) and their labels."""
    labels = rng.integers(0, len(centers), n)
    rows = centers[labels] + 0.3 * rng.standard_normal((n, centers.shape[1]))
    rows *= rng.uniform(0.1, 10.0, (n, 1))  # scale must not matter: directions are unit
    return rows, labels


@pytest.fixture(scope="module")
def planted():
    """Two dictionaries sharing 3 well-separated clusters of directions, with dead features."""
    rng = np.random.default_rng(7)
    centers = rng.standard_normal((3, D))
    dec_a, lab_a = _clustered(N_A, centers, rng)
    dec_a[list(DEAD_A)] = 0.0
    dec_b, lab_b = _clustered(N_B, centers, rng)
    alive_b = np.ones(N_B, bool)
    alive_b[list(SAID_DEAD_B)] = False
    a = Dictionary.from_raw(RawSAE(dec_a, encoder=rng.standard_normal((N_A, D))),
                            source="a", format="test")  # fmt: skip
    b = Dictionary.from_raw(RawSAE(dec_b, alive=alive_b), source="b", format="test")
    return {"dicts": [a, b], "decoders": [dec_a, dec_b], "labels": [lab_a, lab_b]}


@pytest.fixture(scope="module")
def embedded(planted):
    return umap_embedding(planted["dicts"], n_neighbors=10, cache=False)


def _brute_knn(x64: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """float64 reference: self first, then the k - 1 most similar other rows."""
    s = x64 @ x64.T
    np.fill_diagonal(s, -np.inf)
    order = np.argsort(-s, axis=1, kind="stable")[:, : k - 1]
    idx = np.concatenate([np.arange(len(x64))[:, None], order], axis=1)
    dist = np.concatenate([np.zeros((len(x64), 1)), 1.0 - np.take_along_axis(s, order, 1)], 1)
    return idx, dist


def test_knn_graph_equals_float64_brute_force():
    rng = np.random.default_rng(0)
    raw = rng.standard_normal((120, 12))
    raw[7] = 3.0 * raw[2]  # same direction: distance 0, must not come out negative
    raw[11] = -raw[5]  # opposite: distance 2
    x64 = unit_rows(raw)[0]
    idx, dist = knn_graph(x64.astype(np.float32), 8)
    ref_idx, ref_dist = _brute_knn(x64, 8)
    assert idx.shape == dist.shape == (120, 8) and dist.dtype == np.float32
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(dist, ref_dist, atol=1e-6)
    assert idx[2, 1] == 7 and idx[7, 1] == 2 and dist.min() >= 0.0 and dist[7, 1] < 1e-6
    assert np.all(np.diff(dist, axis=1) >= 0)


def test_umap_receives_the_exact_graph(planted, monkeypatch):
    """What umap-learn is handed is the brute-force graph of the stacked unit directions."""
    import umap

    seen = {}

    class Spy(umap.UMAP):
        def __init__(self, **kw):
            seen.update(kw)
            super().__init__(**kw)

    monkeypatch.setattr(umap, "UMAP", Spy)
    umap_embedding(planted["dicts"], n_neighbors=6, n_epochs=20, cache=False)
    a, b = planted["dicts"]
    x64 = np.concatenate([unit_rows(dec)[0][d.alive] for d, dec in zip(
        planted["dicts"], planted["decoders"], strict=True)])  # fmt: skip
    ref_idx, ref_dist = _brute_knn(x64, 6)
    idx, dist = seen["precomputed_knn"]
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(dist, ref_dist, atol=1e-6)
    assert seen["metric"] == "cosine" and seen["n_neighbors"] == 6 and seen["random_state"] == 0


def test_points_map_back_to_features(planted, embedded):
    a, b = planted["dicts"]
    ia = np.setdiff1d(np.arange(N_A), DEAD_A)
    ib = np.setdiff1d(np.arange(N_B), SAID_DEAD_B)
    assert len(embedded) == len(ia) + len(ib) == 295
    assert embedded.xy.shape == (295, 2) and embedded.xy.dtype == np.float32
    assert embedded.dict_index.dtype == np.int32 and embedded.feature.dtype == np.int64
    np.testing.assert_array_equal(embedded.dict_index, [0] * len(ia) + [1] * len(ib))
    np.testing.assert_array_equal(embedded.feature, np.concatenate([ia, ib]))
    x, _, _ = stack(planted["dicts"])
    for pos in (0, 100, len(ia), 294):  # the row a point stands for is that feature's direction
        dec = planted["decoders"][embedded.dict_index[pos]][embedded.feature[pos]]
        np.testing.assert_allclose(x[pos], dec / np.linalg.norm(dec), atol=1e-6)
    assert embedded.params == {"n_neighbors": 10, "min_dist": 0.1, "seed": 0,
                               "directions": "decoder", "metric": "cosine", "n_epochs": 500}  # fmt: skip


def test_planted_clusters_are_separated_and_joint(planted, embedded):
    """Each point's nearest neighbours in 2-D share its planted cluster (chance: ~1/3), and
    those neighbours come from both dictionaries (one joint map, not two side by side)."""
    labels = np.array([planted["labels"][d][f] for d, f in zip(
        embedded.dict_index, embedded.feature, strict=True)])  # fmt: skip
    xy = embedded.xy.astype(np.float64)
    d2 = ((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    near = np.argsort(d2, axis=1)[:, :10]
    same_cluster = (labels[near] == labels[:, None]).mean()
    chance = sum((np.bincount(labels) / len(labels)) ** 2)
    assert chance < 0.4 and same_cluster > 0.97, (same_cluster, chance)
    other_dict = (embedded.dict_index[near] != embedded.dict_index[:, None]).mean()
    assert other_dict > 0.3, other_dict  # about half the cluster is from the other dictionary
    # the clusters' centroids are far apart compared with the spread inside each
    cent = np.stack([xy[labels == c].mean(0) for c in range(3)])
    spread = max(np.linalg.norm(xy[labels == c] - cent[c], axis=1).mean() for c in range(3))
    gaps = [np.linalg.norm(cent[i] - cent[j]) for i in range(3) for j in range(i + 1, 3)]
    assert min(gaps) > 3 * spread, (gaps, spread)


def test_seed_reproducible_and_used(planted, embedded):
    again = umap_embedding(planted["dicts"], n_neighbors=10, cache=False)
    np.testing.assert_array_equal(again.xy, embedded.xy)
    other = umap_embedding(planted["dicts"], n_neighbors=10, seed=1, cache=False)
    assert np.abs(other.xy - embedded.xy).max() > 0.1


def test_cache_hit_on_second_call(planted, tmp_path, monkeypatch):
    store = ArrayCache(tmp_path / "c")
    first = umap_embedding(planted["dicts"], n_neighbors=5, n_epochs=30, cache=store)
    assert (store.stats.hits, store.stats.misses) == (0, 1)

    def no_fit(*_a, **_k):
        raise AssertionError("a cached embedding was recomputed")

    monkeypatch.setattr(projection, "_fit", no_fit)
    second = umap_embedding(planted["dicts"], n_neighbors=5, n_epochs=30, cache=store)
    assert (store.stats.hits, store.stats.misses) == (1, 1)
    for name in ("xy", "dict_index", "feature"):
        np.testing.assert_array_equal(getattr(second, name), getattr(first, name))
    assert second.params == first.params
    with pytest.raises(AssertionError, match="recomputed"):  # other parameters: another key
        umap_embedding(planted["dicts"], n_neighbors=5, n_epochs=30, seed=3, cache=store)
    with pytest.raises(AssertionError, match="recomputed"):  # other order: another key
        umap_embedding(planted["dicts"][::-1], n_neighbors=5, n_epochs=30, cache=store)


def test_only_cached_never_computes(planted, tmp_path, monkeypatch):
    store = ArrayCache(tmp_path / "c")
    kw = dict(n_neighbors=5, n_epochs=30, cache=store)
    assert umap_embedding(planted["dicts"], only_cached=True, **kw) is None
    assert store.stats.misses == 0 and len(store) == 0  # nothing computed, nothing stored
    first = umap_embedding(planted["dicts"], **kw)
    monkeypatch.setattr(projection, "_fit", lambda *_a, **_k: pytest.fail("recomputed"))
    again = umap_embedding(planted["dicts"], only_cached=True, **kw)
    np.testing.assert_array_equal(again.xy, first.xy)
    np.testing.assert_array_equal(again.feature, first.feature)
    assert umap_embedding(planted["dicts"], only_cached=True, seed=9, **kw) is None
    kw["cache"] = False
    assert umap_embedding(planted["dicts"], only_cached=True, **kw) is None


def test_progress_runs_through_knn_and_epochs(planted):
    calls = []
    emb = umap_embedding(planted["dicts"], directions="decoder", n_neighbors=5, n_epochs=40,
                         cache=False, progress=lambda d, t: calls.append((d, t)))  # fmt: skip
    total = len(emb) + 40
    assert {t for _, t in calls} == {total}
    done = [d for d, _ in calls]
    assert done == sorted(done) and done[-1] == total
    assert len(emb) in done  # the kNN stage reported its end before the epochs began


def test_encoder_directions_need_every_encoder(planted):
    a, b = planted["dicts"]
    emb = umap_embedding([a], directions="encoder", n_neighbors=5, n_epochs=10, cache=False)
    assert emb.params["directions"] == "encoder" and len(emb) == N_A - len(DEAD_A)
    with pytest.raises(InputError, match="b has no encoder"):
        umap_embedding([a, b], directions="encoder", cache=False)


def _tiny(n: int, d: int, source: str) -> Dictionary:
    raw = RawSAE(np.random.default_rng(n).standard_normal((n, d)))
    return Dictionary.from_raw(raw, source=source, format="test")


@pytest.mark.parametrize(
    "make, kwargs, message",
    [
        (lambda: [_tiny(20, 8, "x.pt"), _tiny(20, 6, "y.pt")], {}, r"y\.pt \(d_model 6\)"),
        (lambda: [_tiny(3, 8, "x"), _tiny(2, 8, "y")], {}, r"have 5 alive features"),
        (lambda: [_tiny(20, 8, "x")], {"n_neighbors": 1}, "between 2 and 19"),
        (lambda: [_tiny(20, 8, "x")], {"n_neighbors": 20}, "have 20 alive features"),
        (lambda: [_tiny(20, 8, "x")], {"min_dist": 1.5}, "min_dist"),
        (lambda: [_tiny(20, 8, "x")], {"seed": -1}, "seed"),
        (lambda: [_tiny(20, 8, "x")], {"n_neighbors": 2.5}, "whole number"),
        (lambda: [_tiny(20, 8, "x")], {"directions": "both"}, "directions"),
        (lambda: [], {}, "at least one dictionary"),
    ],
)
def test_bad_input_is_one_input_error(make, kwargs, message):
    with pytest.raises(InputError, match=message) as err:
        umap_embedding(make(), cache=False, **kwargs)
    assert "\n" not in str(err.value)


def test_embedding_is_frozen(embedded):
    assert isinstance(embedded, Embedding)
    with pytest.raises(AttributeError):
        embedded.xy = None
