"""Write two small toy SAE dictionaries with known shared structure, for trying the CLI.

    python examples/make_toy.py [FOLDER]      # default: examples/toy

Not real SAEs (the bundled demo trained on a language model is separate): A has 2,048
features in 128 dims; B keeps 1,024 of A's directions (slightly perturbed, shuffled) and
adds 1,024 new ones, so A->B max cosines are bimodal: ~0.99 for the shared half, chance
(~0.3) for the rest. Written as SAELens folders, with a sparsity file marking 32 features dead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file


def write_saelens(folder: Path, dec: np.ndarray, enc: np.ndarray, density: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    n, d = dec.shape
    save_file(
        {
            "W_dec": torch.tensor(dec, dtype=torch.float32),
            "W_enc": torch.tensor(enc.T.copy(), dtype=torch.float32),
            "b_enc": torch.zeros(n),
            "b_dec": torch.zeros(d),
        },
        str(folder / "sae_weights.safetensors"),
    )
    cfg = {
        "architecture": "standard",
        "d_in": d,
        "d_sae": n,
        "metadata": {"model_name": "toy", "hook_name": "blocks.0.hook_resid_pre"},
    }
    (folder / "cfg.json").write_text(json.dumps(cfg, indent=1))
    log_density = np.log10(density + 1e-10).astype(np.float32)
    save_file({"sparsity": torch.tensor(log_density)}, str(folder / "sparsity.safetensors"))


def main(out: Path) -> None:
    rng = np.random.default_rng(0)
    n, d = 2048, 128
    a = rng.standard_normal((n, d))
    shared = rng.permutation(n)[: n // 2]
    b = np.concatenate([a[shared] + 0.05 * rng.standard_normal((n // 2, d)),
                        rng.standard_normal((n // 2, d))])  # fmt: skip
    b = b[rng.permutation(n)]
    density = rng.uniform(1e-4, 1e-2, n)
    density[rng.choice(n, 32, replace=False)] = 0.0
    write_saelens(out / "a", a, a + 0.3 * rng.standard_normal((n, d)), density)
    write_saelens(out / "b", b, b + 0.3 * rng.standard_normal((n, d)), rng.uniform(1e-4, 1e-2, n))
    print(f"wrote {out / 'a'} and {out / 'b'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "toy")
