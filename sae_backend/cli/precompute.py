"""`precompute SRC...`: fill the disk cache with what the dashboard's pages compute."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import TYPE_CHECKING

from ..distributed import SHARD_ROWS
from ..errors import SAEError
from ..types import DIRECTIONS
from ._common import Bar, add_compute_options, add_load_options, load_source

if TYPE_CHECKING:
    from ..dictionary import Dictionary
    from ..precompute import Outcome

KINDS_OPTIONAL = ("match", "umap")  # kinds a flag can turn off (--no-match, --no-umap)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "precompute",
        help="fill the disk cache with what the dashboard's pages compute for these SAEs",
        description="For the SRCs (and/or the paper's SAEs of one layer), in the order the "
        "dashboard lists them: within and every ordered pair's max cosine, the random-direction "
        "nulls of those sizes, every ordered pair's one-to-one matching, and the UMAP page's "
        "default embeddings (the first two together, each alone), for each direction; encoder "
        "items only where every dictionary involved has an encoder. Progress goes to stderr, "
        "a summary to stdout. Exit 1 when a source or an item failed (the rest still run).",
    )
    p.add_argument("srcs", nargs="*", metavar="SRC")
    p.add_argument(
        "--catalogue-layer", type=int, metavar="L", help="add the paper's SAEs of layer L"
    )
    p.add_argument(
        "--via",
        choices=("wandb", "hf", "hf_saelens", "saelens"),
        default="wandb",
        help="which copy of the catalogue's SAEs to load (default wandb, the app's default)",
    )
    p.add_argument("--criterion", help="only the catalogue's runs matched by this criterion")
    p.add_argument("--directions", nargs="+", choices=DIRECTIONS, default=list(DIRECTIONS))
    for kind, what in zip(KINDS_OPTIONAL, ("one-to-one matchings", "UMAP embeddings"), strict=True):
        p.add_argument(f"--{kind}", action=argparse.BooleanOptionalAction, default=True,
                       help=f"{what} (default: on)")  # fmt: skip
    add_compute_options(p, cache=False)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument(
        "--ray", nargs="?", const="local", metavar="ADDRESS",
        help="compute the items as Ray tasks on the cluster whose head is at ADDRESS "
        "(HOST:PORT), or without ADDRESS on a Ray started here for this run; results land in "
        "this machine's cache (needs requirements-ray.txt; see docs/ray.md)",
    )  # fmt: skip
    p.add_argument(
        "--shard-rows", type=int, metavar="N",
        help=f"with --ray: rows of A per task in one comparison (default {SHARD_ROWS:,})",
    )  # fmt: skip
    add_load_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..geometry.topk import pick_device
    from ..precompute import KINDS, catalogue_sources, precompute

    if args.ray is None:
        if args.shard_rows is not None:
            raise SAEError("--shard-rows splits comparisons across Ray tasks: give --ray too")
        pick_device(args.device)  # a wrong device fails once here, not once per item
    else:  # in seconds, before any download
        from ..distributed.cluster import check_installed, check_reachable

        check_installed()
        if args.ray != "local":
            check_reachable(args.ray)
    sources = {src: src for src in args.srcs}
    if args.catalogue_layer is not None:
        found, notes = catalogue_sources(args.catalogue_layer, args.via, args.criterion)
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        sources.update((name, uri) for name, uri in found.items() if uri not in sources.values())
    elif args.criterion is not None:
        raise SAEError("--criterion selects catalogue runs: give --catalogue-layer too")
    if not sources:
        raise SAEError("nothing to precompute: give SRCs or --catalogue-layer")
    dicts, load_failed = {}, False
    for name, uri in sources.items():
        try:
            d = dicts[name] = load_source(uri, args)
        except SAEError as e:  # one line per source; the others still run
            print(f"error: {e}", file=sys.stderr)
            load_failed = True
            continue
        where = "" if name == uri else f" = {uri}"
        print(
            f"loaded {name}{where}: {d.n_features} features ({d.n_alive} alive), d_model "
            f"{d.d_model}, {'with' if d.has_encoder else 'no'} encoder",
            file=sys.stderr,
        )
    if not dicts:
        return 2  # every source was bad input, each already said why
    kinds = [k for k in KINDS if k not in KINDS_OPTIONAL or getattr(args, k)]
    if args.ray is not None:
        outcomes = _precompute_on_ray(dicts, kinds, args)
    else:
        outcomes = precompute(
            dicts, directions=args.directions, kinds=kinds, device=args.device,
            progress=lambda item: Bar(0, f"{item.kind} {item.label}", unit="step"),
            report=_report_item,
        )  # fmt: skip
    _print_outcomes(outcomes, args.json)
    failed = load_failed or any(o.status == "failed" for o in outcomes)
    return 1 if failed else 0


def _precompute_on_ray(
    dicts: dict[str, Dictionary], kinds: list[str], args: argparse.Namespace
) -> list[Outcome]:
    """The same items as Ray tasks, one progress bar of items (Ray keeps stdout for us)."""
    from ..distributed.executor import precompute_on_ray

    with Bar(0, "items", unit="item") as tick:
        return precompute_on_ray(
            dicts, address=None if args.ray == "local" else args.ray,
            directions=args.directions, kinds=kinds, device=args.device,
            shard_rows=SHARD_ROWS if args.shard_rows is None else args.shard_rows,
            progress=tick, report=_report_item,
            log=lambda line: print(line, file=sys.stderr),
        )  # fmt: skip


def _report_item(i: int, n: int, o: Outcome) -> None:
    what = f"[{i}/{n}] {o.status} {o.kind} {o.label}"
    if o.status == "failed":
        print(f"error: {what}: {o.message}", file=sys.stderr)
    elif o.status == "skipped":
        print(f"{what}: {o.message}", file=sys.stderr)
    else:
        print(f"{what} ({o.seconds:.2f} s)", file=sys.stderr)


def _print_outcomes(outcomes: list[Outcome], as_json: bool) -> None:
    """The summary on stdout: one row per item, then the counts by status."""
    from ..precompute import Outcome

    counts = {s: sum(o.status == s for o in outcomes) for s in Outcome.STATUSES}
    if as_json:
        items = [dataclasses.asdict(o) for o in outcomes]
        print(json.dumps({"counts": counts, "items": items}, indent=1))
        return
    for o in outcomes:
        tail = f"  ({o.message})" if o.message else ""
        print(f"{o.status:<9} {o.seconds:9.2f} s  {o.kind:<8} {o.label}{tail}")
    total = sum(o.seconds for o in outcomes)
    print(", ".join(f"{n} {s}" for s, n in counts.items()) + f"; {total:.1f} s in all")
