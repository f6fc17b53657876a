"""Families: how features split, survive, vanish or appear from one dictionary to the next wider.

The URL is the state, as on Neighbours: `/Families?ladder=a,b,c&dict=b&feature=12&tau=0.5&
mode=tree` (plus `&src=SOURCE` when the focused dictionary is not the bundled demo). Every
control and click rewrites it; the ladder's default comes from `dashboard.ladder`. Numbers come
from `sae_backend.geometry.families` through `dashboard.store`.
"""

from __future__ import annotations

from functools import partial

import pandas as pd
import streamlit as st

from dashboard import background, charts, frame, links, session, store
from dashboard.feedback import show_error
from dashboard.ladder import SEP, FamiliesState, default_feature, parse_query
from dashboard.tables import chain_table, counts_table, label_table, level_name
from sae_backend import SAEError
from sae_backend.cli.families import edges_csv, labels_csv
from sae_backend.geometry.families import LABELS, Chain, Label
from sae_backend.jobs import Job

frame.page("Families")
st.title("Families across widths")
st.caption(
    "A ladder: dictionaries at one hook, narrowest first. Each alive feature of a wider "
    "dictionary takes as parent its nearest feature (decoder cosine) in the next narrower one, "
    "if that cosine is at least τ; with 'all parents' every narrower feature at or above τ. "
    "A narrower feature with no child has *vanished*, one child is *stable*, two or more "
    "*split*; a wider feature without a parent is *novel*. Coverage: how much of a parent's "
    "direction its children span (1 − squared residual of the parent on its children)."
)
session.adopt_from_url()
dicts = store.dictionaries_or_stop()  # those loaded; the others show their loading bars
names = list(dicts)
asked = st.query_params.get("ladder")  # none: the default ladder, from every dictionary
waiting = [n for n in session.entries() if n not in dicts and (not asked or n in asked.split(SEP))]
if waiting:
    st.caption(f"{', '.join(waiting)} loading; this page shows the families once loaded.")
    st.stop()  # their progress bars (drawn by dictionaries_or_stop) rerun the page when done
state, problems = parse_query(st.query_params.to_dict(), names, links.session_default_ladder(dicts))
for problem in problems:
    st.error(problem)


def go(new: FamiliesState) -> None:
    """Make `new` the page's state: the URL is the single source of truth."""
    links.remember(new)
    share = session.share_query(new.dictionary) if new.dictionary in dicts else {}
    st.query_params.from_dict({**new.to_query(), **share})


def on_ladder() -> None:
    ladder = tuple(st.session_state["fam_ladder"])
    keep = state.dictionary in ladder
    go(FamiliesState(ladder, state.dictionary if keep else None,
                     state.feature if keep else None, state.tau, state.mode))  # fmt: skip


def on_rule() -> None:
    tau, mode = float(st.session_state["fam_tau"]), st.session_state["fam_mode"]
    go(FamiliesState(state.ladder, state.dictionary, state.feature, tau, mode))


def on_focus_dict() -> None:
    go(state.focus(st.session_state["fam_dict"], None))


def on_focus_feature() -> None:
    go(state.focus(st.session_state["fam_dict"], int(st.session_state["fam_feature"])))


st.session_state["fam_ladder"] = list(state.ladder)
st.session_state["fam_tau"] = state.tau
st.session_state["fam_mode"] = state.mode
c1, c2, c3 = st.columns([4, 2, 2])
c1.multiselect(
    "Ladder (narrowest first: in the order chosen)", names, key="fam_ladder", on_change=on_ladder
)
c2.slider("τ: least decoder cosine of an edge", 0.01, 1.0, step=0.01, key="fam_tau",
          on_change=on_rule)  # fmt: skip
c3.radio(
    "Parents",
    ["tree", "dag"],
    format_func={"tree": "nearest only (tree)", "dag": "all ≥ τ (DAG)"}.get,
    key="fam_mode",
    on_change=on_rule,
)
if len(state.ladder) < 2:
    st.info("Choose at least two dictionaries at one hook, narrowest first.")
    st.stop()

ladder = [dicts[n] for n in state.ladder]
try:  # in the background: leaving the page does not stop it; its bar reruns the page
    fam = background.soon(
        store.families_work(ladder, state.tau, state.mode,
                            f"families across {' → '.join(state.ladder)} (τ = {state.tau:g})")
    )  # fmt: skip
except SAEError as e:
    show_error(e)
    st.stop()
if fam is None:
    st.stop()
for warning in fam.warnings:  # the backend names sources; the page names dictionaries
    for source, name in sorted(zip(fam.sources, state.ladder, strict=True),
                               key=lambda p: -len(p[0])):  # fmt: skip
        warning = warning.replace(source, name)
    st.warning(warning)

# --- The focused feature (from the URL, else the page's pick) -------------------------------
focus_name = state.dictionary or state.ladder[0]
focus_i = state.ladder.index(focus_name)
feature = state.feature if state.feature is not None else default_feature(fam, focus_i)
chain: Chain | None = None
try:
    chain = fam.chain(focus_i, feature)
except SAEError as e:
    bad_feature = e
if not problems and chain is not None:
    go(state.focus(focus_name, feature))  # the address bar always holds a link others can open
else:
    links.remember(state.focus(focus_name, feature))

# --- Label counts per level -----------------------------------------------------------------
st.subheader("Labels per level")
counts = counts_table(fam, state.ladder)
st.dataframe(counts, hide_index=True)
c1, c2 = st.columns([1, 2])
c1.caption(
    f"τ = {state.tau:g}, {'nearest parent only' if state.mode == 'tree' else 'all parents ≥ τ'}. "
    "vanished + stable + split = the narrower dictionary's alive features; novel counts "
    "the wider one's features without a parent."
)
c2.plotly_chart(charts.label_counts_bar(fam.counts(), list(counts["level"])), key="counts")

# --- One feature's family -------------------------------------------------------------------
st.subheader(f"Family of {focus_name} · feature {feature}")
st.session_state["fam_dict"] = focus_name
st.session_state["fam_feature"] = feature
d = dicts[focus_name]
c1, c2, c3 = st.columns([2, 2, 3], vertical_alignment="bottom")
c1.selectbox("Dictionary", list(state.ladder), key="fam_dict", on_change=on_focus_dict)
c2.number_input(f"Feature (0..{d.n_features - 1})", min_value=0, max_value=d.n_features - 1,
                step=1, key="fam_feature", on_change=on_focus_feature)  # fmt: skip
with c3:
    links.to_neighbours(focus_name, feature)
if chain is None:
    show_error(bad_feature, focus_name)
else:
    labels = ", ".join(fam.labels_of(focus_i, feature)) or "a child (widest dictionary)"
    st.caption(
        f"{focus_name} #{feature}: {labels}. Its ancestors (parents, their parents, ...) and "
        "descendants through the ladder; an edge's number and thickness: decoder cosine. "
        "Colour: the member's label towards the next wider dictionary; outlined: this feature. "
        "Click a member to open its family here."
    )
    if chain.edges:
        tree = charts.family_tree(fam, chain, state.ladder)

        def on_tree_click(key: str) -> None:
            points = st.session_state[key].selection.points
            picked = (
                tree.member(points[0]["curve_number"], points[0]["point_index"]) if points else None
            )
            if picked is not None:
                go(state.focus(state.ladder[picked[0]], picked[1]))

        tree_key = (
            f"fam_tree_{','.join(state.ladder)}_{focus_name}_{feature}_{state.tau}_{state.mode}"
        )
        st.plotly_chart(tree.figure, key=tree_key, on_select=partial(on_tree_click, tree_key),
                        selection_mode="points")  # fmt: skip
    else:
        st.info(f"No parent and no child at τ = {state.tau:g}: this feature's family is itself.")
    members = chain_table(fam, chain, state.ladder)
    st.dataframe(
        members,
        hide_index=True,
        placeholder="—",  # coverage of a member without children
        column_config={
            "coverage": st.column_config.NumberColumn(format="%.3f"),
            "Neighbours": st.column_config.LinkColumn(display_text="open"),
        },
        key="fam_members",
    )
    member_names = [f"{n} #{f}" for n, f in zip(members["dictionary"], members["feature"],
                                                  strict=True)]  # fmt: skip

    def on_member(key: str) -> None:
        picked = st.session_state.get(key)
        if picked is not None:
            name, f = picked.rsplit(" #", 1)
            go(state.focus(name, int(f)))

    key = f"fam_go_{focus_name}_{feature}_{state.tau}_{state.mode}"
    st.pills("Open a member of this family here", member_names, key=key, on_change=on_member,
             args=(key,))  # fmt: skip

# --- Features by label ----------------------------------------------------------------------
st.subheader("Features by label")
c1, c2 = st.columns([2, 3])
level_names = [level_name(state.ladder, i) for i in range(len(fam.levels))]
level = c1.selectbox("Level", range(len(fam.levels)), format_func=level_names.__getitem__,
                     key="fam_level")  # fmt: skip
label: Label = c2.radio("Label", LABELS, index=LABELS.index("split"), horizontal=True,
                        key="fam_label")  # fmt: skip
narrow, wide = ladder[level], ladder[level + 1]
nearest = None
if label in ("vanished", "novel"):  # each feature's best match on the other side, below tau
    (a_name, a), (b_name, b) = (state.ladder[level], narrow), (state.ladder[level + 1], wide)
    if label == "novel":
        (a_name, a), (b_name, b) = (b_name, b), (a_name, a)
    got = background.outcome(store.comparison_work(a, b, "decoder", label=f"{a_name} → {b_name}"))
    if isinstance(got, Job):  # meanwhile the table without the nearest columns
        background.progress_bars([got])
    else:
        nearest = got
table = label_table(fam, state.ladder, level, label, nearest)
st.caption(
    f"{len(table):,} {label} features at {level_names[level]}. Select a row to open its family "
    "above; 'open' opens it on Neighbours (new tab)."
    + (" For a split, coverage near 1: the children together span the parent." if label == "split"
       else "")
)  # fmt: skip


def on_row(key: str, rows: pd.DataFrame) -> None:
    selected = st.session_state[key].selection.rows
    if selected:
        row = rows.iloc[selected[0]]
        go(state.focus(str(row["dictionary"]), int(row["feature"])))


table_key = f"fam_rows_{level}_{label}_{state.tau}_{state.mode}"
st.dataframe(
    table,
    hide_index=True,
    placeholder="—",
    column_config={
        "coverage": st.column_config.NumberColumn(format="%.3f"),
        "its cosine": st.column_config.NumberColumn(format="%.3f"),
        "Neighbours": st.column_config.LinkColumn(display_text="open"),
    },
    key=table_key,
    on_select=partial(on_row, table_key, table),
    selection_mode="single-row",
)

c1, c2 = st.columns(2)
c1.download_button("Edges (CSV: level,parent,child,cosine)", lambda: edges_csv(fam),
                   "families_edges.csv", "text/csv")  # fmt: skip
c2.download_button("Labels (CSV: dictionary,feature,label)", lambda: labels_csv(fam),
                   "families_labels.csv", "text/csv")  # fmt: skip
