"""Families recover SAELens's synthetic hierarchies (sae_lens/synthetic/hierarchy) from a
ladder built on activations SAELens generates.

SAELens plants parent/child trees: `generate_hierarchy` draws the forest, and its modifier
lets a child fire only when its parent fires, mutually exclusive children keeping one. From
activations sampled that way (ActivationGenerator + the modifier) and random orthonormal
ground-truth directions, the test builds a three-level ladder of conditional-mean
dictionaries, i.e. the decoders an SAE converges to when each latent fires on exactly one
pattern (the fully absorbing solution of Chanin et al.):

    level 0 (one latent per root r):        E[x | r fires]
    level 1 (absorbing, per root):          E[x | r fires alone], and E[x | child c fires]
                                            for each child c of r (= r + c composites)
    level 2 (the true features):            the ground-truth direction of every feature

Known answer (tree mode, tau = 0.5): every root latent splits into exactly its own
1 + (number of children) level-1 latents, never into another tree's; every level-1 latent is
stable, its child being the root's own direction ("alone") or the child's direction
(composite); nothing vanishes and nothing is novel.

SAELens is loaded from `.refs/` (requirements-reference.txt, installed with --no-deps) under
stub parent packages, since `import sae_lens` itself pulls transformer-lens, datasets, ...
"""

from __future__ import annotations

import importlib
import logging
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from sae_backend.dictionary import Dictionary, RawSAE
from sae_backend.geometry.families import families

REFS = Path(__file__).resolve().parents[1] / ".refs"


@pytest.fixture(scope="module")
def synthetic():
    """sae_lens.synthetic.hierarchy and .activation_generator, without sae_lens/__init__."""
    root = REFS / "sae_lens"
    if not (root / "synthetic" / "hierarchy" / "hierarchy.py").is_file():
        pytest.skip("SAELens reference not installed: pip install --no-deps --target .refs "
                    "-r requirements-reference.txt")  # fmt: skip
    saved = {k: v for k, v in sys.modules.items() if k == "sae_lens" or k.startswith("sae_lens.")}
    for k in saved:
        del sys.modules[k]
    for name, folder in (("sae_lens", root), ("sae_lens.synthetic", root / "synthetic")):
        stub = types.ModuleType(name)
        stub.__path__ = [str(folder)]
        stub.logger = logging.getLogger(name)  # type: ignore[attr-defined]
        sys.modules[name] = stub
    try:
        hierarchy = importlib.import_module("sae_lens.synthetic.hierarchy")
        generator = importlib.import_module("sae_lens.synthetic.activation_generator")
    except ImportError as e:
        pytest.skip(f"SAELens's synthetic modules need {e.name} (requirements-demo.txt)")
    yield hierarchy, generator
    for k in [k for k in sys.modules if k == "sae_lens" or k.startswith("sae_lens.")]:
        del sys.modules[k]
    sys.modules.update(saved)


def trees(h) -> dict[int, list[int]]:
    """{root feature: [child features]} of a depth-1 SAELens hierarchy."""
    return {r.feature_index: [c.feature_index for c in r.children] for r in h.roots}


def test_families_recover_saelens_hierarchy(synthetic):
    hierarchy, generator = synthetic
    n_roots, d = 6, 64
    config = hierarchy.HierarchyConfig(
        total_root_nodes=n_roots, branching_factor=(2, 4), max_depth=1,
        mutually_exclusive_portion=1.0,
    )  # fmt: skip
    n_features = n_roots * 5  # enough indices for the widest branching
    h = hierarchy.generate_hierarchy(n_features, config, seed=3)
    tree = trees(h)
    assert len(tree) == n_roots and all(2 <= len(c) <= 4 for c in tree.values())
    used = sorted(h.feature_indices_used)
    torch.manual_seed(0)
    probs = torch.zeros(n_features)
    probs[list(tree)] = 0.3
    for kids in tree.values():
        probs[kids] = 0.6
    gen = generator.ActivationGenerator(n_features, probs, modify_activations=h.modifier)
    acts = gen.sample(40_000).numpy().astype(np.float64)
    for r, kids in tree.items():  # SAELens's rules: children only with the parent, one at most
        assert not (acts[:, kids].sum(1) > 0)[acts[:, r] == 0].any()
        assert ((acts[:, kids] > 0).sum(1) <= 1).all()

    q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((d, n_features)))
    truth = q.T  # orthonormal ground-truth directions, one per feature
    x = acts @ truth

    narrow = np.stack([x[acts[:, r] > 0].mean(0) for r in tree])
    wide_rows, wide_who = [], []  # wide_who: (root, None for "alone" or the child)
    for r, kids in tree.items():
        alone = (acts[:, r] > 0) & (acts[:, kids].sum(1) == 0)
        wide_rows.append(x[alone].mean(0))
        wide_who.append((r, None))
        for c in kids:
            wide_rows.append(x[acts[:, c] > 0].mean(0))
            wide_who.append((r, c))
    widest = truth[used]
    ladder = [Dictionary.from_raw(RawSAE(m), source=f"saelens/{i}", format="matrix")
              for i, m in enumerate((narrow, np.stack(wide_rows), widest))]  # fmt: skip
    fam = families(ladder, tau=0.5, cache=False)
    roots = list(tree)

    level0, level1 = fam.levels
    expected0 = {(i, j) for j, (r, _) in enumerate(wide_who) for i in [roots.index(r)]}
    assert set(zip(level0.parent.tolist(), level0.child.tolist(), strict=True)) == expected0
    assert level0.labels.tolist() == ["split"] * n_roots
    assert level0.n_children.tolist() == [1 + len(tree[r]) for r in roots]
    expected1 = {(j, used.index(r if c is None else c)) for j, (r, c) in enumerate(wide_who)}
    assert set(zip(level1.parent.tolist(), level1.child.tolist(), strict=True)) == expected1
    c0, c1 = fam.counts()
    assert (c0.split, c0.stable, c0.vanished, c0.novel) == (n_roots, 0, 0, 0)
    assert (c1.split, c1.stable, c1.vanished, c1.novel) == (0, len(wide_who), 0, 0)
