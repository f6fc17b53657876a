"""Plumbing shared by the remote sources: the cache folder, atomic file placement, progress.

Why atomic: a download that is interrupted (network drop, Ctrl-C, the app stopping a script)
must never leave a file under its final name, or a later load would take a truncated
checkpoint for a complete one. Every fetch therefore writes into a private temporary folder
next to the destination and is moved into place with `os.replace` only after it finished and
its size was checked.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import settings
from ..errors import SourceError
from ..types import DownloadProgress

# Temporary download folders start with this prefix; they never hold a file a reader would take.
PARTIAL_PREFIX = ".partial-"
_STALE_PARTIAL_S = 24 * 3600  # partial folders older than this are left-overs of killed processes
_POLL_S = 0.2


def cache_root() -> Path:
    """The folder for downloaded SAE files (`settings.downloads_dir()`)."""
    return settings.downloads_dir()


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write `obj` as JSON to `path` so that readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=PARTIAL_PREFIX, suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_partials(
    folder: Path, max_age_s: float = _STALE_PARTIAL_S, pattern: str = PARTIAL_PREFIX + "*"
) -> None:
    """Delete temporary download folders/files (`pattern`) older than `max_age_s` in `folder`:
    what processes killed mid-download left behind."""
    if not folder.is_dir():
        return
    now = time.time()
    for entry in folder.glob(pattern):
        try:
            if now - entry.stat().st_mtime > max_age_s:
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
        except OSError:
            pass  # another process removed it first


def fetch_atomic(
    dest: Path,
    fetch: Callable[[Path], Path],
    *,
    expected_size: int | None,
    what: str,
    progress: DownloadProgress | None = None,
) -> Path:
    """Fetch one file to `dest` atomically and return `dest`.

    fetch(tmp_dir) downloads into the empty folder `tmp_dir` (beside `dest`) and returns the
    path of the finished file. It runs in a worker thread while this (the caller's) thread
    polls the bytes written so far and calls `progress(done, total, what)`; callbacks thus stay
    on the caller's thread, which UI frameworks require. The file is moved to `dest` only if
    `fetch` returned normally and its size equals `expected_size` (when known); otherwise the
    temporary folder is removed and `dest` is left as it was.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=PARTIAL_PREFIX, dir=dest.parent))
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["path"] = Path(fetch(tmp_dir))
        except BaseException as exc:  # handed to the caller's thread below
            outcome["error"] = exc

    worker = threading.Thread(target=work, name=f"fetch {what}", daemon=True)
    try:
        worker.start()
        while worker.is_alive():
            worker.join(_POLL_S)
            if progress is not None and worker.is_alive():
                progress(_bytes_under(tmp_dir), expected_size, what)
        if "error" in outcome:
            raise outcome["error"]
        got = outcome["path"]
        size = got.stat().st_size if got.is_file() else None
        if size is None:
            raise SourceError(f"{what}: the download finished but left no file")
        if expected_size is not None and size != expected_size:
            raise SourceError(
                f"{what}: downloaded {size} bytes but the server announced {expected_size}; "
                "the transfer was cut short, try again"
            )
        os.replace(got, dest)
        if progress is not None:
            progress(size, expected_size if expected_size is not None else size, what)
        return dest
    finally:
        if not worker.is_alive():
            shutil.rmtree(tmp_dir, ignore_errors=True)
        # else: the caller was interrupted while the worker still writes; the partial folder
        # stays (never under a final name) and `remove_stale_partials` clears it later.


def _bytes_under(folder: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):  # renamed or removed between listing and stat
                total += os.path.getsize(os.path.join(dirpath, name))
    return total
