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

import functools
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError
from .uri import parse_uri, quote_source

ENV_SETTINGS = "SAE_HOSTED"  # path of the hosted settings TOML; unset: local mode
AUTH_MODES = ("password", "oidc", "proxy", "none")
REMOTE_SCHEMES = ("wandb", "hf", "saelens")
PASSWORD_SECRET = "SAE_PASSWORD"  # Streamlit secret or environment variable (auth = "password")
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
    auth: str = "password"
    allowed_emails: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    heavy_pairs: int = 10**8
    max_array_mb: int = 2048

    @property
    def upload_folder(self) -> Path:
        from .cache import base_directory

        return self.upload_dir if self.upload_dir is not None else base_directory() / "sae_uploads"

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
        try:
            real = path.resolve(strict=True)
        except (OSError, RuntimeError):  # missing, or a symlink loop
            raise InputError(f"{shown}: no such file or folder under the data folders") from None
        if not _inside(real, roots):
            raise InputError(f"{shown}: outside the data folders this server shares ({where})")
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
        from .cache import ENV_DIR

        out = message
        for name in ("WANDB_API_KEY", PASSWORD_SECRET):
            secret = os.environ.get(name, "")
            if len(secret) >= 4:
                out = out.replace(secret, "***")
        private = [(d, d.name) for d in self.data_dirs]  # shown as data/x.pt, not /srv/.../x.pt
        private.append((self.upload_folder, UPLOAD_MARK))
        if os.environ.get(ENV_DIR, "").strip():
            private.append((Path(os.environ[ENV_DIR]).expanduser(), "<cache>"))
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
    """Hosted settings from a TOML file; an InputError naming the file for anything wrong."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise InputError(f"hosted settings {path}: cannot read ({e})") from None
    unknown = set(doc) - {f for f in Hosted.__dataclass_fields__}
    if unknown:
        raise InputError(f"hosted settings {path}: unknown keys {sorted(unknown)}")
    try:
        s = Hosted(
            data_dirs=tuple(_folder(p, path) for p in doc.get("data_dirs", [])),
            remote=frozenset(doc.get("remote", [])),
            uploads=bool(doc.get("uploads", True)),
            upload_dir=_folder(doc["upload_dir"], path) if doc.get("upload_dir") else None,
            upload_limit_mb=int(doc.get("upload_limit_mb", 512)),
            memory_budget_mb=int(doc.get("memory_budget_mb", 4096)),
            auth=str(doc.get("auth", "password")),
            allowed_emails=tuple(str(e).lower() for e in doc.get("allowed_emails", [])),
            allowed_hosts=tuple(str(h) for h in doc.get("allowed_hosts", [])),
            heavy_pairs=int(doc.get("heavy_pairs", 10**8)),
            max_array_mb=int(doc.get("max_array_mb", 2048)),
        )
    except (TypeError, ValueError) as e:
        raise InputError(f"hosted settings {path}: {e}") from None
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


def hosted_settings() -> Hosted | None:
    """The settings named by `$SAE_HOSTED`, or None in local mode (re-read when it changes)."""
    path = os.environ.get(ENV_SETTINGS, "").strip()
    return _cached_settings(path) if path else None


@functools.cache
def _cached_settings(path: str) -> Hosted:
    return read_settings(path)


__all__ = ["Hosted", "hosted_settings", "read_settings"]
