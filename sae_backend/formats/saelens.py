"""SAELens folders (github.com/jbloomAus/SAELens): `cfg.json` + `sae_weights.safetensors`.

Weights: `W_dec` [d_sae, d_in] (feature rows already), `W_enc` [d_in, d_sae] (transposed here);
gated SAEs have no `b_enc`, JumpReLU adds `threshold`: the encoder is `W_enc` for all of them.
Transcoders (`d_out` != `d_in` in cfg) decode into another space: their encoder is left out.

Config: SAELens >= 6 nests model/hook/neuronpedia under `metadata` (`meta` in early 6.0
releases); older configs keep `model_name`, `hook_point`/`hook_name`, `hook_point_layer`,
`neuronpedia_id` at the top level. We read all three.

Optional `sparsity.safetensors`, key `sparsity`: SAELens saves log10(feature_density + 1e-10)
where feature_density is the firing fraction over its last sampling window. A feature that never
fired in that window is stored as exactly log10(1e-10) = -10, so we call a feature dead when its
value is at most -10 + 1e-3 (float32 rounding room; the smallest nonzero density SAELens can
record, one firing in ~1e9 tokens, reads -8.96). density = max(10**x - 1e-10, 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..dictionary import RawSAE
from ..errors import fail
from ._checks import (
    any_matrix,
    bias_length,
    config_int,
    feature_rows,
    json_safe,
    require_keys,
    vector,
)
from ._layout import detect_weights, layer_from, weights_file
from ._safe_io import load_safetensors, load_safetensors_lazily, read_json, safetensors_header
from .base import LoadOptions

NAME = "saelens"

WEIGHTS = "sae_weights.safetensors"
CONFIG = "cfg.json"
SPARSITY = "sparsity.safetensors"
_EPS = 1e-10  # SAELens adds this before log10
DEAD_LOG10 = np.log10(_EPS) + 1e-3  # at or below: never fired in SAELens's sampling window


def detect(path: Path) -> bool:
    """A folder with sae_weights.safetensors (or subfolders with one), or a W_dec+W_enc file."""
    return detect_weights(path, WEIGHTS, {"W_dec", "W_enc"})


def read(path: Path, opts: LoadOptions) -> RawSAE:
    folder, weights, chosen = weights_file(path, WEIGHTS, opts.position)
    cfg_path = folder / CONFIG
    cfg = read_json(cfg_path) if cfg_path.is_file() else {}
    d_in, d_sae, d_out = (
        config_int(cfg, k, cfg_path, minimum=1) for k in ("d_in", "d_sae", "d_out")
    )

    header = safetensors_header(weights)
    require_keys(header, ["W_dec"], weights)
    arrays = load_safetensors_lazily(weights, ["W_dec", "W_enc", "b_dec"])  # big matrices read later
    d = d_in if d_in is not None else bias_length(arrays, ["b_dec"])
    transcoder = d_out is not None and d_in is not None and d_out != d_in
    why = [f"d_in={d_in} in {CONFIG}" if d_in is not None else None]
    if d_in is None and d is not None:
        why.append(f"b_dec of length {d}")
    if transcoder:
        why = [f"d_out={d_out} in {CONFIG}"]
    if d_sae is not None:
        why.append(f"d_sae={d_sae} in {CONFIG}")
    dec = feature_rows(
        any_matrix(arrays["W_dec"], weights, "W_dec"),
        weights,
        "W_dec",
        axes=("d_sae", "d_out" if transcoder else "d_in"),
        feature_axis=0,
        d=d_out if transcoder else d,
        n=d_sae,
        why=", ".join(w for w in why if w),
    )
    enc = None
    if "W_enc" in arrays and not transcoder:
        enc = feature_rows(
            any_matrix(arrays["W_enc"], weights, "W_enc"),
            weights,
            "W_enc",
            axes=("d_in", "d_sae"),
            feature_axis=1,
            d=dec.shape[1],
            n=dec.shape[0],
            why=f"W_dec of shape {list(dec.shape)}",
        )
    density = alive = None
    sparsity_path = folder / SPARSITY
    if sparsity_path.is_file() and weights.name == WEIGHTS:
        density, alive = _density(sparsity_path, dec.shape[0])
    meta = _meta(cfg, dec, chosen, weights)
    if transcoder:
        meta["encoder_omitted"] = "transcoder: W_enc reads a different space than W_dec writes"
    if alive is not None:
        meta["alive_from"] = SPARSITY
    return RawSAE(decoder=dec, encoder=enc, density=density, alive=alive, meta=meta)


def _density(path: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    """([n] density, [n] alive) from SAELens's log10 feature density."""
    require_keys(safetensors_header(path), ["sparsity"], path)
    arrays = load_safetensors(path, ["sparsity"])
    log10 = vector(arrays["sparsity"], path, "sparsity", n).astype(np.float64)
    if (log10 > 0).any():
        raise fail(path, "sparsity holds values above 0, expected log10 feature densities (<= 0)")
    alive = log10 > DEAD_LOG10
    density = np.where(alive, np.maximum(10.0**log10 - _EPS, 0.0), 0.0)
    return density, alive


def _meta(
    cfg: dict[str, Any], dec: np.ndarray, chosen: str | None, weights: Path
) -> dict[str, Any]:
    nested = cfg.get("metadata") or cfg.get("meta") or {}

    def get(*keys: str) -> Any:
        for k in keys:
            for src in (nested, cfg):
                if isinstance(src, dict) and src.get(k) is not None:
                    return src[k]
        return None

    hook = get("hook_name", "hook_point")
    layer = get("hook_layer", "hook_point_layer")
    k = cfg.get("k")
    if k is None and isinstance(cfg.get("activation_fn_kwargs"), dict):
        k = cfg["activation_fn_kwargs"].get("k")
    meta = {
        "model_name": get("model_name"),
        "hook": hook,
        "layer": int(layer) if isinstance(layer, int) else layer_from(hook or chosen),
        "neuronpedia_id": get("neuronpedia_id"),
        "architecture": cfg.get("architecture") or ("standard" if cfg else None),
        "d_in": int(dec.shape[1]),
        "d_sae": int(dec.shape[0]),
        "k": k,
        "l1_coefficient": cfg.get("l1_coefficient"),
        "normalize_activations": cfg.get("normalize_activations"),
        "apply_b_dec_to_input": cfg.get("apply_b_dec_to_input"),
        "sae_lens_version": get("sae_lens_version"),
        "subfolder": chosen,
        "weights_file": weights.name,
    }
    return {key: json_safe(v) for key, v in meta.items() if v is not None}
