"""File formats: one small module per SAE layout, listed in `FORMATS` in detection order.

Each module satisfies `base.Format`: `NAME`, `detect(path) -> bool` (cheap: file names, keys,
never full loads where avoidable) and `read(path, opts) -> RawSAE` (feature-row orientation).
A new format is one module plus one entry in `FORMATS`; the order is the detection order (most
specific first, the plain-matrix fallback last). The modules import torch, safetensors and
yaml inside their functions, so listing them here keeps `import sae_backend` light.
"""

from __future__ import annotations

from pathlib import Path

from ..dictionary import RawSAE
from ..errors import FormatError
from . import dictionary_learning, e2e_sae, gemma_scope, matrix, saelens, sparsify
from .base import Format, LoadOptions

FORMATS: tuple[Format, ...] = (
    e2e_sae,
    saelens,
    sparsify,
    dictionary_learning,
    gemma_scope,
    matrix,
)

__all__ = ["FORMATS", "Format", "LoadOptions", "format_names", "read_sae"]


def format_names() -> list[str]:
    return [f.NAME for f in FORMATS]


def read_sae(path: Path, opts: LoadOptions, format: str | None = None) -> tuple[RawSAE, str]:
    """Read `path` with the named format, or the first whose `detect` accepts it."""
    if format is not None:
        chosen = [f for f in FORMATS if f.NAME == format]
        if not chosen:
            raise FormatError(f"unknown format {format!r}; known: {', '.join(format_names())}")
    else:
        chosen = [f for f in FORMATS if f.detect(path)][:1]
        if not chosen:
            raise FormatError(
                f"{path}: not a recognised SAE file or folder (known formats: "
                f"{', '.join(format_names())})"
            )
    module = chosen[0]
    return module.read(path, opts), module.NAME
