"""Hostile SAE files for the safety tests (backend, CLI and browser): `hostile_files(folder, marker)`.

Each case is one file, alone in its own subfolder of `folder` (so no reader picks up a
neighbour's config), loadable as a plain local path with no options, and small on disk
(the zip bombs are about 4 MB and declare about 4 GB). Every case must end as one SAEError
line containing its expected lowercase substring, without running code from the file (the
pickles would create `marker` if unpickled without weights_only) and without allocating what
the file merely declares.

    cases = hostile_files(tmp_path / "hostile", tmp_path / "PWNED")
    for name, (path, expected) in cases.items():
        with pytest.raises(SAEError, match=...): load(str(path))

The bomb payloads are built once per process (about 2 s, mostly the CRC of 4 GB of zeros)
without ever holding the inflated data: one deflate segment of zeros, ended with a full flush
so it stands alone, repeated; the zip container around it is written by hand.
"""

from __future__ import annotations

import functools
import io
import json
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

# The bombs: a [1_048_000, 1024] float32 matrix of zeros, 4.29 GB inflated (just under the 4 GiB
# zip32 limit, so no zip64 records are needed), deflated in 4 MB segments of 1000 rows.
BOMB_SHAPE = (1_048_000, 1024)
_BOMB_SEGMENT_ROWS = 1000
REFUSED_PICKLE = "refuses to run code from pickles"


class _WritesMarker:
    """Pickles as a call to exec that creates the marker file: what a naive unpickler runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def hostile_files(folder: Path, marker: Path) -> dict[str, tuple[Path, str]]:
    """Write the hostile cases under `folder`; {case: (file, expected lowercase message part)}."""
    folder.mkdir(parents=True, exist_ok=True)
    cases: dict[str, tuple[Path, str]] = {}

    def spot(case: str, name: str) -> Path:
        sub = folder / case
        sub.mkdir(exist_ok=True)
        return sub / name

    # Pickles whose unpickling runs exec(open(marker, 'w')...): torch.save zip and plain pickle.
    payload = {"W_dec": _WritesMarker(marker), "W_enc": torch.zeros(3, 2)}
    path = spot("pickle_torch_zip", "weights.pt")
    torch.save(payload, path)
    cases["pickle_torch_zip"] = (path, REFUSED_PICKLE)
    path = spot("pickle_plain", "ae.pt")
    path.write_bytes(pickle.dumps(payload, protocol=2))
    cases["pickle_plain"] = (path, REFUSED_PICKLE)

    # numpy object arrays: np.load(..., allow_pickle=True) would run the same payload.
    objects = np.array([_WritesMarker(marker)], dtype=object)
    path = spot("pickle_npz", "params.npz")
    np.savez(path, W_dec=objects, W_enc=np.zeros((2, 3), np.float32))
    cases["pickle_npz"] = (path, REFUSED_PICKLE)
    path = spot("pickle_npy", "decoder.npy")
    np.save(path, objects, allow_pickle=True)
    cases["pickle_npy"] = (path, REFUSED_PICKLE)

    # A Gemma Scope params.npz whose W_dec.npy member inflates 4 MB into 4.29 GB of zeros.
    path = spot("zip_bomb_npz", "params.npz")
    header = _npy_header(BOMB_SHAPE, "<f4")
    path.write_bytes(
        _zip([("W_dec.npy", *_bomb_member(header)), ("b_dec.npy", *_stored(_npy(np.zeros(2))))])
    )
    cases["zip_bomb_npz"] = (path, "zip bomb")

    # A torch.save zip whose tensor storage is replaced by the same deflated bomb.
    path = spot("zip_bomb_torch", "weights.pt")
    members = _torch_members({"W_dec": torch.zeros(6, 10)})
    members = [(n, *_bomb_member(b"")) if n.endswith("/data/0") else (n, *m) for n, m in members]
    path.write_bytes(_zip(members))
    cases["zip_bomb_torch"] = (path, "zip bomb")

    # A torch.save zip whose zip directory claims a 1 TB data.pkl (zip64 sizes).
    path = spot("zip_huge_member_torch", "weights.pt")
    members = _torch_members({"W_dec": torch.zeros(6, 10)})
    members = [
        (n, 8, zlib.crc32(m[3]), 10**12, _deflate(m[3])) if n.endswith("data.pkl") else (n, *m)
        for n, m in members
    ]
    path.write_bytes(_zip(members))
    cases["zip_huge_member_torch"] = (path, "over the limit")

    # A legacy (non-zip) torch.save file whose pickle declares a storage of 10**12 floats.
    path = spot("huge_storage_torch_legacy", "weights.pt")
    buf = io.BytesIO()
    torch.save({"W_dec": torch.zeros(6, 10)}, buf, _use_new_zipfile_serialization=False)
    numel = pickle.dumps(10**12, protocol=2)[2:-1]  # the LONG1 opcode for 10**12
    path.write_bytes(buf.getvalue().replace(b"K<N", numel + b"N", 1))  # was BININT1 60, NONE
    cases["huge_storage_torch_legacy"] = (path, "truncated or corrupted pytorch file")

    # SAELens weights cut in the middle of the tensor data.
    path = spot("truncated_safetensors", "sae_weights.safetensors")
    save_file({"W_dec": torch.ones(64, 32), "W_enc": torch.ones(32, 64)}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    cases["truncated_safetensors"] = (path, "truncated")

    # SAELens weights with an integer decoder.
    path = spot("int_dtype_safetensors", "sae_weights.safetensors")
    save_file(
        {"W_dec": torch.ones(10, 6, dtype=torch.int32), "W_enc": torch.ones(6, 10)}, str(path)
    )
    cases["int_dtype_safetensors"] = (path, "has dtype int32, expected float")

    # A hand-written safetensors header declaring W_dec [10**12, 768] over 16 bytes of data.
    path = spot("huge_shape_safetensors", "sae_weights.safetensors")
    head = {
        "W_dec": {"dtype": "F32", "shape": [10**12, 768], "data_offsets": [0, 8]},
        "W_enc": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]},
    }
    path.write_bytes(_safetensors_raw(head, bytes(16)))
    cases["huge_shape_safetensors"] = (path, "shape and dtype do not fit")

    # Text under a torch name.
    path = spot("text_pt", "ae.pt")
    path.write_text("this is not a tensor file\n<html>404 Not Found</html>\n")
    cases["text_pt"] = (path, "not a pytorch file")

    # An .npy whose header declares [10**12, 768] float32 (3 TB) over 64 bytes of data.
    path = spot("huge_shape_npy", "decoder.npy")
    path.write_bytes(_npy_header((10**12, 768), "<f4") + bytes(64))
    cases["huge_shape_npy"] = (path, "over the limit")

    # An .npy whose header declares 400 MB (under the limit) over 64 bytes of data.
    path = spot("short_data_npy", "decoder.npy")
    path.write_bytes(_npy_header((100_000, 1024), "<f4") + bytes(64))
    cases["short_data_npy"] = (path, "holds only")

    # SAELens weights with NaN and Inf in the decoder.
    path = spot("nan_inf_weights", "sae_weights.safetensors")
    dec = torch.ones(10, 6)
    dec[2, 3], dec[5, 0], dec[7, 1] = float("nan"), float("inf"), -float("inf")
    save_file({"W_dec": dec, "W_enc": torch.ones(6, 10)}, str(path))
    cases["nan_inf_weights"] = (path, "contains 1 nan and 2 inf values")
    return cases


HOSTILE_URIS = (
    "../../../../etc/passwd",
    "/etc/shadow",
    "file:///etc/passwd",
    "wandb:../../x",
    "hf:../x",
    "saelens:../../x",
    "/tmp/a\x00b.pt",
    "wandb:a\x00/b/c",
    "x" * 5000,
    "/" + "a/" * 3000 + "ae.pt",
    # names longer than the file system allows (255 bytes), with '#' (parsed as SRC#POSITION
    # only when no such path exists: the existence probe raised OSError on these)
    "A" * 300 + "#x",
    "/tmp/" + "A" * 300 + "#x",
    "file:" + "A" * 300 + "#x",
    "A" * 300 + "/ae.pt#blocks.3",
    "wandb:" + "e" * 300 + "/p/r",
    "wandb:" + "e" * 300 + "/p/r#blocks.6",
    "hf:o/" + "r" * 300 + "#x",
    "saelens:" + "r" * 300 + "/x",
)
"""Path-traversal and malformed source strings: each must fail as one SAEError line."""


# ----------------------------------------------------------------------------- npy


def _npy_header(shape: tuple[int, ...], descr: str) -> bytes:
    """A version 1.0 .npy header (magic, length, padded dict) for a C-order array."""
    text = repr({"descr": descr, "fortran_order": False, "shape": tuple(shape)})
    pad = 64 - (10 + len(text) + 1) % 64
    body = (text + " " * pad + "\n").encode("latin1")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


# ----------------------------------------------------------------------------- zip members

# A member is (method, crc32, uncompressed size, raw data as stored): method 0 stored, 8 deflated.
Member = tuple[int, int, int, bytes]


def _stored(data: bytes) -> Member:
    return (0, zlib.crc32(data), len(data), data)


def _deflate(data: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


@functools.cache
def _zero_segment() -> tuple[bytes, int, int]:
    """(raw deflate of one segment of zeros ending on a full flush, its length, its CRC)."""
    zeros = bytes(_BOMB_SEGMENT_ROWS * BOMB_SHAPE[1] * 4)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH), len(zeros), zlib.crc32(zeros)


@functools.cache
def _bomb_member(prefix: bytes) -> Member:
    """`prefix` then the bomb's 4.29 GB of zeros, as one deflated member (about 4 MB)."""
    seg, seg_len, _ = _zero_segment()
    n = BOMB_SHAPE[0] // _BOMB_SEGMENT_ROWS
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH) if prefix else b""
    tail = zlib.compressobj(9, zlib.DEFLATED, -15).flush()  # an empty final block
    crc = zlib.crc32(prefix)
    zeros = memoryview(bytes(seg_len))
    for _ in range(n):
        crc = zlib.crc32(zeros, crc)
    return (8, crc, len(prefix) + n * seg_len, head + seg * n + tail)


def _torch_members(obj: object) -> list[tuple[str, Member]]:
    """The members of a real torch.save zip of `obj`, as stored entries."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    import zipfile

    with zipfile.ZipFile(buf) as zf:
        return [(i.filename, _stored(zf.read(i))) for i in zf.infolist()]


def _zip(members: list[tuple[str, int, int, int, bytes]]) -> bytes:
    """A zip archive of pre-encoded members (zip64 size fields where a size needs them)."""
    out, central = io.BytesIO(), io.BytesIO()
    for name, method, crc, size, raw in members:
        encoded = name.encode()
        big = size >= 0xFFFFFFFF or len(raw) >= 0xFFFFFFFF
        extra = struct.pack("<HHQQ", 1, 16, size, len(raw)) if big else b""
        sizes = (0xFFFFFFFF, 0xFFFFFFFF) if big else (len(raw), size)
        version = 45 if big else 20
        offset = out.tell()
        out.write(
            struct.pack(
                "<IHHHHHIIIHH",
                0x04034B50,
                version,
                0,
                method,
                0,
                0x21,
                crc,
                *sizes,
                len(encoded),
                len(extra),
            )
        )
        out.write(encoded + extra + raw)
        central.write(
            struct.pack(
                "<IHHHHHHIIIHHHHHII",
                0x02014B50,
                version,
                version,
                0,
                method,
                0,
                0x21,
                crc,
                *sizes,
                len(encoded),
                len(extra),
                0,
                0,
                0,
                0,
                offset,
            )
        )
        central.write(encoded + extra)
    cd = central.getvalue()
    start = out.tell()
    out.write(cd)
    out.write(
        struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(cd), start, 0)
    )
    return out.getvalue()


# ----------------------------------------------------------------------------- safetensors


def _safetensors_raw(header: dict, data: bytes) -> bytes:
    """A safetensors file from a header dict written as given (no validation)."""
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data
