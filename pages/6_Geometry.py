"""Geometry of one dictionary: its frame (coherence, frame potential, spectrum, capacity,
decoder norms) and its absorption signatures; a summary of every loaded dictionary's frame.

The URL is the state: `/Geometry?dict=NAME&k=1` (plus `&src=SOURCE` for a dictionary that is
not the bundled demo). Numbers come from `sae_backend.geometry.frame` and `.absorption`
through `dashboard.store`; tables from `dashboard.tables`, figures from `dashboard.charts`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import background, charts, frame, links, session, store
from dashboard.feedback import show_error
from dashboard.tables import absorption_table, frame_row
from sae_backend import SAEError
from sae_backend.geometry.absorption import Absorption
from sae_backend.geometry.frame import Frame
from sae_backend.jobs import Job

MAX_K = 10  # partners per feature the page offers
FRAME_AUTO_LIMIT = 4096  # the summary of every loaded dictionary computes unasked up to this

frame.page("Geometry")
st.title("Geometry of a dictionary")
st.caption(
    "How the alive unit decoder directions of one dictionary sit in the model's space (its "
    "frame), and which features' encoders point away from another feature's decoder "
    "(absorption signatures)."
)
session.adopt_from_url()
dicts = store.dictionaries_or_stop()  # those loaded; the others show their loading bars
names = list(dicts)

name = st.query_params.get("dict", names[0])
if name not in dicts and name in session.entries():
    st.caption(f"{name} is loading; this page shows it as soon as it is loaded.")
    st.stop()  # its progress bar (drawn by dictionaries_or_stop) reruns the page when done
if name not in dicts:
    st.error(f"No dictionary named {name!r} is loaded (loaded: {', '.join(names)}).")
    name = names[0]
k_text = st.query_params.get("k", "1")
try:
    k = int(k_text)
    if not 1 <= k <= MAX_K:
        raise ValueError
except ValueError:
    st.error(f"k={k_text!r}: partners per feature must be a whole number from 1 to {MAX_K}.")
    k = 1


def go(new_name: str, new_k: int) -> None:
    """The URL is the single source of truth."""
    st.query_params.from_dict({"dict": new_name, "k": str(new_k), **session.share_query(new_name)})


st.session_state["geo_dict"] = name
st.session_state["geo_k"] = k
st.columns([1, 2])[0].selectbox("Dictionary", names, key="geo_dict",
                               on_change=lambda: go(st.session_state["geo_dict"], k))  # fmt: skip
if st.query_params.get("dict") in (None, name) and str(k) == k_text:
    go(name, k)  # normalise the URL (a bare /Geometry gets its dictionary)
d = dicts[name]

# --- Frame ----------------------------------------------------------------------------------
st.subheader(f"Frame of {name}")


def show_frame(fr: Frame) -> None:
    """The frame's numbers, its most coherent pair and four histograms."""
    n, dm = fr.n_features, fr.d_model
    c1, c2, c3, c4, c5 = st.columns(5)
    c1.metric("mutual coherence", f"{fr.coherence:.3f}",
              help="largest |cos| between two distinct alive features")  # fmt: skip
    c1.caption(
        f"Welch bound {fr.welch_bound:.4f}: no {n:,} unit vectors in {dm} dimensions do better"
    )
    c2.metric("frame potential", f"{fr.frame_potential:,.0f}", help="sum over all pairs of cos²")
    c2.caption(
        f"lower bound max(N, N²/d) = {fr.frame_potential_bound:,.0f} (tight frames); "
        f"{fr.frame_potential / fr.frame_potential_bound:.2f}× it"
    )
    c3.metric("effective rank", f"{fr.effective_rank:.1f}",
              help="exp of the entropy of the singular values normalised to sum 1 (Roy & Vetterli)")  # fmt: skip
    c3.caption(f"of d = {dm}")
    c4.metric("stable rank", f"{fr.stable_rank:.1f}", help="N / largest singular value²")
    c4.caption(f"of d = {dm}")
    c5.metric("capacity sum", f"{fr.capacity_sum:.1f}",
              help="sum of per-feature capacities (Scherlis et al.); at most d")  # fmt: skip
    c5.caption(f"of at most d = {dm}; mean {fr.capacity_sum / n:.3f} per feature")
    i, j = fr.coherent_pair
    if i >= 0:
        st.caption(f"The most coherent pair: features {i} and {j}.")
        c1, c2, _ = st.columns([1, 1, 2])
        with c1:
            links.to_neighbours(name, i, f"feature {i} on Neighbours")
        with c2:
            links.to_neighbours(name, j, f"feature {j} on Neighbours")

    c1, c2 = st.columns(2)
    with c1:
        st.markdown("**Largest |cos| of each feature with another**")
        st.plotly_chart(
            charts.value_histogram(
                fr.max_abs_cos, "largest |cos| with another feature",
                [(f"Welch bound {fr.welch_bound:.3f}", fr.welch_bound),
                 (f"coherence {fr.coherence:.3f}", fr.coherence)],
                x_range=(0.0, 1.02),
            ),
            key="coherence",
        )  # fmt: skip
    with c2:
        st.markdown("**Singular values of the unit decoder**")
        st.plotly_chart(
            charts.singular_value_spectrum(fr.singular_values, fr.effective_rank,
                                           float(np.sqrt(n / dm))),
            key="spectrum",
        )  # fmt: skip
    c1, c2 = st.columns(2)
    with c1:
        st.markdown("**Capacity per feature** (1: a direction of its own; 1/k: shared k ways)")
        mean_cap = fr.capacity_sum / n
        st.plotly_chart(
            charts.value_histogram(fr.capacity, "capacity", [(f"mean {mean_cap:.3f}", mean_cap)]),
            key="capacity",
        )  # fmt: skip
    with c2:
        st.markdown("**Decoder norms before normalising**")
        median = float(np.median(fr.decoder_norms))
        st.plotly_chart(
            charts.value_histogram(fr.decoder_norms, "decoder row norm",
                                   [(f"median {median:.3g}", median)]),
            key="norms",
        )  # fmt: skip
        norms = fr.decoder_norms
        st.caption(f"min {norms.min():.4g}, median {median:.4g}, max {norms.max():.4g}")


try:  # in the background: leaving the page does not stop it; its bar reruns the page
    fr = background.soon(store.frame_work(d, f"frame geometry of {name}"))
except SAEError as e:
    show_error(e, name)
    st.stop()
if fr is not None:
    show_frame(fr)

# --- Absorption signatures ------------------------------------------------------------------
st.subheader(f"Absorption signatures of {name}")
st.caption(
    "For each alive feature p, the features c ≠ p with the most negative cos(encoder p, "
    "decoder c): an absorbing parent's encoder learns to subtract its absorbed child's "
    "direction. Beside it cos(decoder p, decoder c) (a near-duplicate or a genuine pair?) and "
    "both features' encoder–decoder self-cosines. Sorted by the signature, most negative first."
)
ab: Absorption | None = None
if not d.has_encoder:
    st.info(f"{name} has no encoder directions: absorption signatures need them.")
else:
    st.columns([1, 3])[0].number_input(
        "Partners per feature (k)", 1, MAX_K, step=1, key="geo_k",
        on_change=lambda: go(name, int(st.session_state["geo_k"])),
    )  # fmt: skip
    try:
        ab = background.soon(store.absorption_work(d, k, f"absorption signatures of {name}"))
    except SAEError as e:
        show_error(e, name)
        st.stop()
if ab is not None:
    sig = ab.signature
    median = float(np.median(sig))
    c1, c2 = st.columns(2)
    with c1:
        st.markdown("**Each feature's most negative cos(encoder, other decoder)**")
        st.plotly_chart(
            charts.value_histogram(sig, "cos(encoder p, decoder c), most negative c",
                                   [(f"median {median:.3f}", median)]),
            key="signature",
        )  # fmt: skip
    with c2:
        st.markdown("**… against the two decoders' cosine** (one point per feature)")
        st.plotly_chart(
            charts.absorption_scatter(sig, ab.dec_dec_cos[:, 0],
                                      ab.feature, ab.partner[:, 0]),
            key="signature_scatter",
        )  # fmt: skip
    table = absorption_table(ab, name)
    st.markdown(
        f"**{len(ab.feature):,} features × {ab.k} partner(s)**, most negative first: select a "
        "row for links to both features (or 'open': a new tab)"
    )
    number = st.column_config.NumberColumn(format="%.3f")
    event = st.dataframe(
        table,
        hide_index=True,
        height=380,
        column_config={
            **{c: number for c in table.columns if "cos" in c},
            "open feature": st.column_config.LinkColumn(display_text="open"),
            "open partner": st.column_config.LinkColumn(display_text="open"),
        },
        key="absorption",
        on_select="rerun",
        selection_mode="single-row",
    )  # fmt: skip
    rows = event.selection.rows if event else []
    if rows:
        row = table.iloc[rows[0]]
        f, p = int(row["feature"]), int(row["partner"])
        c1, c2, _ = st.columns([1, 1, 2])
        with c1:
            links.to_neighbours(name, f, f"feature {f} on Neighbours")
        with c2:
            links.to_neighbours(name, p, f"its partner {p} on Neighbours")
    st.download_button("Absorption table (CSV)", lambda: table.to_csv(index=False),
                       f"absorption_{name}.csv", "text/csv")  # fmt: skip

# --- Every loaded dictionary ----------------------------------------------------------------
st.subheader("Frames of every loaded dictionary")
small = all(x.n_features <= FRAME_AUTO_LIMIT for x in dicts.values())
if st.checkbox("Compute for every loaded dictionary", value=small, key="geo_all",
               help="two top-k passes and a d × d Gram per dictionary; cached"):  # fmt: skip
    rows_all, computing = [], []
    for other_name, other in dicts.items():
        try:
            got = background.outcome(store.frame_work(other, f"frame geometry of {other_name}"))
        except SAEError as e:
            show_error(e, other_name)
            continue
        if isinstance(got, Job):
            computing.append(got)
        else:
            rows_all.append(frame_row(got, other_name))
    background.progress_bars(computing)  # the table fills in as they arrive
    summary = pd.DataFrame(rows_all)
    st.dataframe(summary, hide_index=True, placeholder="—",  # rows still computing
                 column_config={c: st.column_config.NumberColumn(format="%.4g")
                                for c in summary.columns[3:]})  # fmt: skip
