"""Neuronpedia: feature links, and feature descriptions from an explanation export.

A dictionary whose Neuronpedia id is known ("modelId/sourceId", e.g. "gpt2-small/6-res_sce-ajt";
SAELens's `neuronpedia` field) links each feature to its page. Neuronpedia's exports hold the
automatic explanations as gzipped JSON-lines batches (`explanations/batch-N.jsonl.gz`), one row
per explanation with `modelId`, `layer` (the source id), `index` (a string), `description` and
`explanationModelName`; a feature can have several rows. `load_explanations` turns a local
copy into {feature index: [descriptions]} so descriptions can sit beside feature indices.
"""

from __future__ import annotations

import gzip
import json
import operator
import re
from collections.abc import Iterator
from pathlib import Path
from typing import SupportsIndex
from urllib.parse import quote

from .errors import FormatError, InputError, SourceError

BASE_URL = "https://www.neuronpedia.org"
_BATCH = re.compile(r"^batch-(\d+)\.jsonl(\.gz)?$")


def split_id(neuronpedia_id: str) -> tuple[str, str]:
    """'modelId/sourceId' -> (modelId, sourceId); InputError for anything else."""
    parts = neuronpedia_id.split("/") if isinstance(neuronpedia_id, str) else []
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise InputError(
            f"Neuronpedia id {neuronpedia_id!r}: expected 'modelId/sourceId', "
            "e.g. 'gpt2-small/6-res_sce-ajt'"
        )
    return parts[0], parts[1]


def feature_url(neuronpedia_id: str, index: int) -> str:
    """The Neuronpedia page of feature `index`: https://www.neuronpedia.org/{model}/{source}/{index}."""
    model, source = split_id(neuronpedia_id)
    try:
        index = _as_index(index)
    except ValueError:
        raise InputError(f"feature index {index!r}: expected a non-negative integer") from None
    return f"{BASE_URL}/{quote(model, safe='')}/{quote(source, safe='')}/{index}"


def load_explanations(path: str | Path, neuronpedia_id: str | None = None) -> dict[int, list[str]]:
    """Descriptions per feature index from a Neuronpedia explanation export.

    path: one `.jsonl.gz` (or `.jsonl`) file, or a folder of `batch-N.jsonl.gz` files (directly
    or in its `explanations/` subfolder), read in batch order. With `neuronpedia_id`, only rows
    of that source are kept; without it, rows of several sources are an error (indices of
    different dictionaries must not mix). Duplicate descriptions of a feature are kept once,
    in file order. Malformed input raises FormatError naming the file and line.
    """
    want = split_id(neuronpedia_id) if neuronpedia_id is not None else None
    out: dict[int, list[str]] = {}
    sources: set[tuple[str, str]] = set()
    for file in _export_files(Path(path)):
        for lineno, row in _rows(file):
            where = f"{file}:{lineno}"
            try:
                source = (str(row["modelId"]), str(row["layer"]))
                index = _as_index(row["index"])
                description = row["description"]
            except KeyError as exc:
                raise FormatError(
                    f"{where}: explanation row has no {exc.args[0]!r} field"
                ) from None
            except ValueError:
                raise FormatError(
                    f"{where}: explanation index {row['index']!r} is not a non-negative integer"
                ) from None
            if not isinstance(description, str):
                raise FormatError(f"{where}: explanation description is not a string")
            if want is not None and source != want:
                continue
            sources.add(source)
            descriptions = out.setdefault(index, [])
            if description not in descriptions:
                descriptions.append(description)
    if want is None and len(sources) > 1:
        names = ", ".join("/".join(s) for s in sorted(sources))
        raise FormatError(
            f"{path}: explanations of several sources ({names}); pass the neuronpedia_id to keep one"
        )
    return out


def _export_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise SourceError(f"{path}: no such explanation file or folder")
    for folder in (path, path / "explanations"):
        batches = [
            (int(m.group(1)), p) for p in folder.glob("batch-*") if (m := _BATCH.match(p.name))
        ]
        if batches:
            return [p for _n, p in sorted(batches)]
    raise SourceError(f"{path}: no batch-N.jsonl.gz explanation files in this folder")


def _rows(file: Path) -> Iterator[tuple[int, dict]]:
    """(line number, JSON object) for each non-empty line; gzip detected by its magic bytes."""
    try:
        with open(file, "rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
        opener = gzip.open if gzipped else open
        with opener(file, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    raise FormatError(f"{file}:{lineno}: not a JSON line") from None
                if not isinstance(row, dict):
                    raise FormatError(f"{file}:{lineno}: expected a JSON object per line")
                yield lineno, row
    except (OSError, EOFError, UnicodeDecodeError) as exc:  # gzip.BadGzipFile is an OSError
        raise FormatError(
            f"{file}: unreadable explanation export ({type(exc).__name__}: {exc})"
        ) from None


def _as_index(value: object) -> int:
    """Feature index from an integer (numpy ones too) or a decimal string; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, str):
        if not value.strip().isdecimal():
            raise ValueError(value)
        return int(value.strip())
    if not isinstance(value, SupportsIndex):
        raise ValueError(value)
    index = operator.index(value)
    if index < 0:
        raise ValueError(value)
    return index
