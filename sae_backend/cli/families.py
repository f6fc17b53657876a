"""`families SRC_NARROW SRC_WIDER [...] -o edges.csv`: parent -> child edges across a width ladder."""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import SAEError
from ._common import Bar, add_compute_options, add_load_options, load_source, write_atomic

if TYPE_CHECKING:
    from ..geometry.families import Families

USAGE = (
    "python -m sae_backend families SRC_NARROW SRC_WIDER [SRC_WIDEST ...] -o edges.csv "
    "[--labels labels.csv] [--tau T] [--all-parents] [options]"
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "families",
        usage=USAGE,
        help="feature families across dictionaries of growing width: split/stable/vanished/novel",
        description="Each alive feature of a wider dictionary takes as parent its nearest "
        "feature (decoder cosine) in the next narrower one, kept if the cosine is at least "
        "--tau; with --all-parents every narrower feature at or above --tau (a DAG). "
        "edges.csv: level,parent,child,cosine (level 0 = first pair). labels.csv: "
        "dictionary,feature,label (dictionary = position on the command line, 0-based; "
        "vanished/stable/split for features of all but the widest, novel for features "
        "without a parent). Different hooks or widths that do not increase are warnings.",
    )
    p.add_argument("sources", nargs="+", metavar="SRC", help="the ladder, narrowest first")
    p.add_argument("--output", "-o", required=True, help="edges CSV to write")
    p.add_argument("--labels", help="labels CSV to write")
    p.add_argument(
        "--tau", type=float, default=0.5, help="least decoder cosine of an edge, in (0, 1]"
    )
    p.add_argument(
        "--all-parents",
        action="store_true",
        help="keep every parent >= tau (a DAG), not only the nearest",
    )
    add_compute_options(p)
    add_load_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..geometry.families import families

    if len(args.sources) < 2:
        raise SAEError(
            f"families needs at least two sources (narrowest first), got {len(args.sources)}"
        )
    if not 0 < args.tau <= 1:
        raise SAEError(f"--tau must be in (0, 1], got {args.tau:g}")
    ladder = [load_source(src, args) for src in args.sources]
    with Bar(sum(d.n_alive for d in ladder[1:]), "families") as tick:
        fam = families(
            ladder, tau=args.tau, mode="dag" if args.all_parents else "tree",
            device=args.device, progress=tick, cache=not args.no_cache,
        )  # fmt: skip
    for w in fam.warnings:
        print(f"warning: {w}", file=sys.stderr)
    edges, labels = edges_csv(fam), labels_csv(fam)
    write_atomic(Path(args.output), edges)
    if args.labels:
        write_atomic(Path(args.labels), labels)
    print_summary(fam)
    return 0


def edges_csv(fam: Families) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["level", "parent", "child", "cosine"])
    for e in fam.edges():
        w.writerow([e.level, e.parent, e.child, f"{e.cosine:.7f}"])
    return buf.getvalue()


def labels_csv(fam: Families) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["dictionary", "feature", "label"])
    w.writerows(fam.label_rows())
    return buf.getvalue()


def print_summary(fam: Families) -> None:
    mode = "all parents >= tau" if fam.mode == "dag" else "nearest parent"
    print(f"families over {len(fam.sources)} dictionaries (tau {fam.tau:g}, {mode}):")
    for c in fam.counts():
        narrow, wide = fam.sources[c.level], fam.sources[c.level + 1]
        print(
            f"  level {c.level}: {narrow} ({c.n_narrow} alive) -> {wide} ({c.n_wide} alive): "
            f"{c.split} split, {c.stable} stable, {c.vanished} vanished, {c.novel} novel; "
            f"{c.edges} edges"
        )
