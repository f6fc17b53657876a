"""Benchmark: each page in Chromium with an EMPTY cache: time to first content, time to complete.

    python benchmarks/bench_pages_cold.py                  # 3 x 46,080 x 768 (many minutes)
    python benchmarks/bench_pages_cold.py --n 8192 --no-umap

The issue's target: with three 46,080-feature dictionaries and an empty cache, every page shows
its controls and whatever is already known within 2 s, with a progress bar per result still
computing; adding a dictionary returns the page at once. This script (not a test: it takes many
minutes) writes the three synthetic SAELens folders of `bench_pages.py` (B keeps half of A's
directions, C is all of A perturbed; 2% of A dead) to a temporary folder, starts `streamlit
run app.py` on loopback with an empty SAE_CACHE_DIR, and drives one Chromium tab (one session)
as a visitor would:

1. opens the home page of the fresh server (the real demo: time to the first paint),
   removes the demo's four dictionaries, and adds A, B and C by the URI box (time until the
   page is back after each click);
2. visits Similarity, Neighbours, Geometry, Families and UMAP in turn through the sidebar links (the session
   and the server's store carry over, as for a visitor), and for each records:
   - first content: the page's title and controls are drawn and the script run has finished
     drawing (no element of the previous page left), with what it shows at that moment (bars,
     charts);
   - complete: the moment the last progress bar went (checked for a quiet 3 s afterwards).
   UMAP: its default (A and B, ~91,000 points) waits for its button; the script presses it
   once the page has drawn, and times the embedding from the press.

Times are wall-clock seconds in the browser, so they include drawing and transfers. The load
average of the machine is printed at the start and the end: on a shared machine the times
move with it.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_pages import NAMES, make_dictionaries, write_saelens  # noqa: E402

from tests.browser_support import (  # noqa: E402
    ARGS,
    CHROMIUM,
    free_port,
    local_command,
    streamlit_server,
)

BAR = '[data-testid="stProgress"]'
STALE = '[data-stale="true"]'
H1 = '[data-testid="stMain"] h1'
QUIET_S = 3.0  # no bar for this long: the page is complete


@dataclass
class Visit:
    page: str
    first_content: float = float("nan")
    complete: float = float("nan")
    at_first: dict[str, int] = field(default_factory=dict)  # what was on screen then
    note: str = ""


def shown(page) -> dict[str, int]:
    """Counts of what the page shows now: progress bars, drawn charts, tables."""
    return {
        "bars": page.locator(BAR).count(),
        "charts": page.locator('[data-testid="stPlotlyChart"] .main-svg').count() // 2,
        "tables": page.locator('[data-testid="stDataFrame"]').count(),
    }


# Drawn: no placeholder of an element whose code is still loading, and every plotly chart
# drawn (plotly draws after the script has sent the figure).
DRAWN_JS = """() => !document.querySelector('[data-testid="stSkeleton"]')
    && [...document.querySelectorAll('[data-testid="stPlotlyChart"]')]
       .every(c => c.querySelector('.main-svg'))"""
NO_STALE_JS = "() => !document.querySelector('[data-stale=\"true\"]')"


def wait_drawn(page, title: str, control: str, timeout_s: float, shows: bool = True) -> None:
    """Until the page titled `title` shows the control labelled `control`, everything it was
    sent is drawn (elements of the page before may still be fading out meanwhile), and it
    shows a result or a bar for one (not only its controls; unless `shows` is False: a page
    that waits for a button, as UMAP above 10,000 points)."""
    deadline = time.monotonic() + timeout_s

    def left() -> float:
        return max(1.0, deadline - time.monotonic()) * 1000

    page.locator(H1, has_text=title).first.wait_for(timeout=left())
    page.get_by_text(control, exact=True).first.wait_for(timeout=left())
    page.wait_for_function(DRAWN_JS, timeout=left())
    if shows:
        page.wait_for_function(SHOWS_JS, timeout=left())


# Shows something beyond its controls: a progress bar, a drawn chart or a table (a page with
# nothing known yet shows a bar for each result it is computing).
SHOWS_JS = """() => !!document.querySelector(['stProgress', 'stDataFrame', 'stPlotlyChart']
    .map(t => `[data-testid="stMain"] [data-testid="${t}"]`).join(', '))"""


def wait_complete(page, t0: float, timeout_s: float) -> float:
    """Seconds from t0 until the last progress bar went (none for QUIET_S afterwards)."""
    deadline = t0 + timeout_s
    last_bar = time.monotonic()
    while time.monotonic() < deadline:
        if page.locator(BAR).count() or page.locator(STALE).count():  # bars, or a rerun
            last_bar = time.monotonic()
        elif time.monotonic() - last_bar >= QUIET_S:
            return last_bar - t0
        page.wait_for_timeout(100)
    raise SystemExit(f"still computing after {timeout_s:.0f} s: {shown(page)}")


def visit(
    page,
    link: str,
    title: str,
    control: str,
    timeout_s: float,
    shot,
    known: str | None = None,
    shows: bool = True,
) -> Visit:
    """Follow the sidebar link `link` and time its first content and completion; `shot(page,
    name)` is called at both. `known`: a selector for what the page must show at first content
    because another page computed it already (Similarity: the histogram of 'within A')."""
    v = Visit(link)
    t0 = time.monotonic()
    page.locator('[data-testid="stSidebar"]').get_by_role("link", name=link, exact=True).click()
    wait_drawn(page, title, control, 60, shows)
    if known is not None:  # "container child": the element sent, then drawn in it
        page.locator(known.split(" ")[0]).first.wait_for(timeout=60_000)
        sent = time.monotonic() - t0
        page.locator(known).first.wait_for(timeout=60_000)
        v.note = f"known result sent after {sent:.2f} s, drawn after {time.monotonic() - t0:.2f} s"
    v.first_content = time.monotonic() - t0
    v.at_first = shown(page)
    shot(page, f"{link.lower()}_first_content")
    v.complete = wait_complete(page, t0, timeout_s)
    shot(page, f"{link.lower()}_complete")
    print(f"{link}: first content {v.first_content:.2f} s {v.at_first}, "
          f"complete {v.complete:.1f} s", flush=True)  # fmt: skip
    return v


def umap_visit(page, timeout_s: float, shot) -> Visit:
    """The UMAP page; above 10,000 points it waits for its button: pressed once the page has
    drawn, and the embedding timed from the press."""
    v = visit(page, "UMAP", "UMAP", "Colour by", timeout_s, shot, shows=False)
    button = page.get_by_role("button", name=re.compile(r"^Compute the embedding"))
    if not button.count():
        return v
    t0 = time.monotonic()
    button.click()
    page.wait_for_selector(BAR, timeout=60_000)
    v.note = (
        f"button pressed: its bar after {time.monotonic() - t0:.2f} s; complete: from the press"
    )
    page.wait_for_timeout(5000)
    shot(page, "umap_computing")
    v.complete = wait_complete(page, t0, timeout_s)
    page.wait_for_selector('[data-testid="stPlotlyChart"] .main-svg', timeout=120_000)
    shot(page, "umap_complete")
    print(f"UMAP: {v.note}, complete {v.complete:.1f} s", flush=True)
    return v


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=46_080, help="features per dictionary")
    parser.add_argument("--d", type=int, default=768, help="d_model")
    parser.add_argument("--no-umap", dest="umap", action="store_false", help="skip UMAP")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per page")
    parser.add_argument("--shots", type=Path, help="save a screenshot per step here")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="bench_cold_"))
    t = time.perf_counter()
    for name, arrays in make_dictionaries(args.n, args.d).items():
        write_saelens(tmp / name, **arrays)
    print(f"wrote 3 x {args.n:,} x {args.d} in {time.perf_counter() - t:.1f} s under {tmp}")
    load_start = os.getloadavg()
    print(f"load average at the start: {load_start[0]:.1f} {load_start[1]:.1f} {load_start[2]:.1f}")

    def shot(page, name: str) -> None:
        if args.shots:
            args.shots.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.shots / f"{name}.png"), full_page=True)

    port = free_port()
    env = {"SAE_CACHE_DIR": str(tmp / "cache")}  # empty: every result is computed
    log = tmp / "streamlit.log"
    rows: list[Visit] = []
    with (
        streamlit_server(local_command(port), env, log, port) as (url, _),
        sync_playwright() as pw,
    ):
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        page = browser.new_context(viewport={"width": 1400, "height": 2400}).new_page()

        # 1. A fresh server's home page with the bundled demo, then the three dictionaries.
        home = Visit("Home (fresh server, bundled demo)")
        t0 = time.monotonic()
        page.goto(url + "/")
        page.wait_for_selector(H1, timeout=120_000)
        title = time.monotonic() - t0
        wait_drawn(page, "SAE dictionary geometry", "Load", 120)
        home.first_content = time.monotonic() - t0
        home.note = f"title after {title:.2f} s"
        home.at_first = shown(page)
        home.complete = wait_complete(page, t0, 600)
        print(f"fresh server, demo: title after {title:.2f} s, first content "
              f"{home.first_content:.2f} s {home.at_first}, complete {home.complete:.1f} s",
              flush=True)  # fmt: skip
        rows.append(home)
        empty = page.get_by_text("No dictionaries loaded")
        for _ in range(20):  # the demo's four: Remove takes the selectbox's first entry
            if empty.count():
                break
            page.get_by_role("button", name="Remove", exact=True).click()
            page.wait_for_timeout(1000)
            page.wait_for_function(NO_STALE_JS, timeout=60_000)
        else:
            shot(page, "remove_failed")
            raise SystemExit("could not remove the demo's dictionaries")
        # Home: adding A, B and C; each click must give the page back at once, and the page
        # then shows their loading and within passes until it is complete.
        adds = []
        t_first_add = time.monotonic()
        for name in NAMES:
            page.get_by_label("Source").fill(str(tmp / name))
            page.get_by_label("Name (short; used in URLs)").fill(name)
            t0 = time.monotonic()
            page.get_by_role("button", name="Load", exact=True).click()
            sidebar = page.locator('[data-testid="stSidebar"]')
            sidebar.get_by_text(re.compile(rf"^{name} ·")).first.wait_for(timeout=60_000)
            page.wait_for_function(NO_STALE_JS, timeout=60_000)  # the add's run has finished
            adds.append(time.monotonic() - t0)
            print(f"add {name}: page back after {adds[-1]:.2f} s {shown(page)}", flush=True)
        home = Visit("Dictionaries (adding A, B, C)", first_content=max(adds), at_first=shown(page))
        shot(page, "dictionaries_first_content")
        home.complete = wait_complete(page, t_first_add, args.timeout)
        home.note = "times from the first add's click; first content: slowest of the three adds"
        print(f"Dictionaries: complete {home.complete:.1f} s after the first add", flush=True)
        shot(page, "dictionaries_complete")
        rows.append(home)

        # 2. The other pages in turn, as a visitor following the sidebar.
        pages = [  # sidebar link, the page's title, one of its controls' labels, what is known
            (
                "Similarity",
                "Similarity",
                "Comparisons (A → B: features of A against B)",
                '[data-testid="stPlotlyChart"] .main-svg',
            ),  # within A, known from Home
            ("Neighbours", "Neighbours", "Neighbours per dictionary", None),
            ("Geometry", "Geometry of a dictionary", "Dictionary", None),
            (
                "Families",
                "Families across widths",
                "Ladder (narrowest first: in the order chosen)",
                None,
            ),
        ]
        for link, title, control, known in pages:
            rows.append(visit(page, link, title, control, args.timeout, shot, known))
        if args.umap:
            rows.append(umap_visit(page, args.timeout, shot))
        browser.close()

    load_end = os.getloadavg()
    cpu = platform.processor() or platform.machine()
    print(f"\n{args.n:,} features x {args.d}, empty cache, {os.cpu_count()} cores ({cpu}); "
          f"load average {load_start[0]:.1f} at the start, {load_end[0]:.1f} at the end")  # fmt: skip
    print(f"adding A, B, C: page back after {', '.join(f'{s:.2f} s' for s in adds)}")
    print("| page | first content | shown then | complete | note |")
    print("|---|---|---|---|---|")
    for v in rows:
        print(f"| {v.page} | {v.first_content:.2f} s | {v.at_first} | {v.complete:.1f} s | "
              f"{v.note} |")  # fmt: skip


if __name__ == "__main__":
    main()
