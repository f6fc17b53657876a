"""Types shared across the package: option values, progress callbacks, shaped arrays.

Why one module (as e2e_sae's `types.py`): an option such as `directions` is typed once as a
`Literal`, so readers and the type checker know its legal values wherever it is passed; the
runtime checks (`if directions not in DIRECTIONS`) stay for input from users.

Arrays carry their shape in the signature in jaxtyping's notation, `Float32[np.ndarray, "n d"]`:
rows are features everywhere. Static checkers see `Annotated[np.ndarray, "n d"]`, which is
how jaxtyping itself presents these names to them; at run time they are `Annotated` too, so
importing this module costs nothing (jaxtyping's import takes ~0.3 s, more than the whole
command-line start-up budget).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Literal, get_args

if TYPE_CHECKING:  # jaxtyping's own trick: the dtype names are Annotated to type checkers
    from typing import Annotated as Bool
    from typing import Annotated as Float
    from typing import Annotated as Float32
    from typing import Annotated as Float64
    from typing import Annotated as Int32
    from typing import Annotated as Int64
else:
    Bool = Float = Float32 = Float64 = Int32 = Int64 = Annotated

Directions = Literal["decoder", "encoder"]
"""Which feature directions: decoder rows (what a feature writes) or encoder rows (reads)."""
DIRECTIONS: tuple[Directions, ...] = get_args(Directions)

Precision = Literal["auto", "bf16", "fp32"]
"""The top-k engine's scoring path; every path returns the same exact float32 results."""
PRECISIONS: tuple[Precision, ...] = get_args(Precision)

TopkEngine = Literal["auto", "torch", "triton"]
"""Who runs the exact bf16 top-k path: torch operations, or the fused Triton kernels (CUDA);
`auto` takes Triton on CUDA when it is installed. Same bound, tie rule and results."""
TOPK_ENGINES: tuple[TopkEngine, ...] = get_args(TopkEngine)

TopkOrder = Literal["tiles", "rows"]
"""How a CPU top-k pass with two sides (within one set; both directions between two) orders
its work: `tiles` scores each pair once and serves the rows of both sides (topk_tiles.py),
`rows` scores each row against all (the one-sided pass). Same results."""
TOPK_ORDERS: tuple[TopkOrder, ...] = get_args(TopkOrder)

Orientation = Literal["rows", "columns"]
"""A plain matrix's layout: rows = [n_features, d_model], columns = [d_model, n_features]."""
ORIENTATIONS: tuple[Orientation, ...] = get_args(Orientation)

AuthMode = Literal["password", "oidc", "proxy", "none"]
"""How a hosted instance admits visitors (see `hosting.Hosted.auth`)."""
AUTH_MODES: tuple[AuthMode, ...] = get_args(AuthMode)

Progress = Callable[[int, int], None]
"""progress(done, total): called as long work advances (rows scanned, epochs run)."""

DownloadProgress = Callable[[int, "int | None", str], None]
"""progress(done_bytes, total_bytes or None, what): called while a source downloads."""

__all__ = [
    "AUTH_MODES",
    "DIRECTIONS",
    "ORIENTATIONS",
    "AuthMode",
    "Bool",
    "Directions",
    "DownloadProgress",
    "Float",
    "Float32",
    "Float64",
    "Int32",
    "Int64",
    "Orientation",
    "PRECISIONS",
    "Precision",
    "Progress",
    "TOPK_ENGINES",
    "TopkEngine",
    "TOPK_ORDERS",
    "TopkOrder",
]
