"""A plain decoder matrix: `.npy`, `.npz`, `.safetensors` or a torch file (last in detection).

A bare matrix does not say which axis indexes features, so we never guess: the user says
`orientation` ("rows" = [n_features, d_model], "columns" = [d_model, n_features]). A file
holding several arrays needs `key` to name the one to use.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..dictionary import RawSAE
from ..errors import InputError, fail, list_names
from ._checks import is_array, matrix
from ._safe_io import (
    TORCH_SUFFIXES,
    load_npy,
    load_npz,
    load_safetensors,
    load_torch,
    safetensors_header,
)
from .base import LoadOptions

NAME = "matrix"

SUFFIXES = (".npy", ".npz", ".safetensors", *TORCH_SUFFIXES)
ORIENTATIONS = {"rows": "[n_features, d_model]", "columns": "[d_model, n_features]"}


def detect(path: Path) -> bool:
    """Any file with a matrix suffix: this is the fallback, so it must come last."""
    return path.is_file() and path.suffix.lower() in SUFFIXES


def read(path: Path, opts: LoadOptions) -> RawSAE:
    if not path.is_file():
        raise fail(path, f"expected a matrix file ({', '.join(SUFFIXES)}), found a folder")
    if opts.orientation is not None and opts.orientation not in ORIENTATIONS:
        raise InputError(
            f"orientation {opts.orientation!r} is not one of: rows {ORIENTATIONS['rows']}, "
            f"columns {ORIENTATIONS['columns']}"
        )
    key, value = _pick(path, opts.key)
    label = key or "the array"
    mat = matrix(value, path, label)
    if opts.orientation is None:
        raise fail(
            path,
            f"a plain matrix of shape {list(mat.shape)} does not say which axis is features: "
            "give the orientation (CLI --orientation rows|columns; load(..., orientation=...)): "
            f"rows = {ORIENTATIONS['rows']}, columns = {ORIENTATIONS['columns']}",
        )
    rows = mat if opts.orientation == "rows" else mat.T
    meta = {
        "key": key,
        "orientation": opts.orientation,
        "d_in": int(rows.shape[1]),
        "d_sae": int(rows.shape[0]),
    }
    return RawSAE(decoder=rows, meta={k: v for k, v in meta.items() if v is not None})


def _pick(path: Path, key: str | None) -> tuple[str | None, Any]:
    """(key or None for a bare array, the array) from any supported container."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        if key is not None:
            raise fail(path, f"an .npy file holds one unnamed array; drop the key {key!r}")
        return None, load_npy(path)
    if suffix == ".safetensors":
        names = sorted(safetensors_header(path))
        chosen = _choose(path, names, key)
        return chosen, load_safetensors(path, [chosen])[chosen]
    if suffix == ".npz":
        arrays: Mapping[str, Any] = load_npz(path)
    else:
        obj = load_torch(path)
        if is_array(obj):
            if key is not None:
                raise fail(path, f"the file holds one unnamed tensor; drop the key {key!r}")
            return None, obj
        if not isinstance(obj, Mapping):
            raise fail(path, f"expected a tensor or a dict of tensors, found {type(obj).__name__}")
        arrays = {str(k): v for k, v in obj.items() if is_array(v)}
    chosen = _choose(path, sorted(arrays), key)
    return chosen, arrays[chosen]


def _choose(path: Path, names: list[str], key: str | None) -> str:
    if key is not None:
        if key not in names:
            raise fail(path, f"no array named {key!r}; arrays present: {list_names(names, 30)}")
        return key
    if len(names) == 1:
        return names[0]
    if not names:
        raise fail(path, "holds no arrays")
    raise fail(
        path,
        f"holds {len(names)} arrays ({list_names(names, 30)}); name one with "
        f"--key KEY (load(..., key=...)), e.g. --key {names[0]}",
    )
