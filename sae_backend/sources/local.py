"""Local files and folders: nothing to fetch, only check that the path exists."""

from __future__ import annotations

from pathlib import Path

from ..errors import SourceError
from ..uri import SourceRef
from . import Progress, Resolved


def resolve(ref: SourceRef, progress: Progress | None = None) -> Resolved:
    path = Path(ref.parts[0])
    if not path.exists():
        raise SourceError(f"{path}: no such file or folder")
    return Resolved(path=path)
