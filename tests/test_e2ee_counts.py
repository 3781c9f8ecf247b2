"""KeyService's in-memory one-time-key counts (what every /sync reports) never go stale.

A sync that reads the counts while a claim (or an upload) changes them must not
cache what it read: the claim already dropped the cached value, and a stale count
cached afterwards would be served until the next claim or upload - a client told it
still has keys does not upload more. The interleaving is forced here step by step
(coroutines driven by hand, a fake store that pauses mid-read), which a test over
HTTP can only hope to hit.
"""

from __future__ import annotations

from collections.abc import Coroutine, Generator
from typing import Any

from homeserver.core.e2ee import KeyService

USER, DEVICE = "@owner:example.org", "DEVICE"


class Pause:
    def __await__(self) -> Generator[str, None, None]:
        yield "paused"


class FakeE2eeStore:
    def __init__(self) -> None:
        self.one_time_keys = 5
        self.pause_reads = False

    async def count_one_time_keys(self, user_id: str, device_id: str) -> dict[str, int]:
        value = self.one_time_keys
        if self.pause_reads:
            await Pause()
        return {"signed_curve25519": value}

    async def unused_fallback_key_types(self, user_id: str, device_id: str) -> list[str]:
        return []

    async def claim_keys(self, claims: list[tuple[str, str, str]]) -> dict[Any, Any]:
        self.one_time_keys -= len(claims)
        return {(user_id, device_id): (f"{algorithm}:AAAA", {}) for user_id, device_id, algorithm in claims}

    async def upload_keys(
        self,
        user_id: str,
        device_id: str,
        device_keys: Any,
        change_stream_id: Any,
        one_time_keys: list[Any],
        fallback_keys: list[Any],
    ) -> None:
        self.one_time_keys += len(one_time_keys)


class FakeStorage:
    def __init__(self) -> None:
        self.e2ee = FakeE2eeStore()


class FakeNotifier:
    def wake_users(self, users: Any) -> None:
        pass


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that must not pause to its end."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("the coroutine paused")


def paused_read(keys: KeyService, store: FakeE2eeStore) -> Coroutine[Any, Any, Any]:
    store.pause_reads = True
    sync = keys.one_time_key_counts(USER, DEVICE)
    assert sync.send(None) == "paused"
    store.pause_reads = False
    return sync


def finish(coro: Coroutine[Any, Any, Any]) -> Any:
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("the coroutine paused again")


def service() -> tuple[KeyService, FakeE2eeStore]:
    storage = FakeStorage()
    keys = KeyService(storage, None, FakeNotifier())  # type: ignore[arg-type]
    return keys, storage.e2ee


def test_count_read_during_a_claim_is_not_cached() -> None:
    keys, store = service()
    assert run(keys.one_time_key_counts(USER, DEVICE)) == {"signed_curve25519": 5}  # cached
    run(keys.claim({"one_time_keys": {USER: {DEVICE: "signed_curve25519"}}}))  # drops the cache
    sync = paused_read(keys, store)  # a sync reads 4 ...
    run(keys.claim({"one_time_keys": {USER: {DEVICE: "signed_curve25519"}}}))  # ... a claim makes it 3
    assert finish(sync) == {"signed_curve25519": 4}  # that sync answers with what it read
    # The next sync must see 3, not the 4 read before the claim.
    assert run(keys.one_time_key_counts(USER, DEVICE)) == {"signed_curve25519": 3}


def test_count_read_during_an_upload_is_not_cached() -> None:
    keys, store = service()
    sync = paused_read(keys, store)
    run(keys.upload(USER, DEVICE, {"one_time_keys": {"signed_curve25519:AAAA": {"key": "k"}}}))
    assert finish(sync) == {"signed_curve25519": 5}
    assert run(keys.one_time_key_counts(USER, DEVICE)) == {"signed_curve25519": 6}
