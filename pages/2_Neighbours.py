"""Neighbours: one feature and its nearest features in every loaded dictionary.

The URL is the state: `/Neighbours?dict=NAME&feature=INDEX`, plus `&src=SOURCE` for a
dictionary that is not the bundled demo. Every control and every click on a neighbour rewrites
them, so the address bar can always be shared: a session that lacks the dictionary (a
collaborator's) loads it from `src` first.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import background, frame, links, matching_ui, session, store
from dashboard.feedback import is_demo, show_error
from dashboard.matching_tables import feature_match, step_orphan
from dashboard.text import context_markdown, context_plain, demo_note, feature_match_markdown
from sae_backend import SAEError
from sae_backend.errors import InputError
from sae_backend.geometry.neighbours import check_feature, feature_neighbours
from sae_backend.geometry.stats import encoder_decoder_cosine
from sae_backend.jobs import Job
from sae_backend.neuronpedia import feature_url

frame.page("Neighbours")
st.title("Neighbours")
session.adopt_from_url()
dicts = store.dictionaries_or_stop()  # those loaded; the others show their loading bars
names = list(session.entries())  # every one, loaded or not: the widgets' options stay put


def open_feature(dict_name: str, feature: int) -> None:
    """Make (dict_name, feature) the current feature: the URL is the single source of truth."""
    query = {"dict": dict_name, "feature": str(int(feature)), **session.share_query(dict_name)}
    st.query_params.from_dict(query)


def first_alive(name: str) -> int:
    if name not in dicts:
        return 0  # still loading
    idx = dicts[name].alive_index
    return int(idx[0]) if len(idx) else 0


def on_dict() -> None:
    new = st.session_state["nb_dict"]
    open_feature(new, first_alive(new))


def on_feature() -> None:
    open_feature(st.session_state["nb_dict"], st.session_state["nb_feature"])


def step(direction: int) -> None:
    """Previous (-1), next (+1) alive feature, wrapping around; 0: a random alive one."""
    name = st.session_state["nb_dict"]
    alive = dicts[name].alive_index
    if len(alive) == 0:
        return
    cur = int(st.session_state["nb_feature"])
    if direction == 0:
        new = int(np.random.default_rng().choice(alive))
    elif direction > 0:
        later = alive[alive > cur]
        new = int(later[0] if len(later) else alive[0])
    else:
        earlier = alive[alive < cur]
        new = int(earlier[-1] if len(earlier) else alive[-1])
    open_feature(name, new)


def on_pick(target: str, key: str) -> None:
    picked = st.session_state.get(key)
    if picked is not None:
        open_feature(target, picked)


# --- Which feature: from the URL ------------------------------------------------------------
name = st.query_params.get("dict", names[0])
if name not in dicts and name in session.entries():
    st.caption(f"{name} is loading; this page shows it as soon as it is loaded.")
    st.stop()  # its progress bar (drawn by dictionaries_or_stop) reruns the page when done
if name not in dicts:  # sticky: the link that named it is rewritten below
    loaded = ", ".join(names)
    show_error(
        InputError(f"No dictionary named {name!r} is loaded (loaded: {loaded})."), sticky=True
    )
    name = next(iter(dicts))
d = dicts[name]
try:
    feature = check_feature(d, st.query_params.get("feature", first_alive(name)))
    bad_feature = None
except SAEError as e:
    bad_feature, feature = e, first_alive(name)
st.session_state["nb_dict"] = name
st.session_state["nb_feature"] = feature
if bad_feature is None and name == st.query_params.get("dict", name):
    open_feature(name, feature)  # the address bar always holds a link others can open

c1, c2, c3, c4, c5 = st.columns([2, 2, 1, 1, 1], vertical_alignment="bottom")
c1.selectbox("Dictionary", names, key="nb_dict", on_change=on_dict)
c2.number_input(
    f"Feature (0..{d.n_features - 1})",
    min_value=0,
    max_value=d.n_features - 1,
    step=1,
    key="nb_feature",
    on_change=on_feature,
)
c3.button("◀ previous", on_click=step, args=(-1,), help="previous alive feature")
c4.button("next ▶", on_click=step, args=(1,), help="next alive feature")
c5.button("random", on_click=step, args=(0,), help="a random alive feature")
c1, c2, c3 = st.columns([2, 2, 2])
k = c1.slider("Neighbours per dictionary", 1, 100, 10)
directions = c2.radio("Rank by", ["decoder", "encoder"], horizontal=True)
small = all(x.n_features <= 4096 for x in dicts.values())
show_match = c3.checkbox("One-to-one match", value=small, help="optimal matching, once per pair")
if show_match:  # what the matching means: shared at τ, or an orphan (issue 12)
    c1, c2, _ = st.columns([1, 2, 3])
    tau = matching_ui.tau_control(c1, "nb_tau")
    criterion = matching_ui.criterion_control(c2, "nb_criterion")

if bad_feature is not None:
    show_error(bad_feature, name)
    st.stop()
open_feature(name, feature)  # normalise the URL (e.g. a bare /Neighbours gets its feature)

# --- The feature ----------------------------------------------------------------------------
st.subheader(f"{name} · feature {feature}")
m1, m2, m3, m4 = st.columns(4)
m1.metric("alive", "yes" if d.alive[feature] else "no")
m2.metric("density", "unknown" if d.density is None else f"{float(d.density[feature]):.3g}")
if d.has_encoder:
    ed = encoder_decoder_cosine(d.encoder[[feature]], d.decoder[[feature]])[0]
    m3.metric("encoder–decoder cosine", f"{float(ed):.3f}")
m4.metric("decoder norm", f"{float(d.decoder_norms[feature]):.3g}")
if d.meta.neuronpedia_id:
    st.markdown(f"[Open on Neuronpedia]({feature_url(d.meta.neuronpedia_id, feature)})")
links.to_families(name, feature, dicts)  # the way back to Families, when name is on a ladder
if is_demo(session.entries()[name].uri):
    st.caption(demo_note())
shown = store.contexts(name).get(feature, [])
if shown:
    st.markdown("**Top activating contexts** (firing token in bold; activation)")
    for act, text in shown:
        st.markdown(f"- `{act:.2f}` {context_markdown(text)}")


# --- Its neighbours in every dictionary -----------------------------------------------------
def partner(target: str) -> tuple[int, float] | Job | None:
    """The one-to-one match of this feature in `target` if matched; its job while the
    matching is computing (in the background, once per pair for every session)."""
    if not show_match or target == name:
        return None
    pos = np.searchsorted(d.alive_index, feature)
    if pos >= len(d.alive_index) or d.alive_index[pos] != feature:
        return None  # a dead feature takes no part in the matching
    work = store.matching_work(d, dicts[target], directions, f"matching {name} → {target}")
    m = background.outcome(work)
    if isinstance(m, Job):
        return m
    j = int(m.b_index[pos])
    return None if j < 0 else (j, float(m.cosine[pos]))


# --- This feature in the one-to-one matching with each dictionary (issue 12) ---------------
def match_status(target: str) -> None:
    """Shared at τ or an orphan in the matching of this dictionary with `target`; an orphan's
    max-cos partner and who took it. Buttons open them and step through the orphans."""
    other = dicts[target]
    try:
        pairs = store.matched_outcome(d, other, directions, f"{name} → {target}")
        if isinstance(pairs, Job):  # the matching, then its pairs' cosines
            background.progress_bars([pairs])
            return
        o = store.orphans_outcome(pairs, (name, d), (target, other), "a", tau, criterion)
    except SAEError as e:
        show_error(e, f"matching with {target}")
        return
    if isinstance(o, Job):  # the comparison that names each orphan's max-cos partner
        background.progress_bars([o])
        return
    fm = feature_match(pairs, o, feature, bool(d.alive[feature]))
    st.markdown(
        feature_match_markdown(
            name, target, fm.status, tau, criterion, partner=fm.partner,
            decoder_cos=fm.decoder_cos, encoder_cos=fm.encoder_cos, nearest=fm.nearest,
            nearest_cos=fm.nearest_cos, taken_by=fm.taken_by,
        )
    )  # fmt: skip
    opens = []  # (label, dictionary, feature)
    if fm.partner is not None:
        opens.append((f"partner {target} #{fm.partner}", target, fm.partner))
    if fm.nearest is not None and fm.nearest != fm.partner:
        opens.append((f"max-cos partner {target} #{fm.nearest}", target, fm.nearest))
    if fm.taken_by is not None and fm.taken_by != feature:
        opens.append((f"taken by {name} #{fm.taken_by}", name, fm.taken_by))
    for step_, arrow in ((-1, "◀ previous orphan"), (1, "next orphan ▶")):
        new = step_orphan(o.feature, feature, step_)
        if new is not None and new != feature:
            opens.append((arrow, name, new))
    row = st.container(horizontal=True)
    for label, where, f in opens:
        row.button(
            label, key=f"match_{target}_{label}", on_click=open_feature, args=(where, f),
            help=f"{len(o):,} orphans of {name} vs {target}" if "orphan" in label else None,
        )  # fmt: skip


for target in [name] + [n for n in names if n != name]:
    if target not in dicts:
        st.caption(f"{target}: loading (its bar is at the top).")
        continue
    other = dicts[target]
    title = f"within {target} (itself excluded)" if target == name else f"in {target}"
    st.markdown(f"**{title}**")
    try:
        nb = feature_neighbours(d, feature, None if target == name else other, k=k,
                                directions=directions)  # fmt: skip
        pair = partner(target)
    except SAEError as e:
        show_error(e, target)
        continue
    table = pd.DataFrame(
        {
            "feature": nb.index,
            "cosine": nb.cosine,
            "decoder cos": nb.decoder,
            "encoder cos": nb.encoder if nb.encoder is not None else np.nan,
        }
    )
    if isinstance(pair, Job):
        background.progress_bars([pair])
    elif pair is not None:
        table["1-to-1"] = np.where(nb.index == pair[0], "✓", "")
    if show_match and target != name and not isinstance(pair, Job):  # a Job: its bar is above
        match_status(target)
    if other.density is not None:
        table["density"] = other.density[nb.index]
    other_ctx = store.contexts(target)
    if other_ctx:
        table["top context"] = [
            context_plain(other_ctx[int(i)][0][1]) if int(i) in other_ctx else "" for i in nb.index
        ]
    config = {c: st.column_config.NumberColumn(format="%.4f") for c in table.columns[1:4]}
    if other.meta.neuronpedia_id:
        table["Neuronpedia"] = [feature_url(other.meta.neuronpedia_id, i) for i in nb.index]
        config["Neuronpedia"] = st.column_config.LinkColumn(display_text="open")
    st.dataframe(table, hide_index=True, column_config=config, key=f"table_{target}")
    key = f"go_{target}_{name}_{feature}_{directions}_{k}"
    st.pills(
        f"Open a neighbour in {target}",
        [int(i) for i in nb.index],
        key=key,
        on_change=on_pick,
        args=(target, key),
    )
