"""`compare A [B] -o out.csv`: each feature's max cosine (and top-k, and matching) as CSV."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import SAEError
from ..geometry.compare import MAX_K
from ..types import DIRECTIONS
from ._common import Bar, add_compute_options, add_load_options, load_sources, write_atomic

if TYPE_CHECKING:
    from ..dictionary import Dictionary
    from ..geometry.compare import Comparison
    from ..geometry.matching import Matching


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="max cosine (and top-k) of each feature of A against B, or within A",
        description="One CSV row per included feature of A (alive when the source says which "
        "are, else every non-zero direction): feature, max_cos, nearest, and with k > 1 the "
        "neighbours and their cosines; with --match the one-to-one matched feature and cosine.",
    )
    p.add_argument("src_a")
    p.add_argument("src_b", nargs="?", help="omit to compare A with itself (self excluded)")
    p.add_argument("--output", "-o", required=True, help="CSV file to write")
    p.add_argument("--k", type=int, default=1, help=f"neighbours per feature (1..{MAX_K})")
    p.add_argument("--directions", choices=DIRECTIONS, default="decoder")
    p.add_argument("--match", action="store_true", help="add the one-to-one matching")
    add_compute_options(p)
    add_load_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..geometry.compare import compare, match

    a, *rest = load_sources([args.src_a, *([] if args.src_b is None else [args.src_b])], args)
    b = rest[0] if rest else None
    if args.match and b is None:
        raise SAEError("--match needs two dictionaries (SRC_A SRC_B)")
    n_a = len(a.alive_index)
    with Bar(n_a, "top-k") as tick:
        res = compare(
            a, b, directions=args.directions, k=args.k, device=args.device,
            progress=tick, cache=not args.no_cache,
        )  # fmt: skip
    matched = None
    if b is not None and args.match:
        with Bar(n_a + len(b.alive_index), "matching") as tick:
            matched = match(
                a, b, directions=args.directions, device=args.device, progress=tick,
                forward=res if args.k >= 10 else None,
            )  # fmt: skip
    write_csv(Path(args.output), res, matched, args.k)
    print_summary(a, b, res, matched)
    return 0


def write_csv(path: Path, res: Comparison, matched: Matching | None, k: int) -> None:
    """The compare table, one row per included feature of A, written whole or not at all.

    The layout of the csv module's default dialect (comma, CRLF; no field here needs
    quoting), built a column at a time from Python lists: 46,080 rows in a fraction of
    csv.writer's time, which a cached answer would otherwise mostly spend here."""
    header = ["feature", "max_cos", "nearest"]
    columns = [
        [str(f) for f in res.a_index.tolist()],
        [f"{v:.7f}" for v in res.values[:, 0].tolist()],
        [str(j) for j in res.indices[:, 0].tolist()],
    ]
    if k > 1:
        header += ["neighbours", "cosines"]
        columns.append([" ".join(map(str, row)) for row in res.indices.tolist()])
        columns.append([" ".join(f"{v:.7f}" for v in row) for row in res.values.tolist()])
    if matched is not None:
        header += ["matched", "matched_cos"]
        columns.append([str(j) for j in matched.b_index.tolist()])
        columns.append(["" if c != c else f"{c:.7f}" for c in matched.cosine.tolist()])  # NaN: ""
    lines = [",".join(header), *(",".join(fields) for fields in zip(*columns, strict=True))]
    write_atomic(path, "\r\n".join(lines) + "\r\n")


def print_summary(
    a: Dictionary, b: Dictionary | None, res: Comparison, matched: Matching | None
) -> None:
    s = res.summary()
    what = f"{a.meta.source} within itself" if b is None else f"{a.meta.source} -> {b.meta.source}"
    above = ", ".join(f">{t:g}: {f:.3f}" for t, f in s.above.items())
    print(f"{what} ({res.directions}): {s.n} features vs {res.n_targets} targets")
    print(f"  max cos: mean (MMCS) {s.mean:.4f}, median {s.median:.4f}; fraction {above}")
    dc = res.double_counting((a if b is None else b).n_features)
    print(
        f"  distinct nearest targets: {dc.n_targets} "
        f"({dc.fraction_shared:.1%} of features share theirs; max in-degree {dc.max_in_degree})"
    )
    if matched is not None:
        quality = (
            "exact optimum"
            if matched.method == "hungarian"
            else f"optimal among top-k candidates; at most {matched.gap:.4g} total cosine "
            "below the unrestricted optimum"
        )
        print(
            f"  one-to-one ({matched.method}): mean matched cos {matched.mean:.4f} over "
            f"{matched.n_matched} pairs ({quality})"
        )
