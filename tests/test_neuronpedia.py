"""Neuronpedia feature links and the explanation-export reader."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from sae_backend.errors import FormatError, InputError, SourceError
from sae_backend.neuronpedia import feature_url, load_explanations, split_id

NP_ID = "gpt2-small/6-res_sce-ajt"


def row(index, description, model="gpt2-small", layer="6-res_sce-ajt", **extra) -> dict:
    return {
        "modelId": model,
        "layer": layer,
        "index": index,
        "description": description,
        "explanationModelName": extra.pop("explainer", "gpt-4o-mini"),
        "typeName": "oai_token-act-pair",
        **extra,
    }


def write_batch(path: Path, rows: list[dict | str], gz: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- links


def test_feature_url():
    assert feature_url(NP_ID, 0) == "https://www.neuronpedia.org/gpt2-small/6-res_sce-ajt/0"
    assert feature_url(NP_ID, 46079).endswith("/6-res_sce-ajt/46079")
    assert feature_url(NP_ID, np.int64(17)).endswith("/17")  # indices straight from numpy
    assert feature_url("m x/s?y", 3) == "https://www.neuronpedia.org/m%20x/s%3Fy/3"
    assert split_id(NP_ID) == ("gpt2-small", "6-res_sce-ajt")


@pytest.mark.parametrize("bad_id", ["gpt2-small", "a/b/c", "/x", "x/", "", None])
def test_feature_url_bad_id(bad_id):
    with pytest.raises(InputError, match="expected 'modelId/sourceId'"):
        feature_url(bad_id, 1)


@pytest.mark.parametrize("bad_index", [-1, 1.5, "x", True, None])
def test_feature_url_bad_index(bad_index):
    with pytest.raises(InputError, match="non-negative integer"):
        feature_url(NP_ID, bad_index)


# ----------------------------------------------------------------------------- exports


def test_folder_of_batches_in_batch_order(tmp_path):
    folder = tmp_path / "export" / "explanations"
    # batch-10 sorts before batch-2 as text; numeric order must win for the order of descriptions
    write_batch(folder / "batch-10.jsonl.gz", [row("5", "third for 5")])
    write_batch(folder / "batch-2.jsonl.gz", [row("5", "second for 5"), row("0", "zero")])
    write_batch(folder / "batch-0.jsonl.gz", [row("5", "first for 5"), row("12", "twelve")])
    (folder / "README.txt").write_text("not a batch")
    expected = {5: ["first for 5", "second for 5", "third for 5"], 0: ["zero"], 12: ["twelve"]}
    assert load_explanations(folder) == expected
    assert load_explanations(tmp_path / "export") == expected  # the explanations/ subfolder


def test_single_file_plain_or_gzipped_and_duplicates(tmp_path):
    rows = [
        row("3", "a"),
        row("3", "a", explainer="claude"),  # same text by another explainer: kept once
        row("3", "b"),
        row(4, "int index"),
        "",
    ]
    gz = write_batch(tmp_path / "one.jsonl.gz", rows)
    plain = write_batch(tmp_path / "one.jsonl", rows, gz=False)
    assert load_explanations(gz) == load_explanations(plain) == {3: ["a", "b"], 4: ["int index"]}


def test_several_sources_need_an_id(tmp_path):
    path = write_batch(
        tmp_path / "mixed.jsonl.gz",
        [row("1", "sce one"), row("1", "other one", layer="6-res-jb"), row("2", "sce two")],
    )
    with pytest.raises(FormatError, match="several sources .*gpt2-small/6-res-jb"):
        load_explanations(path)
    assert load_explanations(path, NP_ID) == {1: ["sce one"], 2: ["sce two"]}
    assert load_explanations(path, "gpt2-small/6-res-jb") == {1: ["other one"]}
    assert load_explanations(path, "gpt2-small/none") == {}


@pytest.mark.parametrize(
    ("lines", "needle"),
    [
        (["{not json"], "mixed.jsonl.gz:1: not a JSON line"),
        ([json.dumps([1, 2])], ":1: expected a JSON object per line"),
        (
            [row("1", "ok"), {"modelId": "m", "layer": "l", "index": "2"}],
            ":2: explanation row has no 'description'",
        ),
        ([row("-3", "neg")], ":1: explanation index '-3' is not a non-negative integer"),
        ([row("1.5", "frac")], "index '1.5' is not"),
        ([row("7", 42)], ":1: explanation description is not a string"),
    ],
)
def test_malformed_rows(tmp_path, lines, needle):
    path = write_batch(tmp_path / "mixed.jsonl.gz", lines)
    with pytest.raises(FormatError) as info:
        load_explanations(path)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_broken_or_missing_files(tmp_path):
    truncated = tmp_path / "cut.jsonl.gz"
    data = gzip.compress(json.dumps(row("1", "x")).encode() * 50)
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError, match="cut.jsonl.gz: unreadable explanation export"):
        load_explanations(truncated)
    binary = tmp_path / "bin.jsonl"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(FormatError, match="bin.jsonl: unreadable explanation export"):
        load_explanations(binary)
    with pytest.raises(SourceError, match="no such explanation file or folder"):
        load_explanations(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no batch-N.jsonl.gz explanation files"):
        load_explanations(tmp_path / "empty")
