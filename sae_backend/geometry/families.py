"""Feature families across a width ladder: which features split, survive, vanish or appear.

A ladder is a list of dictionaries at one hook, narrowest first. Between each neighbouring
pair (level l: dictionary l -> dictionary l + 1), every alive feature of the wider dictionary
takes as parent the alive feature of the narrower one whose decoder direction is nearest
(largest cosine; between equal cosines the lower index), kept if that cosine is at least
tau ("tree" mode). In "dag" mode it takes every narrower feature with cosine >= tau, so a
wide feature may have several parents.

Labels, per level: a narrower feature with no child has *vanished*, with one child is
*stable*, with two or more has *split*; a wider feature with no parent is *novel*. How much
of a parent's direction its children span is the `coverage` (below).

Everything comes from the weights alone, exactly: the top-k passes go through the blocked
`topk_cosine` engine (no n x n matrix), and are cached on disk. Tree mode reads the same
cached top-1 pass as `compare(wider, narrower)`, independent of tau, so changing tau costs
no new pass; dag mode caches its edges per tau.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple, get_args

import numpy as np

from ..cache import ArrayCache, make_key, through
from ..dictionary import Dictionary
from ..errors import InputError
from ..types import Float32, Float64, Int64, Progress
from .compare import check_comparable, compare
from .topk import topk_cosine

FamilyMode = Literal["tree", "dag"]
"""tree: each wider feature keeps only its nearest parent; dag: every parent with cos >= tau."""
FAMILY_MODES: tuple[FamilyMode, ...] = get_args(FamilyMode)

Label = Literal["vanished", "stable", "split", "novel"]
LABELS: tuple[Label, ...] = get_args(Label)

TAU = 0.5
DAG_FIRST_K = 16  # dag mode: neighbours asked per row first; rows that fill them are widened

__all__ = [
    "DAG_FIRST_K",
    "FAMILY_MODES",
    "LABELS",
    "TAU",
    "Chain",
    "Edge",
    "Families",
    "FamilyMode",
    "Label",
    "Level",
    "LevelCounts",
    "families",
    "split_coverage",
]


class Edge(NamedTuple):
    """One parent -> child link: `parent` in dictionary `level`, `child` in `level + 1`."""

    level: int
    parent: int
    child: int
    cosine: float


class LevelCounts(NamedTuple):
    """How many features of each label one level has (vanished/stable/split among the
    narrower dictionary's alive features, novel among the wider one's)."""

    level: int
    vanished: int
    stable: int
    split: int
    novel: int
    edges: int
    n_narrow: int
    n_wide: int


@dataclass(frozen=True)
class Level:
    """Parent -> child edges between dictionary `level` (narrower) and `level + 1` (wider).

    parent_index: alive feature indices of the narrower dictionary (ascending).
    child_index:  alive feature indices of the wider dictionary (ascending).
    parent, child, cosine: one entry per edge (feature indices; exact float32 decoder
                  cosines), ordered by parent, then cosine descending, then child.
    coverage:     per parent (aligned with `parent_index`): 1 - |r|^2 / |p|^2, where r is the
                  least-squares residual of the parent's unit decoder p on its children's unit
                  decoders (float64): the fraction of the parent's direction its children
                  span. cos^2 for one child; NaN for a parent with no child.
    """

    level: int
    parent_index: Int64[np.ndarray, " m"]
    child_index: Int64[np.ndarray, " w"]
    parent: Int64[np.ndarray, " e"]
    child: Int64[np.ndarray, " e"]
    cosine: Float32[np.ndarray, " e"]
    coverage: Float64[np.ndarray, " m"]

    @property
    def n_children(self) -> Int64[np.ndarray, " m"]:
        """Children of each narrower feature (aligned with `parent_index`)."""
        pos = np.searchsorted(self.parent_index, self.parent)
        return np.bincount(pos, minlength=len(self.parent_index)).astype(np.int64)

    @property
    def n_parents(self) -> Int64[np.ndarray, " w"]:
        """Parents of each wider feature (aligned with `child_index`; at most 1 in tree mode)."""
        pos = np.searchsorted(self.child_index, self.child)
        return np.bincount(pos, minlength=len(self.child_index)).astype(np.int64)

    @property
    def labels(self) -> np.ndarray:  # [m] str: vanished / stable / split
        """The narrower features' labels (aligned with `parent_index`)."""
        n = self.n_children
        return np.where(n == 0, "vanished", np.where(n == 1, "stable", "split"))

    @property
    def novel(self) -> np.ndarray:  # [w] bool
        """Which wider features have no parent (aligned with `child_index`)."""
        return self.n_parents == 0

    def counts(self) -> LevelCounts:
        n = self.n_children
        return LevelCounts(
            level=self.level,
            vanished=int((n == 0).sum()),
            stable=int((n == 1).sum()),
            split=int((n >= 2).sum()),
            novel=int(self.novel.sum()),
            edges=len(self.parent),
            n_narrow=len(self.parent_index),
            n_wide=len(self.child_index),
        )

    def edges(self) -> Iterator[Edge]:
        for p, c, v in zip(self.parent, self.child, self.cosine, strict=True):
            yield Edge(self.level, int(p), int(c), float(v))

    def children_of(
        self, feature: int
    ) -> tuple[Int64[np.ndarray, " c"], Float32[np.ndarray, " c"]]:
        """Children of narrower `feature` and their cosines (cosine descending)."""
        sel = np.flatnonzero(self.parent == feature)
        return self.child[sel], self.cosine[sel]

    def parents_of(self, feature: int) -> tuple[Int64[np.ndarray, " p"], Float32[np.ndarray, " p"]]:
        """Parents of wider `feature` and their cosines (cosine descending)."""
        sel = np.flatnonzero(self.child == feature)
        order = np.lexsort((self.parent[sel], -self.cosine[sel]))
        return self.parent[sel][order], self.cosine[sel][order]


@dataclass(frozen=True)
class Chain:
    """One feature's family through the whole ladder: ancestors up, descendants down.

    nodes: (dictionary, feature) pairs reached, the start included, sorted by dictionary
           then feature. Siblings and cousins are not followed (only straight up and down).
    edges: the edges between them, sorted by level, parent, then cosine descending.
    """

    dictionary: int
    feature: int
    nodes: tuple[tuple[int, int], ...]
    edges: tuple[Edge, ...]


@dataclass(frozen=True)
class Families:
    """Families across a ladder of dictionaries (narrowest first).

    sources, fingerprints, widths (n_features), n_alive: one entry per dictionary.
    levels:   levels[l] links dictionary l to l + 1.
    warnings: things worth telling the user that do not stop the computation (different
              hooks, widths that do not increase).
    """

    sources: tuple[str, ...]
    fingerprints: tuple[str, ...]
    widths: tuple[int, ...]
    n_alive: tuple[int, ...]
    tau: float
    mode: FamilyMode
    levels: tuple[Level, ...]
    warnings: tuple[str, ...]

    def counts(self) -> tuple[LevelCounts, ...]:
        """Label counts per level, for the counts chart and the README's table."""
        return tuple(level.counts() for level in self.levels)

    def edges(self) -> Iterator[Edge]:
        for level in self.levels:
            yield from level.edges()

    def labels_of(self, dictionary: int, feature: int) -> tuple[Label, ...]:
        """A feature's labels: 'novel' relative to the narrower dictionary (if it has no
        parent there), then vanished/stable/split relative to the wider one."""
        self._check_node(dictionary, feature)
        out: list[Label] = []
        if dictionary > 0:
            below = self.levels[dictionary - 1]
            if not np.any(below.child == feature):
                out.append("novel")
        if dictionary < len(self.levels):
            n = int(np.count_nonzero(self.levels[dictionary].parent == feature))
            out.append("vanished" if n == 0 else "stable" if n == 1 else "split")
        return tuple(out)

    def label_rows(self) -> Iterator[tuple[int, int, Label]]:
        """(dictionary, feature, label) for every label every alive feature has: each
        feature of dictionaries 0..L-2 gets one of vanished/stable/split, and each feature of
        dictionaries 1..L-1 without a parent gets 'novel' (so a middle feature may have two
        rows, a widest feature with a parent none). Sorted by dictionary, then feature, with
        'novel' first."""
        for i in range(len(self.sources)):
            novel: set[int] = set()
            if i > 0:
                below = self.levels[i - 1]
                novel = set(below.child_index[below.novel].tolist())
            role: dict[int, Label] = {}
            if i < len(self.levels):
                level = self.levels[i]
                role = dict(zip(level.parent_index.tolist(), level.labels.tolist(), strict=True))
            for f in sorted(novel | set(role)):
                if f in novel:
                    yield i, f, "novel"
                if f in role:
                    yield i, f, role[f]

    def chain(self, dictionary: int, feature: int) -> Chain:
        """Ancestors (following parents up) and descendants (children down) of one feature."""
        self._check_node(dictionary, feature)
        nodes = {(dictionary, feature)}
        edges: set[Edge] = set()
        frontier = {feature}
        for i in range(dictionary - 1, -1, -1):  # up: level i links dictionary i to i + 1
            level, up = self.levels[i], set()
            for f in frontier:
                for p, v in zip(*level.parents_of(f), strict=True):
                    edges.add(Edge(i, int(p), f, float(v)))
                    up.add(int(p))
            nodes |= {(i, p) for p in up}
            frontier = up
        frontier = {feature}
        for i in range(dictionary, len(self.levels)):  # down
            level, down = self.levels[i], set()
            for f in frontier:
                for c, v in zip(*level.children_of(f), strict=True):
                    edges.add(Edge(i, f, int(c), float(v)))
                    down.add(int(c))
            nodes |= {(i + 1, c) for c in down}
            frontier = down
        ordered = sorted(edges, key=lambda e: (e.level, e.parent, -e.cosine, e.child))
        return Chain(dictionary, feature, tuple(sorted(nodes)), tuple(ordered))

    def _check_node(self, dictionary: int, feature: int) -> None:
        if not 0 <= dictionary < len(self.sources):
            raise InputError(
                f"dictionary {dictionary} is not in the ladder (0..{len(self.sources) - 1})"
            )
        alive = (
            self.levels[dictionary].parent_index
            if dictionary < len(self.levels)
            else self.levels[-1].child_index
        )
        if not np.any(alive == feature):
            raise InputError(
                f"feature {feature} is not an alive feature of {self.sources[dictionary]}"
            )


def families(
    ladder: Sequence[Dictionary],
    *,
    tau: float = TAU,
    mode: FamilyMode = "tree",
    device: str = "auto",
    progress: Progress | None = None,
    cache: ArrayCache | None | bool = True,
) -> Families:
    """Families across `ladder` (dictionaries at one hook, narrowest first; at least two).

    tau: a parent is kept when its decoder cosine is >= tau, 0 < tau <= 1.
    mode: "tree" (nearest parent only) or "dag" (every parent >= tau; exact: rows whose first
    `DAG_FIRST_K` neighbours are all >= tau are searched again with more, until one is below).
    progress(done, total) counts wider features scanned over all levels.
    cache: True uses the default disk cache, False none, or a given ArrayCache.
    Raises InputError for fewer than two dictionaries, different d_model, tau out of range or
    a dictionary with no alive feature. Different hooks or widths that do not increase are
    not errors (a ladder across seeds or layers is still well defined) but are listed in
    `warnings`.
    """
    if len(ladder) < 2:
        raise InputError(f"families need at least two dictionaries, got {len(ladder)}")
    if mode not in FAMILY_MODES:
        raise InputError(f"mode must be 'tree' or 'dag', not {mode!r}")
    if not (isinstance(tau, int | float) and 0 < tau <= 1):
        raise InputError(f"tau must be in (0, 1], got {tau!r}")
    check_comparable(ladder, "decoder", "build families of")
    for d in ladder:
        if d.n_alive == 0:
            raise InputError(f"{d.meta.source} has no alive features")
    total = sum(len(d.alive_index) for d in ladder[1:])
    done = 0
    levels = []
    for i, (narrow, wide) in enumerate(zip(ladder[:-1], ladder[1:], strict=True)):

        def tick(n: int, _total: int, base: int = done) -> None:
            if progress is not None:
                progress(base + n, total)

        if mode == "tree":
            parent, child, cosine = _tree_edges(narrow, wide, tau, device, tick, cache)
        else:
            parent, child, cosine = _dag_edges(narrow, wide, tau, device, tick, cache)
        done += len(wide.alive_index)
        order = np.lexsort((child, -cosine, parent))
        parent, child, cosine = parent[order], child[order], cosine[order]
        levels.append(
            Level(
                level=i,
                parent_index=narrow.alive_index,
                child_index=wide.alive_index,
                parent=parent,
                child=child,
                cosine=cosine,
                coverage=split_coverage(
                    narrow.decoder, wide.decoder, narrow.alive_index, parent, child
                ),  # fmt: skip
            )
        )
    return Families(
        sources=tuple(d.meta.source for d in ladder),
        fingerprints=tuple(d.fingerprint for d in ladder),
        widths=tuple(d.n_features for d in ladder),
        n_alive=tuple(d.n_alive for d in ladder),
        tau=float(tau),
        mode=mode,
        levels=tuple(levels),
        warnings=tuple(_ladder_warnings(ladder)),
    )


def _ladder_warnings(ladder: Sequence[Dictionary]) -> Iterator[str]:
    hooks = {d.meta.hook for d in ladder if d.meta.hook is not None}
    if len(hooks) > 1:
        yield f"the ladder mixes hooks ({', '.join(sorted(hooks))}): families across hooks"
    for narrow, wide in zip(ladder[:-1], ladder[1:], strict=True):
        if wide.n_features <= narrow.n_features:
            yield (
                f"{wide.meta.source} ({wide.n_features} features) is not wider than "
                f"{narrow.meta.source} ({narrow.n_features}): order the ladder narrowest first"
            )


def _tree_edges(
    narrow: Dictionary,
    wide: Dictionary,
    tau: float,
    device: str,
    progress: Progress,
    cache: ArrayCache | None | bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each wider feature's nearest narrower feature, kept when >= tau: the top-1 pass of
    `compare(wide, narrow)` (cached there, shared with the Similarity page)."""
    res = compare(wide, narrow, directions="decoder", k=1, device=device, progress=progress,
                  cache=cache)  # fmt: skip
    keep = res.max_cos >= tau
    return res.nearest[keep], res.a_index[keep], res.max_cos[keep]


def _dag_edges(
    narrow: Dictionary,
    wide: Dictionary,
    tau: float,
    device: str,
    progress: Progress,
    cache: ArrayCache | None | bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (narrower, wider) pair with decoder cosine >= tau, exactly."""
    ia, ib = wide.alive_index, narrow.alive_index

    def compute() -> tuple[dict[str, np.ndarray], dict]:
        a, b = wide.decoder[ia], narrow.decoder[ib]
        rows = np.arange(len(ia))
        k = min(DAG_FIRST_K, len(ib))
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        first = True
        while len(rows):
            res = topk_cosine(a[rows], b, k, device=device, progress=progress if first else None)
            first = False
            full = res.values[:, -1] >= tau  # all k were >= tau: there may be more
            done = ~full if k < len(ib) else np.ones(len(rows), bool)
            r, j = np.nonzero(res.values[done] >= tau)
            parts.append((ib[res.indices[done][r, j]], ia[rows[done][r]], res.values[done][r, j]))
            rows, k = rows[~done], min(4 * k, len(ib))
        parent, child, cosine = (np.concatenate(x) for x in zip(*parts, strict=True))
        return {"parent": parent, "child": child, "cosine": cosine.astype(np.float32)}, {}

    key = make_key("families_dag", narrow.fingerprint, wide.fingerprint, tau=float(tau))
    arrays, _ = through(cache, key, compute)
    return arrays["parent"], arrays["child"], arrays["cosine"]


_SVD_BATCH = 4096  # parents per batched SVD


def split_coverage(
    narrow_decoder: Float32[np.ndarray, "n d"],
    wide_decoder: Float32[np.ndarray, "w d"],
    parent_index: Int64[np.ndarray, " m"],
    parent: Int64[np.ndarray, " e"],
    child: Int64[np.ndarray, " e"],
) -> Float64[np.ndarray, " m"]:
    """For each feature in `parent_index`: 1 - |r|^2 / |p|^2, r the least-squares residual of
    its decoder row p on the decoder rows of its children (edges `parent` -> `child`), in
    float64; NaN for a parent with no child.

    Computed as the squared norm of p's projection onto the children's column space, from
    batched SVDs of parents with the same number of children (rank-revealing, as numpy's
    lstsq: singular values below eps * max(d, c) * s_max count as zero).
    """
    out = np.full(len(parent_index), np.nan)
    if len(parent) == 0:
        return out
    pos = np.searchsorted(parent_index, parent)
    order = np.argsort(pos, kind="stable")
    pos, kids = pos[order], child[order]
    starts = np.flatnonzero(np.r_[True, pos[1:] != pos[:-1]])
    sizes = np.diff(np.r_[starts, len(pos)])
    for size in np.unique(sizes):
        group = starts[sizes == size]
        for g0 in range(0, len(group), _SVD_BATCH):
            s0 = group[g0 : g0 + _SVD_BATCH]
            who = pos[s0]
            p = narrow_decoder[parent_index[who]].astype(np.float64)  # [g, d]
            cols = kids[s0[:, None] + np.arange(size)]  # [g, size]
            c = wide_decoder[cols].astype(np.float64).transpose(0, 2, 1)  # [g, d, size]
            u, s, _ = np.linalg.svd(c, full_matrices=False)
            tol = np.finfo(np.float64).eps * max(c.shape[1], size) * s[:, :1]
            proj = np.einsum("gdk,gd->gk", u, p) * (s > tol)
            pp = np.einsum("gd,gd->g", p, p)
            out[who] = 1.0 - np.maximum(pp - np.einsum("gk,gk->g", proj, proj), 0.0) / pp
    return out
