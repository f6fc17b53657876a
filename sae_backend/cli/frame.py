"""`frame SRC`: frame geometry of a dictionary's alive decoder rows, as JSON."""

from __future__ import annotations

import argparse
import json
import math

from ._common import add_compute_options, add_load_options, load_source


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "frame",
        help="coherence vs Welch bound, frame potential, effective rank, capacities (JSON)",
        description="Frame geometry of the alive unit decoder rows, from their d x d Gram "
        "matrix (no n x n pass) and an exact top-k pass for the coherence. Prints JSON: "
        "coherence, welch_bound, frame_potential, frame_potential_bound, effective_rank "
        "(Roy & Vetterli: exp of the entropy of the normalised singular values), "
        "capacity_sum (Scherlis et al.; <= d_model), n_features (alive features used), d_model.",
    )
    p.add_argument("src")
    add_compute_options(p)
    add_load_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..geometry.frame import frame

    d = load_source(args.src, args)
    doc = frame(d, device=args.device, cache=not args.no_cache).to_json()
    # strict JSON: an undefined quantity (coherence of one feature) is null, not NaN
    clean = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in doc.items()}
    print(json.dumps(clean, indent=1))
    return 0
