"""Links between the pages that show one feature (Neighbours, Families, Geometry), and the
ladder this session's Families page uses.

A link to Neighbours carries the dictionary's source when it is not the bundled demo
(`session.share_query`), as Neighbours' own URL does. The way back from Neighbours to Families
uses the ladder the session last looked at on the Families page (kept in session state), or
else the default ladder (`dashboard.ladder.default_ladder`), when the feature's dictionary is
on it.
"""

from __future__ import annotations

from collections.abc import Mapping

import streamlit as st

from dashboard import session
from dashboard.ladder import FamiliesState, Rung, default_ladder
from sae_backend import Dictionary, settings
from sae_backend.demo import demo_manifest, demo_sources

NEIGHBOURS = "pages/2_Neighbours.py"
FAMILIES = "pages/5_Families.py"
_LAST = "families_state"  # session_state: the Families page's last FamiliesState


def manifest_ladder() -> list[str]:
    """The real demo's ladder (demo SAE names, narrowest first) from its manifest, if it has
    one; none for the toy demo."""
    if settings.DEMO.get() == "toy":
        return []
    return [str(n) for n in demo_manifest().get("ladder", [])]


def session_default_ladder(dicts: Mapping[str, Dictionary]) -> list[str]:
    """The default ladder among this session's loaded dictionaries (`dicts`, in its order)."""
    entries = session.entries()
    rungs = [Rung(n, d.n_features, d.meta.hook, entries[n].uri) for n, d in dicts.items()]
    return default_ladder(rungs, manifest_ladder(), demo_sources())


def remember(state: FamiliesState) -> None:
    st.session_state[_LAST] = state


def families_state_for(name: str, dicts: Mapping[str, Dictionary]) -> FamiliesState | None:
    """The Families state to open for a feature of `name`: the session's last ladder if it holds
    `name` (same tau and mode), else the default ladder if it does; None if neither does."""
    last: FamiliesState | None = st.session_state.get(_LAST)
    if last is not None and name in last.ladder and all(n in dicts for n in last.ladder):
        return last
    ladder = session_default_ladder(dicts)
    return FamiliesState(tuple(ladder)) if name in ladder and len(ladder) >= 2 else None


def to_neighbours(name: str, feature: int, label: str | None = None) -> None:
    """A same-tab link to a feature's Neighbours page."""
    st.page_link(
        NEIGHBOURS,
        label=label or f"Open {name} feature {feature} on Neighbours",
        icon=":material/hub:",
        query_params={"dict": name, "feature": str(int(feature)), **session.share_query(name)},
    )


def to_families(name: str, feature: int, dicts: Mapping[str, Dictionary]) -> None:
    """'Families of this feature' (a same-tab link), when `name` is on a ladder and the feature
    is alive (dead features take no part in families); nothing otherwise."""
    state = families_state_for(name, dicts)
    if state is None or not dicts[name].alive[feature]:
        return
    query = {**state.focus(name, int(feature)).to_query(), **session.share_query(name)}
    st.page_link(
        FAMILIES,
        label=f"Families of this feature ({' → '.join(state.ladder)})",
        icon=":material/account_tree:",
        query_params=query,
    )
