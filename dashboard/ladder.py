"""Which dictionaries form the Families page's ladder, and how its URL holds the page's state.

Pure (no Streamlit), so the rules are unit-tested directly (tests/test_ladder.py).

The default ladder: the demo manifest's `ladder` (names of demo SAEs, narrowest first) where
the session holds at least two of them, found by source so a renamed one still counts; else
the loaded dictionaries at one hook (the hook with the most distinct widths) ordered by width,
one per width; where that leaves fewer than two (the toy demo: three dictionaries of one
width), all dictionaries at that hook in the session's order.

The URL: `/Families?ladder=a,b,c&dict=b&feature=12&tau=0.5&mode=tree`. A link with names the
session lacks, a tau outside (0, 1] or an unknown mode is not fatal: each problem is one line
to show, and the page goes on with what is usable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from sae_backend.geometry.families import FAMILY_MODES, TAU, Families, FamilyMode

SEP = ","  # between ladder names in the URL (names cannot contain it: session.check_name)


@dataclass(frozen=True)
class Rung:
    """A loaded dictionary as the ladder needs it: its session name, width, hook and source."""

    name: str
    width: int
    hook: str | None
    uri: str


def default_ladder(
    rungs: Sequence[Rung],
    manifest_ladder: Sequence[str] = (),
    demo_uris: Mapping[str, str] | None = None,
) -> list[str]:
    """Session names of the default ladder, narrowest first (see the module docstring).

    rungs: the session's dictionaries in its order; manifest_ladder: the demo manifest's
    `ladder` (demo names); demo_uris: {demo name: source} of the bundled demo."""
    by_uri = {r.uri: r.name for r in rungs}
    demo = demo_uris or {}
    named = [by_uri[demo[n]] for n in manifest_ladder if n in demo and demo[n] in by_uri]
    if len(named) >= 2:
        return named
    groups: dict[str | None, list[Rung]] = {}
    for r in rungs:
        groups.setdefault(r.hook, []).append(r)
    if not groups:
        return []
    group = max(groups.values(), key=lambda g: (len({r.width for r in g}), len(g)))  # first wins
    first_of_width: dict[int, Rung] = {}
    for r in group:
        first_of_width.setdefault(r.width, r)
    if len(first_of_width) >= 2:
        return [first_of_width[w].name for w in sorted(first_of_width)]
    return [r.name for r in sorted(group, key=lambda r: r.width)]


@dataclass(frozen=True)
class FamiliesState:
    """What the Families page shows: the ladder (session names, narrowest first), the focused
    feature (dictionary name and index; None: the page picks one) and the edge rule."""

    ladder: tuple[str, ...]
    dictionary: str | None = None
    feature: int | None = None
    tau: float = TAU
    mode: FamilyMode = "tree"

    def to_query(self) -> dict[str, str]:
        """The URL's query parameters for this state (feature and dict only when set)."""
        query = {"ladder": SEP.join(self.ladder)}
        if self.dictionary is not None:
            query["dict"] = self.dictionary
            if self.feature is not None:
                query["feature"] = str(int(self.feature))
        return {**query, "tau": f"{self.tau:g}", "mode": self.mode}

    def focus(self, dictionary: str, feature: int | None) -> FamiliesState:
        return replace(self, dictionary=dictionary, feature=feature)


def parse_query(
    query: Mapping[str, str], loaded: Sequence[str], default: Sequence[str]
) -> tuple[FamiliesState, list[str]]:
    """The state a URL asks for, and one line per problem with it (already repaired: unknown
    names dropped, a bad tau or mode replaced by the default, a dict off the ladder unset).

    loaded: the session's names; default: the ladder when the URL names none."""
    problems: list[str] = []
    if query.get("ladder"):
        asked = [n.strip() for n in query["ladder"].split(SEP) if n.strip()]
        missing = [n for n in asked if n not in loaded]
        if missing:
            problems.append(
                f"The link's ladder names {', '.join(missing)}, not loaded here "
                f"(loaded: {', '.join(loaded)}); load them on the Dictionaries page."
            )
        ladder = tuple(dict.fromkeys(n for n in asked if n in loaded))  # once each, in order
    else:
        ladder = tuple(default)
    tau = TAU
    if query.get("tau"):
        try:
            tau = float(query["tau"])
            if not 0 < tau <= 1:
                raise ValueError
        except ValueError:
            problems.append(f"tau={query['tau']!r}: must be a number in (0, 1]; using {TAU:g}.")
            tau = TAU
    mode: FamilyMode = "tree"
    if query.get("mode"):
        if query["mode"] in FAMILY_MODES:
            mode = query["mode"]  # narrowed to FamilyMode by the membership test
        else:
            problems.append(f"mode={query['mode']!r}: must be tree or dag; using tree.")
    dictionary = query.get("dict") or None
    if dictionary is not None and dictionary not in ladder:
        problems.append(f"dict={dictionary!r} is not on the ladder ({', '.join(ladder)}).")
        dictionary = None
    feature = None
    if dictionary is not None and query.get("feature"):
        try:
            feature = int(query["feature"])
        except ValueError:
            problems.append(f"feature={query['feature']!r}: not a feature index.")
    return FamiliesState(ladder, dictionary, feature, tau, mode), problems


def default_feature(fam: Families, dictionary: int) -> int:
    """The feature the page shows when the URL names none: in all but the widest dictionary the
    feature with the most children (a split, if there is one; ties: the lowest index); in the
    widest, the first child of that feature one level down (else its first alive feature)."""
    if dictionary < len(fam.levels):
        lv = fam.levels[dictionary]
        return int(lv.parent_index[int(np.argmax(lv.n_children))])
    lv = fam.levels[-1]
    if len(lv.parent):
        kids, _ = lv.children_of(default_feature(fam, dictionary - 1))
        return int(kids[0]) if len(kids) else int(lv.child[0])
    return int(lv.child_index[0])
