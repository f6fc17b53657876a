"""Text the pages show, built without Streamlit (pure functions, unit-tested directly).

Demo contexts mark the firing token as `[[token]]`; Markdown and plain renderings of them live
here, as does the wording of size limits, where rounding once made "2.3 MB" read as "2 MB".
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Mapping, Sequence

from sae_backend import settings
from sae_backend.demo import demo_manifest

TOY_NOTE = (
    "The bundled demo is a **toy** (SAE_DEMO=toy): random directions with planted overlaps "
    "(toy-b shares half of toy-a's directions, toy-a-seed2 is a perturbed copy), not SAEs "
    "trained on a model."
)
_MARK = re.compile(r"\[\[(.*?)\]\]", re.S)  # the firing token in a demo context window
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>$~])")
Contexts = Mapping[int, Sequence[tuple[float, str]]]  # feature -> [(activation, window)]


def demo_note() -> str:
    """One caption saying what the bundled demo is (the real one or the toy)."""
    if settings.DEMO.get() == "toy":
        return TOY_NOTE
    m = demo_manifest()
    cs = m["cross_seed"]
    what = "; ".join(
        f"{n}: {e['spec']['ratio']}x wide, L1 {e['spec']['l1']}, seed {e['spec']['seed']}"
        for n, e in m["saes"].items()
    )
    return (
        f"The bundled demo: small SAEs trained here (`scripts/build_demo.py`) on "
        f"{m['model'].split(' (')[0]}'s residual stream at `{m['hook']}` ({what}). "
        f"Two seeds' decoder MMCS {cs['mmcs']:.2f} (random directions: {cs['random_mmcs']:.2f})."
    )


def context_markdown(text: str) -> str:
    """A context window as Markdown: text escaped, the firing token in bold.

    Tokens often start with a space (" which"); Markdown bold must not, so the token's outer
    whitespace goes outside the ** markers."""

    def bold(m: re.Match[str]) -> str:
        token = m.group(1)
        core = token.strip()
        if not core:  # a whitespace token: show a visible stand-in
            return "\x00" + ("⏎" if "\n" in token else "␣") + "\x01"
        lead, trail = token[: len(token) - len(token.lstrip())], token[len(token.rstrip()) :]
        return f"{lead}\x00{core}\x01{trail}"

    escaped = _MARKDOWN_SPECIAL.sub(r"\\\1", _MARK.sub(bold, text))
    return escaped.replace("\x00", "**").replace("\x01", "**")


def context_plain(text: str) -> str:
    """A context window as plain text, the firing token between « »."""
    return _MARK.sub("«\\1»", text)


def context_hover(contexts_of: Contexts, feature: int) -> str:
    """The strongest context of a feature as HTML-escaped hover text ('' if none)."""
    ctx = contexts_of.get(int(feature))
    return html.escape(context_plain(ctx[0][1])) if ctx else ""


def too_big(size_bytes: int, limit_mb: int) -> str:
    """The refusal of an upload over the limit, with the size shown precisely enough to be
    visibly larger than the limit ("2.3 MB; at most 2 MB", never "2 MB; at most 2 MB").

    The fewest decimals (up to three) that do it; a size that still rounds to the limit at three
    decimals (under half a kilobyte over it) is given in bytes."""
    mb = size_bytes / 2**20
    for decimals in range(4):
        shown = f"{mb:.{decimals}f}"
        if float(shown) > limit_mb:
            return f"the upload is {shown} MB; at most {limit_mb} MB"
    return f"the upload is {size_bytes:,} bytes; at most {limit_mb * 2**20:,} bytes ({limit_mb} MB)"


# --- What a one-to-one matching means (issue 12) ----------------------------------------------
# Status names are `sae_backend.geometry.shared.Status`; "below" and "unmatched" are orphans.
STATUS_LABELS: dict[str, str] = {
    "shared": "shared",
    "below": "orphan: matched below τ",
    "unmatched": "orphan: unmatched",
    "dead": "dead (not compared)",
}
CRITERION_LABELS: dict[str, str] = {
    "both": "decoder and encoder ≥ τ",
    "decoder": "decoder ≥ τ",
}
SHARED_NOTE = (
    "A matched pair is **shared** when its cosine reaches τ: both its decoder and its encoder "
    "cosine (Paulo & Belrose's criterion), or the decoder cosine only. **Orphans**: alive "
    "features whose partner is not shared (matched below τ) or that have none (unmatched: the "
    "larger side's leftovers). Fractions are over matched pairs."
)


def certificate_markdown(
    method: str, certified: bool, objective: float, bound: float, tolerance: float, rounds: int
) -> str:
    """One line saying whether a matching is proved optimal, with its objective and bound
    (the fields of `sae_backend.geometry.matching.Matching`)."""
    if method == "hungarian":
        return (
            f"✓ **certified optimal**: exact dense assignment (Hungarian); objective (sum of "
            f"matched cosines) {objective:.6f} = bound {bound:.6f}."
        )
    if certified:
        return (
            f"✓ **certified optimal** over all pairs: objective {objective:.6f}, bound "
            f"{bound:.6f} (within the tolerance {tolerance:.2g}), after {rounds} round(s)."
        )
    if math.isnan(bound):
        return f"✗ **not certified** (not checked): objective {objective:.6f}."
    return (
        f"✗ **not certified**: objective {objective:.6f}, bound {bound:.6f}: at most "
        f"{bound - objective:.4g} total cosine below the optimum."
    )


def feature_match_markdown(
    this: str, other: str, status: str, tau: float, criterion: str, *,
    partner: int | None = None, decoder_cos: float | None = None,
    encoder_cos: float | None = None, nearest: int | None = None,
    nearest_cos: float | None = None, taken_by: int | None = None,
) -> str:  # fmt: skip
    """What the one-to-one matching of `this` with `other` made of one feature of `this`."""
    rule = f"τ = {tau:g}, shared when {CRITERION_LABELS.get(criterion, criterion)}"
    if status == "dead":
        return f"Dead in {this}: it takes no part in the matching with {other}."
    if partner is None:
        head = f"**{STATUS_LABELS['unmatched']}** vs {other} ({rule}): no partner left for it."
    else:
        cos = f"decoder cos {decoder_cos:.3f}"
        if encoder_cos is not None and not math.isnan(encoder_cos):
            cos += f", encoder cos {encoder_cos:.3f}"
        head = f"**{STATUS_LABELS[status]}** vs {other} ({rule}): partner #{partner} ({cos})."
    if status == "shared" or nearest is None:
        return head
    if nearest == partner:
        return head + f" Its max-cos partner is that same #{nearest} ({nearest_cos:.3f})."
    who = "nobody" if taken_by is None else f"{this} #{taken_by}"
    return head + f" Its max-cos partner #{nearest} ({nearest_cos:.3f}) went to {who}."
