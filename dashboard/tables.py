"""The Families and Geometry pages' tables, as pandas DataFrames built from backend results.

Pure (no Streamlit): every number is copied from a backend object (`Families`, `Absorption`,
`Frame`, `Comparison`), never recomputed, so tests compare a table with the backend called
directly (tests/test_tables.py). Cells that name a feature come with a relative link to its
Neighbours page (`neighbours_url`), which a table shows as a link column.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlencode

import numpy as np
import pandas as pd

from sae_backend.geometry.absorption import Absorption
from sae_backend.geometry.compare import Comparison
from sae_backend.geometry.families import Chain, Families, Label
from sae_backend.geometry.frame import Frame

ARROW = " → "


def neighbours_url(name: str, feature: int) -> str:
    """A link to a feature's Neighbours page, relative to the current page (so it also works
    under a server's base path)."""
    return "Neighbours?" + urlencode({"dict": name, "feature": str(int(feature))})


def level_name(names: Sequence[str], level: int) -> str:
    """'narrow → wide' for level `level` (dictionary level to level + 1)."""
    return f"{names[level]}{ARROW}{names[level + 1]}"


def counts_table(fam: Families, names: Sequence[str]) -> pd.DataFrame:
    """One row per level: the label counts (`Families.counts()`), and alive features each side."""
    rows = [
        {
            "level": level_name(names, c.level),
            "narrower alive": c.n_narrow,
            "wider alive": c.n_wide,
            "vanished": c.vanished,
            "stable": c.stable,
            "split": c.split,
            "novel": c.novel,
            "edges": c.edges,
        }
        for c in fam.counts()
    ]
    return pd.DataFrame(rows)


def _joined(values: np.ndarray, fmt: str = "{}") -> str:
    return ", ".join(fmt.format(v) for v in values)


def label_table(
    fam: Families,
    names: Sequence[str],
    level: int,
    label: Label,
    nearest: Comparison | None = None,
) -> pd.DataFrame:
    """The features of one label at one level, with their links.

    split / stable / vanished: features of the narrower dictionary (children, cosines and
    coverage from the level's edges); novel: features of the wider one. nearest: for vanished,
    `compare(narrow, wide)`; for novel, `compare(wide, narrow)`: each feature's nearest
    feature on the other side and its cosine (below tau, or it would not have that label).
    Column `dictionary` names where `feature` lives; rows by feature, splits by most children.
    """
    lv = fam.levels[level]
    narrow, wide = names[level], names[level + 1]
    if label == "novel":
        feats = lv.child_index[lv.novel]
        table = pd.DataFrame({"dictionary": wide, "feature": feats})
        other = narrow
    else:
        keep = lv.labels == label
        feats = lv.parent_index[keep]
        table = pd.DataFrame({"dictionary": narrow, "feature": feats})
        other = wide
        if label != "vanished":
            kids = [lv.children_of(int(f)) for f in feats]
            table["children"] = [len(c) for c, _ in kids]
            table[f"children in {wide}"] = [_joined(c) for c, _ in kids]
            table["cosines"] = [_joined(v, "{:.3f}") for _, v in kids]
            table["coverage"] = lv.coverage[keep]
    if label in ("vanished", "novel") and nearest is not None:
        pos = np.searchsorted(nearest.a_index, feats)
        table[f"nearest in {other}"] = nearest.nearest[pos]
        table["its cosine"] = nearest.max_cos[pos]
    if label == "split":
        table = table.sort_values(["children", "feature"], ascending=[False, True], kind="stable")
    table["Neighbours"] = [neighbours_url(n, f) for n, f in zip(table["dictionary"],
                                                                table["feature"], strict=True)]  # fmt: skip
    return table.reset_index(drop=True)


def chain_table(fam: Families, chain: Chain, names: Sequence[str]) -> pd.DataFrame:
    """One row per member of a feature's family: its labels, parents and children (with
    cosines) inside the chain, the split coverage where it has children, and a link."""
    rows = []
    for i, f in chain.nodes:
        ups = [(e.parent, e.cosine) for e in chain.edges if e.level == i - 1 and e.child == f]
        downs = [(e.child, e.cosine) for e in chain.edges if e.level == i and e.parent == f]
        coverage = float("nan")
        if downs:
            lv = fam.levels[i]
            coverage = float(lv.coverage[np.searchsorted(lv.parent_index, f)])
        rows.append(
            {
                "dictionary": names[i],
                "feature": f,
                "labels": ", ".join(fam.labels_of(i, f)),
                "parents": ", ".join(f"{p} ({c:.3f})" for p, c in ups),
                "children": ", ".join(f"{c} ({v:.3f})" for c, v in downs),
                "coverage": coverage,
                "Neighbours": neighbours_url(names[i], f),
            }
        )
    return pd.DataFrame(rows)


def absorption_table(ab: Absorption, name: str) -> pd.DataFrame:
    """One row per (feature, partner): the feature's k partners in order, rows sorted by the
    feature's signature (most negative first, `Absorption.order()`), links to both.

    cos(enc, dec partner): cos(encoder feature, decoder partner), the signature for rank 1;
    cos(dec, dec partner): the two decoders; self cos / partner self cos: each one's
    encoder-decoder cosine."""
    order = ab.order()
    k = ab.k
    feature = np.repeat(ab.feature[order], k)
    partner = ab.partner[order].ravel()
    return pd.DataFrame(
        {
            "feature": feature,
            "rank": np.tile(np.arange(1, k + 1), len(order)),
            "partner": partner,
            "cos(enc, dec partner)": ab.enc_dec_cos[order].ravel(),
            "cos(dec, dec partner)": ab.dec_dec_cos[order].ravel(),
            "self cos": np.repeat(ab.self_cos[order], k),
            "partner self cos": ab.partner_self_cos[order].ravel(),
            "open feature": [neighbours_url(name, f) for f in feature],
            "open partner": [neighbours_url(name, p) for p in partner],
        }
    )


def frame_row(fr: Frame, name: str) -> dict[str, float | int | str]:
    """A dictionary's frame scalars as one row of the Geometry page's summary table."""
    return {
        "dictionary": name,
        "alive": fr.n_features,
        "d_model": fr.d_model,
        "coherence": fr.coherence,
        "Welch bound": fr.welch_bound,
        "frame potential": fr.frame_potential,
        "its lower bound": fr.frame_potential_bound,
        "effective rank": fr.effective_rank,
        "stable rank": fr.stable_rank,
        "capacity sum": fr.capacity_sum,
    }
