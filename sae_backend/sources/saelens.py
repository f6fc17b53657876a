"""Remote source `saelens:RELEASE/SAE_ID`: an SAE named as in SAELens's pretrained directory.

A release maps to a Hugging Face repo and each SAE id to a path in it (and often a Neuronpedia
id). The lookup reads SAELens's own `pretrained_saes.yaml` when the `sae_lens` package is
installed (an optional extra: the file is read as data, the package itself is never imported),
and otherwise the built-in table in `catalogue.yaml`, which covers the e2e paper's Apollo
releases `gpt2-small-res_{sce,scefr,scl,sle,slefr,sll}-ajt`. The files are then fetched by the
`hf:` source.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import yaml

from ..catalogue import SaelensSAE, catalogue
from ..errors import SourceError
from ..types import DownloadProgress
from ..uri import SourceRef
from . import hf
from .base import Resolved


def resolve(ref: SourceRef, progress: DownloadProgress | None = None) -> Resolved:
    release, sae_id = ref.parts
    sae = lookup(release, sae_id)
    resolved = hf.resolve(SourceRef("hf", (sae.repo_id, sae.path, ""), ref.position), progress)
    resolved.meta.update(saelens_release=release, saelens_id=sae_id)
    if sae.neuronpedia_id:
        resolved.meta["neuronpedia_id"] = sae.neuronpedia_id
    return resolved


def lookup(release: str, sae_id: str) -> SaelensSAE:
    """Where RELEASE/SAE_ID lives; SourceError listing the known names when it is unknown."""
    installed = _installed_directory()
    for table in (installed or {}, _builtin()):
        if release in table:
            saes = table[release]
            if sae_id in saes:
                return saes[sae_id]
            ids = ", ".join(sorted(saes)[:12]) + (" ..." if len(saes) > 12 else "")
            raise SourceError(
                f"saelens:{release}/{sae_id}: release {release} has no SAE {sae_id!r} "
                f"(its ids: {ids})"
            )
    known = ", ".join(sorted(_builtin()))
    if installed is None:
        hint = "install sae-lens for its full list"
    else:
        hint = f"or one of the {len(installed)} releases of the installed sae_lens"
    raise SourceError(
        f"saelens:{release}/{sae_id}: unknown SAELens release; known: {known} ({hint})"
    )


def _builtin() -> dict[str, dict[str, SaelensSAE]]:
    table: dict[str, dict[str, SaelensSAE]] = {}
    for (release, sae_id), sae in catalogue().saelens.items():
        table.setdefault(release, {})[sae_id] = sae
    return table


def pretrained_yaml_path() -> Path | None:
    """SAELens's `pretrained_saes.yaml`, found without importing sae_lens (which loads torch,
    transformer_lens, ...); None when the package is not installed."""
    try:
        spec = importlib.util.find_spec("sae_lens")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "pretrained_saes.yaml"
        if path.is_file():
            return path
    return None


def _installed_directory() -> dict[str, dict[str, SaelensSAE]] | None:
    path = pretrained_yaml_path()
    if path is None:
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise SourceError(f"{path}: cannot read SAELens's pretrained directory ({exc})") from None
    if not isinstance(data, dict):
        raise SourceError(f"{path}: SAELens's pretrained directory is not a mapping of releases")
    return {str(name): _release(name, rel) for name, rel in data.items() if isinstance(rel, dict)}


def _release(name: str, rel: dict[str, Any]) -> dict[str, SaelensSAE]:
    out = {}
    for sae in rel.get("saes") or []:
        if not isinstance(sae, dict) or "id" not in sae or "path" not in sae:
            continue
        out[str(sae["id"])] = SaelensSAE(
            release=str(name),
            sae_id=str(sae["id"]),
            repo_id=str(rel.get("repo_id", "")),
            path=str(sae["path"]).strip("/"),
            neuronpedia_id=sae.get("neuronpedia"),
        )
    return out
