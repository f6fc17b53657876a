"""Text the pages show, built without Streamlit (pure functions, unit-tested directly).

Demo contexts mark the firing token as `[[token]]`; Markdown and plain renderings of them live
here, as does the wording of size limits, where rounding once made "2.3 MB" read as "2 MB".
"""

from __future__ import annotations

import html
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
