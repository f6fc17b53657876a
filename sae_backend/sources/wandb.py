"""Remote source `wandb:ENTITY/PROJECT/RUN_ID`: an e2e_sae training run on Weights & Biases.

Every SAE of the e2e SAE paper is a W&B run (project `sparsify/gpt2`). Through the official
client (`wandb.Api`) this module fetches the run's `final_config.yaml` and its latest checkpoint
`samples_N.pt` (largest N) into `cache_root()/wandb/ENTITY/PROJECT/RUN_ID/`, and reads from the
run summary what the weights alone do not say: which features were alive, L0, CE-loss increase.

Caching: each file is downloaded to a temporary name and renamed when complete (see
`_download.fetch_atomic`); then `wandb_run.json` (files, sizes, run config and the summary keys
used here) is written last, atomically. A later resolve of a finished run whose files are all
present reads that manifest and makes no network call at all.

Credentials are the client's own: `WANDB_API_KEY`, or the key stored by `wandb login`
(the app copies its Streamlit secret into `WANDB_API_KEY`). `WANDB_BASE_URL` selects a server.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

from ..errors import SAEError, SourceError
from ..types import DownloadProgress
from ..uri import SourceRef
from ._download import cache_root, fetch_atomic, remove_stale_partials, write_json_atomic
from .base import Resolved

MANIFEST = "wandb_run.json"
MANIFEST_VERSION = 1
CONFIG_FILE = "final_config.yaml"
_CHECKPOINT = re.compile(r"^samples_(\d+)\.pt$")

# Run-summary keys logged by e2e_sae (its metrics.py and analysis.py); {pos} is the hook
# position with dots, e.g. blocks.6.hook_resid_pre.
ALIVE_INDICES_KEY = "sparsity/alive_dict_elements_indices_final/{pos}"  # list of feature indices
ALIVE_COUNT_KEYS = (  # after training, else the last count logged during training
    "sparsity/alive_dict_elements_final/{pos}",
    "sparsity/alive_dict_elements/{pos}",
)
L0_KEY = "sparsity/eval/L_0/{pos}"
CE_DIFF_KEY = "performance/eval/difference_ce_loss"  # CE(original) - CE(with SAE); increase = -this
_KEPT_SUMMARY = ("sparsity/alive_dict_elements", "sparsity/eval/L_0/", "performance/eval/")

# Messages of the client's errors that mean "the server could not be reached".
_UNREACHABLE = (
    "connection refused",
    "dial tcp",
    "no such host",
    "name or service not known",
    "network is unreachable",
    "connection reset",
    "timed out",
    "timeout",
    "temporary failure in name resolution",
    "max retries exceeded",
    "failed to establish a new connection",
)


def run_folder(entity: str, project: str, run_id: str) -> Path:
    """Where the files of one run are cached."""
    return cache_root() / "wandb" / entity / project / run_id


def resolve(ref: SourceRef, progress: DownloadProgress | None = None) -> Resolved:
    """Local folder with the run's final_config.yaml and latest samples_N.pt, plus run metadata."""
    entity, project, run_id = ref.parts
    folder = run_folder(entity, project, run_id)
    manifest = _read_manifest(folder)
    if manifest is None or manifest.get("state") != "finished" or not _complete(folder, manifest):
        manifest = _fetch(ref, folder, progress)
    return _resolved(ref, folder, manifest)


# --- fetching ------------------------------------------------------------------------------


def _fetch(ref: SourceRef, folder: Path, progress: DownloadProgress | None) -> dict[str, Any]:
    """Ask W&B for the run, download what is missing, write the manifest; errors -> SourceError."""
    wandb = _import_wandb()
    entity, project, run_id = ref.parts
    try:
        api = wandb.Api()
        run = api.run(f"{entity}/{project}/{run_id}")
        remote = {f.name: f for f in run.files()}
        config = dict(run.config or {})
        summary = _kept_summary(run.summary_metrics or {})
        checkpoint = _latest_checkpoint(ref, remote)
        wanted = [checkpoint] + ([CONFIG_FILE] if CONFIG_FILE in remote else [])
        manifest = {
            "version": MANIFEST_VERSION,
            "run_path": f"{entity}/{project}/{run_id}",
            "name": run.name,
            "url": getattr(run, "url", None),
            "state": run.state,
            "checkpoint": checkpoint,
            "files": {name: int(remote[name].size) for name in wanted},
            "config": config,
            "summary": summary,
        }
        # A run with several SAEs needs #POSITION: say so before downloading anything.
        _pick_position(ref, manifest)
        remove_stale_partials(folder)
        for name in sorted(wanted, key=lambda n: n == checkpoint):  # small config first
            dest = folder / name
            size = manifest["files"][name]
            if dest.is_file() and dest.stat().st_size == size:
                continue  # same name and size from an earlier resolve: not downloaded again
            try:
                fetch_atomic(
                    dest,
                    _downloader(remote[name]),
                    expected_size=size,
                    what=f"{ref.parts[2]}/{name}",
                    progress=progress,
                )
            except (wandb.errors.Error, OSError, TimeoutError) as exc:
                raise _explain(exc, ref, wandb, doing=f"downloading {name}") from None
    except SAEError:
        raise
    except (wandb.errors.Error, OSError, TimeoutError) as exc:
        raise _explain(exc, ref, wandb) from None
    write_json_atomic(folder / MANIFEST, manifest)
    return manifest


def _downloader(remote_file: Any):
    """fetch(tmp_dir) for `fetch_atomic`: the client's own download into the temporary folder."""

    def fetch(tmp_dir: Path) -> Path:
        handle = remote_file.download(root=str(tmp_dir), replace=True)
        handle.close()  # the client returns a text-mode handle; only its path is wanted
        return Path(handle.name)

    return fetch


def _latest_checkpoint(ref: SourceRef, remote: dict[str, Any]) -> str:
    """The `samples_N.pt` with the largest N; SourceError naming the files when there is none."""
    steps = {name: int(m.group(1)) for name in remote if (m := _CHECKPOINT.match(name))}
    if steps:
        return max(steps, key=steps.__getitem__)
    pts = sorted(n for n in remote if n.endswith(".pt"))
    listed = ", ".join(pts[:5]) if pts else ", ".join(sorted(remote)[:5]) or "none"
    raise SourceError(
        f"{ref}: the run has no samples_N.pt checkpoint to load "
        f"({'its .pt files' if pts else 'its files'}: {listed})"
    )


def _import_wandb():
    try:
        import wandb  # heavy: imported only when a wandb: source is resolved
    except ImportError:
        raise SourceError(
            "loading wandb: sources needs the `wandb` package: pip install wandb"
        ) from None
    return wandb


def _explain(exc: BaseException, ref: SourceRef, wandb: Any, doing: str = "") -> SourceError:
    """One line for each way the client fails: no key, wrong key, no run, no network, other."""
    text = str(exc)
    low = text.lower()
    base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    reason = next((marker for marker in _UNREACHABLE if marker in low), None)
    if reason is not None or isinstance(exc, ConnectionError):
        return SourceError(
            f"{ref}: cannot reach W&B at {base} ({reason or _short(text, 80)}); "
            "check the network, or WANDB_BASE_URL"
        )
    if isinstance(exc, wandb.errors.UsageError) and "api key" in low:
        return SourceError(
            f"{ref}: no W&B API key: set WANDB_API_KEY or run `wandb login` "
            "(in the app: the WANDB_API_KEY secret)"
        )
    if isinstance(exc, wandb.errors.AuthenticationError):
        return SourceError(
            f"{ref}: W&B rejected the API key; check WANDB_API_KEY or run `wandb login` again"
        )
    if "could not find run" in low:
        return SourceError(
            f"{ref}: W&B has no run {'/'.join(ref.parts)} that this API key can read "
            "(check the id, or the project is private)"
        )
    if doing:
        return SourceError(f"{ref}: {doing} failed: {_short(text)}")
    return SourceError(f"{ref}: W&B request failed: {_short(text)}")


def _short(text: str, limit: int = 200) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _kept_summary(summary: Any) -> dict[str, Any]:
    """The summary keys this module reads (the full summary holds large histograms)."""
    return {
        str(k): v
        for k, v in dict(summary).items()
        if str(k).startswith(_KEPT_SUMMARY) and _jsonable(v)
    }


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


# --- the cache -----------------------------------------------------------------------------


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("version") != MANIFEST_VERSION:
        return None
    return data


def _complete(folder: Path, manifest: dict[str, Any]) -> bool:
    """Every file the manifest lists is present with its recorded size."""
    files = manifest.get("files")
    if not isinstance(files, dict) or manifest.get("checkpoint") not in files:
        return False
    for name, size in files.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != size:
            return False
    return True


# --- from manifest to Resolved -------------------------------------------------------------


def _resolved(ref: SourceRef, folder: Path, manifest: dict[str, Any]) -> Resolved:
    position = _pick_position(ref, manifest)
    summary = manifest.get("summary") or {}
    alive = _alive_indices(ref, summary, position) if position else None
    meta = run_metadata(manifest.get("config") or {}, summary, position)
    meta.update(
        run_name=manifest.get("name"),
        run_path=manifest.get("run_path"),
        run_url=manifest.get("url"),
        checkpoint=manifest.get("checkpoint"),
    )
    if alive is not None:
        meta["alive_from"] = "W&B run summary"
    meta = {k: v for k, v in meta.items() if v is not None}
    return Resolved(path=folder, position=position, alive_indices=alive, meta=meta)


def config_positions(config: dict[str, Any]) -> list[str]:
    """Hook positions (dots) named in an e2e_sae config's `saes.sae_positions` (str or list)."""
    saes = config.get("saes") if isinstance(config, dict) else None
    raw = saes.get("sae_positions") if isinstance(saes, dict) else None
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        return []
    return [_dots(str(p)) for p in raw if "*" not in str(p)]  # patterns name no single hook


def _pick_position(ref: SourceRef, manifest: dict[str, Any]) -> str | None:
    """The URI's #position, else the run's only one (config, else summary), else None."""
    known = config_positions(manifest.get("config") or {})
    if not known:
        prefix = ALIVE_INDICES_KEY.format(pos="")
        known = sorted(
            k[len(prefix) :] for k in manifest.get("summary") or {} if k.startswith(prefix)
        )
    if ref.position:
        pos = _dots(ref.position)
        if known and pos not in known:
            raise SourceError(f"{ref}: the run has no SAE at {pos} (it has: {', '.join(known)})")
        return pos
    if len(known) > 1:
        raise SourceError(
            f"{ref}: the run holds SAEs at {len(known)} positions ({', '.join(known)}); "
            f"add #POSITION, e.g. {ref}#{known[0]}"
        )
    return known[0] if known else None


def _alive_indices(ref: SourceRef, summary: dict[str, Any], position: str) -> list[int] | None:
    value = summary.get(ALIVE_INDICES_KEY.format(pos=position))
    if value is None:
        return None
    ok = isinstance(value, list) and all(
        isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value
    )
    if not ok:
        raise SourceError(
            f"{ref}: run summary {ALIVE_INDICES_KEY.format(pos=position)} is not a list of "
            "non-negative feature indices"
        )
    return sorted(set(value))


def run_metadata(
    config: dict[str, Any], summary: dict[str, Any], position: str | None
) -> dict[str, Any]:
    """What an e2e_sae run says about its SAE, from its config and summary (absent -> no key).

    hook, layer, model_name (TransformerLens name), sae_type ("local", "e2e" or "downstream",
    decided by the loss coefficients as the authors' analysis code does), sparsity_coeff, seed,
    n_samples, dict_size_to_input_ratio, l0, ce_loss_increase, alive_count.
    """
    meta: dict[str, Any] = {}
    loss, saes = (v if isinstance(v := config.get(k), dict) else {} for k in ("loss", "saes"))
    if position:
        meta["hook"] = position
        m = re.match(r"^blocks\.(\d+)\.", position)
        if m:
            meta["layer"] = int(m.group(1))
    meta["model_name"] = config.get("tlens_model_name")
    meta["sae_type"] = _sae_type(loss) if loss else None
    meta["sparsity_coeff"] = _number(_get(loss, "sparsity", "coeff"))
    meta["seed"] = config.get("seed")
    meta["n_samples"] = config.get("n_samples")
    meta["dict_size_to_input_ratio"] = _number(saes.get("dict_size_to_input_ratio"))
    if position:
        meta["l0"] = _number(summary.get(L0_KEY.format(pos=position)))
        for key in ALIVE_COUNT_KEYS:
            count = summary.get(key.format(pos=position))
            if isinstance(count, int | float) and not isinstance(count, bool):
                meta["alive_count"] = int(count)
                break
    diff = _number(summary.get(CE_DIFF_KEY))
    meta["ce_loss_increase"] = -diff if diff is not None else None
    return {k: v for k, v in meta.items() if v is not None}


def _sae_type(loss: dict[str, Any]) -> str:
    kl = _number(_get(loss, "logits_kl", "coeff")) or 0.0
    downstream = _number(_get(loss, "in_to_orig", "total_coeff")) or 0.0
    if kl > 0 and downstream > 0:
        return "downstream"
    return "e2e" if kl > 0 else "local"


def _get(d: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _dots(position: str) -> str:
    """e2e_sae module keys use hyphens (blocks-6-hook_resid_pre); hooks and summaries use dots."""
    return position.replace("-", ".")
