"""Loaded dictionaries come back from the disk cache intact, and never stale."""

from __future__ import annotations

import os

import numpy as np
import pytest

from sae_backend import load
from sae_backend.cache import ArrayCache
from sae_backend.errors import FormatError
from tests.factories import planted, write_saelens


def test_second_load_is_a_cache_hit_with_identical_content(tmp_path):
    p = planted()
    folder = write_saelens(tmp_path / "sae", p.decoder, p.encoder, density=np.linspace(0, 0.1, 10))
    store = ArrayCache(tmp_path / "cache")
    first = load(str(folder), cache=store)
    second = load(str(folder), cache=store)
    assert store.stats.misses == 1 and store.stats.hits == 1
    assert second.fingerprint == first.fingerprint and second.meta == first.meta
    for name in ("decoder", "encoder", "decoder_norms", "alive", "density"):
        np.testing.assert_array_equal(getattr(second, name), getattr(first, name))
    assert second.n_alive == first.n_alive == 8  # one zero density, one zero decoder row


def test_edited_files_and_other_options_are_not_served_from_cache(tmp_path):
    p = planted()
    folder = write_saelens(tmp_path / "sae", p.decoder, p.encoder)
    store = ArrayCache(tmp_path / "cache")
    before = load(str(folder), cache=store)
    # new weights in place (same names): the cached entry must not be used
    write_saelens(tmp_path / "sae", p.decoder[::-1].copy(), p.encoder)
    weights = folder / "sae_weights.safetensors"
    st = os.stat(weights)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    after = load(str(folder), cache=store)
    assert store.stats.misses == 2
    np.testing.assert_allclose(after.decoder, before.decoder[::-1], atol=1e-7)
    assert after.fingerprint != before.fingerprint


def test_failed_load_caches_nothing(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    store = ArrayCache(tmp_path / "cache")
    for _ in range(2):  # the one-line error both times: nothing was stored in between
        with pytest.raises(FormatError, match="bad.pt"):
            load(str(bad), cache=store)
    assert store.stats.misses == 2 and store.stats.failures == 2


def test_a_download_in_progress_beside_the_files_does_not_change_the_key(tmp_path):
    """A `.partial-*` folder or file (a download running, or one a killed process left) is
    never read, so its appearing or vanishing must not force a recompute."""
    p = planted()
    folder = write_saelens(tmp_path / "sae", p.decoder, p.encoder)
    store = ArrayCache(tmp_path / "cache")
    load(str(folder), cache=store)
    (folder / ".partial-abc").mkdir()
    (folder / ".partial-abc" / "sae_weights.safetensors").write_bytes(b"half a file")
    (folder / ".partial-x.json").write_text("{")
    load(str(folder), cache=store)
    assert store.stats.misses == 1 and store.stats.hits == 1
