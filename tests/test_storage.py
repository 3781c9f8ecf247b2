"""The store modules (homeserver.storage) on both engines, in-process with pytest-twisted."""

from __future__ import annotations

import json
from collections.abc import Coroutine
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, DeferredList

from homeserver.events.canonical import encode_canonical_json
from homeserver.events.hashing import add_content_hash, check_content_hash, compute_event_id
from homeserver.storage import Storage
from homeserver.storage.accounts import ThreepidExists, UserExists
from homeserver.storage.auth_sessions import ValidationSession
from homeserver.storage.database import Database
from homeserver.storage.devices import NewRefreshToken

NOW = 1_700_000_000_000
HOUR = 3_600_000
ALICE = "@alice:example.org"
BOB = "@bob:example.org"


async def gather(*coros: Coroutine[Any, Any, Any]) -> list[tuple[bool, Any]]:
    """Run coroutines concurrently; (succeeded, result or exception) per coroutine, in order."""
    results = await DeferredList([Deferred.fromCoroutine(c) for c in coros], consumeErrors=True)
    return [(ok, value if ok else value.value) for ok, value in results]


async def count(db: Database, sql: str, *args: Any) -> int:
    rows = await db.query("count", sql, *args)
    return int(rows[0][0])


# Users and email addresses --------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_create_and_get_user(storage: Storage) -> None:
    accounts = storage.accounts
    assert await accounts.get_user(ALICE) is None
    assert not await accounts.user_exists(ALICE)

    await accounts.create_user(ALICE, "$argon2id$hash", NOW, displayname="Alice")
    await accounts.create_user(BOB, None, NOW + 1, is_admin=True)

    alice = await accounts.get_user(ALICE)
    assert alice is not None
    assert (alice.user_id, alice.password_hash, alice.created_ts) == (ALICE, "$argon2id$hash", NOW)
    assert alice.is_admin is False and alice.deactivated is False
    bob = await accounts.get_user(BOB)
    assert bob is not None
    assert bob.password_hash is None and bob.is_admin is True
    assert await accounts.user_exists(ALICE)
    assert await accounts.get_profile(ALICE) == ("Alice", None)
    assert await accounts.get_profile(BOB) == (None, None)

    await accounts.set_password_hash(ALICE, "$argon2id$other")
    await accounts.set_admin(ALICE, True)
    alice = await accounts.get_user(ALICE)
    assert alice is not None and alice.password_hash == "$argon2id$other" and alice.is_admin is True


@pytest_twisted.ensureDeferred
async def test_duplicate_user_raises_user_exists(storage: Storage) -> None:
    await storage.accounts.create_user(ALICE, "h1", NOW, email="alice@example.org")
    with pytest.raises(UserExists):
        await storage.accounts.create_user(ALICE, "h2", NOW + 1)
    user = await storage.accounts.get_user(ALICE)
    assert user is not None and user.password_hash == "h1"


@pytest_twisted.ensureDeferred
async def test_email_taken_raises_threepid_exists_and_creates_nothing(storage: Storage) -> None:
    await storage.accounts.create_user(ALICE, "h", NOW, email="shared@example.org")
    with pytest.raises(ThreepidExists):
        await storage.accounts.create_user(BOB, "h", NOW, email="shared@example.org")
    # The transaction rolled back: no user, no profile for bob.
    assert await storage.accounts.get_user(BOB) is None
    assert await storage.accounts.get_profile(BOB) is None
    assert await storage.accounts.user_for_email("shared@example.org") == (ALICE, False)


@pytest_twisted.ensureDeferred
async def test_concurrent_create_of_one_user_id_exactly_one_wins(storage: Storage) -> None:
    results = await gather(*(storage.accounts.create_user(ALICE, f"hash{i}", NOW + i) for i in range(5)))
    winners = [r for ok, r in results if ok]
    losers = [r for ok, r in results if not ok]
    assert len(winners) == 1
    assert len(losers) == 4
    assert all(isinstance(e, UserExists) for e in losers), losers
    assert await count(storage.db, "SELECT COUNT(*) FROM users WHERE user_id = ?", ALICE) == 1
    assert await count(storage.db, "SELECT COUNT(*) FROM profiles WHERE user_id = ?", ALICE) == 1


@pytest_twisted.ensureDeferred
async def test_email_lookups(storage: Storage) -> None:
    accounts = storage.accounts
    await accounts.create_user(ALICE, "h", NOW, email="alice@example.org", email_validated=True)
    await accounts.create_user(BOB, "h", NOW + 5, email="bob@example.org")

    assert await accounts.user_for_email("alice@example.org") == (ALICE, True)
    assert await accounts.user_for_email("bob@example.org") == (BOB, False)
    assert await accounts.user_for_email("nobody@example.org") is None
    assert not await accounts.has_unvalidated_email(ALICE)
    assert await accounts.has_unvalidated_email(BOB)
    assert await accounts.get_threepids(ALICE) == [("email", "alice@example.org", NOW, NOW)]
    assert await accounts.get_threepids(BOB) == [("email", "bob@example.org", NOW + 5, None)]

    await accounts.mark_email_validated("bob@example.org", NOW + 10)
    assert await accounts.user_for_email("bob@example.org") == (BOB, True)
    assert not await accounts.has_unvalidated_email(BOB)
    # Validating again does not move the timestamp.
    await accounts.mark_email_validated("bob@example.org", NOW + 20)
    assert await accounts.get_threepids(BOB) == [("email", "bob@example.org", NOW + 5, NOW + 10)]

    await accounts.deactivate(BOB)
    assert await accounts.user_for_email("bob@example.org") is None
    bob = await accounts.get_user(BOB)
    assert bob is not None and bob.deactivated and bob.password_hash is None


# Devices and tokens ----------------------------------------------------------------


async def tokens_of(db: Database, user_id: str, device_id: str) -> tuple[list[str], list[str]]:
    access = await db.query(
        "t",
        "SELECT token_id FROM access_tokens WHERE user_id = ? AND device_id = ? ORDER BY token_id",
        user_id,
        device_id,
    )
    refresh = await db.query(
        "t",
        "SELECT token_hash FROM refresh_tokens WHERE user_id = ? AND device_id = ? ORDER BY token_hash",
        user_id,
        device_id,
    )
    return [r[0] for r in access], [r[0] for r in refresh]


@pytest_twisted.ensureDeferred
async def test_login_device_creates_device_and_token(storage: Storage) -> None:
    await storage.accounts.create_user(ALICE, "h", NOW)
    devices = storage.devices
    await devices.login_device(ALICE, "DEV1", "Phone", "tok1", NOW + HOUR, None, NOW, "10.0.0.1")

    device = await devices.get_device(ALICE, "DEV1")
    assert device is not None
    assert (device.display_name, device.last_seen_ts, device.last_seen_ip) == ("Phone", NOW, "10.0.0.1")
    token = await devices.get_access_token("tok1")
    assert token is not None
    assert (token.user_id, token.device_id, token.expires_ts) == (ALICE, "DEV1", NOW + HOUR)
    assert await tokens_of(storage.db, ALICE, "DEV1") == (["tok1"], [])
    refreshable = await storage.db.query("t", "SELECT refreshable FROM access_tokens WHERE token_id = 'tok1'")
    assert not refreshable[0][0]

    await devices.set_device_display_name(ALICE, "DEV1", "Laptop")
    await devices.touch_device(ALICE, "DEV1", NOW + 7, "10.0.0.2")
    device = await devices.get_device(ALICE, "DEV1")
    assert device is not None
    assert (device.display_name, device.last_seen_ts, device.last_seen_ip) == ("Laptop", NOW + 7, "10.0.0.2")

    await devices.delete_access_token("tok1")
    assert await devices.get_access_token("tok1") is None


@pytest_twisted.ensureDeferred
async def test_login_again_with_same_device_replaces_its_tokens(storage: Storage) -> None:
    await storage.accounts.create_user(ALICE, "h", NOW)
    devices = storage.devices
    await devices.login_device(
        ALICE, "DEV1", "Phone", "tok1", NOW + HOUR, NewRefreshToken("rh1", NOW + 10 * HOUR), NOW, None
    )
    await devices.login_device(ALICE, "DEV2", None, "tok2", NOW + HOUR, None, NOW, None)
    assert await tokens_of(storage.db, ALICE, "DEV1") == (["tok1"], ["rh1"])

    await devices.login_device(
        ALICE, "DEV1", "Ignored", "tok3", NOW + HOUR, NewRefreshToken("rh3", NOW + 10 * HOUR), NOW + 50, "ip"
    )
    assert await tokens_of(storage.db, ALICE, "DEV1") == (["tok3"], ["rh3"])
    assert await devices.get_access_token("tok1") is None
    assert await devices.get_refresh_token("rh1") is None
    # One device row, still with its first display name; the other device is untouched.
    assert [d.device_id for d in await devices.get_devices(ALICE)] == ["DEV1", "DEV2"]
    device = await devices.get_device(ALICE, "DEV1")
    assert device is not None and device.display_name == "Phone" and device.last_seen_ts == NOW + 50
    assert await tokens_of(storage.db, ALICE, "DEV2") == (["tok2"], [])


@pytest_twisted.ensureDeferred
async def test_delete_devices_returns_revoked_tokens_and_removes_rows(storage: Storage) -> None:
    await storage.accounts.create_user(ALICE, "h", NOW)
    devices = storage.devices
    for n in (1, 2, 3):
        await devices.login_device(
            ALICE, f"DEV{n}", None, f"tok{n}", NOW + HOUR, NewRefreshToken(f"rh{n}", NOW + HOUR), NOW, None
        )

    revoked = await devices.delete_devices(ALICE, ["DEV1", "DEV2", "NO_SUCH_DEVICE"])
    assert sorted(revoked) == ["tok1", "tok2"]
    assert [d.device_id for d in await devices.get_devices(ALICE)] == ["DEV3"]
    for n in (1, 2):
        assert await devices.get_device(ALICE, f"DEV{n}") is None
        assert await tokens_of(storage.db, ALICE, f"DEV{n}") == ([], [])
    assert await tokens_of(storage.db, ALICE, "DEV3") == (["tok3"], ["rh3"])

    assert await devices.delete_all_devices(ALICE) == ["tok3"]
    assert await devices.get_devices(ALICE) == []
    assert await count(storage.db, "SELECT COUNT(*) FROM refresh_tokens") == 0


@pytest_twisted.ensureDeferred
async def test_refresh_token_rotation_works_once(storage: Storage) -> None:
    await storage.accounts.create_user(ALICE, "h", NOW)
    devices = storage.devices
    await devices.login_device(
        ALICE, "DEV1", None, "tok1", NOW + HOUR, NewRefreshToken("rh1", NOW + HOUR), NOW, None
    )
    assert await devices.get_refresh_token("rh1") == (ALICE, "DEV1", NOW + HOUR)

    result = await devices.rotate_refresh_token(
        "rh1", NOW + 1, "tok2", NOW + 2 * HOUR, NewRefreshToken("rh2", NOW + 2 * HOUR)
    )
    assert result == (ALICE, "DEV1")
    assert await tokens_of(storage.db, ALICE, "DEV1") == (["tok2"], ["rh2"])

    # The spent token cannot be used again.
    again = await devices.rotate_refresh_token(
        "rh1", NOW + 2, "tok3", NOW + 2 * HOUR, NewRefreshToken("rh3", NOW + 2 * HOUR)
    )
    assert again is None
    assert await tokens_of(storage.db, ALICE, "DEV1") == (["tok2"], ["rh2"])
    assert (
        await devices.rotate_refresh_token(
            "unknown", NOW, "tok4", NOW + HOUR, NewRefreshToken("rh4", NOW + HOUR)
        )
        is None
    )


@pytest_twisted.ensureDeferred
async def test_concurrent_refresh_of_one_token_only_one_wins(storage: Storage) -> None:
    await storage.accounts.create_user(ALICE, "h", NOW)
    devices = storage.devices
    await devices.login_device(
        ALICE, "DEV1", None, "tok1", NOW + HOUR, NewRefreshToken("rh1", NOW + HOUR), NOW, None
    )
    results = await gather(
        *(
            devices.rotate_refresh_token(
                "rh1", NOW + 1, f"new_tok{i}", NOW + HOUR, NewRefreshToken(f"new_rh{i}", NOW + HOUR)
            )
            for i in range(5)
        )
    )
    assert all(ok for ok, _ in results), results
    values = [value for _, value in results]
    assert values.count((ALICE, "DEV1")) == 1
    assert values.count(None) == 4
    winner = values.index((ALICE, "DEV1"))
    assert await tokens_of(storage.db, ALICE, "DEV1") == ([f"new_tok{winner}"], [f"new_rh{winner}"])


@pytest_twisted.ensureDeferred
async def test_expired_refresh_token_is_refused_and_spent(storage: Storage) -> None:
    await storage.accounts.create_user(ALICE, "h", NOW)
    devices = storage.devices
    await devices.login_device(
        ALICE, "DEV1", None, "tok1", NOW + HOUR, NewRefreshToken("rh1", NOW + HOUR), NOW, None
    )
    result = await devices.rotate_refresh_token(
        "rh1", NOW + HOUR, "tok2", NOW + 2 * HOUR, NewRefreshToken("rh2", NOW + 2 * HOUR)
    )
    assert result is None
    # No new tokens were issued; the old access token is left to expire on its own.
    access, refresh = await tokens_of(storage.db, ALICE, "DEV1")
    assert "tok2" not in access and "rh2" not in refresh
    assert await devices.get_refresh_token("rh1") is None


@pytest_twisted.ensureDeferred
async def test_revoke_all_tokens_with_and_without_except_device(storage: Storage) -> None:
    await storage.accounts.create_user(ALICE, "h", NOW)
    await storage.accounts.create_user(BOB, "h", NOW)
    devices = storage.devices
    for n in (1, 2, 3):
        await devices.login_device(
            ALICE, f"DEV{n}", None, f"tok{n}", NOW + HOUR, NewRefreshToken(f"rh{n}", NOW + HOUR), NOW, None
        )
    await devices.login_device(BOB, "BOBDEV", None, "bobtok", NOW + HOUR, None, NOW, None)

    revoked = await devices.revoke_all_tokens(ALICE, except_device="DEV2")
    assert sorted(revoked) == ["tok1", "tok3"]
    assert await tokens_of(storage.db, ALICE, "DEV1") == ([], [])
    assert await tokens_of(storage.db, ALICE, "DEV2") == (["tok2"], ["rh2"])
    assert await tokens_of(storage.db, ALICE, "DEV3") == ([], [])
    # Devices themselves stay; only their tokens go.
    assert len(await devices.get_devices(ALICE)) == 3

    assert await devices.revoke_all_tokens(ALICE) == ["tok2"]
    assert await tokens_of(storage.db, ALICE, "DEV2") == ([], [])
    assert await devices.get_access_token("bobtok") is not None


# Short-lived auth state -------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_ui_auth_session_stage_completion(storage: Storage) -> None:
    sessions = storage.auth_sessions
    await sessions.create_ui_auth_session("S1", "/_matrix/client/v3/register", NOW)
    session = await sessions.get_ui_auth_session("S1")
    assert session is not None
    assert (session.uri, session.created_ts, session.user_id, session.completed) == (
        "/_matrix/client/v3/register",
        NOW,
        None,
        [],
    )

    assert await sessions.mark_stage_completed("S1", "m.login.dummy", None) == ["m.login.dummy"]
    assert await sessions.mark_stage_completed("S1", "m.login.password", ALICE) == [
        "m.login.dummy",
        "m.login.password",
    ]
    # Completing a stage twice does not repeat it; a later stage without a user keeps the user.
    assert await sessions.mark_stage_completed("S1", "m.login.dummy", None) == [
        "m.login.dummy",
        "m.login.password",
    ]
    session = await sessions.get_ui_auth_session("S1")
    assert session is not None
    assert session.user_id == ALICE and session.completed == ["m.login.dummy", "m.login.password"]

    assert await sessions.mark_stage_completed("NOPE", "m.login.dummy", None) == []
    assert await sessions.get_ui_auth_session("NOPE") is None

    await sessions.create_ui_auth_session("OLD", "/x", NOW - 2 * HOUR)
    await sessions.delete_expired(NOW, HOUR)
    assert await sessions.get_ui_auth_session("OLD") is None
    assert await sessions.get_ui_auth_session("S1") is not None
    await sessions.delete_ui_auth_session("S1")
    assert await sessions.get_ui_auth_session("S1") is None


def validation(session_id: str, **overrides: Any) -> ValidationSession:
    fields: dict[str, Any] = {
        "session_id": session_id,
        "client_secret": "secret",
        "purpose": "register",
        "medium": "email",
        "address": "alice@example.org",
        "token_hash": "th",
        "code_hash": "ch",
        "attempts": 0,
        "send_attempt": 1,
        "created_ts": NOW,
        "expires_ts": NOW + HOUR,
        "validated_ts": None,
        **overrides,
    }
    return ValidationSession(**fields)


@pytest_twisted.ensureDeferred
async def test_threepid_validation_session(storage: Storage) -> None:
    sessions = storage.auth_sessions
    first = validation("V1")
    await sessions.create_validation(first)
    assert await sessions.get_validation("V1") == first
    assert await sessions.get_validation("NOPE") is None

    assert await sessions.find_validation("secret", "email", "alice@example.org", "register", 1) == first
    assert await sessions.find_validation("secret", "email", "alice@example.org", "register", 2) is None
    assert await sessions.find_validation("other", "email", "alice@example.org", "register", 1) is None
    assert await sessions.find_validation("secret", "email", "alice@example.org", "password_reset", 1) is None

    await sessions.count_attempt("V1")
    await sessions.count_attempt("V1")
    got = await sessions.get_validation("V1")
    assert got is not None and got.attempts == 2 and got.validated_ts is None

    await sessions.mark_validated("V1", NOW + 5)
    await sessions.mark_validated("V1", NOW + 9)  # only the first validation counts
    got = await sessions.get_validation("V1")
    assert got is not None and got.validated_ts == NOW + 5

    second = validation("V2", send_attempt=2, created_ts=NOW + 100)
    await sessions.create_validation(second)
    assert await sessions.latest_validation_for("email", "alice@example.org", "register") == second
    assert await sessions.latest_validation_for("email", "alice@example.org", "verify_account") is None

    await sessions.delete_validation("V2")
    assert await sessions.get_validation("V2") is None
    await sessions.delete_expired(NOW + 3 * HOUR, HOUR)
    assert await sessions.get_validation("V1") is None


# Events: stored in the Matrix room-version format from day one -------------------


async def columns_of(db: Database, table: str) -> set[str]:
    if db.dialect == "sqlite":
        rows = await db.query("columns", f"SELECT name FROM pragma_table_info('{table}')")
    else:
        rows = await db.query(
            "columns",
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = ?",
            table,
        )
    return {r[0] for r in rows}


def make_pdu(
    room_id: str, event_type: str, content: dict[str, Any], depth: int, prev: list[str]
) -> dict[str, Any]:
    pdu: dict[str, Any] = {
        "room_id": room_id,
        "sender": ALICE,
        "origin": "example.org",
        "origin_server_ts": NOW + depth,
        "type": event_type,
        "content": content,
        "prev_events": prev,
        "auth_events": prev[:1],
        "depth": depth,
        "signatures": {},
        "unsigned": {},
    }
    if event_type == "m.room.create":
        pdu["state_key"] = ""
    return add_content_hash(pdu)


@pytest_twisted.ensureDeferred
async def test_events_are_stored_in_matrix_format(storage: Storage) -> None:
    db = storage.db
    assert {"event_id", "room_id", "stream_ordering", "depth", "json"} <= await columns_of(db, "events")
    assert {"room_id", "room_version"} <= await columns_of(db, "rooms")

    room_id = "!room:example.org"
    create = make_pdu(room_id, "m.room.create", {"room_version": "11"}, 1, [])
    create_id = compute_event_id(create, "11")
    message = make_pdu(
        room_id, "m.room.message", {"msgtype": "m.text", "body": 'héllo 🌍 "q"'}, 2, [create_id]
    )
    message_id = compute_event_id(message, "11")
    stored = {create_id: create, message_id: message}

    def insert_txn(txn: Any) -> None:
        txn.execute(
            "INSERT INTO rooms (room_id, room_version, creator, created_ts) VALUES (?, ?, ?, ?)",
            (room_id, "11", ALICE, NOW),
        )
        for ordering, (event_id, pdu) in enumerate(stored.items(), start=1):
            txn.execute(
                "INSERT INTO events (event_id, room_id, stream_ordering, depth, type, state_key, sender,"
                " origin_server_ts, json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    event_id,
                    room_id,
                    ordering,
                    pdu["depth"],
                    pdu["type"],
                    pdu.get("state_key"),
                    pdu["sender"],
                    pdu["origin_server_ts"],
                    encode_canonical_json(pdu).decode("utf-8"),
                ),
            )
            txn.executemany(
                "INSERT INTO event_edges (event_id, prev_event_id) VALUES (?, ?)",
                [(event_id, prev) for prev in pdu["prev_events"]],
            )

    await db.run_interaction("insert_events", insert_txn)

    rows = await db.query(
        "read_events",
        "SELECT event_id, stream_ordering, depth, state_key, json FROM events WHERE room_id = ?"
        " ORDER BY stream_ordering",
        room_id,
    )
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [(create_id, 1, 1, ""), (message_id, 2, 2, None)]
    for event_id, _, _, _, text in rows:
        pdu = json.loads(text)
        assert pdu == stored[event_id]
        assert text.encode("utf-8") == encode_canonical_json(stored[event_id])
        # The stored PDU still proves itself: same event id, valid content hash.
        assert compute_event_id(pdu, "11") == event_id
        assert check_content_hash(pdu)
    edges = await db.query("edges", "SELECT event_id, prev_event_id FROM event_edges")
    assert edges == [(message_id, create_id)]

    # Event ids and stream positions are unique.
    for event_id, ordering in ((create_id, 3), ("$other", 2)):
        with pytest.raises(Exception) as info:
            await db.execute(
                "dup",
                "INSERT INTO events (event_id, room_id, stream_ordering, depth, type, sender,"
                " origin_server_ts, json) VALUES (?, ?, ?, 1, 'x', ?, ?, '{}')",
                event_id,
                room_id,
                ordering,
                ALICE,
                NOW,
            )
        assert db.is_unique_violation(info.value)
