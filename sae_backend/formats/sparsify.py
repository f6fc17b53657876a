"""EleutherAI sparsify folders (github.com/EleutherAI/sparsify): `cfg.json` + `sae.safetensors`.

One folder per hookpoint (`layers.6`, `layers.6.mlp`, ...), the folder name is the hookpoint;
a run folder holding several is resolved with LoadOptions.position (SRC#layers.6).
Weights: `W_dec` [num_latents, d_in] and `encoder.weight` [num_latents, d_in], both feature rows
already. cfg: `d_in`, `num_latents` (0 means d_in * `expansion_factor`), `k`, ... Tensors are
often bf16: safetensors hands them to us through torch and they arrive as float32.
The run folder's `config.json` (the training config) names the model under `model`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..dictionary import RawSAE
from ..errors import FormatError
from ._checks import any_matrix, bias_length, config_int, feature_rows, json_safe, require_keys
from ._layout import detect_weights, hook_folder, layer_from, weights_file
from ._safe_io import load_safetensors_lazily, read_json, safetensors_header
from .base import LoadOptions

NAME = "sparsify"

WEIGHTS = "sae.safetensors"
CONFIG = "cfg.json"
RUN_CONFIG = "config.json"


def detect(path: Path) -> bool:
    """A folder with sae.safetensors (or hookpoint subfolders with one), or a sparsify file."""
    return detect_weights(path, WEIGHTS, {"W_dec", "encoder.weight"})


def read(path: Path, opts: LoadOptions) -> RawSAE:
    folder, weights, chosen = weights_file(path, WEIGHTS, opts.position)
    cfg_path = folder / CONFIG
    cfg = read_json(cfg_path) if cfg_path.is_file() else {}
    d_in = config_int(cfg, "d_in", cfg_path)
    n = config_int(cfg, "num_latents", cfg_path) or None
    factor = config_int(cfg, "expansion_factor", cfg_path)
    if n is None and d_in is not None and factor:
        n = d_in * factor

    header = safetensors_header(weights)
    require_keys(header, ["W_dec", "encoder.weight"], weights)
    arrays = load_safetensors_lazily(weights, ["W_dec", "encoder.weight", "b_dec"])  # big matrices read later
    d = d_in if d_in is not None else bias_length(arrays, ["b_dec"])
    dec = feature_rows(
        any_matrix(arrays["W_dec"], weights, "W_dec"),
        weights,
        "W_dec",
        axes=("num_latents", "d_in"),
        feature_axis=0,
        d=d,
        n=n,
        why=_why(d_in, d, n),
    )
    meta = _meta(cfg, folder, chosen, dec, header)
    enc = None
    if cfg.get("transcode"):
        meta["encoder_omitted"] = "transcoder: encoder reads a different space than W_dec writes"
    else:
        enc = feature_rows(
            any_matrix(arrays["encoder.weight"], weights, "encoder.weight"),
            weights,
            "encoder.weight",
            axes=("num_latents", "d_in"),
            feature_axis=0,
            d=dec.shape[1],
            n=dec.shape[0],
            why=f"W_dec of shape {list(dec.shape)}",
        )
    return RawSAE(decoder=dec, encoder=enc, meta=meta)


def _why(d_in: int | None, d: int | None, n: int | None) -> str:
    """Where the expected sizes came from, for error messages."""
    parts = [f"d_in={d_in} in {CONFIG}" if d_in is not None else None]
    if d_in is None and d is not None:
        parts.append(f"b_dec of length {d}")
    if n is not None:
        parts.append(f"num_latents={n} per {CONFIG}")
    return ", ".join(p for p in parts if p)


def _hook(folder: Path, chosen: str | None) -> tuple[str | None, int | None]:
    """The hookpoint and seed of the SAE in `folder`: sparsify names each SAE by its hookpoint
    (`layers.6.mlp`) and, when a run trains several seeds, by `hookpoint/seedN`; the folder
    layout follows the name. A folder not named like a hook gives no hook, unless chosen."""
    named, seed = hook_folder(folder)
    parts = [p for p in (chosen or "").split("/") if p and not _is_seed(p)]
    if parts:
        return parts[-1], seed
    return (named.name if layer_from(named.name) is not None else None), seed


def _is_seed(name: str) -> bool:
    return hook_folder(Path(name))[1] is not None


def _meta(
    cfg: dict[str, Any],
    folder: Path,
    chosen: str | None,
    dec: np.ndarray,
    header: dict[str, tuple[list[int], str]],
) -> dict[str, Any]:
    hook, seed = _hook(folder, chosen)
    run_cfg_path = hook_folder(folder)[0].parent / RUN_CONFIG
    model = None
    if run_cfg_path.is_file():
        try:  # optional metadata: an unrelated or broken config.json up there is no reason to fail
            model = read_json(run_cfg_path).get("model")
        except FormatError:
            model = None
    meta = {
        "model_name": model if isinstance(model, str) else None,
        "hook": hook,
        "layer": layer_from(hook),
        "seed": seed,
        "architecture": cfg.get("activation", "topk") if cfg else None,
        "d_in": int(dec.shape[1]),
        "d_sae": int(dec.shape[0]),
        "k": cfg.get("k"),
        "expansion_factor": cfg.get("expansion_factor"),
        "normalize_decoder": cfg.get("normalize_decoder"),
        "multi_topk": cfg.get("multi_topk"),
        "skip_connection": cfg.get("skip_connection"),
        "transcode": cfg.get("transcode"),
        "stored_dtype": header["W_dec"][1],
    }
    return {k: json_safe(v) for k, v in meta.items() if v is not None}
