"""One URI scheme for every source, shared by the CLI and the app.

    /path/to/file-or-folder          a local path (also `file:/path`)
    wandb:ENTITY/PROJECT/RUN_ID      a W&B run (its final_config.yaml + latest samples_N.pt)
    hf:REPO_ID[:PATH_IN_REPO][@REV]  a Hugging Face repo, file or folder
    saelens:RELEASE/SAE_ID           an SAELens release entry
    ...#POSITION                     any of the above, picking one SAE from a file holding several

Parsing is pure (no I/O except checking whether a local path with '#' in it exists).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import URIError

_SCHEME = re.compile(r"^([a-z][a-z0-9+.-]*):(.*)$", re.S)
_NAME = re.compile(r"^(?!\.+$)[A-Za-z0-9_.-]{1,128}$")  # not "." or "..": names become folders


@dataclass(frozen=True)
class SourceRef:
    """A parsed source URI.

    scheme:   "local", "wandb", "hf" or "saelens".
    parts:    the scheme's fields, in order:
              local (path,), wandb (entity, project, run_id),
              hf (repo_id, path_in_repo or "", revision or ""), saelens (release, sae_id).
    position: the `#POSITION` suffix (hook position within a multi-SAE file), or None.
    """

    scheme: str
    parts: tuple[str, ...]
    position: str | None = None

    def __str__(self) -> str:
        if self.scheme == "local":
            body = self.parts[0]
        elif self.scheme == "hf":
            repo, path, rev = self.parts
            body = "hf:" + repo + (f":{path}" if path else "") + (f"@{rev}" if rev else "")
        else:
            body = f"{self.scheme}:" + "/".join(self.parts)
        return body + (f"#{self.position}" if self.position else "")

    @property
    def is_remote(self) -> bool:
        return self.scheme != "local"


def parse_uri(uri: str) -> SourceRef:
    """Parse a source string into a SourceRef; raises URIError with a one-line reason."""
    if not isinstance(uri, str) or not uri.strip():
        raise URIError("empty source: give a local path or a wandb:/hf:/saelens: URI")
    uri = uri.strip()
    body, position = uri, None
    if "#" in uri and not path_exists(uri):
        body, _, position = uri.rpartition("#")
        if not position:
            raise URIError(
                f"{quote_source(uri)}: nothing after '#': write SRC#POSITION, e.g. #blocks.6.hook_resid_pre"
            )
    m = _SCHEME.match(body)
    scheme = m.group(1) if m and len(m.group(1)) > 1 else None  # 'C:' is a drive, not a scheme
    if scheme is None or scheme == "file":
        path = body[len("file:") :] if scheme == "file" else body
        try:
            local = Path(path).expanduser()
        except RuntimeError:  # "~name" for a user that does not exist
            raise URIError(f"{quote_source(uri)}: no such home folder") from None
        return SourceRef("local", (str(local),), position)
    rest = body[len(scheme) + 1 :]
    parser = _PARSERS.get(scheme)
    if parser is None:
        raise URIError(
            f"unknown source scheme {scheme!r} in {quote_source(uri)}: use a local path, wandb:, hf: or saelens:"
        )
    return SourceRef(scheme, parser(rest, uri), position)


def _parse_wandb(rest: str, uri: str) -> tuple[str, ...]:
    parts = rest.strip("/").split("/")
    if len(parts) != 3 or not all(_NAME.match(p) for p in parts):
        raise URIError(
            f"{quote_source(uri)}: expected wandb:ENTITY/PROJECT/RUN_ID, e.g. wandb:sparsify/gpt2/tvj2owza"
        )
    return tuple(parts)


def _parse_hf(rest: str, uri: str) -> tuple[str, ...]:
    revision = ""
    if "@" in rest:
        rest, _, revision = rest.rpartition("@")
        if not revision:
            raise URIError(
                f"{quote_source(uri)}: nothing after '@': write hf:REPO_ID[:PATH]@REVISION"
            )
    repo, _, path = rest.partition(":")
    owner_name = repo.split("/")
    if len(owner_name) != 2 or not all(_NAME.match(p) for p in owner_name):
        raise URIError(
            f"{quote_source(uri)}: expected hf:OWNER/REPO[:PATH_IN_REPO][@REVISION], "
            "e.g. hf:apollo-research/e2e-saes-gpt2:e2e_similar_ce_layer_6.pt"
        )
    path = path.strip("/")
    if any(seg in ("", ".", "..") for seg in path.split("/")) and path:
        raise URIError(
            f"{quote_source(uri)}: the path in the repo must not contain empty, '.' or '..' parts"
        )
    return (repo, path, revision)


def _parse_saelens(rest: str, uri: str) -> tuple[str, ...]:
    release, _, sae_id = rest.partition("/")
    if not release or not sae_id or not _NAME.match(release):
        raise URIError(
            f"{quote_source(uri)}: expected saelens:RELEASE/SAE_ID, "
            "e.g. saelens:gpt2-small-res_sce-ajt/blocks.6.hook_resid_pre"
        )
    return (release, sae_id)


def path_exists(text: str) -> bool:
    """Whether a local path exists, for input a user typed: a name the file system cannot hold
    (too long, an embedded NUL) does not exist, rather than raising OSError/ValueError."""
    try:
        return Path(text).exists()
    except (OSError, ValueError):
        return False


def quote_source(uri: str, limit: int = 120) -> str:
    """The source as quoted in a message: repr, cut to `limit` characters (errors stay one
    short line even for a pasted megabyte)."""
    text = repr(uri)
    return text if len(text) <= limit else text[: limit - 1] + "…"


_PARSERS = {"wandb": _parse_wandb, "hf": _parse_hf, "saelens": _parse_saelens}
