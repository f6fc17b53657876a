"""The CLI as a user runs it: JSON info, CSV tables equal to float64 references, one-line errors."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sae_backend.cli import main
from tests.factories import e2e_state, unit_rows, write_matrix, write_saelens

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def pair(tmp_path):
    rng = np.random.default_rng(0)
    dec_a = rng.standard_normal((200, 20))
    perm = rng.permutation(200)
    dec_b = dec_a[perm] + 0.1 * rng.standard_normal((200, 20))
    dens = rng.uniform(1e-3, 1e-1, 200)
    dens[[7, 8]] = 0.0
    a = write_saelens(tmp_path / "a", dec_a, rng.standard_normal((200, 20)), density=dens)
    b = write_saelens(tmp_path / "b", dec_b, None)
    return a, b, dec_a, dec_b, perm, dens > 0


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_info_json(tmp_path, capsys, pair):
    a, *_ = pair
    assert main(["info", str(a)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_features"] == 200 and info["d_model"] == 20 and info["n_alive"] == 198
    assert info["format"] == "saelens" and info["has_encoder"] is True
    assert info["hook"] == "blocks.3.hook_resid_pre"


def test_compare_two_with_match(tmp_path, capsys, pair):
    a, b, dec_a, dec_b, perm, alive_a = pair
    out = tmp_path / "out" / "ab.csv"
    assert main(["compare", str(a), str(b), "--output", str(out), "--k", "3", "--match"]) == 0
    rows = read_csv(out)
    assert list(rows[0]) == [
        "feature",
        "max_cos",
        "nearest",
        "neighbours",
        "cosines",
        "matched",
        "matched_cos",
    ]
    ia = np.flatnonzero(alive_a)
    assert [int(r["feature"]) for r in rows] == ia.tolist()
    s = unit_rows(dec_a)[0][ia] @ unit_rows(dec_b)[0].T
    np.testing.assert_allclose([float(r["max_cos"]) for r in rows], s.max(1), atol=1e-6)
    np.testing.assert_array_equal([int(r["nearest"]) for r in rows], s.argmax(1))
    top3 = np.argsort(-s, axis=1)[:, :3]
    np.testing.assert_array_equal([[int(x) for x in r["neighbours"].split()] for r in rows], top3)
    where = np.argsort(perm)
    np.testing.assert_array_equal([int(r["matched"]) for r in rows], where[ia])
    text = capsys.readouterr().out
    assert "MMCS" in text and "one-to-one (hungarian)" in text


def test_compare_within_one(tmp_path, pair):
    a, _, dec_a, _, _, alive_a = pair
    out = tmp_path / "self.csv"
    assert main(["compare", str(a), "--output", str(out)]) == 0
    rows = read_csv(out)
    ia = np.flatnonzero(alive_a)
    u = unit_rows(dec_a)[0][ia]
    s = u @ u.T
    np.fill_diagonal(s, -np.inf)
    np.testing.assert_allclose([float(r["max_cos"]) for r in rows], s.max(1), atol=1e-6)
    np.testing.assert_array_equal([int(r["nearest"]) for r in rows], ia[s.argmax(1)])


def test_plain_matrix_needs_orientation(tmp_path, capsys):
    m = write_matrix(tmp_path / "m.npy", np.random.default_rng(0).standard_normal((16, 40)))
    assert main(["info", str(m)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "--orientation" in err
    assert main(["info", str(m), "--orientation", "columns"]) == 0
    assert json.loads(capsys.readouterr().out)["n_features"] == 40


@pytest.mark.parametrize(
    "args, message",
    [
        (["info", "/no/such/file.pt"], "no such file"),
        (["info", "ftp:x"], "unknown source scheme"),
        (["compare", "{a}", "{c}", "--output", "{out}"], "d_model"),
        (["compare", "{a}", "--output", "{out}", "--k", "500"], "k must be between"),
        (["compare", "{a}", "--output", "{out}", "--match"], "--match needs two"),
        (["compare", "{bad}", "--output", "{out}"], "bad.pt"),
        (["compare", "{a}", "--output", "{out}", "--device", "gpu0"], "use auto, cpu, cuda"),
        (["compare", "{a}", "--output", "{out}", "--device", "cuda:7"], "not available"),
        (["precompute", "{a}", "--device", "bogus"], "device 'bogus'"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, pair, args, message):
    a, *_ = pair
    c = write_saelens(tmp_path / "c", np.eye(6), None)
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    out = tmp_path / "never.csv"
    args = [x.format(a=a, c=c, out=out, bad=bad) for x in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not out.exists()


def test_module_entry_point_e2e_positions(tmp_path):
    """`python -m sae_backend` in a subprocess: a multi-SAE e2e file needs #POSITION."""
    import torch

    rng = np.random.default_rng(2)
    saes = {p: (rng.standard_normal((30, 8)), rng.standard_normal((30, 8)))
            for p in ("blocks.2.hook_resid_pre", "blocks.6.hook_resid_pre")}  # fmt: skip
    path = tmp_path / "two.pt"
    torch.save(e2e_state(saes), path)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SAE_CACHE_DIR": str(tmp_path / "c")}
    run = [sys.executable, "-m", "sae_backend", "info"]
    bad = subprocess.run(run + [str(path)], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "blocks.2.hook_resid_pre" in bad.stderr and "blocks.6.hook_resid_pre" in bad.stderr
    ok = subprocess.run(
        run + [f"{path}#blocks.6.hook_resid_pre"], capture_output=True, text=True, env=env
    )
    assert ok.returncode == 0, ok.stderr
    info = json.loads(ok.stdout)
    assert info["hook"] == "blocks.6.hook_resid_pre" and info["layer"] == 6
    assert info["n_features"] == 30 and info["format"] == "e2e_sae"


def test_umap_writes_neuronpedia_csv_and_fills_the_cache(tmp_path, capsys, pair):
    """`umap A B -o out.csv`: one row per included feature, RunType = the SRC as typed; the
    embedding lands in the cache, so a second run (and the app) reads it instead."""
    from sae_backend.cache import ArrayCache
    from sae_backend.loader import load
    from sae_backend.projection import umap_embedding

    a, b, _, _, _, alive_a = pair
    out = tmp_path / "umap.csv"
    args = ["umap", str(a), str(b), "-o", str(out), "--n-neighbors", "8", "--seed", "3"]
    assert main(args) == 0
    assert "umap of 398 features from 2 dictionaries" in capsys.readouterr().out
    rows = read_csv(out)
    assert list(rows[0]) == ["RunType", "EmbeddingIndex", "X", "Y"]
    assert [r["RunType"] for r in rows] == [str(a)] * 198 + [str(b)] * 200
    index = [int(r["EmbeddingIndex"]) for r in rows]
    assert index == np.flatnonzero(alive_a).tolist() + list(range(200))
    store = ArrayCache()  # the default folder, as the app would open it
    emb = umap_embedding([load(str(a)), load(str(b))], n_neighbors=8, seed=3, cache=store)
    assert store.stats.hits == 1 and store.stats.misses == 0
    xy = np.array([[float(r["X"]), float(r["Y"])] for r in rows])
    np.testing.assert_allclose(xy, emb.xy, atol=1e-5)


@pytest.mark.parametrize(
    "args, message",
    [
        (["umap", "{a}", "{c}", "-o", "{out}"], "d_model"),
        (["umap", "{c}", "-o", "{out}"], "6 alive features"),
        (["umap", "{a}", "-o", "{out}", "--min-dist", "3"], "min_dist"),
        (["umap", "{a}", "--no-cache"], "nothing to do"),
    ],
)
def test_umap_bad_input_is_one_line(tmp_path, capsys, pair, args, message):
    a, *_ = pair
    c = write_saelens(tmp_path / "c", np.eye(6), None)
    out = tmp_path / "never.csv"
    assert main([x.format(a=a, c=c, out=out) for x in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not out.exists()
