"""dashboard/charts.py: the figures hold exactly the arrays they are given (no AppTest needed).

Inputs are small random arrays with known lengths, NaNs placed on purpose (unmatched features,
unknown values); every assertion compares a figure's data with those inputs.
"""

from __future__ import annotations

import numpy as np
import pytest

from dashboard.charts import (
    COSINE_BINS,
    NULL_COLOUR,
    PALETTE,
    HistogramSeries,
    mmcs_heatmap,
    similarity_histogram,
    umap_scatter,
)
from sae_backend.projection import Embedding

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
