"""File formats: a registry of small modules, each able to detect and read one SAE layout.

A format module defines `NAME`, `detect(path) -> bool` (cheap: file names, keys, never full
loads where avoidable) and `read(path, opts) -> RawSAE` (feature-row orientation). A new format
is one module plus one line in `_MODULES`; the order there is the detection order (most
specific first, the plain-matrix fallback last).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from ..dictionary import RawSAE
from ..errors import FormatError


@dataclass(frozen=True)
class LoadOptions:
    """Options a user can give when a file alone does not say enough.

    position:    which SAE in a file holding several (hook position, dots or hyphens).
    orientation: for plain matrices: "rows" = [n_features, d_model], "columns" = [d_model, n_features].
    key:         which array to take from a plain file holding several.
    """

    position: str | None = None
    orientation: str | None = None
    key: str | None = None


_MODULES = [
    "e2e_sae",
    "saelens",
    "sparsify",
    "dictionary_learning",
    "gemma_scope",
    "matrix",
]


def registry() -> list[ModuleType]:
    """The format modules in detection order."""
    return [importlib.import_module(f"{__name__}.{m}") for m in _MODULES]


def format_names() -> list[str]:
    return [m.NAME for m in registry()]


def read_sae(path: Path, opts: LoadOptions, format: str | None = None) -> tuple[RawSAE, str]:
    """Read `path` with the named format, or the first whose `detect` accepts it."""
    modules = registry()
    if format is not None:
        chosen = [m for m in modules if m.NAME == format]
        if not chosen:
            raise FormatError(f"unknown format {format!r}; known: {', '.join(format_names())}")
    else:
        chosen = [m for m in modules if m.detect(path)][:1]
        if not chosen:
            raise FormatError(
                f"{path}: not a recognised SAE file or folder (known formats: "
                f"{', '.join(format_names())})"
            )
    module = chosen[0]
    return module.read(path, opts), module.NAME
