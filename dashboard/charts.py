"""The dashboard's figures as pure functions of arrays: plotly in, no Streamlit.

Pages pass the backend's results and show what comes back, so the figures are unit-tested
directly (tests/test_charts.py) rather than only through a running page. One palette for all:
a dictionary or comparison keeps its colour's position from one figure to the next.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from sae_backend.projection import Embedding

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2")
NULL_COLOUR = "#7f7f7f"  # grey: random directions, never one of the palette's colours
COSINE_BINS = {"start": -0.05, "end": 1.0, "size": 0.01}  # one bin width for every histogram
HistogramLayout = Literal["overlaid", "faceted"]


def colour(i: int) -> str:
    """The palette's colour for the i-th series, wrapping around."""
    return PALETTE[i % len(PALETTE)]


@dataclass(frozen=True)
class HistogramSeries:
    """One comparison (A → B, or within A) as the histogram draws it.

    max_cos: [n_a] float, each alive feature of A's largest cosine to B.
    null:    [n_a] float, the same for random unit directions (counts and dimension of A, B).
    matched: [n_a] float, cosines of the one-to-one matching (NaN: unmatched), or None.
    """

    label: str
    max_cos: np.ndarray
    null: np.ndarray
    matched: np.ndarray | None = None


def similarity_histogram(
    series: Sequence[HistogramSeries], layout: HistogramLayout, show_null: bool
) -> go.Figure:
    """Density histograms of max cosines, a dashed line at each mean (the MMCS), optionally the
    matched cosines (hatched) and the random null (grey); all in one panel, or one per series."""
    n_rows = max(1, len(series)) if layout == "faceted" else 1
    fig = make_subplots(
        rows=n_rows,
        cols=1,
        shared_xaxes=True,
        subplot_titles=[s.label for s in series] if n_rows > 1 else None,
    )
    for i, s in enumerate(series):
        row, col = (i + 1 if n_rows > 1 else 1), colour(i)
        where = {"row": row, "col": 1}
        fig.add_trace(
            go.Histogram(x=s.max_cos, xbins=COSINE_BINS, name=f"{s.label} (max cos)",
                         marker_color=col, opacity=0.6, histnorm="probability density"),
            **where,
        )  # fmt: skip
        fig.add_vline(x=float(s.max_cos.mean()), line_color=col, line_dash="dash", **where)
        if s.matched is not None:
            fig.add_trace(
                go.Histogram(x=s.matched[~np.isnan(s.matched)], xbins=COSINE_BINS,
                             name=f"{s.label} (one-to-one)", marker_color=col,
                             histnorm="probability density", opacity=0.9,
                             marker_pattern_shape="/"),
                **where,
            )  # fmt: skip
        if show_null:
            fig.add_trace(
                go.Histogram(x=s.null, xbins=COSINE_BINS, name=f"null for {s.label}",
                             histnorm="probability density", marker_color=NULL_COLOUR,
                             opacity=0.35),
                **where,
            )  # fmt: skip
    fig.update_layout(
        barmode="overlay",
        height=320 * n_rows if n_rows > 1 else 460,
        xaxis_title="cosine similarity",
        legend={"orientation": "h", "y": -0.2},
        margin={"t": 40},
    )
    fig.update_xaxes(range=[COSINE_BINS["start"], COSINE_BINS["end"]])
    return fig


def mmcs_heatmap(grid: np.ndarray, names: Sequence[str]) -> go.Figure:
    """The MMCS of every pair: grid [n, n], row A, column B, NaN where not comparable.

    Plotly cannot select heatmap cells, so an invisible marker sits on every cell centre
    (customdata: that cell's MMCS); with no hover distance limit a click anywhere in a cell
    selects its marker (the nearest one), and the page reads the cell from the point's x, y."""
    names = list(names)
    fig = go.Figure(
        go.Heatmap(z=grid, x=names, y=names, colorscale="Viridis", zmin=0, zmax=1,
                   text=np.round(grid, 3), texttemplate="%{text}", hoverinfo="skip")
    )  # fmt: skip
    cells = [(a, b) for a in names for b in names]
    fig.add_trace(
        go.Scatter(x=[b for _, b in cells], y=[a for a, _ in cells], mode="markers",
                   marker={"size": 30, "opacity": 0}, showlegend=False, customdata=grid.ravel(),
                   hovertemplate="%{y} → %{x}: MMCS %{customdata:.3f}<extra></extra>")
    )  # fmt: skip
    fig.update_layout(
        height=140 + 60 * len(names),
        yaxis_autorange="reversed",
        margin={"t": 10},
        hoverdistance=-1,
    )
    return fig


def umap_scatter(
    emb: Embedding,
    names: Sequence[str],
    hover: np.ndarray,
    values: np.ndarray | None = None,
    value_title: str = "",
) -> tuple[go.Figure, list[np.ndarray]]:
    """The embedding as a WebGL scatter: one trace per dictionary in palette colours, or (with
    `values`, [N] float, NaN where unknown) one trace coloured by them.

    names: the embedded dictionaries in `emb.dict_index` order; hover: [N] text per point.
    Returns the figure and, per trace, the positions of its points in the embedding, which
    turn a selection's (curve_number, point_index) back into points."""
    fig = go.Figure()
    traces: list[np.ndarray] = []
    if values is None:
        for k, name in enumerate(names):
            idx = np.flatnonzero(emb.dict_index == k)
            traces.append(idx)
            fig.add_trace(
                go.Scattergl(x=emb.xy[idx, 0], y=emb.xy[idx, 1], mode="markers", name=name,
                             marker={"size": 4, "opacity": 0.7, "color": colour(k)},
                             customdata=np.stack([emb.feature[idx], hover[idx]], 1),
                             hovertemplate=f"{name} #%{{customdata[0]}}<br>%{{customdata[1]}}"
                                           "<extra></extra>")
            )  # fmt: skip
    else:
        traces.append(np.arange(len(emb)))
        labels = np.asarray(names)[emb.dict_index]
        fig.add_trace(
            go.Scattergl(x=emb.xy[:, 0], y=emb.xy[:, 1], mode="markers",
                         marker={"size": 4, "color": values, "colorscale": "Viridis",
                                 "showscale": True, "colorbar": {"title": value_title}},
                         customdata=np.stack([labels, emb.feature, values, hover], 1),
                         hovertemplate="%{customdata[0]} #%{customdata[1]}: %{customdata[2]:.3f}"
                                       "<br>%{customdata[3]}<extra></extra>")
        )  # fmt: skip
    # Drag zooms and a click picks a point: Streamlit ignores clicks while the drag mode is box
    # or lasso select, which the chart's toolbar switches to.
    fig.update_layout(height=650, dragmode="zoom", margin={"t": 20},
                      legend={"itemsizing": "constant"})  # fmt: skip
    return fig, traces


# --- Match status (issue 12) ------------------------------------------------------------------
# Okabe-Ito colours (distinct for colour-blind readers), by `geometry.shared.Status`.
STATUS_COLOURS = {"shared": "#0072B2", "below": "#E69F00", "unmatched": "#CC79A7",
                  "dead": "#999999"}  # fmt: skip
SYMBOLS = ("circle", "diamond", "square", "triangle-up", "cross", "x", "star")


def match_status_scatter(
    emb: Embedding,
    names: Sequence[str],
    hover: np.ndarray,
    status: np.ndarray,
    labels: dict[str, str],
) -> tuple[go.Figure, list[np.ndarray]]:
    """The embedding coloured by match status: one trace per (status, dictionary) that has
    points, statuses in `STATUS_COLOURS` order, a marker symbol per dictionary.

    status: [N] a `STATUS_COLOURS` key per point ("" for a point without one: left out);
    labels: the legend's word for each status. Returns the figure and, per trace, the
    positions of its points in the embedding (as `umap_scatter`)."""
    fig = go.Figure()
    traces: list[np.ndarray] = []
    for s, col in STATUS_COLOURS.items():
        for k, name in enumerate(names):
            idx = np.flatnonzero((status == s) & (emb.dict_index == k))
            if idx.size == 0:
                continue
            traces.append(idx)
            fig.add_trace(
                go.Scattergl(x=emb.xy[idx, 0], y=emb.xy[idx, 1], mode="markers",
                             name=f"{labels[s]} · {name}", legendgroup=s,
                             marker={"size": 5, "opacity": 0.8, "color": col,
                                     "symbol": SYMBOLS[k % len(SYMBOLS)]},
                             customdata=np.stack([emb.feature[idx], hover[idx]], 1),
                             hovertemplate=f"{name} #%{{customdata[0]}}: {labels[s]}"
                                           "<br>%{customdata[1]}<extra></extra>")
            )  # fmt: skip
    fig.update_layout(height=650, dragmode="zoom", margin={"t": 50},
                      legend={"itemsizing": "constant", "title": {"text": "match status"}})  # fmt: skip
    return fig, traces
