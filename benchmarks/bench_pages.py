"""Benchmark: how long each dashboard page takes to render once its results are cached.

    python benchmarks/bench_pages.py                  # 3 x 46,080 x 768, UMAP of 2 of them
    python benchmarks/bench_pages.py --n 12288 --runs 3

The issue's target: every page renders in under a second once its results are cached, at
46,080 features per dictionary. This script (not a test: it takes minutes) writes three
synthetic SAELens folders into a temporary folder (random unit rows with planted overlap:
"B" keeps half of A's directions, perturbed and shuffled, "C" is all of A perturbed more, like
a second seed; 2% of A's features dead), points SAE_CACHE_DIR there, renders every page once
through streamlit's AppTest (which computes and caches everything: the backend's disk cache and
the app's in-process caches), then renders each page `--runs` more times, each time as a new
session in the same process (what a second visitor of a running server gets), and prints the
median, min and max. The UMAP page renders its default, the first two dictionaries (~91,000
points; a UMAP of all three takes too long on a 2-core CPU), with the approval its compute
button gives already set.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("A", "B", "C")


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_dictionaries(n: int, d: int, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """{name: {"decoder" [n, d], "encoder" [n, d], "density" [n]}} float32, planted overlap."""
    rng = np.random.default_rng(seed)

    def perturb(x: np.ndarray, scale: float) -> np.ndarray:
        return unit(x + scale * rng.standard_normal(x.shape, dtype=np.float32) / np.sqrt(d))

    a = unit(rng.standard_normal((n, d), dtype=np.float32))
    half = n // 2
    b = np.concatenate([perturb(a[rng.permutation(n)[:half]], 0.25),
                        unit(rng.standard_normal((n - half, d), dtype=np.float32))])  # fmt: skip
    b = b[rng.permutation(n)]
    c = perturb(a, 0.6)[rng.permutation(n)]
    out = {}
    for name, dec in zip(NAMES, (a, b, c), strict=True):
        density = (10 ** rng.uniform(-4, -1.5, n)).astype(np.float32)
        if name == "A":
            density[rng.choice(n, n // 50, replace=False)] = 0.0
        out[name] = {"decoder": dec, "encoder": perturb(dec, 0.8), "density": density}
    return out


def write_saelens(folder: Path, decoder: np.ndarray, encoder: np.ndarray, density: np.ndarray):
    """cfg.json + sae_weights.safetensors (W_dec [n, d], W_enc [d, n]) + sparsity.safetensors."""
    folder.mkdir(parents=True)
    n, d = decoder.shape
    save_file(
        {"W_dec": decoder, "W_enc": np.ascontiguousarray(encoder.T),
         "b_enc": np.zeros(n, np.float32), "b_dec": np.zeros(d, np.float32)},
        str(folder / "sae_weights.safetensors"),
    )  # fmt: skip
    save_file({"sparsity": np.log10(density + 1e-10)}, str(folder / "sparsity.safetensors"))
    cfg = {"architecture": "standard", "d_in": d, "d_sae": n,
           "metadata": {"model_name": "synthetic", "hook_name": "blocks.6.hook_resid_pre"}}  # fmt: skip
    (folder / "cfg.json").write_text(json.dumps(cfg))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=46_080, help="features per dictionary")
    parser.add_argument("--d", type=int, default=768, help="d_model")
    parser.add_argument("--runs", type=int, default=5, help="timed renders per page")
    parser.add_argument("--no-umap", dest="umap", action="store_false", help="skip UMAP")
    parser.add_argument("--dir", type=Path, help="reuse this folder's dictionaries and cache")
    args = parser.parse_args()

    tmp = args.dir or Path(tempfile.mkdtemp(prefix="bench_pages_"))
    os.environ["SAE_CACHE_DIR"] = str(tmp / "cache")  # before sae_backend is imported
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    from streamlit.testing.v1 import AppTest

    from dashboard.session import STATE_KEY, Entry

    t = time.perf_counter()
    sources = {name: str(tmp / name) for name in NAMES}
    if not all((tmp / name / "cfg.json").is_file() for name in NAMES):
        for name, arrays in make_dictionaries(args.n, args.d).items():
            write_saelens(tmp / name, **arrays)
        print(f"wrote 3 x {args.n:,} x {args.d} in {time.perf_counter() - t:.1f} s under {tmp}")
    components = None  # AppTest scans installed packages for components per instance (~0.3 s
    # here): shared, so the timings are the pages' (a running server scans once at start).

    # The UMAP page's default: the first two dictionaries, default parameters. Above 10,000
    # points it waits for a button; the approval the button gives is set here instead.
    umap_default = (tuple(NAMES[:2]), "decoder", 15, 0.1, 0)

    def render(page: str, **query: str) -> float:
        """Seconds for one new session (the dictionaries loaded, as after adding them) to run
        `page` once; raises SystemExit on an exception or st.error."""
        nonlocal components
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=3600)
        if PAGE_FILES[page] != "app.py":  # the main script is app.py, as in the app
            at.switch_page(PAGE_FILES[page])
        at._bidi_component_manager = components
        at.session_state[STATE_KEY] = {n: Entry(u) for n, u in sources.items()}
        at.session_state["umap_approved"] = {umap_default}
        for key, value in query.items():
            at.query_params[key] = value
        t0 = time.perf_counter()
        at.run()
        elapsed = time.perf_counter() - t0
        components = at._bidi_component_manager
        problems = [e.value for e in at.exception] + [e.value for e in at.error]
        if problems:
            raise SystemExit(f"{page}: {problems}")
        if page == "UMAP" and not at.get("plotly_chart"):
            raise SystemExit("UMAP: no chart drawn")
        return elapsed

    pages = {"Home": {}, "Similarity": {}, "Neighbours": {"dict": "B", "feature": "123"}}
    if args.umap:
        pages["UMAP"] = {}
    rows = []
    for page, query in pages.items():
        first = render(page, **query)
        print(f"{page}: first render (computes, fills the caches) {first:.1f} s", flush=True)
        times = [render(page, **query) for _ in range(args.runs)]
        rows.append((page, first, times))
        print(f"{page}: cached median {statistics.median(times):.3f} s", flush=True)

    cpu = platform.processor() or platform.machine()
    print(f"\n{args.n:,} features x {args.d}, {os.cpu_count()} cores ({cpu}), {args.runs} runs")
    print("| page | first render (computing) | cached: median | min | max |")
    print("|---|---|---|---|---|")
    for page, first, times in rows:
        print(f"| {page} | {first:.1f} s | **{statistics.median(times):.3f} s** | "
              f"{min(times):.3f} s | {max(times):.3f} s |")  # fmt: skip
    print("UMAP: the page's default, the first two dictionaries (2 x alive features points).")


PAGE_FILES = {
    "Home": "app.py",
    "Similarity": "pages/1_Similarity.py",
    "Neighbours": "pages/2_Neighbours.py",
    "UMAP": "pages/3_UMAP.py",
}

if __name__ == "__main__":
    main()
