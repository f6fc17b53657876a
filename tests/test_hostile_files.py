"""Hostile files and source strings through `load()` and the CLI (issue 6).

For every case of tests/hostile.py: one SAEError line with the expected words, no code from a
pickle runs (the marker file never appears), memory stays near the baseline (measured in a
child process), nothing is cached for the bad file, and good files still load right after.
The CLI answers the same inputs with exit 2 and exactly one stderr line, writing no output.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from sae_backend import load
from sae_backend.cache import default_cache
from sae_backend.cli import main
from sae_backend.errors import FormatError, InputError, SAEError, URIError
from sae_backend.formats._safe_io import ENV_MAX_ARRAY_BYTES, MAX_INFLATE_RATIO
from sae_backend.uri import parse_uri
from tests.factories import planted, unit_rows, write_gemma_scope, write_matrix, write_saelens
from tests.hostile import BOMB_SHAPE, HOSTILE_URIS, REFUSED_PICKLE, hostile_files

ROOT = Path(__file__).resolve().parents[1]
PEAK_RSS_LIMIT_MB = 500  # increase over the warmed-up baseline while loading each hostile file


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> tuple[dict[str, tuple[Path, str]], Path]:
    folder = tmp_path_factory.mktemp("hostile")
    marker = folder / "PWNED"
    return hostile_files(folder / "files", marker), marker


def _one_line_error(exc: BaseException, path: Path | None, expected: str) -> list[str]:
    """What is wrong with an error message (empty when it is right)."""
    msg, problems = str(exc), []
    if "\n" in msg or "\r" in msg or not msg.strip():
        problems.append("not one line")
    if expected not in msg.lower():
        problems.append(f"lacks {expected!r}")
    if path is not None and str(path) not in msg:
        problems.append("does not name the file")
    return problems


# ----------------------------------------------------------------------------- the files are real


def test_the_hostile_payloads_are_real(tmp_path: Path) -> None:
    """Without the loader's rules each pickle runs its payload, and the bombs inflate to GBs."""
    marker = tmp_path / "PWNED"
    cases = hostile_files(tmp_path / "h", marker)
    unsafe = {
        "pickle_torch_zip": lambda p: torch.load(p, weights_only=False),
        "pickle_plain": lambda p: pickle.loads(p.read_bytes()),
        "pickle_npz": lambda p: np.load(p, allow_pickle=True)["W_dec"],
        "pickle_npy": lambda p: np.load(p, allow_pickle=True),
    }
    for name, unsafe_load in unsafe.items():
        assert cases[name][1] == REFUSED_PICKLE
        assert not marker.exists()
        unsafe_load(cases[name][0])
        assert marker.read_text() == "pwned", name
        marker.unlink()

    for name, member in (("zip_bomb_npz", "W_dec.npy"), ("zip_bomb_torch", "archive/data/0")):
        path = cases[name][0]
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo(member)
            assert info.compress_type == zipfile.ZIP_DEFLATED
            assert info.file_size > 4 * 10**9 and path.stat().st_size < 5 * 10**6
            with zf.open(info) as f:  # inflate a bounded prefix only
                head = f.read(64 << 20)
        if name == "zip_bomb_npz":
            fp = io.BytesIO(head)
            np.lib.format.read_magic(fp)
            shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
            assert shape == BOMB_SHAPE and dtype == np.float32
            assert info.file_size == fp.tell() + np.prod(shape) * 4
            head = head[fp.tell() :]
        assert len(head) > 60 << 20 and not any(head)  # zeros after the header

    with open(cases["huge_shape_npy"][0], "rb") as f:
        np.lib.format.read_magic(f)
        assert np.lib.format.read_array_header_1_0(f)[0] == (10**12, 768)
    with zipfile.ZipFile(cases["zip_huge_member_torch"][0]) as zf:
        assert zf.getinfo("archive/data.pkl").file_size == 10**12


# ----------------------------------------------------------------------------- load()


def test_every_hostile_file_fails_as_one_line_and_caches_nothing(hostile, tmp_path: Path) -> None:
    cases, marker = hostile
    problems = {}
    for name, (path, expected) in cases.items():
        with pytest.raises(SAEError) as e:
            load(str(path))
        assert isinstance(e.value, FormatError), (name, e.value)
        if found := _one_line_error(e.value, path, expected):
            problems[name] = (found, str(e.value))
        assert not marker.exists(), f"{name} ran code"
    assert not problems, problems
    assert len(default_cache()) == 0  # a failure leaves no entry

    # Good files load right after, and a bad file replaced by a good one is read afresh.
    p = planted()
    good = load(str(write_saelens(tmp_path / "good", p.decoder, p.encoder)))
    np.testing.assert_allclose(good.decoder, unit_rows(p.decoder)[0], atol=1e-6)
    assert len(default_cache()) == 1
    fixed = tmp_path / "fixed"
    shutil.copytree(cases["nan_inf_weights"][0].parent, fixed)
    with pytest.raises(FormatError, match="NaN"):
        load(str(fixed))
    write_saelens(fixed, 2.0 * p.decoder, p.encoder)
    again = load(str(fixed))
    np.testing.assert_allclose(again.decoder, unit_rows(p.decoder)[0], atol=1e-6)
    np.testing.assert_allclose(again.decoder_norms, 2.0 * unit_rows(p.decoder)[1], rtol=1e-6)
    assert len(default_cache()) == 2


_MEASURE = """
import json, resource, sys
from pathlib import Path
from sae_backend import load
from sae_backend.errors import SAEError

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

cases = json.loads(sys.argv[1])
load(sys.argv[2], cache=False)  # warm up: torch, safetensors and numpy fully imported
out = {"baseline": peak_mb()}
for name, path in cases.items():
    try:
        load(path, cache=False)
        out[name] = "loaded"
    except SAEError:
        out[name] = peak_mb()
print(json.dumps(out))
"""


def test_hostile_files_cost_no_memory(hostile, tmp_path: Path) -> None:
    """Peak RSS of a child process loading every case in turn stays near its warmed-up
    baseline (ru_maxrss only grows, so the last reading bounds every case); the child's
    timeout bounds the time."""
    cases, marker = hostile
    p = planted()
    warm = write_saelens(tmp_path / "warm", p.decoder, p.encoder)
    paths = {name: str(path) for name, (path, _) in cases.items()}
    run = subprocess.run(
        [sys.executable, "-c", _MEASURE, json.dumps(paths), str(warm)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    peaks = json.loads(run.stdout)
    baseline = peaks.pop("baseline")
    assert set(peaks) == set(cases)
    over = {n: v for n, v in peaks.items() if v == "loaded" or v - baseline > PEAK_RSS_LIMIT_MB}
    assert not over, (baseline, over)
    assert not marker.exists()


def test_array_size_limit_from_the_environment(tmp_path: Path, monkeypatch) -> None:
    p = planted()
    monkeypatch.setenv(ENV_MAX_ARRAY_BYTES, "1000")
    small = load(str(write_saelens(tmp_path / "small", p.decoder, p.encoder)), cache=False)
    np.testing.assert_allclose(small.decoder, unit_rows(p.decoder)[0], atol=1e-6)  # 240 bytes
    rng = np.random.default_rng(0)
    for path in (
        write_saelens(tmp_path / "big", rng.standard_normal((64, 32)), None),
        write_matrix(tmp_path / "big.npy", rng.standard_normal((64, 32)).astype(np.float32)),
        write_gemma_scope(tmp_path / "gs" / "params.npz", *(rng.standard_normal((2, 64, 32)))),
    ):
        with pytest.raises(FormatError, match=r"over the limit of 1000 bytes per array"):
            load(str(path), cache=False, orientation="rows")
    monkeypatch.setenv(ENV_MAX_ARRAY_BYTES, "16GB")
    with pytest.raises(InputError, match=ENV_MAX_ARRAY_BYTES):
        load(str(tmp_path / "small"), cache=False)


def test_honest_compressed_files_still_load(tmp_path: Path) -> None:
    """The bomb checks refuse inflation, not compression: a compressed .npz and a re-zipped
    (deflated) torch file load with the right values; the deflated torch file used to come
    back as its compressed bytes read as floats (mmap of a compressed member)."""
    rng = np.random.default_rng(3)
    dec, enc = rng.standard_normal((2, 300, 40))
    dec[:200] = 0.0  # two thirds dead: compresses well, but far below the bomb ratio
    path = tmp_path / "c" / "params.npz"
    path.parent.mkdir()
    arrays = {"W_dec": dec.astype(np.float32), "W_enc": enc.T.astype(np.float32)}
    np.savez_compressed(path, **arrays, b_dec=np.zeros(40, np.float32))
    with zipfile.ZipFile(path) as zf:
        ratio = max(i.file_size / i.compress_size for i in zf.infolist())
    assert 2 < ratio < MAX_INFLATE_RATIO
    d = load(str(path), cache=False)
    np.testing.assert_allclose(d.decoder, unit_rows(dec.astype(np.float32))[0], atol=1e-6)

    buf = io.BytesIO()
    torch.save({"W_dec": torch.tensor(dec[200:])}, buf)
    rezipped = tmp_path / "rezipped.pt"
    with zipfile.ZipFile(buf) as src, zipfile.ZipFile(rezipped, "w", zipfile.ZIP_DEFLATED) as out:
        for info in src.infolist():
            out.writestr(info.filename, src.read(info))
    m = load(str(rezipped), cache=False, orientation="rows")
    np.testing.assert_allclose(m.decoder, unit_rows(dec[200:])[0], atol=1e-6)


def test_members_that_each_pass_are_still_held_to_the_ratio_together(tmp_path: Path) -> None:
    """Three members of 60 MiB of zeros: each under the floor below which any ratio is let
    through, together 180 MiB from about 0.2 MB (members may even share compressed bytes)."""
    path = tmp_path / "params.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for i in range(3):
            zf.writestr(f"m{i}.npy", bytes(60 << 20))
    with pytest.raises(FormatError, match="its zip members would inflate .* likely zip bomb"):
        load(str(path), cache=False)


def test_dangling_symlink_beside_the_weights(tmp_path: Path) -> None:
    """The cache key lists the folder's files; a dangling link there used to crash it."""
    p = planted()
    folder = write_saelens(tmp_path / "sae", p.decoder, p.encoder)
    (folder / "stale").symlink_to(tmp_path / "gone")
    np.testing.assert_allclose(load(str(folder)).decoder, unit_rows(p.decoder)[0], atol=1e-6)


# ----------------------------------------------------------------------------- the CLI


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    rc = main(argv)
    return rc, capsys.readouterr().err


def test_cli_on_every_hostile_file(hostile, tmp_path: Path, capsys) -> None:
    cases, marker = hostile
    out = tmp_path / "out.csv"
    for name, (path, expected) in cases.items():
        for argv in (["info", str(path)], ["compare", str(path), "-o", str(out)]):
            rc, err = _cli(argv, capsys)
            assert rc == 2, (name, argv, err)
            assert err.count("\n") == 1 and err.startswith("error: "), (name, err)
            assert expected in err.lower(), (name, err)
            assert not out.exists() and not marker.exists(), name
    assert len(default_cache()) == 0


def _strange_sources(tmp_path: Path) -> list[str]:
    fifo = tmp_path / "fifo" / "ae.pt"  # reading it would block forever
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    dangling = tmp_path / "dangling" / "sae_weights.safetensors"
    dangling.parent.mkdir()
    dangling.symlink_to(tmp_path / "nowhere")
    return [
        *HOSTILE_URIS,
        str(fifo),
        str(fifo.parent),
        str(dangling),
        "/etc",
        "/dev/zero",
        "/tmp/\x1b[2J\x1b[31mred.pt",  # a terminal escape must not reach the terminal
        "wandb:" + "x/" * 3000,
        "hf:" + "x" * 5000,
    ]


def test_cli_on_strange_sources(tmp_path: Path, capsys, monkeypatch) -> None:
    """Traversal strings, NUL bytes, huge names, pipes and devices: each one error line, exit 2
    (the CLI is an admin tool and may read local paths; it must just fail cleanly)."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out.csv"
    for uri in _strange_sources(tmp_path):
        for argv in (["info", uri], ["compare", uri, "-o", str(out)]):
            rc, err = _cli(argv, capsys)
            assert rc == 2, (uri[:80], err)
            assert err.count("\n") == 1 and err.startswith("error: "), (uri[:80], err)
            assert "\x00" not in err and "\x1b" not in err, err
            assert not out.exists()


@pytest.mark.parametrize(
    "uri", ["wandb:../../x", "wandb:e/../r", "wandb:./p/r", "hf:../x", "hf:o/..", "saelens:../r/x"]
)
def test_dot_names_never_become_folders(uri: str) -> None:
    """wandb:../../x used to parse, and its download folder cache/wandb/../../x lies outside
    the cache: a manifest found there was trusted and downloads would land there."""
    with pytest.raises(URIError, match="expected"):
        parse_uri(uri)


def test_cli_as_a_subprocess(hostile, tmp_path: Path) -> None:
    """The real `python -m sae_backend` on a few cases (each start imports torch: kept few)."""
    cases, marker = hostile
    out = tmp_path / "out.csv"
    runs = [
        (["info", str(cases["zip_bomb_npz"][0])], "zip bomb"),
        (["compare", str(cases["pickle_torch_zip"][0]), "-o", str(out)], REFUSED_PICKLE),
        (["info", "x" * 5000], "not a usable path"),
        (["compare", "../../../../etc/passwd", "-o", str(out)], "not a recognised sae file"),
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "sae_backend", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for argv, _ in runs
    ]
    for proc, (argv, expected) in zip(procs, runs, strict=True):
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 2, (argv[:2], stderr[-2000:])
        assert stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
        assert expected in stderr.lower(), stderr
        assert stdout == ""
    assert not out.exists() and not marker.exists()
    assert len(default_cache()) == 0
