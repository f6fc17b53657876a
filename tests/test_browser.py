"""The dashboard in a real browser: Debian's Chromium, headless, driven by Playwright.

The test starts `streamlit run app.py` itself on a free loopback port (with a private
SAE_CACHE_DIR), opens every page, checks that no exception element is shown, follows a
Neighbours deep link, clicks a neighbour, and saves screenshots under artifacts/ (look at
them). No browser is ever downloaded: Playwright launches /usr/bin/chromium.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
# Shown while the script runs, and in place of elements whose code is still loading.
BUSY = '[data-testid="stStatusWidget"], [data-testid="stSkeleton"], [data-testid="stProgress"]'
PAGES = {"home": "/", "similarity": "/Similarity", "neighbours": "/Neighbours", "umap": "/UMAP"}

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Base URL of a fresh `streamlit run app.py`; stopped (by its own pid) afterwards."""
    port = free_port()
    cache = tmp_path_factory.mktemp("browser_cache")
    # the toy demo (SAE_DEMO=toy): its planted geometry gives the clicks below known targets
    env = {**os.environ, "SAE_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT), "SAE_DEMO": "toy"}
    log = open(cache / "streamlit.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
         "--server.address", "127.0.0.1", "--server.port", str(port),
         "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(
                        "streamlit did not start: " + (cache / "streamlit.log").read_text()[-2000:]
                    ) from None
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 2400})
    p = context.new_page()
    yield p
    context.close()


def wait_rendered(page, timeout=60_000) -> None:
    """Until Streamlit has run the script and drawn it: the page title is shown, and for a full
    second neither the running indicator nor a placeholder skeleton has been seen."""
    page.wait_for_selector('[data-testid="stMain"] h1', timeout=timeout)
    quiet_since = time.time()
    deadline = time.time() + timeout / 1000
    while time.time() - quiet_since < 1.0:
        if page.locator(BUSY).count():
            quiet_since = time.time()
        assert time.time() < deadline, "the page kept running"
        page.wait_for_timeout(100)
    page.wait_for_function(  # plotly draws after the script has finished
        """() => [...document.querySelectorAll('[data-testid="stPlotlyChart"]')]
                 .every(c => c.querySelector('.main-svg'))""",
        timeout=timeout,
    )


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def assert_no_exception(page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0, page.inner_text("body")[:2000]


@pytest.mark.parametrize("name", list(PAGES))
def test_page_opens_without_exception(server, page, name):
    page.goto(server + PAGES[name])
    wait_rendered(page)
    if name in ("similarity", "umap"):
        page.wait_for_selector('[data-testid="stPlotlyChart"] .main-svg', timeout=90_000)
        wait_rendered(page)
    assert_no_exception(page)
    assert page.locator('[data-testid="stAlertContentError"]').count() == 0
    shot(page, f"page_{name}")
    titles = {
        "home": "SAE dictionary geometry",
        "similarity": "Similarity",
        "neighbours": "Neighbours",
        "umap": "UMAP",
    }
    assert page.locator('[data-testid="stMain"] h1').first.inner_text().strip() == titles[name]


def test_deep_link_then_click_a_neighbour(server, page):
    page.goto(f"{server}/Neighbours?dict=toy-b&feature=17")
    wait_rendered(page)
    assert_no_exception(page)
    heading = page.get_by_role("heading", name=re.compile(r"toy-b · feature 17"))
    assert heading.count() == 1
    shot(page, "neighbours_deep_link")
    # The pills under "in toy-a": the first one is toy-b 17's nearest toy-a feature.
    group = page.locator('[data-testid="stButtonGroup"]').nth(1)
    first = group.locator("button").first
    target = first.inner_text().strip()
    assert target.isdigit()
    first.click()
    page.wait_for_url(re.compile(rf"dict=toy-a&feature={target}$"), timeout=30_000)
    wait_rendered(page)
    assert_no_exception(page)
    assert page.get_by_role("heading", name=f"toy-a · feature {target}").count() == 1
    shot(page, "neighbours_after_click")


def test_bad_feature_link_shows_an_error_not_a_traceback(server, page):
    page.goto(f"{server}/Neighbours?dict=toy-a&feature=99999")
    wait_rendered(page)
    assert_no_exception(page)
    assert "out of range" in page.locator('[data-testid="stAlertContentError"]').inner_text()
    shot(page, "neighbours_bad_feature")
