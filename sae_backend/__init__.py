"""sae_backend: load SAE dictionaries from any source and compare the geometry of their features.

Never imports streamlit (a lint rule enforces it): the dashboard, the CLI and the tests all
read the same objects.

    from sae_backend import load, compare, match
    a = load("wandb:sparsify/gpt2/tvj2owza")      # or a path, hf:..., saelens:...
    b = load("path/to/checkpoint#blocks.6.hook_resid_pre")
    res = compare(a, b, k=10)                     # res.max_cos, res.nearest, res.summary()
    m = match(a, b, forward=res)                  # one-to-one assignment

The names below are imported on first use (PEP 562), so `import sae_backend` (and the CLI's
start-up) does not pay for torch until a computation needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .dictionary import Dictionary
    from .errors import SAEError
    from .geometry.compare import Comparison, compare, match
    from .geometry.topk import topk_cosine
    from .loader import load

_WHERE = {
    "Comparison": ".geometry.compare",
    "Dictionary": ".dictionary",
    "SAEError": ".errors",
    "compare": ".geometry.compare",
    "load": ".loader",
    "match": ".geometry.compare",
    "topk_cosine": ".geometry.topk",
}

__all__ = ["Comparison", "Dictionary", "SAEError", "compare", "load", "match", "topk_cosine"]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
