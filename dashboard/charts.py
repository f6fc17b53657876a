"""The dashboard's figures as pure functions of arrays: plotly in, no Streamlit.

Pages pass the backend's results and show what comes back, so the figures are unit-tested
directly (tests/test_charts.py) rather than only through a running page. One palette for all:
a dictionary or comparison keeps its colour's position from one figure to the next.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from sae_backend.geometry.families import Chain, Families, LevelCounts
from sae_backend.projection import Embedding

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2")
NULL_COLOUR = "#7f7f7f"  # grey: random directions, never one of the palette's colours
ROTATION_COLOUR = "#3a3a3a"  # dark grey, dotted: B rotated at random (the rotation null)
# Families: one colour per label, the same in the counts chart and the family's nodes.
LABEL_COLOURS = {"vanished": "#9e9e9e", "stable": "#1f77b4", "split": "#ff7f0e",
                 "novel": "#2ca02c"}  # fmt: skip
WIDEST_COLOUR = "#aec7e8"  # a node of the widest dictionary that has a parent (no label)
COSINE_BINS = {"start": -0.05, "end": 1.0, "size": 0.01}  # one bin width for every histogram
HistogramLayout = Literal["overlaid", "faceted"]


def colour(i: int) -> str:
    """The palette's colour for the i-th series, wrapping around."""
    return PALETTE[i % len(PALETTE)]


@dataclass(frozen=True)
class HistogramSeries:
    """One comparison (A → B, or within A) as the histogram draws it.

    max_cos: [n_a] float, each alive feature of A's largest cosine to B.
    null:    [n_a] float, the same for random unit directions (counts and dimension of A, B),
             or None while it is computing (then not drawn).
    matched: [n_a] float, cosines of the one-to-one matching (NaN: unmatched), or None.
    rotation: [n_a] float, the same against B rotated by a random orthogonal matrix (the
              rotation null), or None (not asked for; never for within A).
    """

    label: str
    max_cos: np.ndarray
    null: np.ndarray | None
    matched: np.ndarray | None = None
    rotation: np.ndarray | None = None


def similarity_histogram(
    series: Sequence[HistogramSeries], layout: HistogramLayout, show_null: bool
) -> go.Figure:
    """Density histograms of max cosines, a dashed line at each mean (the MMCS), optionally the
    matched cosines (hatched), the random null (grey) and the rotation null (dark grey,
    dotted, where a series has one); all in one panel, or one per series."""
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
        if show_null and s.null is not None:
            fig.add_trace(
                go.Histogram(x=s.null, xbins=COSINE_BINS, name=f"null for {s.label}",
                             histnorm="probability density", marker_color=NULL_COLOUR,
                             opacity=0.35),
                **where,
            )  # fmt: skip
        if s.rotation is not None:
            fig.add_trace(
                go.Histogram(x=s.rotation, xbins=COSINE_BINS, name=f"rotation null for {s.label}",
                             histnorm="probability density", marker_color=ROTATION_COLOUR,
                             opacity=0.45, marker_pattern_shape="."),
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


# --- Families ---------------------------------------------------------------------------------
def label_counts_bar(counts: Sequence[LevelCounts], level_names: Sequence[str]) -> go.Figure:
    """Grouped bars: per level (x, 'narrow → wide'), how many features have each label;
    hover adds the fraction of that level's narrower (novel: wider) alive features."""
    fig = go.Figure()
    for label, col in LABEL_COLOURS.items():
        y = [getattr(c, label) for c in counts]
        base = [c.n_wide if label == "novel" else c.n_narrow for c in counts]
        fig.add_trace(
            go.Bar(x=list(level_names), y=y, name=label, marker_color=col,
                   customdata=[v / b if b else 0.0 for v, b in zip(y, base, strict=True)],
                   hovertemplate=f"{label}: %{{y}} (%{{customdata:.1%}})<extra>%{{x}}</extra>")
        )  # fmt: skip
    fig.update_layout(
        barmode="group",
        height=380,
        xaxis_title="level (narrower → wider)",
        yaxis_title="features",
        legend={"orientation": "h", "y": 1.12},
        margin={"t": 40},
    )
    return fig


def node_label(fam: Families, dictionary: int, feature: int) -> str:
    """The label a family member is coloured by: vanished / stable / split relative to the next
    wider dictionary; in the widest, novel or '' (it has a parent)."""
    labels = fam.labels_of(dictionary, feature)
    return labels[-1] if labels else ""


@dataclass(frozen=True)
class FamilyTree:
    """The family figure and, per trace, the (dictionary, feature) of each of its points (None
    for the traces of links), which turn a click's (curve_number, point_index) into a member."""

    figure: go.Figure
    members: tuple[tuple[tuple[int, int], ...] | None, ...]

    def member(self, curve: int, point: int) -> tuple[int, int] | None:
        nodes = self.members[curve] if 0 <= curve < len(self.members) else None
        return nodes[point] if nodes is not None and 0 <= point < len(nodes) else None


LINK_TEXT_LIMIT = 40  # links whose cosine is written beside them; more would be clutter


def family_tree(fam: Families, chain: Chain, names: Sequence[str]) -> FamilyTree:
    """One feature's family as a tree across the ladder: a column per dictionary (narrowest on
    the left, named on the x axis), a square per member coloured by its label (the chosen one
    outlined in black), a curve per parent -> child edge as thick as its decoder cosine, the
    cosine written at its middle.

    Within a column members are stacked in order: descendants by their parents' places (then
    cosine, descending), ancestors by their children's, so the edges of a tree never cross.
    Plotly's sankey was tried first: it orders a node's links by its own layout, not ours, and
    crossed them. Points are clickable (the page focuses the clicked member)."""
    rank = _member_ranks(chain)
    per_col = Counter(i for i, _ in chain.nodes)
    place = {n: (float(n[0]), (per_col[n[0]] - 1) / 2 - rank[n]) for n in chain.nodes}
    fig = go.Figure()
    members: list[tuple[tuple[int, int], ...] | None] = []
    t = np.linspace(0.0, 1.0, 24)
    ease = t * t * (3 - 2 * t)  # smoothstep: leaves and enters each column horizontally
    for e in chain.edges:  # no hover: a click on a member must not land on an edge's end
        (x0, y0), (x1, y1) = place[(e.level, e.parent)], place[(e.level + 1, e.child)]
        fig.add_trace(
            go.Scatter(x=x0 + (x1 - x0) * t, y=y0 + (y1 - y0) * ease, mode="lines",
                       line={"width": 1 + 7 * max(e.cosine, 0.0), "color": "rgba(110,110,110,0.45)"},
                       hoverinfo="skip", showlegend=False)
        )  # fmt: skip
        members.append(None)
    if len(chain.edges) <= LINK_TEXT_LIMIT:  # each edge's cosine on it; hover: the edge
        # written on the side of the fuller column, where the edges fan out, not where they meet
        at = [0.72 if per_col[e.level + 1] >= per_col[e.level] else 0.28 for e in chain.edges]
        ends = [(place[(e.level, e.parent)], place[(e.level + 1, e.child)]) for e in chain.edges]
        fig.add_trace(
            go.Scatter(x=[a[0] + (b[0] - a[0]) * u for (a, b), u in zip(ends, at, strict=True)],
                       y=[a[1] + (b[1] - a[1]) * u * u * (3 - 2 * u)
                          for (a, b), u in zip(ends, at, strict=True)],
                       text=[f"{e.cosine:.2f}" for e in chain.edges], mode="text",
                       textfont={"size": 11, "color": "#444"}, hoverinfo="text",
                       hovertext=[f"{names[e.level]} #{e.parent} → {names[e.level + 1]} #{e.child}: "
                                  f"cos {e.cosine:.3f}" for e in chain.edges],
                       showlegend=False)
        )  # fmt: skip
        members.append(None)
    focus = (chain.dictionary, chain.feature)
    groups: dict[str, list[tuple[int, int]]] = {}
    for n in sorted(chain.nodes, key=lambda n: (n[0], rank[n])):
        groups.setdefault(node_label(fam, *n), []).append(n)
    for label in (*LABEL_COLOURS, ""):
        group = groups.get(label, [])
        if not group:
            continue
        fig.add_trace(
            go.Scatter(
                x=[place[n][0] for n in group], y=[place[n][1] for n in group],
                mode="markers+text", name=label or "widest (has a parent)",
                text=[f"#{f}" for _, f in group], textposition="top center",  # edges leave sideways
                marker={"symbol": "square", "size": 16,
                        "color": LABEL_COLOURS.get(label, WIDEST_COLOUR),
                        "line": {"color": "white", "width": 1}},
                customdata=[[names[i], f, ", ".join(fam.labels_of(i, f)) or "—"]
                            for i, f in group],
                hovertemplate="%{customdata[0]} #%{customdata[1]}: %{customdata[2]}"
                              "<extra></extra>",
            )
        )  # fmt: skip
        members.append(tuple(group))
    fig.add_trace(  # the chosen member outlined (its own trace: the legend keeps plain squares)
        go.Scatter(x=[place[focus][0]], y=[place[focus][1]], mode="markers", hoverinfo="skip",
                   marker={"symbol": "square-open", "size": 22, "color": "black",
                           "line": {"width": 3}}, showlegend=False)
    )  # fmt: skip
    members.append(None)
    rows = max(per_col.values())
    fig.update_layout(
        height=min(1400, 150 + 40 * rows),
        margin={"t": 30, "b": 10, "l": 20, "r": 20},
        legend={"orientation": "h", "y": 0, "yanchor": "top", "x": 0},
        dragmode="zoom",  # a click picks a member (select modes would swallow it)
        hovermode="closest",
        plot_bgcolor="white",
    )
    fig.update_xaxes(tickvals=list(range(len(names))), ticktext=list(names),
                     range=[-0.25, len(names) - 0.75], showgrid=False, zeroline=False,
                     side="top", tickfont={"size": 14})  # fmt: skip
    fig.update_yaxes(visible=False, range=[-(rows + 1) / 2, (rows + 1) / 2])
    return FamilyTree(fig, tuple(members))


def _member_ranks(chain: Chain) -> dict[tuple[int, int], int]:
    """Each member's position in its column: descendants ordered by their parent's position
    (then cosine, descending), ancestors by their child's, so tree edges never cross."""
    rank = {(chain.dictionary, chain.feature): 0}
    cols: dict[int, list[int]] = {}
    for i, f in chain.nodes:
        cols.setdefault(i, []).append(f)
    last = max(cols)
    for i in range(chain.dictionary + 1, last + 1):

        def down_key(f: int, i: int = i) -> tuple[int, float, int]:
            ins = [(rank[(i - 1, e.parent)], -e.cosine) for e in chain.edges
                   if e.level == i - 1 and e.child == f and (i - 1, e.parent) in rank]  # fmt: skip
            r, c = min(ins, default=(len(rank), 0.0))
            return r, c, f

        for r, f in enumerate(sorted(cols.get(i, []), key=down_key)):
            rank[(i, f)] = r
    for i in range(chain.dictionary - 1, -1, -1):

        def up_key(f: int, i: int = i) -> tuple[int, int]:
            outs = [rank[(i + 1, e.child)] for e in chain.edges
                    if e.level == i and e.parent == f and (i + 1, e.child) in rank]  # fmt: skip
            return min(outs, default=len(rank)), f

        for r, f in enumerate(sorted(cols.get(i, []), key=up_key)):
            rank[(i, f)] = r
    return rank


# --- Geometry ---------------------------------------------------------------------------------
def value_histogram(
    values: np.ndarray,
    x_title: str,
    marks: Sequence[tuple[str, float]] = (),
    colour_: str = PALETTE[0],
    x_range: tuple[float, float] | None = None,
    nbins: int = 60,
) -> go.Figure:
    """A histogram of one value per feature (counts of features), with labelled vertical lines
    at `marks` [(text, x)] (a bound, a mean); NaN values are left out."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    fig = go.Figure(go.Histogram(x=v, nbinsx=nbins, marker_color=colour_, opacity=0.8,
                                 name=x_title, hovertemplate="%{x}: %{y} features<extra></extra>"))  # fmt: skip
    for k, (text, at) in enumerate(marks):
        fig.add_vline(x=at, line_dash="dash", line_color=colour(k + 1),
                      annotation_text=text, annotation_position="top right" if k % 2 == 0
                      else "top left")  # fmt: skip
    fig.update_layout(height=340, xaxis_title=x_title, yaxis_title="features",
                      margin={"t": 40}, showlegend=False, bargap=0.02)  # fmt: skip
    if x_range is not None:
        fig.update_xaxes(range=list(x_range))
    return fig


def singular_value_spectrum(
    singular_values: np.ndarray, effective_rank: float, tight_level: float
) -> go.Figure:
    """Singular values of the unit decoder, descending, on a log axis; a dashed line where every
    one of them would lie for a tight frame (sqrt(N / d)) and one at the effective rank."""
    s = np.asarray(singular_values, dtype=np.float64)
    fig = go.Figure(go.Scatter(x=np.arange(1, len(s) + 1), y=s, mode="lines",
                               line={"color": PALETTE[0]}, name="singular values",
                               hovertemplate="#%{x}: %{y:.3g}<extra></extra>"))  # fmt: skip
    fig.add_hline(y=tight_level, line_dash="dot", line_color=NULL_COLOUR)
    # the line's own annotation lands off the line on a log axis: place it in log10 units
    fig.add_annotation(x=1, xref="paper", xanchor="right", y=float(np.log10(tight_level)),
                       yanchor="bottom", showarrow=False,
                       text=f"tight frame: all √(N/d) = {tight_level:.3g}")  # fmt: skip
    fig.add_vline(x=effective_rank, line_dash="dash", line_color=PALETTE[1],
                  annotation_text=f"effective rank {effective_rank:.1f}",
                  annotation_position="top left")  # fmt: skip
    fig.update_layout(height=340, xaxis_title="index (descending)", yaxis_title="singular value",
                      margin={"t": 40}, showlegend=False)  # fmt: skip
    # ticks at 1, 2, 5 x 10^k, written out (plotly's own log ticks write 0.2 as '2')
    positive = s[s > 0]
    ticks = []
    if len(positive):
        lo, hi = np.floor(np.log10(positive.min())), np.ceil(np.log10(positive.max()))
        ticks = [m * 10.0**k for k in range(int(lo), int(hi) + 1) for m in (1, 2, 5)]
        ticks = [v for v in ticks if positive.min() / 1.5 <= v <= positive.max() * 1.5]
    fig.update_yaxes(type="log", tickvals=ticks, ticktext=[f"{v:g}" for v in ticks])
    return fig


def absorption_scatter(
    signature: np.ndarray, dec_dec: np.ndarray, feature: np.ndarray, partner: np.ndarray
) -> go.Figure:
    """One point per feature p: x its signature cos(encoder p, decoder c) with its most negative
    partner c, y cos(decoder p, decoder c); all [m], aligned. Hover names both features."""
    fig = go.Figure(
        go.Scattergl(x=signature, y=dec_dec, mode="markers",
                     marker={"size": 4, "opacity": 0.6, "color": PALETTE[0]},
                     customdata=np.stack([feature, partner], 1),
                     hovertemplate="feature %{customdata[0]}, partner %{customdata[1]}<br>"
                                   "enc·dec %{x:.3f}, dec·dec %{y:.3f}<extra></extra>")
    )  # fmt: skip
    fig.update_layout(height=340, xaxis_title="cos(encoder p, decoder c)",
                      yaxis_title="cos(decoder p, decoder c)", margin={"t": 40},
                      showlegend=False)  # fmt: skip
    return fig


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
