"""The `families`, `absorption` and `frame` commands as a user runs them: the issue's exact
columns and keys, values equal to references, one-line errors that write nothing."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from sae_backend.cli import main
from tests.factories import write_saelens
from tests.ladders import (
    DAG_EDGES,
    TREE_EDGES,
    TREE_LABELS,
    TREE_NOVEL,
    absorption_reference,
    families_reference,
    planted_ladder,
)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture()
def ladder(tmp_path):
    lad = planted_ladder()
    paths = [
        str(write_saelens(tmp_path / f"w{i}", dec, None, hook=hook))
        for i, (dec, hook) in enumerate(zip(lad.decoders, lad.hooks, strict=True))
    ]
    return lad, paths


@pytest.mark.parametrize("dag", [False, True])
def test_families_edges_and_labels(tmp_path, capsys, ladder, dag):
    lad, paths = ladder
    edges, labels = tmp_path / "out" / "edges.csv", tmp_path / "out" / "labels.csv"
    args = ["families", *paths, "-o", str(edges), "--labels", str(labels), "--tau", "0.5"]
    assert main(args + (["--all-parents"] if dag else [])) == 0
    rows = read_csv(edges)
    assert list(rows[0]) == ["level", "parent", "child", "cosine"]
    got = {(int(r["level"]), int(r["parent"]), int(r["child"])): float(r["cosine"]) for r in rows}
    expected = DAG_EDGES if dag else TREE_EDGES
    assert set(got) == {(lv, p, c) for lv, pairs in expected.items() for p, c in pairs}
    for lv in (0, 1):
        ref = families_reference(lad.decoders[lv], lad.decoders[lv + 1], 0.5, dag=dag)
        for (p, c), v in ref.items():
            assert abs(got[(lv, p, c)] - v) <= 1e-5
    lab = read_csv(labels)
    assert list(lab[0]) == ["dictionary", "feature", "label"]
    triples = {(int(r["dictionary"]), int(r["feature"]), r["label"]) for r in lab}
    if not dag:
        expected_labels = {(lv, f, x) for lv, m in TREE_LABELS.items() for f, x in m.items()}
        expected_labels |= {(i, f, "novel") for i, fs in TREE_NOVEL.items() for f in fs}
        assert triples == expected_labels
    else:
        assert (0, 1, "split") in triples and (1, 5, "novel") not in triples
    out = capsys.readouterr()
    assert "level 0" in out.out and "1 split" in out.out and out.err.count("warning") == 0


def test_families_default_tau_and_hook_warning(tmp_path, capsys):
    lad = planted_ladder()
    paths = [
        str(write_saelens(tmp_path / f"h{i}", dec, None, hook=f"blocks.{i}.hook_resid_pre"))
        for i, dec in enumerate(lad.decoders[:2])
    ]
    edges = tmp_path / "e.csv"
    assert main(["families", *paths, "-o", str(edges)]) == 0
    err = capsys.readouterr().err
    assert "warning: the ladder mixes hooks" in err
    assert {(int(r["parent"]), int(r["child"])) for r in read_csv(edges)} == TREE_EDGES[0]


def test_absorption_csv(tmp_path, capsys):
    rng = np.random.default_rng(6)
    dec = rng.standard_normal((60, 10))
    enc = rng.standard_normal((60, 10))
    dens = rng.uniform(1e-3, 1e-1, 60)
    dens[[4, 30]] = 0.0  # dead per the source
    src = write_saelens(tmp_path / "sae", dec, enc, density=dens)
    out = tmp_path / "abs.csv"
    assert main(["absorption", str(src), "-o", str(out), "--k", "3"]) == 0
    rows = read_csv(out)
    assert list(rows[0]) == ["feature", "partner", "enc_dec_cos", "dec_dec_cos"]
    alive = dens > 0
    feature, partner, enc_dec, dec_dec = absorption_reference(enc[alive], dec[alive], 3)
    index = np.flatnonzero(alive)
    assert len(rows) == 58 * 3
    for i, r in enumerate(rows):
        row, j = divmod(i, 3)  # one row per pair, the most negative partner first
        assert int(r["feature"]) == index[feature[row]]
        assert int(r["partner"]) == index[partner[row, j]]
        assert abs(float(r["enc_dec_cos"]) - enc_dec[row, j]) <= 1e-5
        assert abs(float(r["dec_dec_cos"]) - dec_dec[row, j]) <= 1e-5
    assert "most negative" in capsys.readouterr().out


def test_frame_json(tmp_path, capsys):
    rng = np.random.default_rng(7)
    dec = rng.standard_normal((50, 8))
    src = write_saelens(tmp_path / "sae", dec, None)
    assert main(["frame", str(src)]) == 0
    doc = json.loads(capsys.readouterr().out)
    for key in ("coherence", "welch_bound", "frame_potential", "frame_potential_bound",
                "effective_rank", "capacity_sum", "n_features", "d_model"):  # fmt: skip
        assert key in doc
    u = dec / np.linalg.norm(dec, axis=1, keepdims=True)
    s = u @ u.T
    off = np.abs(s - np.diag(np.diag(s)))
    assert doc["n_features"] == 50 and doc["d_model"] == 8
    assert doc["coherence"] == pytest.approx(off.max(), abs=1e-5)
    assert doc["welch_bound"] == pytest.approx(np.sqrt(42 / (8 * 49)))
    assert doc["frame_potential"] == pytest.approx((s**2).sum(), rel=1e-6)
    assert doc["frame_potential_bound"] == pytest.approx(50**2 / 8)
    assert doc["capacity_sum"] == pytest.approx((1 / (s**2).sum(axis=1)).sum(), rel=1e-6)
    assert "Roy & Vetterli" in doc["effective_rank_definition"]
    one = write_saelens(tmp_path / "one", dec[:1], None)
    assert main(["frame", str(one)]) == 0
    single = json.loads(capsys.readouterr().out)  # strict JSON: null, not NaN
    assert single["coherence"] is None and single["n_features"] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["families", "{a}", "-o", "{out}"], "at least two sources"),
        (["families", "{a}", "{b}", "-o", "{out}", "--tau", "0"], "--tau must be in (0, 1]"),
        (["families", "{a}", "{b}", "-o", "{out}", "--tau", "1.5"], "--tau must be in (0, 1]"),
        (["families", "{a}", "{c}", "-o", "{out}", "--labels", "{out2}"], "d_model"),
        (["absorption", "{b}", "-o", "{out}"], "no encoder"),
        (["absorption", "{a}", "-o", "{out}", "--k", "0"], "k must be between 1 and"),
        (["absorption", "{a}", "-o", "{out}", "--k", "500"], "k must be between 1 and"),
        (["frame", "{bad}"], "bad.pt"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, message):
    rng = np.random.default_rng(0)
    a = write_saelens(tmp_path / "a", rng.standard_normal((20, 6)), rng.standard_normal((20, 6)))
    b = write_saelens(tmp_path / "b", rng.standard_normal((30, 6)), None)
    c = write_saelens(tmp_path / "c", np.eye(5), None)
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    out, out2 = tmp_path / "never.csv", tmp_path / "never2.csv"
    args = [x.format(a=a, b=b, c=c, out=out, out2=out2, bad=bad) for x in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not out.exists() and not out2.exists()
