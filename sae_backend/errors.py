"""User-facing errors: one clear sentence each, never a traceback for expected bad input.

Every expected mistake (a bad URI, a broken file, a shape that does not fit, a missing key)
raises a subclass of `SAEError` whose message is a single line naming the thing at fault and
what was expected. The CLI prints `error: <message>` and exits 2; the app shows `st.error`.
"""

from __future__ import annotations


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
