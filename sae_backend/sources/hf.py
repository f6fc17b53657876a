"""Remote source `hf:REPO_ID[:PATH][@REVISION]`: files of a Hugging Face model repo.

Downloads go through `huggingface_hub.hf_hub_download`, so files land in the hub's own cache
(`HF_HOME` / `HF_HUB_CACHE`), are fetched once, are written atomically by the hub library, and
offline mode (`HF_HUB_OFFLINE=1`) serves them from that cache without any network call.

Only the files needed are fetched:
- PATH with a weight-file suffix (`.pt`, `.safetensors`, `.npz`, ...) is a file; a config with
  the same stem and `.yaml` beside it is fetched too when the repo has one (the Apollo layout:
  `e2e_similar_ce_layer_6.pt` + `e2e_similar_ce_layer_6.yaml`).
- Any other PATH, or none (the repo root), is a folder; of its files only those with the names
  the known folder formats use (`FOLDER_FILES`) are fetched, e.g. a SAELens folder's
  `cfg.json`, `sae_weights.safetensors`, `sparsity.safetensors`.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any, Literal, overload

from ..errors import SourceError
from ..types import DownloadProgress
from ..uri import SourceRef
from ._download import remove_stale_partials
from .base import Resolved

# Suffixes that make PATH a single file rather than a folder.
FILE_SUFFIXES = (".pt", ".pth", ".safetensors", ".npz", ".npy", ".ckpt", ".bin")
# Files beside a single file that carry its config: same stem + one of these.
SIDECAR_SUFFIXES = (".yaml",)
# Files of the known folder formats (see reference/sae-formats.md); nothing else is fetched.
FOLDER_FILES = (
    "cfg.json",  # SAELens, EleutherAI sparsify
    "sae_weights.safetensors",  # SAELens
    "sparsity.safetensors",  # SAELens (optional: log10 feature density)
    "sae.safetensors",  # EleutherAI sparsify
    "ae.pt",  # dictionary_learning
    "config.json",  # dictionary_learning
    "params.npz",  # Gemma Scope
)
# Of those, the ones holding weights: a folder without any of them is not an SAE.
WEIGHT_FILES = ("sae_weights.safetensors", "sae.safetensors", "ae.pt", "params.npz")

_NETWORK_ERRORS = {"ConnectError", "ConnectTimeout", "TimeoutException", "Timeout"}
_SNAPSHOT = re.compile(r"[\\/]snapshots[\\/]([0-9a-f]{40})[\\/]")


def resolve(ref: SourceRef, progress: DownloadProgress | None = None) -> Resolved:
    """Download (or find in the hub cache) the files of `ref`; return the local file or folder."""
    repo, path, revision = ref.parts
    hub = _import_hub()
    _remove_stale_incomplete(hub, repo)
    if path.endswith(FILE_SUFFIXES):
        local = _fetch(hub, ref, path, progress, required=True)
        stem = posixpath.splitext(path)[0]
        for suffix in SIDECAR_SUFFIXES:
            _fetch(hub, ref, stem + suffix, progress, required=False)
    else:
        local = _fetch_folder(hub, ref, progress)
    meta = {"hf_repo": repo, "hf_path": path, "hf_revision": revision or "main"}
    m = _SNAPSHOT.search(str(local) + "/")
    if m:
        meta["hf_commit"] = m.group(1)
    return Resolved(path=local, position=ref.position, meta=meta)


def _remove_stale_incomplete(hub: Any, repo: str) -> None:
    """Delete this repo's `*.incomplete` blobs older than a day from the hub cache: what
    downloads of killed processes leave (huggingface_hub never resumes or removes them), which
    would otherwise pile up on a server. A download in progress is younger and stays."""
    from huggingface_hub.file_download import repo_folder_name

    repo_cache = Path(hub.constants.HF_HUB_CACHE) / repo_folder_name(
        repo_id=repo, repo_type="model"
    )
    remove_stale_partials(repo_cache / "blobs", pattern="*.incomplete")


def _fetch_folder(hub: Any, ref: SourceRef, progress: DownloadProgress | None) -> Path:
    """Fetch the known files of folder PATH (repo root when empty); return the local folder."""
    repo, path, revision = ref.parts
    listed = _list_folder(hub, ref)  # None: the Hub cannot be asked (offline), try the cache
    names = [n for n in FOLDER_FILES if listed is None or n in listed]
    got = {}
    for name in names:
        filename = posixpath.join(path, name) if path else name
        # Hub unreachable: look in the cache only, instead of retrying for each candidate.
        local = _fetch(hub, ref, filename, progress, required=False, cache_only=listed is None)
        if local is not None:
            got[name] = local
    where = f"folder {path!r}" if path else "the repo root"
    if not any(n in got for n in WEIGHT_FILES):
        if listed is None:
            raise SourceError(
                f"{ref}: no SAE files of {where} in the local Hugging Face cache, and the Hub "
                f"cannot be asked ({_offline_reason(hub)})"
            )
        shown = ", ".join(sorted(listed)[:8]) or "nothing"
        raise SourceError(
            f"{ref}: {where} holds no SAE weights (looked for {', '.join(WEIGHT_FILES)}; "
            f"found: {shown}); give the path of a file or of an SAE folder"
        )
    return next(iter(got.values())).parent


def _list_folder(hub: Any, ref: SourceRef) -> set[str] | None:
    """Names of the files directly in folder PATH, or None when offline / unreachable."""
    repo, path, revision = ref.parts
    if hub.constants.is_offline_mode():
        return None
    try:
        entries = hub.HfApi().list_repo_tree(
            repo, path_in_repo=path or None, revision=revision or None
        )
        return {posixpath.basename(e.path) for e in entries if isinstance(e, hub.RepoFile)}
    except Exception as exc:
        if _unreachable(hub, exc):
            return None
        raise _explain(hub, ref, exc, what=f"folder {path!r}" if path else "the repo") from None


@overload
def _fetch(
    hub: Any,
    ref: SourceRef,
    filename: str,
    progress: DownloadProgress | None,
    *,
    required: Literal[True],
    cache_only: bool = False,
) -> Path: ...


@overload
def _fetch(
    hub: Any,
    ref: SourceRef,
    filename: str,
    progress: DownloadProgress | None,
    *,
    required: bool,
    cache_only: bool = False,
) -> Path | None: ...


def _fetch(
    hub: Any,
    ref: SourceRef,
    filename: str,
    progress: DownloadProgress | None,
    *,
    required: bool,
    cache_only: bool = False,
) -> Path | None:
    """hf_hub_download one file; a missing optional file gives None, anything else SourceError."""
    repo, _path, revision = ref.parts
    try:
        local = hub.hf_hub_download(
            repo,
            filename,
            revision=revision or None,
            local_files_only=cache_only,
            tqdm_class=_progress_bar_class(progress, filename) if progress else None,
        )
    except Exception as exc:
        if not required and isinstance(exc, hub.errors.EntryNotFoundError):
            return None  # not in the repo, or (offline) not in the cache
        raise _explain(hub, ref, exc, what=f"file {filename!r}") from None
    return Path(local)


def _explain(hub: Any, ref: SourceRef, exc: BaseException, *, what: str) -> SourceError:
    """One line for each way the Hub fails (the order matters: the classes nest)."""
    errors = hub.errors
    repo, _path, revision = ref.parts
    if isinstance(exc, errors.LocalEntryNotFoundError):
        return SourceError(
            f"{ref}: {what} is not in the local Hugging Face cache and the Hub cannot be asked "
            f"({_offline_reason(hub)})"
        )
    if isinstance(exc, errors.RevisionNotFoundError):
        return SourceError(f"{ref}: repo {repo} has no revision {revision!r}")
    if isinstance(exc, errors.RepositoryNotFoundError):  # includes gated repos
        return SourceError(
            f"{ref}: no Hugging Face model repo {repo} that you can read (check the name; a "
            "private or gated repo needs `hf auth login` or HF_TOKEN)"
        )
    if isinstance(exc, errors.EntryNotFoundError):
        return SourceError(f"{ref}: repo {repo} has no {what}")
    if _unreachable(hub, exc):
        return SourceError(f"{ref}: cannot reach the Hugging Face Hub for {what}: {_short(exc)}")
    if isinstance(exc, errors.HfHubHTTPError | OSError | ValueError):
        return SourceError(f"{ref}: Hugging Face Hub error for {what}: {_short(exc)}")
    raise exc  # not an expected failure: a bug, let it surface


def _unreachable(hub: Any, exc: BaseException) -> bool:
    """True for "no network": offline mode, or the HTTP client's connect/timeout errors."""
    if isinstance(exc, hub.errors.OfflineModeIsEnabled | ConnectionError | TimeoutError):
        return True
    # The hub's HTTP client (httpx, httpx2 or requests, by version) names these alike.
    return any(c.__name__ in _NETWORK_ERRORS for c in type(exc).__mro__)


def _offline_reason(hub: Any) -> str:
    if hub.constants.is_offline_mode():
        return "offline mode is on: HF_HUB_OFFLINE=1"
    return "no connection"


def _short(exc: BaseException, limit: int = 200) -> str:
    line = " ".join(str(exc).split()) or type(exc).__name__
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _import_hub():
    try:
        import huggingface_hub  # imported only when an hf: source is resolved
        import huggingface_hub.constants
        import huggingface_hub.errors
    except ImportError:
        raise SourceError(
            "loading hf: sources needs the `huggingface_hub` package: pip install huggingface_hub"
        ) from None
    return huggingface_hub


def _progress_bar_class(progress: DownloadProgress, what: str) -> type:
    """A tqdm stand-in for hf_hub_download that forwards byte counts to `progress`."""

    class _Bar:
        def __init__(self, *args: Any, total: int | None = None, initial: int = 0, **kw: Any):
            self.total = total
            self.n = initial
            progress(self.n, self.total, what)

        def __enter__(self) -> _Bar:
            return self

        def __exit__(self, *exc: Any) -> None:
            return None

        def update(self, n: int | float | None = 1) -> None:
            self.n += int(n or 0)
            progress(self.n, self.total, what)

        def __getattr__(self, name: str) -> Any:
            return lambda *a, **k: None  # close, set_postfix_str, refresh, ...: nothing to show

    return _Bar
