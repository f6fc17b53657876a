"""Issue 12's pages through AppTest: what the one-to-one matching means on Similarity (shared at
tau beside decoder-only, orphans of both sides, the certificate), each feature's match on
Neighbours, and the match-status colouring of the UMAP.

Every number shown is compared with the backend called directly with the pages' defaults
(the backend itself is tested against float64 in tests/test_shared_export.py), and the toy
demo's planted structure (toy-b copies half of toy-a's directions, the rest random) fixes which
features are orphans by the decoder criterion, from float64 numpy alone.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from streamlit.proto.WidgetStates_pb2 import WidgetState
from streamlit.testing.v1 import AppTest

from sae_backend import load
from sae_backend.demo import demo_sources, toy_matrices
from sae_backend.geometry.compare import compare, match
from sae_backend.geometry.shared import feature_status, matched_pairs, orphans, shared_summary
from tests.background_support import settle
from tests.factories import unit_rows
from tests.test_app import app, ok


def rerun(at: AppTest) -> AppTest:
    """Run `at` again after a widget change, until its background results have arrived."""
    return settle(at.run())


@pytest.fixture(autouse=True)
def toy_demo(monkeypatch):
    monkeypatch.setenv("SAE_DEMO", "toy")


@pytest.fixture(scope="module")
def toy():
    """The toy demo as the backend loads it, and as float64 unit rows from its generator."""
    arrays = toy_matrices()
    ref = {
        n: {"dec": unit_rows(x["decoder"])[0], "alive": x["density"] > 0} for n, x in arrays.items()
    }
    return ref


def dicts():
    src = demo_sources()
    return {n: load(src[n]) for n in ("toy-a", "toy-b", "toy-a-seed2")}


def backend(a_name, b_name, directions="decoder"):
    """The matching of a with b as the pages ask for it (store.matching: match()'s defaults)."""
    d = dicts()
    a, b = d[a_name], d[b_name]
    m = match(a, b, directions=directions)
    return a, b, m, matched_pairs(a, b, m, directions)


def planted_copies(toy, a_name="toy-a", b_name="toy-b"):
    """float64: the alive features of a with a near-copy (cosine > 0.9) among b's, and b's
    features with a near-copy among a's alive ones; the rest are random (cosines < 0.6)."""
    ra, rb = toy[a_name], toy[b_name]
    ia = np.flatnonzero(ra["alive"])
    c = ra["dec"][ia] @ rb["dec"].T
    assert np.sort(c.max(1))[::-1][:5].min() > 0.9 and np.median(c.max(1)) < 0.9
    gap = c.max(1)
    assert not np.any((gap > 0.6) & (gap < 0.9))  # copies and the rest are far apart
    return set(ia[c.max(1) > 0.9].tolist()), set(np.flatnonzero(c.max(0) > 0.9).tolist())


def table_with(at: AppTest, column: str) -> list:
    return [d for d in at.dataframe if column in d.value.columns]


def summary(at: AppTest) -> pd.DataFrame:
    (table,) = table_with(at, "mean matched cos")
    return table.value.set_index("comparison")


def check_summary(row, m, s) -> None:
    assert row["pairs"] == s.n_pairs
    for col, want in (
        ("mean matched cos", s.mean_matched_cos),
        ("shared (dec & enc)", s.fraction_shared),
        ("shared (decoder)", s.fraction_shared_decoder),
        ("objective", m.total),
        ("bound", m.bound),
    ):
        assert row[col] == pytest.approx(want, abs=1e-12), col
    assert (row["orphans of A"], row["orphans of B"]) == (s.n_orphans_a, s.n_orphans_b)
    assert row["certified"] == ("✓" if m.certified else "✗")
    assert row["rounds"] == m.rounds


def test_similarity_shows_what_the_matching_means(toy):
    at = app("pages/1_Similarity.py")
    ok(at)
    table = summary(at)
    assert list(table.index) == ["toy-a → toy-b", "toy-a → toy-a-seed2"]  # A → B only
    for label, (a_name, b_name) in {
        "toy-a → toy-b": ("toy-a", "toy-b"),
        "toy-a → toy-a-seed2": ("toy-a", "toy-a-seed2"),
    }.items():
        a, b, m, pairs = backend(a_name, b_name)
        check_summary(table.loc[label], m, shared_summary(pairs, 0.7, "both"))
        assert m.certified
    # Planted: toy-b copies half of toy-a (decoder cos ~0.97), so the decoder-only fraction is
    # the share of toy-a's alive features with a copy; the encoders are noisier (perturbed
    # independently), so by decoder AND encoder almost none is shared at 0.7.
    copies_a, copies_b = planted_copies(toy)
    row = table.loc["toy-a → toy-b"]
    assert row["shared (decoder)"] == pytest.approx(len(copies_a) / 1000)
    assert row["shared (dec & enc)"] < 0.1 < 0.4 < row["shared (decoder)"]
    assert at.markdown[0].value.startswith("✓ **certified optimal**: exact dense assignment")
    assert [t.label for t in at.tabs] == ["toy-a → toy-b", "toy-a → toy-a-seed2"]

    # The criterion and tau are adjustable; the numbers follow the backend.
    at.radio(key="sim_criterion").set_value("decoder")
    at = rerun(at)
    ok(at)
    a, b, m, pairs = backend("toy-a", "toy-b")
    s = shared_summary(pairs, 0.7, "decoder")
    check_summary(summary(at).loc["toy-a → toy-b"], m, s)
    # planted: by the decoder at 0.7 exactly the copies are shared (random pairs stay below)
    assert s.n_orphans_a == 1000 - len(copies_a) and s.n_orphans_b == 1024 - len(copies_a)
    at.number_input(key="sim_tau").set_value(0.5)
    at = rerun(at)
    ok(at)
    check_summary(summary(at).loc["toy-a → toy-b"], m, shared_summary(pairs, 0.5, "decoder"))

    # Matching by encoder follows the page's Directions control.
    at.radio[0].set_value("encoder")
    at = rerun(at)
    ok(at)
    assert any("Matched by encoder directions" in c.value for c in at.caption)
    a, b, m, pairs = backend("toy-a", "toy-b", "encoder")
    check_summary(summary(at).loc["toy-a → toy-b"], m, shared_summary(pairs, 0.5, "decoder"))


def select_cell(at: AppTest, table, row: int, column: str) -> AppTest:
    """Rerun `at` as if the browser had selected one cell of a selectable st.dataframe (sent
    as the widget's JSON state, as the frontend does; uses AppTest's private _tree/_run)."""
    states = at._tree.get_widget_states()
    selection = {"selection": {"rows": [], "columns": [], "cells": [[row, column]]}}
    states.widgets.append(WidgetState(id=table.proto.id, string_value=json.dumps(selection)))
    return settle(at._run(states))


def test_similarity_orphans_of_both_sides_link_to_neighbours(toy):
    at = app("pages/1_Similarity.py")
    at.radio(key="sim_criterion").set_value("decoder")  # the planted copies decide it
    at = rerun(at)
    ok(at)
    a, b, m, pairs = backend("toy-a", "toy-b")
    want = {
        side: orphans(pairs, side, compare(*((a, b) if side == "a" else (b, a))),
                      (a if side == "a" else b).alive_index, 0.7, "decoder")
        for side in "ab"
    }  # fmt: skip
    labels = [e.label for e in at.expander][:2]
    assert labels == [
        f"Orphans of toy-a vs toy-b: {len(want['a']):,} of 1,000 alive",
        f"Orphans of toy-b vs toy-a: {len(want['b']):,} of 1,024 alive",
    ]
    tables = table_with(at, "taken by")[:2]  # the first tab: toy-a → toy-b
    for side, t in zip("ab", tables, strict=True):
        got, o = t.value, want[side]
        np.testing.assert_array_equal(got["feature"].to_numpy(), o.feature)
        np.testing.assert_array_equal(got["max-cos partner"].to_numpy(), o.nearest)
        np.testing.assert_array_equal(got["taken by"].fillna(-1).to_numpy(int), o.taken_by)
        np.testing.assert_array_equal(got["partner"].fillna(-1).to_numpy(int), o.partner)
    # Planted: by the decoder, toy-a's orphans are exactly its alive features without a copy
    # in toy-b, and toy-b's those without a copy in toy-a's alive ones (24 stay unmatched).
    copies_a, copies_b = planted_copies(toy)
    alive_a = set(np.flatnonzero(toy["toy-a"]["alive"]).tolist())
    assert set(tables[0].value["feature"]) == alive_a - copies_a
    assert set(tables[1].value["feature"]) == set(range(1024)) - copies_b
    assert (tables[1].value["status"] == "unmatched").sum() == 24

    # A click on a cell offers that feature's Neighbours page.
    t = tables[0]
    row = int(np.flatnonzero(want["a"].taken_by >= 0)[0])
    taker = int(want["a"].taken_by[row])
    at = select_cell(at, t, row, "taken by")
    ok(at)
    links = [p for p in at.get("page_link") if "Neighbours page" in p.proto.label]
    assert [(p.proto.label, p.proto.query_string) for p in links] == [
        (f"Open toy-a feature {taker} on the Neighbours page", f"dict=toy-a&feature={taker}")
    ]
    t = table_with(at, "taken by")[0]
    near = int(want["a"].nearest[row])
    at = select_cell(at, t, row, "max-cos partner")
    links = [p for p in at.get("page_link") if "Neighbours page" in p.proto.label]
    assert [p.proto.query_string for p in links] == [f"dict=toy-b&feature={near}"]
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels.count("Matching (JSON)") == 2 and labels.count("Matching (CSV)") == 2


def test_neighbours_says_shared_or_orphan_and_opens_partner_and_taker():
    a, b, m, pairs = backend("toy-a", "toy-b")
    o = orphans(pairs, "a", compare(a, b), a.alive_index, 0.7, "both")
    # An orphan whose max-cos partner went to another feature of toy-a.
    i = int(np.flatnonzero((o.taken_by >= 0) & (o.taken_by != o.feature))[0])
    f, near, taker = int(o.feature[i]), int(o.nearest[i]), int(o.taken_by[i])
    at = app("pages/2_Neighbours.py", dict="toy-a", feature=str(f))
    ok(at)
    (line,) = [md.value for md in at.markdown if "vs toy-b" in md.value]
    k = int(np.flatnonzero(pairs.a == f)[0])
    assert line.startswith("**orphan: matched below τ** vs toy-b (τ = 0.7, shared when decoder")
    assert f"partner #{int(pairs.b[k])} (decoder cos {pairs.decoder_cos[k]:.3f}, " in line
    assert line.endswith(
        f"Its max-cos partner #{near} ({o.nearest_cos[i]:.3f}) went to toy-a #{taker}."
    )
    labels = [btn.label for btn in at.button]
    assert f"max-cos partner toy-b #{near}" in labels and f"taken by toy-a #{taker}" in labels

    at.button(key=f"match_toy-b_max-cos partner toy-b #{near}").click()
    at = rerun(at)
    ok(at)
    assert dict(at.query_params) == {"dict": "toy-b", "feature": str(near)}

    at = app("pages/2_Neighbours.py", dict="toy-a", feature=str(f))
    at.button(key=f"match_toy-b_taken by toy-a #{taker}").click()
    at = rerun(at)
    assert dict(at.query_params) == {"dict": "toy-a", "feature": str(taker)}
    later = o.feature[o.feature > taker]
    at.button(key="match_toy-b_next orphan ▶").click()
    at = rerun(at)
    ok(at)
    assert at.query_params["feature"] == str(int(later[0]))

    # By the decoder alone, a planted copy is shared.
    s = int(pairs.a[np.flatnonzero(pairs.decoder_cos > 0.9)[0]])
    at = app("pages/2_Neighbours.py", dict="toy-a", feature=str(s))
    at.radio(key="nb_criterion").set_value("decoder")
    at = rerun(at)
    ok(at)
    (line,) = [md.value for md in at.markdown if "vs toy-b" in md.value]
    assert line.startswith("**shared** vs toy-b (τ = 0.7, shared when decoder ≥ τ): partner #")


def test_umap_colours_points_by_match_status():
    at = app("pages/3_UMAP.py")
    ok(at)
    at.selectbox[0].set_value("match status vs toy-b")
    at = rerun(at)
    ok(at)
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    a, b, m, pairs = backend("toy-a", "toy-b")
    want = {
        "toy-a": feature_status(pairs, "a", a.n_features, a.alive_index, 0.7, "both"),
        "toy-b": feature_status(pairs, "b", b.n_features, b.alive_index, 0.7, "both"),
    }
    labels = {"shared": "shared", "below": "orphan: matched below τ",
              "unmatched": "orphan: unmatched"}  # fmt: skip
    seen = {"toy-a": set(), "toy-b": set()}
    for trace in fig["data"]:
        label, name = trace["name"].rsplit(" · ", 1)
        status = next(s for s, text in labels.items() if text == label)
        features = {int(c[0]) for c in trace["customdata"]}
        assert features == set(np.flatnonzero(want[name] == status).tolist()), trace["name"]
        seen[name] |= features
    assert seen["toy-a"] == set(a.alive_index.tolist())  # every embedded point has a colour
    assert seen["toy-b"] == set(b.alive_index.tolist())
    assert [t["name"] for t in fig["data"]] == [
        "shared · toy-a", "shared · toy-b", "orphan: matched below τ · toy-a",
        "orphan: matched below τ · toy-b", "orphan: unmatched · toy-b",
    ]  # fmt: skip
