"""The matching's pure dashboard parts (dashboard/matching_tables.py, the match-status figure in
dashboard/charts.py, the wording in dashboard/text.py), without Streamlit.

A small planted pair of dictionaries whose shared features, orphans and decoys are known by
construction; every table is checked against an independent float64 reference (scipy's
dense assignment on numpy cosines), not against the backend that filled it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import linear_sum_assignment

from dashboard import matching_ui
from dashboard.charts import STATUS_COLOURS, SYMBOLS, match_status_scatter
from dashboard.matching_tables import (
    cell_feature,
    feature_match,
    orphans_table,
    point_status,
    step_orphan,
    summary_row,
)
from dashboard.text import STATUS_LABELS, certificate_markdown, feature_match_markdown
from sae_backend.dictionary import Dictionary, RawSAE
from sae_backend.geometry import shared
from sae_backend.geometry.compare import compare, match
from sae_backend.projection import Embedding
from tests.factories import unit_rows

D = 32
TAU = 0.7


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def planted():
    """A: 12 features (11 dead). B: 14. A's 0-4 have copies in B close in decoder and
    encoder (shared), 5-6 close in decoder only; A's 7 is a decoy of A's 0 (its max-cos
    partner is A0's copy, which A0 takes); 8-10 are unrelated. B's other 7 rows are random,
    so 3 of B's 14 stay unmatched (A has 11 alive)."""
    rng = np.random.default_rng(5)
    dec_a, enc_a = _unit(rng.standard_normal((12, D))), _unit(rng.standard_normal((12, D)))
    dec_a[7] = _unit(dec_a[0] + 0.8 * _unit(rng.standard_normal(D)))
    dec_b, enc_b = rng.standard_normal((14, D)), rng.standard_normal((14, D))
    place = rng.permutation(14)[:7]  # A's feature i sits at B's row place[i]
    dec_b[place] = dec_a[:7] + 0.05 * rng.standard_normal((7, D))
    enc_b[place[:5]] = enc_a[:5] + 0.05 * rng.standard_normal((5, D))
    alive = np.ones(12, bool)
    alive[11] = False
    a = Dictionary.from_raw(RawSAE(dec_a, enc_a, alive=alive), source="A", format="t")
    b = Dictionary.from_raw(RawSAE(dec_b, enc_b), source="B", format="t")
    m = match(a, b, cache=False)
    pairs = shared.matched_pairs(a, b, m, "decoder")
    ab, ba = compare(a, b, cache=False), compare(b, a, cache=False)
    return {
        "a": a, "b": b, "m": m, "pairs": pairs, "ab": ab, "ba": ba, "place": place,
        "ref": reference(dec_a, enc_a, dec_b, enc_b, alive),
    }  # fmt: skip


def reference(dec_a, enc_a, dec_b, enc_b, alive):
    """float64: the optimal decoder matching of A's alive rows with B's, both cosines per pair,
    and each side's max-cos partner."""
    ia = np.flatnonzero(alive)
    ua, ub = unit_rows(dec_a)[0], unit_rows(dec_b)[0]
    c = ua[ia] @ ub.T  # [alive A, B]
    r, j = linear_sum_assignment(c, maximize=True)
    fa, fb = ia[r], j
    enc = np.einsum("ij,ij->i", unit_rows(enc_a)[0][fa], unit_rows(enc_b)[0][fb])
    return {
        "fa": fa, "fb": fb, "dec": c[r, j], "enc": enc, "alive_a": ia,
        "near_a": dict(zip(ia, c.argmax(1), strict=True)),
        "near_a_cos": dict(zip(ia, c.max(1), strict=True)),
        "near_b": dict(enumerate(ia[c.argmax(0)])), "near_b_cos": dict(enumerate(c.max(0))),
    }  # fmt: skip


def expected_orphans(ref, side: str, criterion: str, n_b: int = 14) -> pd.DataFrame:
    """The orphans table of one side from the float64 reference alone."""
    ok = ref["dec"] >= TAU
    if criterion == "both":
        ok &= ref["enc"] >= TAU
    mine, other = (ref["fa"], ref["fb"]) if side == "a" else (ref["fb"], ref["fa"])
    features = ref["alive_a"] if side == "a" else np.arange(n_b)
    near, near_cos = (ref["near_a"], ref["near_a_cos"]) if side == "a" else (
        ref["near_b"], ref["near_b_cos"])  # fmt: skip
    owner = dict(zip(other, mine, strict=True))
    rows = []
    for f in features:
        hit = np.flatnonzero(mine == f)
        if hit.size and ok[hit[0]]:
            continue
        p = hit[0] if hit.size else None
        rows.append(
            {
                "feature": f,
                "status": "matched below τ" if p is not None else "unmatched",
                "partner": other[p] if p is not None else pd.NA,
                "decoder cos": ref["dec"][p] if p is not None else np.nan,
                "encoder cos": ref["enc"][p] if p is not None else np.nan,
                "max-cos partner": near[f],
                "max cos": near_cos[f],
                "taken by": owner.get(near[f], pd.NA),
            }
        )
    return pd.DataFrame(rows)


def assert_same_table(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got.columns) == list(want.columns)
    assert len(got) == len(want)
    for col in ("feature", "partner", "max-cos partner", "taken by"):
        g = [None if pd.isna(x) else int(x) for x in got[col]]
        w = [None if pd.isna(x) else int(x) for x in want[col]]
        assert g == w, col
    assert list(got["status"]) == list(want["status"])
    for col in ("decoder cos", "encoder cos", "max cos"):
        np.testing.assert_allclose(got[col].to_numpy(float), want[col].to_numpy(float), atol=1e-6)


@pytest.mark.parametrize("criterion", ["both", "decoder"])
def test_orphans_tables_equal_the_float64_reference(planted, criterion):
    p, ref = planted, planted["ref"]
    for side, this, nearest in (("a", p["a"], p["ab"]), ("b", p["b"], p["ba"])):
        o = shared.orphans(p["pairs"], side, nearest, this.alive_index, TAU, criterion)
        assert_same_table(orphans_table(o, p["pairs"]), expected_orphans(ref, side, criterion))
    # Planted: A's orphans are the decoder-only copies (by "both"), the decoy and the random.
    o = shared.orphans(p["pairs"], "a", p["ab"], p["a"].alive_index, TAU, criterion)
    table = orphans_table(o, p["pairs"])
    want = [5, 6, 7, 8, 9, 10] if criterion == "both" else [7, 8, 9, 10]
    assert list(table["feature"]) == want
    decoy = table.set_index("feature").loc[7]
    assert decoy["max-cos partner"] == p["place"][0] and decoy["taken by"] == 0
    assert decoy["partner"] != p["place"][0]
    b_table = orphans_table(
        shared.orphans(p["pairs"], "b", p["ba"], p["b"].alive_index, TAU, criterion), p["pairs"]
    )
    assert (b_table["status"] == "unmatched").sum() == 3  # 14 rows of B, 11 alive in A
    assert b_table["partner"].isna().sum() == 3


def test_a_cell_opens_the_feature_it_names(planted):
    p = planted
    o = shared.orphans(p["pairs"], "a", p["ab"], p["a"].alive_index, TAU)
    table = orphans_table(o, p["pairs"])
    row = int(np.flatnonzero(table["feature"] == 7)[0])
    assert cell_feature(table, row, "feature") == ("this", 7)
    assert cell_feature(table, row, "status") == ("this", 7)  # not a feature: the row's own
    assert cell_feature(table, row, "max cos") == ("this", 7)
    assert cell_feature(table, row, "partner") == ("other", int(table["partner"].iloc[row]))
    assert cell_feature(table, row, "max-cos partner") == ("other", int(p["place"][0]))
    assert cell_feature(table, row, "taken by") == ("this", 0)
    assert cell_feature(table, len(table), "feature") is None
    b_table = orphans_table(
        shared.orphans(p["pairs"], "b", p["ba"], p["b"].alive_index, TAU), p["pairs"]
    )
    unmatched = int(np.flatnonzero(b_table["status"] == "unmatched")[0])
    assert cell_feature(b_table, unmatched, "partner") is None  # an empty cell opens nothing


def test_feature_match_says_what_the_matching_made_of_one_feature(planted):
    p = planted
    o = shared.orphans(p["pairs"], "a", p["ab"], p["a"].alive_index, TAU)
    ref = p["ref"]
    fm = feature_match(p["pairs"], o, 0, alive=True)
    k = int(np.flatnonzero(ref["fa"] == 0)[0])
    assert (fm.status, fm.partner, fm.nearest) == ("shared", p["place"][0], None)
    assert fm.decoder_cos == pytest.approx(ref["dec"][k]) and fm.encoder_cos == pytest.approx(
        ref["enc"][k]
    )
    fm = feature_match(p["pairs"], o, 7, alive=True)
    k = int(np.flatnonzero(ref["fa"] == 7)[0])
    assert (fm.status, fm.partner) == ("below", ref["fb"][k])
    assert (fm.nearest, fm.taken_by) == (p["place"][0], 0)
    assert fm.nearest_cos == pytest.approx(ref["near_a_cos"][7], abs=1e-6)
    assert feature_match(p["pairs"], o, 11, alive=False).status == "dead"
    ob = shared.orphans(p["pairs"], "b", p["ba"], p["b"].alive_index, TAU)
    lonely = int(ob.feature[ob.status == "unmatched"][0])
    fm = feature_match(p["pairs"], ob, lonely, alive=True)
    assert (fm.status, fm.partner, fm.decoder_cos) == ("unmatched", None, None)
    assert fm.nearest == ref["near_b"][lonely]


def test_stepping_through_orphans_wraps_around():
    orphans = np.array([3, 8, 20])
    assert step_orphan(orphans, 8, 1) == 20
    assert step_orphan(orphans, 9, 1) == 20  # from a feature that is not an orphan
    assert step_orphan(orphans, 20, 1) == 3
    assert step_orphan(orphans, 3, -1) == 20
    assert step_orphan(orphans, 8, -1) == 3
    assert step_orphan(np.array([], np.int64), 5, 1) is None


def test_summary_row_copies_the_backend(planted):
    p, ref = planted, planted["ref"]
    s = shared.shared_summary(p["pairs"], TAU)
    row = summary_row("A → B", p["m"], s)
    both = (ref["dec"] >= TAU) & (ref["enc"] >= TAU)
    assert row["pairs"] == 11
    assert row["mean matched cos"] == pytest.approx(ref["dec"].mean(), abs=1e-7)
    assert row["shared (dec & enc)"] == pytest.approx(both.mean()) and both.sum() == 5
    assert row["shared (decoder)"] == pytest.approx((ref["dec"] >= TAU).mean())
    assert (row["orphans of A"], row["orphans of B"]) == (11 - 5, 14 - 5)
    assert row["certified"] == "✓" and row["rounds"] == 0
    assert row["objective"] == pytest.approx(ref["dec"].sum(), abs=1e-6)
    assert row["bound"] == pytest.approx(ref["dec"].sum(), abs=1e-6)


def test_point_status_gives_each_point_its_dictionarys_status():
    dict_index = np.array([0, 0, 1, 1, 1, 2])
    feature = np.array([2, 0, 1, 3, 0, 4])
    s0 = np.array(["shared", "dead", "below"])
    s1 = np.array(["unmatched", "shared", "below", "below"])
    got = point_status(dict_index, feature, [s0, s1, None])
    assert list(got) == ["below", "shared", "shared", "below", "unmatched", ""]


def test_match_status_scatter_draws_a_trace_per_status_and_dictionary():
    rng = np.random.default_rng(3)
    n = 40
    emb = Embedding(
        xy=rng.standard_normal((n, 2)).astype(np.float32),
        dict_index=np.repeat([0, 1], n // 2).astype(np.int32),
        feature=np.tile(np.arange(n // 2), 2).astype(np.int64),
        params={},
    )
    status = rng.choice(["shared", "below", "unmatched"], n).astype(object)
    status[:5] = "shared"
    status[emb.dict_index == 0] = np.where(status[emb.dict_index == 0] == "unmatched", "below",
                                           status[emb.dict_index == 0])  # fmt: skip
    status[7] = ""  # no status: left out
    status = status.astype(str)
    hover = np.array([f"h{i}" for i in range(n)], dtype=object)
    fig, traces = match_status_scatter(emb, ["A", "B"], hover, status, STATUS_LABELS)
    expected = [
        (s, k)
        for s in STATUS_COLOURS
        for k in (0, 1)
        if np.any((status == s) & (emb.dict_index == k))
    ]
    assert ("unmatched", 0) not in expected and ("unmatched", 1) in expected
    assert [t.name for t in fig.data] == [
        f"{STATUS_LABELS[s]} · {'AB'[k]}" for s, k in expected
    ]  # fmt: skip
    covered = np.sort(np.concatenate(traces))
    np.testing.assert_array_equal(covered, np.flatnonzero(status != ""))
    for t, idx, (s, k) in zip(fig.data, traces, expected, strict=True):
        np.testing.assert_array_equal(idx, np.flatnonzero((status == s) & (emb.dict_index == k)))
        np.testing.assert_array_equal(t.x, emb.xy[idx, 0])
        np.testing.assert_array_equal(t.y, emb.xy[idx, 1])
        assert t.marker.color == STATUS_COLOURS[s] and t.marker.symbol == SYMBOLS[k]
        assert [int(c[0]) for c in t.customdata] == list(emb.feature[idx])
        assert [c[1] for c in t.customdata] == list(hover[idx])
        assert t.legendgroup == s


def test_certificate_line_says_certified_objective_and_bound():
    exact = certificate_markdown("hungarian", True, 12.5, 12.5, 0.0, 0)
    assert exact.startswith("✓ **certified optimal**") and "12.500000 = bound 12.500000" in exact
    sparse = certificate_markdown("sparse", True, 100.25, 100.2500001, 4.6e-5, 3)
    assert "objective 100.250000, bound 100.250000" in sparse and "3 round(s)" in sparse
    assert "4.6e-05" in sparse
    missed = certificate_markdown("sparse", False, 100.0, 100.5, 1e-5, 2)
    assert missed.startswith("✗ **not certified**") and "at most 0.5 total cosine" in missed
    assert "not checked" in certificate_markdown("sparse", False, 100.0, float("nan"), 0.0, 0)


def test_feature_match_wording_names_partner_max_cos_partner_and_taker():
    line = feature_match_markdown(
        "A", "B", "below", 0.7, "both", partner=4, decoder_cos=0.95, encoder_cos=0.2,
        nearest=9, nearest_cos=0.97, taken_by=3,
    )  # fmt: skip
    assert line.startswith("**orphan: matched below τ** vs B (τ = 0.7, shared when decoder and")
    assert "partner #4 (decoder cos 0.950, encoder cos 0.200)" in line
    assert line.endswith("Its max-cos partner #9 (0.970) went to A #3.")
    same = feature_match_markdown(
        "A", "B", "below", 0.5, "decoder", partner=9, decoder_cos=0.4, encoder_cos=float("nan"),
        nearest=9, nearest_cos=0.4, taken_by=1,
    )  # fmt: skip
    assert "encoder" not in same.split("):")[1] and "that same #9" in same
    lonely = feature_match_markdown("B", "A", "unmatched", 0.7, "both", nearest=2,
                                    nearest_cos=0.3, taken_by=None)  # fmt: skip
    assert "no partner left" in lonely and lonely.endswith("went to nobody.")
    assert feature_match_markdown("A", "B", "shared", 0.7, "both", partner=1, decoder_cos=0.9,
                                  encoder_cos=0.8).startswith("**shared** vs B")  # fmt: skip
    assert feature_match_markdown("A", "B", "dead", 0.7, "both").startswith("Dead in A")


def test_the_pages_default_tau_is_the_backends():
    assert matching_ui.DEFAULT_TAU == shared.DEFAULT_TAU
    assert set(STATUS_LABELS) == set(shared.STATUSES) == set(STATUS_COLOURS)


def test_the_matching_tables_module_is_pure():
    """No streamlit (tests run it bare), and the geometry only for type checking (it loads
    torch, which a page's first paint should not wait for)."""
    tree = ast.parse((Path(__file__).parents[1] / "dashboard" / "matching_tables.py").read_text())
    top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    modules = {a.name for n in top if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module for n in top if isinstance(n, ast.ImportFrom) and n.module}
    assert not any(m.startswith(("streamlit", "sae_backend.geometry")) for m in modules), modules
