"""The matching's controls and downloads, shared by the Similarity, Neighbours and UMAP pages.

τ and what "shared" requires are one choice per session: set on one page, the others open with
it (each page's own widget starts from the session's value and writes it back). Exports name
their sources as a visitor may see them (`shown_uri`; the bundled demo by its SAE's name).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from dashboard import session
from dashboard.feedback import is_demo, shown_uri
from dashboard.text import CRITERION_LABELS
from sae_backend.demo import demo_sources

if TYPE_CHECKING:
    from sae_backend import Dictionary
    from sae_backend.geometry.matching import Matching
    from sae_backend.geometry.shared import Criterion, MatchedPairs

DEFAULT_TAU = 0.7  # = sae_backend.geometry.shared.DEFAULT_TAU (tests/test_matching_ui checks)
_TAU, _CRITERION = "matching_tau", "matching_criterion"  # the session's values, not widgets'


def tau_control(where: DeltaGenerator, key: str) -> float:
    """A τ input (widget `key`, one per page) that starts from the session's τ."""
    tau = where.number_input(
        "τ (shared at)",
        min_value=0.0,
        max_value=1.0,
        value=float(st.session_state.get(_TAU, DEFAULT_TAU)),
        step=0.05,
        format="%.2f",
        key=key,
        help="A matched pair is shared when its cosine reaches τ (Paulo & Belrose: 0.7).",
    )
    st.session_state[_TAU] = float(tau)
    return float(tau)


def criterion_control(where: DeltaGenerator, key: str) -> Criterion:
    """'Shared when': decoder and encoder cosine ≥ τ (the default), or the decoder's alone."""
    options = list(CRITERION_LABELS)
    current = st.session_state.get(_CRITERION, "both")
    criterion = where.radio(
        "Shared when",
        options,
        index=options.index(current) if current in options else 0,
        format_func=CRITERION_LABELS.__getitem__,
        horizontal=True,
        key=key,
        help="Paulo & Belrose count a pair as shared when both cosines reach τ; without "
        "encoders the decoder's alone decides.",
    )
    st.session_state[_CRITERION] = criterion
    return cast("Criterion", criterion)


def export_source(name: str) -> str:
    """A session dictionary's source as the export records it: what a visitor may see (no
    server paths), the bundled demo by its SAE's name."""
    uri = session.entries()[name].uri
    if is_demo(uri):
        demo_name = next((n for n, u in demo_sources().items() if u == uri), name)
        return f"bundled demo: {demo_name}"
    return session.share_query(name).get("src") or shown_uri(uri)


def downloads(
    where: DeltaGenerator,
    names: tuple[str, str],
    a: Dictionary,
    b: Dictionary,
    m: Matching,
    pairs: MatchedPairs,
    tau: float,
    criterion: Criterion,
    key: str,
) -> None:
    """'Matching (JSON)' and 'Matching (CSV)' buttons; the texts are built only when clicked
    (a callable: at 46,080 pairs the JSON is megabytes)."""
    from sae_backend.matching_export import matching_document, matching_records, to_csv, to_json

    sources = (export_source(names[0]), export_source(names[1]))

    def as_json() -> str:
        doc = matching_document(a, b, m, pairs, tau=tau, criterion=criterion, sources=sources)
        return to_json(doc)

    def as_csv() -> str:
        return to_csv(matching_records(pairs, tau, criterion))

    stem = f"matching_{names[0]}_{names[1]}_{pairs.directions}"
    c1, c2, _ = where.columns([1, 1, 3])
    c1.download_button(
        "Matching (JSON)", as_json, f"{stem}.json", "application/json", key=f"{key}_json",
        help="Every matched pair with provenance: sources, fingerprints, certified, objective, "
        "bound, τ, package version.",
    )  # fmt: skip
    c2.download_button(
        "Matching (CSV)", as_csv, f"{stem}.csv", "text/csv", key=f"{key}_csv",
        help="One row per matched pair: a,b,decoder_cos,encoder_cos,shared.",
    )  # fmt: skip
