"""`compare A [B] -o out.csv`: each feature's max cosine (and top-k, and matching) as CSV."""

from __future__ import annotations

import argparse
import math
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import SAEError
from ..geometry.compare import MAX_K
from ..geometry.matching import K_CANDIDATES
from ..types import DIRECTIONS
from ._common import Bar, add_compute_options, add_load_options, load_sources, write_atomic

if TYPE_CHECKING:
    from ..dictionary import Dictionary
    from ..geometry.compare import Comparison
    from ..geometry.matching import Matching
    from ..geometry.shared import MatchedPairs


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
    p.add_argument(
        "--match-json",
        metavar="PATH",
        help="with --match: the full matching with provenance as JSON (certified, objective, "
        "method, sources, pairs, fingerprints, tau, ...)",
    )
    p.add_argument(
        "--match-csv", metavar="PATH", help="with --match: one row per matched pair: "
        "a,b,decoder_cos,encoder_cos,shared",
    )  # fmt: skip
    p.add_argument(
        "--tau",
        type=float,
        default=0.7,
        help="a matched pair is shared when its decoder and encoder cosines reach this "
        "(decoder only when either dictionary has no encoder); default 0.7",
    )
    add_compute_options(p)
    add_load_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..geometry.compare import compare, match
    from ..geometry.shared import matched_pairs

    if (args.match_json or args.match_csv) and not args.match:
        raise SAEError("--match-json and --match-csv need --match")
    if not -1.0 <= args.tau <= 1.0:
        raise SAEError(f"--tau must be a cosine between -1 and 1, got {args.tau}")
    a, *rest = load_sources([args.src_a, *([] if args.src_b is None else [args.src_b])], args)
    b = rest[0] if rest else None
    if args.match and b is None:
        raise SAEError("--match needs two dictionaries (SRC_A SRC_B)")
    n_a = len(a.alive_index)
    # with --match, one top-k pass wide enough to be the matching's candidates serves both
    k = args.k if b is None or not args.match else max(args.k, _match_k(a, b))
    with Bar(n_a, "top-k") as tick:
        res = compare(
            a, b, directions=args.directions, k=k, device=args.device,
            progress=tick, cache=not args.no_cache,
        )  # fmt: skip
    matched, pairs = None, None
    texts: dict[Path, str] = {}
    if b is not None and args.match:
        with Bar(n_a + len(b.alive_index), "matching") as tick:
            matched = match(
                a, b, directions=args.directions, device=args.device, progress=tick,
                forward=res, k_candidates=min(k, _match_k(a, b)), cache=not args.no_cache,
            )  # fmt: skip
        pairs = matched_pairs(a, b, matched, args.directions, cache=not args.no_cache)
        texts = _match_exports(args, a, b, matched, pairs)
    res = replace(res, values=res.values[:, : args.k], indices=res.indices[:, : args.k])
    write_csv(Path(args.output), res, matched, args.k)
    for path, text in texts.items():
        write_atomic(path, text)
    print_summary(a, b, res, matched)
    if pairs is not None:
        print_shared(pairs, args)
    return 0


def _match_k(a: Dictionary, b: Dictionary) -> int:
    """Candidates per feature for the certified matching (capped by B's size and MAX_K)."""
    return max(1, min(K_CANDIDATES, len(b.alive_index), MAX_K))


def _match_exports(
    args: argparse.Namespace, a: Dictionary, b: Dictionary, m: Matching, pairs: MatchedPairs
) -> dict[Path, str]:
    """The --match-json / --match-csv texts, built before anything is written."""
    from ..matching_export import matching_document, matching_records, to_csv, to_json

    out: dict[Path, str] = {}
    if args.match_json:
        doc = matching_document(a, b, m, pairs, tau=args.tau, sources=(args.src_a, args.src_b))
        out[Path(args.match_json)] = to_json(doc)
    if args.match_csv:
        out[Path(args.match_csv)] = to_csv(matching_records(pairs, args.tau))
    return out


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
        if matched.method == "hungarian":
            quality = "exact optimum"
        elif matched.certified:
            quality = (
                f"certified optimal over all pairs: bound {matched.bound:.6f} - objective "
                f"{matched.total:.6f} <= {matched.tolerance:.2g}, {matched.rounds} round(s)"
            )
        else:
            quality = (
                f"NOT certified: at most {matched.dual_gap:.4g} total cosine below the optimum"
            )
        print(
            f"  one-to-one ({matched.method}): mean matched cos {matched.mean:.4f} over "
            f"{matched.n_matched} pairs ({quality})"
        )


def print_shared(pairs: MatchedPairs, args: argparse.Namespace) -> None:
    from ..geometry.shared import shared_summary

    s = shared_summary(pairs, args.tau)
    both = "n/a (no encoder)" if math.isnan(s.fraction_shared) else f"{s.fraction_shared:.3f}"
    print(
        f"  shared at tau={s.tau:g}: decoder and encoder {both}, decoder only "
        f"{s.fraction_shared_decoder:.3f}; orphans: {s.n_orphans_a} in A, {s.n_orphans_b} in B"
    )
