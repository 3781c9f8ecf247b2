"""Presence: online / unavailable / offline, set by syncing and by PUT /presence.

Kept in memory and written through to the database only when something a
client can see changes (state or status message), not on every sync.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from homeserver.core.clock import Clock
from homeserver.core.streams import StreamIdGenerator
from homeserver.errors import Forbidden, InvalidParam, MatrixError, NotFound, StorageFull
from homeserver.notifier import Notifier
from homeserver.storage import Storage

STATES = ("online", "unavailable", "offline")
# No request for this long: online becomes unavailable.
IDLE_AFTER_MS = 5 * 60_000
# No sync for this long (and none in progress): offline.
OFFLINE_AFTER_MS = 60_000
# Expiry writes at most this many users per transaction: thousands who stop syncing at
# once become a few bounded steps rather than one long one (or thousands of small ones).
EXPIRE_BATCH_SIZE = 500
# A status message is shown next to a name (other chat systems allow 100-128 characters);
# it is kept in memory and sent to everyone sharing a room with the user on each change,
# so one of the request body's size (1M) went to all of them at every PUT.
MAX_STATUS_MSG_LENGTH = 1024


@dataclass
class UserPresence:
    state: str
    status_msg: str | None
    last_active_ts: int
    stream_id: int
    last_sync_ts: int = 0
    syncing: int = 0


class PresenceService:
    def __init__(self, storage: Storage, clock: Clock, notifier: Notifier) -> None:
        self.storage = storage
        self.clock = clock
        self.notifier = notifier
        self.stream = StreamIdGenerator()
        self._users: dict[str, UserPresence] = {}
        # Who should hear about a user's presence: filled in by the server (room co-members).
        self.audience: Any = None
        # Awaited as share_a_room(a, b): whether both are joined to some room (the server's).
        self.share_a_room: Any = None
        # Awaited as on_change(user_id) after a presence change is stored (the federation
        # sender tells the servers sharing a room with a local user).
        self.on_change: Any = None
        # Several processes (homeserver/workers/streams.py): `forward(verb, args)` hands a
        # change to the stream's writer; `replicate(rows)` tells the others of one made here.
        self.forward: Any = None
        self.replicate: Any = None

    async def start(self, current: int) -> None:
        self.stream = StreamIdGenerator(current)
        for user_id, state, status_msg, last_active, stream_id in await self.storage.user_data.all_presence():
            # Nobody is syncing right after a restart.
            self._users[user_id] = UserPresence(
                "offline" if state != "offline" else state, status_msg, last_active, stream_id
            )

    def get(self, user_id: str) -> UserPresence | None:
        return self._users.get(user_id)

    def active_since(self, since_ms: int) -> set[str]:
        """Users active (a sync, a stream, a presence change) at or after since_ms, from memory:
        every user's presence is loaded at start-up."""
        return {
            user_id
            for user_id, p in self._users.items()
            if p.last_active_ts >= since_ms or p.last_sync_ts >= since_ms
        }

    def is_online(self, user_id: str) -> bool:
        p = self._users.get(user_id)
        return p is not None and p.state == "online"

    def to_json(self, user_id: str) -> dict[str, Any]:
        p = self._users.get(user_id)
        if p is None:
            return {"presence": "offline"}
        now = self.clock.time_ms()
        out: dict[str, Any] = {
            "presence": p.state,
            "last_active_ago": max(0, now - p.last_active_ts),
            "currently_active": p.state == "online" and now - p.last_active_ts < 60_000,
        }
        if p.status_msg is not None:
            out["status_msg"] = p.status_msg
        return out

    async def set_state(
        self, user_id: str, state: str, status_msg: str | None | bool = False, active: bool = True
    ) -> None:
        """Set a user's presence; `status_msg=False` keeps the current message."""
        if state not in STATES:
            raise MatrixError(f"presence must be one of {', '.join(STATES)}", "M_INVALID_PARAM")
        now = self.clock.time_ms()
        p = self._users.get(user_id)
        new_msg = (p.status_msg if p else None) if status_msg is False else status_msg
        if p is not None and p.state == state and p.status_msg == new_msg:
            if active:
                p.last_active_ts = now
            return
        if self.forward is not None:
            args = {"user_id": user_id, "state": state, "status_msg": status_msg, "active": active}
            await self.forward("set", args)
            return
        stream_id = self.stream.allocate()
        try:
            if p is None:
                p = self._users[user_id] = UserPresence(state, None, now, stream_id)
            p.state, p.status_msg, p.stream_id = (
                state,
                new_msg if isinstance(new_msg, str) else None,
                stream_id,
            )
            if active:
                p.last_active_ts = now
            await self.storage.user_data.put_presence(
                user_id, state, p.status_msg, p.last_active_ts, stream_id
            )
        finally:
            self.stream.done(stream_id)
        self._replicate([(user_id, p)])
        audience = await self.audience(user_id) if self.audience is not None else {user_id}
        self.notifier.wake_users(audience)
        if self.on_change is not None:
            await self.on_change(user_id)

    async def set_by_client(self, requester: str, user_id: str, state: str, status_msg: str | None) -> None:
        """`PUT /presence/{userId}/status`: a user sets their own presence."""
        if requester != user_id:
            raise Forbidden("You may only set your own presence")
        if status_msg is not None and len(status_msg) > MAX_STATUS_MSG_LENGTH:
            raise InvalidParam(f"'status_msg' is at most {MAX_STATUS_MSG_LENGTH} characters")
        await self.set_state(user_id, state, status_msg)

    async def access_presence(self, requester: str, user_id: str) -> dict[str, Any]:
        """`GET /presence/{userId}/status`: M_NOT_FOUND for a user this server does not have;
        M_FORBIDDEN unless the requester is the user or shares a joined room with them (as
        /sync shows presence, and as Synapse does): else anyone could watch when any user
        of the server is online."""
        if not await self.storage.accounts.user_exists(user_id):
            raise NotFound("Unknown user")
        if requester != user_id and not (
            self.share_a_room is not None and await self.share_a_room(requester, user_id)
        ):
            raise Forbidden("You do not share a room with this user")
        return self.to_json(user_id)

    async def sync_started(self, user_id: str, set_presence: str | None) -> None:
        """A sync began: it makes the user `set_presence` (default online) unless that is offline."""
        if set_presence != "offline":
            wanted = set_presence or "online"
            p = self._users.get(user_id)
            if p is None or p.state != wanted:
                try:
                    await self.set_state(user_id, wanted)
                except StorageFull:
                    # A full disk must not stop reading: the sync goes on, the new presence
                    # is kept in memory only (the disk watch has logged why).
                    pass
            else:
                p.last_active_ts = self.clock.time_ms()
        p = self._users.get(user_id)
        if p is not None:
            p.syncing += 1
            p.last_sync_ts = self.clock.time_ms()

    def sync_finished(self, user_id: str) -> None:
        p = self._users.get(user_id)
        if p is not None:
            p.syncing = max(0, p.syncing - 1)
            p.last_sync_ts = self.clock.time_ms()

    async def expire(self) -> None:
        """Periodic job: idle users become unavailable, users who stopped syncing offline.

        Batched: up to `EXPIRE_BATCH_SIZE` users per transaction, each with its own stream
        position, released only once the batch has committed (as in `set_state`). Each user
        is judged just before its batch is written, so one whose sync began while an earlier
        batch was being written is left alone. One wake for the union of everyone's
        audience at the end of the pass (also if a later batch fails), not one per user.
        """
        now = self.clock.time_ms()
        woken: set[str] = set()
        try:
            batch: list[tuple[str, UserPresence, str]] = []
            for user_id, p in list(self._users.items()):
                state = self._expired_state(p, now)
                if state is None:
                    continue
                batch.append((user_id, p, state))
                if len(batch) >= EXPIRE_BATCH_SIZE:
                    woken |= await self._write_expired(batch)
                    batch = []
            if batch:
                woken |= await self._write_expired(batch)
        finally:
            if woken:
                self.notifier.wake_users(woken)

    @staticmethod
    def _expired_state(p: UserPresence, now: int) -> str | None:
        """The state `p` expires to at `now`, or None if it stays as it is."""
        if (
            p.state != "offline"
            and p.syncing == 0
            and p.last_sync_ts
            and now - p.last_sync_ts > OFFLINE_AFTER_MS
        ):
            return "offline"
        if p.state == "online" and now - p.last_active_ts > IDLE_AFTER_MS:
            return "unavailable"
        return None

    async def _write_expired(self, batch: list[tuple[str, UserPresence, str]]) -> set[str]:
        """Apply and write one batch of expiries in one transaction; returns their audience."""
        positions: list[int] = []
        rows: list[tuple[str, str, str | None, int, int]] = []
        try:
            for user_id, p, state in batch:
                # As set_state(user_id, state, active=False): status message and
                # last-active time stay; the position is readable only after the commit.
                stream_id = self.stream.allocate()
                positions.append(stream_id)
                p.state, p.stream_id = state, stream_id
                rows.append((user_id, state, p.status_msg, p.last_active_ts, stream_id))
            await self.storage.user_data.put_presence_many(rows)
        finally:
            for stream_id in positions:
                self.stream.done(stream_id)
        self._replicate([(user_id, p) for user_id, p, _ in batch])
        audience: set[str] = set()
        for user_id, _, _ in batch:
            audience |= await self.audience(user_id) if self.audience is not None else {user_id}
        return audience

    def _replicate(self, changed: list[tuple[str, UserPresence]]) -> None:
        if self.replicate is not None:
            self.replicate(
                [
                    {
                        "user_id": user_id,
                        "state": p.state,
                        "status_msg": p.status_msg,
                        "last_active_ts": p.last_active_ts,
                        "position": p.stream_id,
                    }
                    for user_id, p in changed
                ]
            )

    def apply(self, rows: list[dict[str, Any]], position: int) -> None:
        """Presence the writer process stored (homeserver/workers/streams.py); who syncs
        here stays this process's own count. Wake-ups follow once the audiences are known."""
        for row in rows:
            p = self._users.get(row["user_id"])
            if p is None:
                p = self._users[row["user_id"]] = UserPresence("offline", None, 0, 0)
            if row["position"] >= p.stream_id:
                p.state, p.status_msg, p.stream_id = row["state"], row["status_msg"], row["position"]
                p.last_active_ts = max(p.last_active_ts, row["last_active_ts"])
        self.stream.advance_to(position)

    async def audience_of(self, user_ids: list[str]) -> set[str]:
        audience: set[str] = set()
        for user_id in user_ids:
            audience |= await self.audience(user_id) if self.audience is not None else {user_id}
        return audience

    def activity(self, since_ms: int) -> dict[str, list[int]]:
        """Users syncing or active here since `since_ms`: what a process that does not write
        presence reports to the writer, so that its expiry does not take them for gone."""
        now = self.clock.time_ms()
        return {
            user_id: [p.last_active_ts, now if p.syncing else p.last_sync_ts]
            for user_id, p in self._users.items()
            if p.syncing or p.last_active_ts >= since_ms or p.last_sync_ts >= since_ms
        }

    def note_activity(self, users: dict[str, list[int]]) -> None:
        """Another process's report (see `activity`): only ever moves times forward."""
        for user_id, (last_active, last_sync) in users.items():
            p = self._users.get(user_id)
            if p is not None:
                p.last_active_ts = max(p.last_active_ts, last_active)
                p.last_sync_ts = max(p.last_sync_ts, last_sync)

    def changed_since(self, user_ids: set[str], after: int, upto: int) -> list[str]:
        return [u for u in user_ids if (p := self._users.get(u)) is not None and after < p.stream_id <= upto]
