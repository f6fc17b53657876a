"""UMAP: one joint embedding of the alive directions of chosen dictionaries; click and select.

The embedding comes from `sae_backend.projection.umap_embedding` (cached on disk by the
dictionaries' fingerprints and the parameters; `python -m sae_backend` can precompute it).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import background, charts, frame, matching_ui, session, store
from dashboard.feedback import show_error
from dashboard.matching_tables import point_status
from dashboard.text import CRITERION_LABELS, STATUS_LABELS, context_hover, context_markdown
from sae_backend import SAEError
from sae_backend.geometry.neighbours import feature_neighbours
from sae_backend.jobs import Job
from sae_backend.projection import UMAP_DEFAULTS, umap_embedding

frame.page("UMAP")
st.title("UMAP")
st.caption(
    "A 2-D map (UMAP, cosine metric) of the alive decoder or encoder directions of the chosen "
    "dictionaries, in one embedding. Click a point for its neighbours; drag to zoom; "
    "choose box or lasso select in the chart's toolbar (top right) for a table and downloads."
)
dicts = store.dictionaries_or_stop()  # those loaded; the others show their loading bars
names = list(session.entries())  # every one, loaded or not: the widgets' options stay put

c1, c2, c3, c4, c5 = st.columns([3, 1, 1, 1, 1])
chosen = c1.multiselect("Dictionaries", names, default=names[:2])
directions = c2.radio("Directions", ["decoder", "encoder"])
n_neighbors = c3.number_input("n_neighbors", 2, 200, UMAP_DEFAULTS["n_neighbors"])
min_dist = c4.number_input("min_dist", 0.0, 1.0, UMAP_DEFAULTS["min_dist"], step=0.05)
seed = c5.number_input("seed", 0, 10_000, UMAP_DEFAULTS["seed"])
colour_options = ["dictionary", "within-dictionary max cos", "density"]
colour_options += [f"max cos to {n}" for n in names]
STATUS_VS = "match status vs "  # issue 12: shared / matched below τ / unmatched, per point
colour_options += [f"{STATUS_VS}{n}" for n in names if chosen != [n]]
colour = st.selectbox("Colour by", colour_options)
if colour.startswith(STATUS_VS):
    c1, c2, _ = st.columns([1, 2, 3])
    tau = matching_ui.tau_control(c1, "umap_tau")
    criterion = matching_ui.criterion_control(c2, "umap_criterion")
if not chosen:
    st.info("Choose at least one dictionary.")
    st.stop()
if any(n not in dicts for n in chosen):
    st.caption("The embedding is computed once the chosen dictionaries are loaded.")
    st.stop()  # their loading bars (at the top) rerun the page


selected_dicts = [dicts[n] for n in chosen]
n_points = sum(d.n_alive for d in selected_dicts)
# Large embeddings wait for a button; once pressed, this session keeps showing that embedding
# (clicks and selections rerun the page, and the button is False on every rerun after a press).
wanted = (tuple(chosen), directions, int(n_neighbors), float(min_dist), int(seed))
approved = st.session_state.setdefault("umap_approved", set())
work = store.umap_work(
    selected_dicts, directions, int(n_neighbors), float(min_dist), int(seed),
    label=f"UMAP of {n_points:,} points ({', '.join(chosen)})",
)  # fmt: skip


def cached() -> bool:
    """Whether this embedding is known already: in memory, being computed (for any session),
    or on disk (e.g. from `precompute`). Then no button."""
    if work.memory is not None and work.memory.peek(work.key) is not None:
        return True
    if background.jobs().get(work.key) is not None:
        return True
    try:
        return umap_embedding(
            selected_dicts, directions=directions, n_neighbors=int(n_neighbors),
            min_dist=float(min_dist), seed=int(seed), only_cached=True,
        ) is not None  # fmt: skip
    except SAEError:
        return False  # the computation below shows the error


if n_points > store.UMAP_AUTO_LIMIT and wanted not in approved and not cached():
    if not st.button(f"Compute the embedding of {n_points:,} points"):
        st.info(f"{n_points:,} points: computing takes a while (once; then it is cached).")
        st.stop()
    approved.add(wanted)
try:
    # In the background (kNN rows, then epochs, as progress): leaving the page does not stop
    # it, and the next visit (from any session) finds it running or done.
    emb = background.soon(work)
except SAEError as e:
    show_error(e)
    st.stop()
if emb is None:
    st.stop()  # the progress bar above reruns the page when the embedding is done

# --- Colour ---------------------------------------------------------------------------------


def metric_values() -> np.ndarray | None:  # [N] float, NaN where unknown
    """The chosen colour's value at every point: density, or the max cosine of its feature;
    None while a comparison it needs is computing (its progress bar is drawn here)."""
    values = np.full(len(emb), np.nan)
    computing = []
    for k, d in enumerate(selected_dicts):
        sel = emb.dict_index == k
        feats = emb.feature[sel]
        if colour == "density":
            if d.density is not None:
                values[sel] = d.density[feats]
            continue
        other, target_name = None, colour.removeprefix("max cos to ")
        if colour.startswith("max cos to "):
            if target_name not in dicts:  # still loading: its bar is at the top
                return None
            target = dicts[target_name]
            other = None if target is d else target
        label = f"within {chosen[k]}" if other is None else f"{chosen[k]} → {target_name}"
        res = background.outcome(store.comparison_work(d, other, directions, label=label))
        if isinstance(res, Job):
            computing.append(res)
            continue
        pos = {int(f): i for i, f in enumerate(res.a_index)}
        values[sel] = [res.max_cos[pos[int(f)]] for f in feats]
    if computing:
        st.caption(f"Colour by {colour}: computing; meanwhile coloured by dictionary.")
        background.progress_bars(computing)
        return None
    return values


def status_values(target_name: str) -> np.ndarray | None:  # [N] str
    """Each point's status in a one-to-one matching with `target_name` (by the embedding's
    directions): a feature of another dictionary X in the matching X → target; a feature of
    the target itself (when embedded) on the target's side of the matching with the first
    other embedded dictionary. None while a matching it needs is computing (its bar here)."""
    from sae_backend.geometry.shared import feature_status

    if target_name not in dicts:  # still loading: its bar is at the top
        return None
    target = dicts[target_name]
    partner = next((n for n in chosen if n != target_name), None)
    per_dict: list[np.ndarray | None] = []
    computing = []
    for n in chosen:  # n's side of the matching n → target, or the target's of partner → it
        source, side = (n, "a") if n != target_name else (partner, "b")
        if source is None:
            continue
        pairs = store.matched_outcome(
            dicts[source], target, directions, f"{source} → {target_name}"
        )
        if isinstance(pairs, Job):
            computing.append(pairs)
            continue
        this = dicts[n]
        per_dict.append(
            feature_status(pairs, side, this.n_features, this.alive_index, tau, criterion)
        )
    if computing:
        st.caption(f"Colour by {colour}: computing; meanwhile coloured by dictionary.")
        background.progress_bars(list(dict.fromkeys(computing)))
        return None
    return point_status(emb.dict_index, emb.feature, per_dict)


ctx = {n: store.contexts(n) for n in chosen}
pairs = zip(emb.dict_index, emb.feature, strict=True)
hover = np.array([context_hover(ctx[chosen[int(k)]], f) for k, f in pairs], dtype=object)
# hover: [N] the strongest context of each point ('' outside the real demo)
try:
    status = status_values(colour.removeprefix(STATUS_VS)) if colour.startswith(STATUS_VS) else None
    if status is not None:
        target_name = colour.removeprefix(STATUS_VS)
        fig, traces = charts.match_status_scatter(emb, chosen, hover, status, STATUS_LABELS)
        others = [n for n in chosen if n != target_name]
        own = (
            f" Points of {target_name} itself: their status in the matching {others[0]} → "
            f"{target_name}."
            if target_name in chosen
            else ""
        )
        st.caption(
            f"Status of each point in the one-to-one matching ({directions}) of its dictionary "
            f"with {target_name}: shared when {CRITERION_LABELS[criterion]} (τ = {tau:g}); "
            f"orphans are matched below τ or unmatched.{own}"
        )
    else:
        by_value = colour != "dictionary" and not colour.startswith(STATUS_VS)
        values = metric_values() if by_value else None
        fig, traces = charts.umap_scatter(
            emb, chosen, hover, values, colour if values is not None else "dictionary"
        )
except SAEError as e:
    show_error(e)
    st.stop()
event = st.plotly_chart(
    fig, key="umap", on_select="rerun", selection_mode=("points", "box", "lasso")
)

points = event.selection.points if event else []
picked = np.array(
    sorted({int(traces[p["curve_number"]][p["point_index"]]) for p in points}), dtype=np.int64
)


# --- One point: its neighbours --------------------------------------------------------------
if len(picked) == 1:
    i = int(picked[0])
    name, feature = chosen[int(emb.dict_index[i])], int(emb.feature[i])
    st.subheader(f"{name} · feature {feature}")
    st.page_link(
        "pages/2_Neighbours.py",
        label=f"Open {name} feature {feature} on the Neighbours page",
        query_params={"dict": name, "feature": str(feature)},
    )
    for act, text in ctx[name].get(feature, []):
        st.markdown(f"- `{act:.2f}` {context_markdown(text)}")
    nb = feature_neighbours(dicts[name], feature, k=5, directions=directions)
    st.dataframe(
        pd.DataFrame({"neighbour in " + name: nb.index, "cosine": nb.cosine}), hide_index=True
    )

# --- A selection: table per dictionary and downloads ----------------------------------------
elif len(picked) > 1:
    st.subheader(f"{len(picked)} selected features")
    rows = emb.to_rows(chosen, picked)
    for name, part in rows.groupby("RunType", sort=False):
        st.markdown(f"**{name}**: {len(part)} features")
        st.dataframe(part.drop(columns="RunType"), hide_index=True)
    c1, c2 = st.columns(2)
    c1.download_button("Selection (CSV)", rows.to_csv(index=False), "umap_selection.csv")
    indices = {n: [int(f) for f in p["EmbeddingIndex"]] for n, p in rows.groupby("RunType")}
    c2.download_button("Selection (JSON)", json.dumps(indices), "umap_selection.json")


def embedding_csv() -> str:
    """The whole embedding as RunType,EmbeddingIndex,X,Y; built only when downloaded (large)."""
    return emb.to_rows(chosen).to_csv(index=False)


st.download_button("Whole embedding (CSV)", embedding_csv, "umap_embedding.csv", "text/csv")
