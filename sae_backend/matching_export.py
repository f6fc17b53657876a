"""A matching as a versioned, self-describing export: JSON (provenance + pairs) and CSV (pairs).

What a reader needs to trust and reproduce a matching (neuronpedia #230 asks for exactly
this): the sources as given, content fingerprints, directions, method, tau, whether it was
certified optimal (with the bound and tolerance), the package version and when it was made,
then one record per matched pair. Functions return text, so the CLI writes it atomically and
the pages offer it as a download without touching the disk.
"""

from __future__ import annotations

import csv
import io
import json
import math
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

from .dictionary import Dictionary
from .geometry.matching import Matching
from .geometry.shared import Criterion, MatchedPairs, shared_summary

FORMAT = "sae-geometry/matching"
FORMAT_VERSION = 1
CSV_COLUMNS = ("a", "b", "decoder_cos", "encoder_cos", "shared")


def package_version() -> str:
    """The installed sae-backend version, or the source tree's (not installed) one."""
    try:
        return metadata.version("sae-backend")
    except metadata.PackageNotFoundError:
        return "0.1.0+source"


def matching_records(
    pairs: MatchedPairs, tau: float, criterion: Criterion = "both"
) -> list[dict[str, Any]]:
    """One dict per matched pair: a, b, decoder_cos, encoder_cos (None without encoders),
    shared (by `criterion` at `tau`; "both" falls back to decoder-only without encoders)."""
    crit: Criterion = criterion if pairs.has_encoder else "decoder"
    shared = pairs.shared(tau, crit)
    return [
        {
            "a": int(pairs.a[i]),
            "b": int(pairs.b[i]),
            "decoder_cos": float(pairs.decoder_cos[i]),
            "encoder_cos": _num(pairs.encoder_cos[i]),
            "shared": bool(shared[i]),
        }
        for i in range(pairs.a.size)
    ]


def matching_document(
    a: Dictionary,
    b: Dictionary,
    m: Matching,
    pairs: MatchedPairs,
    *,
    tau: float,
    criterion: Criterion = "both",
    sources: tuple[str, str] | None = None,
    created: datetime | None = None,
) -> dict[str, Any]:
    """The whole export as a JSON-able dict. Top-level keys: certified, objective (sum of
    matched cosines), method, sources, pairs, and the provenance around them."""
    summary = shared_summary(pairs, tau, criterion)
    when = (created or datetime.now(UTC)).isoformat(timespec="seconds")
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "certified": bool(m.certified),
        "objective": float(m.total),
        "method": m.method,
        "sources": {
            "a": sources[0] if sources else a.meta.source,
            "b": sources[1] if sources else b.meta.source,
        },
        "fingerprints": {"a": a.fingerprint, "b": b.fingerprint},
        "directions": pairs.directions,
        "tau": tau,
        "criterion": summary.criterion,
        "bound": _num(m.bound),
        "tolerance": float(m.tolerance),
        "rounds": int(m.rounds),
        "n_candidates": int(m.n_candidates),
        "n_a": int(pairs.n_a),
        "n_b": int(pairs.n_b),
        "n_matched": int(m.n_matched),
        "mean_matched_cos": _num(summary.mean_matched_cos),
        "fraction_shared": _num(summary.fraction_shared),
        "fraction_shared_decoder": _num(summary.fraction_shared_decoder),
        "package": {"name": "sae-backend", "version": package_version()},
        "created": when,
        "pairs": matching_records(pairs, tau, criterion),
    }


def to_json(document: dict[str, Any]) -> str:
    """Strict JSON (no NaN: missing values are null), one pair per line for diffs."""
    head = {k: v for k, v in document.items() if k != "pairs"}
    text = json.dumps(head, indent=2, allow_nan=False)
    pairs = ",\n    ".join(
        json.dumps(p, allow_nan=False, separators=(", ", ": ")) for p in document["pairs"]
    )
    body = f"[\n    {pairs}\n  ]" if pairs else "[]"
    return text[:-2] + f',\n  "pairs": {body}\n}}\n'


def to_csv(records: list[dict[str, Any]]) -> str:
    """The pairs as CSV: a,b,decoder_cos,encoder_cos,shared (empty encoder_cos when absent)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_COLUMNS)
    for r in records:
        enc = r["encoder_cos"]
        w.writerow(
            [
                r["a"],
                r["b"],
                repr(r["decoder_cos"]),
                "" if enc is None else repr(enc),
                "true" if r["shared"] else "false",
            ]
        )
    return buf.getvalue()


def _num(x: float) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x
