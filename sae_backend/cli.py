"""The command line over the API the app uses: `python -m sae_backend COMMAND ...`.

Commands: info, compare, umap, precompute (see `_parser`).

Expected bad input (unknown URI, broken file, mismatched d_model, k out of range) prints one
line `error: ...` to stderr and exits 2; output files are written whole or not at all.
`precompute` goes on past a source or an item that fails (one `error:` line each) and then
exits 1.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .dictionary import Dictionary
from .errors import SAEError
from .geometry.compare import DIRECTIONS, MAX_K, compare, included, match
from .geometry.topk import pick_device
from .loader import load
from .precompute import KINDS, Outcome, catalogue_sources, precompute
from .projection import default_epochs, umap_embedding


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except SAEError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sae_backend",
        description="Inspect and compare SAE dictionaries (local paths, wandb:, hf:, saelens: URIs; "
        "SRC#POSITION picks one SAE from a file holding several).",
    )
    sub = p.add_subparsers(required=True, metavar="COMMAND")

    info = sub.add_parser("info", help="print what a source holds, as JSON")
    info.add_argument("src")
    _load_options(info)
    info.set_defaults(run=_info)

    cmp_ = sub.add_parser(
        "compare",
        help="max cosine (and top-k) of each feature of A against B, or within A",
        description="One CSV row per included feature of A (alive when the source says which "
        "are, else every non-zero direction): feature, max_cos, nearest, and with k > 1 the "
        "neighbours and their cosines; with --match the one-to-one matched feature and cosine.",
    )
    cmp_.add_argument("src_a")
    cmp_.add_argument("src_b", nargs="?", help="omit to compare A with itself (self excluded)")
    cmp_.add_argument("--output", "-o", required=True, help="CSV file to write")
    cmp_.add_argument("--k", type=int, default=1, help=f"neighbours per feature (1..{MAX_K})")
    cmp_.add_argument("--directions", choices=DIRECTIONS, default="decoder")
    cmp_.add_argument("--match", action="store_true", help="add the one-to-one matching")
    _compute_options(cmp_)
    _load_options(cmp_)
    cmp_.set_defaults(run=_compare)

    um = sub.add_parser(
        "umap",
        help="joint UMAP of several dictionaries' alive features, into the cache (and a CSV)",
        description="Computes one UMAP (cosine metric, exact kNN graph) of the included "
        "features of all SRCs into the disk cache, so the app finds it ready; with --output "
        "also writes CSV columns RunType,EmbeddingIndex,X,Y (RunType = the SRC as given, "
        "EmbeddingIndex = feature index).",
    )
    um.add_argument("srcs", nargs="+", metavar="SRC")
    um.add_argument("--output", "-o", help="CSV file to write (RunType,EmbeddingIndex,X,Y)")
    um.add_argument("--n-neighbors", type=int, default=15)
    um.add_argument("--min-dist", type=float, default=0.1)
    um.add_argument("--seed", type=int, default=0)
    um.add_argument("--directions", choices=DIRECTIONS, default="decoder")
    _compute_options(um, "for the kNN graph: ")
    _load_options(um)
    um.set_defaults(run=_umap)

    pre = sub.add_parser(
        "precompute",
        help="fill the disk cache with what the dashboard's pages compute for these SAEs",
        description="For the SRCs (and/or the paper's SAEs of one layer), in the order the "
        "dashboard lists them: within and every ordered pair's max cosine, the random-direction "
        "nulls of those sizes, every ordered pair's one-to-one matching, and the UMAP page's "
        "default embeddings (the first two together, each alone), for each direction; encoder "
        "items only where every dictionary involved has an encoder. Progress goes to stderr, "
        "a summary to stdout. Exit 1 when a source or an item failed (the rest still run).",
    )
    pre.add_argument("srcs", nargs="*", metavar="SRC")
    pre.add_argument(
        "--catalogue-layer", type=int, metavar="L", help="add the paper's SAEs of layer L"
    )
    pre.add_argument(
        "--via",
        choices=("wandb", "hf", "hf_saelens", "saelens"),
        default="wandb",
        help="which copy of the catalogue's SAEs to load (default wandb, the app's default)",
    )
    pre.add_argument("--criterion", help="only the catalogue's runs matched by this criterion")
    pre.add_argument("--directions", nargs="+", choices=DIRECTIONS, default=list(DIRECTIONS))
    pre.add_argument("--match", action=argparse.BooleanOptionalAction, default=True,
                     help="one-to-one matchings (default: on)")  # fmt: skip
    pre.add_argument("--umap", action=argparse.BooleanOptionalAction, default=True,
                     help="UMAP embeddings (default: on)")  # fmt: skip
    _compute_options(pre, cache=False)
    pre.add_argument("--json", action="store_true", help="print the summary as JSON")
    _load_options(pre)
    pre.set_defaults(run=_precompute)
    return p


def _compute_options(p: argparse.ArgumentParser, what: str = "", cache: bool = True) -> None:
    p.add_argument("--device", default="auto", help=f"{what}auto, cpu, cuda, cuda:N or mps")
    if cache:
        p.add_argument("--no-cache", action="store_true", help="do not read or write the cache")


def _load_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--orientation",
        choices=("rows", "columns"),
        help="plain matrices only: rows = [n_features, d_model], columns = [d_model, n_features]",
    )
    p.add_argument("--key", help="plain files holding several arrays: which one")
    p.add_argument("--format", help="force a reader (default: detected)")


def _load(src: str, args: argparse.Namespace) -> Dictionary:
    return load(
        src,
        orientation=args.orientation,
        key=args.key,
        format=args.format,
        progress=_download_progress(),
    )


def _info(args: argparse.Namespace) -> int:
    d = _load(args.src, args)
    m = d.meta
    print(
        json.dumps(
            {
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
            },
            indent=1,
            default=str,
        )
    )
    return 0


def _compare(args: argparse.Namespace) -> int:
    a = _load(args.src_a, args)
    b = None if args.src_b is None else _load(args.src_b, args)
    if args.match and b is None:
        raise SAEError("--match needs two dictionaries (SRC_A SRC_B)")
    n_a = len(included(a))
    with _bar(n_a, "top-k") as tick:
        res = compare(
            a, b, directions=args.directions, k=args.k, device=args.device,
            progress=tick, cache=not args.no_cache,
        )  # fmt: skip
    matched = None
    if args.match:
        with _bar(n_a + len(included(b)), "matching") as tick:
            matched = match(
                a, b, directions=args.directions, device=args.device, progress=tick,
                forward=res if args.k >= 10 else None,
            )  # fmt: skip
    _write_csv(Path(args.output), res, matched, args.k)
    _print_summary(a, b, res, matched)
    return 0


def _umap(args: argparse.Namespace) -> int:
    if args.no_cache and args.output is None:
        raise SAEError("nothing to do: --no-cache without --output would compute and discard")
    dicts = [_load(src, args) for src in args.srcs]
    n = sum(len(included(d)) for d in dicts)
    with _bar(n + default_epochs(n), "umap (kNN rows, then epochs)", unit="step") as tick:
        emb = umap_embedding(
            dicts, directions=args.directions, n_neighbors=args.n_neighbors,
            min_dist=args.min_dist, seed=args.seed, device=args.device,
            cache=not args.no_cache, progress=tick,
        )  # fmt: skip
    if args.output is not None:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["RunType", "EmbeddingIndex", "X", "Y"])
        for i, f, (x, y) in zip(emb.dict_index, emb.feature, emb.xy, strict=True):
            w.writerow([args.srcs[i], int(f), f"{x:.6f}", f"{y:.6f}"])
        _write_atomic(Path(args.output), buf.getvalue())
    where = "" if args.no_cache else " (cached)"
    print(
        f"umap of {len(emb)} features from {len(dicts)} dictionaries ({args.directions}, "
        f"n_neighbors {args.n_neighbors}, min_dist {args.min_dist:g}, seed {args.seed}){where}"
    )
    return 0


def _precompute(args: argparse.Namespace) -> int:
    pick_device(args.device)  # a wrong device fails once here, not once per item
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
            d = dicts[name] = _load(uri, args)
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
    kinds = [k for k in KINDS if {"match": args.match, "umap": args.umap}.get(k, True)]
    outcomes = precompute(
        dicts, directions=args.directions, kinds=kinds, device=args.device,
        progress=lambda item: _bar(0, f"{item.kind} {item.label}", unit="step"),
        report=_report_item,
    )  # fmt: skip
    _print_outcomes(outcomes, args.json)
    failed = load_failed or any(o.status == "failed" for o in outcomes)
    return 1 if failed else 0


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


def _write_csv(path: Path, res, matched, k: int) -> None:
    """The compare table, one row per included feature of A, written whole or not at all."""
    buf = io.StringIO()
    w = csv.writer(buf)
    header = ["feature", "max_cos", "nearest"]
    if k > 1:
        header += ["neighbours", "cosines"]
    if matched is not None:
        header += ["matched", "matched_cos"]
    w.writerow(header)
    for row in range(len(res.a_index)):
        line = [int(res.a_index[row]), f"{res.values[row, 0]:.7f}", int(res.indices[row, 0])]
        if k > 1:
            line += [
                " ".join(str(int(i)) for i in res.indices[row]),
                " ".join(f"{v:.7f}" for v in res.values[row]),
            ]
        if matched is not None:
            j, c = int(matched.b_index[row]), float(matched.cosine[row])
            line += [j, "" if np.isnan(c) else f"{c:.7f}"]
        w.writerow(line)
    _write_atomic(path, buf.getvalue())


def _write_atomic(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename: never half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as e:
        raise SAEError(f"cannot write {path}: {e.strerror or e}") from None


def _print_summary(a: Dictionary, b: Dictionary | None, res, matched) -> None:
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


class _bar:
    """A tqdm progress bar on stderr driven by progress(done, total) callbacks."""

    def __init__(self, total: int, what: str, unit: str = "feat"):
        self.total, self.what, self.unit = total, what, unit

    def __enter__(self):
        from tqdm import tqdm

        self.bar = tqdm(total=self.total, desc=self.what, unit=self.unit, file=sys.stderr,
                        disable=None, leave=False)  # fmt: skip
        return self.update

    def update(self, done: int, total: int) -> None:
        if total != self.bar.total:
            self.bar.total = total
        self.bar.update(done - self.bar.n)

    def __exit__(self, *exc):
        self.bar.close()


def _download_progress():
    """progress(done, total, what) for downloads, printed as a tqdm bar per file."""
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def update(done: int, total: int | None, what: str) -> None:
        bar = bars.get(what)
        if bar is None:
            bar = bars[what] = tqdm(total=total, desc=what, unit="B", unit_scale=True,
                                    file=sys.stderr, disable=None, leave=False)  # fmt: skip
        bar.update(done - bar.n)
        if total is not None and done >= total:
            bar.close()

    return update
