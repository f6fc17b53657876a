"""A hosted instance for real: `hosted/serve.py` started by the test, visited by many browsers.

* Load: 12 Chromium sessions at once (one context each, so 12 Streamlit sessions) log in, add
  a dictionary from the shared data folder by URI and open the Similarity page. Every session
  must get its page without an exception or an error, every distinct computation must have
  run once (the Status page's own count), and the shared memory store must have stayed under
  its budget (2 MB here, below what the sessions load, so it has to evict).
* Hostile input through the URI box and the upload box: pickles that would create a file, zip
  bombs, truncated/odd safetensors, huge declared shapes, path traversal and symlink escapes.
  Each gives one clear error, nothing runs, the server stays healthy, the disk cache gains no
  entry, and a good file loads afterwards.
* The websocket refuses hosts outside `allowed_hosts` and foreign origins.

Figures (sessions, computations, peak memory, inputs tried) are printed with `-s` and
recorded in docs/hosting.md.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sae_backend.cache import ArrayCache
from tests.browser_support import (
    ARGS,
    ARTIFACTS,
    BUSY,
    CHROMIUM,
    free_port,
    healthy,
    streamlit_server,
)
from tests.factories import write_saelens
from tests.hostile import hostile_files

async_api = pytest.importorskip("playwright.async_api", reason="playwright is not installed")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)

pytestmark = pytest.mark.browser  # the whole module shares one server that browsers visit
ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "a shared secret for tests"
SESSIONS = 12
BUDGET_MB = 2
TIMEOUT = 180_000  # ms; 12 sessions share this machine's 2 cores
ERROR = '[data-testid="stAlertContentError"]'
EXCEPTION = '[data-testid="stException"]'
LINKS = '[data-testid="stSidebar"] [data-testid="stPageLink-NavLink"]'  # dashboard.frame.PAGES


@pytest.fixture(scope="module")
def hosted(tmp_path_factory):
    """A hosted server on loopback: data/ holds three SAEs, hostile files and a link out."""
    root = tmp_path_factory.mktemp("hosted")
    data, secret = root / "data", root / "secret"
    rng = np.random.default_rng(11)
    for i in range(3):
        dec = rng.standard_normal((2048, 64))
        write_saelens(data / f"sae-{i}", dec, rng.standard_normal((2048, 64)))
    write_saelens(secret / "private", rng.standard_normal((16, 8)), None)
    (data / "escape").symlink_to(secret / "private")
    marker = root / "PWNED"
    cases = hostile_files(data / "hostile", marker)
    settings = root / "hosted.toml"
    settings.write_text(
        f'data_dirs = ["{data}"]\nremote = ["hf"]\nauth = "password"\n'
        f"memory_budget_mb = {BUDGET_MB}\nupload_limit_mb = 16\nheavy_pairs = 1\n"
        'allowed_hosts = ["127.0.0.1"]\n'
        "max_array_mb = 16384\n"  # above the bombs' 4 GiB: their ratio check must catch them
    )
    port = free_port()
    cmd = [sys.executable, "hosted/serve.py", str(settings), "--port", str(port),
           "--address", "127.0.0.1"]  # fmt: skip
    cache = root / "cache"
    env = {"SAE_CACHE_DIR": str(cache), "SAE_PASSWORD": PASSWORD, "SAE_DEMO": "toy",
           "HF_HUB_OFFLINE": "1"}  # fmt: skip
    with streamlit_server(cmd, env, root / "server.log", port) as (url, proc):
        yield {"url": url, "proc": proc, "data": data, "secret": secret, "cases": cases,
               "marker": marker, "cache": cache / "sae_geometry", "root": root}  # fmt: skip


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=600))


async def browser(pw):
    return await pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)


async def settled(page) -> None:
    """Until the script has run and drawn: a title, then a full second without busy marks."""
    await page.wait_for_selector('[data-testid="stMain"] h1', timeout=TIMEOUT)
    quiet, deadline = time.time(), time.time() + TIMEOUT / 1000
    while time.time() - quiet < 1.0:
        if await page.locator(BUSY).count():
            quiet = time.time()
        assert time.time() < deadline, "the page kept running"
        await page.wait_for_timeout(150)


async def log_in(page, url: str) -> None:
    await page.goto(url)
    await page.locator("input[type=password]").wait_for(timeout=TIMEOUT)
    # a stranger sees the login only: no page links, no list of pages
    assert await page.locator(f"{LINKS}, [data-testid='stSidebarNav']").count() == 0
    await page.locator("input[type=password]").fill(PASSWORD)
    await page.get_by_role("button", name="Enter").click()
    await page.get_by_role("heading", name="Loaded dictionaries").wait_for(timeout=TIMEOUT)
    await settled(page)


async def add_by_uri(page, uri: str, name: str) -> None:
    """Add a source through the URI box and wait until it is listed in the sidebar."""
    await page.get_by_label("Source").fill(uri)
    await page.get_by_label("Name (short; used in URLs)").fill(name)
    await page.get_by_role("button", name="Load", exact=True).click()
    await page.locator('[data-testid="stSidebar"]').get_by_text(name).wait_for(timeout=TIMEOUT)
    await settled(page)


async def refused(page, click) -> list[str]:
    """Run `click` (an attempt expected to fail) and return what is shown once the new error
    is there: every attempt's message differs from the one before (it names the source)."""
    before = await problems(page)
    await click()
    deadline = time.time() + TIMEOUT / 1000
    while (now := await problems(page)) == before or not now:
        assert time.time() < deadline, f"no new error after {before}"
        await page.wait_for_timeout(100)
    await settled(page)
    return await problems(page)


async def open_page(page, link: str, heading: str) -> None:
    """Follow a sidebar link (the session, and its login, stay; a new URL would start afresh)."""
    await page.locator(LINKS, has_text=link).click()
    await page.get_by_role("heading", name=heading).first.wait_for(timeout=TIMEOUT)
    await settled(page)


async def problems(page) -> list[str]:
    shown = await page.locator(f"{ERROR}, {EXCEPTION}").all_inner_texts()
    return [s.strip() for s in shown]


async def status(page, url: str) -> dict[str, str]:
    """The Status page's metrics and its table of computation runs."""
    await open_page(page, "Status", "Server status")
    metrics = {}
    for m in await page.locator('[data-testid="stMetric"]').all():
        label = (await m.locator('[data-testid="stMetricLabel"]').inner_text()).strip()
        metrics[label] = (await m.locator('[data-testid="stMetricValue"]').inner_text()).strip()
    metrics["caption"] = await page.get_by_text("Memory store:").inner_text()
    return metrics


def test_many_sessions_at_once_share_every_computation(hosted):
    url = hosted["url"]

    async def session(b, i: int) -> dict:
        ctx = await b.new_context(viewport={"width": 1300, "height": 1800})
        page = await ctx.new_page()
        try:
            await log_in(page, url)
            await add_by_uri(page, f"sae-{i % 3}", f"mine-{i % 3}")
            sidebar = await page.locator('[data-testid="stSidebar"]').inner_text()
            await open_page(page, "Similarity", "Similarity")
            await page.locator('[data-testid="stPlotlyChart"] .main-svg').first.wait_for(
                timeout=TIMEOUT
            )
            if i == 0:
                ARTIFACTS.mkdir(exist_ok=True)
                await page.screenshot(path=str(ARTIFACTS / "hosted_similarity.png"), full_page=True)
            return {"i": i, "problems": await problems(page), "table": sidebar}
        finally:
            await ctx.close()

    async def main():
        async with async_api.async_playwright() as pw:
            b = await browser(pw)
            t0 = time.time()
            results = await asyncio.gather(*(session(b, i) for i in range(SESSIONS)))
            elapsed = time.time() - t0
            ctx = await b.new_context(viewport={"width": 1300, "height": 2400})
            page = await ctx.new_page()
            await log_in(page, url)
            metrics = await status(page, url)
            await page.screenshot(path=str(ARTIFACTS / "hosted_status.png"), full_page=True)
            await b.close()
            return results, metrics, elapsed

    results, metrics, elapsed = run(main())
    assert [r["i"] for r in results] == list(range(SESSIONS))
    for r in results:
        assert r["problems"] == [], r
        sidebar = r["table"]
        assert f"mine-{r['i'] % 3}" in sidebar and f"data/sae-{r['i'] % 3}" in sidebar
        assert str(hosted["root"]) not in sidebar  # no server paths shown
    assert healthy(url)
    # every distinct computation ran once, however many sessions asked for it
    most = int(re.search(r"most runs of one computation: (\d+)", metrics["caption"]).group(1))
    runs = int(metrics["Computations run"])
    assert most == 1, metrics
    assert runs >= 6 + 6  # 6 dictionaries loaded, each compared with itself, plus pairs
    held = float(metrics["Held in memory"].split()[0])
    peak = float(re.search(r"peak ([\d.]+) MB", metrics["caption"]).group(1))
    evicted = int(re.search(r"(\d+) evicted", metrics["caption"]).group(1))
    assert held <= BUDGET_MB and peak <= BUDGET_MB and evicted > 0, metrics
    rss = _peak_rss_mb(hosted["proc"].pid)
    print(
        f"\nload test: {SESSIONS} sessions in {elapsed:.0f} s; {runs} computations, at most "
        f"{most} run each; memory store held {held} MB, peak {peak} MB of {BUDGET_MB} MB, "
        f"{evicted} evictions; server peak RSS {rss:.0f} MB"
    )


def _peak_rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1)) / 1024


TRAVERSAL = {
    "../secret/private": "not found in the data folders",
    "{secret}/private": "not found in the data folders",
    "sae-0/../../secret/private": "not found in the data folders",
    "escape": "not found in the data folders",
    "/etc/passwd": "not found in the data folders",
    "....//....//etc/passwd": "not found in the data folders",
    "%2e%2e/secret/private": "not found in the data folders",
    "wandb:sparsify/gpt2/tvj2owza": "wandb: sources are turned off",
    "file:///etc/passwd": "",  # any one-line refusal
}


async def upload(b, url: str, files: list[Path], expect_error: bool = False):
    """In a new session: upload `files` and press Load. Returns the error shown (expected), or
    (problems, sidebar text) once the upload is listed as "up"."""
    ctx = await b.new_context(viewport={"width": 1300, "height": 2000})
    page = await ctx.new_page()
    try:
        await log_in(page, url)
        await page.get_by_role("tab", name="Upload").click()
        await page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(
            [str(f) for f in files]
        )
        load = page.get_by_role("button", name="Load upload")
        if expect_error:
            return await refused(page, load.click)
        await page.get_by_label("Name", exact=True).fill("up")
        await load.click()
        sidebar = page.locator('[data-testid="stSidebar"]')
        await sidebar.get_by_text("up ·").wait_for(timeout=TIMEOUT)
        await settled(page)
        return await problems(page), await sidebar.inner_text()
    finally:
        await ctx.close()


async def try_uri(page, uri: str) -> None:
    await page.get_by_label("Source").fill(uri)
    await page.get_by_label("Name (short; used in URLs)").fill("bad")
    await page.get_by_role("button", name="Load", exact=True).click()


def test_hostile_input_through_the_uri_box_and_the_upload_box(hosted):
    url, cases, marker = hosted["url"], hosted["cases"], hosted["marker"]
    disk = ArrayCache(hosted["cache"])

    async def main():
        async with async_api.async_playwright() as pw:
            b = await browser(pw)
            ctx = await b.new_context(viewport={"width": 1300, "height": 2000})
            page = await ctx.new_page()
            await log_in(page, url)
            entries_before = len(disk)
            tried = []
            for uri, needle in TRAVERSAL.items():
                uri = uri.format(secret=hosted["secret"])
                shown = await refused(page, lambda uri=uri: try_uri(page, uri))
                tried.append(("uri", uri, needle, shown))
            for case, (path, needle) in cases.items():
                rel = str(path.relative_to(hosted["data"]))
                shown = await refused(page, lambda rel=rel: try_uri(page, rel))
                tried.append(("uri", case, needle, shown))
            for case, (path, needle) in cases.items():  # a new session per file
                shown = await upload(b, url, [path], expect_error=True)
                tried.append(("upload", case, needle, shown))
            await page.screenshot(path=str(ARTIFACTS / "hosted_hostile.png"), full_page=True)
            entries_after = len(disk)
            # a good upload still loads: nothing was poisoned
            after, table = await upload(b, url, sorted((hosted["data"] / "sae-1").iterdir()))
            await b.close()
            return tried, entries_before, entries_after, after, table

    tried, before, after_entries, after, table = run(main())
    for where, what, needle, shown in tried:
        assert len(shown) == 1, (where, what, shown)  # one error, no traceback
        assert "Traceback" not in shown[0] and "\n" not in shown[0].strip(), shown
        assert needle.lower() in shown[0].lower(), (where, what, needle, shown)
        # no server paths in messages, except one the visitor typed
        assert str(hosted["root"]) not in shown[0] or str(hosted["root"]) in what, shown
    assert not marker.exists(), "a pickle ran"
    assert after_entries == before, "a hostile input left a cache entry"
    assert after == [] and "up · <upload>/" in table
    assert healthy(url) and hosted["proc"].poll() is None
    print(f"\nhostile inputs tried: {len(tried)} ({len(TRAVERSAL)} URIs, {len(cases)} files x 2)")


def test_websocket_refuses_foreign_hosts_and_origins(hosted):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    port = hosted["url"].rsplit(":", 1)[1]
    stream = "/_stcore/stream"
    with connect(f"ws://127.0.0.1:{port}{stream}", subprotocols=["streamlit"]) as ws:
        assert ws.protocol is not None  # allowed host, no Origin: accepted
    for uri, headers in (
        (f"ws://localhost:{port}{stream}", {}),  # Host not in allowed_hosts
        (f"ws://127.0.0.1:{port}{stream}", {"Origin": "http://evil.example"}),
    ):
        with pytest.raises(InvalidStatus) as e:
            connect(uri, additional_headers=headers, subprotocols=["streamlit"]).close()
        assert e.value.response.status_code in (400, 403), e.value
