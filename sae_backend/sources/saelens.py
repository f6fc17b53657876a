"""Remote source `saelens:` (parsed here; fetching lands with the remote-sources issue)."""

from __future__ import annotations

from ..errors import SourceError
from ..uri import SourceRef
from . import Progress, Resolved


def resolve(ref: SourceRef, progress: Progress | None = None) -> Resolved:
    raise SourceError(
        f"{ref}: loading from saelens: is not available yet; download the files and give a local path"
    )
