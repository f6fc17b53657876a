"""Every SAE file format: round trips against float64 references, metadata, orientation.

Files are written by tests/factories.py from planted matrices (duplicates, scaled rows, a zero
row, an antiparallel pair), loaded with `load(str(path))`, and compared with the float64
reference of the normalised rows.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from sae_backend import load
from sae_backend.errors import FormatError, InputError, SAEError
from sae_backend.formats import FORMATS, format_names
from sae_backend.formats.saelens import DEAD_LOG10
from sae_backend.sources import Resolved
from tests.factories import (
    Planted,
    e2e_config,
    permutation,
    planted,
    saelens_log_sparsity,
    unit_rows,
    write_dictionary_learning,
    write_e2e_folder,
    write_e2e_hf,
    write_gemma_scope,
    write_matrix,
    write_saelens,
    write_sparsify,
)

ATOL = 1e-6
POS6 = "blocks.6.hook_resid_pre"


@dataclass
class Case:
    """One way of writing a planted dictionary, and what loading it must report."""

    format: str
    write: Callable[[Path, np.ndarray, np.ndarray], Path]
    model: str | None
    hook: str | None
    layer: int | None
    has_encoder: bool = True
    options: dict | None = None


CASES = {
    "e2e_folder": Case(
        "e2e_sae",
        lambda t, dec, enc: write_e2e_folder(
            t / "run", {500: {POS6: (dec, enc)}},
            config=e2e_config([POS6], ratio=dec.shape[0] / dec.shape[1]),
        ),
        "gpt2-small", POS6, 6,
    ),
    "e2e_hf_file": Case(
        "e2e_sae",
        lambda t, dec, enc: write_e2e_hf(
            t / "e2e_similar_ce_layer_6.pt", dec, enc, config=e2e_config([POS6], model="gpt2")
        ),
        "gpt2", POS6, 6,
    ),
    "saelens": Case(
        "saelens",
        lambda t, dec, enc: write_saelens(t / "sae", dec, enc, hook="blocks.3.hook_resid_pre"),
        "gpt2-small", "blocks.3.hook_resid_pre", 3,
    ),
    "saelens_pre6": Case(
        "saelens",
        lambda t, dec, enc: write_saelens(t / "sae", dec, enc, style="pre6", model="pythia-70m",
                                          hook="blocks.2.hook_mlp_out"),
        "pythia-70m", "blocks.2.hook_mlp_out", 2,
    ),
    "saelens_meta_gated": Case(
        "saelens",
        lambda t, dec, enc: write_saelens(t / "sae", dec, enc, style="meta", architecture="gated"),
        "gpt2-small", "blocks.3.hook_resid_pre", 3,
    ),
    "saelens_jumprelu": Case(
        "saelens",
        lambda t, dec, enc: write_saelens(t / "sae", dec, enc, architecture="jumprelu"),
        "gpt2-small", "blocks.3.hook_resid_pre", 3,
    ),
    "sparsify": Case(
        "sparsify",
        lambda t, dec, enc: write_sparsify(t / "run" / "layers.4", dec, enc, run_model="EleutherAI/pythia-160m"),
        "EleutherAI/pythia-160m", "layers.4", 4,
    ),
    "dictionary_learning": Case(
        "dictionary_learning",
        lambda t, dec, enc: write_dictionary_learning(t / "trainer_0", dec, enc),
        "EleutherAI/pythia-70m-deduped", "resid_post_layer_3", 3,
    ),
    "dictionary_learning_topk_folder": Case(
        "dictionary_learning",
        lambda t, dec, enc: write_dictionary_learning(t / "trainer_0", dec, enc, variant="topk").parent,
        "EleutherAI/pythia-70m-deduped", "resid_post_layer_3", 3,
    ),
    "dictionary_learning_jumprelu_wrapped": Case(
        "dictionary_learning",
        lambda t, dec, enc: write_dictionary_learning(t / "trainer_0", dec, enc, variant="jumprelu", wrapped=True),
        "EleutherAI/pythia-70m-deduped", "resid_post_layer_3", 3,
    ),
    "gemma_scope": Case(
        "gemma_scope",
        lambda t, dec, enc: write_gemma_scope(
            t / "gemma-scope-9b-pt-mlp" / "layer_7" / "width_10" / "average_l0_4" / "params.npz", dec, enc
        ),
        "gemma-2-9b", "blocks.7.hook_mlp_out", 7,
    ),
    "gemma_scope_plain_npz": Case(
        "gemma_scope",
        lambda t, dec, enc: write_gemma_scope(t / "some_sae.npz", dec, enc, lower=True),
        None, None, None,
    ),
    "matrix_npy": Case(
        "matrix", lambda t, dec, enc: write_matrix(t / "dec.npy", dec), None, None, None,
        has_encoder=False, options={"orientation": "rows"},
    ),
    "matrix_npz_columns": Case(
        "matrix", lambda t, dec, enc: write_matrix(t / "dec.npz", {"W": dec.T}), None, None, None,
        has_encoder=False, options={"orientation": "columns"},
    ),
    "matrix_safetensors_key": Case(
        "matrix",
        lambda t, dec, enc: write_matrix(t / "dec.safetensors", {"dec": dec, "other": enc[:3]}),
        None, None, None, has_encoder=False, options={"orientation": "rows", "key": "dec"},
    ),
    "matrix_pt_tensor": Case(
        "matrix", lambda t, dec, enc: write_matrix(t / "dec.pt", dec.T), None, None, None,
        has_encoder=False, options={"orientation": "columns"},
    ),
    "matrix_pt_dict": Case(
        "matrix", lambda t, dec, enc: write_matrix(t / "dec.pth", {"weights": dec}), None, None, None,
        has_encoder=False, options={"orientation": "rows"},
    ),
}  # fmt: skip


def _check_against_reference(d, p: Planted, has_encoder: bool) -> None:
    unit, norms = unit_rows(p.decoder)
    assert d.decoder.dtype == np.float32 and d.decoder.shape == p.decoder.shape
    np.testing.assert_allclose(d.decoder, unit, atol=ATOL)
    np.testing.assert_allclose(d.decoder_norms, norms, rtol=1e-6, atol=ATOL)
    # planted structure survives: duplicate, scaled copies, dead row, antiparallel pair
    i, j = p.duplicate
    np.testing.assert_allclose(d.decoder[i] @ d.decoder[j], 1.0, atol=ATOL)
    for src, dst, factor in p.scaled:
        np.testing.assert_allclose(d.decoder[dst], d.decoder[src], atol=ATOL)
        np.testing.assert_allclose(d.decoder_norms[dst] / d.decoder_norms[src], factor, rtol=1e-5)
    a, b = p.antiparallel
    np.testing.assert_allclose(d.decoder[a] @ d.decoder[b], -1.0, atol=ATOL)
    for k in p.dead:
        assert not d.alive[k] and not d.decoder[k].any() and d.decoder_norms[k] == 0
    if has_encoder:
        np.testing.assert_allclose(d.encoder, unit_rows(p.encoder)[0], atol=ATOL)
    else:
        assert d.encoder is None


@pytest.mark.parametrize("name", sorted(CASES))
def test_round_trip_every_format(tmp_path: Path, name: str) -> None:
    case, p = CASES[name], planted()
    path = case.write(tmp_path, p.decoder, p.encoder)
    d = load(str(path), **(case.options or {}))
    assert d.meta.format == case.format
    assert d.meta.source == str(path)
    _check_against_reference(d, p, case.has_encoder)
    np.testing.assert_array_equal(d.alive, unit_rows(p.decoder)[1] > 0)
    assert (d.meta.model_name, d.meta.hook, d.meta.layer) == (case.model, case.hook, case.layer)
    assert d.meta.extra["d_in"] == 6 and d.meta.extra["d_sae"] == 10


@pytest.mark.parametrize("name", sorted(CASES))
def test_permuted_copy_loads_permuted(tmp_path: Path, name: str) -> None:
    case, p = CASES[name], planted()
    perm = permutation(10)
    a = load(str(case.write(tmp_path / "a", p.decoder, p.encoder)), **(case.options or {}))
    b = load(
        str(case.write(tmp_path / "b", p.decoder[perm], p.encoder[perm])), **(case.options or {})
    )
    np.testing.assert_allclose(b.decoder, a.decoder[perm], atol=1e-7)
    np.testing.assert_allclose(b.decoder_norms, a.decoder_norms[perm], rtol=1e-7)
    np.testing.assert_array_equal(b.alive, a.alive[perm])
    assert a.fingerprint != b.fingerprint


def test_same_matrix_in_every_format_gives_the_same_dictionary(tmp_path: Path) -> None:
    p = planted()
    loaded = [
        load(str(c.write(tmp_path / n, p.decoder, p.encoder)), **(c.options or {}))
        for n, c in CASES.items()
    ]
    for d in loaded[1:]:
        np.testing.assert_allclose(d.decoder, loaded[0].decoder, atol=ATOL)


def test_detection_is_specific_and_matrix_comes_last() -> None:
    names = format_names()
    assert names[-1] == "matrix" and len(set(names)) == len(names) == 6
    assert all(callable(m.detect) and callable(m.read) for m in FORMATS)


def test_forced_format_and_unknown_format(tmp_path: Path) -> None:
    p = planted()
    path = write_gemma_scope(tmp_path / "x.npz", p.decoder, p.encoder)
    d = load(str(path), format="matrix", key="W_dec", orientation="rows")
    assert d.meta.format == "matrix" and d.encoder is None
    np.testing.assert_allclose(d.decoder, unit_rows(p.decoder)[0], atol=ATOL)
    with pytest.raises(FormatError, match="unknown format 'nope'; known: e2e_sae"):
        load(str(path), format="nope")


# ----------------------------------------------------------------------------- orientation


def _msg(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_saelens_transposed_decoder_fails_naming_file_key_and_shapes(tmp_path: Path) -> None:
    p = planted()
    folder = write_saelens(tmp_path / "sae", p.decoder.T.copy(), p.encoder)  # W_dec stored [d, n]
    # the writer derives d_in/d_sae from the (wrong) W_dec shape; restore the true config
    cfg = (
        (folder / "cfg.json")
        .read_text()
        .replace('"d_in": 10, "d_sae": 6', '"d_in": 6, "d_sae": 10')
    )
    (folder / "cfg.json").write_text(cfg)
    with pytest.raises(FormatError) as e:
        load(str(folder))
    msg = _msg(e)
    assert "sae_weights.safetensors" in msg and "W_dec has shape [6, 10]" in msg
    assert "expected [10, 6] ([d_sae, d_in])" in msg and "looks transposed" in msg


def test_saelens_config_contradicting_shape_fails(tmp_path: Path) -> None:
    p = planted()
    folder = write_saelens(tmp_path / "sae", p.decoder, p.encoder, cfg_overrides={"d_in": 7})
    with pytest.raises(
        FormatError, match=r"W_dec has shape \[10, 6\], expected \[10, 7\].*d_in=7 in cfg.json"
    ):
        load(str(folder))


def test_saelens_encoder_contradicting_decoder_fails(tmp_path: Path) -> None:
    p = planted()
    folder = write_saelens(tmp_path / "sae", p.decoder, p.encoder[:, :5])  # W_enc [5, 10]
    with pytest.raises(FormatError, match=r"W_enc has shape \[5, 10\], expected \[6, 10\]"):
        load(str(folder))


def test_e2e_decoder_stored_as_rows_fails(tmp_path: Path) -> None:
    p = planted()
    state_path = write_e2e_hf(
        tmp_path / "x.pt", p.decoder.T.copy(), p.encoder, config=e2e_config([POS6])
    )
    # decoder.weight is now [n, d] (wrong), decoder.bias has length n
    with pytest.raises(FormatError) as e:
        load(str(state_path))
    msg = _msg(e)
    assert str(state_path) in msg and "encoder.weight has shape [10, 6], expected [6, 10]" in msg
    # with a correct decoder.bias [d_in], the decoder itself is named
    state = torch.load(state_path, weights_only=True)
    state["decoder.bias"] = torch.zeros(6)
    torch.save(state, state_path)
    with pytest.raises(
        FormatError,
        match=r"decoder.weight has shape \[10, 6\], expected \[6, n\] \(\[d_in, n_dict\]\), from decoder.bias length",
    ):
        load(str(state_path))


def test_e2e_ratio_in_config_is_checked(tmp_path: Path) -> None:
    p = planted()
    folder = write_e2e_folder(
        tmp_path / "run", {10: {POS6: (p.decoder, p.encoder)}}, config=e2e_config([POS6], ratio=2.0)
    )
    with pytest.raises(
        FormatError,
        match=r"decoder.weight has shape \[6, 10\], expected \[6, 12\] \(\[d_in, n_dict\]\)",
    ):
        load(str(folder))


def test_sparsify_transposed_decoder_fails(tmp_path: Path) -> None:
    p = planted()
    folder = write_sparsify(tmp_path / "layers.1", p.decoder, p.encoder)
    from safetensors.torch import load_file, save_file

    t = load_file(str(folder / "sae.safetensors"))
    t["W_dec"] = t["W_dec"].T.contiguous()
    save_file(t, str(folder / "sae.safetensors"))
    with pytest.raises(
        FormatError,
        match=r"sae.safetensors: W_dec has shape \[6, 10\], expected \[10, 6\] \(\[num_latents, d_in\]\)",
    ):
        load(str(folder))


def test_dictionary_learning_decoder_in_wrong_orientation_fails(tmp_path: Path) -> None:
    p = planted()
    ae = write_dictionary_learning(tmp_path / "t", p.decoder, p.encoder)
    state = torch.load(ae, weights_only=True)
    state["decoder.weight"] = state["decoder.weight"].T.contiguous()  # [n, d] instead of [d, n]
    torch.save(state, ae)
    with pytest.raises(
        FormatError,
        match=r"decoder.weight has shape \[10, 6\], expected \[6, 10\] \(\[activation_dim, dict_size\]\)",
    ):
        load(str(ae))


def test_dictionary_learning_config_dict_size_checked(tmp_path: Path) -> None:
    p = planted()
    ae = write_dictionary_learning(tmp_path / "t", p.decoder, p.encoder, trainer={"dict_size": 12})
    with pytest.raises(FormatError, match=r"expected \[6, 12\]"):
        load(str(ae))


def test_gemma_scope_transposed_encoder_and_wrong_width(tmp_path: Path) -> None:
    p = planted()
    path = write_gemma_scope(tmp_path / "a" / "params.npz", p.decoder, p.encoder)
    arrays = dict(np.load(path))
    arrays["W_enc"] = arrays["W_enc"].T
    np.savez(path, **arrays)
    with pytest.raises(
        FormatError, match=r"W_enc has shape \[10, 6\], expected \[6, 10\] \(\[d_model, d_sae\]\)"
    ):
        load(str(path))
    wide = write_gemma_scope(
        tmp_path / "layer_1" / "width_1k" / "average_l0_3" / "params.npz", p.decoder, p.encoder
    )
    with pytest.raises(FormatError, match=r"expected \[1024, 6\].*width_1k in the path"):
        load(str(wide))


def test_matrix_needs_orientation_and_key(tmp_path: Path) -> None:
    p = planted()
    path = write_matrix(tmp_path / "m.npy", p.decoder)
    with pytest.raises(FormatError) as e:
        load(str(path))
    msg = _msg(e)
    assert str(path) in msg and "--orientation rows|columns" in msg and "[10, 6]" in msg
    rows = load(str(path), orientation="rows")
    cols = load(str(path), orientation="columns")
    assert rows.decoder.shape == (10, 6) and cols.decoder.shape == (6, 10)
    np.testing.assert_allclose(cols.decoder, unit_rows(p.decoder.T)[0], atol=ATOL)

    many = write_matrix(tmp_path / "m.npz", {"a": p.decoder, "b": p.encoder})
    with pytest.raises(FormatError, match=r"holds 2 arrays \(a, b\); name one with --key KEY"):
        load(str(many), orientation="rows")
    with pytest.raises(FormatError, match=r"no array named 'c'; arrays present: a, b"):
        load(str(many), orientation="rows", key="c")
    np.testing.assert_allclose(
        load(str(many), orientation="rows", key="b").decoder, unit_rows(p.encoder)[0], atol=ATOL
    )
    with pytest.raises(InputError, match="orientation must be 'rows'"):
        load(str(path), orientation="sideways")


# ----------------------------------------------------------------------------- e2e positions


def _two_positions(p: Planted) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    other = planted(seed=7)
    return {POS6: (p.decoder, p.encoder), "blocks.2.hook_resid_pre": (other.decoder, other.encoder)}


def test_e2e_multi_position_requires_a_choice(tmp_path: Path) -> None:
    p = planted()
    folder = write_e2e_folder(tmp_path / "run", {40: _two_positions(p)})
    with pytest.raises(FormatError) as e:
        load(str(folder))
    msg = _msg(e)
    assert "samples_40.pt" in msg and "blocks.2.hook_resid_pre, blocks.6.hook_resid_pre" in msg
    assert "SRC#POSITION" in msg and "#blocks.2.hook_resid_pre" in msg

    via_uri = load(f"{folder}#{POS6}")
    via_arg = load(str(folder), position="blocks-6-hook_resid_pre")
    for d in (via_uri, via_arg):
        _check_against_reference(d, p, True)
        assert (d.meta.hook, d.meta.layer) == (POS6, 6)
        assert d.meta.extra["positions"] == ["blocks.2.hook_resid_pre", POS6]
    other = load(str(folder / "samples_40.pt"), position="blocks.2.hook_resid_pre")
    np.testing.assert_allclose(other.decoder, unit_rows(planted(seed=7).decoder)[0], atol=ATOL)
    assert other.meta.layer == 2
    with pytest.raises(
        FormatError,
        match=r"no SAE at position 'blocks.9.hook_resid_pre'; positions in this file: blocks.2",
    ):
        load(str(folder), position="blocks.9.hook_resid_pre")


def test_e2e_folder_takes_the_largest_sample_count(tmp_path: Path) -> None:
    # 300 > 2000 as strings: the choice must be numeric
    ckpts = {
        n: {POS6: (planted(seed=s).decoder, planted(seed=s).encoder)}
        for n, s in ((300, 1), (2000, 2), (40, 3))
    }
    folder = write_e2e_folder(tmp_path / "run", ckpts)
    d = load(str(folder))
    np.testing.assert_allclose(d.decoder, unit_rows(planted(seed=2).decoder)[0], atol=ATOL)
    assert d.meta.extra["checkpoint"] == "samples_2000.pt" and d.meta.extra["n_samples"] == 2000


def test_e2e_hf_file_without_config_has_no_hook(tmp_path: Path) -> None:
    p = planted()
    path = write_e2e_hf(tmp_path / "samples_7.pt", p.decoder, p.encoder)
    d = load(str(path))
    assert d.meta.format == "e2e_sae" and d.meta.hook is None and d.meta.model_name is None
    d2 = load(str(path), position=POS6)  # the user names the hook of an unnamed SAE
    assert (d2.meta.hook, d2.meta.layer) == (POS6, 6)


# ----------------------------------------------------------------------------- SAELens sparsity


def test_saelens_sparsity_gives_density_and_dead_features(tmp_path: Path) -> None:
    p = planted()
    density = np.array([0.2, 0.0, 1e-3, 5e-7, 0.05, 1e-9, 0.3, 0.01, 0.0, 0.5])
    folder = write_saelens(tmp_path / "sae", p.decoder, p.encoder, density=density)
    d = load(str(folder))
    # reference: what SAELens stored, decoded in float64
    stored = saelens_log_sparsity(density).astype(np.float64)
    ref_density = np.where(stored > np.log10(1e-10) + 1e-3, 10.0**stored - 1e-10, 0.0)
    np.testing.assert_allclose(d.density, ref_density, rtol=1e-5, atol=1e-15)
    np.testing.assert_allclose(d.density, density, rtol=1e-5, atol=1e-15)
    # never fired (1, 8) or zero decoder (7) -> dead; a feature firing once in 1e9 tokens is alive
    expected_alive = np.ones(10, bool)
    expected_alive[[1, 7, 8]] = False
    np.testing.assert_array_equal(d.alive, expected_alive)
    assert d.meta.alive_from == "sparsity.safetensors"
    assert d.meta.neuronpedia_id == "gpt2-small/3-res-test"
    assert DEAD_LOG10 < float(saelens_log_sparsity(np.array([1e-9]))[0])


def test_saelens_release_folder_needs_a_position(tmp_path: Path) -> None:
    p, q = planted(), planted(seed=3)
    write_saelens(
        tmp_path / "rel" / "blocks.1.hook_resid_pre",
        p.decoder,
        p.encoder,
        hook="blocks.1.hook_resid_pre",
    )
    write_saelens(
        tmp_path / "rel" / "blocks.2.hook_resid_pre",
        q.decoder,
        q.encoder,
        hook="blocks.2.hook_resid_pre",
    )
    with pytest.raises(
        FormatError,
        match=r"holds 2 SAEs \(blocks.1.hook_resid_pre, blocks.2.hook_resid_pre\); pick one with SRC#POSITION",
    ):
        load(str(tmp_path / "rel"))
    d = load(f"{tmp_path / 'rel'}#blocks-2-hook_resid_pre")
    np.testing.assert_allclose(d.decoder, unit_rows(q.decoder)[0], atol=ATOL)
    assert d.meta.hook == "blocks.2.hook_resid_pre"


# ----------------------------------------------------------------------------- sparsify, dictionary_learning


def test_sparsify_bf16_matches_the_rounded_reference(tmp_path: Path) -> None:
    p = planted()
    folder = write_sparsify(tmp_path / "layers.2", p.decoder, p.encoder, dtype=torch.bfloat16)
    d = load(str(folder))
    rounded = torch.tensor(p.decoder).to(torch.bfloat16).double().numpy()
    np.testing.assert_allclose(d.decoder, unit_rows(rounded)[0], atol=ATOL)
    np.testing.assert_allclose(d.decoder_norms, unit_rows(rounded)[1], rtol=1e-6)
    assert d.meta.extra["stored_dtype"] == "BF16" and d.meta.extra["k"] == 3


def test_sparsify_run_folder_and_expansion_factor(tmp_path: Path) -> None:
    p, q = planted(), planted(seed=4)
    write_sparsify(tmp_path / "run" / "layers.3", p.decoder, p.encoder)
    write_sparsify(
        tmp_path / "run" / "layers.5",
        q.decoder,
        q.encoder,
        cfg_overrides={"num_latents": 0, "expansion_factor": 2},
    )  # 2 * 6 != 10
    with pytest.raises(FormatError, match=r"pick one with SRC#POSITION, e.g. .*#layers.3"):
        load(str(tmp_path / "run"))
    assert load(f"{tmp_path / 'run'}#layers.3").meta.layer == 3
    with pytest.raises(FormatError, match=r"W_dec has shape \[10, 6\], expected \[12, 6\]"):
        load(str(tmp_path / "run"), position="layers.5")


def test_sparsify_multi_seed_run(tmp_path: Path) -> None:
    """sparsify with init_seeds=[0, 1] names each SAE `hookpoint/seedN` and saves it in
    run/layers.6.mlp/seed0/ and .../seed1/: every way of pointing at them loads with hook
    layers.6.mlp (not null, not 'seed1'), and a folder of several lists them."""
    p, q = planted(), planted(seed=5)
    run = tmp_path / "seeds"
    write_sparsify(run / "layers.6.mlp" / "seed0", p.decoder, p.encoder)
    write_sparsify(run / "layers.6.mlp" / "seed1", q.decoder, q.encoder)
    (run / "config.json").write_text(json.dumps({"model": "EleutherAI/pythia-70m"}))
    for folder, prefix in (
        (run, "layers.6.mlp/"),
        (run / "layers.6.mlp", ""),
        (tmp_path, "seeds/layers.6.mlp/"),
    ):  # the run, its hook, above it
        listing = f"holds 2 SAEs ({prefix}seed0, {prefix}seed1); pick one with SRC#POSITION"
        with pytest.raises(FormatError, match=re.escape(listing)):
            load(str(folder))
    ways = {
        f"{run}#layers.6.mlp/seed1": q,
        f"{run}#layers-6-mlp/seed1": q,
        f"{run / 'layers.6.mlp'}#seed1": q,
        str(run / "layers.6.mlp" / "seed0"): p,
        f"{tmp_path}#seeds/layers.6.mlp/seed0": p,
    }
    for uri, planted_sae in ways.items():
        d = load(uri)
        assert d.meta.format == "sparsify", uri
        assert (d.meta.hook, d.meta.layer) == ("layers.6.mlp", 6), uri
        assert d.meta.extra["seed"] == (1 if planted_sae is q else 0), uri
        assert d.meta.model_name == "EleutherAI/pythia-70m", uri
        np.testing.assert_allclose(d.decoder, unit_rows(planted_sae.decoder)[0], atol=ATOL)
    with pytest.raises(FormatError, match=r"no SAE for position 'layers.7'; available: layers"):
        load(f"{run}#layers.7")


def test_dictionary_learning_checkpoint_without_config_uses_path(tmp_path: Path) -> None:
    p = planted()
    ae = write_dictionary_learning(
        tmp_path / "resid_post_layer_4" / "trainer_2", p.decoder, p.encoder, config=False
    )
    d = load(str(ae))
    assert (
        d.meta.format == "dictionary_learning" and d.meta.layer == 4 and d.meta.model_name is None
    )
    _check_against_reference(d, p, True)


# ----------------------------------------------------------------------------- loader + source


def test_source_alive_indices_and_meta_override_the_file(tmp_path: Path, monkeypatch) -> None:
    p = planted()
    folder = write_e2e_folder(tmp_path / "run", {5: {POS6: (p.decoder, p.encoder)}})
    from sae_backend import sources

    def fake_resolve(ref, progress=None):
        return Resolved(
            path=folder, alive_indices=[0, 2, 7, 9], meta={"model_name": "gpt2", "run": "abc"}
        )

    monkeypatch.setattr(sources, "resolve", fake_resolve)
    d = load(str(folder))
    expected = np.zeros(10, bool)
    expected[[0, 2, 9]] = True  # 7 is listed alive but its decoder row is zero
    np.testing.assert_array_equal(d.alive, expected)
    assert d.meta.alive_from == "local source" and d.meta.model_name == "gpt2"
    assert d.meta.extra["run"] == "abc"

    monkeypatch.setattr(
        sources, "resolve", lambda ref, progress=None: Resolved(path=folder, alive_indices=[3, 10])
    )
    with pytest.raises(FormatError, match="alive feature index 10 is out of range for 10 features"):
        load(str(folder))


def test_resolved_position_is_used_when_uri_has_none(tmp_path: Path, monkeypatch) -> None:
    p = planted()
    folder = write_e2e_folder(tmp_path / "run", {5: _two_positions(p)})
    from sae_backend import sources

    monkeypatch.setattr(
        sources, "resolve", lambda ref, progress=None: Resolved(path=folder, position=POS6)
    )
    assert load(str(folder)).meta.hook == POS6
    assert (
        load(str(folder), position="blocks.2.hook_resid_pre").meta.hook == "blocks.2.hook_resid_pre"
    )


def test_missing_path_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SAEError, match="no such file or folder"):
        load(str(tmp_path / "nothing.pt"))


@pytest.mark.parametrize(
    ("text", "layer"),
    [
        ("blocks.6.hook_resid_pre", 6),
        ("blocks-10-hook_resid_pre", 10),
        ("layers.11.mlp", 11),
        ("gpt_neox.layers.3", 3),
        ("transformer.h.4.mlp", 4),
        ("/data/h100/gemma-scope/layer_20/width_16k/average_l0_71", 20),  # last match wins
        ("/x/resid_post_layer_4/trainer_2/ae", 4),
        ("players_3", None),
        ("/tmp/pytest-19/sae", None),
    ],
)
def test_layer_from_names(text: str, layer: int | None) -> None:
    from sae_backend.formats._layout import layer_from

    assert layer_from(text) == layer
