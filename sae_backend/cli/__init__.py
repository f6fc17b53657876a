"""The command line over the API the app uses: `python -m sae_backend COMMAND ...`.

One module per command in this package, each with `register(subparsers)` (its arguments, and
`set_defaults(run=...)`); `COMMANDS` lists them in the order `--help` shows them, so a new
command is one module plus one entry there. Command modules import the heavy libraries
(torch, umap) inside `run`, so `--help` and a cached answer start fast.

Expected bad input (unknown URI, broken file, mismatched d_model, k out of range) prints one
line `error: ...` to stderr and exits 2; output files are written whole or not at all.
`precompute` goes on past a source or an item that fails (one `error:` line each) and then
exits 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Protocol

from ..errors import SAEError
from . import absorption, compare, families, frame, info, precompute, umap


class Command(Protocol):
    """A command module."""

    def register(self, sub: argparse._SubParsersAction) -> None:
        """Add this command's subparser, with `set_defaults(run=fn)`; fn(args) -> exit code."""
        ...


COMMANDS: tuple[Command, ...] = (info, compare, umap, precompute, families, absorption, frame)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.run(args))
    except SAEError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sae_backend",
        description="Inspect and compare SAE dictionaries (local paths, wandb:, hf:, saelens: URIs; "
        "SRC#POSITION picks one SAE from a file holding several).",
    )
    sub = p.add_subparsers(required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return p
