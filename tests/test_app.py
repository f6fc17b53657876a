"""The dashboard's pages through streamlit.testing's AppTest (no browser, no network).

Numbers shown are checked against float64 numpy references computed from the toy demo's
generator (`sae_backend.demo.toy_matrices`), independently of the backend's top-k code; so
these tests open the app on the toy demo (SAE_DEMO=toy). The real bundled demo's pages are
tested in tests/test_demo.py.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from streamlit.proto.WidgetStates_pb2 import WidgetState
from streamlit.testing.v1 import AppTest

from dashboard import store
from sae_backend import load
from sae_backend.demo import demo_sources, toy_matrices
from sae_backend.projection import umap_embedding
from tests.background_support import settle
from tests.factories import e2e_config, planted, unit_rows, write_e2e_folder, write_saelens
from tests.support import wandb_client_env

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["app.py", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "pages").glob("*.py"))]
TIMEOUT = 60


@pytest.fixture(autouse=True)
def toy_demo(monkeypatch):
    monkeypatch.setenv("SAE_DEMO", "toy")


def app(path: str, **query: str) -> AppTest:
    """`path` as the app serves it: app.py is the main script (the sidebar's page links are
    relative to it), the page file the one shown, as after following a link to it."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    if path != "app.py":
        at.switch_page(path)
    for key, value in query.items():
        at.query_params[key] = value
    return settle(at.run())


def ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


@pytest.fixture(scope="module")
def ref():
    return toy_reference()


def toy_reference() -> dict[str, dict[str, np.ndarray]]:
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


def test_sidebar_links_every_page_and_names_the_home_page():
    at = app("pages/1_Similarity.py")
    ok(at)
    links = [(link.proto.label, link.proto.page) for link in at.sidebar.get("page_link")]
    assert links == [("Dictionaries", ""), ("Similarity", "Similarity"),
                     ("Neighbours", "Neighbours"), ("UMAP", "UMAP"), ("Families", "Families"),
                     ("Geometry", "Geometry"), ("Status", "Status")]  # fmt: skip
    assert [m.value for m in at.sidebar.markdown][:3] == [
        "- **toy-a** · `bundled demo`", "- **toy-b** · `bundled demo`",
        "- **toy-a-seed2** · `bundled demo`",
    ]  # fmt: skip


def test_rename_and_add_share_one_name_rule(ref, tmp_path):
    at = app("app.py")
    taken = "the name 'toy-b' is taken; remove it first or choose another"
    bad = (
        "name 'no spaces': use 1-40 letters, digits, '.', '_' or '-', starting with a letter "
        "or digit"
    )
    for new_name, message in (("toy-b", taken), ("no spaces", bad)):
        at.text_input(key="new_name").input(new_name)
        at = settle(button(at, "Rename").click().run())
        assert not at.exception and [e.value for e in at.error] == [message]
    folder = write_saelens(
        tmp_path / "sae", np.random.default_rng(2).standard_normal((20, 64)), None
    )
    for new_name, message in (("toy-b", taken), ("no spaces", bad)):
        at = add_by_uri(at, str(folder), new_name)
        assert not at.exception and [e.value for e in at.error] == [message]
    assert list(at.dataframe[0].value["name"]) == ["toy-a", "toy-b", "toy-a-seed2"]
    # a good new name keeps the dictionary, its place and its numbers
    at.text_input(key="new_name").input("mine")
    at = settle(button(at, "Rename").click().run())
    ok(at)
    table = at.dataframe[0].value.set_index("name")
    assert list(table.index) == ["mine", "toy-b", "toy-a-seed2"]
    assert table.loc["mine", "within MMCS"] == pytest.approx(max_cos(ref, "toy-a").mean(), abs=1e-5)


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
    settle(at.radio[0].set_value("encoder").run())  # encoder directions
    settle(at.radio[1].set_value("faceted").run())
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
    settle(at.pills[1].set_value(target).run())
    ok(at)
    assert dict(at.query_params) == {"dict": "toy-a", "feature": str(target)}
    assert at.subheader[0].value == f"toy-a · feature {target}"
    alive_a = np.flatnonzero(ref["toy-a"]["alive"])
    settle(at.button[1].click().run())  # next alive feature
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
    settle(at.button[0].click().run())
    assert not at.exception
    assert len(at.error) == 1 and expected in at.error[0].value.lower(), at.error[0].value
    assert len(at.dataframe[0].value) == 3  # nothing half-added


def test_adding_a_mismatched_dictionary_then_comparing_gives_an_error(tmp_path):
    rng = np.random.default_rng(3)
    small = write_saelens(tmp_path / "small", rng.standard_normal((40, 8)), None)
    at = app("app.py")
    at.text_input[0].input(str(small))
    at.text_input[1].input("small8")
    settle(at.button[0].click().run())
    ok(at)
    assert "small8" in list(at.dataframe[0].value["name"])
    # Compare toy-a with it: a d_model mismatch is one st.error, the rest still renders.
    settle(at.switch_page("pages/1_Similarity.py").run())
    settle(at.multiselect[0].set_value(["toy-a → small8", "toy-a → toy-b"]).run())
    assert not at.exception
    assert any("d_model" in e.value for e in at.error)
    assert list(at.dataframe[0].value["comparison"]) == ["toy-a → toy-b"]


def button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def upload_and_load(at: AppTest, files, name: str, orientation: str = "") -> AppTest:
    at.file_uploader[0].set_value(files).run()  # the Load button appears once files are there
    at.text_input(key="upload_name").input(name)
    at.selectbox(key="upload_orientation").set_value(orientation)
    return settle(button(at, "Load upload").click().run())


def test_upload_saelens_folder_and_plain_matrix_with_orientation(tmp_path):
    rng = np.random.default_rng(5)
    dec = rng.standard_normal((50, 64))
    dec[:10] = dec[10:20] * 3.0  # planted duplicates (scaled): within-MMCS sees them
    folder = write_saelens(tmp_path / "sae", dec, rng.standard_normal((50, 64)))
    files = [(f.name, f.read_bytes(), "application/octet-stream") for f in folder.iterdir()]
    at = upload_and_load(app("app.py"), files, "up1")
    ok(at)
    table = at.dataframe[0].value.set_index("name")
    assert table.loc["up1", ["features", "d_model", "format"]].tolist() == [50, 64, "saelens"]
    unit = unit_rows(dec)[0]
    s = unit @ unit.T
    np.fill_diagonal(s, -np.inf)
    assert table.loc["up1", "within MMCS"] == pytest.approx(s.max(1).mean(), abs=1e-5)
    # A plain [d, n] matrix needs its orientation: without one, one error and nothing added.
    buf = io.BytesIO()
    np.save(buf, dec.T.astype(np.float32))
    plain = ("w.npy", buf.getvalue(), "application/octet-stream")
    at = upload_and_load(at, plain, "plain")
    assert not at.exception
    assert len(at.error) == 1 and "orientation" in at.error[0].value
    assert "plain" not in list(at.dataframe[0].value["name"])
    at = upload_and_load(at, plain, "plain", "columns")
    ok(at)
    table = at.dataframe[0].value.set_index("name")
    assert table.loc["plain", ["features", "d_model"]].tolist() == [50, 64]
    assert table.loc["plain", "within MMCS"] == pytest.approx(s.max(1).mean(), abs=1e-5)


def select_points(at: AppTest, key: str, points: list[tuple[int, int]], **fields) -> AppTest:
    """Rerun `at` as if the browser had selected (curve, point index) pairs in the plotly chart
    `key` (`fields`: more keys of every point, e.g. a heatmap cell's x and y). AppTest has no
    plotly element, so this sends the selection the way the frontend does: as the chart's
    JSON widget state (uses AppTest's private _tree/_run)."""
    chart = next(e for e in at.get("plotly_chart") if e.key == key)
    states = at._tree.get_widget_states()
    selection = {
        "points": [
            {"curve_number": c, "point_index": i, "point_number": i, **fields} for c, i in points
        ],
        "point_indices": [i for _, i in points],
        "box": [],
        "lasso": [],
    }
    states.widgets.append(
        WidgetState(id=chart.proto.id, string_value=json.dumps({"selection": selection}))
    )
    return settle(at._run(states))


def test_similarity_heatmap_cell_opens_its_comparison(ref):
    at = app("pages/1_Similarity.py")
    ok(at)
    assert "toy-b → toy-a-seed2" not in at.multiselect[0].value
    at = select_points(at, "heat", [(0, 0)], x="toy-a-seed2", y="toy-b")  # row A, column B
    ok(at)
    assert at.multiselect[0].value[-1] == "toy-b → toy-a-seed2"
    table = at.dataframe[0].value.set_index("comparison")
    mc = max_cos(ref, "toy-b", "toy-a-seed2")
    assert table.loc["toy-b → toy-a-seed2", "MMCS"] == pytest.approx(mc.mean(), abs=1e-5)
    at = select_points(at, "heat", [(0, 0)], x="toy-b", y="toy-b")  # the diagonal: within
    ok(at)
    assert at.multiselect[0].value[-2:] == ["toy-b → toy-a-seed2", "within toy-b"]
    table = at.dataframe[0].value.set_index("comparison")
    assert table.loc["within toy-b", "MMCS"] == pytest.approx(
        max_cos(ref, "toy-b").mean(), abs=1e-5
    )


def test_umap_point_and_region_selection(ref, monkeypatch):
    # Above the limit the embedding waits for a button, and stays shown after the press.
    monkeypatch.setattr(store, "UMAP_AUTO_LIMIT", 1000)
    # Through the home page, as in the app: the page's link to Neighbours is relative to it.
    at = settle(app("app.py").switch_page("pages/3_UMAP.py").run())
    ok(at)
    assert not at.get("plotly_chart") and "2,024 points" in at.info[0].value
    at = settle(button(at, "Compute the embedding of 2,024 points").click().run())
    ok(at)
    assert at.get("plotly_chart")
    # The page's embedding (default parameters, toy-a and toy-b), from the backend's disk cache.
    demo = demo_sources()
    dicts = [load(demo["toy-a"]), load(demo["toy-b"])]
    emb = umap_embedding(dicts)
    traces = [np.flatnonzero(emb.dict_index == k) for k in range(2)]  # one trace per dictionary
    np.testing.assert_array_equal(emb.feature[traces[0]], dicts[0].alive_index)

    # One point (the 7th of toy-b's trace): that feature, and its float64 neighbours within toy-b.
    at = select_points(at, "umap", [(1, 7)])
    ok(at)
    feature = int(emb.feature[traces[1][7]])
    assert at.subheader[0].value == f"toy-b · feature {feature}"
    r = ref["toy-b"]
    cand = np.flatnonzero(r["alive"])
    cand = cand[cand != feature]
    s = r["dec"][cand] @ r["dec"][feature]
    order = np.argsort(-s, kind="stable")[:5]
    table = at.dataframe[0].value
    np.testing.assert_array_equal(table["neighbour in toy-b"].to_numpy(), cand[order])
    np.testing.assert_allclose(table["cosine"].to_numpy(), s[order], atol=1e-5)

    # A region: points of both traces -> one table per dictionary with the embedding's X, Y.
    picks = [(0, 3), (0, 40), (1, 7), (1, 2), (0, 3)]  # a repeat counts once
    at = select_points(at, "umap", picks)
    ok(at)
    assert at.subheader[0].value == "4 selected features"
    for k, part in enumerate(at.dataframe[:2]):
        pos = np.sort([traces[k][i] for c, i in set(picks) if c == k])
        got = part.value
        np.testing.assert_array_equal(got["EmbeddingIndex"].to_numpy(), emb.feature[pos])
        np.testing.assert_allclose(got["X"].to_numpy(), emb.xy[pos, 0])
        np.testing.assert_allclose(got["Y"].to_numpy(), emb.xy[pos, 1])


WANDB_KEY = "k" * 40  # the client wants 40+ [A-Za-z0-9_] characters
FAKE_WANDB = ROOT.parent / "shared" / "testing"  # the team's loopback W&B backend


@pytest.fixture
def fake_wandb(tmp_path, monkeypatch):
    """The real wandb client against the loopback fake: no key, fast failures; yields the
    fake's data folder (ROOT/ENTITY/PROJECT/RUN_ID/)."""
    if not (FAKE_WANDB / "fake_wandb.py").is_file():
        pytest.skip(f"fake W&B backend not found in {FAKE_WANDB}")
    pytest.importorskip("wandb")
    monkeypatch.syspath_prepend(str(FAKE_WANDB))
    from fake_wandb import FakeWandbServer

    home = tmp_path / "wandb-home"
    env = wandb_client_env(home)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)  # restored after the test
    runs = tmp_path / "runs"
    p = planted(d=6, seed=0)
    pos = "blocks.6.hook_resid_pre"
    folder = write_e2e_folder(runs / "sparsify" / "gpt2" / "run6", {400000: {pos: (p.decoder, p.encoder)}},
                              config=e2e_config([pos]))  # fmt: skip
    (folder / "_run.json").write_text(json.dumps({"name": "e2e", "config": e2e_config([pos])}))
    with FakeWandbServer(str(runs), api_key=WANDB_KEY, ttl=300) as srv:
        monkeypatch.setenv("WANDB_BASE_URL", srv.base_url)
        yield p


def add_by_uri(at: AppTest, uri: str, name: str) -> AppTest:
    at.text_input[0].input(uri)
    at.text_input[1].input(name)
    return settle(at.button[0].click().run())


def test_wandb_without_a_key_gives_one_error(fake_wandb):
    at = add_by_uri(app("app.py"), "wandb:sparsify/gpt2/run6", "e2e")
    assert not at.exception
    assert len(at.error) == 1 and "no W&B API key" in at.error[0].value, at.error
    assert list(at.dataframe[0].value["name"]) == ["toy-a", "toy-b", "toy-a-seed2"]


def test_wandb_key_from_streamlit_secrets_loads_and_is_never_shown(fake_wandb):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.secrets["WANDB_API_KEY"] = WANDB_KEY
    at = add_by_uri(settle(at.run()), "wandb:sparsify/gpt2/run6", "e2e")
    ok(at)
    table = at.dataframe[0].value.set_index("name")
    assert table.loc["e2e", ["features", "d_model", "format"]].tolist() == [
        len(fake_wandb.decoder), fake_wandb.decoder.shape[1], "e2e_sae"]  # fmt: skip
    assert os.environ["WANDB_API_KEY"] == WANDB_KEY
    shown = [str(getattr(node, "proto", "")) for node in at._tree]  # every element sent
    assert shown and not any(WANDB_KEY in text for text in shown)
    assert all(WANDB_KEY not in str(v) for v in table.to_numpy().ravel())


def test_a_neighbours_link_with_src_loads_a_dictionary_the_session_lacks(tmp_path):
    rng = np.random.default_rng(9)
    dec = rng.standard_normal((30, 64))
    folder = write_saelens(tmp_path / "shared_sae", dec, None)
    at = app("pages/2_Neighbours.py", dict="theirs", src=str(folder), feature="4")
    ok(at)
    assert "theirs · feature 4" in [h.value for h in at.subheader]
    unit = unit_rows(dec)[0]
    s = unit @ unit.T
    np.fill_diagonal(s, -np.inf)
    table = at.dataframe[0].value
    assert int(table["feature"].iloc[0]) == int(np.argmax(s[4]))
    assert at.query_params["src"] == str(folder)  # the link stays shareable


def test_umap_above_the_limit_shows_a_precomputed_embedding_without_asking(monkeypatch):
    """After `precompute` (here: the same call it makes), a new session sees the embedding at
    once, without the button that guards long computations."""
    monkeypatch.setattr(store, "UMAP_AUTO_LIMIT", 1000)
    demo = demo_sources()
    emb = umap_embedding([load(demo["toy-a"]), load(demo["toy-b"])])
    at = settle(app("app.py").switch_page("pages/3_UMAP.py").run())
    ok(at)
    assert not [b for b in at.button if b.label.startswith("Compute the embedding")]
    assert at.get("plotly_chart") and not [i for i in at.info if "points:" in i.value]
    # the page shows that embedding: a click on one point names its feature
    at = select_points(at, "umap", [(1, 7)])
    ok(at)
    toy_b = np.flatnonzero(emb.dict_index == 1)
    assert at.subheader[0].value == f"toy-b · feature {int(emb.feature[toy_b[7]])}"


LONG_SOURCE = "A" * 300 + "#x"  # longer than a file name may be, with '#': crashed parse_uri


def test_home_an_overlong_source_gives_one_error():
    at = app("app.py")
    at.text_input[0].input(LONG_SOURCE)
    settle(at.button[0].click().run())
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.error) == 1 and "\n" not in at.error[0].value, [e.value for e in at.error]


def test_a_neighbours_link_with_an_overlong_src_gives_one_error_not_a_crash():
    at = app("pages/2_Neighbours.py", dict="theirs", src=LONG_SOURCE, feature="0")
    assert not at.exception, [e.value for e in at.exception]
    assert at.error and all("\n" not in e.value for e in at.error), [e.value for e in at.error]
    assert "theirs" not in at.session_state["sae_dicts"]
