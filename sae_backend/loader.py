"""`load(uri) -> Dictionary`: the one entry point from a source string to a validated dictionary.

    parse_uri -> sources.resolve (local files) -> formats.read_sae (RawSAE) -> what the source
    knows (alive indices, metadata) -> Dictionary.from_raw (validation, normalisation)

Every expected failure is an SAEError with one line. A reader that trips over malformed input
with a low-level exception (KeyError, ValueError, OSError, zipfile/pickle errors, ...) is
turned into a FormatError naming the file; TypeError, AttributeError and the like are left
alone, because they mean a bug in our code, not in the user's file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from . import sources
from .cache import ArrayCache, make_key, resolve_cache
from .dictionary import Dictionary, RawSAE, unit_matrix
from .errors import FormatError, InputError, SAEError, one_line
from .formats import LoadOptions, read_sae
from .sources._download import PARTIAL_PREFIX
from .types import Directions, DownloadProgress, Orientation
from .uri import parse_uri

# Exceptions that malformed input can raise from deep inside numpy/torch/yaml/zipfile.
_DATA_ERRORS: tuple[type[BaseException], ...] = (
    KeyError,
    ValueError,  # includes UnicodeDecodeError, json.JSONDecodeError
    RuntimeError,
    OSError,
    EOFError,
    IndexError,
    OverflowError,
    zipfile.BadZipFile,
    pickle.UnpicklingError,
)


def load(
    uri: str,
    *,
    position: str | None = None,
    orientation: Orientation | None = None,
    key: str | None = None,
    format: str | None = None,
    progress: DownloadProgress | None = None,
    cache: ArrayCache | bool = True,
    on_read: Callable[[], None] | None = None,
) -> Dictionary:
    """Load the SAE dictionary named by `uri` (a local path or wandb:/hf:/saelens: URI).

    position:    which SAE in a file holding several (also `uri#POSITION`); dots or hyphens.
    orientation: for plain matrices only: "rows" ([n_features, d_model]) or "columns".
    key:         which array of a plain file holding several.
    format:      force a reader by name (see `sae_backend.formats.format_names()`).
    progress:    progress(done, total, what) callback for downloads.
    cache:       True: the default disk cache (keyed by the files' paths, sizes and mtimes
                 plus these options), False: none, or a given ArrayCache. It holds the
                 fingerprint and small arrays; the decoder and encoder rows are read from
                 the files when first used (`Dictionary.decoder`), the same way.
    on_read:     called before the files are read (no cache, or not in it): lets a caller
                 start what a computation will need (the CLI imports torch meanwhile).
    Raises an SAEError subclass (one-line message) for every expected problem.
    """
    if orientation is not None and orientation not in ("rows", "columns"):
        raise InputError(
            f"orientation must be 'rows' ([n_features, d_model]) or 'columns' "
            f"([d_model, n_features]), got {orientation!r}"
        )
    ref = parse_uri(uri)
    resolved = sources.resolve(ref, progress)
    opts = LoadOptions(
        position=position or ref.position or resolved.position,
        orientation=orientation,
        key=key,
    )

    identity = _files_identity(resolved.path)

    def reload(kind: Directions) -> np.ndarray:
        """The unit rows of `kind`, read again from the same, unchanged files."""
        if _files_identity(resolved.path) != identity:
            raise InputError(f"{ref}: its files changed since it was loaded; load it again")
        raw, _ = _read(resolved.path, opts, format)
        rows = raw.decoder if kind == "decoder" else raw.encoder
        if rows is None:
            raise FormatError(f"{ref}: this dictionary has no {kind} directions")
        with _data_errors(resolved.path):
            return unit_matrix(rows, kind, str(ref))

    def build() -> Dictionary:
        if on_read is not None:
            on_read()
        raw, name = _read(resolved.path, opts, format)
        if resolved.alive_indices is not None:
            raw.alive = _alive_mask(resolved.alive_indices, raw.decoder.shape[0], str(ref))
            raw.meta["alive_from"] = resolved.meta.get("alive_from", f"{ref.scheme} source")
        raw.meta.update({k: v for k, v in resolved.meta.items() if k != "alive_from"})
        with _data_errors(resolved.path):  # lazily read matrices are read here
            return Dictionary.from_raw(raw, source=str(ref), format=name, reload=reload)

    store = resolve_cache(cache)
    if store is None:
        return build()
    cache_key = make_key(
        "dictionary",
        identity,
        source=str(ref),
        position=opts.position,
        orientation=orientation,
        key=key,
        format=format,
        source_says=_digest(repr((resolved.alive_indices, sorted(resolved.meta.items())))),
        entry="without unit rows",  # read on first use, from the files (dictionary.py)
    )
    built: list[Dictionary] = []  # a dictionary read now keeps the unit decoder it made

    def compute() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        built.append(build())
        return built[0].to_entry()

    arrays, info = store.get_or_compute(cache_key, compute)
    return built[0] if built else Dictionary.from_entry(arrays, info, reload)


def _files_identity(path: Path, limit: int = 2000) -> str:
    """Digest of the paths, sizes and mtimes of what a reader may open for `path`: the file
    and its folder's other files, or a folder's files two levels down. A changed file changes
    the digest, so a cached dictionary is never served for edited weights or configs."""
    path = path.resolve()
    top = path if path.is_dir() else path.parent
    entries = []
    for root, dirs, files in os.walk(top):
        depth = len(Path(root).relative_to(top).parts)
        # a download in progress (or one a killed process left) is nothing a reader opens
        dirs[:] = [] if depth >= (2 if path.is_dir() else 0) else _not_partial(dirs)
        for name in sorted(_not_partial(files)):
            try:
                st = os.stat(os.path.join(root, name))
            except OSError:  # a dangling symlink, a file gone since the listing: unreadable anyway
                continue
            entries.append(f"{os.path.join(root, name)}|{st.st_size}|{st.st_mtime_ns}")
            if len(entries) >= limit:
                break
    return _digest("\n".join(sorted(entries)) + f"\n{path}")


def _not_partial(names: list[str]) -> list[str]:
    return [n for n in names if not n.startswith(PARTIAL_PREFIX)]


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _read(path: Path, opts: LoadOptions, format: str | None) -> tuple[RawSAE, str]:
    """read_sae with low-level data errors turned into one FormatError line naming `path`."""
    with _data_errors(path):
        return read_sae(path, opts, format)


@contextlib.contextmanager
def _data_errors(path: Path) -> Iterator[None]:
    """Low-level data errors inside as one FormatError line naming `path`."""
    try:
        yield
    except SAEError:
        raise
    except _DATA_ERRORS as e:
        reason = one_line(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__, 200)
        raise FormatError(f"{path}: not a readable SAE file ({reason})") from e


def _alive_mask(indices: list[int], n: int, source: str) -> np.ndarray:
    """[n] bool mask from the alive feature indices a source reported."""
    idx = np.asarray(indices)
    if idx.size and not np.issubdtype(idx.dtype, np.integer):
        raise FormatError(f"{source}: alive feature indices must be integers, got {idx.dtype}")
    idx = idx.astype(np.int64).reshape(-1)
    bad = idx[(idx < 0) | (idx >= n)]
    if bad.size:
        raise FormatError(
            f"{source}: alive feature index {int(bad[0])} is out of range for {n} features "
            f"({bad.size} such indices)"
        )
    mask = np.zeros(n, dtype=bool)
    mask[idx] = True
    return mask
