"""`precompute` over Ray: the one-machine plan, each item (or each row shard of a huge
comparison) a Ray task, every result stored by the driver under the one-machine key.

How a run goes:

1. `precompute.plan(...)`, exactly as on one machine. Each item is probed on the driver
   through its own cached function with a `Probe` cache: a stored item is "cached", one whose
   arguments do not fit is "failed" (the same one-line SAEError), the rest are to do, each
   with the key its function built (no key logic is repeated here).
2. Only when something is to do: connect, put each dictionary involved into the object store
   once (Ray copies it to a node once; every worker there maps that copy, no pickle of the
   arrays per task), and submit one task per item, or one per row shard for a comparison
   whose A has more than `shard_rows` included features (`geometry.shards`).
3. As tasks finish, the driver checks each returned blob (its checksum), stores it under its
   key in its own cache, reports the item and advances the progress. Ray retries a task whose
   worker or node died (`RETRIES`); one that still fails is a "failed" item, the rest go on.

A rerun computes only what is missing: keys depend on content and parameters only, and the
cache holds only complete, verified results, written by the driver alone.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import diskcache

from .. import settings
from ..cache import ArrayCache, CorruptEntry, decode_blob, resolve_cache
from ..dictionary import Dictionary
from ..errors import ClusterError, InputError, SAEError, one_line
from ..geometry.compare import compare
from ..geometry.shards import merge_entries, row_shards
from ..geometry.topk import SMALL_PAIRS, default_block_rows
from ..precompute import KINDS, Item, Outcome, plan
from ..projection import umap_embedding
from ..types import DIRECTIONS, Directions, Progress
from . import SHARD_ROWS
from .capture import Missing, Probe
from .cluster import Cluster, check_reachable, connected
from .tasks import Call, Result, cpu_precision, run_item, run_shard

__all__ = ["ACCELERATED", "RETRIES", "precompute_on_ray", "worker_env"]

RETRIES = 3  # Ray re-runs a task this many times when its worker or node dies
ACCELERATED = frozenset({"compare", "null", "match"})  # top-k passes: one GPU each where the
# cluster has GPUs; UMAP's epochs run on CPUs, so its tasks take a CPU

Report = Callable[[int, int, Outcome], None]


FORWARDED = (settings.TOPK_BLOCK_MB, settings.TOPK_ENGINE, settings.TOPK_PRECISION)  # when set


def worker_env() -> dict[str, str]:
    """The settings every task of a run gets (as an argument), whatever its node's
    environment says.

    The heavy-work lock (`activity.exclusive`) keeps one machine's processes from running
    big passes on one device at once; under Ray each task has its own CPU or GPU, and that
    lock would only serialise tasks sharing a node, so it is lifted. The block size is the
    driver's, so that row shards, aligned to it here, line up with the workers' blocks; the
    top-k engine and scoring path too, when the driver names them.
    """
    env = {settings.HEAVY_PAIRS.name: str(2**62)}
    for variable in FORWARDED:
        raw = os.environ.get(variable.name, "").strip()
        if raw:
            variable.get()  # a bad value fails here, once, as one line
            env[variable.name] = raw
    return env


def precompute_on_ray(
    dicts: Mapping[str, Dictionary],
    *,
    address: str | None = None,
    directions: Sequence[Directions] = DIRECTIONS,
    kinds: Sequence[str] = KINDS,
    device: str = "auto",
    cache: ArrayCache | bool = True,
    shard_rows: int = SHARD_ROWS,
    progress: Progress | None = None,
    report: Report | None = None,
    log: Callable[[str], None] | None = None,
) -> list[Outcome]:
    """`precompute(...)` with the computing done by Ray tasks: on the cluster whose head is at
    `address` ("HOST:PORT"), or on a Ray started here for this run (None). Outcomes come
    back in plan order; report(i, n, outcome) is called as each is known (the cached ones
    first), progress(done, total) counts items. One ClusterError line for an address
    nothing answers at, before any work."""
    store = resolve_cache(cache)
    if store is None:
        raise InputError("precompute fills a cache: pass cache=True or an ArrayCache")
    if shard_rows < 1:
        raise InputError(f"shard_rows must be at least 1, got {shard_rows}")
    _check_device(device)
    if address is not None:
        check_reachable(address)  # fail in seconds, before the probing
    items = plan(dicts, directions=directions, kinds=kinds, device=device, cache=store)
    run = _Run(items, store, progress, report)
    todo = [(i, key) for i, item in enumerate(items) if (key := run.probe(i, item)) is not None]
    if todo:
        with connected(address) as cluster:
            if log is not None:
                log(f"{cluster.describe()}; {len(todo)} of {len(items)} items to compute")
            run.compute(cluster, todo, device, shard_rows)
    return run.outcomes()


def _check_device(device: str) -> None:
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise InputError(
            f"with Ray, --device is auto, cpu or cuda (each GPU task gets a GPU of its own), "
            f"not {device!r}"
        )


@dataclass
class _Job:
    """One item being computed: its key, its tasks' results so far, how many it waits for."""

    index: int
    key: str
    shards: int  # 0: one task running the item's own function; else that many row shards
    parts: dict[int, Result] = field(default_factory=dict)
    failed: bool = False


class _Run:
    """The driver's state for one run: outcomes so far, the cache, the callbacks."""

    def __init__(
        self,
        items: list[Item],
        store: ArrayCache,
        progress: Progress | None,
        report: Report | None,
    ):
        self.items, self.store = items, store
        self.progress, self.report = progress, report
        self.done: dict[int, Outcome] = {}

    def outcomes(self) -> list[Outcome]:
        return [self.done[i] for i in range(len(self.items))]

    def finish(self, index: int, status: str, seconds: float, message: str | None = None) -> None:
        item = self.items[index]
        outcome = Outcome(item.kind, item.label, status, seconds, message)
        self.done[index] = outcome
        if self.report is not None:
            self.report(len(self.done), len(self.items), outcome)
        if self.progress is not None:
            self.progress(len(self.done), len(self.items))

    def probe(self, index: int, item: Item) -> str | None:
        """Settle a skipped, cached or failing item here; else return the key to compute."""
        if item.call is None:
            self.finish(index, "skipped", 0.0, item.skip)
            return None
        start = time.perf_counter()
        try:
            item.call(cache=Probe(self.store))
        except Missing as missing:
            return missing.key
        except SAEError as e:
            self.finish(index, "failed", time.perf_counter() - start, str(e))
            return None
        self.finish(index, "cached", time.perf_counter() - start)
        return None

    # -- on the cluster ----------------------------------------------------------------------

    def compute(
        self, cluster: Cluster, todo: list[tuple[int, str]], device: str, shard_rows: int
    ) -> None:
        """Submit every item to do, then take results as they come, until none is pending."""
        if device.startswith("cuda") and cluster.gpus == 0:
            raise ClusterError(f"--device {device}, but the Ray cluster has no GPUs")
        pending = self._submit(cluster, todo, device != "cpu" and cluster.gpus > 0, shard_rows)
        ray = cluster.ray
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                job, n = pending.pop(ref)
                if job.failed:
                    continue
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayTaskError:
                    raise  # a bug in a task (SAEErrors come back as results): its traceback
                except ray.exceptions.RayError as e:  # retries spent: a worker or node died
                    job.failed = True
                    why = f"{type(e).__name__} after {RETRIES} retries: {one_line(e, 160)}"
                    self.finish(job.index, "failed", 0.0, why)
                    continue
                self._collect(job, n, result)

    def _submit(
        self, cluster: Cluster, todo: list[tuple[int, str]], use_gpu: bool, shard_rows: int
    ) -> dict[Any, tuple[_Job, int]]:
        """One task per item, or one per row shard; {object ref: (job, shard number)}."""
        ray = cluster.ray
        refs: dict[int, Any] = {}  # id(dictionary) -> its object reference, put once

        def put(d: Dictionary | None) -> Any:
            if d is not None and id(d) not in refs:
                refs[id(d)] = ray.put(d)
            return None if d is None else refs[id(d)]

        plans = []
        for index, _ in todo:
            item = self.items[index]
            call, ds = Call.of(item.call)
            where = "cuda" if use_gpu and item.kind in ACCELERATED else "cpu"
            plans.append((item.kind, call, ds, where, _row_shards(call, ds, where, shard_rows)))
        env = {"cpu": worker_env(), "cuda": worker_env()}
        cpu_sides = [_largest_side(call, ds) for _, call, ds, where, _ in plans if where == "cpu"]
        if max(cpu_sides, default=0) ** 2 >= SMALL_PAIRS:  # a pass where "auto" would time
            env["cpu"] = _fixed_precision(ray, env["cpu"])
        item_task, shard_task = ray.remote(run_item), ray.remote(run_shard)
        pending: dict[Any, tuple[_Job, int]] = {}
        for (index, key), (kind, call, ds, where, shards) in zip(todo, plans, strict=True):
            gpu = where == "cuda"
            options = {"num_cpus": 1, "num_gpus": 1 if gpu else 0, "max_retries": RETRIES}
            job = _Job(index, key, len(shards))
            if not shards:
                task = item_task.options(name=f"sae:{kind}", **options)
                pending[task.remote(call, where, env[where], *map(put, ds))] = (job, 0)
                continue
            task = shard_task.options(name=f"sae:{kind}-shard", **options)
            a, b = put(ds[0]), put(ds[1] if len(ds) > 1 else None)
            directions, k = call.kwargs["directions"], call.kwargs["k"]
            for n, rows in enumerate(shards):
                pending[task.remote(directions, k, rows, where, env[where], a, b)] = (job, n)
        return pending

    def _collect(self, job: _Job, n: int, result: Result) -> None:
        """Take one task's result; store the item once all of its tasks are in."""
        if result.error is not None:
            job.failed = True
            self.finish(job.index, "failed", result.seconds, result.error)
            return
        job.parts[n] = result
        if len(job.parts) < max(1, job.shards):
            return
        seconds = sum(r.seconds for r in job.parts.values())
        try:
            if job.shards:
                parts = [decode_blob(job.parts[i].entries[0][1]) for i in range(job.shards)]
                arrays, meta = merge_entries(parts)
                self.store.set(job.key, arrays, meta)
            else:
                entries = job.parts[0].entries
                if job.key not in {key for key, _ in entries}:
                    raise CorruptEntry(
                        "the worker computed other keys than the driver (is the same "
                        "sae_backend installed on every node?)"
                    )
                for key, blob in entries:
                    self.store.set(key, *decode_blob(blob))
        except (CorruptEntry, ValueError) as e:  # a damaged blob, shards that disagree
            self.finish(job.index, "failed", seconds, f"result not stored: {e}")
            return
        except (OSError, sqlite3.Error, diskcache.Timeout) as e:  # the driver's disk
            self.finish(job.index, "failed", seconds, f"result not stored: {one_line(e, 160)}")
            return
        self.finish(job.index, "computed", seconds)


def _largest_side(call: Call, ds: list[Dictionary]) -> int:
    """The most rows on one side of the item's passes: its dictionaries' included features,
    or a null's sizes (its whole-number arguments)."""
    sizes = [len(d.alive_index) for d in ds] + [x for x in call.args if type(x) is int]
    return sum(sizes) if call.func is umap_embedding else max(sizes, default=0)


def _fixed_precision(ray: Any, env: dict[str, str]) -> dict[str, str]:
    """`env` with the CPU scoring path fixed for the run. On CPUs "auto" is a timing, made
    anew in each process, and the bf16 and float32 paths can differ in the last bit: the
    shards of one comparison must take one path to merge into one pass's bits, and a run
    should give the same bits whichever worker took an item. One CPU task times it for all
    (unless the driver set SAE_TOPK_PRECISION)."""
    if settings.TOPK_PRECISION.name in env:
        return env
    chosen = ray.get(ray.remote(cpu_precision).options(num_cpus=1).remote())
    return {**env, settings.TOPK_PRECISION.name: chosen}


def _row_shards(call: Call, ds: list[Dictionary], device_type: str, shard_rows: int) -> list[slice]:
    """The row shards of a comparison whose A has more than `shard_rows` included features
    (aligned to the block size its tasks will use), else [] (one task for the whole item)."""
    if call.func is not compare:
        return []
    n_a = len(ds[0].alive_index)
    n_b = len(ds[1].alive_index) if len(ds) > 1 else n_a
    if n_a <= shard_rows:
        return []
    shards = row_shards(n_a, shard_rows, default_block_rows(device_type, n_b))
    return shards if len(shards) > 1 else []
