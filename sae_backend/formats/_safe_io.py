"""Safe readers for SAE files: the security boundary. No pickled code ever runs here.

Why one module: the safety rules (no arbitrary unpickling, no pickled numpy objects, no
allocation a hostile file cannot justify) and their wording live in one place, so each format
module only says which keys it wants and how its matrices are oriented.

- torch files:   `torch.load(path, map_location="cpu", weights_only=True)` only (mmap for zip files).
- safetensors:   the safetensors library; tensors come through torch so bf16 works (as float32).
- numpy:         `np.load(..., allow_pickle=False)`.
- configs:       `json.load`, `yaml.safe_load`.

Hostile files must not cost memory they cannot justify. Before any array is read, its declared
size is checked: every array and zip member at most `settings.MAX_ARRAY_BYTES` (env
SAE_MAX_ARRAY_BYTES), an .npy header's shape no bigger than the data behind it, and a zip
member (npz, torch.save archive) inflating at most MAX_INFLATE_RATIO times its compressed
size (a zip bomb deflates zeros about 1000x; real float weights barely 2x). zipfile stops
inflating at a member's declared size, so checked declared sizes bound what is inflated.
torch is imported lazily so detection and `import sae_backend` stay light.
"""

from __future__ import annotations

import json
import lzma
import math
import os
import pickle
import pickletools
import re
import tokenize
import warnings
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .. import settings
from ..errors import FormatError, fail, one_line

TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
_MAX_PEEK_BYTES = 64 * 1024 * 1024  # the pickle part of a torch zip (keys only, no tensor data)
ENV_MAX_ARRAY_BYTES = settings.MAX_ARRAY_BYTES.name  # raises the per-array limit (bytes)
MAX_INFLATE_RATIO = 100  # inflated / compressed size above which a zip member is a bomb...
_INFLATE_FLOOR = 64 * 2**20  # ...unless it inflates to at most this much anyway
# What malformed data raises inside numpy, torch and zipfile (RuntimeError includes zipfile's
# NotImplementedError for unknown compression methods and encrypted members; a corrupt
# compressed member raises its decompressor's own error). MemoryError is caught apart, as a
# last resort for a size no check foresaw that is still too big.
_READ_ERRORS = (
    ValueError,
    OSError,
    EOFError,
    KeyError,
    IndexError,
    RuntimeError,
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    SyntaxError,  # numpy parses an .npy header with ast.literal_eval,
    tokenize.TokenError,  # and a damaged one with tokenize
)


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {one_line(exc, 160)}" if str(exc) else type(exc).__name__


def _require_file(path: Path) -> None:
    if not path.exists():
        raise fail(path, "no such file")
    if path.is_dir():
        raise fail(path, "expected a file, found a folder")
    if not path.is_file():  # reading a pipe or a device could block or never end
        raise fail(path, "expected a regular file, found a pipe, socket or device")


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
        # torch.save writes members uncompressed; torch's mmap path reads a compressed member's
        # raw bytes as tensor data, so a re-zipped archive is inflated (after the zip checks).
        mmap = kind == "zip" and _zip_stored_only(path)
    except _READ_ERRORS as e:
        raise fail(path, f"truncated or corrupted PyTorch zip archive ({_reason(e)})") from e
    try:
        with warnings.catch_warnings():  # plain pickles (protocol > 2) make torch warn; harmless
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
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
    except zipfile.BadZipFile as e:
        raise fail(path, f"truncated or corrupted PyTorch zip archive ({_reason(e)})") from e
    except MemoryError as e:
        raise _out_of_memory(path, e) from e
    except Exception as e:  # torch.load of damaged bytes raises nearly anything: struct.error,
        # AssertionError, TypeError from a rebuild call with the wrong arguments, ...
        raise fail(path, f"truncated or corrupted PyTorch file ({_reason(e)})") from e


def _zip_stored_only(path: Path) -> bool:
    """Check a torch zip's members (see `check_zip`); True when none is compressed."""
    with zipfile.ZipFile(path) as zf:
        check_zip(path, zf)
        return all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())


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
            check_zip(path, zf)
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


def torch_to_numpy(t: Any, path: Path, key: str) -> np.ndarray:
    import torch

    t = t.detach().cpu()
    if not t.is_floating_point():
        raise fail(path, f"{key} has dtype {str(t.dtype).removeprefix('torch.')}, expected float")
    if t.dtype not in (torch.float16, torch.float32, torch.float64):
        t = t.to(torch.float32)  # bf16 / float8: numpy has no such dtype
    return t.numpy()


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
        raise fail(path, f"not a readable safetensors file ({_safetensors_reason(e)})") from e


# The library checks a header against the file (offsets, sizes, overflow) before any tensor is
# read; these are its findings in words a user can act on.
_SAFETENSORS_REASONS = {
    "not fully covered": "truncated or padded: the header's tensors do not cover the data exactly",
    "invalid shape, data type, or offset": "corrupted header: a tensor's shape and dtype do not "
    "fit its byte range",
    "overflow": "corrupted header: a tensor's declared size overflows",
}


def _safetensors_reason(e: BaseException) -> str:
    text = str(e)
    found = next((v for k, v in _SAFETENSORS_REASONS.items() if k in text.lower()), None)
    return f"{found}; {_reason(e)}" if found else _reason(e)


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
            for k in wanted:
                sl = f.get_slice(k)
                itemsize = _SAFETENSORS_ITEMSIZE.get(str(sl.get_dtype()), 8)
                check_array_size(path, k, sl.get_shape(), str(sl.get_dtype()), itemsize)
            return {k: torch_to_numpy(f.get_tensor(k), path, k) for k in wanted}
    except FormatError:
        raise
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise fail(
            path, f"truncated or corrupted safetensors file ({_safetensors_reason(e)})"
        ) from e
    except MemoryError as e:
        raise _out_of_memory(path, e) from e


class SafetensorsMatrix:
    """A 2-D float tensor of a safetensors file, read a range of rows at a time, on demand.

    Why: a dictionary's decoder and encoder are 140 MB each at the paper's size; reading them
    whole (and mmapped: mapped pages count as the process's memory) costs memory a decoder
    comparison does not need. Rows come from plain `preadv` calls into fresh arrays, so only
    what is asked for is ever resident. `.T` is the transposed view (a stored [d, n] encoder
    read as [n, d] feature rows, a column range at a time). The file was validated by the
    safetensors library (`safetensors_header`) before one of these is made; the offsets are
    checked again against the file's size here.
    """

    def __init__(
        self, path: Path, key: str, shape: tuple[int, int], dtype: str, start: int,
        transposed: bool = False,
    ):  # fmt: skip
        self.path, self.key, self.stored_shape, self.stored_dtype = path, key, shape, dtype
        self.start, self.transposed = start, transposed
        self.file_dtype = _NUMPY_DTYPES[dtype]
        self.dtype = np.dtype(np.float32) if dtype == "BF16" else self.file_dtype
        self.shape = shape[::-1] if transposed else shape
        self.ndim = 2

    @property
    def T(self) -> SafetensorsMatrix:
        return SafetensorsMatrix(
            self.path, self.key, self.stored_shape, self.stored_dtype, self.start,
            not self.transposed,
        )  # fmt: skip

    def rows(self, lo: int, hi: int) -> np.ndarray:
        """Rows lo..hi-1 of this (possibly transposed) matrix, [hi - lo, shape[1]]."""
        n_rows, n_cols = self.stored_shape
        size = self.file_dtype.itemsize
        try:
            with open(self.path, "rb") as f:
                fd = f.fileno()
                if not self.transposed:
                    out = np.empty((hi - lo, n_cols), self.file_dtype)
                    _pread_exact(fd, out.data.cast("B"), self.start + lo * n_cols * size)
                else:  # columns lo..hi-1 of every stored row
                    stored = np.empty((n_rows, hi - lo), self.file_dtype)
                    for r in range(n_rows):
                        at = self.start + (r * n_cols + lo) * size
                        _pread_exact(fd, stored[r].data.cast("B"), at)
                    out = np.ascontiguousarray(stored.T)
        except OSError as e:
            raise fail(self.path, f"cannot read {self.key}: {_reason(e)}") from e
        if self.stored_dtype == "BF16":  # bfloat16 is the top half of a float32
            out = (out.astype(np.uint32) << 16).view(np.float32)
        return out

    def read(self) -> np.ndarray:
        """The whole matrix."""
        return self.rows(0, self.shape[0])

    def nonfinite(self) -> FormatError:
        """The error for NaN/Inf values, counted over the whole matrix (as `matrix` words it)."""
        n_nan = n_inf = 0
        step = max(1, 2**24 // max(1, self.shape[1]))
        for lo in range(0, self.shape[0], step):
            chunk = self.rows(lo, min(self.shape[0], lo + step))
            n_nan += int(np.isnan(chunk).sum())
            n_inf += int(np.isinf(chunk).sum())
        return fail(self.path, f"{self.key} contains {n_nan} NaN and {n_inf} Inf values")


def _pread_exact(fd: int, buf: memoryview, offset: int) -> None:
    done = 0
    while done < len(buf):
        got = os.preadv(fd, [buf[done:]], offset + done)
        if got <= 0:
            raise OSError("file ended early (truncated since it was checked?)")
        done += got


# numpy dtypes of the float tensors a SafetensorsMatrix reads (BF16 as its raw 16 bits)
_NUMPY_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
}  # fmt: skip


def safetensors_matrix(path: Path, key: str) -> SafetensorsMatrix | None:
    """A lazily read view of 2-D float tensor `key`, or None when the tensor is not a 2-D
    float tensor of a dtype read here (the caller then loads it whole, with its checks)."""
    header = safetensors_header(path)  # the library validates the whole header first
    shape, dtype = header[key]
    if len(shape) != 2 or dtype not in _NUMPY_DTYPES or 0 in shape:
        return None
    size = _SAFETENSORS_ITEMSIZE[dtype]
    check_array_size(path, key, shape, dtype, size)
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n > 100 * 2**20:
                raise fail(path, "safetensors header over 100 MB")
            raw = json.loads(f.read(n))
            lo, hi = (int(x) for x in raw[key]["data_offsets"])
            end = os.fstat(f.fileno()).st_size
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise fail(path, f"truncated or corrupted safetensors file ({_reason(e)})") from e
    if hi - lo != math.prod(shape) * size or not 0 <= lo <= hi <= end - 8 - n:
        raise fail(path, f"corrupted header: {key}'s byte range does not fit its shape")
    return SafetensorsMatrix(path, key, (int(shape[0]), int(shape[1])), dtype, 8 + n + lo)


def load_safetensors_lazily(path: Path, keys: Iterable[str]) -> dict[str, Any]:
    """`load_safetensors`, but 2-D float tensors come as `SafetensorsMatrix` (read later)."""
    present = safetensors_header(path)
    out: dict[str, Any] = {}
    for k in keys:
        if k in present:
            lazy = safetensors_matrix(path, k)
            if lazy is not None:
                out[k] = lazy
    rest = [k for k in keys if k in present and k not in out]
    if rest:
        out.update(load_safetensors(path, rest))
    return out


# bytes per element by safetensors dtype name (8, the widest, for names not listed)
_SAFETENSORS_ITEMSIZE = {
    "F64": 8,
    "I64": 8,
    "U64": 8,
    "F32": 4,
    "I32": 4,
    "U32": 4,
    "F16": 2,
    "BF16": 2,
    "I16": 2,
    "U16": 2,
}


# ----------------------------------------------------------------------------- numpy


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of an .npz (no pickled objects), each checked before it is inflated."""
    _require_file(path)
    try:
        if not zipfile.is_zipfile(path):
            if _is_npy(path):
                raise fail(path, "expected an .npz archive, found a single .npy array")
        else:
            with zipfile.ZipFile(path) as zf:
                check_zip(path, zf)
                for info in zf.infolist():
                    with zf.open(info) as member:
                        _check_npy(
                            path, member, info.file_size, f"member {info.filename}", ".npz file"
                        )
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FormatError:
        raise
    except _READ_ERRORS as e:
        raise fail(path, f"truncated or corrupted .npz file ({_reason(e)})") from e
    except MemoryError as e:
        raise _out_of_memory(path, e) from e


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
        with open(path, "rb") as f:
            _check_npy(path, f, path.stat().st_size, "the array", ".npy file")
        arr = np.load(path, allow_pickle=False)
    except FormatError:
        raise
    except _READ_ERRORS as e:
        raise fail(path, f"truncated or corrupted .npy file ({_reason(e)})") from e
    except MemoryError as e:
        raise _out_of_memory(path, e) from e
    if not isinstance(arr, np.ndarray):
        raise fail(path, "expected a single .npy array")
    return arr


# ----------------------------------------------------------------------------- sizes


def max_array_bytes() -> int:
    """The size limit per array and per zip member ($SAE_MAX_ARRAY_BYTES, else 16 GiB)."""
    return settings.MAX_ARRAY_BYTES.get()


def check_array_size(
    path: Path,
    what: str,
    shape: Iterable[int],
    dtype: str,
    itemsize: int,
    available: int = -1,
    container: str = "file",
) -> None:
    """Refuse an array whose declared size is over the limit or (given `available`, the bytes
    behind its header) more than the file holds, before anything is allocated."""
    shape = [int(x) for x in shape]
    nbytes = math.prod(shape) * itemsize
    limit = max_array_bytes()
    if nbytes > limit:
        raise fail(
            path,
            f"{what} declares shape {shape} of {dtype} ({_bytes(nbytes)}), over the limit of "
            f"{_bytes(limit)} per array (raise it with {ENV_MAX_ARRAY_BYTES})",
        )
    if 0 <= available < nbytes:
        raise fail(
            path,
            f"truncated or corrupted {container}: {what} declares shape {shape} of {dtype} ({nbytes} bytes) "
            f"but the file holds only {available} bytes of data for it",
        )


def check_zip(path: Path, zf: zipfile.ZipFile) -> None:
    """Refuse a zip archive whose members would inflate past what its bytes can justify.

    Each member at most `max_array_bytes()`; a stored member exactly its stored length; a
    compressed one at most MAX_INFLATE_RATIO times its compressed length (or _INFLATE_FLOOR),
    and all compressed members together at most MAX_INFLATE_RATIO times the archive (members
    may share compressed bytes).
    """
    limit, inflated = max_array_bytes(), 0
    for info in zf.infolist():
        name, size, packed = info.filename, info.file_size, info.compress_size
        if size > limit:
            raise fail(
                path,
                f"zip member {name} declares {_bytes(size)}, over the limit of {_bytes(limit)} "
                f"per array (raise it with {ENV_MAX_ARRAY_BYTES})",
            )
        if info.compress_type == zipfile.ZIP_STORED:
            if size != packed:
                raise fail(
                    path,
                    f"corrupted zip directory: stored member {name} declares {size} bytes "
                    f"but spans {packed}",
                )
            continue
        inflated += size
        if size > max(_INFLATE_FLOOR, MAX_INFLATE_RATIO * packed):
            raise fail(
                path,
                f"zip member {name} would inflate {_bytes(packed)} into {_bytes(size)} "
                f"({size // max(packed, 1)}x): refusing a likely zip bomb",
            )
    archive = path.stat().st_size
    if inflated > max(_INFLATE_FLOOR, MAX_INFLATE_RATIO * archive):
        raise fail(
            path,
            f"its zip members would inflate {_bytes(archive)} into {_bytes(inflated)}: refusing "
            "a likely zip bomb",
        )


_NPY_MAGIC = b"\x93NUMPY"


def _is_npy(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(len(_NPY_MAGIC)) == _NPY_MAGIC


def _check_npy(path: Path, fp: Any, size: int, what: str, container: str) -> None:
    """Check the .npy header at the start of `fp` (`size` bytes long) against its data.

    Anything without the .npy magic is left to numpy (which refuses pickles and says why).
    """
    if fp.read(len(_NPY_MAGIC)) != _NPY_MAGIC:
        return
    fp.seek(0)
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
    else:  # 3.0 only adds unicode field names: structured dtypes, never weights
        raise fail(
            path, f"{what} is a .npy version {version[0]}.{version[1]} file, expected 1.0 or 2.0"
        )
    if dtype.hasobject:
        raise fail(
            path,
            f"{what} holds pickled Python objects (dtype object), and this loader refuses to run code "
            "from pickles; save plain float arrays",
        )
    check_array_size(path, what, shape, str(dtype), dtype.itemsize, size - fp.tell(), container)


def _bytes(n: int) -> str:
    """A byte count for people: 512 bytes, 3.5 MiB, 2.7 PiB."""
    exp = 0
    while exp < 6 and n >= 1024 ** (exp + 1):
        exp += 1
    return f"{n} bytes" if exp == 0 else f"{n / 1024**exp:.1f} {'KMGTPE'[exp - 1]}iB"


def _out_of_memory(path: Path, e: MemoryError) -> FormatError:
    return fail(path, f"needs more memory than this machine has ({_reason(e)})")


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
