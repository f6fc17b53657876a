"""Local files and folders: nothing to fetch, only check that the path exists."""

from __future__ import annotations

from pathlib import Path

from ..errors import SourceError, one_line
from ..types import DownloadProgress
from ..uri import SourceRef
from .base import Resolved


def resolve(ref: SourceRef, progress: DownloadProgress | None = None) -> Resolved:
    path = Path(ref.parts[0])
    try:
        found = path.exists()
    except OSError as e:  # e.g. a name longer than the file system allows
        raise SourceError(f"{one_line(path, 300)}: not a usable path ({e.strerror})") from e
    if not found:
        raise SourceError(f"{one_line(path, 300)}: no such file or folder")
    return Resolved(path=path)
