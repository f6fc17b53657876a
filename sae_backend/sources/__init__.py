"""Sources: turn a parsed URI into local files (downloading and caching when remote).

One module per scheme, each with `resolve(ref, progress) -> Resolved`; the registry below maps
schemes to modules, so a new source is one module plus one line here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import URIError
from ..uri import SourceRef

# progress(done, total, what): called during long work (downloads); total may be None.
Progress = Callable[[int, "int | None", str], None]


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


def resolve(ref: SourceRef, progress: Progress | None = None) -> Resolved:
    """Resolve any SourceRef to local files via its scheme's module."""
    from . import hf, local, saelens, wandb  # local imports keep `import sae_backend` light

    registry = {"local": local, "wandb": wandb, "hf": hf, "saelens": saelens}
    module = registry.get(ref.scheme)
    if module is None:
        raise URIError(f"no source handles scheme {ref.scheme!r}")
    return module.resolve(ref, progress)
