"""Issue 11's pages through AppTest: Families (deep links, controls, the way to Neighbours and
back), Geometry (frame and absorption), and the rotation null on the Similarity page.

The toy demo (SAE_DEMO=toy): numbers shown are the backend's functions called directly (each
tested against float64 in its own module), and the planted structure is checked in float64
here too (toy-b keeps half of toy-a's directions, perturbed: those are stable).
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs

import numpy as np
import pytest

from dashboard.charts import family_tree
from dashboard.tables import absorption_table, chain_table, frame_row
from sae_backend import load
from sae_backend.demo import demo_sources, toy_matrices
from sae_backend.geometry.absorption import absorption
from sae_backend.geometry.families import families
from sae_backend.geometry.frame import frame
from sae_backend.geometry.rotation import rotation_null
from tests.background_support import settle
from tests.factories import unit_rows
from tests.test_app import app, ok, select_points

FAMILIES, GEOMETRY = "pages/5_Families.py", "pages/6_Geometry.py"
TOY = ("toy-a", "toy-b", "toy-a-seed2")


@pytest.fixture(autouse=True)
def toy_demo(monkeypatch):
    monkeypatch.setenv("SAE_DEMO", "toy")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The toy demo's dictionaries as the backend loads them, and float64 unit decoders."""
    mp = pytest.MonkeyPatch()
    mp.setenv("SAE_DEMO", "toy")
    mp.setenv("SAE_CACHE_DIR", str(tmp_path_factory.mktemp("toy")))
    dicts = {n: load(p) for n, p in demo_sources().items()}
    mp.undo()
    dec = {n: unit_rows(m["decoder"])[0] for n, m in toy_matrices().items()}
    alive = {n: m["density"] > 0 for n, m in toy_matrices().items()}
    return dicts, dec, alive


def counts_rows(at):
    return at.dataframe[0].value.set_index("level")


def query(at) -> dict[str, str]:
    return dict(at.query_params)


# --- Families -----------------------------------------------------------------------------
def test_families_opens_on_the_toy_ladder_with_the_backend_numbers(toy):
    dicts, dec, alive = toy
    at = app(FAMILIES)
    ok(at)
    fam = families([dicts[n] for n in TOY], tau=0.5, mode="tree")
    f0 = int(fam.levels[0].parent_index[np.argmax(fam.levels[0].n_children)])
    assert query(at) == {"ladder": "toy-a,toy-b,toy-a-seed2", "dict": "toy-a",
                         "feature": str(f0), "tau": "0.5", "mode": "tree"}  # fmt: skip
    # one width: the backend's warnings, naming dictionaries, not their paths
    assert [w.value for w in at.warning] == [
        "toy-b (1024 features) is not wider than toy-a (1024): order the ladder narrowest first",
        "toy-a-seed2 (1024 features) is not wider than toy-b (1024): order the ladder narrowest "
        "first",
    ]
    table = counts_rows(at)
    assert list(table.index) == ["toy-a → toy-b", "toy-b → toy-a-seed2"]
    for c, (_, row) in zip(fam.counts(), table.iterrows(), strict=True):
        assert [row[k] for k in ("vanished", "stable", "split", "novel", "edges")] == [
            c.vanished, c.stable, c.split, c.novel, c.edges
        ]  # fmt: skip
    # float64, planted: each alive toy-b row's nearest alive toy-a row, kept at >= 0.5
    ia, ib = np.flatnonzero(alive["toy-a"]), np.flatnonzero(alive["toy-b"])
    s = dec["toy-b"][ib] @ dec["toy-a"][ia].T
    kept = s.max(axis=1) >= 0.5
    children = np.bincount(np.argmax(s, axis=1)[kept], minlength=len(ia))
    row = table.loc["toy-a → toy-b"]
    assert row["stable"] == (children == 1).sum() and row["split"] == (children >= 2).sum()
    assert row["novel"] == (~kept).sum() and row["vanished"] == (children == 0).sum()
    assert 480 <= row["stable"] + row["split"] <= 512  # the 512 shared directions, mostly
    # the focused feature's family: the backend's chain, as a table
    assert at.subheader[1].value == f"Family of toy-a · feature {f0}"
    members = at.dataframe[1].value
    expected = chain_table(fam, fam.chain(0, f0), TOY)
    assert list(members["feature"]) == list(expected["feature"])
    assert list(members["children"]) == list(expected["children"])
    assert at.get("plotly_chart")  # counts and the family's tree


def test_families_deep_link_with_dag_and_tau_shows_that_family(toy):
    dicts, _, _ = toy
    fam = families([dicts["toy-b"], dicts["toy-a"]], tau=0.3, mode="dag")
    f = int(fam.levels[0].parent_index[np.argmax(fam.levels[0].n_children)])
    at = app(FAMILIES, ladder="toy-b,toy-a", dict="toy-b", feature=str(f), tau="0.3", mode="dag")
    ok(at)
    assert at.subheader[1].value == f"Family of toy-b · feature {f}"
    c = fam.counts()[0]
    row = counts_rows(at).loc["toy-b → toy-a"]
    assert [row["split"], row["edges"], row["novel"]] == [c.split, c.edges, c.novel]
    assert c.edges > len(fam.levels[0].child_index) - c.novel  # several parents per child
    members = at.dataframe[1].value
    assert list(members["feature"]) == [n[1] for n in fam.chain(0, f).nodes]
    assert at.slider(key="fam_tau").value == 0.3 and at.radio(key="fam_mode").value == "dag"
    assert at.multiselect(key="fam_ladder").value == ["toy-b", "toy-a"]


def test_families_controls_and_pills_rewrite_the_url(toy):
    dicts, _, _ = toy
    at = app(FAMILIES, ladder="toy-a,toy-b", dict="toy-a", feature="5")
    ok(at)
    settle(at.slider(key="fam_tau").set_value(0.8).run())
    ok(at)
    assert query(at) == {"ladder": "toy-a,toy-b", "dict": "toy-a", "feature": "5",
                         "tau": "0.8", "mode": "tree"}  # fmt: skip
    fam = families([dicts["toy-a"], dicts["toy-b"]], tau=0.8)
    assert counts_rows(at).loc["toy-a → toy-b", "stable"] == fam.counts()[0].stable
    settle(at.radio(key="fam_mode").set_value("dag").run())
    assert query(at)["mode"] == "dag"
    # a member of the family, by its pill: feature 5's child in toy-b
    chain = families([dicts["toy-a"], dicts["toy-b"]], tau=0.8, mode="dag").chain(0, 5)
    child = next(f for i, f in chain.nodes if i == 1)
    settle(at.pills[0].set_value(f"toy-b #{child}").run())
    ok(at)
    assert query(at)["dict"] == "toy-b" and query(at)["feature"] == str(child)
    assert at.subheader[1].value == f"Family of toy-b · feature {child}"
    # the ladder: adding a dictionary keeps the focus, the order is the order chosen
    settle(at.multiselect(key="fam_ladder").select("toy-a-seed2").run())
    ok(at)
    assert query(at)["ladder"] == "toy-a,toy-b,toy-a-seed2" and query(at)["dict"] == "toy-b"
    # one dictionary is not a ladder: a hint, no error
    settle(at.multiselect(key="fam_ladder").unselect("toy-b").unselect("toy-a-seed2").run())
    assert not at.exception and not at.error
    assert any("at least two" in i.value for i in at.info)


def test_families_click_on_a_member_of_the_tree_focuses_it(toy):
    dicts, _, _ = toy
    at = app(FAMILIES, ladder="toy-a,toy-b,toy-a-seed2", dict="toy-b", feature="984")
    ok(at)
    fam = families([dicts[n] for n in TOY])
    chain = fam.chain(1, 984)
    tree = family_tree(fam, chain, TOY)
    # the member the browser would report for a click: the first one in the widest column
    curve, point = next((c, p) for c, m in enumerate(tree.members) for p, n in enumerate(m or ())
                        if n[0] == 2)  # fmt: skip
    target = tree.member(curve, point)
    key = next(e.key for e in at.get("plotly_chart") if e.key.startswith("fam_tree_"))
    at = select_points(at, key, [(curve, point)])
    ok(at)
    assert query(at)["dict"] == "toy-a-seed2" and query(at)["feature"] == str(target[1])
    assert at.subheader[1].value == f"Family of toy-a-seed2 · feature {target[1]}"
    # a click on an edge (no member) changes nothing
    key = next(e.key for e in at.get("plotly_chart") if e.key.startswith("fam_tree_"))
    at = select_points(at, key, [(0, 3)])
    ok(at)
    assert query(at)["feature"] == str(target[1])


def test_families_links_to_neighbours_and_neighbours_links_back(toy):
    at = app(FAMILIES, ladder="toy-a,toy-b", dict="toy-b", feature="17", tau="0.6")
    ok(at)
    main = [p.proto for p in at.main.get("page_link")]
    to_nb = next(p for p in main if p.page == "Neighbours")
    assert to_nb.label == "Open toy-b feature 17 on Neighbours"
    assert parse_qs(to_nb.query_string) == {"dict": ["toy-b"], "feature": ["17"]}
    # Neighbours, in the same session (as after the click): the way back to this ladder
    at.switch_page("pages/2_Neighbours.py")
    at.query_params.clear()
    at.query_params.update({"dict": "toy-b", "feature": "17"})
    settle(at.run())
    ok(at)
    back = next(p.proto for p in at.main.get("page_link") if p.proto.page == "Families")
    assert back.label == "Families of this feature (toy-a → toy-b)"
    assert parse_qs(back.query_string) == {"ladder": ["toy-a,toy-b"], "dict": ["toy-b"],
                                           "feature": ["17"], "tau": ["0.6"], "mode": ["tree"]}  # fmt: skip
    # a fresh session (a new tab) offers the default ladder instead
    fresh = app("pages/2_Neighbours.py", dict="toy-a-seed2", feature="3")
    ok(fresh)
    back = next(p.proto for p in fresh.main.get("page_link") if p.proto.page == "Families")
    assert parse_qs(back.query_string)["ladder"] == ["toy-a,toy-b,toy-a-seed2"]
    # a dead feature takes no part in families: no link
    dead = int(np.flatnonzero(toy[2]["toy-a"] == 0)[0])
    at = app("pages/2_Neighbours.py", dict="toy-a", feature=str(dead))
    ok(at)
    assert not [p for p in at.main.get("page_link") if p.proto.page == "Families"]


@pytest.mark.parametrize(
    "link, message",
    [
        ({"ladder": "toy-a,nope,toy-b"}, "The link's ladder names nope, not loaded here"),
        ({"ladder": "toy-a,toy-b", "tau": "2"}, "tau='2': must be a number in (0, 1]"),
        ({"ladder": "toy-a,toy-b", "mode": "forest"}, "mode='forest'"),
        ({"ladder": "toy-a,toy-b", "dict": "toy-a", "feature": "DEAD"}, "is not an alive feature"),
        ({"ladder": "toy-a,toy-b", "dict": "toy-a", "feature": "99999"}, "is not an alive feature"),
    ],
)
def test_families_bad_links_give_one_error_and_keep_the_rest(toy, link, message):
    dead = str(int(np.flatnonzero(toy[2]["toy-a"] == 0)[0]))
    at = app(FAMILIES, **{k: (dead if v == "DEAD" else v) for k, v in link.items()})
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.error) == 1 and message in at.error[0].value, [e.value for e in at.error]
    assert at.subheader[0].value == "Labels per level"  # the counts are still shown


# --- Geometry -----------------------------------------------------------------------------
def test_geometry_shows_the_backend_frame_and_absorption(toy):
    dicts, _, _ = toy
    at = app(GEOMETRY, dict="toy-b")
    ok(at)
    assert query(at) == {"dict": "toy-b", "k": "1"}
    fr = frame(dicts["toy-b"])
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["mutual coherence"] == f"{fr.coherence:.3f}"
    assert metrics["frame potential"] == f"{fr.frame_potential:,.0f}"
    assert metrics["effective rank"] == f"{fr.effective_rank:.1f}"
    assert metrics["stable rank"] == f"{fr.stable_rank:.1f}"
    assert metrics["capacity sum"] == f"{fr.capacity_sum:.1f}"
    assert any(f"Welch bound {fr.welch_bound:.4f}" in c.value for c in at.caption)
    # the absorption table: the backend's rows, most negative signature first
    table = at.dataframe[0].value
    expected = absorption_table(absorption(dicts["toy-b"], k=1), "toy-b")
    assert list(table["feature"]) == list(expected["feature"])
    np.testing.assert_array_equal(table["partner"], expected["partner"])
    np.testing.assert_array_equal(table["cos(enc, dec partner)"], expected["cos(enc, dec partner)"])
    assert (np.diff(table["cos(enc, dec partner)"]) >= 0).all()
    # every loaded dictionary's frame, one row each
    summary = at.dataframe[1].value.set_index("dictionary")
    for name in TOY:
        want = frame_row(frame(dicts[name]), name)
        assert summary.loc[name, "coherence"] == pytest.approx(want["coherence"], abs=0)
        assert summary.loc[name, "effective rank"] == want["effective rank"]
    # k partners per feature: the URL follows, the table has k rows per feature
    settle(at.number_input(key="geo_k").set_value(3).run())
    ok(at)
    assert query(at)["k"] == "3"
    assert len(at.dataframe[0].value) == 3 * dicts["toy-b"].n_alive
    # another dictionary from the selectbox
    settle(at.selectbox(key="geo_dict").set_value("toy-a").run())
    ok(at)
    assert query(at)["dict"] == "toy-a"
    assert at.subheader[0].value == "Frame of toy-a"


def test_geometry_bad_links_give_one_error():
    at = app(GEOMETRY, dict="nope", k="3")
    assert not at.exception and len(at.error) == 1 and "nope" in at.error[0].value
    assert at.subheader[0].value == "Frame of toy-a"
    at = app(GEOMETRY, dict="toy-b", k="0")
    assert not at.exception and len(at.error) == 1 and "k='0'" in at.error[0].value


# --- The rotation null on Similarity --------------------------------------------------------
def test_similarity_rotation_null_equals_the_backend(toy):
    dicts, _, _ = toy
    at = app("pages/1_Similarity.py")
    ok(at)
    table = at.dataframe[0].value.set_index("comparison")
    for a, b in (("toy-a", "toy-b"), ("toy-a", "toy-a-seed2")):
        want = float(rotation_null(dicts[a], dicts[b]).mean())
        assert table.loc[f"{a} → {b}", "rotation null mean"] == pytest.approx(want, abs=1e-7)
        # random directions give no alignment: near the isotropic null, far below the MMCS
        assert abs(want - table.loc[f"{a} → {b}", "null mean"]) < 0.02
        assert table.loc[f"{a} → {b}", "MMCS"] > want + 0.2
    assert np.isnan(table.loc["within toy-a", "rotation null mean"])  # none for within A
    traces = [t.get("name") for t in json.loads(at.get("plotly_chart")[0].proto.spec)["data"]]
    assert "rotation null for toy-a → toy-b" in traces
    assert "rotation null for within toy-a" not in traces
    settle(at.checkbox[1].uncheck().run())  # the rotation null off: no column
    ok(at)
    assert "rotation null mean" not in at.dataframe[0].value.columns


# --- The real demo: the manifest's ladder -------------------------------------------------
def test_families_on_the_real_demo_opens_on_the_manifest_ladder(monkeypatch):
    from dashboard import links
    from sae_backend.demo import demo_manifest

    monkeypatch.delenv("SAE_DEMO", raising=False)
    saes = demo_manifest()["saes"]
    # a manifest `ladder` (scripts/build_demo.py writes one): the page opens on it
    monkeypatch.setattr(links, "manifest_ladder", lambda: ["x2-s1", "x4-s0"])
    at = app(FAMILIES)
    ok(at)
    assert query(at)["ladder"] == "x2-s1,x4-s0"
    assert list(counts_rows(at).index) == ["x2-s1 → x4-s0"] and not at.warning
    # without one: the first demo SAE of each width, narrowest first
    monkeypatch.setattr(links, "manifest_ladder", lambda: [])
    at = app(FAMILIES)
    ok(at)
    first = {}
    for name, entry in saes.items():
        first.setdefault(entry["spec"]["ratio"], name)
    assert query(at)["ladder"] == ",".join(first[r] for r in sorted(first))
