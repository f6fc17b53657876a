"""Fuzzing `load()` with malformed files (hypothesis, bounded and reproducible).

Each example starts from a valid small SAE of one format (tests/factories.py), damages one of
its files (truncation, flipped bytes, spliced random bytes, random bytes throughout, or a
structured edit of a safetensors/npy header, a torch pickle or a JSON/YAML config) and loads
it. Property: `load` returns a valid Dictionary (finite float32 rows of unit or zero norm) or
raises an SAEError with a one-line message; any other exception is a reader bug, and a load
that takes longer than HANG_SECONDS is a hang. derandomize=True and database=None make every
run, locally and in CI, try the same examples (SAE_FUZZ_EXAMPLES sets how many).
"""

from __future__ import annotations

import functools
import io
import json
import os
import signal
import struct
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sae_backend import load
from sae_backend.errors import SAEError
from tests.factories import (
    planted,
    unit_rows,
    write_dictionary_learning,
    write_e2e_folder,
    write_gemma_scope,
    write_matrix,
    write_saelens,
    write_sparsify,
)

# Finite weights near the float32 limit overflow when cast (and are then refused as Inf).
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
HANG_SECONDS = 20
POS = "blocks.2.hook_resid_pre"
# Examples per seed and test: sized so this file runs in well under a minute on 2 cores;
# SAE_FUZZ_EXAMPLES=5000 for a deeper (still reproducible) run.
EXAMPLES = int(os.environ.get("SAE_FUZZ_EXAMPLES", "100"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ----------------------------------------------------------------------------- seeds


def _seed_files(writer: Callable[[Path], Path]) -> tuple[dict[str, bytes], str]:
    """({relative path: bytes} of a freshly written SAE, the relative path to load)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        target = writer(root)
        files = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
        return files, str(target.relative_to(root))


def _legacy_pt(root: Path) -> Path:
    p = planted()
    path = root / "ae.pt"
    state = {"decoder.weight": torch.tensor(p.decoder.T), "encoder.weight": torch.tensor(p.encoder)}
    torch.save(state, path, _use_new_zipfile_serialization=False)
    return path


def _compressed_npz(root: Path) -> Path:
    p = planted()
    path = root / "params.npz"
    arrays = {"W_dec": p.decoder.astype(np.float32), "W_enc": p.encoder.T.astype(np.float32)}
    np.savez_compressed(path, **arrays, b_dec=np.zeros(6, np.float32))
    return path


def _p() -> Any:
    return planted()


# name: (writer, load options). Every reader and container: safetensors, torch zip, legacy
# torch pickle, npz (stored and deflated), npy; configs in JSON and YAML.
SEEDS: dict[str, tuple[Callable[[Path], Path], dict[str, str]]] = {
    "saelens": (
        lambda r: write_saelens(r / "sae", _p().decoder, _p().encoder, density=np.full(10, 0.1)),
        {},
    ),
    "sparsify": (lambda r: write_sparsify(r / "layers.2", _p().decoder, _p().encoder), {}),
    "dictionary_learning": (
        lambda r: write_dictionary_learning(r / "trainer_0", _p().decoder, _p().encoder),
        {},
    ),
    "e2e_sae": (
        lambda r: write_e2e_folder(r / "run", {10: {POS: (_p().decoder, _p().encoder)}}),
        {},
    ),
    "gemma_scope": (lambda r: write_gemma_scope(r / "params.npz", _p().decoder, _p().encoder), {}),
    "npz_compressed": (_compressed_npz, {}),
    "torch_legacy": (_legacy_pt, {}),
    "matrix_npy": (lambda r: write_matrix(r / "m.npy", _p().decoder), {"orientation": "rows"}),
    "matrix_safetensors": (
        lambda r: write_matrix(r / "m.safetensors", _p().decoder),
        {"orientation": "rows"},
    ),
    "matrix_pt": (lambda r: write_matrix(r / "m.pt", _p().decoder), {"orientation": "rows"}),
}


@functools.cache
def seed(name: str) -> tuple[dict[str, bytes], str]:
    return _seed_files(SEEDS[name][0])


# ----------------------------------------------------------------------------- mutations

_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)
_DIMS = st.lists(
    st.one_of(st.integers(-3, 40), st.integers(0, 2**64), st.sampled_from([10, 6, 60])),
    max_size=4,
)
_ST_DTYPES = st.sampled_from(["F32", "F64", "F16", "BF16", "I32", "U8", "BOOL", "F8_E4M3", "X"])
_NPY_DESCRS = st.sampled_from(["<f4", "<f8", ">f4", "<f2", "|b1", "<i8", "<c8", "|O", "V8", "<U3"])


def _safetensors_header_edit(data: bytes, draw: Any) -> bytes:
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    key = draw(st.sampled_from(sorted(header)))
    field = draw(st.sampled_from(["shape", "dtype", "data_offsets", "key", "length"]))
    if field == "length":
        return struct.pack("<Q", draw(st.integers(0, 2**64 - 1))) + data[8:]
    if key == "__metadata__" or field == "key":
        header[draw(st.text(max_size=6))] = header.pop(key)
    elif field == "shape":
        header[key]["shape"] = draw(_DIMS)
    elif field == "dtype":
        header[key]["dtype"] = draw(_ST_DTYPES)
    else:
        header[key]["data_offsets"] = draw(st.lists(st.integers(-2, 2**64), min_size=0, max_size=3))
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data[8 + n :]


def _npy_header_edit(data: bytes, draw: Any) -> bytes:
    """An .npy with a random header over the original data."""
    descr = draw(_NPY_DESCRS)
    shape = tuple(draw(st.lists(st.integers(0, 2**40) | st.integers(0, 80), max_size=3)))
    text = repr({"descr": descr, "fortran_order": draw(st.booleans()), "shape": shape})
    body = (text + " " * (-(len(text) + 11) % 64) + "\n").encode("latin1")
    magic_len = 10 + struct.unpack("<H", data[8:10])[0]
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body + data[magic_len:]


def _zip_member_edit(data: bytes, draw: Any) -> bytes:
    """The archive rewritten (same compression, valid directory) with one member edited."""
    src = zipfile.ZipFile(io.BytesIO(data))
    infos = src.infolist()
    victim = draw(st.sampled_from([i.filename for i in infos]))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for info in infos:
            body = src.read(info)
            if info.filename == victim:
                body = _edit(info.filename, body, draw, structured=draw(st.booleans()))
            dst.writestr(info, body)
    return out.getvalue()


def _pickle_edit(data: bytes, draw: Any) -> bytes:
    """Byte flips and small-integer rewrites inside a pickle (sizes, strides, storage keys)."""
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.sampled_from([0, 1, 0x4A, 0x4B, 0x4D, 0x8A, 0xFF, data[i] ^ 0x01]))
    return bytes(data)


def _config_edit(name: str, data: bytes, draw: Any) -> bytes:
    try:
        cfg = yaml.safe_load(data) if name.endswith(".yaml") else json.loads(data)
    except ValueError:
        cfg = None
    if not isinstance(cfg, dict) or not cfg:
        return draw(st.binary(max_size=64))
    key = draw(st.sampled_from(sorted(cfg)))
    cfg[key] = draw(_JSON)
    if name.endswith(".yaml"):
        return yaml.safe_dump(cfg).encode()
    return json.dumps(cfg).encode()  # NaN/Infinity as Python's json writes them


def _edit(name: str, data: bytes, draw: Any, structured: bool) -> bytes:
    """One structured edit for `name`'s kind of content, else a byte-level one."""
    if structured:
        if name.endswith(".safetensors") and len(data) > 8:
            return _safetensors_header_edit(data, draw)
        if name.endswith(".npy") and data.startswith(b"\x93NUMPY\x01"):
            return _npy_header_edit(data, draw)
        if zipfile.is_zipfile(io.BytesIO(data)):
            return _zip_member_edit(data, draw)
        if name.endswith((".json", ".yaml")):
            return _config_edit(name, data, draw)
        if name.endswith((".pkl", ".pt")) or name.endswith("/0"):
            return _pickle_edit(data, draw)
    how = draw(st.sampled_from(["truncate", "flip", "splice", "overwrite"]))
    if how == "truncate":
        return data[: draw(st.integers(0, max(len(data) - 1, 0)))]
    at = draw(st.integers(0, len(data)))
    if how == "flip":
        data = bytearray(data)
        for i in draw(st.lists(st.integers(0, max(len(data) - 1, 0)), min_size=1, max_size=8)):
            if data:
                data[i] ^= draw(st.integers(1, 255))
        return bytes(data)
    chunk = draw(st.binary(min_size=1, max_size=64))
    if how == "splice":
        return data[:at] + chunk + data[at:]
    return data[:at] + chunk + data[at + len(chunk) :]


@st.composite
def damaged(draw: Any, name: str) -> tuple[dict[str, bytes], str]:
    files, target = seed(name)
    files = dict(files)
    victim = draw(st.sampled_from(sorted(files)))
    files[victim] = _edit(victim, files[victim], draw, structured=draw(st.booleans()))
    return files, target


# ----------------------------------------------------------------------------- the property


class Hang(BaseException):
    """Raised in a load that runs too long (BaseException: no reader may swallow it)."""


@contextmanager
def hang_guard(seconds: int = HANG_SECONDS) -> Iterator[None]:
    def on_alarm(signum: int, frame: Any) -> None:
        raise Hang(f"load() still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _write(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def load_is_valid_or_one_error(files: dict[str, bytes], target: str, **opts: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _write(Path(tmp), files)
        try:
            with hang_guard():
                d = load(str(Path(tmp) / target), cache=False, **opts)
                # the encoder is read again from the files when first used: while they exist
                matrices = (d.decoder, d.encoder)
        except SAEError as e:
            assert "\n" not in str(e) and str(e).strip(), repr(str(e))
            return
    for rows in matrices:
        if rows is None:
            continue
        assert rows.dtype == np.float32 and rows.ndim == 2 and rows.shape == d.decoder.shape
        assert np.isfinite(rows).all()
        norms = np.linalg.norm(rows.astype(np.float64), axis=1)
        assert np.all((np.abs(norms - 1.0) < 1e-5) | (norms == 0.0)), norms
    assert d.alive.shape == (d.decoder.shape[0],) and not d.alive[d.decoder_norms == 0].any()


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_seed_is_valid(name: str) -> None:
    """The unmutated seeds load (else the fuzzing below would only exercise error paths)."""
    files, target = seed(name)
    with tempfile.TemporaryDirectory() as tmp:
        _write(Path(tmp), files)
        d = load(str(Path(tmp) / target), cache=False, **SEEDS[name][1])
    assert d.decoder.shape == (10, 6)


@pytest.mark.parametrize("name", sorted(SEEDS))
@FUZZ
@given(data=st.data())
def test_damaged_files(name: str, data: Any) -> None:
    files, target = data.draw(damaged(name))
    load_is_valid_or_one_error(files, target, **SEEDS[name][1])


@pytest.mark.parametrize("name", sorted(SEEDS))
@FUZZ
@given(noise=st.binary(max_size=4096))
def test_random_bytes_as_the_weights(name: str, noise: bytes) -> None:
    """Random bytes under the seed's weights file name (configs intact)."""
    files, target = seed(name)
    weights = max(
        (f for f in files if not f.endswith((".json", ".yaml"))), key=lambda f: len(files[f])
    )
    load_is_valid_or_one_error({**files, weights: noise}, target, **SEEDS[name][1])


# ----------------------------------------------------------------------------- regressions
# Crashes the fuzzing found (each escaped load() as a traceback before its fix).


def _fails_cleanly(path: Path, *fragments: str, **opts: str) -> None:
    with pytest.raises(SAEError) as e:
        load(str(path), cache=False, **opts)
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    for f in fragments:
        assert f in str(e.value), str(e.value)


def test_every_truncation_of_a_legacy_torch_file(tmp_path: Path) -> None:
    """struct.error and AssertionError from torch's unpickler on a cut or damaged pickle."""
    files, target = seed("torch_legacy")
    data = files[target]
    path = tmp_path / target
    for cut in range(len(data)):
        path.write_bytes(data[:cut])
        _fails_cleanly(path)
    key = data[data.index(b"cpu") - 20 : data.index(b"cpu")]  # the storage key's digits
    digits = bytes(c if not 0x30 <= c <= 0x39 else 0x30 + (c - 0x2F) % 10 for c in key)
    path.write_bytes(data.replace(key, digits))
    _fails_cleanly(path, "truncated or corrupted PyTorch file")


def test_corrupt_deflate_stream_in_an_npz(tmp_path: Path) -> None:
    """zlib.error from a compressed member whose data is not a deflate stream."""
    path = _compressed_npz(tmp_path)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("W_dec.npy")
    name_len, extra_len = struct.unpack(
        "<HH", data[info.header_offset + 26 : info.header_offset + 30]
    )
    start = info.header_offset + 30 + name_len + extra_len  # the local header's own lengths
    data[start : start + 8] = b"\xff" * 8  # block type 3: invalid
    path.write_bytes(bytes(data))
    _fails_cleanly(path, "truncated or corrupted .npz file", "error")


def test_unparsable_npy_header(tmp_path: Path) -> None:
    """tokenize.TokenError from numpy's fallback parse of a header dict cut short."""
    path = tmp_path / "m.npy"
    body = "{'descr': '<f4', 'fortran_order': False, 'shape': (10, 6"
    body += " " * (-(len(body) + 11) % 64) + "\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body.encode())
    _fails_cleanly(path, "truncated or corrupted .npy file", orientation="rows")


@pytest.mark.parametrize("section", ["loss", "saes"])
@pytest.mark.parametrize("value", [1, "x", [1, 2], None])
def test_e2e_config_sections_of_the_wrong_type(tmp_path: Path, section: str, value: Any) -> None:
    """`loss: 1` in final_config.yaml made the reader call 1.get(...): a damaged section
    is now treated as absent, and the weights still load right."""
    p = planted()
    folder = write_e2e_folder(tmp_path / "run", {10: {POS: (p.decoder, p.encoder)}})
    cfg = yaml.safe_load((folder / "final_config.yaml").read_text())
    cfg[section] = value
    cfg.setdefault("saes", {})
    (folder / "final_config.yaml").write_text(yaml.safe_dump(cfg))
    d = load(str(folder), cache=False)
    np.testing.assert_allclose(d.decoder, unit_rows(p.decoder)[0], atol=1e-6)
