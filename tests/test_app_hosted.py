"""Hosted mode through AppTest: the login gate, the source rules in the URI box, the upload
box's limits, redacted messages and the status page (no browser; see test_hosted.py for a
real server under load)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

import sae_backend.hosting as hosting
from dashboard import store, uploads
from dashboard.frame import PAGES as PAGE_LINKS
from tests.background_support import settle
from tests.factories import unit_rows, write_saelens

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["app.py", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "pages").glob("*.py"))]
PASSWORD = "correct horse battery"
TIMEOUT = 60


@pytest.fixture
def server(tmp_path, monkeypatch):
    """Settings of a hosted instance sharing data/ (one SAELens folder, one link out of it)."""
    rng = np.random.default_rng(3)
    dec = rng.standard_normal((40, 64))  # d_model of the toy demo: pages compare them
    dec[:8] = dec[8:16] * 2.0  # planted scaled duplicates
    data, secret = tmp_path / "data", tmp_path / "secret"
    write_saelens(data / "good", dec, rng.standard_normal((40, 64)))
    write_saelens(secret / "private", dec, None)
    (data / "escape").symlink_to(secret / "private")
    settings = tmp_path / "hosted.toml"
    settings.write_text(
        f'data_dirs = ["{data}"]\nremote = ["hf"]\nupload_limit_mb = 1\n'
        f'upload_dir = "{tmp_path / "uploads"}"\nmemory_budget_mb = 64\n'
    )
    monkeypatch.setenv("SAE_HOSTED", str(settings))
    monkeypatch.setenv("SAE_DEMO", "toy")
    store.shared_memory.clear()  # a fresh store with this server's budget
    yield {"settings": settings, "data": data, "secret": secret, "dec": dec, "root": tmp_path}
    store.shared_memory.clear()


def app(path: str = "app.py", password: str | None = PASSWORD, **query: str) -> AppTest:
    """`path` as a new visitor opens it (app.py is the main script, as in the app)."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    if path != "app.py":
        at.switch_page(path)
    if password is not None:
        at.secrets["SAE_PASSWORD"] = password
    at.query_params.update(query)
    return settle(at.run())


def log_in(at: AppTest, password: str = PASSWORD) -> AppTest:
    at.text_input[0].input(password)
    return settle(at.button[0].click().run())


def errors(at: AppTest) -> list[str]:
    assert not at.exception, [e.value for e in at.exception]
    return [e.value for e in at.error]


def names(at: AppTest) -> list[str]:
    return list(at.dataframe[0].value["name"])


@pytest.mark.parametrize("page", PAGES)
def test_every_page_shows_only_the_login_before_the_password(server, page):
    at = app(page)
    assert errors(at) == []
    assert [t.label for t in at.text_input] == ["Password"]
    assert len(at.dataframe) == 0 and len(at.get("plotly_chart")) == 0
    assert not at.get("page_link") and not at.sidebar.markdown  # no pages, no dictionaries
    assert "sae_dicts" not in at.session_state  # nothing loaded for a stranger


def test_wrong_password_then_right_one(server):
    at = log_in(app(), "guess")
    assert errors(at) == ["Wrong password."]
    assert len(at.dataframe) == 0
    at = log_in(at)
    assert errors(at) == []
    assert names(at) == ["toy-a", "toy-b", "toy-a-seed2"]
    settle(at.switch_page("pages/1_Similarity.py").run())  # the session stays logged in
    assert errors(at) == [] and len(at.get("plotly_chart")) > 0
    # logging out (the sidebar's one button, below the page links) forgets the session
    assert [b.label for b in at.sidebar.button] == ["Log out"]
    assert len(at.get("page_link")) == len(PAGE_LINKS)
    settle(at.sidebar.button[0].click().run())
    assert errors(at) == [] and [t.label for t in at.text_input] == ["Password"]
    assert not at.get("page_link") and "sae_dicts" not in at.session_state


def test_no_password_configured_admits_nobody(server):
    at = app(password=None)
    assert errors(at) == ["This server asks for a password but has none set (secret SAE_PASSWORD)."]
    assert len(at.text_input) == 0 and len(at.dataframe) == 0


def test_oidc_needs_its_secrets_and_a_login(server):
    server["settings"].write_text('auth = "oidc"\n')

    hosting._cached_settings.cache_clear()
    at = app(password=None)
    assert errors(at) == ["This server uses OIDC login but has no [auth] section in its secrets."]
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.secrets["auth"] = {"redirect_uri": "http://localhost/oauth2callback", "cookie_secret": "x"}
    settle(at.run())
    assert errors(at) == []
    assert [b.label for b in at.button] == ["Log in"] and len(at.dataframe) == 0
    hosting._cached_settings.cache_clear()


def add(at: AppTest, uri: str, name: str) -> AppTest:
    inputs = [t for t in at.text_input if t.label.startswith(("Source", "Name (short"))]
    inputs[0].input(uri)
    inputs[1].input(name)
    return settle(next(b for b in at.button if b.label == "Load").click().run())


@pytest.mark.parametrize(
    "uri, needle",
    [
        ("../secret/private", "not found in the data folders this server shares"),
        ("{secret}/private", "not found in the data folders this server shares"),
        ("/etc/passwd", "not found in the data folders this server shares"),
        ("good/../../secret/private", "not found in the data folders this server shares"),
        ("escape", "not found in the data folders this server shares"),
        ("missing", "not found in the data folders this server shares"),
        ("wandb:sparsify/gpt2/tvj2owza", "wandb: sources are turned off on this server"),
        ("saelens:gpt2-small-res-jb/blocks.6.hook_resid_pre", "saelens: sources are turned off"),
    ],
)
def test_uri_box_refuses_what_the_server_does_not_share(server, uri, needle):
    at = log_in(app())
    at = add(at, uri.format(secret=server["secret"]), "x")
    errs = errors(at)
    assert len(errs) == 1 and needle in errs[0] and "\n" not in errs[0], errs
    assert names(at) == ["toy-a", "toy-b", "toy-a-seed2"]


def test_uri_box_loads_from_the_data_folder_with_exact_numbers(server):
    at = add(log_in(app()), "good", "mine")
    assert errors(at) == []
    table = at.dataframe[0].value.set_index("name")
    unit = unit_rows(server["dec"])[0]
    s = unit @ unit.T
    np.fill_diagonal(s, -np.inf)
    assert table.loc["mine", "features"] == 40
    assert table.loc["mine", "within MMCS"] == pytest.approx(s.max(1).mean(), abs=1e-5)


def test_upload_over_the_limit_and_messages_without_server_paths(server):
    at = log_in(app())
    big = ("big.npy", b"\0" * (2 * 2**20), "application/octet-stream")
    settle(at.file_uploader[0].set_value(big).run())
    at = settle(next(b for b in at.button if b.label == "Load upload").click().run())
    assert errors(at) == ["the upload is 2 MB; at most 1 MB"]
    # 1.3 MB once read "the upload is 1 MB; at most 1 MB"
    bigger = ("big.npy", b"\0" * int(1.3 * 2**20), "application/octet-stream")
    settle(at.file_uploader[0].set_value(bigger).run())
    at = settle(next(b for b in at.button if b.label == "Load upload").click().run())
    assert errors(at) == ["the upload is 1.3 MB; at most 1 MB"]
    bad = ("w.pt", b"this is not a checkpoint", "application/octet-stream")
    settle(at.file_uploader[0].set_value(bad).run())
    at = settle(next(b for b in at.button if b.label == "Load upload").click().run())
    errs = errors(at)
    assert len(errs) == 1 and "<upload>/" in errs[0] and "not a PyTorch file" in errs[0]
    assert str(server["root"]) not in errs[0]


def test_uploads_off_hides_the_upload_box(server):
    server["settings"].write_text(f'data_dirs = ["{server["data"]}"]\nuploads = false\n')

    hosting._cached_settings.cache_clear()
    at = log_in(app())
    assert [t.label for t in at.tabs] == ["By URI", "From the paper's catalogue"]
    hosting._cached_settings.cache_clear()


def test_status_page_reports_memory_within_the_budget(server):
    at = log_in(app())
    settle(at.switch_page("pages/4_Status.py").run())
    assert errors(at) == []
    metrics = {m.label: m.value for m in at.metric}
    held = float(metrics["Held in memory"].split()[0])
    assert 0 < held <= 64
    assert int(metrics["Computations run"]) >= 3  # the toy demo's within-dictionary comparisons


def neighbours_link(**query: str) -> AppTest:
    return log_in(app("pages/2_Neighbours.py", **query))


def test_a_shared_neighbours_link_loads_the_dictionary_in_a_new_session(server):
    at = add(log_in(app()), "good", "mine")
    at.switch_page("pages/2_Neighbours.py")
    at.query_params["dict"] = "mine"
    settle(at.run())
    assert errors(at) == []
    # what this session's address bar holds: the display form, no server path
    assert at.query_params["src"] == "data/good" and at.query_params["dict"] == "mine"
    # a collaborator opens the link (with another feature) in a fresh session
    fresh = neighbours_link(dict="mine", src="data/good", feature="12")
    assert errors(fresh) == []
    assert "mine · feature 12" in [h.value for h in fresh.subheader]
    unit = unit_rows(server["dec"])[0]
    s = unit @ unit.T
    np.fill_diagonal(s, -np.inf)
    table = fresh.dataframe[0].value
    assert int(table["feature"].iloc[0]) == int(np.argmax(s[12]))
    assert float(table["cosine"].iloc[0]) == pytest.approx(s[12].max(), abs=1e-5)


def test_a_link_to_a_source_outside_the_rules_loads_nothing(server):
    at = neighbours_link(dict="x", src=str(server["secret"] / "private"), feature="0")
    errs = errors(at)
    assert "not found in the data folders" in errs[0] and "No dictionary named 'x'" in errs[1], errs
    assert "x" not in at.session_state["sae_dicts"]


def test_day_old_uploads_are_removed_and_a_reupload_keeps_its_folder(server):
    from types import SimpleNamespace

    f = SimpleNamespace(name="w.pt", getvalue=lambda: b"weights")
    folder = Path(uploads.save_upload([f])).parent
    assert folder.parent == server["root"] / "uploads"
    stale = folder.parent / "0123456789abcdef"
    stale.mkdir()
    two_days_ago = time.time() - 2 * 24 * 3600
    for old in (folder, stale):
        os.utime(old, (two_days_ago, two_days_ago))
    again = Path(uploads.save_upload([f]))
    assert again.read_bytes() == b"weights" and again.parent == folder  # used again: kept
    assert not stale.exists()
