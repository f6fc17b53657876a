"""Sources: turn a parsed URI into local files (downloading and caching when remote).

One module per scheme, each satisfying `base.Source` (`resolve(ref, progress) -> Resolved`);
`SOURCES` maps schemes to modules, so a new source is one module plus one entry there. The
modules import their client libraries (wandb, huggingface_hub) inside their functions, so
listing them here keeps `import sae_backend` light.
"""

from __future__ import annotations

from ..errors import URIError
from ..types import DownloadProgress
from ..uri import SourceRef
from . import hf, local, saelens, wandb
from .base import Resolved, Source

SOURCES: dict[str, Source] = {"local": local, "wandb": wandb, "hf": hf, "saelens": saelens}

__all__ = ["SOURCES", "Resolved", "Source", "resolve"]


def resolve(ref: SourceRef, progress: DownloadProgress | None = None) -> Resolved:
    """Resolve any SourceRef to local files via its scheme's module."""
    source = SOURCES.get(ref.scheme)
    if source is None:
        raise URIError(f"no source handles scheme {ref.scheme!r}")
    return source.resolve(ref, progress)
