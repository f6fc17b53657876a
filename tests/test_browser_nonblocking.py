"""Pages that never block, in a real browser (Debian's Chromium, headless, via Playwright).

The server is `tests/slow_server.py`: the app with every compare() top-k pass slowed by
SLOW_S seconds (progress reported as it goes), on the toy demo. So each page must show its
controls, what is already known and a progress bar per result still computing, long before
those results; then the results; and a visitor who leaves a page mid-computation and comes
back finds the same computation (the Status page: no computation ran twice). Screenshots of
every page mid-computation and done go to artifacts/ (look at them).
"""

from __future__ import annotations

import re
import sys
import time

import pytest

from tests.browser_support import (
    CHROMIUM,
    LOCAL_SERVER,
    ROOT,
    assert_no_exception,
    chromium,
    shot,
    toy_app,
    wait_rendered,
)

pytestmark = pytest.mark.browser

SLOW_S = 12.0  # seconds per top-k pass of compare(): long beside drawing a page
BAR = '[data-testid="stProgress"]'
CHART = '[data-testid="stPlotlyChart"] .main-svg'

pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Base URL of the slowed app on the toy demo; stopped (by its own pid) afterwards."""
    command = [sys.executable, str(ROOT / "tests" / "slow_server.py"), str(SLOW_S),
               *LOCAL_SERVER, "--server.address", "127.0.0.1"]  # fmt: skip
    with toy_app(tmp_path_factory.mktemp("slow_cache"), command) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def page(browser):
    """One tab for the whole module: one session, as a visitor going from page to page."""
    context = browser.new_context(viewport={"width": 1400, "height": 2400})
    p = context.new_page()
    yield p
    context.close()


def drawn(page) -> None:
    """Until the script run in progress has finished drawing: no element of the run before it
    is left on the page (Streamlit marks those stale), e.g. before a screenshot."""
    page.wait_for_function(
        """() => document.querySelectorAll('[data-stale="true"]').length === 0""", timeout=30_000
    )


def histogram_legend(page) -> list[str]:
    """The legend entries of the page's first chart (the similarity histogram)."""
    chart = page.locator('[data-testid="stPlotlyChart"]').first
    return [t.strip() for t in chart.locator(".legendtext").all_text_contents()]


def test_home_shows_its_controls_and_bars_before_the_within_numbers(server, page):
    page.goto(server + "/")
    page.wait_for_selector('[data-testid="stMain"] h1', timeout=90_000)
    # a fresh server: the demo's dictionaries load, then their within passes compute
    page.locator(BAR, has_text="within toy-a").first.wait_for(timeout=60_000)
    page.wait_for_selector('[data-testid="stDataFrame"]', timeout=30_000)  # the dictionaries
    assert page.locator(BAR, has_text="within toy-a").count() >= 1  # their MMCS: not yet
    assert page.get_by_role("button", name="Load", exact=True).count() == 1  # the controls
    assert page.get_by_role("tab", name="By URI").count() == 1
    drawn(page)
    shot(page, "nonblocking_home_computing")
    wait_rendered(page, timeout=120_000)  # until no bar (nor running indicator) is left
    assert page.locator(BAR).count() == 0
    assert_no_exception(page)
    shot(page, "nonblocking_home_done")


def test_similarity_draws_what_is_known_at_once_and_the_rest_as_it_arrives(server, page):
    """'within toy-a' is known from the home page: its histogram is drawn while the
    comparisons between dictionaries still show their bars."""
    page.get_by_role("link", name="Similarity").click()
    page.wait_for_url(re.compile(r"/Similarity$"), timeout=30_000)
    page.locator(BAR, has_text="toy-a → toy-b").first.wait_for(timeout=30_000)
    legend = page.locator(f"{CHART} .legendtext", has_text="within toy-a (max cos)")
    legend.first.wait_for(state="attached", timeout=30_000)
    assert page.locator(BAR, has_text="toy-a → toy-b").count() >= 1  # still computing
    known = histogram_legend(page)
    assert "within toy-a (max cos)" in known and "toy-a → toy-b (max cos)" not in known, known
    assert page.locator('[data-testid="stMultiSelect"]').count() >= 1  # the controls
    drawn(page)
    shot(page, "nonblocking_similarity_computing")
    wait_rendered(page, timeout=120_000)
    done = histogram_legend(page)
    for label in ("toy-a → toy-b", "toy-a → toy-a-seed2", "within toy-a"):
        assert f"{label} (max cos)" in done, done
    assert_no_exception(page)
    shot(page, "nonblocking_similarity_done")


def test_leaving_mid_computation_and_coming_back_finds_the_same_computation(server, page):
    """Encoder directions: nine new comparisons start; the visitor goes to Neighbours while
    they run and comes back: the bars pick them up (or their results are there), and no
    computation ran twice."""
    page.get_by_role("link", name="Similarity").click()
    page.wait_for_url(re.compile(r"/Similarity$"), timeout=30_000)
    wait_rendered(page, timeout=60_000)
    page.get_by_text("encoder", exact=True).first.click()
    first_bar = page.locator(BAR, has_text="toy-a → toy-b").first
    first_bar.wait_for(timeout=30_000)
    drawn(page)
    shot(page, "nonblocking_similarity_encoder_computing")
    left = time.monotonic()
    page.get_by_role("link", name="Neighbours").click()  # leave mid-computation
    page.wait_for_url(re.compile(r"/Neighbours"), timeout=30_000)
    page.wait_for_selector('[data-testid="stMain"] h1', timeout=30_000)
    page.wait_for_timeout(3000)
    page.get_by_role("link", name="Similarity").click()  # and come back
    page.wait_for_url(re.compile(r"/Similarity$"), timeout=30_000)
    page.wait_for_selector('[data-testid="stMultiSelect"]', timeout=30_000)
    page.get_by_text("encoder", exact=True).first.click()
    # the same job, still running: its bar counts the seconds since the first visit asked
    first_bar.wait_for(timeout=30_000)
    away = time.monotonic() - left
    match = re.search(r"· (\d+) s", first_bar.inner_text())
    assert match and int(match.group(1)) >= int(away), (first_bar.inner_text(), away)
    drawn(page)
    shot(page, "nonblocking_similarity_encoder_back")
    wait_rendered(page, timeout=120_000)
    assert_no_exception(page)
    page.get_by_role("link", name="Status").click()
    page.wait_for_url(re.compile(r"/Status$"), timeout=30_000)
    wait_rendered(page)
    caption = page.get_by_text(re.compile(r"most runs of one computation: \d+")).inner_text()
    assert "most runs of one computation: 1." in caption, caption
    shot(page, "nonblocking_status")
