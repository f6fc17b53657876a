"""User-facing errors: one clear sentence each, never a traceback for expected bad input.

Every expected mistake (a bad URI, a broken file, a shape that does not fit, a missing key)
raises a subclass of `SAEError` whose message is a single line naming the thing at fault and
what was expected. The CLI prints `error: <message>` and exits 2; the app shows `st.error`.
"""

from __future__ import annotations

from collections.abc import Iterable


class SAEError(Exception):
    """Base class for expected, user-facing errors (one-line message)."""


class URIError(SAEError):
    """A source string that does not parse, or names an unknown scheme."""


class SourceError(SAEError):
    """A source that cannot be fetched or resolved to local files."""


class FormatError(SAEError):
    """A file that is not a readable SAE: unknown layout, truncated, wrong shapes, NaN/Inf."""


class InputError(SAEError):
    """Arguments that do not fit the data: mismatched d_model, k too large, index out of range."""


class ClusterError(SAEError):
    """A Ray cluster that cannot be reached or used (`precompute --ray`)."""


# --------------------------------------------------------------------------------------------
# One-line messages: every module builds its user-facing errors with these


_MAX_MESSAGE = 240


def one_line(text: object, limit: int = _MAX_MESSAGE) -> str:
    """Collapse whitespace to single spaces, escape other control characters (a NUL or a
    terminal escape in a hostile file name), and cut to `limit` characters."""
    s = " ".join(str(text).split())
    s = "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def fail(path: object, message: str) -> FormatError:
    """A FormatError whose one-line message starts with the file at fault."""
    return FormatError(f"{one_line(path, 300)}: {one_line(message, 400)}")


def list_names(names: Iterable[object], limit: int = 12) -> str:
    """'a, b, c' (at most `limit` names, then '... (N more)'), or '(none)'."""
    shown = [str(n) for n in names]
    if not shown:
        return "(none)"
    head = ", ".join(shown[:limit])
    return head if len(shown) <= limit else f"{head}, ... ({len(shown) - limit} more)"
