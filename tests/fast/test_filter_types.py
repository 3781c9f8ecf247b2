"""Event-type patterns in sync filters: `*` is the only wildcard; everything else is literal."""

from __future__ import annotations

import pytest

from homeserver.core.filters import EventFilter

pytestmark = pytest.mark.fast


def allows(types: list[str], event_type: str) -> bool:
    return EventFilter.parse({"types": types}).allows(event_type, "@a:hs")


def test_star_matches_any_run_of_characters() -> None:
    assert allows(["m.room.*"], "m.room.message")
    assert allows(["*.message"], "m.room.message")
    assert not allows(["m.call.*"], "m.room.message")


def test_brackets_and_question_marks_are_literal_without_a_star() -> None:
    # fnmatch read `[...]` as a character class: "m.room.[m]essage" matched m.room.message.
    assert not allows(["m.room.[m]essage"], "m.room.message")
    assert allows(["m.room.[m]essage"], "m.room.[m]essage")
    assert not allows(["m.room.messag?"], "m.room.message")


def test_not_types_use_the_same_rule() -> None:
    only_calls_hidden = EventFilter.parse({"not_types": ["m.call.*"]})
    assert not only_calls_hidden.allows("m.call.invite", "@a:hs")
    assert only_calls_hidden.allows("m.room.message", "@a:hs")
