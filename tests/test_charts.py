"""dashboard/charts.py: the figures hold exactly the arrays they are given (no AppTest needed).

Inputs are small random arrays with known lengths, NaNs placed on purpose (unmatched features,
unknown values); every assertion compares a figure's data with those inputs.
"""

from __future__ import annotations

import numpy as np
import pytest

from dashboard.charts import (
    COSINE_BINS,
    LABEL_COLOURS,
    NULL_COLOUR,
    PALETTE,
    ROTATION_COLOUR,
    WIDEST_COLOUR,
    HistogramSeries,
    absorption_scatter,
    family_tree,
    label_counts_bar,
    mmcs_heatmap,
    similarity_histogram,
    singular_value_spectrum,
    umap_scatter,
    value_histogram,
)
from sae_backend.geometry.families import families
from sae_backend.projection import Embedding
from tests.ladders import planted_ladder

RNG = np.random.default_rng(0)


def series(label: str, n: int, matched: bool) -> HistogramSeries:
    m = None
    if matched:
        m = RNG.uniform(0, 1, n)
        m[::4] = np.nan  # unmatched features
    return HistogramSeries(
        label, RNG.uniform(0, 1, n).astype(np.float32), RNG.uniform(0, 0.5, n), m
    )


def test_overlaid_histogram_holds_every_series_in_one_panel():
    s = [series("a → b", 40, True), series("within a", 30, False)]
    fig = similarity_histogram(s, "overlaid", show_null=True)
    # per series: max cos, (matched), null
    assert [t.name for t in fig.data] == [
        "a → b (max cos)", "a → b (one-to-one)", "null for a → b",
        "within a (max cos)", "null for within a",
    ]  # fmt: skip
    np.testing.assert_array_equal(fig.data[0].x, s[0].max_cos)
    matched = s[0].matched[~np.isnan(s[0].matched)]
    np.testing.assert_array_equal(fig.data[1].x, matched)
    assert len(fig.data[1].x) == 30  # the NaN quarter is left out
    np.testing.assert_array_equal(fig.data[2].x, s[0].null)
    np.testing.assert_array_equal(fig.data[3].x, s[1].max_cos)
    for t in fig.data:
        assert (t.xbins.start, t.xbins.end, t.xbins.size) == (-0.05, 1.0, 0.01)
        assert t.histnorm == "probability density"
        assert t.xaxis == "x" and t.yaxis == "y"
    assert [t.marker.color for t in fig.data] == [
        PALETTE[0], PALETTE[0], NULL_COLOUR, PALETTE[1], NULL_COLOUR
    ]  # fmt: skip
    assert fig.data[1].marker.pattern.shape == "/"
    # the means, dashed, in each series' colour
    lines = [sh for sh in fig.layout.shapes if sh.type == "line"]
    assert [sh.x0 for sh in lines] == pytest.approx([float(x.max_cos.mean()) for x in s])
    assert [sh.line.color for sh in lines] == [PALETTE[0], PALETTE[1]]
    assert all(sh.line.dash == "dash" for sh in lines)
    assert fig.layout.height == 460 and fig.layout.barmode == "overlay"
    assert tuple(fig.layout.xaxis.range) == (COSINE_BINS["start"], COSINE_BINS["end"])


def test_faceted_histogram_gives_each_series_its_panel_and_height():
    s = [series(f"c{i}", 20 + i, False) for i in range(3)]
    fig = similarity_histogram(s, "faceted", show_null=False)
    assert len(fig.data) == 3  # no null, no matching
    assert [t.xaxis for t in fig.data] == ["x", "x2", "x3"]
    assert [a.text for a in fig.layout.annotations] == ["c0", "c1", "c2"]
    assert fig.layout.height == 3 * 320
    lines = [sh for sh in fig.layout.shapes if sh.type == "line"]
    assert [sh.xref for sh in lines] == ["x", "x2", "x3"]
    one = similarity_histogram(s[:1], "faceted", show_null=False)
    assert one.layout.height == 460 and not one.layout.annotations


def test_palette_wraps_around_after_its_last_colour():
    s = [series(f"c{i}", 5, False) for i in range(len(PALETTE) + 1)]
    fig = similarity_histogram(s, "overlaid", show_null=False)
    assert [t.marker.color for t in fig.data] == [*PALETTE, PALETTE[0]]


def test_heatmap_has_a_clickable_marker_on_every_cell():
    names = ["a", "b", "c"]
    grid = RNG.uniform(0, 1, (3, 3))
    grid[0, 2] = np.nan  # not comparable
    fig = mmcs_heatmap(grid, names)
    heat, markers = fig.data
    np.testing.assert_array_equal(np.asarray(heat.z, dtype=float), grid)
    assert list(heat.x) == names and list(heat.y) == names and (heat.zmin, heat.zmax) == (0, 1)
    np.testing.assert_array_equal(np.asarray(heat.text, dtype=float), np.round(grid, 3))
    # marker k sits on row k // 3 (y = A), column k % 3 (x = B), carrying that cell's MMCS
    assert list(markers.y) == [a for a in names for _ in names]
    assert list(markers.x) == [b for _ in names for b in names]
    np.testing.assert_array_equal(np.asarray(markers.customdata, dtype=float), grid.ravel())
    assert markers.marker.opacity == 0 and markers.showlegend is False
    assert fig.layout.hoverdistance == -1 and fig.layout.yaxis.autorange == "reversed"
    assert fig.layout.height == 140 + 60 * 3


@pytest.fixture()
def emb():
    dict_index = np.repeat([0, 1, 2], [5, 3, 4]).astype(np.int32)
    feature = np.concatenate([[0, 2, 3, 7, 9], [1, 4, 5], [0, 1, 2, 3]]).astype(np.int64)
    xy = RNG.standard_normal((12, 2)).astype(np.float32)
    return Embedding(xy=xy, dict_index=dict_index, feature=feature, params={})


def test_umap_by_dictionary_one_trace_each_and_positions_back(emb):
    names = ["p", "q", "r"]
    hover = np.array([f"h{i}" for i in range(12)], dtype=object)
    fig, traces = umap_scatter(emb, names, hover)
    assert [t.name for t in fig.data] == names
    for k, (t, idx) in enumerate(zip(fig.data, traces, strict=True)):
        np.testing.assert_array_equal(idx, np.flatnonzero(emb.dict_index == k))
        np.testing.assert_array_equal(t.x, emb.xy[idx, 0])
        np.testing.assert_array_equal(t.y, emb.xy[idx, 1])
        assert [int(f) for f, _ in t.customdata] == emb.feature[idx].tolist()
        assert [h for _, h in t.customdata] == hover[idx].tolist()
        assert t.marker.color == PALETTE[k] and t.type == "scattergl"
    assert fig.layout.height == 650 and fig.layout.dragmode == "zoom"


def test_umap_by_value_one_trace_coloured_by_the_values(emb):
    names = ["p", "q", "r"]
    values = RNG.uniform(0, 1, 12)
    values[3] = np.nan  # unknown
    hover = np.array([""] * 12, dtype=object)
    fig, traces = umap_scatter(emb, names, hover, values, "density")
    (t,) = fig.data
    np.testing.assert_array_equal(traces[0], np.arange(12))
    np.testing.assert_array_equal(t.x, emb.xy[:, 0])
    np.testing.assert_array_equal(np.asarray(t.marker.color, dtype=float), values)
    assert t.marker.colorbar.title.text == "density" and t.marker.showscale
    labels = [row[0] for row in t.customdata]
    assert labels == ["p"] * 5 + ["q"] * 3 + ["r"] * 4
    assert [int(row[1]) for row in t.customdata] == emb.feature.tolist()


def test_the_rotation_null_is_its_own_dark_dotted_histogram_where_given():
    with_rot = series("a → b", 30, False)
    rot = RNG.uniform(0, 0.6, 30)
    s = [HistogramSeries(with_rot.label, with_rot.max_cos, with_rot.null, None, rot),
         series("within a", 20, False)]  # fmt: skip
    fig = similarity_histogram(s, "overlaid", show_null=True)
    assert [t.name for t in fig.data] == [
        "a → b (max cos)", "null for a → b", "rotation null for a → b",
        "within a (max cos)", "null for within a",
    ]  # fmt: skip
    t = fig.data[2]
    np.testing.assert_array_equal(t.x, rot)
    assert t.marker.color == ROTATION_COLOUR != NULL_COLOUR and t.marker.pattern.shape == "."
    assert (t.xbins.start, t.xbins.end, t.xbins.size) == (-0.05, 1.0, 0.01)
    assert t.histnorm == "probability density"
    # the rotation null is drawn even with the isotropic one hidden
    fig = similarity_histogram(s, "faceted", show_null=False)
    assert [t.name for t in fig.data] == ["a → b (max cos)", "rotation null for a → b",
                                          "within a (max cos)"]  # fmt: skip
    assert fig.data[1].xaxis == "x"


@pytest.fixture(scope="module")
def planted_families():
    return families(planted_ladder().dictionaries(), tau=0.5, cache=False)


def test_label_counts_bar_has_one_trace_per_label_in_its_colour(planted_families):
    counts = planted_families.counts()
    fig = label_counts_bar(counts, ["n → m", "m → w"])
    assert [t.name for t in fig.data] == ["vanished", "stable", "split", "novel"]
    assert [t.marker.color for t in fig.data] == list(LABEL_COLOURS.values())
    for t in fig.data:
        assert list(t.x) == ["n → m", "m → w"]
        assert list(t.y) == [getattr(c, t.name) for c in counts]
        base = [c.n_wide if t.name == "novel" else c.n_narrow for c in counts]
        assert list(t.customdata) == pytest.approx([y / b for y, b in zip(t.y, base, strict=True)])
    # planted: level 0 has 1 vanished, 2 stable, 1 split of 4; 3 novel of 7
    assert [t.y[0] for t in fig.data] == [1, 2, 1, 3]
    assert fig.layout.barmode == "group" and fig.layout.yaxis.title.text == "features"


def tree_parts(tree):
    """(edge traces, cosine text trace or None, {member: (x, y, trace, point)})."""
    edges = [t for t, m in zip(tree.figure.data, tree.members, strict=True)
             if m is None and t.mode == "lines"]  # fmt: skip
    texts = [t for t in tree.figure.data if t.mode == "text"]
    places = {}
    for c, (t, m) in enumerate(zip(tree.figure.data, tree.members, strict=True)):
        for p, node in enumerate(m or ()):
            places[node] = (t.x[p], t.y[p], c, p)
    return edges, (texts[0] if texts else None), places


def test_family_tree_draws_the_chain_with_cosines_and_labels(planted_families):
    fam = planted_families
    chain = fam.chain(1, 1)  # B1: parent A1, children C1, C2
    tree = family_tree(fam, chain, ["n", "m", "w"])
    edges, text, places = tree_parts(tree)
    assert sorted(places) == sorted(chain.nodes) == [(0, 1), (1, 1), (2, 1), (2, 2)]
    for (i, _), (x, *_rest) in places.items():
        assert x == i  # a column per dictionary
    assert list(tree.figure.layout.xaxis.ticktext) == ["n", "m", "w"]
    # an edge per parent -> child, from the parent's square to the child's, thick as its cosine
    assert len(edges) == len(chain.edges)
    for e, t in zip(chain.edges, edges, strict=True):
        a, b = places[(e.level, e.parent)], places[(e.level + 1, e.child)]
        assert (t.x[0], t.y[0], t.x[-1], t.y[-1]) == pytest.approx((a[0], a[1], b[0], b[1]))
        assert t.line.width == pytest.approx(1 + 7 * e.cosine)
        assert t.hoverinfo == "skip"  # a click at a member's square must pick the member
    assert list(text.text) == [f"{e.cosine:.2f}" for e in chain.edges]
    for e, x, y in zip(chain.edges, text.x, text.y, strict=True):  # each number on its edge
        a, b = places[(e.level, e.parent)], places[(e.level + 1, e.child)]
        assert a[0] < x < b[0] and min(a[1], b[1]) <= y <= max(a[1], b[1])
    assert list(text.hovertext) == [
        f"{'nmw'[e.level]} #{e.parent} → {'nmw'[e.level + 1]} #{e.child}: cos {e.cosine:.3f}"
        for e in chain.edges
    ]
    # colours and legend by label; the chosen member outlined; clicks map back to members
    by_name = {t.name: t for t in tree.figure.data if t.mode == "markers+text"}
    assert set(by_name) == {"split", "widest (has a parent)"}
    assert by_name["split"].marker.color == LABEL_COLOURS["split"]
    assert by_name["widest (has a parent)"].marker.color == WIDEST_COLOUR
    for node, (_, _, c, p) in places.items():
        assert tree.member(c, p) == node
    outline = tree.figure.data[-1]  # the chosen member, B1, outlined and taking no clicks
    assert (outline.x[0], outline.y[0]) == places[(1, 1)][:2] and tree.members[-1] is None
    assert outline.marker.symbol == "square-open" and outline.hoverinfo == "skip"
    assert tree.member(0, 0) is None and tree.member(99, 0) is None  # an edge, nothing
    hover = by_name["split"].customdata
    assert [list(row) for row in hover] == [["n", 1, "split"], ["m", 1, "split"]]


def test_family_tree_edges_of_a_tree_never_cross():
    """Two edges between the same columns keep their order: a higher parent, a higher child."""
    fam = families(planted_ladder().dictionaries(), tau=0.5, cache=False)
    for start in [(0, 1), (1, 1), (2, 3), (0, 0)]:
        chain = fam.chain(*start)
        edges, _, places = tree_parts(family_tree(fam, chain, ["n", "m", "w"]))
        for e in chain.edges:
            for f in chain.edges:
                if e.level != f.level:
                    continue
                pe, pf = places[(e.level, e.parent)][1], places[(f.level, f.parent)][1]
                ce, cf = places[(e.level + 1, e.child)][1], places[(f.level + 1, f.child)][1]
                assert (pe - pf) * (ce - cf) >= 0, (e, f)


def test_family_tree_writes_no_cosines_when_there_are_too_many(planted_families, monkeypatch):
    import dashboard.charts as charts

    monkeypatch.setattr(charts, "LINK_TEXT_LIMIT", 1)
    chain = planted_families.chain(1, 1)
    tree = charts.family_tree(planted_families, chain, ["n", "m", "w"])
    assert not [t for t in tree.figure.data if t.mode == "text"]
    assert len([m for m in tree.members if m is None]) == len(chain.edges) + 1  # + the outline


def test_value_histogram_drops_nan_and_marks_its_lines():
    v = RNG.uniform(0, 1, 50)
    v[[3, 9]] = np.nan
    fig = value_histogram(v, "capacity", [("bound 0.2", 0.2), ("mean", 0.5)], x_range=(0, 1))
    (t,) = fig.data
    np.testing.assert_array_equal(t.x, v[~np.isnan(v)])
    lines = [sh for sh in fig.layout.shapes if sh.type == "line"]
    assert [sh.x0 for sh in lines] == [0.2, 0.5]
    assert [a.text for a in fig.layout.annotations] == ["bound 0.2", "mean"]
    assert fig.layout.xaxis.title.text == "capacity" and tuple(fig.layout.xaxis.range) == (0, 1)


def test_singular_value_spectrum_is_log_scaled_with_its_reference_lines():
    sv = np.sort(RNG.uniform(0.5, 10, 30))[::-1]
    fig = singular_value_spectrum(sv, effective_rank=21.5, tight_level=1.7)
    (t,) = fig.data
    np.testing.assert_array_equal(t.y, sv)
    np.testing.assert_array_equal(t.x, np.arange(1, 31))
    assert fig.layout.yaxis.type == "log"
    # ticks at 1, 2, 5 x 10^k around the values, written out in full
    ticks = list(fig.layout.yaxis.tickvals)
    assert ticks == pytest.approx([v for v in (0.5, 1, 2, 5, 10) if sv.min() / 1.5 <= v <= 15])
    assert list(fig.layout.yaxis.ticktext) == [f"{v:g}" for v in ticks]
    wide = singular_value_spectrum(np.geomspace(50, 0.01, 30), 10.0, 1.0)
    assert list(wide.layout.yaxis.ticktext) == ["0.01", "0.02", "0.05", "0.1", "0.2", "0.5", "1",
                                                "2", "5", "10", "20", "50"]  # fmt: skip
    lines = [sh for sh in fig.layout.shapes if sh.type == "line"]
    assert sorted((sh.x0, sh.y0) for sh in lines)[0][1] == 1.7  # the tight-frame level
    assert any(sh.x0 == 21.5 for sh in lines)  # the effective rank
    tight = next(a for a in fig.layout.annotations if a.text.startswith("tight frame"))
    assert tight.y == pytest.approx(np.log10(1.7))  # a log axis places annotations in log10
    assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text == "singular value"


def test_absorption_scatter_one_point_per_feature():
    sig, dd = RNG.uniform(-1, 0, 20), RNG.uniform(-1, 1, 20)
    feature, partner = np.arange(20), RNG.integers(0, 20, 20)
    (t,) = absorption_scatter(sig, dd, feature, partner).data
    np.testing.assert_array_equal(t.x, sig)
    np.testing.assert_array_equal(t.y, dd)
    assert [list(map(int, row)) for row in t.customdata] == [
        [f, p] for f, p in zip(feature, partner, strict=True)
    ]
