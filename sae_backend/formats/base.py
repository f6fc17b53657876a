"""What a file format is: the `Format` protocol every module in `formats/` satisfies.

A format is a module (PEP 544 lets a module satisfy a Protocol) with a `NAME`, a cheap
`detect` and a `read` that returns raw arrays in feature-row orientation. `formats/__init__.py`
lists the modules in one typed tuple, so the type checker checks each against this protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..dictionary import RawSAE
from ..types import Orientation


@dataclass(frozen=True)
class LoadOptions:
    """Options a user can give when a file alone does not say enough.

    position:    which SAE in a file or folder holding several (a hook position, dots or
                 hyphens, or a subfolder such as a seed).
    orientation: for plain matrices: "rows" = [n_features, d_model], "columns" = [d_model, n_features].
    key:         which array to take from a plain file holding several.
    """

    position: str | None = None
    orientation: Orientation | None = None
    key: str | None = None


class Format(Protocol):
    """One SAE file layout."""

    NAME: str
    """Short name, for `load(..., format=NAME)` and `Metadata.format`."""

    def detect(self, path: Path) -> bool:
        """Whether `path` (a file or folder) is in this format: cheap (names, headers, keys),
        never a full load, and never raises."""
        ...

    def read(self, path: Path, opts: LoadOptions) -> RawSAE:
        """The SAE at `path` in feature-row orientation; a FormatError line for bad files."""
        ...
