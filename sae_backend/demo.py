"""The bundled demos: the real one (SAEs trained on SmolLM2-135M) and a TOY one for tests.

Real demo (`demo_sources()`, what the dashboard opens with): six small SAEs trained here by
`scripts/build_demo.py` on SmolLM2-135M-Instruct's layer-15 residual stream, shipped in
`sae_backend/demo_data/` (float16; three as e2e_sae checkpoints, three as SAELens folders, so
the demo also exercises those loaders), with `manifest.json` (settings, measured metrics; its
`ladder` names one recipe at 1x, 2x, 4x and 8x d_model, narrowest first) and
`contexts/<name>.json.gz` (each fired feature's top activating text windows, read with
`demo_contexts`). Setting the environment variable `SAE_DEMO=toy` makes `demo_sources()`
return the toy demo instead (the app tests use it: its geometry is planted, so shown numbers
have exact references).

TOY demo (`toy_sources()`): three small SAELens-format dictionaries of random directions with
planted shared structure, not SAEs of any model. What is planted:

- "toy-a": 1,024 features in 64 dims, 24 of them dead (density 0 in its sparsity file).
- "toy-b": keeps 512 of toy-a's directions (perturbed a little, shuffled) and adds 512 new
  random ones, so toy-a -> toy-b max cosines are bimodal: ~0.97 for the shared half, chance
  (~0.4 at d = 64) for the rest.
- "toy-a-seed2": every direction of toy-a, perturbed more strongly and shuffled, standing in
  for "the same setting trained with another seed".

The toy files are written once, deterministically (fixed seeds), atomically (a temporary
folder renamed into place), under `$SAE_CACHE_DIR/sae_demo/` (else `~/.cache/sae_demo/`).
Both functions return plain local paths, so they load with `load(path)` like any checkpoint.
"""

from __future__ import annotations

import gzip
import json
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from . import settings
from .errors import SourceError

VERSION = "toy-v1"  # bump when the generator changes, so old files are never reused
N_FEATURES, D_MODEL = 1024, 64
N_DEAD = 24
HOOK = "blocks.0.hook_resid_pre"
NAMES = ("toy-a", "toy-b", "toy-a-seed2")


DEMO_DATA = Path(__file__).resolve().parent / "demo_data"
MANIFEST = "manifest.json"


def demo_sources() -> dict[str, str]:
    """{short name: local path} of the bundled demo SAEs (the toy ones when SAE_DEMO=toy)."""
    if settings.DEMO.get() == "toy":
        return toy_sources()
    return {name: str(DEMO_DATA / name) for name in demo_manifest()["saes"]}


@lru_cache(maxsize=1)
def demo_manifest() -> dict[str, Any]:
    """The real demo's manifest.json: model, hook, preprocessing, training, per-SAE metrics."""
    path = DEMO_DATA / MANIFEST
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SourceError(
            f"{path}: the bundled demo's manifest is missing or unreadable ({e})"
        ) from e


def demo_contexts(source: str) -> dict[int, list[tuple[float, str]]]:
    """{feature: [(activation, text window), ...]} strongest first, for a real demo SAE given
    by short name or path; {} for anything else. In a window the firing token is [[marked]]."""
    name = Path(source).name if Path(source).parent == DEMO_DATA else source
    if name not in demo_manifest()["saes"]:
        return {}
    return _contexts(name)


@lru_cache(maxsize=8)
def _contexts(name: str) -> dict[int, list[tuple[float, str]]]:
    path = DEMO_DATA / "contexts" / f"{name}.json.gz"
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, ValueError) as e:
        raise SourceError(f"{path}: unreadable demo contexts ({e})") from e
    return {int(k): [(float(a), str(t)) for a, t in v] for k, v in raw.items()}


def demo_root() -> Path:
    """`$SAE_CACHE_DIR/sae_demo/<version>`, else `~/.cache/sae_demo/<version>`."""
    return settings.demo_dir() / VERSION


def toy_sources() -> dict[str, str]:
    """{short name: local folder} of the toy dictionaries, writing them first if missing."""
    root = demo_root()
    if not all((root / n / "cfg.json").is_file() for n in NAMES):
        _write_all(root)
    return {n: str(root / n) for n in NAMES}


def toy_matrices(seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """{name: {"decoder" [n, d], "encoder" [n, d], "density" [n]}} float64, before writing."""
    rng = np.random.default_rng(seed)
    n, d, half = N_FEATURES, D_MODEL, N_FEATURES // 2
    a = rng.standard_normal((n, d))
    a /= np.linalg.norm(a, axis=1, keepdims=True)

    def perturb(x: np.ndarray, scale: float) -> np.ndarray:
        y = x + scale * rng.standard_normal(x.shape) / np.sqrt(d)
        return y / np.linalg.norm(y, axis=1, keepdims=True)

    shared = rng.permutation(n)[:half]
    b = np.concatenate([perturb(a[shared], 0.25), perturb(rng.standard_normal((half, d)), 0.0)])
    b = b[rng.permutation(n)]
    a2 = perturb(a, 0.6)[rng.permutation(n)]
    out = {}
    for name, dec in (("toy-a", a), ("toy-b", b), ("toy-a-seed2", a2)):
        density = 10 ** rng.uniform(-4, -1.5, n)
        if name == "toy-a":
            density[rng.choice(n, N_DEAD, replace=False)] = 0.0
        out[name] = {"decoder": dec, "encoder": perturb(dec, 0.8), "density": density}
    return out


def _write_all(root: Path) -> None:
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=root.parent))
    try:
        for name, arrays in toy_matrices().items():
            _write_saelens(tmp / name, name, **arrays)
        if root.exists():  # another process finished first: keep its files
            return
        tmp.rename(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_saelens(
    folder: Path, name: str, decoder: np.ndarray, encoder: np.ndarray, density: np.ndarray
) -> None:
    """One SAELens folder: cfg.json, sae_weights.safetensors, sparsity.safetensors."""
    folder.mkdir(parents=True)
    n, d = decoder.shape
    weights = {
        "W_dec": decoder.astype(np.float32),  # [n, d]
        "W_enc": np.ascontiguousarray(encoder.T, dtype=np.float32),  # [d, n]
        "b_enc": np.zeros(n, np.float32),
        "b_dec": np.zeros(d, np.float32),
    }
    save_file(weights, str(folder / "sae_weights.safetensors"))
    log_density = np.log10(density + 1e-10).astype(np.float32)
    save_file({"sparsity": log_density}, str(folder / "sparsity.safetensors"))
    cfg = {
        "architecture": "standard",
        "d_in": d,
        "d_sae": n,
        "metadata": {"model_name": f"toy ({name}, random directions)", "hook_name": HOOK},
    }
    (folder / "cfg.json").write_text(json.dumps(cfg, indent=1))
