"""Folder layout of SAE checkpoints: where the weights and configs of one SAE are.

Safetensors formats keep one SAE per folder (a weights file plus a config) and a run keeps one
such folder per hook (or per seed); these helpers find the folder a user meant, list the
choices when there are several, and read layers from hook names and paths.
"""

from __future__ import annotations

import os
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


# A folder of several SAEs is searched this deep: run/hook/seedN (sparsify with init_seeds),
# or release/hook; and at most this many entries, so pointing at a big folder stays cheap.
_SEARCH_DEPTH = 3
_SEARCH_ENTRIES = 5000
_SEED = re.compile(r"^seed\d+$")


def sae_folders(folder: Path, marker: str) -> list[str]:
    """The subfolders of `folder` (relative, '/'-separated, sorted) that hold `marker`, up to
    `_SEARCH_DEPTH` levels down: one per SAE of a run. A folder that holds `marker` is not
    searched further; hidden folders (downloads in progress) are skipped."""
    found: list[str] = []
    seen = 0
    for root, dirs, files in os.walk(folder):
        rel = Path(root).relative_to(folder)
        seen += len(dirs) + len(files)
        if rel.parts and marker in files:
            found.append(rel.as_posix())
            dirs.clear()
            continue
        dirs[:] = [] if len(rel.parts) >= _SEARCH_DEPTH else [d for d in dirs if d[:1] != "."]
        if seen > _SEARCH_ENTRIES:
            break
    return sorted(found)


def holds(folder: Path, marker: str) -> bool:
    """Whether `folder` holds `marker`, itself or in subfolders (one SAE per subfolder)."""
    return (folder / marker).is_file() or bool(sae_folders(folder, marker))


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

    Returns (folder holding `marker`, chosen subfolder relative to `path`, or None).
    `position` names a subfolder with dots and hyphens treated alike (`layers.6.mlp/seed1`);
    a position that is a folder of several SAEs (`layers.6.mlp` with seed0, seed1) picks its
    only one or lists them. Without a position, several choices raise listing them and how to
    pick one (SRC#POSITION).
    """
    if (path / marker).is_file():
        return path, None
    subs = sae_folders(path, marker)
    if not subs:
        raise fail(path, f"no {marker} here or in any subfolder")
    if position is not None:
        norm = position_key(position).strip("/")
        exact = [s for s in subs if position_key(s) == norm]
        under = exact or [s for s in subs if position_key(s).startswith(norm + "/")]
        if len(under) == 1:
            return path / under[0], under[0]
        if not under:
            raise fail(path, f"no SAE for position {position!r}; available: {list_names(subs, 20)}")
        subs = under
    if len(subs) == 1:
        return path / subs[0], subs[0]
    raise fail(
        path,
        f"holds {len(subs)} SAEs ({list_names(subs, 20)}); pick one with SRC#POSITION, "
        f"e.g. {path}#{subs[0]}",
    )


def hook_folder(weights_folder: Path) -> tuple[Path, int | None]:
    """(the folder named after the hook, the seed or None) for an SAE's weights folder: a run
    trained with several seeds keeps each in hook/seedN (sparsify's `init_seeds`)."""
    if _SEED.match(weights_folder.name):
        return weights_folder.parent, int(weights_folder.name[4:])
    return weights_folder, None


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
