"""Similarity: max-cosine histograms of chosen comparisons, matching, null, heatmap, bootstrap."""

from __future__ import annotations

import contextlib

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

import dashboard_state as ds
from sae_backend import SAEError
from sae_backend.geometry.stats import summarize

ds.page("Similarity")
st.title("Similarity")
st.caption(
    "For each feature of A (alive ones only), the largest cosine similarity to any feature of "
    "B: high = B has a near-copy of it. 'within A' compares A with itself, self excluded."
)
dicts = ds.dictionaries_or_stop()
names = list(dicts)

SEP = " → "
options = [f"{a}{SEP}{b}" for a in names for b in names if a != b] + [f"within {a}" for a in names]
default = [o for o in (f"{names[0]}{SEP}{n}" for n in names[1:3])] + [f"within {names[0]}"]


def open_cell() -> None:
    """A click on an MMCS heatmap cell (row A, column B) adds that comparison to the chosen ones;
    a callback, so it runs before the multiselect is drawn."""
    points = st.session_state["heat"].selection.points
    if not points:
        return
    a_name, b_name = points[0]["y"], points[0]["x"]
    label = f"within {a_name}" if a_name == b_name else f"{a_name}{SEP}{b_name}"
    current = st.session_state.get("sim_chosen", default)
    if label in options and label not in current:
        st.session_state["sim_chosen"] = [*current, label]


c1, c2, c3 = st.columns([4, 1, 1])
chosen = c1.multiselect(
    "Comparisons (A → B: features of A against B)", options, default=default, key="sim_chosen"
)
directions = c2.radio("Directions", ["decoder", "encoder"], horizontal=True)
layout = c3.radio("Histograms", ["overlaid", "faceted"], horizontal=True)
c1, c2, c3 = st.columns(3)
show_null = c1.checkbox("Random-direction null", value=True)
small = all(d.n_features <= 4096 for d in dicts.values())
do_match = c2.checkbox("One-to-one matching (A → B)", value=small)
thresholds = c3.multiselect("Thresholds", [0.3, 0.5, 0.7, 0.8, 0.9, 0.95], default=[0.5, 0.7, 0.9])


def parse(label: str) -> tuple[str, str | None]:
    if label.startswith("within "):
        return label.removeprefix("within "), None
    a, b = label.split(SEP)
    return a, b


results = {}  # label -> dict of arrays and numbers
for label in chosen:
    a_name, b_name = parse(label)
    a, b = dicts[a_name], None if b_name is None else dicts[b_name]
    try:
        with st.spinner(f"Comparing {label} ..."):
            res = ds.compare_named(a, b, directions)
            null = ds.null_max_cos(
                ds.n_included(a), None if b is None else ds.n_included(b), a.d_model
            )
            m = ds.matching(a, b, directions) if (do_match and b is not None) else None
    except SAEError as e:
        ds.show_error(e, label)
        continue
    s = summarize(res.max_cos, thresholds)
    dc = res.double_counting(b.n_features if b is not None else a.n_features)
    row = {
        "comparison": label,
        "n": s.n,
        "MMCS": s.mean,
        "median": s.median,
        **{f"> {t}": f for t, f in s.above.items()},
        "null mean": float(null.mean()),
        "distinct targets": dc.n_targets,
        "targeted fraction": dc.fraction_targeted,
        "max in-degree": dc.max_in_degree,
        "shared-target fraction": dc.fraction_shared,
    }
    matched = None
    if m is not None:
        matched = m.cosine  # [m] aligned with res.a_index
        row.update({"matched mean": m.mean, "matched n": m.n_matched, "match method": m.method})
    key = (a.fingerprint, b and b.fingerprint, directions)  # names res.max_cos for caches
    results[label] = {"res": res, "null": null, "matched": matched, "row": row, "m": m, "key": key}

if not results:
    st.stop()

# --- Histograms -----------------------------------------------------------------------------
bins = {"start": -0.05, "end": 1.0, "size": 0.01}
colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2"]
labels = list(results)
n_rows = len(labels) if layout == "faceted" else 1
fig = make_subplots(
    rows=n_rows, cols=1, shared_xaxes=True, subplot_titles=labels if n_rows > 1 else None
)
for i, label in enumerate(labels):
    r, color, row = results[label], colors[i % len(colors)], (i + 1 if n_rows > 1 else 1)
    mc = r["res"].max_cos
    fig.add_trace(
        go.Histogram(x=mc, xbins=bins, name=f"{label} (max cos)", marker_color=color,
                     opacity=0.6, histnorm="probability density"),
        row=row, col=1,
    )  # fmt: skip
    fig.add_vline(x=float(mc.mean()), line_color=color, line_dash="dash", row=row, col=1)
    if r["matched"] is not None:
        fig.add_trace(
            go.Histogram(x=r["matched"][~np.isnan(r["matched"])], xbins=bins,
                         name=f"{label} (one-to-one)", marker_color=color,
                         histnorm="probability density", opacity=0.9,
                         marker_pattern_shape="/"),
            row=row, col=1,
        )  # fmt: skip
    if show_null:
        fig.add_trace(
            go.Histogram(x=r["null"], xbins=bins, name=f"null for {label}",
                         histnorm="probability density", marker_color="#7f7f7f", opacity=0.35),
            row=row, col=1,
        )  # fmt: skip
fig.update_layout(
    barmode="overlay",
    height=320 * n_rows if n_rows > 1 else 460,
    xaxis_title="cosine similarity",
    legend={"orientation": "h", "y": -0.2},
    margin={"t": 40},
)
fig.update_xaxes(range=[-0.05, 1.0])
st.plotly_chart(fig, key="hist")
st.caption(
    "Dashed lines: means (MMCS). Grey: the same comparison between random unit directions "
    "with the same counts and dimension. Hatched: cosines of the optimal one-to-one matching, "
    "where no feature of B is claimed twice."
)

table = pd.DataFrame([r["row"] for r in results.values()])
st.dataframe(table, hide_index=True)


def per_feature_csv() -> str:
    """Every chosen comparison's per-feature numbers; built only when downloaded (large)."""
    long = []
    for label, r in results.items():
        res = r["res"]
        part = pd.DataFrame(
            {
                "comparison": label,
                "feature": res.a_index,
                "max_cos": res.max_cos,
                "nearest": res.nearest,
            }
        )
        if r["m"] is not None:
            part["matched"] = r["m"].b_index
            part["matched_cos"] = r["m"].cosine
        long.append(part)
    return pd.concat(long).to_csv(index=False)


c1, c2, c3 = st.columns(3)
c1.download_button("Summary (CSV)", table.to_csv(index=False), "similarity_summary.csv", "text/csv")
c2.download_button(
    "Per-feature numbers (CSV)", per_feature_csv, "similarity_per_feature.csv", "text/csv"
)
c3.download_button(
    "Figure (HTML)", lambda: fig.to_html(include_plotlyjs="cdn"), "similarity.html", "text/html"
)

# --- Bootstrap CI of a difference of means --------------------------------------------------
if len(labels) >= 2:
    st.subheader("Is one comparison's MMCS higher than another's?")
    c1, c2 = st.columns(2)
    x_label = c1.selectbox("First", labels, index=0)
    y_label = c2.selectbox("Second", labels, index=1)
    rx, ry = results[x_label], results[y_label]
    ci = ds.bootstrap_ci(rx["key"], rx["res"].max_cos, ry["key"], ry["res"].max_cos)
    st.metric(
        f"MMCS({x_label}) − MMCS({y_label})",
        f"{ci.diff:+.4f}",
        help="95% percentile bootstrap interval, features resampled with replacement",
    )
    st.caption(f"95% bootstrap interval: [{ci.low:+.4f}, {ci.high:+.4f}] (2,000 resamples).")

# --- MMCS heatmap ---------------------------------------------------------------------------
st.subheader("MMCS between every pair of loaded dictionaries")
st.caption("Row: A, column: B; the diagonal is within-dictionary. Click a cell to add it above.")
grid = np.full((len(names), len(names)), np.nan)
with st.spinner("Comparing every pair ..."):
    for i, a_name in enumerate(names):
        for j, b_name in enumerate(names):
            a, b = dicts[a_name], (None if i == j else dicts[b_name])
            with contextlib.suppress(SAEError):  # mismatched d_model, no encoder: left empty
                grid[i, j] = ds.compare_named(a, b, directions).summary().mean
heat = go.Figure(
    go.Heatmap(z=grid, x=names, y=names, colorscale="Viridis", zmin=0, zmax=1,
               text=np.round(grid, 3), texttemplate="%{text}", hoverinfo="skip")
)  # fmt: skip
# Plotly cannot select heatmap cells, so an invisible marker sits on every cell centre; with no
# hover distance limit a click anywhere in a cell selects its marker (the nearest one).
cells = [(a, b) for a in names for b in names]
heat.add_trace(
    go.Scatter(x=[b for _, b in cells], y=[a for a, _ in cells], mode="markers",
               marker={"size": 30, "opacity": 0}, showlegend=False, customdata=grid.ravel(),
               hovertemplate="%{y} → %{x}: MMCS %{customdata:.3f}<extra></extra>")
)  # fmt: skip
heat.update_layout(
    height=140 + 60 * len(names),
    yaxis_autorange="reversed",
    margin={"t": 10},
    hoverdistance=-1,
)
st.plotly_chart(heat, key="heat", on_select=open_cell, selection_mode="points")
