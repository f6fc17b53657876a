"""Hosted mode: what a visitor of a shared instance may load, and the server's limits.

Why a separate module: on a laptop the dashboard loads whatever its user types; on a shared
server the URI box is a door into the server's file system and its W&B key. The rules live
here, as plain data read from one TOML file (`$SAE_HOSTED`, see `hosted/settings.example.toml`),
so the pages, the launcher and the tests share one reading of them, and without streamlit.

Local mode is the absence of `$SAE_HOSTED`: no rules, no login. In hosted mode:
* local paths load only from under the configured data folders, after resolving `..` and
  symlinks, for the path itself and every file a reader may open inside a folder;
* remote schemes (wandb:, hf:, saelens:) load only when listed in `remote`;
* messages shown to visitors have the server's private folders and secrets blanked out.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_type_hints

from . import settings
from .errors import InputError
from .types import AUTH_MODES, AuthMode
from .uri import parse_uri, quote_source

ENV_SETTINGS = settings.HOSTED.name  # path of the hosted settings TOML; unset: local mode
REMOTE_SCHEMES = ("wandb", "hf", "saelens")
PASSWORD_SECRET = settings.PASSWORD_SECRET
UPLOAD_MARK = "<upload>"  # how messages and shared links name the upload folder
_FOLDER_FILES_LIMIT = 2000  # files checked inside a folder source (two levels deep)


@dataclass(frozen=True)
class Hosted:
    """The settings of a hosted instance (every field has a safe default).

    data_dirs:        folders visitors may load local files from (none: no local files).
    remote:           URI schemes visitors may load (subset of wandb, hf, saelens).
    uploads:          whether the upload box is offered.
    upload_dir:       where uploads are written (default `$SAE_CACHE_DIR/sae_uploads`).
    upload_limit_mb:  largest upload, also passed to Streamlit as server.maxUploadSize.
    memory_budget_mb: bytes of dictionaries and results held in RAM for all sessions.
    auth:             "password" (shared, secret SAE_PASSWORD), "oidc" (st.login, configured
                      in secrets [auth]), "proxy" (a reverse proxy authenticates), or "none".
    allowed_emails:   with oidc, who may enter (empty: anyone the provider logs in).
    allowed_hosts:    Host headers the server answers (Streamlit's server.allowedHosts).
    heavy_pairs:      from how many scored pairs work waits for the device lock.
    max_array_mb:     the largest single array a reader takes (SAE_MAX_ARRAY_BYTES); a
                      paper-scale decoder is 141 MB.
    """

    data_dirs: tuple[Path, ...] = ()
    remote: frozenset[str] = frozenset()
    uploads: bool = True
    upload_dir: Path | None = None
    upload_limit_mb: int = 512
    memory_budget_mb: int = 4096
    auth: AuthMode = "password"
    allowed_emails: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    heavy_pairs: int = 10**8
    max_array_mb: int = 2048

    def __post_init__(self) -> None:
        # providers differ in the case of the addresses they report
        object.__setattr__(self, "allowed_emails", tuple(e.lower() for e in self.allowed_emails))

    @property
    def upload_folder(self) -> Path:
        return self.upload_dir if self.upload_dir is not None else settings.uploads_dir()

    def check_source(self, uri: str) -> str:
        """The URI a visitor may load for `uri` (relative paths: under the first data folder),
        or an InputError saying why not. Never touches the network."""
        text = uri.strip()
        if "\x00" in text:
            raise InputError("the source contains a NUL character")
        ref = parse_uri(text)
        if ref.scheme != "local":
            if ref.scheme not in self.remote:
                allowed = ", ".join(f"{s}:" for s in sorted(self.remote)) or "none"
                raise InputError(
                    f"{ref.scheme}: sources are turned off on this server (allowed: {allowed})"
                )
            return text
        return self._check_local(text, ref.position)

    def _check_local(self, text: str, position: str | None) -> str:
        raw = text.split("#", 1)[0] if position is not None else text
        raw = raw.removeprefix("file:")  # file:/srv/data/x is the plain path /srv/data/x
        shown = quote_source(raw)  # control characters escaped, long input cut
        path = Path(raw)  # no ~ expansion: a visitor has no home folder on this server
        folders = self.data_dirs
        if path.parts[:1] == (UPLOAD_MARK,):  # a shared link to an upload (see `display`)
            folders = (self.upload_folder,)
            path = self.upload_folder.joinpath(*path.parts[1:])
        elif not folders:
            raise InputError("this server loads no local files; use an upload or a remote URI")
        elif not path.is_absolute():  # "data/x" as `display` shows it, else under the first
            named = [d for d in folders if path.parts[:1] == (d.name,)]
            path = named[0].parent / path if named else folders[0] / path
        roots = [d.resolve() for d in folders]
        where = ", ".join(str(d) for d in folders)
        # One answer for a missing path and for one outside the data folders, so a visitor
        # cannot probe which files exist elsewhere on the server.
        refused = InputError(f"{shown}: not found in the data folders this server shares ({where})")
        try:
            real = path.resolve(strict=True)
        except (OSError, RuntimeError):  # missing, too long a name, or a symlink loop
            raise refused from None
        if not _inside(real, roots):
            raise refused
        if real.is_dir():
            for inner in _files_below(real, levels=3):
                if not _inside(inner.resolve(), roots):
                    raise InputError(
                        f"{shown}: {quote_source(inner.name)} links outside the data folders ({where})"
                    )
        return str(real) + (f"#{position}" if position is not None else "")

    def display(self, uri: str) -> str:
        """How a visitor sees a source: local files by their place in a data folder or as an
        upload, never by the server's absolute path; `check_source` takes it back."""
        return self.redact(uri)

    def redact(self, message: str) -> str:
        """`message` with secrets blanked out and the server's folders shortened: data folders
        to their names, uploads to <upload>, the cache to <cache>, the home folder to ~."""
        out = message
        for name in ("WANDB_API_KEY", PASSWORD_SECRET):
            secret = os.environ.get(name, "")
            if len(secret) >= 4:
                out = out.replace(secret, "***")
        private = [(d, d.name) for d in self.data_dirs]  # shown as data/x.pt, not /srv/.../x.pt
        private.append((self.upload_folder, UPLOAD_MARK))
        cache_root = settings.CACHE_DIR.get()
        if cache_root is not None:
            private.append((cache_root, "<cache>"))
        private.append((Path.home(), "~"))
        for folder, shown in private:
            for form in {str(folder), str(folder.resolve())}:
                if len(form) > 1:
                    out = out.replace(form, shown)
        return out


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path == r or path.is_relative_to(r) for r in roots)


def _files_below(folder: Path, levels: int) -> list[Path]:
    """Entries a reader of `folder` may open, `levels` deep (bounded): files, folders and
    links. os.walk does not follow linked folders, so each is returned itself, not walked."""
    out: list[Path] = []
    for root, dirs, files in os.walk(folder):
        out.extend(Path(root) / name for name in (*dirs, *files))
        if len(Path(root).relative_to(folder).parts) + 1 >= levels:
            dirs.clear()
        if len(out) > _FOLDER_FILES_LIMIT:
            raise InputError(f"{folder}: more than {_FOLDER_FILES_LIMIT} files; not an SAE folder")
    return out


def read_settings(path: Path | str) -> Hosted:
    """Hosted settings from a TOML file; an InputError naming the file for anything wrong.

    Each key is parsed by its field's type (`_PARSERS`), strictly: `uploads = "no"` is an
    error, not True, and a key left out takes the dataclass's default, the only place
    defaults are written.
    """
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise InputError(f"hosted settings {path}: cannot read ({e})") from None
    types = get_type_hints(Hosted)
    fields = {f.name for f in dataclasses.fields(Hosted)}
    unknown = set(doc) - fields
    if unknown:
        raise InputError(f"hosted settings {path}: unknown keys {sorted(unknown)}")
    values = {}
    for name, raw in doc.items():
        try:
            values[name] = _PARSERS[types[name]](raw, path)
        except (TypeError, ValueError) as e:
            raise InputError(f"hosted settings {path}: {name}: {e}") from None
    s = Hosted(**values)
    if s.auth not in AUTH_MODES:
        raise InputError(f"hosted settings {path}: auth must be one of {AUTH_MODES}")
    if not s.remote <= set(REMOTE_SCHEMES):
        raise InputError(f"hosted settings {path}: remote may list only {REMOTE_SCHEMES}")
    if min(s.upload_limit_mb, s.memory_budget_mb, s.heavy_pairs, s.max_array_mb) < 1:
        raise InputError(f"hosted settings {path}: limits must be positive")
    for d in s.data_dirs:
        if not d.is_dir():
            raise InputError(f"hosted settings {path}: data folder {d} does not exist")
    return s


def _folder(value: object, settings_file: Path) -> Path:
    """A folder from the settings; relative ones are relative to the settings file."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"folders must be non-empty strings, got {value!r}")
    p = Path(value).expanduser()
    return p if p.is_absolute() else (settings_file.parent / p).resolve()


def _strings(value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"expected a list of strings, got {value!r}")
    return value


def _whole(value: object, _file: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected a whole number, got {value!r}")
    return value


def _flag(value: object, _file: Path) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {value!r}")
    return value


def _text(value: object, _file: Path) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


# How each field type of `Hosted` is read from TOML (keyed by the resolved annotation).
_PARSERS: dict[Any, Callable[[Any, Path], Any]] = {
    tuple[Path, ...]: lambda v, f: tuple(_folder(p, f) for p in _strings(v)),
    frozenset[str]: lambda v, f: frozenset(_strings(v)),
    bool: _flag,
    Path | None: _folder,
    int: _whole,
    AuthMode: _text,
    tuple[str, ...]: lambda v, f: tuple(_strings(v)),
}


def hosted_settings() -> Hosted | None:
    """The settings named by `$SAE_HOSTED`, or None in local mode (re-read when it changes)."""
    path = settings.HOSTED.get()
    return _cached_settings(str(path)) if path is not None else None


@functools.cache
def _cached_settings(path: str) -> Hosted:
    return read_settings(path)


__all__ = ["Hosted", "hosted_settings", "read_settings"]
