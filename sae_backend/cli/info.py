"""`info SRC`: what a source holds, as JSON."""

from __future__ import annotations

import argparse
import json

from ._common import add_load_options, load_source


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="print what a source holds, as JSON")
    p.add_argument("src")
    add_load_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    d = load_source(args.src, args)
    m = d.meta
    doc = {
        "source": m.source,
        "format": m.format,
        "n_features": d.n_features,
        "d_model": d.d_model,
        "n_alive": d.n_alive,
        "alive_from": m.alive_from,
        "has_encoder": d.has_encoder,
        "model_name": m.model_name,
        "hook": m.hook,
        "layer": m.layer,
        "neuronpedia_id": m.neuronpedia_id,
        "fingerprint": d.fingerprint,
        "extra": m.extra,
    }
    print(json.dumps(doc, indent=1, default=str))
    return 0
