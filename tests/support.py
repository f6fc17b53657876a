"""Helpers shared by several test files (the source tests and the app tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sae_backend.errors import SourceError
from sae_backend.sources import resolve
from sae_backend.uri import parse_uri


def wandb_client_env(home: Path) -> dict[str, str]:
    """Settings for the real wandb client talking to the loopback fake: its own folders (no
    login of the person running the tests), no error reporting, fast failures instead of
    minutes of retries (see ../shared/testing/README.md)."""
    env = {
        "WANDB_SILENT": "true",
        "WANDB_ERROR_REPORTING": "false",
        "WANDB_DIR": str(home),
        "WANDB_CONFIG_DIR": str(home / "config"),
        "WANDB_CACHE_DIR": str(home / "cache"),
        "WANDB_DATA_DIR": str(home / "data"),
        "NETRC": str(home / "netrc"),
    }
    for what in ("GRAPHQL", "FILE_TRANSFER"):
        env[f"WANDB__{what}_RETRY_MAX"] = "1"
        env[f"WANDB__{what}_RETRY_WAIT_MIN_SECONDS"] = "0.1"
        env[f"WANDB__{what}_RETRY_WAIT_MAX_SECONDS"] = "0.5"
    return env


def expect_source_error(uri: str, *needles: str) -> str:
    """Resolving `uri` fails with one SourceError line containing every needle; returns it."""
    with pytest.raises(SourceError) as info:
        resolve(parse_uri(uri))
    msg = str(info.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, msg
    return msg
