"""Dictionaries read their big matrices only when used, and a cached answer needs no torch.

A loaded dictionary holds its fingerprint and small arrays; the unit decoder (kept from the
first read) and encoder are read from the files on first use, chunk by chunk, and come out
bit for bit as normalising the whole matrix at once would give them, so fingerprints do not
depend on the chunking or on how a file lays a matrix out.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sae_backend import compare, load
from sae_backend import dictionary as dictionary_module
from sae_backend.dictionary import Dictionary, RawSAE, fingerprint_arrays, unit_rows
from sae_backend.errors import FormatError, InputError
from tests.factories import planted, write_saelens

ROOT = Path(__file__).resolve().parents[1]


def whole_matrix_reference(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The normalisation on the whole matrix at once (float64 norms over row-major rows)."""
    m64 = np.ascontiguousarray(np.asarray(m).astype(np.float32), dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", m64, m64))
    live = norms > 1e-12 * max(norms.max(), 1e-300)
    unit = np.zeros_like(m64)
    unit[live] = m64[live] / norms[live, None]
    return unit.astype(np.float32), np.where(live, norms, 0.0).astype(np.float32)


@pytest.mark.parametrize("chunk_bytes", [8 * 24, 8 * 24 * 7, 2**24])
def test_chunked_normalisation_is_bit_for_bit_the_whole_one(chunk_bytes, monkeypatch):
    monkeypatch.setattr(dictionary_module, "_CHUNK_BYTES", chunk_bytes)  # 1 row, 7 rows, all
    rng = np.random.default_rng(0)
    m = rng.standard_normal((101, 24)) * rng.uniform(1e-3, 1e3, (101, 1))
    m[[5, 50]] = 0.0
    m[7] *= 1e-14  # below the zero threshold relative to the largest row: dead
    for layout in (m, np.asfortranarray(m), m.astype(np.float16), m.T.copy().T):
        want_unit, want_norms = whole_matrix_reference(layout)
        got_unit, got_norms = unit_rows(layout)
        np.testing.assert_array_equal(got_unit, want_unit)
        np.testing.assert_array_equal(got_norms, want_norms)
        assert not got_unit[7].any() and got_norms[7] == 0
    # the streamed fingerprint is fingerprint_arrays of the whole arrays, whatever the chunks
    enc = rng.standard_normal((101, 24))
    d = Dictionary.from_raw(RawSAE(decoder=m, encoder=enc), source="x", format="t")
    want_fp = fingerprint_arrays(whole_matrix_reference(m)[0], whole_matrix_reference(enc)[0],
                                 d.alive)  # fmt: skip
    assert d.fingerprint == want_fp


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_saelens_matrices_read_lazily_equal_the_whole_arrays(tmp_path, dtype):
    p = planted(d=12)
    folder = write_saelens(tmp_path / "sae", p.decoder, p.encoder, dtype=dtype)
    got = load(str(folder), cache=False)
    stored_dec = torch.tensor(p.decoder).to(dtype).float().numpy()  # what the file holds
    stored_enc = torch.tensor(p.encoder).to(dtype).float().numpy()
    same = Dictionary.from_raw(RawSAE(decoder=stored_dec, encoder=stored_enc), source="x",
                               format="t")  # fmt: skip
    assert "encoder" not in got._rows.held  # hashed for the fingerprint, not kept
    np.testing.assert_array_equal(got.decoder, same.decoder)
    np.testing.assert_array_equal(got.encoder, same.encoder)  # read now, W_enc transposed
    assert got.fingerprint == same.fingerprint  # layout and chunking do not matter


def test_a_decoder_comparison_never_holds_an_encoder(tmp_path):
    rng = np.random.default_rng(1)
    a_path = write_saelens(tmp_path / "a", rng.standard_normal((80, 10)), rng.standard_normal((80, 10)))
    b_path = write_saelens(tmp_path / "b", rng.standard_normal((90, 10)), rng.standard_normal((90, 10)))
    a, b = load(str(a_path)), load(str(b_path))
    res = compare(a, b, k=3)
    assert "encoder" not in a._rows.held and "encoder" not in b._rows.held
    want = a.decoder.astype(np.float64) @ b.decoder.astype(np.float64).T
    np.testing.assert_allclose(res.max_cos, want.max(axis=1), atol=1e-6)
    enc = compare(a, b, directions="encoder", k=1)  # read on demand, then held
    assert "encoder" in a._rows.held
    want_enc = a.encoder.astype(np.float64) @ b.encoder.astype(np.float64).T
    np.testing.assert_allclose(enc.max_cos, want_enc.max(axis=1), atol=1e-6)


def test_a_cached_dictionary_reads_its_rows_on_first_use(tmp_path):
    p = planted()
    folder = write_saelens(tmp_path / "sae", p.decoder, p.encoder)
    first = load(str(folder))
    second = load(str(folder))  # from the cache: fingerprint and small arrays only
    assert second.fingerprint == first.fingerprint and not second._rows.held
    assert second.n_features == 10 and second.d_model == 6 and second.has_encoder
    np.testing.assert_array_equal(second.decoder, first.decoder)
    np.testing.assert_array_equal(second.encoder, first.encoder)
    assert not second.decoder.flags.writeable


def test_files_changed_after_loading_refuse_a_lazy_read(tmp_path):
    p = planted()
    folder = write_saelens(tmp_path / "sae", p.decoder, p.encoder)
    load(str(folder))
    cached = load(str(folder))
    write_saelens(folder, p.decoder[::-1].copy(), p.encoder)
    weights = folder / "sae_weights.safetensors"
    st = os.stat(weights)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(InputError, match="changed since it was loaded") as e:
        cached.decoder  # noqa: B018 (the read is the test)
    assert "\n" not in str(e.value)


def test_nan_in_a_lazily_read_encoder_fails_the_load(tmp_path):
    p = planted()
    enc = p.encoder.copy()
    enc[3, 2] = np.nan
    enc[4, 1] = np.inf
    folder = write_saelens(tmp_path / "sae", p.decoder, enc)
    with pytest.raises(FormatError, match="W_enc contains 1 NaN and 1 Inf values") as e:
        load(str(folder))
    assert str(folder / "sae_weights.safetensors") in str(e.value)


_WHAT_WAS_IMPORTED = """
import json, sys
from sae_backend.cli import main
code = main(sys.argv[1:])
heavy = sorted(m for m in ("torch", "scipy", "umap", "numba", "sklearn", "pandas", "tqdm")
               if m in sys.modules)
print(json.dumps({"code": code, "heavy": heavy}))
"""


def test_a_cached_compare_imports_no_torch_scipy_or_umap(tmp_path):
    rng = np.random.default_rng(2)
    a = write_saelens(tmp_path / "a", rng.standard_normal((300, 16)), rng.standard_normal((300, 16)))
    b = write_saelens(tmp_path / "b", rng.standard_normal((200, 16)), None)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SAE_CACHE_DIR": str(tmp_path / "cache")}

    def run(out: str) -> dict:
        cmd = [sys.executable, "-c", _WHAT_WAS_IMPORTED, "compare", str(a), str(b), "-o",
               str(tmp_path / out), "--k", "3", "--match"]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    cold = run("cold.csv")
    assert "torch" in cold["heavy"]  # computing needs it (the check is not vacuous)
    cached = run("cached.csv")
    assert cached == {"code": 0, "heavy": []}
    assert (tmp_path / "cold.csv").read_bytes() == (tmp_path / "cached.csv").read_bytes()


def test_release_forgets_only_rows_that_can_be_read_again(tmp_path):
    p = planted()
    loaded = load(str(write_saelens(tmp_path / "sae", p.decoder, p.encoder)))
    want = loaded.decoder.copy()
    loaded.release()
    assert not loaded._rows.held
    np.testing.assert_array_equal(loaded.decoder, want)  # read again
    in_memory = Dictionary.from_raw(RawSAE(decoder=p.decoder, encoder=p.encoder), source="m",
                                    format="t")  # fmt: skip
    in_memory.release()  # nothing to read them from: kept
    assert set(in_memory._rows.held) == {"decoder", "encoder"}


def test_umap_reads_rows_only_to_compute_and_can_release_them(tmp_path):
    from sae_backend.projection import umap_embedding

    rng = np.random.default_rng(3)
    paths = [write_saelens(tmp_path / name, rng.standard_normal((60, 8)), None)
             for name in ("a", "b")]  # fmt: skip
    dicts = [load(str(p)) for p in paths]
    first = umap_embedding(dicts, n_neighbors=5, n_epochs=20, release_rows=True)
    assert not any(d._rows.held for d in dicts)  # the CLI's memory: only the stacked copy
    again = [load(str(p)) for p in paths]  # from the cache: nothing read
    cached = umap_embedding(again, n_neighbors=5, n_epochs=20)
    assert not any(d._rows.held for d in again)
    np.testing.assert_array_equal(cached.xy, first.xy)
    np.testing.assert_array_equal(cached.feature, first.feature)


def test_a_memory_budget_counts_rows_not_read_yet(tmp_path):
    """The hosted store measures a dictionary when it stores it: rows read later must count."""
    from sae_backend.memory import nbytes

    p = planted(d=12)
    folder = write_saelens(tmp_path / "sae", p.decoder, p.encoder)
    load(str(folder))
    cached = load(str(folder))
    assert not cached._rows.held
    whole = cached.decoder.nbytes + cached.encoder.nbytes + cached.decoder_norms.nbytes
    assert nbytes(cached) == whole + cached.alive.nbytes


def test_a_pickled_dictionary_carries_its_rows_where_the_files_are_not(tmp_path):
    """Ray's object store ships dictionaries to workers by pickling: the copy must hold its
    unit rows (read on pickling), with no lock or file reader, and equal the original."""
    import pickle
    import shutil

    p = planted()
    folder = write_saelens(tmp_path / "sae", p.decoder, p.encoder)
    load(str(folder))
    lazy = load(str(folder))  # from the cache: nothing held yet
    assert not lazy._rows.held
    copy = pickle.loads(pickle.dumps(lazy))
    shutil.rmtree(folder)  # the copy reads nothing from here
    assert copy.fingerprint == lazy.fingerprint and copy._rows.reload is None
    np.testing.assert_array_equal(copy.decoder, lazy.decoder)
    np.testing.assert_array_equal(copy.encoder, lazy.encoder)
    copy.release()  # cannot be read again: kept
    assert set(copy._rows.held) == {"decoder", "encoder"}
