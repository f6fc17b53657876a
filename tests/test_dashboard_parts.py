"""The dashboard's pure parts: size-limit wording, the one name rule, session entries."""

from __future__ import annotations

import re

import numpy as np
import pytest

from dashboard.session import Entry, check_name
from dashboard.text import too_big
from sae_backend.errors import InputError

MB = 2**20


@pytest.mark.parametrize(
    "size, limit, message",
    [
        (int(2.3 * MB), 2, "the upload is 2.3 MB; at most 2 MB"),  # once read "2 MB; at most 2 MB"
        (2 * MB, 1, "the upload is 2 MB; at most 1 MB"),
        (int(2.04 * MB), 2, "the upload is 2.04 MB; at most 2 MB"),
        (int(2.0006 * MB), 2, "the upload is 2.001 MB; at most 2 MB"),
        (int(2.0001 * MB), 2, "the upload is 2,097,256 bytes; at most 2,097,152 bytes (2 MB)"),
        (2 * MB + 1, 2, "the upload is 2,097,153 bytes; at most 2,097,152 bytes (2 MB)"),
        (int(700.4 * MB), 512, "the upload is 700 MB; at most 512 MB"),
    ],
)
def test_an_upload_over_the_limit_is_shown_larger_than_the_limit(size, limit, message):
    assert too_big(size, limit) == message


def test_every_size_over_the_limit_reads_as_more_than_the_limit():
    rng = np.random.default_rng(1)
    for limit in (1, 2, 16, 512):
        over = np.concatenate([[1, 2, 500, 524, 525, 1023], rng.integers(1, 3 * MB, 400)])
        for extra in over:
            shown = too_big(limit * MB + int(extra), limit)
            size, unit, most = re.fullmatch(
                r"the upload is ([\d.,]+) (MB|bytes); at most ([\d,]+) (?:MB|bytes).*", shown
            ).groups()
            value, cap = float(size.replace(",", "")), float(most.replace(",", ""))
            assert value > cap, shown
            assert cap == (limit if unit == "MB" else limit * MB)


@pytest.mark.parametrize("name", ["a", "toy-a", "L6.e2e_ds", "9lives", "x" * 40, "  padded "])
def test_names_that_can_be_used(name):
    assert check_name(name, {"other"}) == name.strip()


@pytest.mark.parametrize("name", ["", " ", "-lead", ".dot", "has space", "a/b", "x" * 41, "é"])
def test_names_that_cannot_be_used_get_one_message(name):
    with pytest.raises(InputError) as e:
        check_name(name, set())
    assert str(e.value) == (
        f"name {name.strip()!r}: use 1-40 letters, digits, '.', '_' or '-', starting with a "
        "letter or digit"
    )


def test_a_taken_name_is_refused():
    with pytest.raises(InputError, match=r"^the name 'toy-a' is taken; remove it first or choose"):
        check_name(" toy-a", {"toy-a", "toy-b"})


def test_entries_keep_only_set_options_sorted_and_compare_by_value():
    e = Entry.of("data/x", {"position": "", "orientation": "columns", "key": "W"})
    assert e.options == (("key", "W"), ("orientation", "columns"))
    assert e == Entry.of("data/x", {"key": "W", "orientation": "columns"})
    assert hash(e) == hash(Entry("data/x", (("key", "W"), ("orientation", "columns"))))
    assert e.option("orientation") == "columns" and e.option("position") == ""
    assert Entry.of("data/x") == Entry("data/x") and Entry("data/x").options == ()
