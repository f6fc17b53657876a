"""What a worker runs: one precompute item, or one row shard of a comparison, through the very
functions the one-machine path calls, with a `Capture` cache so that the results travel back
to the driver as checked blobs instead of being stored on the worker's node.

No Ray here: the executor wraps these plain functions with `ray.remote`, and a test can call
them in-process. Dictionaries reach a task as its trailing arguments (Ray resolves object
references there, mapping each node's copy of the arrays from its object store without a
copy); inside an item's arguments they are `Slot(i)` placeholders.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from ..cache import encode_blob
from ..dictionary import Dictionary
from ..errors import SAEError, one_line
from ..geometry.compare import compare_entry
from ..geometry.topk import pick_precision
from ..types import Directions
from .capture import Capture

__all__ = ["Call", "Result", "Slot", "cpu_precision", "run_item", "run_shard", "settings_of"]


@dataclass(frozen=True)
class Slot:
    """Stands for the task's index-th dictionary argument."""

    index: int


@dataclass(frozen=True)
class Call:
    """A cached function and its arguments, every Dictionary replaced by a Slot, and without
    `cache` (the worker brings its own) and `progress` (nobody watches a worker's)."""

    func: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, call: Callable[..., Any] | None) -> tuple[Call, list[Dictionary]]:
        """(the call with Slots, the dictionaries they stand for) from a precompute item's
        `functools.partial`; dictionaries may sit in its arguments or in lists among them."""
        if not isinstance(call, partial):
            raise TypeError(f"a precompute item's call is a functools.partial, not {call!r}")
        dicts: list[Dictionary] = []

        def slot(x: Any) -> Any:
            if isinstance(x, Dictionary):
                for i, d in enumerate(dicts):
                    if d is x:
                        return Slot(i)
                dicts.append(x)
                return Slot(len(dicts) - 1)
            if isinstance(x, list | tuple):
                return type(x)(slot(v) for v in x)
            return x

        args = tuple(slot(x) for x in call.args)
        kwargs = {k: slot(v) for k, v in call.keywords.items() if k not in ("cache", "progress")}
        return cls(call.func, args, kwargs), dicts

    def bind(self, dicts: Sequence[Dictionary], **overrides: Any) -> partial:
        """The call with its dictionaries back in place and `overrides` among the keywords."""

        def fill(x: Any) -> Any:
            if isinstance(x, Slot):
                return dicts[x.index]
            if isinstance(x, list | tuple):
                return type(x)(fill(v) for v in x)
            return x

        kwargs = {k: fill(v) for k, v in self.kwargs.items()}
        return partial(self.func, *(fill(x) for x in self.args), **{**kwargs, **overrides})


@dataclass(frozen=True)
class Result:
    """What a task sends back: entries [(cache key, blob)] or the one-line SAEError that
    stopped it, how long it computed, and on which node."""

    entries: list[tuple[str, bytes]]
    error: str | None
    seconds: float
    node: str


def run_item(call: Call, device: str, env: Mapping[str, str], *dicts: Dictionary) -> Result:
    """Compute one precompute item on `device` ("cpu", "cuda": what Ray gave this task) with
    the driver's settings `env` (`executor.worker_env`)."""
    capture = Capture()
    start = time.perf_counter()
    try:
        with settings_of(env):
            call.bind(dicts, cache=capture, device=device)()
    except SAEError as e:  # the item failed; the run goes on (as on one machine)
        return Result([], one_line(e), time.perf_counter() - start, _node())
    return Result(capture.entries, None, time.perf_counter() - start, _node())


def run_shard(
    directions: Directions,
    k: int,
    rows: slice,
    device: str,
    env: Mapping[str, str],
    a: Dictionary,
    b: Dictionary | None,
) -> Result:
    """Compute rows `rows` of compare(a, b)'s entry; the entry's key is the driver's."""
    start = time.perf_counter()
    try:
        with settings_of(env):
            entry = compare_entry(a, b, directions=directions, k=k, device=device, rows=rows)
    except SAEError as e:
        return Result([], one_line(e), time.perf_counter() - start, _node())
    return Result([("", encode_blob(*entry))], None, time.perf_counter() - start, _node())


def cpu_precision() -> str:
    """The exact scoring path this worker's CPU takes for large passes (timed here)."""
    return pick_precision(torch.device("cpu"))


@contextlib.contextmanager
def settings_of(env: Mapping[str, str]) -> Iterator[None]:
    """The driver's settings in this process's environment for one task, then the node's
    again. Workers inherit their node's environment, and `settings` reads variables at each
    call, so this is all it takes; a worker runs one task at a time."""
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _node() -> str:
    """The Ray node this runs on; "local" outside Ray (a test calling a task in-process)."""
    ray = sys.modules.get("ray")  # a Ray worker has imported it; nothing here imports it
    if ray is None or not ray.is_initialized():
        return "local"
    return str(ray.get_runtime_context().get_node_id())
