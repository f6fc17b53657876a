"""dashboard/ladder.py: which ladder the Families page opens on, and its URL round trip."""

from __future__ import annotations

import pytest

from dashboard.ladder import FamiliesState, Rung, default_feature, default_ladder, parse_query
from sae_backend.geometry.families import families
from tests.ladders import planted_ladder

HOOK, OTHER = "blocks.15.hook_resid_pre", "blocks.6.hook_resid_pre"
DEMO = {n: f"/demo/{n}" for n in ("x1-s0", "x2-s0", "x2-s1", "x4-s0", "x8-s0")}
MANIFEST = ["x1-s0", "x2-s0", "x4-s0", "x8-s0"]
WIDTH = {"x1": 576, "x2": 1152, "x4": 2304, "x8": 4608}


def demo_rung(name: str, as_name: str | None = None) -> Rung:
    return Rung(as_name or name, WIDTH[name[:2]], HOOK, DEMO[name])


def test_the_manifest_ladder_wins_and_finds_renamed_demo_saes_by_source():
    rungs = [demo_rung("x2-s1"), demo_rung("x8-s0"), demo_rung("x2-s0"),
             demo_rung("x4-s0", "mine"), demo_rung("x1-s0")]  # fmt: skip
    assert default_ladder(rungs, MANIFEST, DEMO) == ["x1-s0", "x2-s0", "mine", "x8-s0"]
    # two of the manifest's SAEs are enough; names the session lacks are skipped
    two = [demo_rung("x4-s0"), demo_rung("x2-s0"), demo_rung("x2-s1")]
    assert default_ladder(two, MANIFEST, DEMO) == ["x2-s0", "x4-s0"]


def test_without_a_usable_manifest_one_dictionary_per_width_at_the_widest_hook():
    # today's demo: no ladder in the manifest, three x2 and one x4 at one hook
    rungs = [demo_rung("x2-s0"), demo_rung("x2-s1"), demo_rung("x4-s0")]
    assert default_ladder(rungs, [], DEMO) == ["x2-s0", "x4-s0"]
    # only one manifest SAE loaded: not a ladder, so the rule by width applies
    assert default_ladder([demo_rung("x8-s0"), demo_rung("x2-s1")], MANIFEST, DEMO) == [
        "x2-s1", "x8-s0"
    ]  # fmt: skip
    # the hook with the most distinct widths is chosen, not the one with most dictionaries
    rungs = [Rung("a", 100, OTHER, "a"), Rung("b", 100, OTHER, "b"), Rung("c", 100, OTHER, "c"),
             Rung("w2", 800, HOOK, "w2"), Rung("w1", 400, HOOK, "w1")]  # fmt: skip
    assert default_ladder(rungs) == ["w1", "w2"]


def test_one_width_only_gives_every_dictionary_at_that_hook_in_session_order():
    toy = [Rung(n, 1024, "blocks.0.hook_resid_pre", f"/toy/{n}")
           for n in ("toy-a", "toy-b", "toy-a-seed2")]  # fmt: skip
    assert default_ladder(toy, MANIFEST, DEMO) == ["toy-a", "toy-b", "toy-a-seed2"]
    assert default_ladder([]) == []


def test_a_state_survives_its_url():
    loaded = ["a", "b", "c"]
    for state in (
        FamiliesState(("a", "c"), "c", 17, 0.35, "dag"),
        FamiliesState(("b", "a", "c"), "a", None, 1.0, "tree"),
        FamiliesState(("a", "b")),
    ):
        query = state.to_query()
        assert "," in query["ladder"] or len(state.ladder) == 1
        assert parse_query(query, loaded, ["b", "c"]) == (state, [])
    assert FamiliesState(("a", "b"), "b", 3, 0.5).to_query() == {
        "ladder": "a,b", "dict": "b", "feature": "3", "tau": "0.5", "mode": "tree"
    }  # fmt: skip


def test_no_ladder_in_the_url_gives_the_default():
    state, problems = parse_query({}, ["a", "b"], ["b", "a"])
    assert state == FamiliesState(("b", "a")) and problems == []


@pytest.mark.parametrize(
    "query, expected, problem",
    [
        ({"ladder": "a,zz,b,a"}, FamiliesState(("a", "b")), "names zz, not loaded here"),
        ({"ladder": "a,b", "tau": "0"}, FamiliesState(("a", "b")), "tau='0': must be a number in (0, 1]"),
        ({"ladder": "a,b", "tau": "1.5"}, FamiliesState(("a", "b")), "tau='1.5'"),
        ({"ladder": "a,b", "tau": "nan"}, FamiliesState(("a", "b")), "tau='nan'"),
        ({"ladder": "a,b", "tau": "x"}, FamiliesState(("a", "b")), "tau='x'"),
        ({"ladder": "a,b", "mode": "forest"}, FamiliesState(("a", "b")), "mode='forest': must be tree or dag"),
        ({"ladder": "a,b", "dict": "c", "feature": "3"}, FamiliesState(("a", "b")), "dict='c' is not on the ladder (a, b)"),
        ({"ladder": "a,b", "dict": "b", "feature": "x"}, FamiliesState(("a", "b"), "b"), "feature='x': not a feature index"),
    ],
)  # fmt: skip
def test_each_problem_of_a_link_is_one_line_and_the_rest_is_kept(query, expected, problem):
    state, problems = parse_query(query, ["a", "b", "c"], ["c"])
    assert state == expected
    assert len(problems) == 1 and problem in problems[0]


def test_default_feature_is_the_biggest_split_or_its_first_child():
    fam = families(planted_ladder().dictionaries(), tau=0.5, cache=False)
    # planted: A1 splits into B1, B2 (the only split at level 0); B1 into C1, C2 (level 1)
    assert default_feature(fam, 0) == 1
    assert default_feature(fam, 1) == 1
    # in the widest: a child of B1 (C1 and C2 have equal cosines in float64; float32 picks one)
    assert default_feature(fam, 2) in (1, 2)
    # at tau = 1 no A feature has a child (its best planted cosine is .995): the first alive
    none = families(planted_ladder().dictionaries(), tau=1.0, cache=False)
    assert none.counts()[0].edges == 0
    assert default_feature(none, 0) == 0
