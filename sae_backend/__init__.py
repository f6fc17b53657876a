"""sae_backend: load SAE dictionaries from any source and compare the geometry of their features.

Never imports streamlit: the dashboard, the CLI and the tests all read the same objects.

    from sae_backend import load, compare, match
    a = load("wandb:sparsify/gpt2/tvj2owza")      # or a path, hf:..., saelens:...
    b = load("path/to/checkpoint#blocks.6.hook_resid_pre")
    res = compare(a, b, k=10)                     # res.max_cos, res.nearest, res.summary()
    m = match(a, b, forward=res)                  # one-to-one assignment
"""

from .dictionary import Dictionary
from .errors import SAEError
from .geometry.compare import Comparison, compare, match
from .geometry.topk import topk_cosine
from .loader import load

__all__ = ["Comparison", "Dictionary", "SAEError", "compare", "load", "match", "topk_cosine"]
