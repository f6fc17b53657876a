"""`streamlit run app.py` with every compare() top-k pass slowed down, for browser tests.

    python tests/slow_server.py SECONDS [streamlit options ...]

Each top-k pass of `sae_backend.geometry.compare` first sleeps SECONDS in ten steps, reporting
progress as it goes, then computes as usual, so a page's results arrive late but right: what a
visitor sees while a 46,080-feature comparison runs, in seconds on the toy demo. Test code
only: the app itself has no such switch.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sae_backend.geometry.topk as topk_module  # noqa: E402
from tests.compare_topk import compare_only  # noqa: E402

STEPS = 10


def slowed(seconds: float):
    real = topk_module.topk_cosine

    def topk_cosine(a, b, k, **kwargs):
        progress = kwargs.get("progress")
        for step in range(STEPS):
            if progress is not None:
                progress(step * len(a) // STEPS, len(a))
            time.sleep(seconds / STEPS)
        return real(a, b, k, **kwargs)

    return compare_only(real, topk_cosine)


if __name__ == "__main__":
    topk_module.topk_cosine = slowed(float(sys.argv[1]))
    from streamlit.web.cli import main

    sys.argv = ["streamlit", "run", str(ROOT / "app.py"), *sys.argv[2:]]
    main()
