"""What a one-to-one matching means, as the pages lay it out: pure (no Streamlit).

The numbers are the backend's (`sae_backend.geometry.shared`: `MatchedPairs`, `SharedSummary`,
`Orphans`, `feature_status`), copied into tables and per-point arrays, never recomputed, so
tests compare what a page shows with the backend called directly (tests/test_matching_tables.py).
The geometry is imported for type checking only: importing it loads torch, which a page's
first paint should not wait for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from dashboard.text import STATUS_LABELS

if TYPE_CHECKING:
    from sae_backend.geometry.matching import Matching
    from sae_backend.geometry.shared import MatchedPairs, Orphans, SharedSummary

# The orphans table's columns that name a feature, and whose: this side's or the other's.
FEATURE_COLUMNS: dict[str, str] = {
    "feature": "this",
    "partner": "other",
    "max-cos partner": "other",
    "taken by": "this",
}


def summary_row(label: str, m: Matching, s: SharedSummary) -> dict[str, object]:
    """One comparison's matching in a few numbers: the table row on the Similarity page (the
    directions it matched by are the page's, said once above the table; the method is in the
    certificate's line below it)."""
    return {
        "comparison": label,
        "pairs": s.n_pairs,
        "mean matched cos": s.mean_matched_cos,
        "shared (dec & enc)": s.fraction_shared,
        "shared (decoder)": s.fraction_shared_decoder,
        "orphans of A": s.n_orphans_a,
        "orphans of B": s.n_orphans_b,
        "certified": "✓" if m.certified else "✗",
        "objective": m.total,
        "bound": m.bound,
        "rounds": m.rounds,
    }


def _pair_position(pairs: MatchedPairs, side: str, features: np.ndarray) -> np.ndarray:
    """[len(features)] position of each feature of `side` among the matched pairs, -1 if none."""
    mine = pairs.a if side == "a" else pairs.b
    n = int(max(mine.max(initial=-1), features.max(initial=-1))) + 1
    pos = np.full(n, -1, np.int64)
    pos[mine] = np.arange(mine.size)
    return pos[features]


def _nullable(values: np.ndarray) -> pd.Series:
    """Feature indices with -1 (none) as missing, so a table shows an empty cell."""
    s = pd.Series(values, dtype="Int64")
    return s.mask(s < 0)


def orphans_table(o: Orphans, pairs: MatchedPairs) -> pd.DataFrame:
    """One row per orphan of one side: the feature, its status, its partner (if any) with the
    pair's decoder and encoder cosines, its max-cos partner and that partner's cosine (in the
    matching's directions), and the feature of this side the matching gave it to."""
    pos = _pair_position(pairs, o.side, o.feature)
    matched = pos >= 0
    dec = np.where(matched, pairs.decoder_cos[np.maximum(pos, 0)], np.nan)
    enc = np.where(matched, pairs.encoder_cos[np.maximum(pos, 0)], np.nan)
    return pd.DataFrame(
        {
            "feature": o.feature,
            "status": [STATUS_LABELS[str(s)].removeprefix("orphan: ") for s in o.status],
            "partner": _nullable(o.partner),
            "decoder cos": dec,
            "encoder cos": enc,
            "max-cos partner": o.nearest,
            "max cos": o.nearest_cos,
            "taken by": _nullable(o.taken_by),
        }
    )


def cell_feature(table: pd.DataFrame, row: int, column: str) -> tuple[str, int] | None:
    """("this" or "other", feature) that a click on a cell of `orphans_table` opens: the
    feature of a column that names one, else the row's own feature; None for an empty cell."""
    if not 0 <= row < len(table):
        return None
    col = column if column in FEATURE_COLUMNS else "feature"
    value = table[col].iloc[row]
    if pd.isna(value):
        return None
    return FEATURE_COLUMNS[col], int(value)


@dataclass(frozen=True)
class FeatureMatch:
    """What the matching made of one feature (the Neighbours page's line per dictionary).

    status: "shared", "below", "unmatched" or "dead" (`geometry.shared.Status`).
    partner, decoder_cos, encoder_cos: its matched feature and the pair's cosines (None: none).
    nearest, nearest_cos, taken_by: for an orphan, its max-cos partner, that cosine, and the
    feature of its own side the matching gave that partner to (None: nobody).
    """

    status: str
    partner: int | None = None
    decoder_cos: float | None = None
    encoder_cos: float | None = None
    nearest: int | None = None
    nearest_cos: float | None = None
    taken_by: int | None = None


def feature_match(pairs: MatchedPairs, o: Orphans, feature: int, alive: bool) -> FeatureMatch:
    """The FeatureMatch of `feature` of side `o.side`, from the matching's pairs and orphans."""
    if not alive:
        return FeatureMatch("dead")
    pos = int(_pair_position(pairs, o.side, np.array([feature]))[0])
    partner = None
    dec = enc = None
    if pos >= 0:
        partner = int((pairs.b if o.side == "a" else pairs.a)[pos])
        dec, enc = float(pairs.decoder_cos[pos]), float(pairs.encoder_cos[pos])
    hit = np.flatnonzero(o.feature == feature)
    if hit.size == 0:
        return FeatureMatch("shared", partner, dec, enc)
    i = int(hit[0])
    taken = int(o.taken_by[i])
    return FeatureMatch(
        str(o.status[i]), partner, dec, enc, int(o.nearest[i]), float(o.nearest_cos[i]),
        None if taken < 0 else taken,
    )  # fmt: skip


def step_orphan(orphan_features: np.ndarray, current: int, direction: int) -> int | None:
    """The next (+1) or previous (-1) orphan after `current`, wrapping around; None if none."""
    if orphan_features.size == 0:
        return None
    if direction > 0:
        later = orphan_features[orphan_features > current]
        return int(later[0] if later.size else orphan_features[0])
    earlier = orphan_features[orphan_features < current]
    return int(earlier[-1] if earlier.size else orphan_features[-1])


def point_status(
    dict_index: np.ndarray, feature: np.ndarray, status: Sequence[np.ndarray | None]
) -> np.ndarray:
    """[N] status of every point of an embedding: `status[k]` is `feature_status(...)` of the
    k-th embedded dictionary ([its n_features] str), or None where it has none ("" then)."""
    out = np.full(len(feature), "", dtype=object)
    for k, s in enumerate(status):
        sel = dict_index == k
        if s is not None:
            out[sel] = s[feature[sel]]
    return out.astype(str)
