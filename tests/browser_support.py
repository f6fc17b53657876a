"""What the browser tests share: a Streamlit server started by the test, and Chromium helpers.

Servers run on a free loopback port with their own SAE_CACHE_DIR and are stopped (by their own
pid) afterwards; Playwright drives Debian's Chromium (/usr/bin/chromium), never a download.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

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
LOCAL_SERVER = ["--server.headless", "true", "--browser.gatherUsageStats", "false",
                "--server.fileWatcherType", "none"]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(url: str) -> bool:
    """Whether Streamlit's health endpoint answers "ok"."""
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=5) as r:
            return r.status == 200 and r.read().strip() == b"ok"
    except OSError:
        return False


@contextlib.contextmanager
def streamlit_server(
    command: Sequence[str], env: dict[str, str], log: Path, port: int
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run `command` (which must serve on 127.0.0.1:`port`) until the block ends; yields
    (base URL, process) once the health endpoint answers."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            list(command), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 60
            while not healthy(url):
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"streamlit did not start: {log.read_text()[-2000:]}")
                time.sleep(0.3)
            yield url, proc
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """Debian's Chromium, headless, launched by Playwright (a module-scoped fixture's body)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        yield browser
        browser.close()


@contextlib.contextmanager
def toy_app(cache: Path, command: Sequence[str] | None = None) -> Iterator[str]:
    """Base URL of a fresh server on the toy demo (SAE_DEMO=toy: its planted geometry gives
    clicks known targets) with SAE_CACHE_DIR=`cache`: `streamlit run app.py` unless `command`
    (given the port) says otherwise; stopped by its own pid at the end of the block."""
    port = free_port()
    argv = local_command(port) if command is None else [*command, "--server.port", str(port)]
    env = {"SAE_CACHE_DIR": str(cache), "SAE_DEMO": "toy"}
    with streamlit_server(argv, env, cache / "streamlit.log", port) as (url, _):
        yield url


def local_command(port: int) -> list[str]:
    """`streamlit run app.py` as on a laptop, on loopback."""
    return [sys.executable, "-m", "streamlit", "run", "app.py", *LOCAL_SERVER,
            "--server.address", "127.0.0.1", "--server.port", str(port)]  # fmt: skip


def wait_rendered(page, timeout: int = 60_000) -> None:
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
