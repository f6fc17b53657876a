"""Parsing source strings: one URIError line or a SourceRef, never an OSError from a probe."""

from __future__ import annotations

import pytest

from sae_backend import load
from sae_backend.errors import SAEError, URIError
from sae_backend.uri import parse_uri, path_exists

LONG = "A" * 300


@pytest.mark.parametrize(
    "uri, scheme, position",
    [
        (LONG + "#x", "local", "x"),
        ("/tmp/" + LONG + "#blocks.6", "local", "blocks.6"),
        ("file:" + LONG + "#x", "local", "x"),
        ("hf:o/r:" + "f" * 300 + ".pt#x", "hf", "x"),
    ],
)
def test_names_too_long_for_the_file_system_parse(uri, scheme, position) -> None:
    """Path('A' * 300).exists() raises OSError (ENAMETOOLONG) on Linux: such a name cannot
    exist, so '#' is a position separator and parsing goes on."""
    ref = parse_uri(uri)
    assert (ref.scheme, ref.position) == (scheme, position)


def test_path_exists_is_false_for_impossible_names(tmp_path) -> None:
    assert path_exists(str(tmp_path))
    assert not path_exists(LONG)
    assert not path_exists(str(tmp_path / LONG / "x"))
    assert not path_exists("a\x00b")


@pytest.mark.parametrize(
    "uri",
    ["wandb:" + "e" * 300 + "/p/r", "wandb:e/p/" + "r" * 129, "saelens:" + "r" * 300 + "/x"],
)
def test_overlong_remote_names_are_one_uri_error(uri) -> None:
    with pytest.raises(URIError) as e:
        parse_uri(uri)
    assert "\n" not in str(e.value) and len(str(e.value)) < 300


@pytest.mark.parametrize("uri", [LONG + "#x", LONG, "/tmp/" + LONG + "/ae.pt#blocks.3"])
def test_loading_an_impossible_path_is_one_error_line(uri) -> None:
    with pytest.raises(SAEError) as e:
        load(uri)
    assert "\n" not in str(e.value)
