"""Issue 12's pages in a real browser (Debian's Chromium, headless, driven by Playwright): the
orphans list on Similarity and a click from it to the Neighbours page, the matching's JSON and
CSV downloads (parsed and compared with the backend), and the UMAP coloured by match status.

The test starts `streamlit run app.py` itself on a free loopback port with the toy demo
(SAE_DEMO=toy: toy-b copies half of toy-a's directions, so orphans exist) and a private
SAE_CACHE_DIR, and saves screenshots under artifacts/ (look at them).
"""

from __future__ import annotations

import csv
import io
import json
import re

import numpy as np
import pytest

from sae_backend import load
from sae_backend.demo import demo_sources
from sae_backend.geometry.compare import compare, match
from sae_backend.geometry.shared import feature_status, matched_pairs, orphans
from tests.browser_support import (
    CHROMIUM,
    assert_no_exception,
    chromium,
    shot,
    toy_app,
    wait_rendered,
)

pytestmark = pytest.mark.browser

pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)

SLOW = 180_000  # ms: the first visit computes the comparisons and matchings on a busy machine


@pytest.fixture(autouse=True)
def toy_demo(monkeypatch):
    monkeypatch.setenv("SAE_DEMO", "toy")  # the backend calls below load the same toy


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Base URL of a fresh `streamlit run app.py` on the toy demo; stopped afterwards."""
    with toy_app(tmp_path_factory.mktemp("browser_cache")) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 2400}, accept_downloads=True)
    p = context.new_page()
    yield p
    context.close()


def backend(directions="decoder"):
    """toy-a → toy-b as the pages compute it (match()'s defaults), from the backend directly."""
    src = demo_sources()
    a, b = load(src["toy-a"]), load(src["toy-b"])
    m = match(a, b, directions=directions)
    return a, b, m, matched_pairs(a, b, m, directions)


def open_similarity(server, page) -> None:
    page.goto(server + "/Similarity")
    wait_rendered(page, SLOW)
    page.get_by_role("heading", name="One-to-one matching: shared features and orphans").wait_for(
        timeout=SLOW
    )
    wait_rendered(page, SLOW)
    assert_no_exception(page)


def test_orphans_list_then_a_click_opens_the_feature_on_neighbours(server, page):
    a, b, m, pairs = backend()
    o = orphans(pairs, "a", compare(a, b), a.alive_index, 0.7, "both")
    open_similarity(server, page)
    label = f"Orphans of toy-a vs toy-b: {len(o):,} of 1,000 alive"
    page.get_by_text(label).click()
    expander = page.locator('[data-testid="stExpander"]').filter(has_text=label)
    table = expander.locator('[data-testid="stDataFrame"]')
    table.wait_for(timeout=SLOW)
    wait_rendered(page)
    # The grid's accessible cells (glide-cell-COLUMN-ROW) hold the backend's orphans.
    for row in range(3):
        cells = [table.get_by_test_id(f"glide-cell-{c}-{row}").inner_text() for c in (0, 5, 7)]
        assert cells == [str(o.feature[row]), str(o.nearest[row]), str(o.taken_by[row])]
    page.get_by_role("heading", name="One-to-one matching").scroll_into_view_if_needed()
    shot(page, "matching_similarity_orphans")
    # B's side: 24 of toy-b's features stay unmatched (toy-a has 1,000 alive), no partner.
    ob = orphans(pairs, "b", compare(b, a), b.alive_index, 0.7, "both")
    label_b = f"Orphans of toy-b vs toy-a: {len(ob):,} of 1,024 alive"
    page.get_by_text(label_b).click()
    table_b = page.locator('[data-testid="stExpander"]').filter(has_text=label_b)
    table_b = table_b.locator('[data-testid="stDataFrame"]')
    table_b.wait_for(timeout=SLOW)
    wait_rendered(page)
    row = int(np.flatnonzero(ob.status == "unmatched")[0])
    cells = [table_b.get_by_test_id(f"glide-cell-{c}-{row}").inner_text() for c in (0, 1, 2)]
    assert cells[:2] == [str(ob.feature[row]), "unmatched"] and cells[2] in ("", "—")
    table_b.scroll_into_view_if_needed()
    shot(page, "matching_similarity_orphans_of_b")
    # A click on the third row's feature cell (rows are 35 px under a 35 px header) offers
    # that feature's Neighbours page; the link opens it. The grid can map a click by where it
    # was drawn before the page's container scrolled (to B's table above), selecting nothing:
    # scroll back, and click again until the page has answered with the link.
    feature = int(o.feature[2])
    link = page.get_by_role("link", name=f"Open toy-a feature {feature} on the Neighbours page")
    for _ in range(4):
        page.evaluate("() => document.querySelector('[data-testid=\"stMain\"]').scrollTo(0, 0)")
        page.wait_for_timeout(500)
        box = table.bounding_box()
        page.mouse.move(box["x"] + 15, box["y"] + 35 * 3 + 17)
        page.mouse.click(box["x"] + 15, box["y"] + 35 * 3 + 17)
        wait_rendered(page)
        if link.count():
            break
    link.wait_for(timeout=60_000)
    wait_rendered(page)
    shot(page, "matching_similarity_orphan_clicked")
    link.click()
    page.wait_for_url(re.compile(rf"Neighbours\?dict=toy-a&feature={feature}$"), timeout=60_000)
    wait_rendered(page, SLOW)
    assert_no_exception(page)
    assert page.get_by_role("heading", name=f"toy-a · feature {feature}").count() == 1
    line = page.get_by_text(re.compile(r"orphan: matched below τ.*vs toy-b")).first
    line.wait_for(timeout=SLOW)
    k = int(np.flatnonzero(pairs.a == feature)[0])
    assert f"partner #{int(pairs.b[k])}" in line.inner_text()
    line.scroll_into_view_if_needed()
    shot(page, "matching_neighbours_orphan")


def test_the_matching_downloads_as_json_and_csv_with_provenance(server, page, tmp_path):
    a, b, m, pairs = backend()
    open_similarity(server, page)
    buttons = page.get_by_role("button", name="Matching (JSON)")
    buttons.first.scroll_into_view_if_needed()
    with page.expect_download(timeout=SLOW) as info:
        buttons.first.click()  # the first tab: toy-a → toy-b
    path = tmp_path / "matching.json"
    info.value.save_as(path)
    assert info.value.suggested_filename == "matching_toy-a_toy-b_decoder.json"
    doc = json.loads(path.read_text())
    assert {"certified", "objective", "method", "sources", "pairs"} <= set(doc)
    assert doc["certified"] is True and doc["method"] == "hungarian"
    assert doc["objective"] == pytest.approx(m.total, abs=1e-9)
    assert doc["bound"] == pytest.approx(m.bound, abs=1e-9)
    assert doc["sources"] == {"a": "bundled demo: toy-a", "b": "bundled demo: toy-b"}
    assert doc["fingerprints"] == {"a": a.fingerprint, "b": b.fingerprint}
    assert (doc["directions"], doc["tau"], doc["criterion"]) == ("decoder", 0.7, "both")
    got = np.array([(p["a"], p["b"]) for p in doc["pairs"]])
    np.testing.assert_array_equal(got, np.stack([pairs.a, pairs.b], 1))
    np.testing.assert_allclose([p["encoder_cos"] for p in doc["pairs"]], pairs.encoder_cos)
    shared = (pairs.decoder_cos >= 0.7) & (pairs.encoder_cos >= 0.7)
    assert [p["shared"] for p in doc["pairs"]] == shared.tolist()

    with page.expect_download(timeout=SLOW) as info:
        page.get_by_role("button", name="Matching (CSV)").first.click()
    path = tmp_path / "matching.csv"
    info.value.save_as(path)
    rows = list(csv.reader(io.StringIO(path.read_text())))
    assert rows[0] == ["a", "b", "decoder_cos", "encoder_cos", "shared"]
    assert [(int(r[0]), int(r[1])) for r in rows[1:]] == [tuple(x) for x in got.tolist()]
    np.testing.assert_allclose([float(r[2]) for r in rows[1:]], pairs.decoder_cos)
    assert_no_exception(page)


# Per trace of the UMAP scatter: its name, colour, and the features of its points.
TRACES_JS = """() => {
  const gd = document.querySelector('[data-testid="stPlotlyChart"] .js-plotly-plot');
  return gd._fullData.map(t => ({
    name: t.name, colour: t.marker.color, symbol: t.marker.symbol,
    features: Array.from(t.customdata).map(c => Number(c[0])),
  }));
}"""
LABELS = {"shared": "shared", "below": "orphan: matched below τ",
          "unmatched": "orphan: unmatched"}  # fmt: skip
COLOURS = {"shared": "#0072B2", "below": "#E69F00", "unmatched": "#CC79A7"}


def check_colouring(page, criterion: str) -> None:
    a, b, m, pairs = backend()
    want = {
        "toy-a": feature_status(pairs, "a", a.n_features, a.alive_index, 0.7, criterion),
        "toy-b": feature_status(pairs, "b", b.n_features, b.alive_index, 0.7, criterion),
    }
    traces = page.evaluate(TRACES_JS)
    assert traces, "no scatter drawn"
    for t in traces:
        label, name = t["name"].rsplit(" · ", 1)
        status = next(s for s, text in LABELS.items() if text == label)
        assert t["colour"] == COLOURS[status]
        assert set(t["features"]) == set(np.flatnonzero(want[name] == status).tolist())
    shown = {(t["name"], len(t["features"])) for t in traces}
    assert sum(n for _, n in shown) == a.n_alive + b.n_alive


def test_umap_coloured_by_match_status(server, page):
    page.goto(server + "/UMAP")
    wait_rendered(page, SLOW)
    page.wait_for_selector('[data-testid="stPlotlyChart"] .js-plotly-plot', timeout=SLOW)
    page.locator('[data-testid="stSelectbox"]').filter(has_text="Colour by").click()
    page.get_by_role("option", name="match status vs toy-b").click()
    page.wait_for_function(
        """() => {
          const gd = document.querySelector('[data-testid="stPlotlyChart"] .js-plotly-plot');
          return gd && gd._fullData.some(t => t.name === 'shared · toy-a');
        }""",
        timeout=SLOW,
    )
    wait_rendered(page, SLOW)
    assert_no_exception(page)
    check_colouring(page, "both")
    shot(page, "matching_umap_status")
    page.get_by_text("decoder ≥ τ").click()  # the other criterion: the planted copies shared
    page.wait_for_function(
        """() => {
          const gd = document.querySelector('[data-testid="stPlotlyChart"] .js-plotly-plot');
          const t = gd && gd._fullData.find(t => t.name === 'shared · toy-a');
          return t && t.customdata.length > 300;
        }""",
        timeout=SLOW,
    )
    wait_rendered(page, SLOW)
    check_colouring(page, "decoder")
    shot(page, "matching_umap_status_decoder")
