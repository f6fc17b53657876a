"""Small SAE files in every supported format, written from known float64 matrices.

Every writer takes *feature rows* (decoder [n, d], encoder [n, d]: the orientation the loader
returns) and stores them the way the real library does, transposing where it does, so a test
can compare what `load()` returns with an independent float64 reference. Reusable by any test:

    p = planted()                                   # rows with known structure
    path = write_saelens(tmp_path / "sae", p.decoder, p.encoder, hook="blocks.3.hook_resid_pre")
    d = load(str(path))
    np.testing.assert_allclose(d.decoder, unit_rows(p.decoder)[0], atol=1e-6)

Files are tiny (10 x 6 by default) so tests stay fast.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors.torch import save_file

# ----------------------------------------------------------------------------- planted data


@dataclass(frozen=True)
class Planted:
    """Decoder/encoder feature rows with planted structure (float64).

    decoder [n, d]: rows 0-3 random; 4 duplicates 0; 5 = 7.5 * row 1; 6 = 0.02 * row 2;
                    7 is zero (dead); 8 = -row 3 (antiparallel); 9 random.
    encoder [n, d]: independent random rows, row 2 scaled by 40 (normalisation must undo it).
    """

    decoder: np.ndarray
    encoder: np.ndarray
    duplicate: tuple[int, int] = (0, 4)
    scaled: tuple[tuple[int, int, float], ...] = ((1, 5, 7.5), (2, 6, 0.02))
    dead: tuple[int, ...] = (7,)
    antiparallel: tuple[int, int] = (3, 8)


def planted(d: int = 6, seed: int = 0) -> Planted:
    """A 10 x d planted dictionary (non-square for d != 10)."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((6, d))
    dec = np.stack(
        [
            base[0],
            base[1],
            base[2],
            base[3],
            base[0],
            7.5 * base[1],
            0.02 * base[2],
            np.zeros(d),
            -base[3],
            base[4],
        ]
    )
    enc = rng.standard_normal((10, d))
    enc[2] *= 40.0
    return Planted(decoder=dec, encoder=enc)


def unit_rows(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Float64 reference: (unit rows with zero rows left zero, row norms)."""
    m = np.asarray(m, dtype=np.float64)
    norms = np.sqrt((m * m).sum(axis=1))
    unit = np.zeros_like(m)
    live = norms > 0
    unit[live] = m[live] / norms[live, None]
    return unit, norms


def permutation(n: int, seed: int = 1) -> np.ndarray:
    """A fixed permutation of range(n) that moves every index (for permuted-copy tests)."""
    rng = np.random.default_rng(seed)
    while True:
        p = rng.permutation(n)
        if n < 2 or (p != np.arange(n)).all():
            return p


def _t(a: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.tensor(np.ascontiguousarray(a)).to(dtype)


# ----------------------------------------------------------------------------- e2e_sae


def e2e_state(
    saes: dict[str, tuple[np.ndarray, np.ndarray]], dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """State dict of e2e_sae's `saes` ModuleDict: {position: (decoder rows, encoder rows)}.

    Positions are given with dots (blocks.6.hook_resid_pre) and stored with hyphens; the
    decoder is stored [d_in, n_dict] as nn.Linear(n_dict, d_in) does.
    """
    out = {}
    for pos, (dec, enc) in saes.items():
        p = pos.replace(".", "-")
        out[f"{p}.encoder.0.weight"] = _t(enc, dtype)
        out[f"{p}.encoder.0.bias"] = torch.zeros(enc.shape[0], dtype=dtype)
        out[f"{p}.decoder.weight"] = _t(dec.T, dtype)
        out[f"{p}.decoder.bias"] = torch.zeros(dec.shape[1], dtype=dtype)
    return out


def e2e_config(
    positions: list[str],
    *,
    model: str = "gpt2-small",
    ratio: float | None = None,
    coeff: float = 1.5,
) -> dict[str, Any]:
    """A trimmed e2e_sae final_config.yaml."""
    return {
        "wandb_run_name": "test_run",
        "tlens_model_name": model,
        "tlens_model_path": None,
        "loss": {
            "sparsity": {"p_norm": 1.0, "coeff": coeff},
            "in_to_orig": None,
            "out_to_orig": None,
            "out_to_in": {"coeff": 0.0},
            "logits_kl": {"coeff": 1.0},
        },
        "saes": {
            "retrain_saes": False,
            "pretrained_sae_paths": None,
            "sae_positions": positions,
            "dict_size_to_input_ratio": ratio,
        },
    }


def write_e2e_folder(
    folder: Path,
    checkpoints: dict[int, dict[str, tuple[np.ndarray, np.ndarray]]],
    *,
    config: dict[str, Any] | None = None,
) -> Path:
    """A training checkpoint folder: final_config.yaml + one samples_N.pt per N."""
    folder.mkdir(parents=True, exist_ok=True)
    any_saes = next(iter(checkpoints.values()))
    cfg = config if config is not None else e2e_config(list(any_saes))
    (folder / "final_config.yaml").write_text(yaml.safe_dump(cfg))
    for n_samples, saes in checkpoints.items():
        torch.save(e2e_state(saes), folder / f"samples_{n_samples}.pt")
    return folder


def write_e2e_hf(
    path: Path, dec: np.ndarray, enc: np.ndarray, *, config: dict[str, Any] | None = None
) -> Path:
    """A Hugging Face e2e file (unprefixed keys) with its same-stem .yaml when `config` is given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "encoder.weight": _t(enc),
            "encoder.bias": torch.zeros(enc.shape[0]),
            "decoder.weight": _t(dec.T),
            "decoder.bias": torch.zeros(dec.shape[1]),
        },
        path,
    )
    if config is not None:
        path.with_suffix(".yaml").write_text(yaml.safe_dump(config))
    return path


# ----------------------------------------------------------------------------- SAELens


def saelens_log_sparsity(density: np.ndarray) -> np.ndarray:
    """What SAELens stores in sparsity.safetensors: float32 log10(density + 1e-10)."""
    return np.log10(np.asarray(density, dtype=np.float64) + 1e-10).astype(np.float32)


def write_saelens(
    folder: Path,
    dec: np.ndarray,
    enc: np.ndarray | None,
    *,
    model: str = "gpt2-small",
    hook: str = "blocks.3.hook_resid_pre",
    neuronpedia_id: str | None = "gpt2-small/3-res-test",
    style: str = "metadata",
    architecture: str = "standard",
    density: np.ndarray | None = None,
    cfg_overrides: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """An SAELens folder: cfg.json, sae_weights.safetensors (W_dec [n, d], W_enc [d, n]).

    style: "metadata" (SAELens >= 6), "meta" (early 6.0) or "pre6" (top-level hook_point etc.).
    architecture: "standard", "gated" (no b_enc; b_gate, b_mag, r_mag) or "jumprelu" (threshold).
    density: per-feature firing density, written as SAELens's log10 sparsity file.
    """
    folder.mkdir(parents=True, exist_ok=True)
    n, d = dec.shape
    tensors = {"W_dec": _t(dec, dtype), "b_dec": torch.zeros(d, dtype=dtype)}
    if enc is not None:
        tensors["W_enc"] = _t(enc.T, dtype)
    if architecture == "gated":
        tensors.update(b_gate=torch.zeros(n), b_mag=torch.zeros(n), r_mag=torch.zeros(n))
    else:
        tensors["b_enc"] = torch.zeros(n, dtype=dtype)
    if architecture == "jumprelu":
        tensors["threshold"] = torch.full((n,), 0.1)
    save_file(tensors, str(folder / "sae_weights.safetensors"))
    layer = int(hook.split(".")[1]) if hook.startswith("blocks.") else None
    cfg: dict[str, Any] = {"architecture": architecture, "d_in": d, "d_sae": n, "dtype": "float32"}
    info = {
        "model_name": model,
        "hook_name": hook,
        "hook_layer": layer,
        "neuronpedia_id": neuronpedia_id,
    }
    if style == "pre6":
        cfg.update(
            model_name=model, hook_point=hook, hook_point_layer=layer, neuronpedia_id=neuronpedia_id
        )
        cfg.update(activation_fn_str="relu", normalize_activations=False, l1_coefficient=8.0)
        del cfg["architecture"]
    else:
        cfg[style] = {**info, "sae_lens_version": "6.5.0"}
        cfg["apply_b_dec_to_input"] = True
    cfg.update(cfg_overrides or {})
    (folder / "cfg.json").write_text(json.dumps(cfg))
    if density is not None:
        sp = torch.from_numpy(saelens_log_sparsity(density))
        save_file({"sparsity": sp}, str(folder / "sparsity.safetensors"))
    return folder


# ----------------------------------------------------------------------------- sparsify


def write_sparsify(
    folder: Path,
    dec: np.ndarray,
    enc: np.ndarray,
    *,
    dtype: torch.dtype = torch.float32,
    k: int = 3,
    cfg_overrides: dict[str, Any] | None = None,
    run_model: str | None = None,
) -> Path:
    """A sparsify hookpoint folder: cfg.json + sae.safetensors (W_dec and encoder.weight [n, d]).

    run_model: also write the run's config.json one folder up, naming the model.
    """
    folder.mkdir(parents=True, exist_ok=True)
    n, d = dec.shape
    save_file(
        {
            "encoder.weight": _t(enc, dtype),
            "encoder.bias": torch.zeros(n, dtype=dtype),
            "W_dec": _t(dec, dtype),
            "b_dec": torch.zeros(d, dtype=dtype),
        },
        str(folder / "sae.safetensors"),
    )
    cfg = {
        "activation": "topk",
        "expansion_factor": 32,
        "normalize_decoder": True,
        "num_latents": n,
        "k": k,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": d,
    }
    cfg.update(cfg_overrides or {})
    (folder / "cfg.json").write_text(json.dumps(cfg))
    if run_model is not None:
        (folder.parent / "config.json").write_text(
            json.dumps({"model": run_model, "batch_size": 8})
        )
    return folder


# ----------------------------------------------------------------------------- dictionary_learning


def dictionary_learning_state(
    dec: np.ndarray, enc: np.ndarray, variant: str = "standard"
) -> dict[str, torch.Tensor]:
    """ae.pt state dict. standard/topk: decoder.weight [d, n], encoder.weight [n, d];
    jumprelu: W_dec [n, d], W_enc [d, n]."""
    n, d = dec.shape
    if variant == "jumprelu":
        return {
            "W_enc": _t(enc.T),
            "b_enc": torch.zeros(n),
            "W_dec": _t(dec),
            "b_dec": torch.zeros(d),
            "threshold": torch.zeros(n),
        }
    state = {"encoder.weight": _t(enc), "encoder.bias": torch.zeros(n), "decoder.weight": _t(dec.T)}
    if variant == "topk":
        state.update(b_dec=torch.zeros(d), k=torch.tensor(3), threshold=torch.tensor(0.5))
    else:
        state["bias"] = torch.zeros(d)
    return state


def write_dictionary_learning(
    folder: Path,
    dec: np.ndarray,
    enc: np.ndarray,
    *,
    variant: str = "standard",
    wrapped: bool = False,
    trainer: dict[str, Any] | None = None,
    config: bool = True,
) -> Path:
    """A trainer folder: ae.pt (optionally wrapped as a mid-training backup) + config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    n, d = dec.shape
    state = dictionary_learning_state(dec, enc, variant)
    obj: Any = (
        {"step": 1234, "ae": state, "optimizer": {"state": {}, "param_groups": []}}
        if wrapped
        else state
    )
    torch.save(obj, folder / "ae.pt")
    if config:
        t = {
            "trainer_class": "TopKTrainer" if variant == "topk" else "StandardTrainer",
            "dict_class": {"topk": "AutoEncoderTopK", "jumprelu": "JumpReluAutoEncoder"}.get(
                variant, "AutoEncoder"
            ),
            "activation_dim": d,
            "dict_size": n,
            "layer": 3,
            "lm_name": "EleutherAI/pythia-70m-deduped",
            "submodule_name": "resid_post_layer_3",
            "l1_penalty": 0.04,
        }
        t.update(trainer or {})
        (folder / "config.json").write_text(
            json.dumps({"trainer": t, "buffer": {"d_submodule": d}})
        )
    return folder / "ae.pt"


# ----------------------------------------------------------------------------- Gemma Scope


def write_gemma_scope(path: Path, dec: np.ndarray, enc: np.ndarray, *, lower: bool = False) -> Path:
    """params.npz: W_dec [n, d], W_enc [d, n], b_dec [d], b_enc [n], threshold [n] (float32)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n, d = dec.shape
    w = "w" if lower else "W"
    np.savez(
        path,
        **{
            f"{w}_enc": enc.T.astype(np.float32),
            f"{w}_dec": dec.astype(np.float32),
            "b_enc": np.zeros(n, np.float32),
            "b_dec": np.zeros(d, np.float32),
            "threshold": np.full(n, 0.1, np.float32),
        },
    )
    return path


# ----------------------------------------------------------------------------- plain matrices


def write_matrix(path: Path, arrays: np.ndarray | dict[str, np.ndarray]) -> Path:
    """A plain matrix file by suffix: .npy (one array), .npz, .safetensors, .pt (tensor or dict)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix
    if suffix == ".npy":
        assert isinstance(arrays, np.ndarray)
        np.save(path, arrays)
    elif suffix == ".npz":
        np.savez(path, **(arrays if isinstance(arrays, dict) else {"arr_0": arrays}))
    elif suffix == ".safetensors":
        d = arrays if isinstance(arrays, dict) else {"weight": arrays}
        save_file({k: torch.tensor(np.ascontiguousarray(v)) for k, v in d.items()}, str(path))
    else:
        obj = (
            {k: torch.tensor(v) for k, v in arrays.items()}
            if isinstance(arrays, dict)
            else torch.tensor(arrays)
        )
        torch.save(obj, path)
    return path
