"""What a source is: the `Source` protocol every module in `sources/` satisfies.

A source turns a parsed URI of its scheme into local files a format can read, downloading
and caching when remote. Modules satisfy the protocol (PEP 544), and `sources/__init__.py`
maps schemes to them in one typed dict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..types import DownloadProgress
from ..uri import SourceRef


@dataclass
class Resolved:
    """Local files for a source, plus what the source itself knows about the SAE.

    path:          a local file or folder that a format reader can read.
    position:      the hook position to pick inside a multi-SAE file, when the source implies one.
    alive_indices: feature indices the source says are alive (e.g. a W&B run summary), or None.
    meta:          metadata that overrides the file's (run name, neuronpedia_id, hook, ...).
    """

    path: Path
    position: str | None = None
    alive_indices: list[int] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class Source(Protocol):
    """One URI scheme."""

    def resolve(self, ref: SourceRef, progress: DownloadProgress | None = None) -> Resolved:
        """Local files for `ref`; one SourceError line when they cannot be had."""
        ...
