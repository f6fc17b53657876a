"""The dashboard's pages through streamlit.testing's AppTest (no browser, no network).

Numbers shown are checked against float64 numpy references computed from the toy demo's
generator (`sae_backend.demo.toy_matrices`), independently of the backend's top-k code; so
these tests open the app on the toy demo (SAE_DEMO=toy). The real bundled demo's pages are
tested in tests/test_demo.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from sae_backend.demo import toy_matrices
from tests.factories import unit_rows, write_saelens

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["app.py", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "pages").glob("*.py"))]
TIMEOUT = 60


@pytest.fixture(autouse=True)
def toy_demo(monkeypatch):
    monkeypatch.setenv("SAE_DEMO", "toy")


def app(path: str, **query: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / path), default_timeout=TIMEOUT)
    for key, value in query.items():
        at.query_params[key] = value
    return at.run()


def ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


@pytest.fixture(scope="module")
def ref():
    """float64 unit decoders/encoders and alive masks of the toy demo."""
    out = {}
    for name, arrays in toy_matrices().items():
        out[name] = {
            "dec": unit_rows(arrays["decoder"])[0],
            "enc": unit_rows(arrays["encoder"])[0],
            "alive": arrays["density"] > 0,
            "density": arrays["density"],
        }
    return out


def max_cos(ref, a, b=None):
    """[alive of a] float64 max cosine to the alive rows of b (within a, self excluded)."""
    ra, rb = ref[a], ref[b or a]
    ia, ib = np.flatnonzero(ra["alive"]), np.flatnonzero(rb["alive"])
    s = ra["dec"][ia] @ rb["dec"][ib].T
    if b is None:
        s[np.arange(len(ia)), np.arange(len(ia))] = -np.inf
    return s.max(axis=1)


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_with_the_demo(page):
    ok(app(page))


def test_home_table_matches_float64(ref):
    at = app("app.py")
    ok(at)
    table = at.dataframe[0].value.set_index("name")
    assert list(table.index) == ["toy-a", "toy-b", "toy-a-seed2"]
    for name, r in ref.items():
        assert table.loc[name, "features"] == len(r["dec"])
        assert table.loc[name, "alive"] == r["alive"].sum()
        assert table.loc[name, "d_model"] == r["dec"].shape[1]
        assert table.loc[name, "within MMCS"] == pytest.approx(max_cos(ref, name).mean(), abs=1e-5)
    assert table.loc["toy-a", "alive"] < table.loc["toy-a", "features"]  # planted dead features


def test_similarity_numbers_match_float64(ref):
    at = app("pages/1_Similarity.py")
    ok(at)
    table = at.dataframe[0].value.set_index("comparison")
    for label, (a, b) in {
        "toy-a → toy-b": ("toy-a", "toy-b"),
        "toy-a → toy-a-seed2": ("toy-a", "toy-a-seed2"),
        "within toy-a": ("toy-a", None),
    }.items():
        mc = max_cos(ref, a, b)
        assert table.loc[label, "MMCS"] == pytest.approx(mc.mean(), abs=1e-5)
        assert table.loc[label, "> 0.9"] == pytest.approx((mc > 0.9).mean(), abs=1e-9)
    # Planted: toy-a-seed2 is a permuted copy, so the optimal matching is a bijection whose
    # mean equals MMCS; toy-b shares only half, so matching must fall below MMCS there.
    assert table.loc["toy-a → toy-a-seed2", "matched mean"] == pytest.approx(
        max_cos(ref, "toy-a", "toy-a-seed2").mean(), abs=1e-5
    )
    assert table.loc["toy-a → toy-b", "matched mean"] < table.loc["toy-a → toy-b", "MMCS"] - 0.005
    at.radio[0].set_value("encoder").run()  # encoder directions
    at.radio[1].set_value("faceted").run()
    ok(at)


def test_neighbours_deep_link_shows_the_backend_numbers(ref):
    at = app("pages/2_Neighbours.py", dict="toy-b", feature="17")
    ok(at)
    assert at.subheader[0].value == "toy-b · feature 17"
    tables = [t.value for t in at.dataframe]
    assert len(tables) == 3  # within toy-b, in toy-a, in toy-a-seed2
    q = ref["toy-b"]["dec"][17]
    for table, target, self_mode in (
        (tables[0], "toy-b", True),
        (tables[1], "toy-a", False),
        (tables[2], "toy-a-seed2", False),
    ):
        r = ref[target]
        cand = np.flatnonzero(r["alive"])
        if self_mode:
            cand = cand[cand != 17]
        s = r["dec"][cand] @ q
        order = np.argsort(-s, kind="stable")[:10]
        np.testing.assert_array_equal(table["feature"].to_numpy(), cand[order])
        np.testing.assert_allclose(table["cosine"].to_numpy(), s[order], atol=1e-5)
        enc = r["enc"][cand[order]] @ ref["toy-b"]["enc"][17]
        np.testing.assert_allclose(table["encoder cos"].to_numpy(), enc, atol=1e-5)
        np.testing.assert_allclose(table["density"].to_numpy(), r["density"][cand[order]],
                                   rtol=1e-4)  # fmt: skip
    # Clicking a neighbour in toy-a makes it the current feature and rewrites the URL.
    target = int(tables[1]["feature"].iloc[0])
    at.pills[1].set_value(target).run()
    ok(at)
    assert dict(at.query_params) == {"dict": "toy-a", "feature": str(target)}
    assert at.subheader[0].value == f"toy-a · feature {target}"
    alive_a = np.flatnonzero(ref["toy-a"]["alive"])
    at.button[1].click().run()  # next alive feature
    assert at.query_params["feature"] == str(alive_a[alive_a > target][0])


def test_neighbours_bad_links_give_one_error():
    at = app("pages/2_Neighbours.py", dict="toy-a", feature="5000")
    assert not at.exception
    assert len(at.error) == 1 and "out of range" in at.error[0].value
    at = app("pages/2_Neighbours.py", dict="nope", feature="3")
    assert not at.exception
    assert len(at.error) == 1 and "nope" in at.error[0].value
    assert at.subheader[0].value == "toy-a · feature 3"  # falls back to the first dictionary


@pytest.mark.parametrize(
    "uri, expected",
    [("/no/such/file.pt", "no such file"), ("nope:abc", "scheme"), ("BAD", "not a pytorch file")],
)
def test_home_bad_source_gives_one_error(tmp_path, uri, expected):
    if uri == "BAD":
        uri = str(tmp_path / "garbage.pt")
        Path(uri).write_bytes(b"not a checkpoint at all")
    at = app("app.py")
    at.text_input[0].input(uri)
    at.button[0].click().run()
    assert not at.exception
    assert len(at.error) == 1 and expected in at.error[0].value.lower(), at.error[0].value
    assert len(at.dataframe[0].value) == 3  # nothing half-added


def test_adding_a_mismatched_dictionary_then_comparing_gives_an_error(tmp_path):
    rng = np.random.default_rng(3)
    small = write_saelens(tmp_path / "small", rng.standard_normal((40, 8)), None)
    at = app("app.py")
    at.text_input[0].input(str(small))
    at.text_input[1].input("small8")
    at.button[0].click().run()
    ok(at)
    assert "small8" in list(at.dataframe[0].value["name"])
    # Compare toy-a with it: a d_model mismatch is one st.error, the rest still renders.
    at.switch_page("pages/1_Similarity.py").run()
    at.multiselect[0].set_value(["toy-a → small8", "toy-a → toy-b"]).run()
    assert not at.exception
    assert any("d_model" in e.value for e in at.error)
    assert list(at.dataframe[0].value["comparison"]) == ["toy-a → toy-b"]
