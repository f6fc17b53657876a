"""Benchmark: `precompute` over Ray on one node vs two nodes of one CPU each, and a projection
of a full ladder release on GPUs.

    python benchmarks/bench_ray.py              # 2 dictionaries of 46,080 x 768: 4 passes
    python benchmarks/bench_ray.py --n 12288    # smaller, for a quick look

Same run, same data (random unit rows, seed 0), same code path as `precompute --ray`
(`precompute_on_ray`, in this process as the driver):

1. a Ray cluster on loopback of ONE node with one CPU (tests/ray_cluster.py) computes every
   comparison of the batch (each dictionary within itself, every ordered pair: 4 passes for
   2 dictionaries) into an empty cache;
2. a second node of one CPU joins; the same batch into another empty cache (and the two
   caches must hold the same bits);
3. on the second node: how long a task takes to get a dictionary through the object store
   (what the executor does) vs loading it by path through the node's own cache;
4. the ratio, the peak RSS of the driver and of the busiest worker (sampled from /proc), the
   per-task memory bound of `geometry.shards.shard_memory`, and a projection of a full
   Gemma-Scope-like release from the H100 timings in docs/benchmarks.md, scaled by FLOPs.

The machine's load average is printed first: on a shared machine, timings move with it.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # this driver too stays on loopback
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from sae_backend.cache import ArrayCache  # noqa: E402
from sae_backend.dictionary import Dictionary, RawSAE  # noqa: E402
from sae_backend.distributed import SHARD_ROWS  # noqa: E402
from sae_backend.distributed.cluster import connected  # noqa: E402
from sae_backend.distributed.executor import precompute_on_ray  # noqa: E402
from sae_backend.geometry.shards import shard_memory  # noqa: E402
from tests.factories import write_saelens  # noqa: E402
from tests.ray_cluster import LocalCluster, add_node, start_cluster, stop_cluster  # noqa: E402

# H100 timings of one exact pass at 46,080 x 46,080 x 768 (docs/benchmarks.md, 2026-11-26)
H100_MS = {"k=1": 16.9, "k=10": 24.2}
PAPER_PASS = 46_080 * 46_080 * 768  # multiply-adds of that pass


class PeakRSS:
    """Samples VmHWM (peak resident set) of the cluster's processes every 0.2 s."""

    def __init__(self, cluster: LocalCluster):
        self.cluster, self.peak = cluster, {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.wait(0.2):
            for pid in self.cluster.pids():
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                    title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
                except OSError:
                    continue
                for line in status.splitlines():
                    if line.startswith("VmHWM:") and title.startswith("ray::"):
                        self.peak[pid] = max(self.peak.get(pid, 0), int(line.split()[1]))

    def __enter__(self) -> PeakRSS:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def max_mb(self) -> float:
        return max(self.peak.values(), default=0) / 1024


def batch(
    dicts: dict[str, Dictionary], cluster: LocalCluster, folder: Path
) -> tuple[float, float, float]:
    """(wall seconds, seconds computing in tasks, peak worker RSS MB) of every comparison
    of `dicts` on `cluster`."""
    with PeakRSS(cluster) as rss:
        start = time.perf_counter()
        outcomes = precompute_on_ray(
            dicts, address=cluster.address, kinds=["compare"], directions=["decoder"],
            cache=ArrayCache(folder),
        )  # fmt: skip
        seconds = time.perf_counter() - start
    bad = [o for o in outcomes if o.status != "computed"]
    assert not bad, bad
    return seconds, sum(o.seconds for o in outcomes), rss.max_mb()


def agreement(one: Path, two: Path) -> str:
    """How the two runs' caches agree: the same keys, neighbours and bits, or how far apart
    (separate processes may time the CPU scoring path differently: see docs/ray.md)."""
    import diskcache

    from sae_backend.cache import SafeDisk, decode_blob

    with (
        diskcache.Cache(str(one), disk=SafeDisk) as a,
        diskcache.Cache(str(two), disk=SafeDisk) as b,
    ):
        keys = sorted(k for k in a if k.startswith("compare/"))
        if keys != sorted(k for k in b if k.startswith("compare/")):
            return "different keys"
        pairs = [(decode_blob(a[k])[0], decode_blob(b[k])[0]) for k in keys]
    same_nearest = all(np.array_equal(x["indices"], y["indices"]) for x, y in pairs)
    diff = max(float(np.abs(x["values"] - y["values"]).max()) for x, y in pairs)
    same = sum(np.array_equal(x["values"], y["values"]) for x, y in pairs)
    return (
        f"{len(keys)} comparisons; neighbours equal: {same_nearest}; values bit-identical in "
        f"{same} of {len(keys)}, largest difference {diff:.1e}"
    )


def transport(cluster: LocalCluster, d: Dictionary, path: str, tiny: str) -> dict[str, float]:
    """Seconds for a task on the second node to hold dictionary `d`: through the object store
    (first and second time) and by loading `path` through the node's cache (cold, warm);
    a worker there has loaded the small dictionary `tiny` first (imports out of the way)."""
    with connected(cluster.address) as c:
        ray = c.ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        second = next(n["NodeID"] for n in ray.nodes()
                      if n["Alive"] and "node:__internal_head__" not in n["Resources"])  # fmt: skip
        where = NodeAffinitySchedulingStrategy(second, soft=False)

        def touch(x: Dictionary) -> float:
            return float(x.decoder[:, 0].sum())  # reads every row's first value

        def load_path(p: str) -> float:
            from sae_backend.loader import load

            t = time.perf_counter()
            load(p).decoder[:, 0].sum()
            return time.perf_counter() - t

        def warm(p: str) -> int:
            from sae_backend.loader import load

            return load(p).n_features

        touch_task = ray.remote(touch).options(num_cpus=1, scheduling_strategy=where)
        load_task = ray.remote(load_path).options(num_cpus=1, scheduling_strategy=where)
        ray.get(ray.remote(warm).options(num_cpus=1, scheduling_strategy=where).remote(tiny))
        out = {}
        ref = ray.put(d)
        for name in ("object store, first", "object store, again"):
            t = time.perf_counter()
            ray.get(touch_task.remote(ref))
            out[name] = time.perf_counter() - t
        for name in ("by path, cold node cache", "by path, warm node cache"):
            out[name] = ray.get(load_task.remote(path))
        return out


def span(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.2f} h"


def projection(widths: list[int], d: int, variants: int, layers: int) -> list[str]:
    """Lines of a projected release: every ordered pair and within pass of `variants`
    dictionaries per width at each layer, per direction, from the H100 timings."""
    sizes = [w for w in widths for _ in range(variants)]
    total = sum(sizes)
    pairs_all = total * total  # sum over ordered pairs with repetition = (sum n)^2
    within = sum(n * n for n in sizes)
    pairs = pairs_all - within

    def seconds(n_pairs: float, key: str) -> float:
        """H100 time for passes of n_pairs scored pairs of dimension d, scaled by FLOPs."""
        return H100_MS[key] / 1000 * n_pairs * d / PAPER_PASS

    compare = seconds(pairs_all, "k=1")  # within + ordered pairs, k=1
    # one random null per distinct (n_a, n_b) (all features alive): within each width, and
    # every ordered pair of widths (a width with itself too, when it has several dictionaries)
    sizes_null = {(w, None) for w in widths} | {
        (a, b) for a in widths for b in widths if a != b or variants > 1
    }
    null = seconds(sum(a * (a if b is None else b) for a, b in sizes_null), "k=1")
    match = 2 * seconds(pairs, "k=10")  # top-10 both ways per ordered pair (sparse matching)
    per_layer = compare + null + match
    one_pass = seconds(max(widths) ** 2, "k=1")
    n_dicts = len(sizes)
    return [
        f"release: widths {', '.join(f'{w:,}' for w in widths)}; {variants} "
        f"dictionar{'y' if variants == 1 else 'ies'} per width; d={d}; {layers} "
        f"layer{'s' * (layers > 1)}; decoder directions",
        f"per layer: {n_dicts} dictionaries, {n_dicts * (n_dicts - 1):,} ordered pairs + "
        f"{n_dicts} within passes",
        f"one {max(widths):,} x {max(widths):,} x {d} pass: {2 * max(widths) ** 2 * d / 1e15:.1f} "
        f"PFLOP, {one_pass:.1f} s on one H100 (k=1)",
        f"per layer on one H100: compare {span(compare)} + nulls {span(null)} + matchings' "
        f"top-k {span(match)} = {span(per_layer)}",
        f"release ({layers} layer{'s' * (layers > 1)}): {per_layer * layers / 3600:.1f} "
        f"GPU-hours; on 64 GPUs about {span(per_layer * layers / 64)} wall when spread "
        f"evenly (the largest pass splits into {-(-max(widths) // SHARD_ROWS)} row shards), "
        "plus the matchings' CPU assignments, UMAP and loading",
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=46_080, help="rows per dictionary")
    p.add_argument("--d", type=int, default=768)
    p.add_argument("--dicts", type=int, default=2, help="dictionaries in the batch")
    args = p.parse_args()
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"({os.cpu_count()} cores)")  # fmt: skip
    root = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    os.environ["SAE_CACHE_DIR"] = str(root / "driver")
    rng = np.random.default_rng(0)
    raw = [rng.standard_normal((args.n, args.d), dtype=np.float32) for _ in range(args.dicts)]
    dicts = {f"D{i}": Dictionary.from_raw(RawSAE(m), source=f"D{i}", format="bench")
             for i, m in enumerate(raw)}  # fmt: skip
    path = str(write_saelens(root / "D0", raw[0], None))
    tiny = str(write_saelens(root / "tiny", raw[0][:64, :8], None))  # warms the loader's imports
    passes = args.dicts * args.dicts
    print(f"batch: {args.dicts} dictionaries of {args.n:,} x {args.d}, {passes} comparisons "
          "(each within itself, every ordered pair), k=1, decoder")  # fmt: skip

    cluster = start_cluster(1, object_store_mb=1500)  # room for the batch's dictionaries
    os.environ.update(cluster.auth_env)  # before Ray's first import here: its token
    try:
        t1, c1, rss1 = batch(dicts, cluster, root / "one")
        print(f"one node  (1 CPU):      {t1:7.1f} s wall, {c1:7.1f} s computing in tasks "
              f"({c1 / passes:.1f} s per comparison)", flush=True)  # fmt: skip
        add_node(cluster)
        t2, c2, rss2 = batch(dicts, cluster, root / "two")
        print(f"two nodes (1 CPU each): {t2:7.1f} s wall, {c2:7.1f} s computing in tasks",
              flush=True)  # fmt: skip
        print(f"speed-up one -> two nodes: {t1 / t2:.2f}x (ideal 2x)")
        print(f"the two caches: {agreement(root / 'one', root / 'two')}")
        moved = transport(cluster, dicts["D0"], path, tiny)
    finally:
        stop_cluster(cluster)
        shutil.rmtree(root, ignore_errors=True)
    size_mb = raw[0].nbytes / 2**20
    print(f"\ngetting a {size_mb:.0f} MB dictionary onto the second node (task round trip):")
    for name, seconds in moved.items():
        print(f"  {name:<26} {seconds:6.2f} s")
    driver_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    bound = shard_memory(args.n, args.n, args.d, 1, within=False) / 2**20
    print(f"\npeak RSS: driver {driver_mb:,.0f} MB; busiest worker {max(rss1, rss2):,.0f} MB "
          f"(one node run {rss1:,.0f}, two nodes {rss2:,.0f}; includes the dictionaries "
          f"mapped from the object store); shard_memory bound for one pass beyond the "
          f"dictionaries: {bound:,.0f} MB")  # fmt: skip
    print("\nprojection (GPU time from docs/benchmarks.md's H100 run at 46,080 x 768, "
          "scaled by FLOPs; not measured here):")  # fmt: skip
    widths = [16_384 * 2**i for i in range(7)]
    for line in projection(widths, 2304, 1, 1) + projection(widths, 2304, 6, 26):
        print("  " + line)


if __name__ == "__main__":
    main()
