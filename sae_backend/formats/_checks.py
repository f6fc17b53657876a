"""The shape contract: arrays leave the readers as finite float matrices in feature rows.

Every check raises one FormatError line naming the file, the key, the shape found and the
shape expected (with a hint when a matrix looks transposed), so a format module states only
its keys and orientation. Arrays come out as numpy float arrays (any float width; bf16 and
float8 widened to float32), 2-D where a matrix is asked for.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ..errors import fail, list_names
from ._safe_io import SafetensorsMatrix, torch_to_numpy


def json_safe(value: Any) -> Any:
    """Plain JSON-able copy of config values (numbers, strings, lists, dicts; others as str)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if np.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return json_safe(value.item())
    return str(value)


def is_array(value: Any) -> bool:
    """True for numpy arrays and torch tensors (never imports torch itself)."""
    return isinstance(value, np.ndarray) or _is_tensor(value)


def _is_tensor(value: Any) -> bool:
    torch = sys.modules.get("torch")  # a tensor can only exist once torch is imported
    return torch is not None and isinstance(value, torch.Tensor)


def to_numpy(value: Any, path: Path, key: str) -> np.ndarray:
    """A float numpy array from a tensor or array; non-float dtypes are a FormatError."""
    if isinstance(value, np.ndarray):
        arr = value
    elif _is_tensor(value):
        arr = torch_to_numpy(value, path, key)
    else:
        raise fail(path, f"{key} is a {type(value).__name__}, expected a tensor")
    if not np.issubdtype(arr.dtype, np.floating):
        raise fail(path, f"{key} has dtype {arr.dtype}, expected floating point weights")
    return arr


def matrix(value: Any, path: Path, key: str) -> np.ndarray:
    """A finite 2-D float array (raises naming the file and key otherwise)."""
    arr = to_numpy(value, path, key)
    if arr.ndim != 2:
        raise fail(path, f"{key} has shape {list(arr.shape)}, expected a 2-D matrix")
    if 0 in arr.shape:
        raise fail(path, f"{key} is empty (shape {list(arr.shape)})")
    _require_finite(arr, path, key)
    return arr


def lazy_matrix(value: SafetensorsMatrix, path: Path, key: str) -> SafetensorsMatrix:
    """`matrix` for a matrix read later: its shape is checked now, NaN/Inf as it is read
    (`SafetensorsMatrix.nonfinite` words the error as `matrix` does)."""
    if 0 in value.shape:
        raise fail(path, f"{key} is empty (shape {list(value.shape)})")
    return value


M = TypeVar("M", np.ndarray, SafetensorsMatrix)


def any_matrix(value: Any, path: Path, key: str) -> Any:
    """`lazy_matrix` for a matrix read later, else `matrix`."""
    if isinstance(value, SafetensorsMatrix):
        return lazy_matrix(value, path, key)
    return matrix(value, path, key)


def vector(value: Any, path: Path, key: str, n: int | None = None) -> np.ndarray:
    """A 1-D float array of length `n` (when given); NaN is rejected, +-inf allowed."""
    arr = to_numpy(value, path, key)
    if arr.ndim != 1:
        raise fail(path, f"{key} has shape {list(arr.shape)}, expected a vector")
    if n is not None and arr.shape[0] != n:
        raise fail(path, f"{key} has shape {list(arr.shape)}, expected [{n}]")
    if np.isnan(arr).any():
        raise fail(path, f"{key} contains {int(np.isnan(arr).sum())} NaN values")
    return arr


def _require_finite(arr: np.ndarray, path: Path, key: str) -> None:
    finite = np.isfinite(arr)
    if not finite.all():
        n_nan = int(np.isnan(arr).sum())
        n_inf = int((~finite).sum()) - n_nan
        raise fail(path, f"{key} contains {n_nan} NaN and {n_inf} Inf values")


def require_keys(
    mapping: Mapping[str, Any], keys: Iterable[str], path: Path, what: str = ""
) -> None:
    """Raise listing the expected keys that are missing and the keys that exist."""
    missing = [k for k in keys if k not in mapping]
    if missing:
        where = f" in {what}" if what else ""
        raise fail(
            path,
            f"missing key(s) {list_names(missing)}{where}; keys present: "
            f"{list_names(sorted(map(str, mapping)))}",
        )


def first_key(mapping: Mapping[str, Any], candidates: Iterable[str]) -> str | None:
    """The first of `candidates` present in `mapping`, else None."""
    return next((k for k in candidates if k in mapping), None)


def feature_rows(
    arr: M,
    path: Path,
    key: str,
    *,
    axes: tuple[str, str],
    feature_axis: int,
    d: int | None = None,
    n: int | None = None,
    why: str = "",
) -> M:
    """[n, d] feature rows from a stored 2-D matrix, checked against known sizes.

    axes:         names of the stored axes in file order, e.g. ("d_in", "n_dict").
    feature_axis: which stored axis indexes features (0: stored [n, d]; 1: stored [d, n]).
    d, n:         sizes the matrix must have (from a config, a bias or the other matrix);
                  a contradiction raises a FormatError naming file, key, found and expected.
    why:          where d/n came from, for the message (e.g. "d_in=12 from cfg.json").
    """
    rows = arr if feature_axis == 0 else arr.T
    if (d is None or rows.shape[1] == d) and (n is None or rows.shape[0] == n):
        return rows
    want = [str(n) if n is not None else "n", str(d) if d is not None else "d"]
    if feature_axis == 1:
        want.reverse()
    expected = f"[{', '.join(want)}] ([{axes[0]}, {axes[1]}])"
    hint = ""
    if (
        sorted(arr.shape) == sorted(x for x in (n, d) if x is not None)
        and arr.shape[0] != arr.shape[1]
    ):
        hint = "; it looks transposed"
    because = f", from {why}" if why else ""
    raise fail(path, f"{key} has shape {list(arr.shape)}, expected {expected}{because}{hint}")


def bias_length(state: Mapping[str, Any], keys: Iterable[str]) -> int | None:
    """Length of the first 1-D bias among `keys` (d_model when a decoder bias), else None."""
    for k in keys:
        v = state.get(k)
        if v is not None and is_array(v) and len(getattr(v, "shape", ())) == 1:
            return int(v.shape[0])
    return None


def config_int(cfg: Mapping[str, Any], key: str, path: Path, *, minimum: int = 0) -> int | None:
    """`cfg[key]` as an int of at least `minimum`, None when absent (a bool is no int)."""
    v = cfg.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        what = {0: "a non-negative integer", 1: "a positive integer"}.get(minimum, f">= {minimum}")
        raise fail(path, f"{key} is {v!r}, expected {what}")
    return v
