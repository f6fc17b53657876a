"""Fill the disk cache with everything the dashboard's pages compute, before visitors come.

`precompute(dicts)` takes the dictionaries in the order the dashboard will list them and,
for each requested direction, runs what the pages ask for with the pages' own arguments:

* compare:  `compare(a, None)` for each dictionary (Home, the Similarity diagonal) and
            `compare(a, b)` for every ordered pair (Similarity, its heatmap, UMAP colours);
            k=1 throughout, as the pages use; where one pass gives both directions
            (`compare_with_reverse`), (b, a) is then found cached.
* null:     `random_null(n_a, n_b, d)` for the sizes of those comparisons (Similarity's grey
            histograms); the same for both directions, so each size is computed once.
* match:    `match(a, b)` for every ordered pair (Similarity's one-to-one histograms, the
            Neighbours page's partner).
* umap:     `umap_embedding` with the UMAP page's defaults for its default selection (the
            first two dictionaries, in list order) and for each dictionary alone. Other
            selections are computed on demand (`python -m sae_backend umap` adds more).

Items that no page could compute are listed as "skipped", not attempted: pairs of different
d_model, encoder items where a dictionary involved has no encoder. An item that raises an
SAEError is "failed" and the rest still run. Every item goes through the same cached function
the pages call, so a second run finds everything "cached" and costs lookups only.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

from .cache import ArrayCache, resolve_cache
from .catalogue import Catalogue, catalogue
from .dictionary import Dictionary
from .errors import InputError, SAEError
from .geometry.compare import compare, compare_with_reverse, match
from .geometry.stats import random_null
from .projection import UMAP_DEFAULTS, umap_embedding
from .types import DIRECTIONS, Directions, Progress

__all__ = [
    "KINDS",
    "Item",
    "Outcome",
    "catalogue_sources",
    "plan",
    "precompute",
]

KINDS = ("compare", "null", "match", "umap")  # in the order they run: cheap and needed first
UMAP_PAGE_SELECTION = 2  # the UMAP page's default selection: the first two dictionaries


@dataclass(frozen=True)
class Item:
    """One cached computation: `call()` computes it or reads it from the cache.

    progress: whether `call` takes a progress(done, total) keyword. `skip` (then `call` is
    None) says why no page could ask for it.
    """

    kind: str
    label: str
    call: Callable[..., Any] | None = None
    progress: bool = True
    skip: str | None = None


@dataclass(frozen=True)
class Outcome:
    """What happened to one item: status is one of STATUSES; message says why for the last two."""

    STATUSES: ClassVar[tuple[str, ...]] = ("computed", "cached", "failed", "skipped")

    kind: str
    label: str
    status: str
    seconds: float
    message: str | None = None


def plan(
    dicts: Mapping[str, Dictionary],
    *,
    directions: Sequence[Directions] = DIRECTIONS,
    kinds: Sequence[str] = KINDS,
    device: str = "auto",
    cache: ArrayCache,
) -> list[Item]:
    """The items for `dicts` (name -> Dictionary, in dashboard order), kinds in KINDS order."""
    for what, given, known in (("directions", directions, DIRECTIONS), ("kinds", kinds, KINDS)):
        unknown = [x for x in given if x not in known]
        if unknown:
            raise InputError(f"unknown {what} {unknown}; known: {', '.join(known)}")
    ctx = _Context(dict(dicts), tuple(d for d in DIRECTIONS if d in directions), device, cache)
    return [item for kind in KINDS if kind in kinds for item in _PLANNERS[kind](ctx)]


def precompute(
    dicts: Mapping[str, Dictionary],
    *,
    directions: Sequence[Directions] = DIRECTIONS,
    kinds: Sequence[str] = KINDS,
    device: str = "auto",
    cache: ArrayCache | bool = True,
    progress: Callable[[Item], AbstractContextManager[Progress | None]] | None = None,
    report: Callable[[int, int, Outcome], None] | None = None,
) -> list[Outcome]:
    """Run `plan(...)` item by item into `cache` (True: the default cache the pages use).

    progress(item) gives a context manager yielding that item's progress(done, total), or
    None; report(i, n, outcome) is called after each item. An item counts as "computed" when
    it made the cache run a computation (its miss counter grew), else "cached"; so use a
    cache instance nothing else is computing through at the same time.
    """
    store = resolve_cache(cache)
    if store is None:
        raise InputError("precompute fills a cache: pass cache=True or an ArrayCache")
    items = plan(dicts, directions=directions, kinds=kinds, device=device, cache=store)
    bar = progress or (lambda _item: contextlib.nullcontext(None))
    outcomes = []
    for i, item in enumerate(items, 1):
        outcome = _run(item, store, bar)
        outcomes.append(outcome)
        if report is not None:
            report(i, len(items), outcome)
    return outcomes


def _run(
    item: Item,
    store: ArrayCache,
    bar: Callable[[Item], AbstractContextManager[Progress | None]],
) -> Outcome:
    if item.call is None:
        return Outcome(item.kind, item.label, "skipped", 0.0, item.skip)
    misses = store.stats.misses
    start = time.perf_counter()
    try:
        with bar(item) as tick:
            if item.progress:
                item.call(progress=tick)
            else:
                item.call()
    except SAEError as e:
        return Outcome(item.kind, item.label, "failed", time.perf_counter() - start, str(e))
    status = "computed" if store.stats.misses > misses else "cached"
    return Outcome(item.kind, item.label, status, time.perf_counter() - start)


# --------------------------------------------------------------------------------------------
# Planners: one per kind, each yielding the items the pages would compute


@dataclass(frozen=True)
class _Context:
    dicts: dict[str, Dictionary]
    directions: tuple[Directions, ...]
    device: str
    cache: ArrayCache

    def comparisons(self) -> Iterator[tuple[str, str | None]]:
        """(a, b) names of every comparison a page shows: within each (b None), then pairs."""
        names = list(self.dicts)
        yield from ((a, None) for a in names)
        yield from ((a, b) for a in names for b in names if a != b)

    def unfit(self, names: Sequence[str], directions: str) -> str | None:
        """Why the pages cannot compute over these dictionaries by `directions`, or None."""
        ds = [self.dicts[n] for n in names]
        if len({d.d_model for d in ds}) > 1:
            sizes = ", ".join(f"{n} {d.d_model}" for n, d in zip(names, ds, strict=True))
            return f"different d_model: {sizes}"
        if directions == "encoder":
            lacking = [n for n, d in zip(names, ds, strict=True) if not d.has_encoder]
            if lacking:
                return f"no encoder directions in {', '.join(lacking)}"
        return None

    @property
    def where(self) -> dict[str, Any]:
        """The device and cache arguments every item passes."""
        return {"device": self.device, "cache": self.cache}

    def item(
        self, kind: str, label: str, names: Sequence[str], directions: str, call: Callable
    ) -> Item:
        """An item running `call`, or a skipped one when the pages cannot compute it."""
        why = self.unfit(names, directions)
        return Item(kind, label, skip=why) if why else Item(kind, label, call)


def _compare_items(ctx: _Context) -> Iterator[Item]:
    for dirs in ctx.directions:
        for a, b in ctx.comparisons():
            label = f"{a} within itself ({dirs})" if b is None else f"{a} -> {b} ({dirs})"
            names = [a] if b is None else [a, b]
            other = None if b is None else ctx.dicts[b]
            kw = {"directions": dirs, "k": 1, **ctx.where}
            if other is None:
                call = partial(compare, ctx.dicts[a], None, **kw)
            else:  # B -> A in the same pass where nearly free, as the pages compute it
                call = partial(compare_with_reverse, ctx.dicts[a], other, **kw)
            yield ctx.item("compare", label, names, dirs, call)


def _null_items(ctx: _Context) -> Iterator[Item]:
    """One per distinct (n_a, n_b, d) among the comparisons some direction can show."""
    seen = set()
    for a, b in ctx.comparisons():
        names = [a] if b is None else [a, b]
        if all(ctx.unfit(names, dirs) for dirs in ctx.directions):
            continue  # no page shows this comparison, so none shows its null either
        n_a = len(ctx.dicts[a].alive_index)
        n_b = None if b is None else len(ctx.dicts[b].alive_index)
        d = ctx.dicts[a].d_model
        if (n_a, n_b, d) not in seen:
            seen.add((n_a, n_b, d))
            what = f"{a} within itself" if b is None else f"{a} -> {b}"
            label = f"{n_a} x {'itself' if n_b is None else n_b}, d {d} (as {what})"
            call = partial(random_null, n_a, n_b, d, **ctx.where)
            yield Item("null", label, call, progress=False)


def _match_items(ctx: _Context) -> Iterator[Item]:
    for dirs in ctx.directions:
        for a, b in ctx.comparisons():
            if b is not None:
                call = partial(match, ctx.dicts[a], ctx.dicts[b], directions=dirs, **ctx.where)
                yield ctx.item("match", f"{a} -> {b} ({dirs})", [a, b], dirs, call)


def _umap_items(ctx: _Context) -> Iterator[Item]:
    """The page's default selection (the first two), then each dictionary alone."""
    names = list(ctx.dicts)
    selections = [names[:UMAP_PAGE_SELECTION]] + [[n] for n in names]
    selections = [s for i, s in enumerate(selections) if s not in selections[:i]]
    for dirs in ctx.directions:
        for sel in selections:
            chosen = [ctx.dicts[n] for n in sel]
            call = partial(umap_embedding, chosen, directions=dirs, **UMAP_DEFAULTS, **ctx.where)
            yield ctx.item("umap", f"{' + '.join(sel)} ({dirs})", sel, dirs, call)


_PLANNERS: dict[str, Callable[[_Context], Iterator[Item]]] = {
    "compare": _compare_items,
    "null": _null_items,
    "match": _match_items,
    "umap": _umap_items,
}


# --------------------------------------------------------------------------------------------
# Sources from the paper's catalogue


def catalogue_sources(
    layer: int,
    via: str = "wandb",
    criterion: str | None = None,
    cat: Catalogue | None = None,
) -> tuple[dict[str, str], list[str]]:
    """({name: URI}, notes) for the paper's SAEs of one layer, one per W&B run.

    Names are the Home page's catalogue names ("L6-e2e-ce"); a run listed under several
    criteria keeps its first. `via` is a kind of `Entry.uris()` ("wandb", "hf", "hf_saelens",
    "saelens"); runs without a copy of that kind are left out, each with a note.
    """
    cat = cat or catalogue()
    if layer not in cat.layers:
        raise InputError(f"the catalogue has layers {', '.join(map(str, cat.layers))}, not {layer}")
    if criterion is not None and criterion not in cat.criteria:
        raise InputError(f"unknown criterion {criterion!r}; known: {', '.join(cat.criteria)}")
    kinds = ("wandb", "hf", "hf_saelens", "saelens")
    if via not in kinds:
        raise InputError(f"unknown --via {via!r}; use one of {', '.join(kinds)}")
    sources: dict[str, str] = {}
    notes: list[str] = []
    runs: set[str] = set()
    for e in cat.select(criterion=criterion, layer=layer):
        if e.run_id in runs:
            continue
        runs.add(e.run_id)
        name = f"L{e.layer}-{e.sae_type}-{e.criterion}"
        uri = e.uris().get(via)
        if uri is None:
            notes.append(f"{name} (W&B run {e.run_id}) has no {via} copy; left out")
        else:
            sources[name] = uri
    return sources, notes
