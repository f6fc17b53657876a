"""settings.py: every SAE_* variable parsed one way; folders derived from one root."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from sae_backend import settings
from sae_backend.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("variable", settings.VARIABLES, ids=lambda v: v.name)
def test_unset_or_blank_gives_the_default(variable, monkeypatch):
    monkeypatch.delenv(variable.name, raising=False)
    assert variable.get() == variable.default
    monkeypatch.setenv(variable.name, "   ")
    assert variable.get() == variable.default


@pytest.mark.parametrize(
    "variable, text, value",
    [
        (settings.CACHE_SIZE_LIMIT, "123", 123),
        (settings.HEAVY_PAIRS, " 5 ", 5),
        (settings.MAX_ARRAY_BYTES, "1000", 1000),
        (settings.TOPK_BLOCK_MB, "1", 1),
        (settings.TOPK_PRECISION, "FP32", "fp32"),
        (settings.MEMORY_BUDGET_MB, "64", 64),
        (settings.DEMO, "TOY", "toy"),
        (settings.DEMO, "real", "real"),
        (settings.TOPK_ENGINE, "Triton", "triton"),
        (settings.TOPK_ENGINE, "torch", "torch"),
        (settings.CPU_KERNEL, "OFF", "off"),
        (settings.CPU_KERNEL, "auto", "auto"),
        (settings.TOPK_ORDER, "Rows", "rows"),
        (settings.TOPK_ORDER, "tiles", "tiles"),
    ],
)
def test_values_are_parsed(variable, text, value, monkeypatch):
    monkeypatch.setenv(variable.name, text)
    assert variable.get() == value


@pytest.mark.parametrize(
    "variable, text",
    [
        (settings.CACHE_SIZE_LIMIT, "lots"),
        (settings.CACHE_SIZE_LIMIT, "0"),
        (settings.HEAVY_PAIRS, "-3"),  # was a silent fallback to the default
        (settings.HEAVY_PAIRS, "1e8"),
        (settings.MAX_ARRAY_BYTES, "16GB"),
        (settings.TOPK_BLOCK_MB, "0"),
        (settings.TOPK_PRECISION, "fp16"),
        (settings.MEMORY_BUDGET_MB, "8 GB"),  # was a silent fallback to the default
        (settings.DEMO, "tiny"),  # was silently the real demo
        (settings.TOPK_ENGINE, "cuda"),
        (settings.TOPK_ORDER, "half"),
        (settings.CPU_KERNEL, "on"),
    ],
)
def test_a_bad_value_is_one_error_line_naming_the_variable(variable, text, monkeypatch):
    monkeypatch.setenv(variable.name, text)
    with pytest.raises(InputError) as e:
        variable.get()
    msg = str(e.value)
    assert msg.startswith(f"{variable.name}={text.strip()!r}:") and "\n" not in msg
    with pytest.raises(InputError):
        settings.check_all()


def test_folders_derive_from_one_root(tmp_path, monkeypatch):
    monkeypatch.setenv("SAE_CACHE_DIR", str(tmp_path))
    folders = [
        settings.cache_dir(),
        settings.lock_dir(),
        settings.downloads_dir(),
        settings.uploads_dir(),
        settings.demo_dir(),
    ]
    assert all(f.is_relative_to(tmp_path) for f in folders)
    assert len(set(folders)) == len(folders)
    # downloads must not live inside the array cache: diskcache deletes files it does not know
    assert not settings.downloads_dir().is_relative_to(settings.cache_dir())
    monkeypatch.delenv("SAE_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert settings.base_dir() == tmp_path / "home" / ".cache"


def test_no_module_but_settings_reads_sae_variables():
    """The environment's SAE_* variables are read in settings.py alone (AST scan of the package
    and the UI): os.environ / os.getenv with an 'SAE_' string anywhere else is a second place."""
    offenders = []
    files = [*(ROOT / "sae_backend").rglob("*.py"), *(ROOT / "pages").glob("*.py"), ROOT / "app.py"]
    files += [*(ROOT / "dashboard").rglob("*.py")] if (ROOT / "dashboard").is_dir() else []
    for path in files:
        if path.name == "settings.py" and path.parent.name == "sae_backend":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            value = node.value if isinstance(node, ast.Constant) else None
            if isinstance(value, str) and value.startswith("SAE_") and value.isupper():
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {value}")
    assert offenders == []
