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
    SANKEY_PAD,
    WIDEST_COLOUR,
    HistogramSeries,
    absorption_scatter,
    family_sankey,
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


def test_family_sankey_draws_the_chain_with_cosines_and_labels(planted_families):
    fam = planted_families
    chain = fam.chain(1, 1)  # B1: parent A1, children C1, C2
    (t,) = family_sankey(fam, chain, ["n", "m", "w"]).data
    column = {"n": 0, "m": 1, "w": 2}
    heads = [lab.split(" · ")[0].split(" #") for lab in t.node.label]  # 'm #1 · split · ...'
    nodes = [(column[name], int(f)) for name, f in heads]
    assert sorted(nodes) == sorted(chain.nodes) == [(0, 1), (1, 1), (2, 1), (2, 2)]
    assert [n[0] for n in nodes] == sorted(n[0] for n in nodes)  # listed column by column
    where = {n: i for i, n in enumerate(nodes)}
    links = {(nodes[s][0], nodes[s][1], nodes[d][1]): v
             for s, d, v in zip(t.link.source, t.link.target, t.link.value, strict=True)}  # fmt: skip
    assert links == {(e.level, e.parent, e.child): e.cosine for e in chain.edges}
    assert list(t.link.customdata) == list(t.link.value)
    # labels on the nodes: A1 split, B1 split (with its cosine to A1), C1/C2 the widest
    c01 = next(e.cosine for e in chain.edges if e.level == 0)
    assert t.node.label[where[(0, 1)]] == "n #1 · split"
    assert t.node.label[where[(1, 1)]] == f"m #1 · split · cos {c01:.3f}"
    assert t.node.label[where[(2, 1)]].startswith("w #1 · cos ")
    assert t.node.color[where[(0, 1)]] == LABEL_COLOURS["split"]
    assert t.node.color[where[(2, 2)]] == WIDEST_COLOUR
    # the chosen feature is outlined; columns sit left to right
    assert [w for w in t.node.line.width] == [3 if n == (1, 1) else 0.5 for n in nodes]
    assert [t.node.x[where[n]] for n in [(0, 1), (1, 1), (2, 1)]] == [0.001, 0.5, 0.999]
    assert all(0 < y < 1 for y in t.node.y)


def test_family_sankey_keeps_a_vanished_ancestor_line_short(planted_families):
    fam = planted_families
    chain = fam.chain(2, 3)  # C3 <- B2 <- A1: up only
    (t,) = family_sankey(fam, chain, ["n", "m", "w"]).data
    assert len(t.node.label) == 3 and len(t.link.source) == 2
    assert t.node.label[0] == "n #1 · split" and t.node.label[1].startswith("m #2 · stable")


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
    assert fig.layout.yaxis.dtick is None  # two decades at most: plotly's own ticks
    wide = singular_value_spectrum(np.geomspace(50, 0.01, 30), 10.0, 1.0)
    assert wide.layout.yaxis.dtick == 1  # many decades: one label per decade
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


def test_family_sankey_stacks_each_column_without_overlap():
    """Plotly draws a node as tall as its larger flow times the fullest column's scale
    (d3-sankey); the fixed centres leave SANKEY_PAD pixels between neighbours."""
    fam = families(planted_ladder().dictionaries(), tau=0.5, mode="dag", cache=False)
    chain = fam.chain(0, 1)  # A1 -> B1, B2, B5 (DAG); B1 -> C1, C2; B2 -> C3
    fig = family_sankey(fam, chain, ["n", "m", "w"])
    (t,) = fig.data
    plot_h = fig.layout.height - fig.layout.margin.t - fig.layout.margin.b
    n = len(t.node.label)
    flow_in, flow_out = np.zeros(n), np.zeros(n)
    for s, d, v in zip(t.link.source, t.link.target, t.link.value, strict=True):
        flow_out[s] += v
        flow_in[d] += v
    value = np.maximum(flow_in, flow_out)
    column = np.asarray(t.node.x)
    cols = [np.flatnonzero(column == c) for c in np.unique(column)]
    assert [len(c) for c in cols] == [1, 3, 3]
    scale = min((plot_h - (len(c) - 1) * SANKEY_PAD) / value[c].sum() for c in cols)
    for c in cols:
        centre = np.asarray(t.node.y)[c] * plot_h
        top, bottom = centre - value[c] * scale / 2, centre + value[c] * scale / 2
        assert (top >= -1e-6).all() and (bottom <= plot_h + 1e-6).all()
        np.testing.assert_allclose(top[1:] - bottom[:-1], SANKEY_PAD, atol=1e-6)
