"""An event writer on a PostgreSQL older than 14 is refused with the reason, at start-up,
instead of failing on `SET idle_session_timeout` (ADR 0008's lease needs it)."""

from __future__ import annotations

import pytest

from homeserver.storage.writer_lock import ServerTooOld, require_lease_support


@pytest.mark.parametrize(("version", "shown"), [(130012, "PostgreSQL 13"), (90624, "PostgreSQL 9.6")])
def test_older_than_14_is_refused_naming_the_version(version: int, shown: str) -> None:
    with pytest.raises(ServerTooOld) as refused:
        require_lease_support(version)
    assert "need PostgreSQL 14 or later" in str(refused.value)
    assert str(refused.value).endswith(shown)


@pytest.mark.parametrize("version", [140000, 150020, 170002])
def test_14_and_later_are_accepted(version: int) -> None:
    require_lease_support(version)
