"""dashboard/tables.py: the Families and Geometry tables hold exactly the backend's numbers,
on the planted ladder (tests/ladders.py) whose edges, labels and coverages are known."""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest

from dashboard.tables import (
    absorption_table,
    chain_table,
    counts_table,
    frame_row,
    label_table,
    neighbours_url,
)
from sae_backend.dictionary import Dictionary, RawSAE
from sae_backend.geometry.absorption import absorption
from sae_backend.geometry.compare import compare
from sae_backend.geometry.families import families
from sae_backend.geometry.frame import frame
from tests.ladders import (
    TREE_LABELS,
    TREE_NOVEL,
    absorption_reference,
    coverage_reference,
    planted_ladder,
    unit,
)

NAMES = ("narrow", "mid", "wide")


@pytest.fixture(scope="module")
def planted():
    lad = planted_ladder()
    dicts = lad.dictionaries()
    return lad, dicts, families(dicts, tau=0.5, cache=False)


def test_neighbours_url_is_relative_and_carries_name_and_feature():
    url = neighbours_url("x2 s0&b", 17)
    assert not url.startswith("/") and urlparse(url).path == "Neighbours"
    assert parse_qs(urlparse(url).query) == {"dict": ["x2 s0&b"], "feature": ["17"]}


def test_counts_table_is_the_planted_labels_per_level(planted):
    _, _, fam = planted
    table = counts_table(fam, NAMES)
    assert list(table["level"]) == ["narrow → mid", "mid → wide"]
    for row, level in zip(table.itertuples(index=False), (0, 1), strict=True):
        labels = list(TREE_LABELS[level].values())
        assert row.vanished == labels.count("vanished")
        assert row.stable == labels.count("stable")
        assert row.split == labels.count("split")
        assert row.novel == len(TREE_NOVEL[level + 1])
    assert list(table["narrower alive"]) == [4, 7] and list(table["wider alive"]) == [7, 8]
    assert list(table["edges"]) == [4, 6]


def test_label_tables_hold_the_planted_features_children_and_coverage(planted):
    lad, dicts, fam = planted
    for level in (0, 1):
        for label in ("vanished", "stable", "split"):
            t = label_table(fam, NAMES, level, label)
            want = sorted(f for f, lab in TREE_LABELS[level].items() if lab == label)
            assert sorted(t["feature"]) == want
            assert set(t["dictionary"]) <= {NAMES[level]}
        novel = label_table(fam, NAMES, level, "novel")
        assert sorted(novel["feature"]) == sorted(TREE_NOVEL[level + 1])
        assert set(novel["dictionary"]) == {NAMES[level + 1]}
    split = label_table(fam, NAMES, 0, "split")  # A1 -> B1, B2
    assert list(split["feature"]) == [1] and list(split["children"]) == [2]
    assert sorted(int(c) for c in split["children in mid"][0].split(", ")) == [1, 2]
    ref = coverage_reference(lad.decoders[0][1], lad.decoders[1][[1, 2]])
    assert split["coverage"][0] == fam.levels[0].coverage[1]  # copied, not recomputed
    assert split["coverage"][0] == pytest.approx(ref, abs=1e-6)  # float32 rows
    # planted: e1 projected on span(e1 + e5, e1 + e6) is (2 e1 + e5 + e6) / 3, squared norm 2/3
    assert split["coverage"][0] == pytest.approx(2 / 3, abs=1e-6)


def test_vanished_and_novel_show_the_nearest_feature_on_the_other_side(planted):
    lad, dicts, fam = planted
    narrow, wide = dicts[0], dicts[1]
    vanished = label_table(fam, NAMES, 0, "vanished", compare(narrow, wide, cache=False))
    novel = label_table(fam, NAMES, 0, "novel", compare(wide, narrow, cache=False))
    s = unit(lad.decoders[0]) @ unit(lad.decoders[1]).T  # float64 [narrow, wide]
    alive_n, alive_w = [0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 6]
    for f, near, c in zip(vanished["feature"], vanished["nearest in mid"],
                          vanished["its cosine"], strict=True):  # fmt: skip
        best = alive_w[int(np.argmax(s[f, alive_w]))]
        assert near == best and c == pytest.approx(s[f, best], abs=1e-6)
    # planted: A3 vanished, its best wider feature is B4 = .4 e3 + .917 e8 (cos .4 < tau)
    assert list(vanished["nearest in mid"]) == [4]
    assert vanished["its cosine"][0] == pytest.approx(0.4, abs=1e-6)
    for f, near, c in zip(novel["feature"], novel["nearest in narrow"], novel["its cosine"],
                          strict=True):  # fmt: skip
        assert c == pytest.approx(s[alive_n, f].max(), abs=1e-6) and c < 0.5
        assert s[near, f] == pytest.approx(c, abs=1e-6)  # B3, B6 are orthogonal to all: ties
    # planted: B3 = e7, B4 = .4 e3 + .917 e8 (best A3, .4), B6 = 5 e9
    assert list(novel["feature"]) == [3, 4, 6] and novel["nearest in narrow"][1] == 3


def test_chain_table_lists_the_family_with_parents_children_and_coverage(planted):
    lad, _, fam = planted
    chain = fam.chain(0, 1)  # A1 -> B1, B2; B1 -> C1, C2; B2 -> C3
    t = chain_table(fam, chain, NAMES)
    assert list(zip(t["dictionary"], t["feature"], strict=True)) == [
        ("narrow", 1), ("mid", 1), ("mid", 2), ("wide", 1), ("wide", 2), ("wide", 3)
    ]  # fmt: skip
    assert list(t["labels"]) == ["split", "split", "stable", "", "", ""]
    cos = {(e.level, e.parent, e.child): e.cosine for e in chain.edges}
    assert t["parents"][0] == "" and t["parents"][1] == f"1 ({cos[(0, 1, 1)]:.3f})"
    assert list(t["parents"][3:]) == [f"1 ({cos[(1, 1, 1)]:.3f})", f"1 ({cos[(1, 1, 2)]:.3f})",
                                      f"2 ({cos[(1, 2, 3)]:.3f})"]  # fmt: skip
    assert t["children"][0] == ", ".join(
        f"{c} ({cos[(0, 1, c)]:.3f})" for c in fam.levels[0].children_of(1)[0]
    )
    assert cos[(0, 1, 1)] == pytest.approx(np.sqrt(0.5), abs=1e-6)
    assert t["coverage"][0] == pytest.approx(
        coverage_reference(lad.decoders[0][1], lad.decoders[1][[1, 2]]), abs=1e-6
    )
    assert np.isnan(t["coverage"][3])  # the widest has no children
    assert t["Neighbours"][4] == neighbours_url("wide", 2)


def test_absorption_table_is_sorted_by_signature_with_both_links():
    rng = np.random.default_rng(3)
    dec, enc = rng.standard_normal((40, 12)), rng.standard_normal((40, 12))
    dec[7] = 0.0  # dead
    d = Dictionary.from_raw(RawSAE(dec, enc), source="rand", format="matrix")
    ab = absorption(d, k=3, cache=False)
    t = absorption_table(ab, "r")
    assert len(t) == 39 * 3
    feature, partner, enc_dec, dec_dec = absorption_reference(enc, dec, 3)
    order = np.lexsort((feature, enc_dec[:, 0]))
    np.testing.assert_array_equal(t["feature"], np.repeat(feature[order], 3))
    np.testing.assert_array_equal(t["rank"], np.tile([1, 2, 3], 39))
    np.testing.assert_array_equal(t["partner"], partner[order].ravel())
    np.testing.assert_allclose(t["cos(enc, dec partner)"], enc_dec[order].ravel(), atol=1e-5)
    np.testing.assert_allclose(t["cos(dec, dec partner)"], dec_dec[order].ravel(), atol=1e-5)
    self_cos = np.einsum("ij,ij->i", unit(enc), unit(dec))
    np.testing.assert_allclose(t["self cos"], np.repeat(self_cos[feature[order]], 3), atol=1e-5)
    np.testing.assert_allclose(t["partner self cos"], self_cos[partner[order].ravel()], atol=1e-5)
    assert (np.diff(t["cos(enc, dec partner)"][t["rank"] == 1]) >= 0).all()
    assert t["open feature"][0] == neighbours_url("r", feature[order][0])
    assert t["open partner"][1] == neighbours_url("r", partner[order][0, 1])


def test_frame_row_copies_the_frame_scalars():
    d = Dictionary.from_raw(RawSAE(np.eye(6)[[0, 1, 2, 3, 4, 5, 0]]), source="e", format="matrix")
    fr = frame(d, cache=False)
    row = frame_row(fr, "e")
    assert row["dictionary"] == "e" and row["alive"] == 7 and row["d_model"] == 6
    assert row["coherence"] == pytest.approx(1.0, abs=1e-6)  # a repeated row
    assert row["Welch bound"] == pytest.approx(np.sqrt(1 / 36))
    assert row["frame potential"] == pytest.approx(7 + 2, abs=1e-9)  # diagonal + the pair twice
    assert row["its lower bound"] == pytest.approx(49 / 6)
    assert row["capacity sum"] == pytest.approx(5 + 0.5 + 0.5, abs=1e-9)
