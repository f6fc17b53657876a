"""The catalogue of the e2e paper's SAEs, checked against the team's reference notes.

The reference (../shared/reference/e2e-paper-runs.md, from the authors' scripts) is parsed
here: its tables, seed pairs, file-name patterns and SAELens names. Nothing is copied into
the test, so a typo on either side fails.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
import yaml

from sae_backend.catalogue import CATALOGUE_PATH, catalogue, load_catalogue
from sae_backend.errors import FormatError
from sae_backend.uri import parse_uri

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "e2e-paper-runs.md"
TYPE_COLUMNS = {"local": "local", "e2e": "e2e", "e2e+ds": "downstream"}
TYPE_WORDS = {"local": "local", "e2e": "e2e", "e2e+downstream": "downstream"}
TABLES = {
    "Runs matched by CE-loss increase": "ce",
    "Runs matched by L0": "l0",
    "Runs matched by number of alive elements": "alive",
}


@pytest.fixture(scope="module")
def ref() -> str:
    if not REFERENCE.is_file():
        pytest.skip(f"reference notes not found at {REFERENCE}")
    return REFERENCE.read_text(encoding="utf-8")


def _table_after(text: str, heading: str) -> list[list[str]]:
    """Rows (cells) of the first markdown table after the line starting with `heading`."""
    lines = text[text.index(heading) :].splitlines()[1:]
    rows = []
    for line in lines:
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not all(set(c) <= {"-", ":"} for c in cells):
            rows.append(cells)
    return rows


def _braces(pattern: str) -> set[str]:
    """Expand shell-style {a,b} alternatives: 'x_{a,b}' -> {'x_a', 'x_b'}."""
    parts = re.split(r"\{([^{}]*)\}", pattern)
    choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return {"".join(c) for c in itertools.product(*choices)}


# ----------------------------------------------------------------------------- W&B runs


def test_matched_runs_equal_reference_tables(ref):
    cat = catalogue()
    for heading, criterion in TABLES.items():
        header, *rows = _table_after(ref, heading)
        assert header[0] == "layer"
        types = [TYPE_COLUMNS[h] for h in header[1:]]
        expected = {
            (int(row[0]), t): run for row in rows for t, run in zip(types, row[1:], strict=True)
        }
        got = {(e.layer, e.sae_type): e.run_id for e in cat.select(criterion=criterion)}
        assert got == expected, criterion
    assert len(cat.entries) == 3 * 3 * 3


def test_seed_pairs_and_extra_run_equal_reference(ref):
    section = ref[ref.index("Seed pairs") :]
    layer = int(re.search(r"\(layer (\d+)", section).group(1))
    pairs = re.findall(r"(local|e2e\+ds|e2e) \((\w+),\s*(\w+)\)", section)
    expected = {(layer, TYPE_COLUMNS[t], (a, b)) for t, a, b in pairs}
    got = {(p.layer, p.sae_type, p.run_ids) for p in catalogue().seed_pairs}
    assert len(pairs) == 3 and got == expected
    for p in catalogue().seed_pairs:
        assert p.uris == tuple(f"wandb:sparsify/gpt2/{r}" for r in p.run_ids)
    pointed = re.search(r"pointed readers to `(\w+/\w+/\w+)`", ref).group(1)
    assert [uri for uri, _note in catalogue().also] == [f"wandb:{pointed}"]


def test_model_facts_equal_reference(ref):
    data = yaml.safe_load(CATALOGUE_PATH.read_text())
    m = re.search(r"SAEs\s+on\s+`blocks\.\{([\d,]+)\}\.hook_resid_pre`", ref)
    assert data["layers"] == [int(x) for x in m.group(1).split(",")]
    m = re.search(r"\(([\d,]+)\s+features\s+×\s+(\d+)\)", ref)
    assert data["n_features"] == int(m.group(1).replace(",", ""))
    assert data["d_model"] == int(m.group(2))
    assert re.search(r"project `([\w/]+)`", ref).group(1) == catalogue().wandb_project


# ----------------------------------------------------------------------------- Hugging Face


def test_raw_hf_files_equal_reference_pattern(ref):
    section = ref[ref.index("## Hugging Face") :]
    repo = re.search(r"`([\w-]+/e2e-saes-gpt2)`", section).group(1)
    pattern = re.search(r"named\s+`([^`]+\.pt)`", section).group(1)
    names = _braces(pattern)
    got = {}
    for e in catalogue().entries:
        if e.criterion in ("ce", "l0"):
            ref_ = parse_uri(e.hf)
            assert ref_.scheme == "hf" and ref_.parts[0] == repo
            got[e.criterion, e.layer, e.sae_type] = ref_.parts[1]
    assert set(got.values()) == names
    for (criterion, layer, sae_type), name in got.items():  # each cell gets its own file
        assert name == f"{sae_type}_similar_{criterion}_layer_{layer}.pt"


def test_saelens_names_equal_reference(ref):
    section = ref[ref.index("## SAELens releases") :]
    rows = _table_after(section, "| X |")
    code_table = {
        r[0].strip("`"): (TYPE_WORDS[r[1]], {"CE loss": "ce", "L0": "l0"}[r[2]]) for r in rows
    }
    release_t = re.search(r"Releases `([^`]+)`", section).group(1)
    id_t = re.search(r"sae ids `([^`]+)`", section).group(1)
    np_t = re.search(r"Neuronpedia\s+source\s+`([^`]+)`", section).group(1)
    hf_section = ref[ref.index("SAELens-format copies") :]
    repo_t = re.search(r"repos\s+`([^`]+)`", hf_section).group(1)
    folder_t = re.search(r"folder `([^`]+)`", hf_section).group(1)
    layers = catalogue().layers

    expected = {}
    for code, (sae_type, criterion) in code_table.items():
        for layer in layers:

            def fill(t: str, code: str = code, layer: int = layer) -> str:
                return t.replace("{X}", code).replace("{L}", str(layer))

            expected[fill(release_t), fill(id_t)] = (
                fill(repo_t),
                fill(folder_t),
                fill(np_t),
                sae_type,
                criterion,
                layer,
            )
    got = {
        k: (s.repo_id, s.path, s.neuronpedia_id, s.sae_type, s.criterion, s.layer)
        for k, s in catalogue().saelens.items()
    }
    assert got == expected
    # the reference marks which names were inferred rather than read in the authors' scripts
    inferred = set(re.search(r"`(\w+)`/`(\w+)`\s+follow\s+the\s+same\s+pattern", section).groups())
    assert {s.release for s in catalogue().saelens.values() if s.inferred} == {
        release_t.replace("{X}", c) for c in inferred
    }


def test_entries_link_the_same_sae_under_each_name():
    cat = catalogue()
    for e in cat.select(criterion="ce") + cat.select(criterion="l0"):
        s = cat.saelens[tuple(parse_uri(e.saelens).parts)]
        assert (s.sae_type, s.criterion, s.layer) == (e.sae_type, e.criterion, e.layer)
        assert e.hf_saelens == f"hf:{s.repo_id}:{s.path}"
        assert e.neuronpedia_id == s.neuronpedia_id
        assert e.saelens_inferred == s.inferred
    # alive-table cells borrow the copies of the same run from the CE/L0 tables, or have none
    published = {e.run_id: e for e in cat.entries if e.criterion != "alive"}
    for e in cat.select(criterion="alive"):
        src = published.get(e.run_id)
        if src is None:
            assert e.hf is e.saelens is e.hf_saelens is e.neuronpedia_id is None
        else:
            assert (e.hf, e.saelens, e.neuronpedia_id) == (src.hf, src.saelens, src.neuronpedia_id)
    assert any(e.hf is None for e in cat.select(criterion="alive"))


# ----------------------------------------------------------------------------- API


def test_every_uri_parses_to_its_scheme():
    for e in catalogue().entries:
        for kind, uri in e.uris().items():
            assert parse_uri(uri).scheme == kind.split("_")[0]
        assert parse_uri(e.wandb).parts == ("sparsify", "gpt2", e.run_id)
        assert e.label.startswith(f"layer {e.layer} · ")


def test_select_and_find():
    cat = catalogue()
    one = cat.select(criterion="l0", layer=6, sae_type="e2e")
    assert [e.run_id for e in one] == [
        cat.select(criterion="alive", layer=6, sae_type="e2e")[0].run_id
    ]
    assert {(e.criterion, e.layer) for e in cat.select(sae_type="local")} == {
        (c, la) for c in cat.criteria for la in cat.layers
    }
    run = one[0].run_id
    assert {e.criterion for e in cat.find(run)} == {"l0", "alive"}
    assert cat.find(one[0].wandb) == cat.find(run)
    assert [e.criterion for e in cat.find(one[0].hf)] == ["l0", "alive"]
    assert cat.find("wandb:sparsify/gpt2/unknown") == []


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda d: d["runs"]["ce"][6].update(bogus="x"), "unknown sae_type 'bogus'"),
        (lambda d: d.pop("hf_raw"), "KeyError"),
        (lambda d: d["runs"]["l0"].update({7: {"local": "x"}}), "layer 7 is not in layers"),
    ],
)
def test_malformed_catalogue_is_one_format_error(tmp_path, edit, needle):
    data = yaml.safe_load(CATALOGUE_PATH.read_text())
    edit(data)
    path = tmp_path / "catalogue.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(FormatError) as info:
        load_catalogue(path)
    assert needle in str(info.value) and "\n" not in str(info.value)
    path.write_text("runs: [unclosed\n")
    with pytest.raises(FormatError, match="cannot read the SAE catalogue"):
        load_catalogue(path)
