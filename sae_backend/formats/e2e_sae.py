"""ApolloResearch e2e_sae checkpoints (github.com/ApolloResearch/e2e_sae).

Three shapes on disk, one reader:
- a training checkpoint folder: `final_config.yaml` + `samples_N.pt` (we take the largest N,
  the latest checkpoint, as e2e_sae's own `from_checkpoint` does);
- one `samples_N.pt` (or any `.pt`) holding the state dict of the `saes` ModuleDict, keys
  `<pos>.encoder.0.weight` [n_dict, d_in], `<pos>.decoder.weight` [d_in, n_dict],
  `<pos>.decoder.bias` [d_in], where `<pos>` is the hook name with dots as hyphens;
  such a file may hold one SAE per hook position: pick one with LoadOptions.position;
- a Hugging Face file such as `e2e_similar_ce_layer_6.pt` (keys `encoder.weight`,
  `decoder.weight`, ... without a position) with its config `e2e_similar_ce_layer_6.yaml`.

The decoder is stored [d_in, n_dict] (the model normalises its columns): we transpose it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..dictionary import RawSAE
from ..errors import fail, list_names
from ._checks import bias_length, feature_rows, json_safe, matrix
from ._layout import layer_from, position_key
from ._safe_io import TORCH_SUFFIXES, load_torch, read_yaml, torch_pickle_strings
from .base import LoadOptions

NAME = "e2e_sae"

CONFIG = "final_config.yaml"
_SAMPLES = re.compile(r"^samples_(\d+)\.pt$")
# sub-keys of one SAE: (decoder weight, encoder weight, decoder bias) for both key styles
_LAYOUTS = (
    ("decoder.weight", "encoder.0.weight", "decoder.bias"),  # training checkpoints
    ("decoder.weight", "encoder.weight", "decoder.bias"),  # Hugging Face uploads
)


def detect(path: Path) -> bool:
    """Checkpoint folder, samples_N.pt, a .pt with a same-stem .yaml, or e2e-style keys."""
    if path.is_dir():
        return (path / CONFIG).is_file() or any(_SAMPLES.match(p.name) for p in path.iterdir())
    if path.suffix not in TORCH_SUFFIXES:
        return False
    if _SAMPLES.match(path.name) or path.with_suffix(".yaml").is_file():
        return True
    if (path.parent / CONFIG).is_file():
        return True
    strings = torch_pickle_strings(path) or set()
    return any(s.endswith(".encoder.0.weight") for s in strings)


def read(path: Path, opts: LoadOptions) -> RawSAE:
    ckpt, cfg_path = _locate(path)
    cfg = read_yaml(cfg_path) if cfg_path is not None else {}
    state = load_torch(ckpt)
    if not isinstance(state, Mapping):
        raise fail(
            ckpt, f"expected a state dict (a mapping of tensors), found {type(state).__name__}"
        )
    saes = _split_by_position(state)
    if not saes:
        raise fail(
            ckpt,
            "no e2e_sae weights: expected keys '<position>.decoder.weight' and "
            f"'<position>.encoder.0.weight' (or 'decoder.weight'); keys present: "
            f"{list_names(sorted(map(str, state)))}",
        )
    prefix = _choose(saes, opts.position, ckpt, path)
    sub = saes[prefix]
    hook = _hook(prefix, opts.position, cfg, ckpt)

    dec_key, enc_key, bias_key = next(lay for lay in _LAYOUTS if lay[0] in sub and lay[1] in sub)
    full = (prefix + ".") if prefix else ""
    d = bias_length(sub, [bias_key])
    ratio = _section(cfg, "saes").get("dict_size_to_input_ratio")
    n = int(ratio * d) if isinstance(ratio, int | float) and d is not None else None
    why = "decoder.bias length" + (
        f" and dict_size_to_input_ratio={ratio} in {cfg_path.name}" if n and cfg_path else ""
    )
    dec = feature_rows(
        matrix(sub[dec_key], ckpt, full + dec_key),
        ckpt,
        full + dec_key,
        axes=("d_in", "n_dict"),
        feature_axis=1,
        d=d,
        n=n,
        why=why,
    )
    enc = feature_rows(
        matrix(sub[enc_key], ckpt, full + enc_key),
        ckpt,
        full + enc_key,
        axes=("n_dict", "d_in"),
        feature_axis=0,
        d=dec.shape[1],
        n=dec.shape[0],
        why=f"{full + dec_key} of shape {[dec.shape[1], dec.shape[0]]}",
    )
    return RawSAE(decoder=dec, encoder=enc, meta=_meta(cfg, cfg_path, ckpt, hook, saes, dec))


def _locate(path: Path) -> tuple[Path, Path | None]:
    """(checkpoint file, config file or None); a folder gives its largest samples_N.pt."""
    if path.is_dir():
        found = [(int(m.group(1)), p) for p in path.iterdir() if (m := _SAMPLES.match(p.name))]
        if not found:
            raise fail(path, f"no samples_N.pt checkpoint in this e2e_sae folder (has {CONFIG}?)")
        ckpt = max(found)[1]
        cfg = path / CONFIG
        return ckpt, cfg if cfg.is_file() else None
    for cfg in (path.with_suffix(".yaml"), path.parent / CONFIG):
        if cfg.is_file():
            return path, cfg
    return path, None


def _split_by_position(state: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """{position prefix ('' for unprefixed files): {sub-key: tensor}} for complete SAEs only."""
    groups: dict[str, dict[str, Any]] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            continue
        for sub in (
            "encoder.0.weight",
            "encoder.0.bias",
            "encoder.weight",
            "encoder.bias",
            "decoder.weight",
            "decoder.bias",
        ):
            if key == sub or key.endswith("." + sub):
                prefix = key[: -len(sub)].rstrip(".")
                groups.setdefault(prefix, {})[sub] = value
                break
    return {p: g for p, g in groups.items() if any(lay[0] in g and lay[1] in g for lay in _LAYOUTS)}


def _choose(saes: dict[str, dict[str, Any]], position: str | None, ckpt: Path, given: Path) -> str:
    """The prefix of the SAE to read; several without a position is an error listing them."""
    names = sorted(saes)
    dotted = [_dots(p) for p in names if p]
    if position is not None and any(names):
        want = position_key(position)
        for p in names:
            if p and position_key(p) == want:
                return p
        raise fail(
            ckpt, f"no SAE at position {position!r}; positions in this file: {', '.join(dotted)}"
        )
    if len(names) == 1:
        return names[0]
    raise fail(
        ckpt,
        f"holds {len(names)} SAEs at positions {', '.join(dotted)}; pick one with "
        f"SRC#POSITION (e.g. {given}#{dotted[0]}) or --position {dotted[0]}",
    )


def _hook(prefix: str, position: str | None, cfg: dict[str, Any], ckpt: Path) -> str | None:
    """Hook name with dots: from the key prefix, else the config's single position."""
    if prefix:
        return _dots(prefix)
    listed = _section(cfg, "saes").get("sae_positions")
    if isinstance(listed, str):
        listed = [listed]
    elif not isinstance(listed, list):
        listed = None
    literal = [p for p in listed or [] if isinstance(p, str) and not re.search(r"[*?\[]", p)]
    if position is not None:
        if literal and position_key(position) not in {position_key(p) for p in literal}:
            raise fail(
                ckpt, f"no SAE at position {position!r}; the config lists {', '.join(literal)}"
            )
        return _dots(position)
    return literal[0] if len(literal) == 1 and len(listed or []) == 1 else None


def _dots(position: str) -> str:
    return position.replace("-", ".")


def _section(cfg: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """A nested config section, or {} when absent or not a mapping (a damaged config)."""
    value = cfg.get(key)
    return value if isinstance(value, Mapping) else {}


def _meta(
    cfg: dict[str, Any],
    cfg_path: Path | None,
    ckpt: Path,
    hook: str | None,
    saes: dict[str, Any],
    dec: Any,
) -> dict[str, Any]:
    saes_cfg = _section(cfg, "saes")
    loss = _section(cfg, "loss")
    sparsity = _section(loss, "sparsity")
    m = _SAMPLES.match(ckpt.name)
    meta: dict[str, Any] = {
        "model_name": cfg.get("tlens_model_name") or cfg.get("tlens_model_path"),
        "hook": hook,
        "layer": layer_from(hook) if hook else layer_from(ckpt.stem),
        "architecture": "relu",
        "d_in": int(dec.shape[1]),
        "d_sae": int(dec.shape[0]),
        "checkpoint": ckpt.name,
        "n_samples": int(m.group(1)) if m else None,
        "config_file": cfg_path.name if cfg_path else None,
        "dict_size_to_input_ratio": saes_cfg.get("dict_size_to_input_ratio"),
        "sparsity_coeff": sparsity.get("coeff"),
        "sparsity_p_norm": sparsity.get("p_norm"),
        "loss_coeffs": {
            k: v.get("coeff") for k, v in loss.items() if isinstance(v, Mapping) and "coeff" in v
        }
        or None,
        "wandb_run_name": cfg.get("wandb_run_name"),
    }
    if sparsity.get("p_norm") == 1 and sparsity.get("coeff") is not None:
        meta["l1_coefficient"] = sparsity.get("coeff")
    if len(saes) > 1:
        meta["positions"] = sorted(_dots(p) for p in saes)
    return {k: json_safe(v) for k, v in meta.items() if v is not None}
