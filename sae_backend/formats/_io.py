"""Safe, shared I/O for the format readers: every expected failure becomes one FormatError line.

Why one module: the safety rules (no arbitrary unpickling, no pickled numpy objects) and the
error wording live in one place, so each format module only says which keys it wants and how
its matrices are oriented.

- torch files:   `torch.load(path, map_location="cpu", weights_only=True)` only (mmap for zip files).
- safetensors:   the safetensors library; tensors come through torch so bf16 works (as float32).
- numpy:         `np.load(..., allow_pickle=False)`.
- configs:       `json.load`, `yaml.safe_load`.

Arrays leave this module as numpy float arrays (any float width; bf16 and float8 widened to
float32), 2-D where a matrix is asked for, finite, with a message naming file, key and shape
otherwise. torch is imported lazily so detection and `import sae_backend` stay light.
"""

from __future__ import annotations

import json
import pickle
import pickletools
import re
import sys
import warnings
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FormatError

TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
_MAX_PEEK_BYTES = 64 * 1024 * 1024  # the pickle part of a torch zip (keys only, no tensor data)
_MAX_MESSAGE = 240


# ----------------------------------------------------------------------------- messages


def one_line(text: object, limit: int = _MAX_MESSAGE) -> str:
    """Collapse whitespace to single spaces and cut to `limit` characters."""
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def fail(path: Path | str, message: str) -> FormatError:
    """A FormatError whose one-line message starts with the file at fault."""
    return FormatError(f"{path}: {one_line(message, 400)}")


def list_names(names: Iterable[str], limit: int = 12) -> str:
    """'a, b, c' (at most `limit` names, then '... (N more)'), or '(none)'."""
    names = [str(n) for n in names]
    if not names:
        return "(none)"
    head = ", ".join(names[:limit])
    return head if len(names) <= limit else f"{head}, ... ({len(names) - limit} more)"


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {one_line(exc, 160)}" if str(exc) else type(exc).__name__


# ----------------------------------------------------------------------------- torch


def load_torch(path: Path) -> Any:
    """Load a torch file without running code from it (weights_only=True, CPU, mmap when zip)."""
    import torch

    _require_file(path)
    kind = _torch_kind(path)
    if kind == "broken zip":
        raise fail(path, "truncated or corrupted PyTorch zip archive (no zip directory found)")
    if kind is None:
        raise fail(path, "not a PyTorch file (neither a torch.save zip archive nor a pickle)")
    try:
        with warnings.catch_warnings():  # plain pickles (protocol > 2) make torch warn; harmless
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=kind == "zip")
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower() or "weights_only" in str(e).lower():
            found = re.search(r"GLOBAL ([\w.]+)", str(e))
            what = f" (it asks for {found.group(1)})" if found else ""
            raise fail(
                path,
                "refused: this file's pickle wants to run code or build arbitrary objects"
                f"{what}, and this loader refuses to run code from pickles; "
                "re-save it as a plain state dict of tensors (or safetensors)",
            ) from e
        raise fail(path, f"corrupted PyTorch pickle ({_reason(e)})") from e
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, IndexError) as e:
        raise fail(path, f"truncated or corrupted PyTorch file ({_reason(e)})") from e
    except zipfile.BadZipFile as e:
        raise fail(path, f"truncated or corrupted PyTorch zip archive ({_reason(e)})") from e


def torch_pickle_strings(path: Path) -> set[str] | None:
    """Strings in a torch zip file's pickle (its dict keys among them), read without unpickling.

    Cheap detection: reads only `*/data.pkl` (no tensor data) and walks its opcodes with
    pickletools, which never executes anything. None when the file is not a torch zip.
    """
    try:
        if not path.is_file() or not zipfile.is_zipfile(path):
            return None
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.endswith("data.pkl")]
            if not names:
                return None
            info = zf.getinfo(names[0])
            if info.file_size > _MAX_PEEK_BYTES:
                return None
            data = zf.read(info)
        out: set[str] = set()
        for op, arg, _ in pickletools.genops(data):
            if isinstance(arg, str) and "UNICODE" in op.name:
                out.add(arg)
        return out
    except Exception:  # detection must never raise: an unreadable file is just "not mine"
        return None


def _torch_kind(path: Path) -> str | None:
    """'zip' (torch.save), 'broken zip' (zip header, no directory: truncated), 'pickle'
    (legacy torch.save or a plain pickle), or None when it is neither (e.g. text)."""
    if zipfile.is_zipfile(path):
        return "zip"
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"PK\x03\x04":
        return "broken zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    return None


# ----------------------------------------------------------------------------- safetensors


def safetensors_header(path: Path) -> dict[str, tuple[list[int], str]]:
    """{key: (shape, dtype)} from the header only (no tensor data read)."""
    from safetensors import SafetensorError, safe_open

    _require_file(path)
    try:
        with safe_open(str(path), framework="numpy") as f:
            out = {}
            for k in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                sl = f.get_slice(k)
                out[k] = (list(sl.get_shape()), str(sl.get_dtype()))
            return out
    except (SafetensorError, OSError, ValueError) as e:
        raise fail(path, f"not a readable safetensors file ({_reason(e)})") from e


def safetensors_keys(path: Path) -> set[str] | None:
    """Header keys for detection; None when the file is not readable safetensors."""
    try:
        return set(safetensors_header(path))
    except FormatError:
        return None


def load_safetensors(path: Path, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Selected tensors (all when `keys` is None) as numpy arrays; bf16 and the like as float32."""
    from safetensors import SafetensorError, safe_open

    _require_file(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            present = list(f.keys())  # noqa: SIM118
            wanted = present if keys is None else [k for k in keys if k in present]
            return {k: _torch_to_numpy(f.get_tensor(k), path, k) for k in wanted}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise fail(path, f"truncated or corrupted safetensors file ({_reason(e)})") from e


# ----------------------------------------------------------------------------- numpy


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of an .npz (no pickled objects)."""
    _require_file(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise fail(path, "expected an .npz archive, found a single .npy array")
            return {k: z[k] for k in z.files}
    except FormatError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise fail(path, f"truncated or corrupted .npz file ({_reason(e)})") from e


def npz_keys(path: Path) -> set[str] | None:
    """Array names of an .npz from its zip listing (cheap); None when not an .npz."""
    try:
        if not path.is_file() or not zipfile.is_zipfile(path):
            return None
        with zipfile.ZipFile(path) as zf:
            return {n[:-4] for n in zf.namelist() if n.endswith(".npy")}
    except Exception:  # detection must never raise
        return None


def load_npy(path: Path) -> np.ndarray:
    """One array from an .npy (no pickled objects)."""
    _require_file(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise fail(path, f"truncated or corrupted .npy file ({_reason(e)})") from e
    if not isinstance(arr, np.ndarray):
        raise fail(path, "expected a single .npy array")
    return arr


# ----------------------------------------------------------------------------- configs


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a config file."""
    _require_file(path)
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (ValueError, OSError) as e:
        raise fail(path, f"not a readable JSON config ({_reason(e)})") from e
    if not isinstance(obj, dict):
        raise fail(path, f"expected a JSON object, found {type(obj).__name__}")
    return obj


def read_yaml(path: Path) -> dict[str, Any]:
    """A mapping from a YAML config file (safe_load: plain data only)."""
    import yaml

    _require_file(path)
    try:
        with open(path, encoding="utf-8") as f:
            obj = yaml.safe_load(f)
    except (yaml.YAMLError, ValueError, OSError) as e:
        raise fail(path, f"not a readable YAML config ({_reason(e)})") from e
    if not isinstance(obj, dict):
        raise fail(path, f"expected a YAML mapping, found {type(obj).__name__}")
    return obj


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


# ----------------------------------------------------------------------------- arrays


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
        arr = _torch_to_numpy(value, path, key)
    else:
        raise fail(path, f"{key} is a {type(value).__name__}, expected a tensor")
    if not np.issubdtype(arr.dtype, np.floating):
        raise fail(path, f"{key} has dtype {arr.dtype}, expected floating point weights")
    return arr


def _torch_to_numpy(t: Any, path: Path, key: str) -> np.ndarray:
    import torch

    t = t.detach().cpu()
    if not t.is_floating_point():
        raise fail(path, f"{key} has dtype {str(t.dtype).removeprefix('torch.')}, expected float")
    if t.dtype not in (torch.float16, torch.float32, torch.float64):
        t = t.to(torch.float32)  # bf16 / float8: numpy has no such dtype
    return t.numpy()


def matrix(value: Any, path: Path, key: str) -> np.ndarray:
    """A finite 2-D float array (raises naming the file and key otherwise)."""
    arr = to_numpy(value, path, key)
    if arr.ndim != 2:
        raise fail(path, f"{key} has shape {list(arr.shape)}, expected a 2-D matrix")
    if 0 in arr.shape:
        raise fail(path, f"{key} is empty (shape {list(arr.shape)})")
    _require_finite(arr, path, key)
    return arr


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
    arr: np.ndarray,
    path: Path,
    key: str,
    *,
    axes: tuple[str, str],
    feature_axis: int,
    d: int | None = None,
    n: int | None = None,
    why: str = "",
) -> np.ndarray:
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


# ----------------------------------------------------------------------------- names & paths


_LAYER = re.compile(r"(?:^|[^a-z])(?:(?:blocks?|layers?)[._-]?|h\.)(\d+)(?![0-9])", re.I)


def layer_from(text: str | None) -> int | None:
    """Layer index from a hook or path: blocks.6.hook_resid_pre, layers.6, layer_6, h.6 -> 6.

    In a path the last match wins (the part nearest the file is the most specific).
    """
    if not text:
        return None
    found = _LAYER.findall(str(text))
    return int(found[-1]) if found else None


def _require_file(path: Path) -> None:
    if not path.exists():
        raise fail(path, "no such file")
    if not path.is_file():
        raise fail(path, "expected a file, found a folder")


def holds(folder: Path, marker: str) -> bool:
    """Whether `folder` holds `marker`, itself or in a subfolder (one SAE per subfolder)."""
    return (folder / marker).is_file() or any((p / marker).is_file() for p in folder.iterdir())


def detect_weights(path: Path, marker: str, keys: set[str]) -> bool:
    """A folder holding `marker` (or subfolders that do), a file named `marker`, or a
    .safetensors file whose header has all of `keys`: the layout of safetensors formats."""
    if path.is_dir():
        return holds(path, marker)
    if path.name == marker:
        return True
    return path.suffix == ".safetensors" and keys <= (safetensors_keys(path) or set())


def weights_file(path: Path, marker: str, position: str | None) -> tuple[Path, Path, str | None]:
    """(folder, weights file, chosen subfolder or None) for a folder or a file named directly."""
    if path.is_dir():
        folder, chosen = pick_subfolder(path, marker, position)
        return folder, folder / marker, chosen
    return path.parent, path, None


def pick_subfolder(path: Path, marker: str, position: str | None) -> tuple[Path, str | None]:
    """Resolve a folder holding one SAE per subfolder (each with `marker`) to one of them.

    Returns (folder holding `marker`, chosen subfolder name or None). `position` matches a
    subfolder name with dots and hyphens treated alike; without it, several choices raise
    listing them and how to pick one (SRC#POSITION).
    """
    if (path / marker).is_file():
        return path, None
    subs = sorted(p.name for p in path.iterdir() if (p / marker).is_file())
    if not subs:
        raise fail(path, f"no {marker} here or in any subfolder")
    if position is not None:
        norm = position_key(position)
        for s in subs:
            if position_key(s) == norm:
                return path / s, s
        raise fail(path, f"no SAE for position {position!r}; available: {list_names(subs, 20)}")
    if len(subs) == 1:
        return path / subs[0], subs[0]
    raise fail(
        path,
        f"holds {len(subs)} SAEs ({list_names(subs, 20)}); pick one with SRC#POSITION, "
        f"e.g. {path}#{subs[0]}",
    )


def position_key(position: str) -> str:
    """Comparable form of a hook position: dots and hyphens are the same separator."""
    return position.strip().replace("-", ".")


def sibling_config(path: Path, names: Iterable[str], levels: int = 1) -> Path | None:
    """The first existing config file among `names` beside `path` or up to `levels` parents."""
    folder = path if path.is_dir() else path.parent
    for _ in range(levels + 1):
        for n in names:
            if (folder / n).is_file():
                return folder / n
        folder = folder.parent
    return None
