"""Shared at tau, orphans and the matching export, on dictionaries with planted agreement,
against float64 references; and `compare --match --match-json --match-csv` as a user runs it."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from sae_backend.cli import main
from sae_backend.dictionary import Dictionary, RawSAE
from sae_backend.errors import InputError
from sae_backend.geometry.compare import compare, match
from sae_backend.geometry.shared import feature_status, matched_pairs, orphans, shared_summary
from sae_backend.matching_export import (
    CSV_COLUMNS,
    matching_document,
    matching_records,
    to_csv,
    to_json,
)
from tests.factories import unit_rows, write_saelens

D = 32


def planted(seed: int = 0):
    """A: 60 features (feature 7 dead). B: 66 features, a permutation of A's 60 plus 6 extra:
    0-29 close in decoder and encoder (shared), 30-44 close in decoder only, 45-59 unrelated."""
    rng = np.random.default_rng(seed)
    dec_a, enc_a = rng.standard_normal((60, D)), rng.standard_normal((60, D))
    dec_b, enc_b = rng.standard_normal((66, D)), rng.standard_normal((66, D))
    perm = rng.permutation(66)[:60]  # A's feature i sits at B's row perm[i]
    dec_b[perm[:45]] = dec_a[:45] + 0.05 * rng.standard_normal((45, D))
    enc_b[perm[:30]] = enc_a[:30] + 0.05 * rng.standard_normal((30, D))
    alive = np.ones(60, bool)
    alive[7] = False
    a = Dictionary.from_raw(RawSAE(dec_a, enc_a, alive=alive), source="A", format="t")
    b = Dictionary.from_raw(RawSAE(dec_b, enc_b), source="B", format="t")
    return a, b, dec_a, enc_a, dec_b, enc_b, alive


def reference(dec_a, enc_a, dec_b, enc_b, alive, tau):
    """float64: optimal decoder matching of A's alive features, both cosines, shared flags."""
    ia = np.flatnonzero(alive)
    ua, ub = unit_rows(dec_a)[0][ia], unit_rows(dec_b)[0]
    c = ua @ ub.T
    r, j = linear_sum_assignment(c, maximize=True)
    fa, fb = ia[r], j
    dec = c[r, j]
    enc = np.einsum("ij,ij->i", unit_rows(enc_a)[0][fa], unit_rows(enc_b)[0][fb])
    return fa, fb, dec, enc, (dec >= tau) & (enc >= tau), dec >= tau


@pytest.mark.parametrize("dense_limit", [4096, 0])  # Hungarian, then the certified solver
def test_shared_fractions_equal_float64_reference(dense_limit):
    a, b, dec_a, enc_a, dec_b, enc_b, alive = planted()
    m = match(a, b, dense_limit=dense_limit, k_candidates=4, cache=False)
    assert m.certified
    pairs = matched_pairs(a, b, m, "decoder")
    fa, fb, dec, enc, both, dec_only = reference(dec_a, enc_a, dec_b, enc_b, alive, 0.7)
    np.testing.assert_array_equal(pairs.a, fa)
    np.testing.assert_array_equal(pairs.b, fb)
    np.testing.assert_allclose(pairs.decoder_cos, dec, atol=1e-6)
    np.testing.assert_allclose(pairs.encoder_cos, enc, atol=1e-6)
    s = shared_summary(pairs, 0.7)
    assert s.n_pairs == 59
    assert s.fraction_shared == pytest.approx(both.mean()) and both.sum() == 29  # 7 is dead
    assert s.fraction_shared_decoder == pytest.approx(dec_only.mean()) and dec_only.sum() == 44
    assert s.mean_matched_cos == pytest.approx(dec.mean(), abs=1e-7)
    assert (s.n_orphans_a, s.n_orphans_b) == (59 - 29, 66 - 29)
    loose = shared_summary(pairs, 0.0)  # tau adjustable
    assert loose.fraction_shared == pytest.approx(((dec >= 0) & (enc >= 0)).mean())


def test_orphans_name_their_max_cos_partner_and_who_took_it():
    a, b, dec_a, enc_a, dec_b, enc_b, alive = planted(1)
    m = match(a, b, cache=False)
    pairs = matched_pairs(a, b, m, "decoder")
    fa, fb, dec, enc, both, _ = reference(dec_a, enc_a, dec_b, enc_b, alive, 0.7)
    c = unit_rows(dec_a)[0] @ unit_rows(dec_b)[0].T  # [60, 66] float64
    for side, near, n, alive_index in (
        ("a", compare(a, b, cache=False), 60, a.alive_index),
        ("b", compare(b, a, cache=False), 66, b.alive_index),
    ):
        o = orphans(pairs, side, near, alive_index, tau=0.7)
        mine, other = (fa, fb) if side == "a" else (fb, fa)
        shared_here = set(mine[both].tolist())
        expected = sorted(set(alive_index.tolist()) - shared_here)
        assert o.feature.tolist() == expected
        partner = dict(zip(mine.tolist(), other.tolist(), strict=True))
        owner = dict(zip(other.tolist(), mine.tolist(), strict=True))
        cs = c if side == "a" else c.T
        cols = np.flatnonzero(b.alive) if side == "a" else np.flatnonzero(a.alive)
        for row in o.to_rows():
            f = row["feature"]
            assert row["status"] == ("below" if f in partner else "unmatched")
            assert row["partner"] == partner.get(f, -1)
            best = cols[np.argmax(cs[f, cols])]
            assert row["nearest"] == best
            assert row["nearest_cos"] == pytest.approx(cs[f, best], abs=1e-6)
            assert row["taken_by"] == owner.get(int(best), -1)
        status = feature_status(pairs, side, n, alive_index, 0.7)
        assert set(np.flatnonzero(status == "shared").tolist()) == shared_here
        if side == "a":
            assert status[7] == "dead"
        assert (status == "unmatched").sum() == (7 if side == "b" else 0)


def test_orphans_reject_a_comparison_of_the_wrong_kind():
    a, b, *_ = planted()
    pairs = matched_pairs(a, b, match(a, b, cache=False), "decoder")
    with pytest.raises(InputError, match="other dictionary"):
        orphans(pairs, "a", compare(a, cache=False), a.alive_index)
    with pytest.raises(InputError, match="directions"):
        orphans(pairs, "a", compare(a, b, directions="encoder", cache=False), a.alive_index)
    with pytest.raises(InputError, match="tau"):
        shared_summary(pairs, 1.5)


def test_export_document_and_csv_round_trip():
    a, b, dec_a, enc_a, dec_b, enc_b, alive = planted(2)
    m = match(a, b, dense_limit=0, k_candidates=4, cache=False)
    pairs = matched_pairs(a, b, m, "decoder")
    doc = matching_document(a, b, m, pairs, tau=0.7, sources=("path/a", "path/b"))
    back = json.loads(to_json(doc))
    assert back == json.loads(json.dumps(doc))  # the text is the document
    assert {"certified", "objective", "method", "sources", "pairs"} <= set(back)
    assert back["certified"] is True and back["method"] == "sparse"
    assert back["sources"] == {"a": "path/a", "b": "path/b"}
    assert back["fingerprints"] == {"a": a.fingerprint, "b": b.fingerprint}
    assert back["tau"] == 0.7 and back["directions"] == "decoder"
    assert back["package"]["name"] == "sae-backend" and back["created"]
    fa, fb, dec, enc, both, _ = reference(dec_a, enc_a, dec_b, enc_b, alive, 0.7)
    assert back["objective"] == pytest.approx(math.fsum(dec.tolist()), abs=1e-6)
    assert back["objective"] == pytest.approx(sum(p["decoder_cos"] for p in back["pairs"]))
    assert [(p["a"], p["b"], p["shared"]) for p in back["pairs"]] == list(
        zip(fa.tolist(), fb.tolist(), both.tolist(), strict=True)
    )
    rows = list(csv.DictReader(io.StringIO(to_csv(matching_records(pairs, 0.7)))))
    assert tuple(rows[0]) == CSV_COLUMNS
    np.testing.assert_allclose([float(r["encoder_cos"]) for r in rows], enc, atol=1e-6)
    assert [r["shared"] == "true" for r in rows] == both.tolist()


def test_export_without_encoders_is_decoder_only():
    a, b, *_ = planted(3)
    a2 = Dictionary.from_raw(RawSAE(a.decoder), source="A", format="t")
    m = match(a2, b, cache=False)
    pairs = matched_pairs(a2, b, m, "decoder")
    doc = json.loads(to_json(matching_document(a2, b, m, pairs, tau=0.7)))
    assert doc["fraction_shared"] is None and doc["criterion"] == "decoder"
    assert all(p["encoder_cos"] is None for p in doc["pairs"])
    assert [p["shared"] for p in doc["pairs"]] == (pairs.decoder_cos >= 0.7).tolist()


def test_cli_compare_match_writes_json_and_csv(tmp_path, capsys):
    _, _, dec_a, enc_a, dec_b, enc_b, _ = planted(4)
    pa = write_saelens(tmp_path / "a", dec_a, enc_a)
    pb = write_saelens(tmp_path / "b", dec_b, enc_b)
    out, js, pc = tmp_path / "o.csv", tmp_path / "m.json", tmp_path / "pairs.csv"
    args = ["compare", str(pa), str(pb), "--match", "--match-json", str(js),
            "--match-csv", str(pc), "-o", str(out), "--no-cache", "--tau", "0.6"]  # fmt: skip
    assert main(args) == 0
    doc = json.loads(js.read_text())
    assert doc["certified"] is True and doc["tau"] == 0.6
    assert doc["sources"] == {"a": str(pa), "b": str(pb)}
    fa, fb, dec, enc, both, _ = reference(dec_a, enc_a, dec_b, enc_b, np.ones(60, bool), 0.6)
    assert [p["a"] for p in doc["pairs"]] == fa.tolist()
    assert [p["b"] for p in doc["pairs"]] == fb.tolist()
    assert doc["objective"] == pytest.approx(dec.sum(), abs=1e-6)
    rows = list(csv.DictReader(pc.open()))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 60
    assert [r["shared"] == "true" for r in rows] == both.tolist()
    table = list(csv.DictReader(out.open()))
    assert list(table[0]) == ["feature", "max_cos", "nearest", "matched", "matched_cos"]
    assert [int(r["matched"]) for r in table] == fb.tolist()
    text = capsys.readouterr().out
    assert "shared at tau=0.6" in text and "exact optimum" in text


def test_cli_match_outputs_need_match_and_write_nothing(tmp_path, capsys):
    _, _, dec_a, enc_a, dec_b, enc_b, _ = planted(5)
    pa = write_saelens(tmp_path / "a", dec_a, enc_a)
    pb = write_saelens(tmp_path / "b", dec_b, enc_b)
    js, out = tmp_path / "m.json", tmp_path / "o.csv"
    assert main(["compare", str(pa), str(pb), "--match-json", str(js), "-o", str(out)]) == 2
    assert main(["compare", str(pa), str(pb), "--match", "--tau", "2", "-o", str(out)]) == 2
    assert not js.exists() and not out.exists()
    assert capsys.readouterr().err.count("error:") == 2
