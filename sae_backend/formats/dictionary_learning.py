"""saprmarks dictionary_learning (github.com/saprmarks/dictionary_learning): `ae.pt` + `config.json`.

`ae.pt` is a pickled state dict (read with weights_only=True). Two weight layouts:
- AutoEncoder / TopK / BatchTopK / Gated: `decoder.weight` [activation_dim, dict_size]
  (an nn.Linear, transposed here) and `encoder.weight` [dict_size, activation_dim];
- JumpReLU / Matryoshka: `W_dec` [dict_size, activation_dim], `W_enc` [activation_dim, dict_size].
Mid-training backups wrap it: {"ae": state_dict, "step": ..., "optimizer": ...}.
`config.json` (beside ae.pt, or one folder up for checkpoints/ae_N.pt) holds
trainer.{activation_dim, dict_size, layer, lm_name, submodule_name, k, l1_penalty, ...}.
A sweep folder with trainer_0/, trainer_1/, ... is resolved with LoadOptions.position.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..dictionary import RawSAE
from ..errors import fail, list_names
from ._checks import bias_length, feature_rows, json_safe, matrix
from ._layout import holds, layer_from, sibling_config, weights_file
from ._safe_io import TORCH_SUFFIXES, load_torch, read_json, torch_pickle_strings
from .base import LoadOptions

NAME = "dictionary_learning"

WEIGHTS = "ae.pt"
CONFIG = "config.json"
_AE = re.compile(r"^ae(_\d+)?\.pt$")
# (key, stored axes, feature axis) for the decoder and the encoder, in preference order
_DECODERS = (
    ("decoder.weight", ("activation_dim", "dict_size"), 1),
    ("W_dec", ("dict_size", "activation_dim"), 0),
)
_ENCODERS = (
    ("encoder.weight", ("dict_size", "activation_dim"), 0),
    ("W_enc", ("activation_dim", "dict_size"), 1),
)
_BIASES = ("b_dec", "bias", "decoder_bias", "decoder.bias")  # [activation_dim] in each variant


def detect(path: Path) -> bool:
    """ae.pt (or a folder of trainer_N/ae.pt), or a .pt whose keys look like an SAE."""
    if path.is_dir():
        return holds(path, WEIGHTS)
    if path.suffix not in TORCH_SUFFIXES:
        return False
    if _AE.match(path.name):
        return True
    strings = torch_pickle_strings(path) or set()
    return bool(strings & {"decoder.weight", "W_dec"}) and bool(
        strings & {"encoder.weight", "W_enc"}
    )


def read(path: Path, opts: LoadOptions) -> RawSAE:
    _, file, chosen = weights_file(path, WEIGHTS, opts.position)
    obj = load_torch(file)
    state, extra, embedded = _unwrap(obj, file)
    cfg_path = sibling_config(file, [CONFIG], levels=1)
    cfg = read_json(cfg_path) if cfg_path is not None else embedded
    trainer = t if isinstance(t := cfg.get("trainer"), dict) else {}
    d_cfg, n_cfg = trainer.get("activation_dim"), trainer.get("dict_size")
    d_cfg = d_cfg if isinstance(d_cfg, int) and not isinstance(d_cfg, bool) else None
    n_cfg = n_cfg if isinstance(n_cfg, int) and not isinstance(n_cfg, bool) else None

    dec_spec = next((s for s in _DECODERS if s[0] in state), None)
    if dec_spec is None:
        raise fail(
            file,
            "missing decoder: expected key 'decoder.weight' or 'W_dec'; keys present: "
            f"{list_names(sorted(map(str, state)))}",
        )
    d = d_cfg if d_cfg is not None else bias_length(state, _BIASES)
    why = []
    if d_cfg is not None or n_cfg is not None:
        why.append(f"trainer.activation_dim/dict_size in {cfg_path.name if cfg_path else CONFIG}")
    elif d is not None:
        why.append(f"decoder bias of length {d}")
    key, axes, axis = dec_spec
    dec = feature_rows(
        matrix(state[key], file, key),
        file,
        key,
        axes=axes,
        feature_axis=axis,
        d=d,
        n=n_cfg,
        why=", ".join(why),
    )
    enc = None
    enc_spec = next((s for s in _ENCODERS if s[0] in state), None)
    if enc_spec is not None:
        key, axes, axis = enc_spec
        enc = feature_rows(
            matrix(state[key], file, key),
            file,
            key,
            axes=axes,
            feature_axis=axis,
            d=dec.shape[1],
            n=dec.shape[0],
            why=f"{dec_spec[0]} giving {list(dec.shape)} rows",
        )
    meta = _meta(trainer, file, chosen, dec, extra, dec_spec[0])
    return RawSAE(decoder=dec, encoder=enc, meta=meta)


def _unwrap(obj: Any, file: Path) -> tuple[Mapping[str, Any], dict[str, Any], dict[str, Any]]:
    """(state dict, checkpoint extras, embedded config) from a state dict or an {"ae": ...} backup."""
    if not isinstance(obj, Mapping):
        raise fail(
            file, f"expected a state dict (a mapping of tensors), found {type(obj).__name__}"
        )
    if isinstance(obj.get("ae"), Mapping):
        step = obj.get("step")
        embedded = obj.get("config")
        return (
            obj["ae"],
            {"step": int(step) if isinstance(step, int | np.integer) else None},
            embedded if isinstance(embedded, dict) else {},
        )
    return obj, {}, {}


def _meta(
    trainer: dict[str, Any],
    file: Path,
    chosen: str | None,
    dec: np.ndarray,
    extra: dict[str, Any],
    dec_key: str,
) -> dict[str, Any]:
    hook = trainer.get("submodule_name")
    layer = trainer.get("layer")
    if not isinstance(layer, int) or isinstance(layer, bool):
        layer = layer_from(hook) if hook else layer_from(str(file.with_suffix("")))
    meta = {
        "model_name": trainer.get("lm_name"),
        "hook": hook,
        "layer": layer,
        "architecture": trainer.get("dict_class") or trainer.get("trainer_class"),
        "trainer_class": trainer.get("trainer_class"),
        "d_in": int(dec.shape[1]),
        "d_sae": int(dec.shape[0]),
        "k": trainer.get("k"),
        "l1_coefficient": trainer.get("l1_penalty"),
        "decoder_key": dec_key,
        "subfolder": chosen,
        **extra,
    }
    return {k: json_safe(v) for k, v in meta.items() if v is not None}
