"""`precompute` and the caches it fills: after it, the dashboard's calls are all cache hits, and
what they read equals float64 references and uncached runs. Also: match() and random_null()
are disk-cached (hit on the second call, exact round trip, corrupt entries recomputed).

Small planted dictionaries (300-360 features, d = 32) in SAELens folders on disk. umap-learn
compiles its numba kernels once per process (~10 s), so only one precompute here runs UMAPs;
the subprocess run is --no-umap.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import diskcache
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from sae_backend.cache import ArrayCache, SafeDisk, default_cache, make_key
from sae_backend.cli import main
from sae_backend.dictionary import Dictionary, RawSAE
from sae_backend.errors import InputError
from sae_backend.geometry.compare import MATCHING_VERSION, compare, match
from sae_backend.geometry.matching import DEFAULT_TOLERANCE, K_CANDIDATES
from sae_backend.geometry.stats import random_null, random_unit_rows
from sae_backend.loader import load
from sae_backend.precompute import UMAP_PAGE_SELECTION, catalogue_sources, precompute
from sae_backend.projection import UMAP_DEFAULTS, umap_embedding
from tests.factories import unit_rows, write_saelens

ROOT = Path(__file__).resolve().parents[1]
D = 32
DIRS = ("decoder", "encoder")
UMAP_PAGE = UMAP_DEFAULTS  # pages/3_UMAP.py's widget defaults (the test below checks)


@pytest.fixture()
def saes(tmp_path):
    """Three SAELens folders: b is a permuted noisy copy of a's first 320 rows, c has no
    encoder; a has dead features (density 0), b a zero row. Sizes all differ."""
    rng = np.random.default_rng(11)
    dec_a = rng.standard_normal((360, D))
    dens_a = rng.uniform(1e-3, 1e-1, 360)
    dens_a[[5, 17, 200]] = 0.0
    perm = rng.permutation(320)
    dec_b = dec_a[perm] + 0.15 * rng.standard_normal((320, D))
    dec_b[40] = 0.0
    dec_c = rng.standard_normal((300, D))
    enc_a, enc_b = rng.standard_normal((360, D)), rng.standard_normal((320, D))
    paths = {
        "a": write_saelens(tmp_path / "a", dec_a, enc_a, density=dens_a),
        "b": write_saelens(tmp_path / "b", dec_b, enc_b),
        "c": write_saelens(tmp_path / "c", dec_c, None),
    }
    paths = {n: str(p) for n, p in paths.items()}
    return {"paths": paths, "perm": perm, "dec": [dec_a, dec_b], "enc": [enc_a, enc_b]}


def page_calls(dicts: dict[str, Dictionary]) -> int:
    """Every call the pages make for these loaded dictionaries (names in list order), with the
    arguments dashboard/*.py and pages/*.py pass; returns the number of cached calls."""
    names, n = list(dicts), 0
    for dirs in DIRS:
        usable = [x for x in names if dirs == "decoder" or dicts[x].has_encoder]
        for a in usable:
            for b in [None, *(x for x in usable if x != a)]:
                other = None if b is None else dicts[b]
                compare(dicts[a], other, directions=dirs, k=1)  # Home, Similarity, UMAP colours
                n_b = None if other is None else int(len(other.alive_index))
                random_null(int(len(dicts[a].alive_index)), n_b, dicts[a].d_model)  # null_max_cos
                n += 2
                if other is not None:
                    match(dicts[a], other, directions=dirs)  # Similarity, Neighbours
                    n += 1
        selections = [names[:2]] + [[x] for x in names]  # the page's default, each alone
        for sel in selections:
            if all(x in usable for x in sel):
                umap_embedding([dicts[x] for x in sel], directions=dirs, **UMAP_PAGE)
                n += 1
    return n


def assert_same_matching(m1, m2) -> None:
    np.testing.assert_array_equal(m1.b_index, m2.b_index)
    np.testing.assert_array_equal(m1.cosine, m2.cosine)  # NaN where unmatched, in both
    np.testing.assert_array_equal(m1.potentials_a, m2.potentials_a)
    np.testing.assert_array_equal(m1.potentials_b, m2.potentials_b)
    fields = ("total", "mean", "n_matched", "method", "upper_bound", "n_candidates",
              "certified", "tolerance", "rounds")  # fmt: skip
    assert [getattr(m1, f) for f in fields] == [getattr(m2, f) for f in fields]
    assert m1.bound == m2.bound or (np.isnan(m1.bound) and np.isnan(m2.bound))


# ---- precompute, then the pages ---------------------------------------------------------------


def test_cli_precompute_leaves_the_pages_nothing_to_compute(saes, capsys):
    paths = saes["paths"]
    args = ["precompute", paths["a"], paths["b"], paths["c"], "--device", "cpu", "--json"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    # compare: decoder 3 within + 6 pairs, encoder 2 + 2 (c has none); nulls: 9 distinct sizes;
    # match: decoder 6, encoder 2; umap: decoder a+b, a, b, c; encoder a+b, a, b.
    assert first["counts"] == {"computed": 37, "cached": 0, "failed": 0, "skipped": 10}
    skipped = [i for i in first["items"] if i["status"] == "skipped"]
    assert all(paths["c"] in i["label"] and "encoder" in i["label"] for i in skipped)
    assert all(i["message"] == f"no encoder directions in {paths['c']}" for i in skipped)

    store = default_cache()  # the process-wide cache the pages use
    before = store.stats
    dicts = {n: load(p) for n, p in paths.items()}  # as dashboard.store loads: load(uri)
    calls = page_calls(dicts)
    after = store.stats
    assert after.misses == before.misses and after.failures == before.failures
    # 3 loads; decoder: 9 compares, 9 nulls, 6 matches, 4 UMAPs; encoder: 4, 4, 2, 3
    assert after.hits - before.hits == 3 + calls == 3 + 41

    # ... and a second precompute finds everything cached
    assert main(args) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["counts"] == {"computed": 0, "cached": 37, "failed": 0, "skipped": 10}
    assert store.stats.misses == before.misses

    # What the pages read equals float64 references and uncached computations.
    a, b = dicts["a"], dicts["b"]
    ia, ib = a.alive_index, b.alive_index
    assert len(ia) == 357 and len(ib) == 319
    ua, ub = (unit_rows(m)[0] for m in saes["dec"])
    within = ua[ia] @ ua[ia].T
    np.fill_diagonal(within, -np.inf)
    for src, dst, s, cols in (
        (a, b, ua[ia] @ ub[ib].T, ib),
        (b, a, ub[ib] @ ua[ia].T, ia),
        (a, None, within, ia),
    ):
        res = compare(src, dst)
        np.testing.assert_allclose(res.max_cos, s.max(1), atol=1e-6)
        np.testing.assert_array_equal(res.nearest, cols[s.argmax(1)])
    ea, eb = (unit_rows(m)[0] for m in saes["enc"])
    res = compare(a, b, directions="encoder")
    np.testing.assert_allclose(res.max_cos, (ea[ia] @ eb[ib].T).max(1), atol=1e-6)
    np.testing.assert_array_equal(res.nearest, ib[(ea[ia] @ eb[ib].T).argmax(1)])
    assert_same_matching(
        match(b, a, directions="encoder"), match(b, a, directions="encoder", cache=False)
    )
    m = match(a, b)
    assert_same_matching(m, match(a, b, cache=False))
    rows, cols = linear_sum_assignment(ua[ia] @ ub[ib].T, maximize=True)
    np.testing.assert_array_equal(m.b_index[rows], ib[cols])  # float64 Hungarian reference
    where = np.argsort(saes["perm"])  # row i of a sits at row where[i] of b
    alive_copy = (ia < 320) & (where[np.minimum(ia, 319)] != 40)
    np.testing.assert_array_equal(m.b_index[alive_copy], where[ia[alive_copy]])
    null = random_null(len(ia), len(ib), D)
    np.testing.assert_array_equal(null, random_null(len(ia), len(ib), D, cache=False))
    emb = umap_embedding([a, b], **UMAP_PAGE)  # its points: a's included features, then b's
    np.testing.assert_array_equal(emb.feature, np.concatenate([ia, ib]))
    np.testing.assert_array_equal(emb.dict_index, np.repeat([0, 1], [len(ia), len(ib)]))
    assert emb.xy.shape == (len(ia) + len(ib), 2) and np.isfinite(emb.xy).all()


def test_the_pages_call_what_precompute_fills():
    """A static guard on the dashboard's sources: the cached functions are called with no
    argument that precompute (and page_calls above) leave at its default, and the UMAP page's
    widget defaults and default selection are the ones precompute embeds."""
    allowed = {
        "compare": {"directions", "k"},  # compare_named's k defaults to 1; no page passes k
        "match": {"directions"},
        "random_null": set(),
        "umap_embedding": {
            "directions",
            "n_neighbors",
            "min_dist",
            "seed",
            "progress",
            "only_cached",
        },
    }
    files = [*sorted((ROOT / "dashboard").glob("*.py")), ROOT / "app.py"]
    files += sorted((ROOT / "pages").glob("*.py"))
    found = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in allowed:
                found.add(node.func.id)
                given = {kw.arg for kw in node.keywords}
                assert given <= allowed[node.func.id], f"{path.name}: {ast.unparse(node)}"
    assert found == set(allowed)
    umap_page = ast.parse((ROOT / "pages" / "3_UMAP.py").read_text())
    widgets, selection = {}, None
    for node in ast.walk(umap_page):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr == "number_input":
                widgets[node.args[0].value] = ast.unparse(node.args[3])
            if node.func.attr == "multiselect" and node.args[0].value == "Dictionaries":
                selection = {kw.arg: ast.unparse(kw.value) for kw in node.keywords}["default"]
    assert widgets == {name: f"UMAP_DEFAULTS[{name!r}]" for name in UMAP_DEFAULTS}
    assert selection == f"names[:{UMAP_PAGE_SELECTION}]"


def test_module_entry_point_goes_on_past_a_bad_source(saes, tmp_path):
    """`python -m sae_backend precompute` in a subprocess: a broken source costs one error line
    and exit 1; the others are computed into $SAE_CACHE_DIR, where the pages find them."""
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    cache_dir = tmp_path / "server_cache"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SAE_CACHE_DIR": str(cache_dir)}
    paths = saes["paths"]
    run = subprocess.run(
        [sys.executable, "-m", "sae_backend", "precompute", paths["a"], str(bad), paths["b"],
         "--directions", "decoder", "--no-umap"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "bad.pt" in errors[0]
    # decoder: 2 within + 2 pairs; nulls 357 x itself, 319 x itself, 357 x 319, 319 x 357;
    # matches a -> b, b -> a
    assert run.stdout.strip().splitlines()[-1].startswith("10 computed, 0 cached, 0 failed")

    store = ArrayCache(cache_dir / "sae_geometry")
    dicts = {n: load(paths[n], cache=False) for n in ("a", "b")}
    for a, b in (("a", None), ("b", None), ("a", "b"), ("b", "a")):
        other = None if b is None else dicts[b]
        compare(dicts[a], other, cache=store)
        n_b = None if other is None else len(other.alive_index)
        random_null(len(dicts[a].alive_index), n_b, D, cache=store)
        if other is not None:
            match(dicts[a], other, cache=store)
    assert (store.stats.hits, store.stats.misses) == (10, 0)


def test_failed_and_skipped_items_do_not_stop_the_rest(tmp_path):
    """A dictionary with one alive feature cannot be compared with itself (failed, one
    message); one of another d_model is skipped for pairs; everything else is computed."""
    rng = np.random.default_rng(3)
    lone = np.zeros((20, D))
    lone[4] = rng.standard_normal(D)
    dicts = {
        "big": Dictionary.from_raw(RawSAE(rng.standard_normal((50, D))), source="big", format="t"),
        "lone": Dictionary.from_raw(RawSAE(lone), source="lone", format="t"),
        "wide": Dictionary.from_raw(RawSAE(rng.standard_normal((40, 8))), source="w", format="t"),
    }
    seen = []
    outcomes = precompute(
        dicts, directions=["decoder"], kinds=["compare", "null", "match"], cache=True,
        report=lambda i, n, o: seen.append((i, n, o.status)),
    )  # fmt: skip
    status = {(o.kind, o.label): o.status for o in outcomes}
    assert status[("compare", "lone within itself (decoder)")] == "failed"
    assert status[("compare", "big within itself (decoder)")] == "computed"
    assert status[("compare", "big -> lone (decoder)")] == "computed"
    assert status[("compare", "big -> wide (decoder)")] == "skipped"
    assert status[("match", "lone -> big (decoder)")] == "computed"
    failed = [o for o in outcomes if o.status == "failed"]
    assert [o.kind for o in failed] == ["compare", "null"]  # within lone: k=1 > 0 candidates
    assert all("\n" not in o.message and "between 1 and 0" in o.message for o in failed)
    assert [s[:2] for s in seen] == [(i, len(outcomes)) for i in range(1, len(outcomes) + 1)]
    m = match(dicts["lone"], dicts["big"], cache=default_cache())
    assert m.n_matched == 1 and default_cache().stats.hits >= 1


def test_cli_bad_input_is_one_line(tmp_path, capsys, saes):
    for args, needle in (
        (["precompute"], "nothing to precompute"),
        (["precompute", "--catalogue-layer", "5"], "layers 2, 6, 10"),
        (["precompute", "--catalogue-layer", "6", "--criterion", "x"], "unknown criterion"),
        (["precompute", saes["paths"]["a"], "--criterion", "ce"], "--catalogue-layer"),
        (["precompute", str(tmp_path / "missing")], "missing"),
    ):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and needle in err


def test_catalogue_sources_of_one_layer():
    """Layer 6 of catalogue.yaml: ce {local 1jy3m5j0, e2e zgdpkafo, downstream 2lzle2f0},
    l0 {jup3glm9, tvj2owza, 2lzle2f0}, alive {h9hrelni, tvj2owza, p9zmh62k}; hf copies exist
    for the ce and l0 tables only."""
    ce, notes = catalogue_sources(6, "wandb", "ce")
    assert notes == [] and ce == {
        "L6-local-ce": "wandb:sparsify/gpt2/1jy3m5j0",
        "L6-e2e-ce": "wandb:sparsify/gpt2/zgdpkafo",
        "L6-downstream-ce": "wandb:sparsify/gpt2/2lzle2f0",
    }
    every, _ = catalogue_sources(6)
    runs = [u.rsplit("/", 1)[1] for u in every.values()]
    assert runs == ["1jy3m5j0", "zgdpkafo", "2lzle2f0", "jup3glm9", "tvj2owza", "h9hrelni",
                    "p9zmh62k"]  # fmt: skip
    hf, notes = catalogue_sources(6, "hf")
    assert list(hf) == ["L6-local-ce", "L6-e2e-ce", "L6-downstream-ce", "L6-local-l0", "L6-e2e-l0"]
    assert hf["L6-e2e-l0"] == "hf:apollo-research/e2e-saes-gpt2:e2e_similar_l0_layer_6.pt"
    assert len(notes) == 2 and "h9hrelni" in notes[0] and "p9zmh62k" in notes[1]
    with pytest.raises(InputError, match="via"):
        catalogue_sources(6, "ftp")


# ---- match() and random_null() on the disk cache ----------------------------------------------


@pytest.fixture()
def pair():
    """a [300, d] and b [260, d], b a noisy permuted copy of part of a: rectangular, so some
    features of a stay unmatched (-1, NaN)."""
    rng = np.random.default_rng(5)
    dec_a = rng.standard_normal((300, D))
    dec_b = dec_a[rng.permutation(300)[:260]] + 0.3 * rng.standard_normal((260, D))
    a = Dictionary.from_raw(RawSAE(dec_a, encoder=rng.standard_normal((300, D))), source="a",
                            format="t")  # fmt: skip
    b = Dictionary.from_raw(RawSAE(dec_b, encoder=rng.standard_normal((260, D))), source="b",
                            format="t")  # fmt: skip
    return a, b


def corrupt(store: ArrayCache, key: str) -> None:
    """Flip the last byte of a stored entry, as a disk error would, behind the cache's back."""
    with diskcache.Cache(str(store.directory), disk=SafeDisk) as raw:
        blob = bytearray(raw.get(key))
        blob[-1] ^= 0xFF
        raw.set(key, bytes(blob))


@pytest.mark.parametrize("dense_limit", [4096, 50])  # Hungarian, then the sparse solver
def test_match_is_cached_exactly(tmp_path, pair, dense_limit):
    a, b = pair
    store = ArrayCache(tmp_path / "cache")
    plain = match(a, b, dense_limit=dense_limit, cache=False)
    assert plain.method == ("hungarian" if dense_limit > 300 else "sparse")
    assert plain.n_matched == 260 and (plain.b_index == -1).sum() == 40
    first = match(a, b, dense_limit=dense_limit, cache=store)
    second = match(a, b, dense_limit=dense_limit, cache=store)
    assert (store.stats.misses, store.stats.hits) == (1, 1)
    assert_same_matching(first, plain)
    assert_same_matching(second, plain)

    # other directions, candidates or order: other entries
    match(a, b, directions="encoder", dense_limit=dense_limit, cache=store)
    match(a, b, k_candidates=5, dense_limit=dense_limit, cache=store)
    match(b, a, dense_limit=dense_limit, cache=store)
    assert store.stats.misses == 4

    key = make_key("match", a.fingerprint, b.fingerprint, directions="decoder",
                   k_candidates=K_CANDIDATES, dense_limit=dense_limit, certify=True,
                   tolerance=DEFAULT_TOLERANCE, solver=MATCHING_VERSION)  # fmt: skip
    corrupt(store, key)
    again = match(a, b, dense_limit=dense_limit, cache=store)
    assert (store.stats.dropped, store.stats.misses) == (1, 5)
    assert_same_matching(again, plain)


def test_match_forward_shares_the_entry_and_changes_nothing(tmp_path, pair):
    """`forward` replaces the A->B top-k pass with the same candidates, so it is not in the key."""
    a, b = pair
    fwd = compare(a, b, k=K_CANDIDATES, cache=False)
    without = match(a, b, dense_limit=50, cache=False)
    assert without.method == "sparse"
    assert_same_matching(match(a, b, dense_limit=50, forward=fwd, cache=False), without)
    store = ArrayCache(tmp_path / "cache")
    assert_same_matching(match(a, b, dense_limit=50, forward=fwd, cache=store), without)
    assert_same_matching(match(a, b, dense_limit=50, cache=store), without)
    assert (store.stats.misses, store.stats.hits) == (1, 1)
    wrong = compare(b, a, k=12, cache=False)
    with pytest.raises(InputError, match="forward is not"):
        match(a, b, dense_limit=50, forward=wrong, cache=store)
    with pytest.raises(InputError, match="forward is not"):
        match(a, b, directions="encoder", forward=fwd, cache=store)


def test_random_null_is_cached_exactly(tmp_path):
    store = ArrayCache(tmp_path / "cache")
    plain = random_null(300, 250, D, seed=2, cache=False)
    rng = np.random.default_rng(2)  # float64 reference from the documented draws
    ra, rb = (random_unit_rows(n, D, rng).astype(np.float64) for n in (300, 250))
    np.testing.assert_allclose(plain, (ra @ rb.T).max(1), atol=1e-6)
    first = random_null(300, 250, D, seed=2, cache=store)
    second = random_null(np.int64(300), np.int64(250), D, seed=2, cache=store)  # same key
    assert (store.stats.misses, store.stats.hits) == (1, 1)
    np.testing.assert_array_equal(first, plain)
    np.testing.assert_array_equal(second, plain)
    second[:] = 0.0  # a writable copy: the cache is untouched
    np.testing.assert_array_equal(random_null(300, 250, D, seed=2, cache=store), plain)

    for other in ({"seed": 3}, {"k": 2}, {"n_b": None}, {"d": D + 1}):
        kw = {"n_a": 300, "n_b": 250, "d": D, "seed": 2, **other}
        assert not np.array_equal(random_null(**kw, cache=store), plain)
    assert store.stats.misses == 5

    key = make_key("random_null", n_a=300, n_b=250, d=D, k=1, seed=2)
    corrupt(store, key)
    np.testing.assert_array_equal(random_null(300, 250, D, seed=2, cache=store), plain)
    assert (store.stats.dropped, store.stats.misses) == (1, 6)
    with pytest.raises(InputError, match="k="):
        random_null(5, None, 3, k=5, cache=store)
    assert store.stats.failures == 0  # checked before any cache lookup
