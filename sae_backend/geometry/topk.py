"""Exact top-k cosine neighbours between two sets of unit directions, in blocks.

No n_a x n_b matrix is ever held: rows of A are processed in blocks against all of B.
(Placeholder fp32 path; the fast exact bf16 path lands next with the same signature.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch


class TopK(NamedTuple):
    """Nearest neighbours of each row of A among the rows of B.

    values:  [n_a, k] float32 cosines, descending (ties: lower index first).
    indices: [n_a, k] int64 row indices into B.
    """

    values: np.ndarray
    indices: np.ndarray


def topk_cosine(
    a: np.ndarray,
    b: np.ndarray | None = None,
    k: int = 1,
    *,
    device: str = "auto",
    precision: str = "auto",
    block_rows: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> TopK:
    """Top-k cosine neighbours of each row of `a` [n_a, d] among rows of `b` [n_b, d].

    Rows must already be unit norm (Dictionary rows are). `b=None` compares `a` with itself
    and excludes each row's own index. Results equal a float64 reference to ~1e-6.
    """
    self_mode = b is None
    b = a if b is None else b
    n_a, n_b = a.shape[0], b.shape[0]
    limit = n_b - 1 if self_mode else n_b
    if not 1 <= k <= limit:
        raise ValueError(f"k={k} must be between 1 and {limit}")
    ta = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    tb = torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32))
    bm = block_rows or 1024
    values = np.empty((n_a, k), np.float32)
    indices = np.empty((n_a, k), np.int64)
    for r0 in range(0, n_a, bm):
        r1 = min(n_a, r0 + bm)
        s = ta[r0:r1] @ tb.T
        if self_mode:
            s[torch.arange(r1 - r0), torch.arange(r0, r1)] = -torch.inf
        v, i = torch.topk(s, k, dim=1)
        values[r0:r1], indices[r0:r1] = v.numpy(), i.numpy()
        if progress:
            progress(r1, n_a)
    return TopK(values, indices)
