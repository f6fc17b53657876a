"""Folder layout of SAE checkpoints: where the weights and configs of one SAE are.

Safetensors formats keep one SAE per folder (a weights file plus a config) and a run keeps one
such folder per hook (or per seed); these helpers find the folder a user meant, list the
choices when there are several, and read layers from hook names and paths.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from ..errors import fail, list_names
from ._safe_io import safetensors_keys

_LAYER = re.compile(r"(?:^|[^a-z])(?:(?:blocks?|layers?)[._-]?|h\.)(\d+)(?![0-9])", re.I)


def layer_from(text: str | None) -> int | None:
    """Layer index from a hook or path: blocks.6.hook_resid_pre, layers.6, layer_6, h.6 -> 6.

    In a path the last match wins (the part nearest the file is the most specific).
    """
    if not text:
        return None
    found = _LAYER.findall(str(text))
    return int(found[-1]) if found else None


def holds(folder: Path, marker: str) -> bool:
    """Whether `folder` holds `marker`, itself or in a subfolder (one SAE per subfolder)."""
    return (folder / marker).is_file() or any((p / marker).is_file() for p in folder.iterdir())


def detect_weights(path: Path, marker: str, keys: set[str]) -> bool:
    """A folder holding `marker` (or subfolders that do), a file named `marker`, or a
    .safetensors file whose header has all of `keys`: the layout of safetensors formats."""
    if path.is_dir():
        return holds(path, marker)
    if path.name == marker:
        return True
    return path.suffix == ".safetensors" and keys <= (safetensors_keys(path) or set())


def weights_file(path: Path, marker: str, position: str | None) -> tuple[Path, Path, str | None]:
    """(folder, weights file, chosen subfolder or None) for a folder or a file named directly."""
    if path.is_dir():
        folder, chosen = pick_subfolder(path, marker, position)
        return folder, folder / marker, chosen
    return path.parent, path, None


def pick_subfolder(path: Path, marker: str, position: str | None) -> tuple[Path, str | None]:
    """Resolve a folder holding one SAE per subfolder (each with `marker`) to one of them.

    Returns (folder holding `marker`, chosen subfolder name or None). `position` matches a
    subfolder name with dots and hyphens treated alike; without it, several choices raise
    listing them and how to pick one (SRC#POSITION).
    """
    if (path / marker).is_file():
        return path, None
    subs = sorted(p.name for p in path.iterdir() if (p / marker).is_file())
    if not subs:
        raise fail(path, f"no {marker} here or in any subfolder")
    if position is not None:
        norm = position_key(position)
        for s in subs:
            if position_key(s) == norm:
                return path / s, s
        raise fail(path, f"no SAE for position {position!r}; available: {list_names(subs, 20)}")
    if len(subs) == 1:
        return path / subs[0], subs[0]
    raise fail(
        path,
        f"holds {len(subs)} SAEs ({list_names(subs, 20)}); pick one with SRC#POSITION, "
        f"e.g. {path}#{subs[0]}",
    )


def position_key(position: str) -> str:
    """Comparable form of a hook position: dots and hyphens are the same separator."""
    return position.strip().replace("-", ".")


def sibling_config(path: Path, names: Iterable[str], levels: int = 1) -> Path | None:
    """The first existing config file among `names` beside `path` or up to `levels` parents."""
    folder = path if path.is_dir() else path.parent
    for _ in range(levels + 1):
        for n in names:
            if (folder / n).is_file():
                return folder / n
        folder = folder.parent
    return None
