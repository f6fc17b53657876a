"""sae_backend: load SAE dictionaries from any source and compare the geometry of their features.

Never imports streamlit: the dashboard, the CLI and the tests all read the same objects.
"""

from .loader import load

__all__ = ["load"]
