"""Gemma Scope `params.npz` (huggingface.co/google/gemma-scope-*): no config file.

Arrays: `W_dec` [d_sae, d_model] (feature rows), `W_enc` [d_model, d_sae] (transposed here),
`b_dec` [d_model], `b_enc`, `threshold` (some copies spell them `w_dec`, `w_enc`).
What the file does not say comes from its path, laid out as in the Hugging Face repos:
`gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71/params.npz` gives layer 20,
16384 features (checked against the arrays), L0 71, and for the canonical repo names the
model (gemma-2-2b) and hook (blocks.20.hook_resid_post), following SAELens's mapping.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..dictionary import RawSAE
from ..errors import fail, list_names
from ._checks import bias_length, feature_rows, first_key, json_safe, matrix
from ._safe_io import load_npz, npz_keys
from .base import LoadOptions

NAME = "gemma_scope"

WEIGHTS = "params.npz"
_WIDTH = re.compile(r"^width_(\d+)([km]?)$", re.I)
_LAYER = re.compile(r"^layer_(\d+)$")
_L0 = re.compile(r"^average_l0_(\d+)$")
_REPO = re.compile(r"gemma-scope-(2b|9b|27b)-(pt|it)-(res|mlp|att)", re.I)
_HOOKS = {
    "res": "blocks.{}.hook_resid_post",
    "mlp": "blocks.{}.hook_mlp_out",
    "att": "blocks.{}.attn.hook_z",
}


def detect(path: Path) -> bool:
    """params.npz (or a folder holding one), or an .npz with W_dec and W_enc."""
    if path.is_dir():
        return (path / WEIGHTS).is_file()
    if path.suffix != ".npz":
        return False
    if path.name == WEIGHTS:
        return True
    keys = {k.lower() for k in npz_keys(path) or ()}
    return {"w_dec", "w_enc"} <= keys


def read(path: Path, opts: LoadOptions) -> RawSAE:
    file = path / WEIGHTS if path.is_dir() else path
    arrays = load_npz(file)
    dec_key = first_key(arrays, ["W_dec", "w_dec"])
    enc_key = first_key(arrays, ["W_enc", "w_enc"])
    if dec_key is None:
        raise fail(file, f"missing key W_dec; keys present: {list_names(sorted(arrays))}")
    info = _from_path(file)
    d = bias_length(arrays, ["b_dec"])
    n = info.get("width")
    why = [f"b_dec of length {d}"] if d is not None else []
    if n is not None:
        why.append(f"{info['width_dir']} in the path")
    dec = feature_rows(
        matrix(arrays[dec_key], file, dec_key),
        file,
        dec_key,
        axes=("d_sae", "d_model"),
        feature_axis=0,
        d=d,
        n=n,
        why=", ".join(why),
    )
    enc = None
    if enc_key is not None:
        enc = feature_rows(
            matrix(arrays[enc_key], file, enc_key),
            file,
            enc_key,
            axes=("d_model", "d_sae"),
            feature_axis=1,
            d=dec.shape[1],
            n=dec.shape[0],
            why=f"{dec_key} of shape {list(dec.shape)}",
        )
    meta: dict[str, Any] = {
        "model_name": info.get("model_name"),
        "hook": info.get("hook"),
        "layer": info.get("layer"),
        "architecture": "jumprelu",
        "d_in": int(dec.shape[1]),
        "d_sae": int(dec.shape[0]),
        "average_l0": info.get("average_l0"),
    }
    return RawSAE(
        decoder=dec,
        encoder=enc,
        meta={k: json_safe(v) for k, v in meta.items() if v is not None},
    )


def _from_path(file: Path) -> dict[str, Any]:
    """layer, width, average_l0, model and hook from a Gemma Scope style path."""
    out: dict[str, Any] = {}
    for part in file.parts:
        if m := _LAYER.match(part):
            out["layer"] = int(m.group(1))
        elif m := _WIDTH.match(part):
            scale = {"": 1, "k": 1024, "m": 1024 * 1024}[m.group(2).lower()]
            out["width"], out["width_dir"] = int(m.group(1)) * scale, part
        elif m := _L0.match(part):
            out["average_l0"] = int(m.group(1))
    repo = _REPO.search(str(file))
    if repo:
        size, kind, site = (g.lower() for g in repo.groups())
        out["model_name"] = f"gemma-2-{size}" + ("-it" if kind == "it" else "")
        if "layer" in out:
            out["hook"] = _HOOKS[site].format(out["layer"])
    return out
