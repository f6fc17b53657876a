"""What the commands share: load options, compute options, progress bars, atomic writes."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ..errors import SAEError
from ..types import ORIENTATIONS, DownloadProgress, Progress

if TYPE_CHECKING:
    from ..dictionary import Dictionary


def add_compute_options(p: argparse.ArgumentParser, what: str = "", cache: bool = True) -> None:
    p.add_argument("--device", default="auto", help=f"{what}auto, cpu, cuda, cuda:N or mps")
    if cache:
        p.add_argument("--no-cache", action="store_true", help="do not read or write the cache")


def add_load_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--orientation",
        choices=ORIENTATIONS,
        help="plain matrices only: rows = [n_features, d_model], columns = [d_model, n_features]",
    )
    p.add_argument("--key", help="plain files holding several arrays: which one")
    p.add_argument("--format", help="force a reader (default: detected)")


def load_source(
    src: str, args: argparse.Namespace, on_read: Callable[[], None] | None = None
) -> Dictionary:
    """`load(src)` with the command's load options and a download progress bar."""
    from ..loader import load

    return load(
        src,
        orientation=args.orientation,
        key=args.key,
        format=args.format,
        progress=download_progress(),
        on_read=on_read,
    )


def load_sources(srcs: Sequence[str], args: argparse.Namespace) -> list[Dictionary]:
    """`load_source` of each of `srcs`, side by side in threads (reading, normalising and
    hashing let go of the GIL). When one of them has to be read from its files (not in the
    cache), a computation almost surely follows, so torch and the CPU kernel are loaded
    meanwhile in another thread; a cached answer never imports them. Errors come in the
    order of `srcs`."""
    prepare = _ComputePrep()
    with ThreadPoolExecutor(max_workers=max(1, min(len(srcs), 2))) as pool:
        futures = [pool.submit(load_source, s, args, prepare.start) for s in srcs]
        return [f.result() for f in futures]


class _ComputePrep:
    """Imports torch and loads the compiled kernel in a thread, started at most once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        with self.lock:
            if self.thread is None:  # not a daemon: never cut off in the middle of an import
                self.thread = threading.Thread(target=_prepare_compute, name="sae-prepare")
                self.thread.start()


def _prepare_compute() -> None:
    try:
        import torch  # noqa: F401

        from ..geometry import _cpu_select

        _cpu_select.kernel(quiet=True)
    except Exception:  # the computation itself will meet (and report) whatever failed here
        pass


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename: never half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", newline="") as f:
                f.write(text)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as e:
        raise SAEError(f"cannot write {path}: {e.strerror or e}") from None


class Bar:
    """A tqdm progress bar on stderr driven by progress(done, total) callbacks:
    `with Bar(n, "top-k") as tick: compute(progress=tick)`."""

    def __init__(self, total: int, what: str, unit: str = "feat"):
        self.total, self.what, self.unit = total, what, unit

    def __enter__(self) -> Progress:
        self.bar: Any = None  # made at the first update: a cached answer needs no tqdm
        return self.update

    def update(self, done: int, total: int) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, desc=self.what, unit=self.unit, file=sys.stderr,
                            disable=None, leave=False)  # fmt: skip
        if total != self.bar.total:
            self.bar.total = total
        self.bar.update(done - self.bar.n)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.bar is not None:
            self.bar.close()


def download_progress() -> DownloadProgress:
    """progress(done, total, what) for downloads, printed as a tqdm bar per file."""
    bars: dict[str, Any] = {}

    def update(done: int, total: int | None, what: str) -> None:
        bar = bars.get(what)
        if bar is None:
            from tqdm import tqdm

            bar = bars[what] = tqdm(total=total, desc=what, unit="B", unit_scale=True,
                                    file=sys.stderr, disable=None, leave=False)  # fmt: skip
        bar.update(done - bar.n)
        if total is not None and done >= total:
            bar.close()

    return update


Runner = Callable[[argparse.Namespace], int]
