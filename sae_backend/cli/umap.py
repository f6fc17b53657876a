"""`umap SRC... [-o out.csv]`: one joint UMAP into the cache (and a CSV)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import SAEError
from ..types import DIRECTIONS
from ._common import Bar, add_compute_options, add_load_options, load_sources, write_atomic


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "umap",
        help="joint UMAP of several dictionaries' alive features, into the cache (and a CSV)",
        description="Computes one UMAP (cosine metric, exact kNN graph) of the included "
        "features of all SRCs into the disk cache, so the app finds it ready; with --output "
        "also writes CSV columns RunType,EmbeddingIndex,X,Y (RunType = the SRC as given, "
        "EmbeddingIndex = feature index).",
    )
    p.add_argument("srcs", nargs="+", metavar="SRC")
    p.add_argument("--output", "-o", help="CSV file to write (RunType,EmbeddingIndex,X,Y)")
    p.add_argument("--n-neighbors", type=int, default=15)
    p.add_argument("--min-dist", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--directions", choices=DIRECTIONS, default="decoder")
    add_compute_options(p, "for the kNN graph: ")
    add_load_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..projection import default_epochs, umap_embedding

    if args.no_cache and args.output is None:
        raise SAEError("nothing to do: --no-cache without --output would compute and discard")
    dicts = load_sources(args.srcs, args)
    n = sum(len(d.alive_index) for d in dicts)
    with Bar(n + default_epochs(n), "umap (kNN rows, then epochs)", unit="step") as tick:
        emb = umap_embedding(
            dicts, directions=args.directions, n_neighbors=args.n_neighbors,
            min_dist=args.min_dist, seed=args.seed, device=args.device,
            cache=not args.no_cache, progress=tick, release_rows=True,
        )  # fmt: skip
    if args.output is not None:
        table = emb.to_rows(args.srcs)
        write_atomic(Path(args.output), table.to_csv(index=False, float_format="%.6f"))
    where = "" if args.no_cache else " (cached)"
    print(
        f"umap of {len(emb)} features from {len(dicts)} dictionaries ({args.directions}, "
        f"n_neighbors {args.n_neighbors}, min_dist {args.min_dist:g}, seed {args.seed}){where}"
    )
    return 0
