"""The dashboard's pure parts: the one name rule, session entries."""

from __future__ import annotations

import pytest

from dashboard.session import Entry, check_name
from sae_backend.errors import InputError


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
