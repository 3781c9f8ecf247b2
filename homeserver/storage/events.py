"""Events, room state and membership: persisting batches and reading them back.

`persist_events_txn` writes every row of a batch of events in one transaction
(the group commit in `core/persist.py` calls it once per tick): the PDU, its
edges, state and membership changes, txn ids, redactions and relations. Either
all rows of an event commit together or none do.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from homeserver.json_encoding import dumps_text
from homeserver.storage.database import Database, Txn, in_chunks, in_list, marks
from homeserver.storage.stream_writers import WriterFenced, is_fenced, save_promise_txn


@dataclass
class StoredEvent:
    """A persisted event: its PDU and where it sits in the streams."""

    event_id: str
    room_id: str
    stream_ordering: int
    pdu: dict[str, Any]
    unsigned_extra: dict[str, Any] = field(default_factory=dict)
    redacted_by: str | None = None

    @property
    def type(self) -> str:
        return str(self.pdu["type"])

    @property
    def sender(self) -> str:
        return str(self.pdu["sender"])

    @property
    def state_key(self) -> str | None:
        sk = self.pdu.get("state_key")
        return sk if isinstance(sk, str) else None

    @property
    def content(self) -> dict[str, Any]:
        content = self.pdu.get("content")
        return content if isinstance(content, dict) else {}

    @property
    def depth(self) -> int:
        return int(self.pdu["depth"])

    @property
    def origin_server_ts(self) -> int:
        return int(self.pdu["origin_server_ts"])


@dataclass
class PersistItem:
    """One event and what it changes, ready to be written."""

    event: StoredEvent
    room_version: str
    is_create: bool = False
    txn: tuple[str, str, str] | None = None  # (user id, device id, txn id)
    now_ms: int = 0
    # A remote event that merged a fork: the room's whole state after it (resolved), not
    # just the event's own key (core/federation/ingest.py).
    current_state: dict[tuple[str, str], str] | None = None
    # False for the state events of a room joined over federation: stored as state, but the
    # room's forward extremity is our join (they name prev_events we do not have).
    extremity: bool = True
    # A backfilled event (core/federation/backfill.py): history from before what we held, at a
    # negative stream position; it changes no current state, membership or extremity.
    historical: bool = False


@dataclass
class RoomSnapshot:
    room_id: str
    room_version: str
    state: dict[tuple[str, str], StoredEvent]
    extremities: list[str]
    depth: int
    # The newest position of the room's forward extremities: what the snapshot includes.
    position: int = 0


_EVENT_COLUMNS = "e.event_id, e.room_id, e.stream_ordering, e.json, e.unsigned_extra, r.event_id"
_EVENT_FROM = "events e LEFT JOIN redactions r ON r.redacts = e.event_id"


def _above_floor(room: str) -> str:
    """Events of the room (its id: `room`, a `?` or an SQL expression) above its history
    floor: what retention purged below it is no longer timeline, and the state events kept
    there are read as state only. Without a floor every event counts, backfilled ones at
    negative positions too."""
    return (
        " AND e.stream_ordering > COALESCE("
        f"(SELECT f.stream_ordering FROM room_history_floor f WHERE f.room_id = {room}), {-(2**62)})"
    )


_ABOVE_FLOOR = _above_floor("?")
_RELATION_FROM = (
    "event_relations x JOIN events e ON e.event_id = x.event_id"
    " LEFT JOIN redactions r ON r.redacts = e.event_id"
)


def _row_to_event(row: Sequence[Any]) -> StoredEvent:
    return StoredEvent(
        event_id=row[0],
        room_id=row[1],
        stream_ordering=int(row[2]),
        pdu=json.loads(row[3]),
        unsigned_extra=json.loads(row[4]) if row[4] else {},
        redacted_by=row[5],
    )


_Row = tuple[Any, ...]


class EventRow(NamedTuple):
    """An event as read, not yet decoded (`decode` makes the StoredEvent)."""

    event_id: str
    room_id: str
    stream_ordering: int
    json: str
    unsigned_extra: str | None
    redacted_by: str | None

    def decode(self) -> StoredEvent:
        return _row_to_event(self)


def persist_events_txn(
    txn: Txn, items: Sequence[PersistItem], promise: tuple[str, int, int] | None = None
) -> None:
    """Write a batch of events (in stream order) and every row they change.

    Rows are collected per table and written with one multi-row INSERT each,
    so a batch costs a handful of round trips whatever its size. `promise` (writer name,
    position): with several event writers, the writer's promise after this batch, saved
    in the same transaction (homeserver/workers/event_positions.py).
    """
    rooms: list[_Row] = []
    events: list[_Row] = []
    edges: list[_Row] = []
    memberships: list[_Row] = []
    txn_ids: list[_Row] = []
    redactions: list[_Row] = []
    relations: list[_Row] = []
    thread_latest: dict[str, tuple[str, int]] = {}  # root -> (room, its newest reply of the batch)
    thread_repliers: set[tuple[str, str, str]] = set()  # (root, sender, room)
    historical: list[str] = []  # backfilled events: a root may come after its replies
    state: dict[tuple[str, str, str], str] = {}  # last event per state key wins within the batch
    rejoined: list[tuple[str, str]] = []
    named: set[str] = set()  # prev_events of the batch: no longer forward extremities
    named_rooms: dict[str, str] = {}  # each of them: its room (the same as its child's)
    for item in items:
        ev = item.event
        if item.is_create:
            rooms.append((ev.room_id, item.room_version, ev.sender, ev.origin_server_ts))
        events.append(
            (
                ev.event_id,
                ev.room_id,
                ev.stream_ordering,
                ev.depth,
                ev.type,
                ev.state_key,
                ev.sender,
                ev.origin_server_ts,
                dumps_text(ev.pdu),
                dumps_text(ev.unsigned_extra) if ev.unsigned_extra else None,
            )
        )
        prevs = ev.pdu.get("prev_events", [])
        edges.extend((ev.event_id, prev) for prev in prevs)
        if item.historical:
            pass  # history only: the room's state, members and extremities stay as they are
        elif item.current_state is not None:
            named.update(prevs)
            named_rooms.update((prev, ev.room_id) for prev in prevs)
            # The resolution may have kept another event for the event's own key.
            for (state_type, state_key), state_id in item.current_state.items():
                state[(ev.room_id, state_type, state_key)] = state_id
        else:
            named.update(prevs)
            named_rooms.update((prev, ev.room_id) for prev in prevs)
            if ev.state_key is not None:
                state[(ev.room_id, ev.type, ev.state_key)] = ev.event_id
        if ev.state_key is not None and ev.type == "m.room.member" and not item.historical:
            membership = ev.content.get("membership")
            memberships.append(
                (ev.event_id, ev.room_id, ev.state_key, ev.sender, membership, ev.stream_ordering)
            )
            if membership in ("join", "invite", "knock"):  # back in touch with the room: not forgotten
                rejoined.append((ev.state_key, ev.room_id))
        if item.txn is not None:
            txn_ids.append((*item.txn, ev.event_id, item.now_ms))
        if item.historical:
            historical.append(ev.event_id)
        if ev.type == "m.room.redaction":
            redacts = (
                ev.content.get("redacts") if item.room_version in ("11", "12") else ev.pdu.get("redacts")
            )
            if isinstance(redacts, str):
                redactions.append((ev.event_id, redacts, ev.room_id))
        relates = ev.content.get("m.relates_to")
        if (
            isinstance(relates, dict)
            and isinstance(relates.get("event_id"), str)
            and isinstance(relates.get("rel_type"), str)
        ):
            key = relates.get("key")
            relations.append(
                (
                    ev.event_id,
                    relates["event_id"],
                    relates["rel_type"],
                    ev.room_id,
                    ev.type,
                    ev.sender,
                    key if isinstance(key, str) else None,
                    ev.stream_ordering,
                )
            )
            if relates["rel_type"] == "m.thread":
                root = relates["event_id"]
                room, latest = thread_latest.get(root, (ev.room_id, ev.stream_ordering))
                thread_latest[root] = (room, max(latest, ev.stream_ordering))
                thread_repliers.add((root, ev.sender, room))
    batch_ids = {item.event.event_id for item in items}
    extremities = [
        (item.event.room_id, item.event.event_id)
        for item in items
        if item.event.event_id not in named and item.extremity and not item.historical
    ]
    superseded = [(named_rooms[e], e) for e in sorted(named - batch_ids)]
    # A few superseded extremities (a commit of a few messages) are deleted in the one
    # statement below on PostgreSQL; more, by a DELETE planned for their number each time.
    few = txn.engine.name == "postgres" and len(superseded) <= _FEW_SUPERSEDED
    with txn.batched(commit=True):  # one round trip on PostgreSQL, COMMIT included
        if not few:
            for start in range(0, len(superseded), 500):
                txn.execute(*_superseded_delete(superseded[start : start + 500]))
        for user_id, room_id in rejoined:
            txn.execute("DELETE FROM forgotten_rooms WHERE user_id = ? AND room_id = ?", (user_id, room_id))
        # One statement on PostgreSQL: each write below touches rows of its own (the extremities
        # deleted are named by the batch, those inserted are not), and a set of them of its own
        # (one plan, prepared once per connection, for each set: a one-message commit is one).
        with txn.independent_writes():
            txn.insert_many("rooms", ("room_id", "room_version", "creator", "created_ts"), rooms)
            if few and superseded:
                txn.execute(*_few_superseded_delete(superseded))
            txn.insert_many("event_forward_extremities", ("room_id", "event_id"), extremities)
            txn.insert_many(
                "events",
                (
                    "event_id",
                    "room_id",
                    "stream_ordering",
                    "depth",
                    "type",
                    "state_key",
                    "sender",
                    "origin_server_ts",
                    "json",
                    "unsigned_extra",
                ),
                events,
            )
            txn.insert_many("event_edges", ("event_id", "prev_event_id"), edges)
            # No event_auth rows (sql/002): nothing reads them, each PDU names its auth events
            # and the auth chain is walked from there. The table stays for an earlier version's
            # writer still running during an upgrade, and retention deletes its old rows.
            # Portable upsert: both engines accept ON CONFLICT ... DO UPDATE.
            txn.insert_many(
                "current_state_events",
                ("room_id", "type", "state_key", "event_id"),
                [(*key, event_id) for key, event_id in state.items()],
                "ON CONFLICT (room_id, type, state_key) DO UPDATE SET event_id = excluded.event_id",
            )
            txn.insert_many(
                "room_memberships",
                ("event_id", "room_id", "user_id", "sender", "membership", "stream_ordering"),
                memberships,
            )
            txn.insert_many(
                "event_txn_ids", ("user_id", "device_id", "txn_id", "event_id", "created_ts"), txn_ids
            )
            txn.insert_many("redactions", ("event_id", "redacts", "room_id"), redactions)
            txn.insert_many(
                "event_relations",
                (
                    "event_id",
                    "relates_to",
                    "rel_type",
                    "room_id",
                    "type",
                    "sender",
                    "aggregation_key",
                    "stream_ordering",
                ),
                relations,
            )
            # The thread list (sql/104): only a batch with a thread reply writes these.
            txn.insert_many(
                "threads",
                ("root_id", "room_id", "latest"),
                # In one order: two writers' commits lock the rows they share alike.
                [(root, room, latest) for root, (room, latest) in sorted(thread_latest.items())],
                _THREAD_UPSERT[txn.engine.name],
            )
            txn.insert_many(
                "thread_participants",
                ("root_id", "user_id", "room_id"),
                sorted(thread_repliers),
                "ON CONFLICT (root_id, user_id) DO NOTHING",
            )
        # After the block: a root of this batch is in `events` only once the block has run.
        for chunk in in_chunks([*thread_latest, *historical]):
            txn.execute(_ROOT_SENDERS.format(marks(len(chunk))), chunk)
        if redactions:
            targets = [redacts for _, redacts, _ in redactions]
            for chunk in in_chunks(targets):
                refresh_threads_txn(txn, _REDACTED_THREADS.format(marks(len(chunk))), chunk)
        if promise is not None:
            save_promise_txn(txn, *promise)


# A thread's newest reply: a backfilled (older) one does not lower it.
_THREAD_UPSERT = {
    "sqlite": "ON CONFLICT (root_id) DO UPDATE SET latest = MAX(threads.latest, excluded.latest)",
    "postgres": "ON CONFLICT (root_id) DO UPDATE SET latest = GREATEST(threads.latest, excluded.latest)",
}
# The root's sender took part in its thread (when the root is stored; a backfilled root
# that comes after its replies adds it then).
_ROOT_SENDERS = (
    "INSERT INTO thread_participants (root_id, user_id, room_id)"
    " SELECT t.root_id, e.sender, t.room_id FROM threads t JOIN events e ON e.event_id = t.root_id"
    " WHERE t.root_id IN ({}) ON CONFLICT (root_id, user_id) DO NOTHING"
)
# The threads that the redacted events (ids: the placeholders) were replies in.
_REDACTED_THREADS = (
    "SELECT x.relates_to FROM event_relations x WHERE x.rel_type = 'm.thread' AND x.event_id IN ({})"
)
_LIVE_REPLIES = (
    "event_relations x LEFT JOIN redactions r ON r.redacts = x.event_id"
    " WHERE x.rel_type = 'm.thread' AND r.event_id IS NULL"
)


def refresh_threads_txn(txn: Txn, roots_sql: str, args: Sequence[Any]) -> None:
    """Recompute the thread list's rows of the threads `roots_sql` (a SELECT of root ids, with
    `args`) names, from their unredacted replies (by the index on relates_to): after replies
    were redacted, purged or erased. A thread left without one leaves the list. Writes only:
    fits in `Txn.batched`."""
    where = f"root_id IN ({roots_sql})"
    txn.execute(
        f"DELETE FROM threads WHERE {where}"
        f" AND NOT EXISTS (SELECT 1 FROM {_LIVE_REPLIES} AND x.relates_to = threads.root_id)",
        args,
    )
    txn.execute(
        f"UPDATE threads SET latest = (SELECT MAX(x.stream_ordering) FROM {_LIVE_REPLIES}"
        f" AND x.relates_to = threads.root_id) WHERE {where}",
        args,
    )
    txn.execute(f"DELETE FROM thread_participants WHERE {where}", args)
    txn.execute(
        "INSERT INTO thread_participants (root_id, user_id, room_id)"
        " SELECT DISTINCT x.relates_to, x.sender, t.room_id FROM event_relations x"
        " JOIN threads t ON t.root_id = x.relates_to LEFT JOIN redactions r ON r.redacts = x.event_id"
        f" WHERE x.rel_type = 'm.thread' AND r.event_id IS NULL AND x.relates_to IN ({roots_sql})"
        " ON CONFLICT (root_id, user_id) DO NOTHING",
        args,
    )
    txn.execute(
        "INSERT INTO thread_participants (root_id, user_id, room_id)"
        " SELECT t.root_id, e.sender, t.room_id FROM threads t JOIN events e ON e.event_id = t.root_id"
        f" WHERE t.{where} ON CONFLICT (root_id, user_id) DO NOTHING",
        args,
    )


def _superseded_delete(extremities: Sequence[tuple[str, str]]) -> tuple[str, list[str]]:
    """The DELETE of these (room, event) forward extremities. It names the rooms so that it
    is a lookup in the primary key (room_id, event_id): by event_id alone it scanned the
    whole table, dead rows of every earlier commit included until autovacuum came, once a
    commit (at a steady 500 messages/s, nearly one per message). Event ids are unique and an
    extremity row holds its event's own room, so rooms x events matches only these rows."""
    rooms = sorted({room for room, _ in extremities})
    events = [event for _, event in extremities]
    return (
        f"DELETE FROM event_forward_extremities WHERE room_id IN ({','.join('?' * len(rooms))})"
        f" AND event_id IN ({','.join('?' * len(events))})",
        [*rooms, *events],
    )


# Up to this many superseded extremities are deleted by (room, event) pairs, in a statement
# prepared once per number of them.
_FEW_SUPERSEDED = 8


def _few_superseded_delete(extremities: Sequence[tuple[str, str]]) -> tuple[str, list[str]]:
    """The DELETE of a few (room, event) forward extremities, a primary key lookup each
    whatever their values: the plan PostgreSQL keeps for a prepared statement. (With arrays,
    `room_id = ANY(?) AND event_id = ANY(?)`, it kept one that looks up the room only and
    reads every dead row of it.)"""
    pairs = ", ".join("(?, ?)" for _ in extremities)
    return (
        f"DELETE FROM event_forward_extremities WHERE (room_id, event_id) IN ({pairs})",
        [value for pair in extremities for value in pair],
    )


class EventStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def persist_events(
        self, items: Sequence[PersistItem], promise: tuple[str, int, int] | None = None
    ) -> None:
        """Store `items` in one transaction; with `promise` (writer, position, epoch), save
        that writer's promise in it. @raise WriterFenced: the writer may store no more."""
        if promise is None:
            await self.db.run_write("persist_events", persist_events_txn, items)
        else:
            try:
                await self.db.run_write("persist_events", persist_events_txn, items, promise)
            except Exception as error:
                if is_fenced(error):  # rolled back: none of it is stored (ADR 0008)
                    raise WriterFenced(promise[0]) from error
                raise

    async def event_stored(self, event_id: str) -> bool:
        rows = await self.db.query("event_stored", "SELECT 1 FROM events WHERE event_id = ?", event_id)
        return bool(rows)

    async def committed_events(self, after: int, upto: int, limit: int) -> list[PersistItem]:
        """Committed events with after < stream_ordering <= upto, oldest first, at most `limit`
        (a stream consumer catching up: core/event_stream.py)."""
        rows = await self.db.query(
            "committed_events",
            f"SELECT {_EVENT_COLUMNS}, m.room_version"
            f" FROM {_EVENT_FROM} JOIN rooms m ON m.room_id = e.room_id"
            " WHERE e.stream_ordering > ? AND e.stream_ordering <= ? ORDER BY e.stream_ordering LIMIT ?",
            after,
            upto,
            limit,
        )
        return [PersistItem(_row_to_event(r), r[6]) for r in rows]

    async def committed_events_of_writer(
        self, after: int, upto: int, limit: int, writers: int, index: int
    ) -> list[PersistItem]:
        """Like `committed_events`, only those at positions = `index` (mod `writers`): what
        one of several event writers wrote (homeserver/workers/event_replication.py)."""
        rows = await self.db.query(
            "committed_events_of_writer",
            f"SELECT {_EVENT_COLUMNS}, m.room_version"
            f" FROM {_EVENT_FROM} JOIN rooms m ON m.room_id = e.room_id"
            " WHERE e.stream_ordering > ? AND e.stream_ordering <= ? AND e.stream_ordering % ? = ?"
            " ORDER BY e.stream_ordering LIMIT ?",
            after,
            upto,
            writers,
            index,
            limit,
        )
        return [PersistItem(_row_to_event(r), r[6]) for r in rows]

    async def max_stream_ordering(self) -> int:
        rows = await self.db.query("max_stream_ordering", "SELECT MAX(stream_ordering) FROM events")
        return int(rows[0][0] or 0)

    async def load_room(self, room_id: str) -> RoomSnapshot | None:
        """The room's current state and forward extremity, for building the next event."""

        def load_txn(txn: Txn) -> RoomSnapshot | None:
            room = txn.query_one("SELECT room_version FROM rooms WHERE room_id = ?", (room_id,))
            if room is None:
                return None
            # The extremities (and with them the head's position) first: each statement sees
            # the commits made before it (READ COMMITTED), so an event committed between the
            # two reads is then in the state but above the position, and a reader applying it
            # (RoomHead.apply_committed) applies it again, which changes nothing. Read the
            # other way round, it was below the position but missing from the state: a join
            # missed that way left the joiner unwoken by that room's events on that process.
            extremities = txn.query(
                "SELECT x.event_id, e.depth, e.stream_ordering FROM event_forward_extremities x"
                " JOIN events e ON e.event_id = x.event_id WHERE x.room_id = ? ORDER BY e.stream_ordering",
                (room_id,),
            )
            rows = txn.query(
                f"SELECT {_EVENT_COLUMNS} FROM current_state_events c"
                " JOIN events e ON c.event_id = e.event_id LEFT JOIN redactions r ON r.redacts = e.event_id"
                " WHERE c.room_id = ?",
                (room_id,),
            )
            state = {}
            for row in rows:
                ev = _row_to_event(row)
                state[(ev.type, ev.state_key or "")] = ev
            depth = max((int(r[1]) for r in extremities), default=0)
            position = int(extremities[-1][2]) if extremities else 0
            return RoomSnapshot(room_id, room[0], state, [r[0] for r in extremities], depth, position)

        return await self.db.run_interaction("load_room", load_txn)

    async def room_version(self, room_id: str) -> str | None:
        rows = await self.db.query(
            "room_version", "SELECT room_version FROM rooms WHERE room_id = ?", room_id
        )
        return str(rows[0][0]) if rows else None

    async def get_events(self, event_ids: Iterable[str]) -> dict[str, StoredEvent]:
        ids = list(dict.fromkeys(event_ids))
        if not ids:
            return {}

        def get_txn(txn: Txn) -> dict[str, StoredEvent]:
            out: dict[str, StoredEvent] = {}
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for row in txn.query(
                    f"SELECT {_EVENT_COLUMNS} FROM {_EVENT_FROM} WHERE e.event_id IN ({marks})", chunk
                ):
                    ev = _row_to_event(row)
                    out[ev.event_id] = ev
            return out

        return await self.db.run_interaction("get_events", get_txn)

    async def state_event_at(
        self, room_id: str, event_type: str, state_key: str, position: int
    ) -> StoredEvent | None:
        """The state event of (type, state_key) in force at stream `position` (state is linear here)."""
        rows = await self.db.query(
            "state_event_at",
            f"SELECT {_EVENT_COLUMNS} FROM {_EVENT_FROM} WHERE e.room_id = ? AND e.type = ?"
            " AND e.state_key = ? AND e.stream_ordering <= ? ORDER BY e.stream_ordering DESC LIMIT 1",
            room_id,
            event_type,
            state_key,
            position,
        )
        return _row_to_event(rows[0]) if rows else None

    async def state_events_at(
        self, room_id: str, event_type: str, state_keys: Sequence[str], position: int
    ) -> dict[str, StoredEvent]:
        """The state events of `event_type` in force at stream `position` for each of
        `state_keys` that has one, by state key: one query for them all."""
        keys = sorted(set(state_keys))
        if not keys:
            return {}
        rows = await self.db.query(
            "state_events_at",
            f"SELECT {_EVENT_COLUMNS} FROM {_EVENT_FROM} WHERE e.room_id = ? AND e.type = ?"
            f" AND e.state_key IN ({', '.join('?' * len(keys))}) AND e.stream_ordering = ("
            "SELECT MAX(x.stream_ordering) FROM events x WHERE x.room_id = e.room_id"
            " AND x.type = e.type AND x.state_key = e.state_key AND x.stream_ordering <= ?)",
            room_id,
            event_type,
            *keys,
            position,
        )
        found = (_row_to_event(r) for r in rows)
        return {ev.state_key: ev for ev in found if ev.state_key is not None}

    async def state_history(self, room_id: str, event_type: str, state_key: str = "") -> list[StoredEvent]:
        """Every state event of (type, state_key) in the room, oldest first."""
        rows = await self.db.query(
            "state_history",
            f"SELECT {_EVENT_COLUMNS} FROM {_EVENT_FROM} WHERE e.room_id = ? AND e.type = ?"
            " AND e.state_key = ? ORDER BY e.stream_ordering",
            room_id,
            event_type,
            state_key,
        )
        return [_row_to_event(r) for r in rows]

    async def has_backfilled(self, room_id: str) -> bool:
        """Whether the room holds history fetched from other servers (negative positions)."""
        rows = await self.db.query(
            "room_has_backfilled",
            "SELECT 1 FROM events WHERE room_id = ? AND stream_ordering < 0 LIMIT 1",
            room_id,
        )
        return bool(rows)

    async def room_events_between(
        self, room_id: str, after: int, upto: int, limit: int, newest_first: bool = True
    ) -> list[StoredEvent]:
        """Events of a room with after < stream_ordering <= upto; the newest `limit` (or oldest)."""
        order = "DESC" if newest_first else "ASC"
        rows = await self.db.query(
            "room_events_between",
            f"SELECT {_EVENT_COLUMNS} FROM {_EVENT_FROM} WHERE e.room_id = ? AND e.stream_ordering > ?"
            f" AND e.stream_ordering <= ?{_ABOVE_FLOOR} ORDER BY e.stream_ordering {order} LIMIT ?",
            room_id,
            after,
            upto,
            room_id,
            limit,
        )
        return [_row_to_event(r) for r in rows]

    async def events_near_timestamp(
        self, room_id: str, ts: int, forwards: bool, upto: int, limit: int
    ) -> list[StoredEvent]:
        """Up to `limit` committed events (stream position <= upto) of the room nearest to `ts`:
        at or after it, earliest first (`forwards`), or at or before it, latest first."""
        if forwards:
            where, order = "e.origin_server_ts >= ?", "e.origin_server_ts ASC, e.stream_ordering ASC"
        else:
            where, order = "e.origin_server_ts <= ?", "e.origin_server_ts DESC, e.stream_ordering DESC"
        rows = await self.db.query(
            "events_near_timestamp",
            f"SELECT {_EVENT_COLUMNS} FROM {_EVENT_FROM} WHERE e.room_id = ? AND {where}"
            f" AND e.stream_ordering <= ?{_ABOVE_FLOOR} ORDER BY {order} LIMIT ?",
            room_id,
            ts,
            upto,
            room_id,
            limit,
        )
        return [_row_to_event(r) for r in rows]

    async def last_positions_of_types(self, room_ids: Sequence[str], types: Sequence[str]) -> dict[str, int]:
        """Each room's newest position of an event of one of `types` (sliding sync's bump stamps)."""
        if not room_ids or not types:
            return {}
        in_rooms, room_args = in_list(self.db.dialect, "room_id", room_ids)
        kinds = ",".join("?" * len(types))
        rows = await self.db.query(
            "last_positions_of_types",
            f"SELECT room_id, MAX(stream_ordering) FROM events WHERE {in_rooms}"
            f" AND type IN ({kinds}) GROUP BY room_id",
            *room_args,
            *types,
        )
        return {r[0]: int(r[1]) for r in rows}

    async def recent_events_for_rooms(
        self, room_ids: Sequence[str], upto: int, limit: int
    ) -> dict[str, list[StoredEvent]]:
        """The newest `limit` events (<= upto) of each room, oldest first, in one query."""
        if not room_ids:
            return {}

        def recent_txn(txn: Txn) -> dict[str, list[StoredEvent]]:
            out: dict[str, list[StoredEvent]] = {r: [] for r in room_ids}
            for start in range(0, len(room_ids), 200):
                chunk = list(room_ids[start : start + 200])
                marks = ",".join("?" * len(chunk))
                rows = txn.query(
                    f"SELECT event_id, room_id, stream_ordering, json, unsigned_extra, redacted_by FROM ("
                    f" SELECT {_EVENT_COLUMNS.replace('r.event_id', 'r.event_id AS redacted_by')},"
                    " ROW_NUMBER() OVER (PARTITION BY e.room_id ORDER BY e.stream_ordering DESC) AS n"
                    f" FROM {_EVENT_FROM} WHERE e.room_id IN ({marks}) AND e.stream_ordering <= ?) ranked"
                    " WHERE n <= ? ORDER BY stream_ordering",
                    (*chunk, upto, limit),
                )
                for row in rows:
                    out[row[1]].append(_row_to_event(row))
            return out

        return await self.db.run_interaction("recent_events_for_rooms", recent_txn)

    async def rooms_with_events_between(self, room_ids: Sequence[str], after: int, upto: int) -> set[str]:
        if not room_ids or after >= upto:
            return set()

        def rooms_txn(txn: Txn) -> set[str]:
            found: set[str] = set()
            for start in range(0, len(room_ids), 500):
                chunk = list(room_ids[start : start + 500])
                marks = ",".join("?" * len(chunk))
                found |= {
                    r[0]
                    for r in txn.query(
                        f"SELECT DISTINCT room_id FROM events WHERE room_id IN ({marks})"
                        " AND stream_ordering > ? AND stream_ordering <= ?",
                        (*chunk, after, upto),
                    )
                }
            return found

        return await self.db.run_interaction("rooms_with_events_between", rooms_txn)

    async def get_txn_event(self, user_id: str, device_id: str, txn_id: str) -> str | None:
        rows = await self.db.query(
            "get_txn_event",
            "SELECT event_id FROM event_txn_ids WHERE user_id = ? AND device_id = ? AND txn_id = ?",
            user_id,
            device_id,
            txn_id,
        )
        return str(rows[0][0]) if rows else None

    async def recent_txn_ids(self, user_id: str, device_id: str, since_ms: int) -> dict[str, str]:
        """txn id -> event id for a device's transactions since `since_ms`."""
        rows = await self.db.query(
            "recent_txn_ids",
            "SELECT txn_id, event_id FROM event_txn_ids"
            " WHERE user_id = ? AND device_id = ? AND created_ts >= ?",
            user_id,
            device_id,
            since_ms,
        )
        return {r[0]: r[1] for r in rows}

    async def txn_ids_for_events(self, event_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
        """event id -> (device id, txn id), for echoing transaction_id to the sending device."""
        if not event_ids:
            return {}
        in_events, event_args = in_list(self.db.dialect, "event_id", event_ids)
        rows = await self.db.query(
            "txn_ids_for_events",
            f"SELECT event_id, device_id, txn_id FROM event_txn_ids WHERE {in_events}",
            *event_args,
        )
        return {r[0]: (r[1], r[2]) for r in rows}

    # Membership ------------------------------------------------------------------

    async def rooms_for_user(self, user_id: str) -> dict[str, tuple[str, int]]:
        """room id -> (current membership, its position) for each room with a member event of the user."""
        rows = await self.db.query(
            "rooms_for_user",
            "SELECT m.room_id, m.membership, m.stream_ordering FROM current_state_events c"
            " JOIN room_memberships m ON m.event_id = c.event_id"
            " WHERE c.type = 'm.room.member' AND c.state_key = ?",
            user_id,
        )
        return {r[0]: (r[1], int(r[2])) for r in rows}

    async def membership_history(self, user_id: str, room_id: str) -> list[tuple[int, str]]:
        """(stream ordering, membership) of each membership change of the user in the room, oldest first."""
        rows = await self.db.query(
            "membership_history",
            "SELECT stream_ordering, membership FROM room_memberships WHERE user_id = ? AND room_id = ?"
            " ORDER BY stream_ordering",
            user_id,
            room_id,
        )
        return [(int(r[0]), r[1]) for r in rows]

    async def membership_changes(
        self, room_ids: Sequence[str], after: int, upto: int
    ) -> list[tuple[str, str, str]]:
        """(room, user, membership) of membership events in (after, upto] in these rooms, oldest first."""
        if not room_ids or after >= upto:
            return []
        in_rooms, room_args = in_list(self.db.dialect, "room_id", room_ids)
        rows = await self.db.query(
            "membership_changes",
            f"SELECT room_id, user_id, membership FROM room_memberships WHERE {in_rooms}"
            " AND stream_ordering > ? AND stream_ordering <= ? ORDER BY stream_ordering",
            *room_args,
            after,
            upto,
        )
        return [(r[0], r[1], r[2]) for r in rows]

    async def forgotten_rooms(self, user_id: str) -> set[str]:
        rows = await self.db.query(
            "forgotten_rooms", "SELECT room_id FROM forgotten_rooms WHERE user_id = ?", user_id
        )
        return {r[0] for r in rows}

    async def forget_room(self, user_id: str, room_id: str) -> None:
        await self.db.execute(
            "forget_room",
            "INSERT INTO forgotten_rooms (user_id, room_id) VALUES (?, ?)"
            " ON CONFLICT (user_id, room_id) DO NOTHING",
            user_id,
            room_id,
        )

    async def unread_events_many(
        self, queries: Sequence[UnreadQuery], limit: int, upto: int
    ) -> list[UnreadRows]:
        """For each (user, room) of `queries`, in their order: the event position of the user's
        furthest read receipt (either kind; 0 without one), and up to `limit` newest events from
        others after it and up to stream position `upto`, newest first, read in one snapshot:
        what the unread counts are computed from. Events of the query's
        `skip_types` are left out unless their state key is the user; so are those of its
        `skip_senders` (the users this one ignores). One transaction; on PostgreSQL one
        statement per distinct (skip_types, skip_senders), usually one in all (a burst of first
        loads after a restart: one query, not one each)."""

        def unread_txn(txn: Txn) -> list[UnreadRows]:
            found = [UnreadRows(0, []) for _ in queries]
            groups: dict[tuple[tuple[str, ...], tuple[str, ...]], list[int]] = {}
            for i, q in enumerate(queries):
                groups.setdefault((tuple(q.skip_types), tuple(q.skip_senders)), []).append(i)
            for (skip_types, skip_senders), indexes in groups.items():
                if txn.engine.name == "postgres":
                    _unread_lateral(txn, queries, indexes, skip_types, skip_senders, limit, upto, found)
                else:  # SQLite has no LATERAL; in-process, a query per pair costs no round trip
                    for i in indexes:
                        found[i] = _unread_one(txn, queries[i], skip_types, skip_senders, limit, upto)
            return found

        return await self.db.run_interaction("unread_events", unread_txn)

    async def read_positions(self, user_id: str, room_ids: Sequence[str]) -> dict[str, int]:
        """The stream position of the user's furthest read receipt (either kind) per room."""
        if not room_ids:
            return {}
        in_rooms, room_args = in_list(self.db.dialect, "room_id", room_ids)
        rows = await self.db.query(
            "read_positions",
            "SELECT room_id, MAX(event_stream_ordering) FROM receipts WHERE user_id = ?"
            f" AND receipt_type IN ('m.read', 'm.read.private') AND {in_rooms} GROUP BY room_id",
            user_id,
            *room_args,
        )
        return {r[0]: int(r[1]) for r in rows if r[1] is not None}

    async def events_before_in_rooms(
        self, room_ids: Sequence[str], before: int, not_sender: str, limit: int
    ) -> list[StoredEvent]:
        """Up to `limit` events of these rooms before `before` not sent by `not_sender`,
        newest first (GET /notifications walks these back)."""
        if not room_ids:
            return []
        in_rooms, room_args = in_list(self.db.dialect, "e.room_id", room_ids)
        rows = await self.db.query(
            "events_before_in_rooms",
            f"SELECT {_EVENT_COLUMNS} FROM {_EVENT_FROM} WHERE {in_rooms}"
            " AND e.stream_ordering < ? AND e.sender <> ? ORDER BY e.stream_ordering DESC LIMIT ?",
            *room_args,
            before,
            not_sender,
            limit,
        )
        return [_row_to_event(r) for r in rows]

    # Relations ---------------------------------------------------------------------

    async def relations(
        self,
        event_id: str,
        rel_type: str | None,
        event_type: str | None,
        before: int | None,
        after: int | None,
        limit: int,
        newest_first: bool,
    ) -> list[StoredEvent]:
        # A redacted child no longer relates (its m.relates_to is gone).
        sql = f"SELECT {_EVENT_COLUMNS} FROM {_RELATION_FROM} WHERE x.relates_to = ? AND r.event_id IS NULL"
        args: list[Any] = [event_id]
        if rel_type is not None:
            sql += " AND x.rel_type = ?"
            args.append(rel_type)
        if event_type is not None:
            sql += " AND x.type = ?"
            args.append(event_type)
        if before is not None:
            sql += " AND x.stream_ordering < ?"
            args.append(before)
        if after is not None:
            sql += " AND x.stream_ordering > ?"
            args.append(after)
        sql += f" ORDER BY x.stream_ordering {'DESC' if newest_first else 'ASC'} LIMIT ?"
        args.append(limit)
        rows = await self.db.query("relations", sql, *args)
        return [_row_to_event(r) for r in rows]

    async def thread_roots(
        self, room_id: str, upto: int, before: int | None, limit: int, participant: str | None
    ) -> list[tuple[str, int]]:
        """(root id, position of its newest reply) of the room's threads, newest activity first:
        replies up to `upto` count, threads whose newest reply is before `before` are listed,
        and with `participant` only threads that user started or replied in.

        From the thread list (sql/104): a page of the threads whose newest reply is at or
        below `upto` reads the index on (room, newest reply) from `before` down. Only the few
        threads with a reply above `upto` (a former member's view, or a commit not yet
        readable) have their newest reply at or below it looked up, one thread at a time."""
        joins = " JOIN events p ON p.event_id = t.root_id"
        args: list[Any] = []
        if participant is not None:
            joins += " JOIN thread_participants u ON u.root_id = t.root_id AND u.user_id = ?"
            args.append(participant)
        below = " AND t.latest < ?" if before is not None else ""
        page_args = [*args, room_id, upto, *([before] if before is not None else []), limit]
        sql = (
            "SELECT root_id, pos FROM ("
            f"SELECT * FROM (SELECT t.root_id, t.latest AS pos FROM threads t{joins}"
            f" WHERE t.room_id = ? AND t.latest <= ?{below} ORDER BY t.latest DESC LIMIT ?) a"
            " UNION ALL"
            f" SELECT t.root_id, (SELECT MAX(x.stream_ordering) FROM {_LIVE_REPLIES}"
            " AND x.relates_to = t.root_id AND x.stream_ordering <= ?) AS pos"
            f" FROM threads t{joins} WHERE t.room_id = ? AND t.latest > ?"
            f") b WHERE pos IS NOT NULL{' AND pos < ?' if before is not None else ''}"
            " ORDER BY pos DESC LIMIT ?"
        )
        tail_args = [upto, *args, room_id, upto, *([before] if before is not None else []), limit]
        rows = await self.db.query("thread_roots", sql, *page_args, *tail_args)
        return [(r[0], int(r[1])) for r in rows]

    async def thread_roots_among(self, event_ids: Sequence[str]) -> set[str]:
        """Those of `event_ids` that have an unredacted thread reply."""
        found: set[str] = set()
        for chunk in in_chunks(event_ids):
            rows = await self.db.query(
                "thread_roots_among",
                f"SELECT root_id FROM threads WHERE root_id IN ({marks(len(chunk))})",
                *chunk,
            )
            found.update(r[0] for r in rows)
        return found

    async def thread_replies(self, root_ids: Sequence[str]) -> list[tuple[str, str, str, int]]:
        """(root, reply id, sender, position) of each unredacted reply in these threads."""
        if not root_ids:
            return []
        in_roots, root_args = in_list(self.db.dialect, "x.relates_to", root_ids)
        rows = await self.db.query(
            "thread_replies",
            "SELECT x.relates_to, x.event_id, x.sender, x.stream_ordering FROM event_relations x"
            " LEFT JOIN redactions r ON r.redacts = x.event_id"
            f" WHERE x.rel_type = 'm.thread' AND {in_roots} AND r.event_id IS NULL"
            " ORDER BY x.stream_ordering",
            *root_args,
        )
        return [(r[0], r[1], r[2], int(r[3])) for r in rows]

    async def annotations(self, event_ids: Sequence[str]) -> list[tuple[str, str, str, int]]:
        """(parent, type, key, position) of each unredacted annotation (reaction) of these events.

        Rows, not counts: which of them a reader may see depends on their positions."""
        if not event_ids:
            return []
        in_events, event_args = in_list(self.db.dialect, "x.relates_to", event_ids)
        rows = await self.db.query(
            "annotations",
            "SELECT x.relates_to, x.type, x.aggregation_key, x.stream_ordering FROM event_relations x"
            " LEFT JOIN redactions r ON r.redacts = x.event_id"
            f" WHERE x.rel_type = 'm.annotation' AND {in_events} AND r.event_id IS NULL"
            " AND x.aggregation_key IS NOT NULL",
            *event_args,
        )
        return [(r[0], r[1], r[2], int(r[3])) for r in rows]

    async def edits(self, event_ids: Sequence[str]) -> dict[str, list[StoredEvent]]:
        """The unredacted m.replace events of each event (by its original sender only), oldest first."""
        if not event_ids:
            return {}
        in_events, event_args = in_list(self.db.dialect, "x.relates_to", event_ids)
        rows = await self.db.query(
            "edits",
            f"SELECT {_EVENT_COLUMNS} FROM {_RELATION_FROM}"
            " JOIN events p ON p.event_id = x.relates_to AND p.sender = e.sender"
            f" WHERE x.rel_type = 'm.replace' AND {in_events} AND r.event_id IS NULL"
            " ORDER BY x.stream_ordering",
            *event_args,
        )
        out: dict[str, list[StoredEvent]] = {}
        for row in rows:
            ev = _row_to_event(row)
            out.setdefault(ev.content["m.relates_to"]["event_id"], []).append(ev)
        return out


class UnreadQuery(NamedTuple):
    """One (user, room) whose unread events are read (`EventStore.unread_events_many`)."""

    user_id: str
    room_id: str
    skip_types: Sequence[str] = ()
    skip_senders: Sequence[str] = ()


class UnreadRows(NamedTuple):
    """One (user, room)'s read: the event position its read receipt is at, the events after it."""

    read_at: int
    events: list[EventRow]


_READ_RECEIPT = "receipt_type IN ('m.read', 'm.read.private')"


def _unread_skips(
    dialect: str, skip_types: Sequence[str], skip_senders: Sequence[str], user: str
) -> tuple[str, list[object]]:
    """The filters on `e` for skipped types (unless the state key is `user`, an SQL expression
    or a `?`) and skipped senders (any number: a user may ignore thousands), and the
    parameters of the senders' filter (those of the types' are the caller's)."""
    skip = ""
    if skip_types:
        skip = f" AND (e.type NOT IN ({','.join('?' * len(skip_types))}) OR e.state_key = {user})"
    if not skip_senders:
        return skip, []
    not_in_senders, sender_args = in_list(dialect, "e.sender", skip_senders, negate=True)
    return f"{skip} AND {not_in_senders}", sender_args


def _unread_one(
    txn: Txn,
    q: UnreadQuery,
    skip_types: Sequence[str],
    skip_senders: Sequence[str],
    limit: int,
    upto: int,
) -> UnreadRows:
    row = txn.query_one(
        f"SELECT MAX(event_stream_ordering) FROM receipts WHERE room_id = ? AND user_id = ?"
        f" AND {_READ_RECEIPT}",
        (q.room_id, q.user_id),
    )
    after = int(row[0]) if row and row[0] is not None else 0
    skips, sender_args = _unread_skips(txn.engine.name, skip_types, skip_senders, "?")
    rows = txn.query(
        f"SELECT {_EVENT_COLUMNS} FROM {_EVENT_FROM} WHERE e.room_id = ? AND e.stream_ordering > ?"
        f" AND e.stream_ordering <= ? AND e.sender <> ?{skips}"
        f"{_ABOVE_FLOOR} ORDER BY e.stream_ordering DESC LIMIT ?",
        (
            q.room_id,
            after,
            upto,
            q.user_id,
            *skip_types,
            *([q.user_id] if skip_types else []),
            *sender_args,
            q.room_id,
            limit,
        ),
    )
    # Undecoded: a big room's members all load the same recent events, decoded once.
    return UnreadRows(after, [EventRow(*r) for r in rows])


def _unread_lateral(
    txn: Txn,
    queries: Sequence[UnreadQuery],
    indexes: list[int],
    skip_types: Sequence[str],
    skip_senders: Sequence[str],
    limit: int,
    upto: int,
    found: list[UnreadRows],
) -> None:
    """The pairs at `indexes` (sharing these skips) in one statement: each pair's receipt
    position, and its newest `limit` events through LATERAL (a pair with none: one row of
    NULLs), read by the same indexes `_unread_one` uses."""
    pairs = ",".join(f"({i}, ?, ?)" for i in indexes)
    skips, sender_args = _unread_skips(txn.engine.name, skip_types, skip_senders, "q.user_id")
    rows = txn.query(
        # The receipt through a LATERAL aggregate (one row a pair, read once): as a subquery
        # in a select list it is flattened and evaluated again for every event row.
        f"SELECT q.i, p.read_at, x.* FROM (VALUES {pairs}) AS q(i, user_id, room_id) CROSS JOIN LATERAL ("
        "SELECT COALESCE(MAX(c.event_stream_ordering), 0) AS read_at FROM receipts c"
        f" WHERE c.room_id = q.room_id AND c.user_id = q.user_id AND c.{_READ_RECEIPT}) p LEFT JOIN LATERAL ("
        "SELECT e.event_id, e.room_id, e.stream_ordering, e.json, e.unsigned_extra, r.event_id AS redacted_by"
        f" FROM {_EVENT_FROM} WHERE e.room_id = q.room_id AND e.stream_ordering > p.read_at"
        " AND e.stream_ordering <= ? AND e.sender <> q.user_id"
        f"{skips}"
        f"{_above_floor('q.room_id')}"
        " ORDER BY e.stream_ordering DESC LIMIT ?) x ON TRUE ORDER BY q.i, x.stream_ordering DESC",
        (
            *[v for i in indexes for v in (queries[i].user_id, queries[i].room_id)],
            upto,
            *skip_types,
            *sender_args,
            limit,
        ),
    )
    read_at: dict[int, int] = {}
    events: dict[int, list[EventRow]] = {i: [] for i in indexes}
    for r in rows:
        read_at[r[0]] = int(r[1])
        if r[2] is not None:
            events[r[0]].append(EventRow(*r[2:]))
    for i in indexes:
        found[i] = UnreadRows(read_at[i], events[i])
