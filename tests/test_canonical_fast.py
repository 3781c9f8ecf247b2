"""encode_canonical_event_json (orjson) writes exactly canonicaljson's bytes for every value
that check_canonical_values accepts, and check_canonical_values refuses what room versions
6+ forbid."""

from __future__ import annotations

from typing import Any

import canonicaljson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from homeserver.events.canonical import check_canonical_values, encode_canonical_event_json

SAFE = 2**53 - 1
text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)))  # no lone surrogates
leaves = st.none() | st.booleans() | st.integers(-SAFE, SAFE) | text
values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(text, inner, max_size=5),
    max_leaves=40,
)


@settings(max_examples=400)
@given(values)
def test_same_bytes_as_canonicaljson(value: Any) -> None:
    check_canonical_values(value)
    assert encode_canonical_event_json(value) == canonicaljson.encode_canonical_json(value)


def test_awkward_strings_and_deep_nesting() -> None:
    awkward = {"\u2028": '\x00\x1f"\\/', "é": "😀", "a": [{"z": 1, "Z": 2, "\U0001f600": 3, "\uffff": 4}]}
    assert encode_canonical_event_json(awkward) == canonicaljson.encode_canonical_json(awkward)
    deep: Any = 1
    for _ in range(400):  # past orjson's nesting limit: canonicaljson writes it
        deep = [deep]
    assert encode_canonical_event_json(deep) == canonicaljson.encode_canonical_json(deep)


@pytest.mark.parametrize(
    "bad", [1.5, 1.0, float("nan"), float("inf"), 2**53, -(2**53), {"a": [0, {"b": 0.5}]}, {1: "x"}, (1, 2)]
)
def test_what_room_versions_6_and_later_forbid_is_refused(bad: Any) -> None:
    with pytest.raises(ValueError):
        check_canonical_values(bad)
