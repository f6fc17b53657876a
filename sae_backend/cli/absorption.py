"""`absorption SRC -o out.csv [--k K]`: each feature's most negative encoder -> decoder partners."""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..geometry.compare import MAX_K
from ._common import Bar, add_compute_options, add_load_options, load_source, write_atomic

if TYPE_CHECKING:
    from ..geometry.absorption import Absorption


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "absorption",
        help="absorption signatures: features whose encoder points away from another's decoder",
        description="For each alive feature, the k other alive features with the most "
        "negative cos(encoder_feature, decoder_partner), exactly. CSV: "
        "feature,partner,enc_dec_cos,dec_dec_cos, one row per pair, the most negative "
        "partner first; dec_dec_cos = cos(decoder_feature, decoder_partner).",
    )
    p.add_argument("src")
    p.add_argument("--output", "-o", required=True, help="CSV file to write")
    p.add_argument("--k", type=int, default=1, help=f"partners per feature (1..{MAX_K})")
    add_compute_options(p)
    add_load_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..geometry.absorption import absorption

    d = load_source(args.src, args)
    with Bar(d.n_alive, "absorption") as tick:
        res = absorption(d, k=args.k, device=args.device, progress=tick, cache=not args.no_cache)
    write_atomic(Path(args.output), to_csv(res))
    print_summary(res)
    return 0


def to_csv(res: Absorption) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["feature", "partner", "enc_dec_cos", "dec_dec_cos"])
    for row, f in enumerate(res.feature.tolist()):
        for j in range(res.k):
            w.writerow([f, int(res.partner[row, j]), f"{res.enc_dec_cos[row, j]:.7f}",
                        f"{res.dec_dec_cos[row, j]:.7f}"])  # fmt: skip
    return buf.getvalue()


def print_summary(res: Absorption) -> None:
    sig = res.signature.astype(np.float64)
    q = np.quantile(sig, [0.01, 0.5])
    print(
        f"{res.source}: {len(res.feature)} features; most negative cos(encoder, other decoder): "
        f"min {sig.min():.4f}, 1% {q[0]:.4f}, median {q[1]:.4f}"
    )
    for row in res.order()[:5]:
        print(
            f"  feature {int(res.feature[row])} -> {int(res.partner[row, 0])}: "
            f"enc_dec_cos {res.enc_dec_cos[row, 0]:.4f}, dec_dec_cos {res.dec_dec_cos[row, 0]:.4f}"
        )
