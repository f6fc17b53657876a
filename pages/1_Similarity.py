"""Similarity: max-cosine histograms of chosen comparisons, matching, null, heatmap, bootstrap."""

from __future__ import annotations

import contextlib

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import background, charts, frame, matching_ui, session, store
from dashboard.feedback import show_error
from dashboard.matching_tables import cell_feature, orphans_table, summary_row
from dashboard.text import SHARED_NOTE, certificate_markdown
from sae_backend import SAEError
from sae_backend.geometry.compare import Comparison
from sae_backend.geometry.matching import Matching
from sae_backend.geometry.shared import shared_summary
from sae_backend.geometry.stats import summarize
from sae_backend.jobs import Job

frame.page("Similarity")
st.title("Similarity")
st.caption(
    "For each feature of A (alive ones only), the largest cosine similarity to any feature of "
    "B: high = B has a near-copy of it. 'within A' compares A with itself, self excluded."
)
dicts = store.dictionaries_or_stop()  # those loaded; the others show their loading bars
names = list(session.entries())  # every one, loaded or not: the widgets' options stay put

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
show_rotation = c1.checkbox(
    "Rotation null (A → B)",
    value=small,
    help="A against B turned by a random orthogonal matrix (Haar, seed 0): B keeps its own "
    "geometry and loses only its alignment with A. One more pass per comparison.",
)
do_match = c2.checkbox("One-to-one matching (A → B)", value=small)
thresholds = c3.multiselect("Thresholds", [0.3, 0.5, 0.7, 0.8, 0.9, 0.95], default=[0.5, 0.7, 0.9])

# Nothing below waits: what is known (in the shared store, e.g. "within A" from the home page)
# is drawn at once; the rest is computed by background jobs behind progress bars, and the page
# reruns as each result arrives.
results = {}  # label -> dict of the backend's results and the table row
computing: list[Job] = []  # unfinished jobs of the chosen comparisons
for label in chosen:
    a_name, b_name = parse(label)
    if a_name not in dicts or (b_name is not None and b_name not in dicts):
        continue  # still loading (its bar is at the top)
    a, b = dicts[a_name], None if b_name is None else dicts[b_name]
    try:
        res = background.outcome(store.comparison_work(a, b, directions, label=label))
        null = background.outcome(
            store.null_work(a.n_alive, None if b is None else b.n_alive, a.d_model)
        )
        m = None
        if do_match and b is not None:
            m = background.outcome(store.matching_work(a, b, directions, f"matching {label}"))
        rot, rotated = None, show_rotation and b is not None
        if rotated:
            rot = background.outcome(
                store.rotation_null_work(a, b, directions, f"rotation null {label}")
            )
    except SAEError as e:
        show_error(e, label)
        continue
    computing += background.pending(res, null, m, rot)
    if not isinstance(res, Comparison):
        continue
    null = null if isinstance(null, np.ndarray) else None
    m = m if isinstance(m, Matching) else None
    rot = rot if isinstance(rot, np.ndarray) else None
    s = summarize(res.max_cos, thresholds)
    dc = res.double_counting(b.n_features if b is not None else a.n_features)
    row = {
        "comparison": label,
        "n": s.n,
        "MMCS": s.mean,
        "median": s.median,
        **{f"> {t}": f for t, f in s.above.items()},
        "null mean": np.nan if null is None else float(null.mean()),
        **({"rotation null mean": np.nan if rot is None else float(rot.mean())} if rotated else {}),
        "distinct targets": dc.n_targets,
        "targeted fraction": dc.fraction_targeted,
        "max in-degree": dc.max_in_degree,
        "shared-target fraction": dc.fraction_shared,
    }
    if m is not None:
        row.update({"matched mean": m.mean, "matched n": m.n_matched, "match method": m.method})
    key = (a.fingerprint, b and b.fingerprint, directions)  # names res.max_cos for caches
    results[label] = {"res": res, "null": null, "m": m, "rot": rot, "row": row, "key": key}

computing = list(dict.fromkeys(computing))  # a job shared by two comparisons: one bar
background.progress_bars(computing)


def known_comparisons() -> None:
    """Histograms, table, downloads and the bootstrap interval of the comparisons known."""
    labels = list(results)
    series = [
        charts.HistogramSeries(
            label, r["res"].max_cos, r["null"], None if r["m"] is None else r["m"].cosine, r["rot"]
        )
        for label, r in results.items()
    ]
    fig = charts.similarity_histogram(series, layout, show_null)
    st.plotly_chart(fig, key="hist")
    st.caption(
        "Dashed lines: means (MMCS). Grey: the same comparison between random unit directions "
        "with the same counts and dimension. Hatched: cosines of the optimal one-to-one "
        "matching, where no feature of B is claimed twice. Dark grey, dotted: the rotation "
        "null, A against B turned by a random orthogonal matrix (B's own geometry, no "
        "alignment with A); none for 'within A', whose cosines a rotation leaves unchanged."
    )
    table = pd.DataFrame([r["row"] for r in results.values()])
    st.dataframe(table, hide_index=True, placeholder="—")  # none: not asked for, or not yet

    def per_feature_csv() -> str:
        """Every shown comparison's per-feature numbers; built only when downloaded (large)."""
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
    c1.download_button(
        "Summary (CSV)", table.to_csv(index=False), "similarity_summary.csv", "text/csv"
    )
    c2.download_button(
        "Per-feature numbers (CSV)", per_feature_csv, "similarity_per_feature.csv", "text/csv"
    )
    c3.download_button(
        "Figure (HTML)", lambda: fig.to_html(include_plotlyjs="cdn"), "similarity.html",
        "text/html",
    )  # fmt: skip

    matching_section()  # issue 12: what the known matchings mean

    # --- Bootstrap CI of a difference of means ----------------------------------------------
    if len(labels) < 2:
        return
    st.subheader("Is one comparison's MMCS higher than another's?")
    c1, c2 = st.columns(2)
    x_label = c1.selectbox("First", labels, index=0)
    y_label = c2.selectbox("Second", labels, index=1)
    rx, ry = results[x_label], results[y_label]
    ci = background.soon(
        store.bootstrap_work(rx["key"], rx["res"].max_cos, ry["key"], ry["res"].max_cos)
    )
    if ci is not None:
        st.metric(
            f"MMCS({x_label}) − MMCS({y_label})",
            f"{ci.diff:+.4f}",
            help="95% percentile bootstrap interval, features resampled with replacement",
        )
        st.caption(f"95% bootstrap interval: [{ci.low:+.4f}, {ci.high:+.4f}] (2,000 resamples).")


# --- One-to-one matching: shared at τ, orphans, certificate, export (issue 12) ---------------
def orphans_section(
    label: str, side: str, this: str, other: str, table: pd.DataFrame, key: str
) -> None:
    """One side's orphans, in an expander; a click on a cell offers its feature's Neighbours
    page (the row's feature, or the partner / max-cos partner / taker the cell names)."""
    n_alive = dicts[this].n_alive
    with st.expander(f"Orphans of {this} vs {other}: {len(table):,} of {n_alive:,} alive"):
        event = st.dataframe(
            table, hide_index=True, on_select="rerun", selection_mode="single-cell", placeholder="—",
            key=f"orphans_{label}_{side}_{key}",
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


def matching_section() -> None:
    """The known matchings' summary (shared at τ, orphans), certificates, orphans tables and
    exports; a matching whose pairs' cosines or orphans' comparisons are still computing shows
    its bar here and joins once they arrive."""
    matched_labels = [label for label, r in results.items() if r["m"] is not None]
    if not matched_labels:
        return
    st.subheader("One-to-one matching: shared features and orphans")
    c1, c2 = st.columns([1, 3])
    tau = matching_ui.tau_control(c1, "sim_tau")
    criterion = matching_ui.criterion_control(c2, "sim_criterion")
    st.caption(f"Matched by {directions} directions (the Directions control above). {SHARED_NOTE}")
    details = {}
    waiting: list[Job] = []
    for label in matched_labels:
        a_name, b_name = label.split(SEP)
        a, b, m = dicts[a_name], dicts[b_name], results[label]["m"]
        try:
            pairs = background.outcome(
                store.matched_work(a, b, m, directions, f"matched pairs {label}")
            )
            if isinstance(pairs, Job):
                waiting.append(pairs)
                continue
            orph = {
                "a": store.orphans_outcome(pairs, (a_name, a), (b_name, b), "a", tau, criterion),
                "b": store.orphans_outcome(pairs, (b_name, b), (a_name, a), "b", tau, criterion),
            }
        except SAEError as e:
            show_error(e, label)
            continue
        if background.pending(*orph.values()):
            waiting += background.pending(*orph.values())
            continue
        details[label] = (a_name, b_name, a, b, m, pairs, orph)
    waiting = [job for job in dict.fromkeys(waiting) if job not in computing]
    background.progress_bars(waiting)
    computing.extend(waiting)  # the heatmap below draws no second bar for them
    if not details:
        return
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
    key = f"{directions}_{tau}_{criterion}"
    for tab, (label, (a_name, b_name, a, b, m, pairs, orph)) in zip(
        st.tabs(list(details)), details.items(), strict=True
    ):
        with tab:
            st.markdown(
                certificate_markdown(m.method, m.certified, m.total, m.bound, m.tolerance,
                                     m.rounds)
            )  # fmt: skip
            orphans_section(label, "a", a_name, b_name, orphans_table(orph["a"], pairs), key)
            orphans_section(label, "b", b_name, a_name, orphans_table(orph["b"], pairs), key)
            matching_ui.downloads(
                st.container(), (a_name, b_name), a, b, m, pairs, tau, criterion, key=label
            )


if results:
    known_comparisons()

# --- MMCS heatmap ---------------------------------------------------------------------------
st.subheader("MMCS between every pair of loaded dictionaries")
st.caption("Row: A, column: B; the diagonal is within-dictionary. Click a cell to add it above.")
grid = np.full((len(names), len(names)), np.nan)  # [A, B] MMCS; NaN: not comparable or not yet
cells: list[Job] = []  # cells still computing
for i, a_name in enumerate(names):
    for j, b_name in enumerate(names):
        if a_name not in dicts or b_name not in dicts:
            continue  # still loading
        a, b = dicts[a_name], (None if i == j else dicts[b_name])
        label = label_of(a_name, b_name)
        with contextlib.suppress(SAEError):  # mismatched d_model, no encoder: left empty
            cell = background.outcome(store.comparison_work(a, b, directions, label=label))
            if isinstance(cell, Comparison):
                grid[i, j] = cell.summary().mean
            else:
                cells.append(cell)
if not np.isnan(grid).all():  # an empty grid would be an empty frame
    st.plotly_chart(
        charts.mmcs_heatmap(grid, names), key="heat", on_select=open_cell, selection_mode="points"
    )
if np.isnan(grid).any():
    known = int((~np.isnan(grid)).sum())
    st.caption(f"{known} of {grid.size} cells known; the others fill in as they are computed.")
    background.progress_bars([c for c in cells if c not in computing])  # the rest: above
