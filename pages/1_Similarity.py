"""Similarity: max-cosine histograms of chosen comparisons, matching, null, heatmap, bootstrap."""

from __future__ import annotations

import contextlib

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import charts, frame, matching_ui, session, store
from dashboard.feedback import show_error
from dashboard.matching_tables import cell_feature, orphans_table, summary_row
from dashboard.text import SHARED_NOTE, certificate_markdown
from sae_backend import SAEError
from sae_backend.geometry.shared import shared_summary
from sae_backend.geometry.stats import summarize

frame.page("Similarity")
st.title("Similarity")
st.caption(
    "For each feature of A (alive ones only), the largest cosine similarity to any feature of "
    "B: high = B has a near-copy of it. 'within A' compares A with itself, self excluded."
)
dicts = store.dictionaries_or_stop()
names = list(dicts)

SEP = " → "
options = [f"{a}{SEP}{b}" for a in names for b in names if a != b] + [f"within {a}" for a in names]
default = [o for o in (f"{names[0]}{SEP}{n}" for n in names[1:3])] + [f"within {names[0]}"]


def label_of(a_name: str, b_name: str | None) -> str:
    return f"within {a_name}" if b_name is None or a_name == b_name else f"{a_name}{SEP}{b_name}"


def parse(label: str) -> tuple[str, str | None]:
    if label.startswith("within "):
        return label.removeprefix("within "), None
    a, b = label.split(SEP)
    return a, b


def open_cell() -> None:
    """A click on an MMCS heatmap cell (row A, column B) adds that comparison to the chosen ones;
    a callback, so it runs before the multiselect is drawn."""
    points = st.session_state["heat"].selection.points
    if not points:
        return
    label = label_of(points[0]["y"], points[0]["x"])
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

results = {}  # label -> dict of the backend's results and the table row
for label in chosen:
    a_name, b_name = parse(label)
    a, b = dicts[a_name], None if b_name is None else dicts[b_name]
    try:
        with st.spinner(f"Comparing {label} ..."):
            res = store.comparison(a, b, directions)
            null = store.null_max_cos(a.n_alive, None if b is None else b.n_alive, a.d_model)
            m = store.matching(a, b, directions) if (do_match and b is not None) else None
    except SAEError as e:
        show_error(e, label)
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
    if m is not None:
        row.update({"matched mean": m.mean, "matched n": m.n_matched, "match method": m.method})
    key = (a.fingerprint, b and b.fingerprint, directions)  # names res.max_cos for caches
    results[label] = {"res": res, "null": null, "m": m, "row": row, "key": key}

if not results:
    st.stop()

# --- Histograms -----------------------------------------------------------------------------
labels = list(results)
series = [
    charts.HistogramSeries(
        label, r["res"].max_cos, r["null"], None if r["m"] is None else r["m"].cosine
    )
    for label, r in results.items()
]
fig = charts.similarity_histogram(series, layout, show_null)
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


# --- One-to-one matching: shared at τ, orphans, certificate, export (issue 12) ---------------
def orphans_section(label: str, side: str, this: str, other: str, table: pd.DataFrame) -> None:
    """One side's orphans, in an expander; a click on a cell offers its feature's Neighbours
    page (the row's feature, or the partner / max-cos partner / taker the cell names)."""
    n_alive = dicts[this].n_alive
    with st.expander(f"Orphans of {this} vs {other}: {len(table):,} of {n_alive:,} alive"):
        event = st.dataframe(
            table, hide_index=True, on_select="rerun", selection_mode="single-cell", placeholder="—",
            key=f"orphans_{label}_{side}_{directions}_{tau}_{criterion}",
            column_config={
                "decoder cos": st.column_config.NumberColumn(format="%.3f"),
                "encoder cos": st.column_config.NumberColumn(format="%.3f"),
                "max cos": st.column_config.NumberColumn(format="%.3f"),
                "partner": st.column_config.NumberColumn(help=f"its partner in {other}"),
                "max-cos partner": st.column_config.NumberColumn(
                    help=f"its nearest feature in {other} ({directions})"),
                "taken by": st.column_config.NumberColumn(
                    help=f"the feature of {this} the matching gave the max-cos partner to"),
            },
        )  # fmt: skip
        cells = event.selection.cells if event else []
        picked = cell_feature(table, *cells[0]) if cells else None
        if picked is None:
            st.caption("Click a cell for a link to its feature on the Neighbours page.")
            return
        whose = this if picked[0] == "this" else other
        st.page_link(
            "pages/2_Neighbours.py",
            label=f"Open {whose} feature {picked[1]} on the Neighbours page",
            icon=":material/arrow_forward:",
            query_params={"dict": whose, "feature": str(picked[1]), **session.share_query(whose)},
        )


matched_labels = [label for label, r in results.items() if r["m"] is not None]
if matched_labels:
    st.subheader("One-to-one matching: shared features and orphans")
    c1, c2 = st.columns([1, 3])
    tau = matching_ui.tau_control(c1, "sim_tau")
    criterion = matching_ui.criterion_control(c2, "sim_criterion")
    st.caption(f"Matched by {directions} directions (the Directions control above). {SHARED_NOTE}")
    details = {}
    for label in matched_labels:
        a_name, b_name = parse(label)
        a, b, m = dicts[a_name], dicts[str(b_name)], results[label]["m"]
        try:
            pairs = store.matched(a, b, directions)
            orph = {side: store.orphans(a, b, directions, side, tau, criterion) for side in "ab"}
        except SAEError as e:
            show_error(e, label)
            continue
        details[label] = (a_name, str(b_name), a, b, m, pairs, orph)
    summary = pd.DataFrame(
        [
            summary_row(label, m, shared_summary(pairs, tau, criterion))
            for label, (*_, m, pairs, _) in details.items()
        ]
    )
    st.dataframe(
        summary, hide_index=True, key="matching_summary",
        column_config={
            **{c: st.column_config.NumberColumn(format="%.3f")
               for c in ("mean matched cos", "shared (dec & enc)", "shared (decoder)")},
            "objective": st.column_config.NumberColumn(format="%.4f"),
            "bound": st.column_config.NumberColumn(format="%.4f"),
            **{c: st.column_config.Column(width="small") for c in ("pairs", "certified", "rounds")},
        },
    )  # fmt: skip
    for tab, (label, (a_name, b_name, a, b, m, pairs, orph)) in zip(
        st.tabs(list(details)), details.items(), strict=True
    ):
        with tab:
            st.markdown(
                certificate_markdown(m.method, m.certified, m.total, m.bound, m.tolerance,
                                     m.rounds)
            )  # fmt: skip
            orphans_section(label, "a", a_name, b_name, orphans_table(orph["a"], pairs))
            orphans_section(label, "b", b_name, a_name, orphans_table(orph["b"], pairs))
            matching_ui.downloads(
                st.container(), (a_name, b_name), a, b, m, pairs, tau, criterion, key=label
            )

# --- Bootstrap CI of a difference of means --------------------------------------------------
if len(labels) >= 2:
    st.subheader("Is one comparison's MMCS higher than another's?")
    c1, c2 = st.columns(2)
    x_label = c1.selectbox("First", labels, index=0)
    y_label = c2.selectbox("Second", labels, index=1)
    rx, ry = results[x_label], results[y_label]
    ci = store.bootstrap_ci(rx["key"], rx["res"].max_cos, ry["key"], ry["res"].max_cos)
    st.metric(
        f"MMCS({x_label}) − MMCS({y_label})",
        f"{ci.diff:+.4f}",
        help="95% percentile bootstrap interval, features resampled with replacement",
    )
    st.caption(f"95% bootstrap interval: [{ci.low:+.4f}, {ci.high:+.4f}] (2,000 resamples).")

# --- MMCS heatmap ---------------------------------------------------------------------------
st.subheader("MMCS between every pair of loaded dictionaries")
st.caption("Row: A, column: B; the diagonal is within-dictionary. Click a cell to add it above.")
grid = np.full((len(names), len(names)), np.nan)  # [A, B] MMCS; NaN: not comparable
with st.spinner("Comparing every pair ..."):
    for i, a_name in enumerate(names):
        for j, b_name in enumerate(names):
            a, b = dicts[a_name], (None if i == j else dicts[b_name])
            with contextlib.suppress(SAEError):  # mismatched d_model, no encoder: left empty
                grid[i, j] = store.comparison(a, b, directions).summary().mean
st.plotly_chart(
    charts.mmcs_heatmap(grid, names), key="heat", on_select=open_cell, selection_mode="points"
)
