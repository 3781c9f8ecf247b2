"""dumps_with_raw: a sync skeleton with pre-encoded events comes out as the same JSON as encoding it whole."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from homeserver.core.event_format import RawJson, dumps_with_raw

leaves = st.none() | st.booleans() | st.integers() | st.text()
values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def with_raw(obj: Any, mark: list[int]) -> Any:
    """Every other dict value and list item replaced by its RawJson."""
    if isinstance(obj, dict):
        return {
            k: (RawJson(json.dumps(v)) if (mark.append(1) or len(mark) % 2) else with_raw(v, mark))
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [
            RawJson(json.dumps(v)) if (mark.append(1) or len(mark) % 2) else with_raw(v, mark) for v in obj
        ]
    return obj


@given(values)
def test_output_parses_to_the_same_value(value: Any) -> None:
    assert json.loads(dumps_with_raw(with_raw(value, []))) == value


def test_user_strings_that_look_like_placeholders_stay_strings() -> None:
    event = RawJson('{"type":"m.room.message"}')
    for sneaky in ("\ue0000", "\ue0001", "\ue000"):
        skeleton = {"events": [event], "account_data": {"content": {"x": sneaky, sneaky: 1}}}
        out = json.loads(dumps_with_raw(skeleton))
        assert out == {
            "events": [{"type": "m.room.message"}],
            "account_data": {"content": {"x": sneaky, sneaky: 1}},
        }


def test_raw_text_is_embedded_verbatim() -> None:
    assert dumps_with_raw({"a": [RawJson('{"b":1}'), 2], "c": "é"}) == '{"a":[{"b":1},2],"c":"é"}'
