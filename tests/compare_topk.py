"""compare()'s own top-k pass, replaced for a test (gated or slowed), and nobody else's.

`sae_backend.geometry.compare` imports `topk_cosine` from `sae_backend.geometry.topk` when it
computes (torch is not imported before then), so a test replaces it there; the replacement
sends the calls of other callers (random nulls, the rotation null, absorption, ...) to the
real function, so only comparisons (and what is computed through them: families, frames)
wait.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

COMPARE = "sae_backend.geometry.compare"


def compare_only(real: Callable[..., Any], instead: Callable[..., Any]) -> Callable[..., Any]:
    """A topk_cosine that runs `instead` when called from compare() and `real` otherwise."""

    def topk_cosine(*args: Any, **kwargs: Any) -> Any:
        caller = sys._getframe(1).f_globals.get("__name__")
        return (instead if caller == COMPARE else real)(*args, **kwargs)

    return topk_cosine
