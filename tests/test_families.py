"""Families across a width ladder: planted parents, splits, survivors, vanished and novel
features recovered exactly; values equal to float64 references."""

from __future__ import annotations

import numpy as np
import pytest

from sae_backend.cache import ArrayCache
from sae_backend.dictionary import Dictionary, RawSAE
from sae_backend.errors import InputError
from sae_backend.geometry import families as fam_module
from sae_backend.geometry.families import Edge, families, split_coverage
from tests.ladders import (
    DAG_EDGES,
    TREE_EDGES,
    TREE_LABELS,
    TREE_NOVEL,
    coverage_reference,
    families_reference,
    planted_ladder,
)


def edge_set(level):
    return set(zip(level.parent.tolist(), level.child.tolist(), strict=True))


@pytest.mark.parametrize("mode", ["tree", "dag"])
def test_planted_ladder_edges_and_values(mode):
    lad = planted_ladder()
    fam = families(lad.dictionaries(), tau=0.5, mode=mode, cache=False)
    expected = TREE_EDGES if mode == "tree" else DAG_EDGES
    assert len(fam.levels) == 2 and fam.warnings == ()
    assert fam.widths == (5, 8, 9) and fam.n_alive == (4, 7, 8)
    for level, (narrow, wide) in zip(
        fam.levels, zip(lad.decoders[:-1], lad.decoders[1:], strict=True), strict=True
    ):
        assert edge_set(level) == expected[level.level]
        ref = families_reference(narrow, wide, 0.5, dag=mode == "dag")
        assert set(ref) == expected[level.level]
        got = {(p, c): v for p, c, v in zip(level.parent, level.child, level.cosine, strict=True)}
        for pair, v in ref.items():
            assert abs(got[pair] - v) <= 1e-5
        # edges sorted by parent, then cosine descending, then child
        keys = list(
            zip(level.parent.tolist(), (-level.cosine).tolist(), level.child.tolist(), strict=True)
        )
        assert keys == sorted(keys)
    # the planted cosines themselves
    lv = fam.levels[0]
    l0 = {(p, c): float(v) for p, c, v in zip(lv.parent, lv.child, lv.cosine, strict=True)}
    assert l0[(0, 0)] == pytest.approx(1 / np.sqrt(1.01), abs=1e-6)
    assert l0[(1, 1)] == pytest.approx(np.sqrt(0.5), abs=1e-6)
    assert l0[(2, 5)] == pytest.approx(0.8, abs=1e-6)
    if mode == "dag":
        assert l0[(1, 5)] == pytest.approx(0.6, abs=1e-6)


def test_planted_labels_counts_and_label_rows():
    fam = families(planted_ladder().dictionaries(), cache=False)
    for level in fam.levels:
        labels = dict(zip(level.parent_index.tolist(), level.labels.tolist(), strict=True))
        assert labels == TREE_LABELS[level.level]
        novel = set(level.child_index[level.novel].tolist())
        assert novel == TREE_NOVEL[level.level + 1]
    c0, c1 = fam.counts()
    assert (c0.vanished, c0.stable, c0.split, c0.novel, c0.edges) == (1, 2, 1, 3, 4)
    assert (c1.vanished, c1.stable, c1.split, c1.novel, c1.edges) == (2, 4, 1, 2, 6)
    assert (c0.n_narrow, c0.n_wide, c1.n_narrow, c1.n_wide) == (4, 7, 7, 8)
    rows = list(fam.label_rows())
    expected = [(0, f, lab) for f, lab in sorted(TREE_LABELS[0].items())]
    for f in range(7):  # dictionary 1: novel first, then its role towards dictionary 2
        if f in TREE_NOVEL[1]:
            expected.append((1, f, "novel"))
        expected.append((1, f, TREE_LABELS[1][f]))
    expected += [(2, f, "novel") for f in sorted(TREE_NOVEL[2])]
    assert rows == expected
    assert fam.labels_of(1, 6) == ("novel", "stable")
    assert fam.labels_of(2, 3) == ()
    assert fam.labels_of(0, 3) == ("vanished",)


def test_dag_labels_split_three_ways():
    fam = families(planted_ladder().dictionaries(), mode="dag", cache=False)
    level = fam.levels[0]
    assert level.labels.tolist() == ["stable", "split", "stable", "vanished"]
    assert level.n_children.tolist() == [1, 3, 1, 0]
    assert level.n_parents.tolist() == [1, 1, 1, 0, 0, 2, 0]  # B5 has two parents
    parents, cos = level.parents_of(5)
    assert parents.tolist() == [2, 1]
    np.testing.assert_allclose(cos, [0.8, 0.6], atol=1e-6)


def test_split_coverage_closed_forms_and_lstsq_reference():
    lad = planted_ladder()
    a, b, c = lad.decoders
    tree = families(lad.dictionaries(), cache=False)
    cov0, cov1 = tree.levels[0].coverage, tree.levels[1].coverage
    # A1 on (e1+e5)/sqrt2, (e1+e6)/sqrt2: |proj|^2 = 2/3; one child: cos^2; vanished: NaN
    assert cov0[1] == pytest.approx(2 / 3, abs=1e-6)
    assert cov0[0] == pytest.approx(1 / 1.01, abs=1e-6)
    assert cov0[2] == pytest.approx(0.64, abs=1e-6)
    assert np.isnan(cov0[3])
    # B1 = (C1 + C2) / 2 up to scale: fully spanned
    assert cov1[1] == pytest.approx(1.0, abs=1e-6)
    for cov, narrow, wide, level in ((cov0, a, b, tree.levels[0]), (cov1, b, c, tree.levels[1])):
        for pos, p in enumerate(level.parent_index):
            kids = level.child[level.parent == p]
            if len(kids):
                assert abs(cov[pos] - coverage_reference(narrow[p], wide[kids])) <= 1e-6
    dag = families(lad.dictionaries(), mode="dag", cache=False)
    assert dag.levels[0].coverage[1] == pytest.approx(
        coverage_reference(a[1], b[[1, 2, 5]]), abs=1e-6
    )


def test_split_coverage_rank_deficient_and_batched(monkeypatch):
    """Duplicate children (rank-deficient) and many parents in several SVD batches."""
    monkeypatch.setattr(fam_module, "_SVD_BATCH", 3)
    rng = np.random.default_rng(5)
    narrow = rng.standard_normal((12, 10)).astype(np.float32)
    wide = rng.standard_normal((30, 10)).astype(np.float32)
    wide[1] = wide[0]  # duplicate child
    parent = np.array([0, 0, 2, 2, 2, 3, 5, 5, 6, 7, 8, 8, 9, 10, 11, 11])
    child = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15])
    index = np.arange(12)
    got = split_coverage(narrow, wide, index, parent, child)
    for p in index:
        kids = child[parent == p]
        if len(kids) == 0:
            assert np.isnan(got[p])
        else:
            assert abs(got[p] - coverage_reference(narrow[p], wide[kids])) <= 1e-9


@pytest.mark.parametrize("tau", [0.3, 0.45, 0.6])
@pytest.mark.parametrize("mode", ["tree", "dag"])
def test_random_ladder_equals_float64_reference(mode, tau):
    """Wider dictionaries made of noisy mixtures of narrower rows, with dead rows."""
    rng = np.random.default_rng(11)
    d = 16
    narrow = rng.standard_normal((40, d))
    mix = rng.standard_normal((90, 40)) * (rng.random((90, 40)) < 0.05)
    wide = mix @ narrow + 0.6 * rng.standard_normal((90, d))
    wider = np.vstack([wide[rng.permutation(90)] + 0.3 * rng.standard_normal((90, d)),
                       rng.standard_normal((30, d))])  # fmt: skip
    narrow[[4, 17]] = 0.0
    wide[[3]] = 0.0
    ladder = [Dictionary.from_raw(RawSAE(m), source=f"r{i}", format="matrix")
              for i, m in enumerate((narrow, wide, wider))]  # fmt: skip
    fam = families(ladder, tau=tau, mode=mode, cache=False)
    for level, (x, y) in zip(fam.levels, ((narrow, wide), (wide, wider)), strict=True):
        ref = families_reference(x, y, tau, dag=mode == "dag")
        allv = np.concatenate([[v] for v in ref.values()]) if ref else np.empty(0)
        assert not np.any(np.abs(allv - tau) < 1e-5)  # no decision within float32 rounding
        assert edge_set(level) == set(ref)
        pairs = zip(level.parent.tolist(), level.child.tolist(), strict=True)
        got = dict(zip(pairs, level.cosine.tolist(), strict=True))
        assert max(abs(got[k] - v) for k, v in ref.items()) <= 1e-5
        assert len(ref) > 10


def test_dag_widens_rows_with_more_parents_than_first_k(monkeypatch):
    """40 near-duplicates of one direction in the narrow dictionary: a wide feature along it
    has 40 parents >= tau, more than the first k asked (16, and 3 here)."""
    rng = np.random.default_rng(2)
    d = 12
    u = rng.standard_normal(d)
    narrow = u + 0.3 * rng.standard_normal((40, d)) * np.linalg.norm(u) / np.sqrt(d)
    narrow = np.vstack([narrow, rng.standard_normal((10, d))])
    wide = np.vstack([u, rng.standard_normal((20, d))])
    ladder = [Dictionary.from_raw(RawSAE(m), source=f"w{i}", format="matrix")
              for i, m in enumerate((narrow, wide))]  # fmt: skip
    ref = families_reference(narrow, wide, 0.5, dag=True)
    assert sum(c == 0 for _, c in ref) >= 40
    for first_k in (16, 3):
        monkeypatch.setattr(fam_module, "DAG_FIRST_K", first_k)
        fam = families(ladder, mode="dag", cache=False)
        assert edge_set(fam.levels[0]) == set(ref)


def test_chain_up_and_down():
    fam = families(planted_ladder().dictionaries(), cache=False)
    ch = fam.chain(0, 1)
    assert ch.nodes == ((0, 1), (1, 1), (1, 2), (2, 1), (2, 2), (2, 3))
    # C1, C2 tie with B1 in exact arithmetic: compare as a set, check the order separately
    assert {(e.level, e.parent, e.child) for e in ch.edges} == {
        (0, 1, 1), (0, 1, 2), (1, 1, 1), (1, 1, 2), (1, 2, 3),
    }  # fmt: skip
    keys = [(e.level, e.parent, -e.cosine, e.child) for e in ch.edges]
    assert keys == sorted(keys)
    up = fam.chain(2, 3)
    assert up.nodes == ((0, 1), (1, 2), (2, 3))
    assert up.edges[0] == Edge(0, 1, 2, pytest.approx(np.sqrt(0.5), abs=1e-6))
    assert fam.chain(1, 3).nodes == ((1, 3), (2, 4))  # novel in 1, stable into 2
    assert fam.chain(0, 3).nodes == ((0, 3),)  # vanished
    dag = families(planted_ladder().dictionaries(), mode="dag", cache=False)
    assert dag.chain(1, 5).nodes == ((0, 1), (0, 2), (1, 5))  # two parents, no child
    with pytest.raises(InputError, match="not an alive feature"):
        fam.chain(0, 4)  # dead
    with pytest.raises(InputError, match="not in the ladder"):
        fam.chain(3, 0)


def test_tree_mode_reuses_one_cached_pass_for_every_tau(tmp_path):
    cache = ArrayCache(tmp_path / "c")
    ladder = planted_ladder().dictionaries()
    first = families(ladder, tau=0.5, cache=cache)
    misses = cache.stats.misses
    assert misses == 2  # one top-1 pass per level
    again = families(ladder, tau=0.9, cache=cache)
    assert cache.stats.misses == misses  # a new tau: no new pass
    assert edge_set(again.levels[0]) == {(0, 0)}
    same = families(ladder, tau=0.5, cache=cache)
    for x, y in zip(first.levels, same.levels, strict=True):
        assert edge_set(x) == edge_set(y)
        np.testing.assert_array_equal(x.cosine, y.cosine)
    dag1 = families(ladder, mode="dag", cache=cache)
    dag2 = families(ladder, mode="dag", cache=cache)
    assert cache.stats.misses == misses + 2
    assert edge_set(dag1.levels[0]) == edge_set(dag2.levels[0]) == DAG_EDGES[0]


def test_progress_counts_wider_features_over_all_levels():
    seen = []
    families(planted_ladder().dictionaries(), progress=lambda n, t: seen.append((n, t)),
             cache=False)  # fmt: skip
    assert seen[-1] == (15, 15) and all(t == 15 for _, t in seen)


def test_warnings_for_mixed_hooks_and_non_increasing_widths():
    lad = planted_ladder()
    mixed = families(lad.dictionaries(hooks=("h.1", "h.1", "h.2")), cache=False)
    assert len(mixed.warnings) == 1 and "mixes hooks (h.1, h.2)" in mixed.warnings[0]
    d = lad.dictionaries()
    backwards = families([d[1], d[0]], cache=False)
    assert any("is not wider than" in w for w in backwards.warnings)


def test_bad_input():
    d = planted_ladder().dictionaries()
    other = Dictionary.from_raw(RawSAE(np.eye(5)), source="five", format="matrix")
    dead = Dictionary.from_raw(RawSAE(np.eye(24), alive=np.zeros(24, bool)), source="dead",
                               format="matrix")  # fmt: skip
    with pytest.raises(InputError, match="at least two"):
        families(d[:1])
    with pytest.raises(InputError, match="d_model"):
        families([d[0], other])
    for tau in (0.0, -0.2, 1.5):
        with pytest.raises(InputError, match="tau"):
            families(d, tau=tau)
    with pytest.raises(InputError, match="mode"):
        families(d, mode="forest")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="no alive"):
        families([d[0], dead])
