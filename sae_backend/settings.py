"""Every setting the project reads from its environment, in one place, each parsed one way.

Why: settings used to be read in six modules, parsed two ways (an error in some, a silent
fallback in others). Here each `SAE_*` variable is one `Variable` in `VARIABLES`: its name,
default, parser and meaning. Values are read at each call, because tests and the hosted
launcher change the environment at run time; a bad value is one `InputError` naming the
variable, never a silent fallback.

The folders the project writes are all derived here from `$SAE_CACHE_DIR` (else `~/.cache`):
the array cache, downloads, a server's uploads, the toy demo, lock files. This module is a
leaf: it imports nothing from the package but `errors` and `types` (itself a leaf), so every
other module may import it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar, get_args

from .errors import InputError, SAEError
from .types import PRECISIONS, TOPK_ENGINES, TOPK_ORDERS, Precision, TopkEngine, TopkOrder

T = TypeVar("T")

DemoKind = Literal["real", "toy"]
KernelChoice = Literal["auto", "off"]


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise ValueError("expected a positive whole number")
    return int(text)


def _path(text: str) -> Path:
    return Path(text).expanduser()


def _one_of(choices: tuple[str, ...]) -> Callable[[str], Any]:
    """A parser taking one of `choices` (any case) and nothing else."""

    def parse(text: str) -> Any:
        value = text.lower()
        if value not in choices:
            raise ValueError("expected " + ", ".join(choices))
        return value

    return parse


_topk_engine: Callable[[str], TopkEngine] = _one_of(TOPK_ENGINES)
_precision: Callable[[str], Precision] = _one_of(PRECISIONS)
_demo: Callable[[str], DemoKind] = _one_of(get_args(DemoKind))
_kernel: Callable[[str], KernelChoice] = _one_of(get_args(KernelChoice))
_order: Callable[[str], TopkOrder] = _one_of(TOPK_ORDERS)


@dataclass(frozen=True)
class Variable(Generic[T]):
    """One environment variable: unset or blank means `default`; anything else is parsed."""

    name: str
    default: T
    parse: Callable[[str], T]
    doc: str

    def get(self) -> T:
        raw = os.environ.get(self.name, "").strip()
        if not raw:
            return self.default
        try:
            return self.parse(raw)
        except ValueError as e:
            shown = raw if len(raw) <= 60 else raw[:57] + "..."
            raise InputError(f"{self.name}={shown!r}: {e}") from None


CACHE_DIR: Variable[Path | None] = Variable(
    "SAE_CACHE_DIR", None, _path,
    "root of every folder the project writes (e2e_sae's variable); default ~/.cache",
)  # fmt: skip
CACHE_SIZE_LIMIT = Variable(
    "SAE_CACHE_SIZE_LIMIT", 8 * 10**9, _positive_int, "bytes the array cache may hold"
)
HEAVY_PAIRS = Variable(
    "SAE_HEAVY_PAIRS", 10**8, _positive_int,
    "scored pairs (n_a * n_b) from which a pass waits for its device's heavy-work lock",
)  # fmt: skip
TOPK_BLOCK_MB: Variable[int | None] = Variable(
    "SAE_TOPK_BLOCK_MB", None, _positive_int,
    "MiB of float32 scores per top-k block, on any device (default 96 on CPUs, 3072 on GPUs): "
    "bounds a pass's working memory beside its inputs",
)  # fmt: skip
TOPK_PRECISION: Variable[Precision] = Variable(
    "SAE_TOPK_PRECISION", "auto", _precision,
    "the exact scoring path of large top-k passes: auto (bf16 on GPUs; on CPUs timed once per "
    "process), bf16 or fp32; a Ray run fixes it for all its CPU tasks",
)  # fmt: skip
MAX_ARRAY_BYTES = Variable(
    "SAE_MAX_ARRAY_BYTES", 16 * 2**30, _positive_int,
    "the largest single array or zip member a file reader takes",
)  # fmt: skip
MEMORY_BUDGET_MB = Variable(
    "SAE_MEMORY_BUDGET_MB", 8192, _positive_int,
    "MB of dictionaries and results a local dashboard holds in RAM (hosted: memory_budget_mb)",
)  # fmt: skip
DEMO: Variable[DemoKind] = Variable(
    "SAE_DEMO", "real", _demo, "which bundled demo the dashboard opens with: real or toy"
)
CPU_KERNEL: Variable[KernelChoice] = Variable(
    "SAE_CPU_KERNEL", "auto", _kernel,
    "auto: build (once) and use the compiled CPU top-k selection; off: torch's (same results)",
)  # fmt: skip
HOSTED: Variable[Path | None] = Variable(
    "SAE_HOSTED", None, _path, "hosted settings TOML; unset means local mode"
)
TOPK_ENGINE: Variable[TopkEngine] = Variable(
    "SAE_TOPK_ENGINE", "auto", _topk_engine,
    "the exact bf16 top-k engine: auto (Triton on CUDA when installed), torch or triton",
)  # fmt: skip
TOPK_ORDER: Variable[TopkOrder] = Variable(
    "SAE_TOPK_ORDER", "tiles", _order,
    "CPU top-k passes with two sides (within one set; both directions between two): tiles "
    "(each pair scored once, serving both sides) or rows (each row against all, as shards "
    "and GPUs do); same results",
)  # fmt: skip

# A secret, not a setting: the shared password of a hosted instance (auth = "password"), read
# by the dashboard's login from Streamlit's secrets first, then from the environment.
PASSWORD_SECRET = "SAE_PASSWORD"

VARIABLES: tuple[Variable, ...] = (
    CACHE_DIR,
    CACHE_SIZE_LIMIT,
    HEAVY_PAIRS,
    TOPK_BLOCK_MB,
    TOPK_PRECISION,
    MAX_ARRAY_BYTES,
    MEMORY_BUDGET_MB,
    DEMO,
    CPU_KERNEL,
    HOSTED,
    TOPK_ENGINE,
    TOPK_ORDER,
)


def check_all() -> None:
    """Parse every variable once, so a launcher fails at start-up rather than mid-request."""
    for variable in VARIABLES:
        variable.get()


# --------------------------------------------------------------------------------------------
# Folders: all below $SAE_CACHE_DIR (else ~/.cache), read at each call


def base_dir() -> Path:
    """`$SAE_CACHE_DIR`, else `~/.cache`: every folder this project writes is inside it."""
    return CACHE_DIR.get() or Path.home() / ".cache"


def cache_dir() -> Path:
    """The array cache (`sae_backend.cache`)."""
    return base_dir() / "sae_geometry"


def lock_dir() -> Path:
    """Per-key and per-device lock files, beside the cache they guard."""
    return cache_dir() / "locks"


def downloads_dir() -> Path:
    """Downloaded SAE files (W&B, SAELens). A sibling of the cache folder, never inside it:
    diskcache's consistency check deletes files it does not know. Hugging Face files live in
    the hub's own cache (`HF_HOME`)."""
    return base_dir() / "sae_downloads"


def uploads_dir() -> Path:
    """A dashboard's uploads, unless the hosted settings name another folder."""
    return base_dir() / "sae_uploads"


def demo_dir() -> Path:
    """The toy demo's generated files."""
    return base_dir() / "sae_demo"


def make_private_dir(path: Path) -> None:
    """Create `path` (and parents) and make it owner-only, or raise SAEError saying why not."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)
    except OSError as e:
        raise SAEError(f"folder {path} cannot be created owner-only: {e.strerror}") from None


def open_lock_file(path: Path) -> int:
    """A descriptor for `flock` on `path` (created owner-only; a symlink planted there is
    refused). Each call opens its own descriptor, so threads exclude each other too."""
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
