"""Uploaded SAE files on disk: one content-named folder per upload, old ones removed.

A checkpoint's format is detected by file name, so files keep their names (never a path from
the client); the folder is named by a hash of names and contents, so the same upload lands in
the same folder (and hits the backend's cache). Folders unused for a day are removed on the
next upload, so a server's disk does not fill up.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from dashboard.feedback import hosted
from dashboard.text import too_big
from sae_backend.errors import InputError

UPLOAD_LIMIT_MB = 512  # local mode; also server.maxUploadSize in .streamlit/config.toml
UPLOAD_MAX_AGE_S = 24 * 3600  # upload folders older than this are removed on the next upload


class Upload(Protocol):
    """What `st.file_uploader` gives per file (tests pass any object with these two)."""

    name: str

    def getvalue(self) -> bytes: ...


def upload_limit_mb() -> int:
    server = hosted()
    return server.upload_limit_mb if server is not None else UPLOAD_LIMIT_MB


def upload_root() -> Path:
    server = hosted()
    return (
        server.upload_folder if server is not None else Path(tempfile.gettempdir()) / "sae_uploads"
    )


def save_upload(files: Sequence[Upload]) -> str:
    """Write uploaded files (one checkpoint, or the files of one SAE folder) under a content-
    named folder, keeping their names; returns the URI to load (the file, or the folder).

    Raises InputError when they are larger than the upload limit, before writing anything."""
    total = sum(len(f.getvalue()) for f in files)
    if total > upload_limit_mb() * 2**20:
        raise InputError(too_big(total, upload_limit_mb()))
    root = upload_root()
    remove_old_uploads(root)
    h = hashlib.blake2b(digest_size=8)
    for f in files:
        h.update(f.name.encode() + b"\0" + f.getvalue())
    folder = root / h.hexdigest()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    for f in files:
        target = folder / Path(f.name).name  # never a path from the client
        if not target.exists():
            partial = target.with_name(f".partial-{target.name}")
            partial.write_bytes(f.getvalue())
            partial.replace(target)
    os.utime(folder)  # used now: the age that `remove_old_uploads` goes by starts again
    return str(folder if len(files) > 1 else folder / Path(files[0].name).name)


def remove_old_uploads(root: Path) -> None:
    """Remove upload folders under `root` untouched for longer than UPLOAD_MAX_AGE_S."""
    if not root.is_dir():
        return
    now = time.time()
    for folder in root.iterdir():
        try:
            if folder.is_dir() and now - folder.stat().st_mtime > UPLOAD_MAX_AGE_S:
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            pass  # removed by another session meanwhile
