"""Backfill: history of a room joined over federation, older than the events we hold, fetched
from a resident server when a local client pages back past them (`/messages` dir=b).

Where it goes: a /backfill answer is checked event by event (`PduIngest.check_history`:
signatures, hashes, auth against their own auth events) and written as historical events at
negative stream positions, counting down below the lowest position in use (Synapse does
the same for its backfilled stream orderings). So:
- they sort before everything we held, the newest of a batch highest (depth, then id);
- no sync token or stream consumer ever reaches them (those read positions above a
  token), so /sync, pushers and the federation sender never see them as new; the search
  index, a stream consumer too, is given their messages here;
- they change no current state, membership or forward extremity (`PersistItem.historical`).

History visibility (core/visibility.py judges by stream position): state events of the
batch count at their positions, and each batch is given the visibility in force at its
oldest event (the resident's /state_ids there) as a mark just below it
(`backfill_visibility`). Unknown, it counts as `joined`: our users, who were not in the
room then, see nothing of it rather than too much.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from twisted.internet.defer import DeferredLock
from twisted.logger import Logger

from homeserver.core.clock import Clock
from homeserver.core.federation.client import FederationClient, RemoteError
from homeserver.core.federation.ingest import PduIngest
from homeserver.core.room_heads import RoomHead, RoomHeads
from homeserver.core.search_index import redacted_target, search_row
from homeserver.core.visibility import HISTORY_VISIBILITY, visibility_of
from homeserver.errors import MatrixError, RemoteServerError
from homeserver.events.room_versions import room_id_is_create_hash
from homeserver.logs import log_failure
from homeserver.storage.backfill import BackfillStore
from homeserver.storage.events import PersistItem, StoredEvent
from homeserver.storage.search import SearchStore
from homeserver.workers.event_writes import forwarded

if TYPE_CHECKING:
    from homeserver.workers.event_writes import RoomWriters

log = Logger()

# Events asked for per /backfill (the spec's servers cap it; ours at 100).
BATCH = 100
# Backward extremities named in one request (our /backfill takes at most 20).
MAX_STARTS = 20
# Residents tried, in turn, for one batch.
MAX_SERVERS = 3
# A room whose residents gave nothing is not asked again for this long (each page would).
RETRY_AFTER_MS = 30_000
# Unknown state events fetched to find the history visibility at a batch's oldest event.
MAX_STATE_FETCH = 50


class Backfiller:
    def __init__(
        self,
        server_name: str,
        store: BackfillStore,
        heads: RoomHeads,
        ingest: PduIngest,
        client: FederationClient,
        clock: Clock,
        search: SearchStore | None = None,
    ) -> None:
        self.server_name = server_name
        self.store = store
        self.search = search
        self.heads = heads
        self.ingest = ingest
        self.client = client
        self.clock = clock
        # One backfill per room at a time (two pages arriving together must not fetch the
        # same batch twice); one write at a time (each takes positions below the lowest).
        self._room_locks: dict[str, DeferredLock] = {}
        self._write_lock = DeferredLock()
        # Set by the server with several processes: a room another process writes is
        # backfilled there (workers/event_writes.py).
        self.writers: RoomWriters | None = None
        self._gave_nothing: dict[str, int] = {}  # room -> when its residents last gave nothing

    async def backfill(self, room_id: str) -> int:
        """Fetch one batch of older events of the room; how many were added. A failure
        (a remote's answer we cannot store) is logged: the reader gets what we hold."""
        forward = forwarded(self.writers, room_id, "federation.backfill", {"room_id": room_id})
        if forward is not None:
            try:
                return int((await forward)["added"])
            except MatrixError as e:
                log.warn("backfill of {room} on its writer failed: {error}", room=room_id, error=e)
                return 0
        lock = self._room_locks.setdefault(room_id, DeferredLock())
        await lock.acquire()
        try:
            return await self._backfill(room_id)
        except Exception:
            log_failure(log, "backfill of {room} failed", room=room_id)
            return 0
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                self._room_locks.pop(room_id, None)

    async def _backfill(self, room_id: str) -> int:
        now = self.clock.time_ms()
        last = self._gave_nothing.get(room_id)
        if last is not None and now - last < RETRY_AFTER_MS:
            return 0
        head = await self.heads.get(room_id)
        if head is None or not head.has_joined_member_of(self.server_name):
            return 0
        create = head.get("m.room.create")
        if create is None or create.sender.endswith(":" + self.server_name):
            return 0  # a room made here: its history is all here
        extremities = await self.store.backward_extremities(room_id, MAX_STARTS)
        if not extremities:
            return 0  # the room's history is whole here (back to its create)
        # Only the gaps near the newest one: the state a join gave us names prev_events far
        # back in the room's history, and a batch from there as well would leave a hole
        # between; batches that each continue the last one stay in order on the stream.
        newest = extremities[0][1]
        starts = [event_id for event_id, depth in extremities if depth > newest - BATCH]
        for server in self._residents(head)[:MAX_SERVERS]:
            added = await self._from(server, head, starts)
            if added:
                self._gave_nothing.pop(room_id, None)
                return added
        self._gave_nothing[room_id] = now
        return 0

    def _residents(self, head: RoomHead) -> list[str]:
        """Other servers with joined members, those with most first (the room ID's server
        first among equals, for v10/v11 rooms: usually its creator's)."""
        counts = Counter(m.split(":", 1)[1] for m in head.members("join") if ":" in m)
        counts.pop(self.server_name, None)
        home = None if room_id_is_create_hash(head.room_version) else head.room_id.split(":", 1)[-1]
        return sorted(counts, key=lambda s: (-counts[s], s != home, s))

    async def _from(self, server: str, head: RoomHead, starts: list[str]) -> int:
        room = quote(head.room_id, safe="")
        try:
            answer = await self.client.get_json(
                server, f"/_matrix/federation/v1/backfill/{room}", {"v": starts, "limit": str(BATCH)}
            )
        except (RemoteError, RemoteServerError) as e:
            log.info("backfill of {room} from {server} failed: {e}", room=head.room_id, server=server, e=e)
            return 0
        pdus = answer.get("pdus") if isinstance(answer, dict) else None
        if not isinstance(pdus, list):
            return 0
        passed = await self.ingest.check_history(server, head.room_version, head.room_id, pdus[:BATCH])
        if all(held for *_, held in passed):
            return 0
        visibility = await self._visibility_before(server, head, passed[0][0])
        await self._write_lock.acquire()
        try:
            return await self._write(server, head, passed, visibility)
        finally:
            self._write_lock.release()

    async def _write(
        self, server: str, head: RoomHead, passed: list[tuple[str, dict[str, Any], bool]], visibility: str
    ) -> int:
        lowest = await self.store.lowest_position()
        # Newest first, counting down; the mark of the visibility before the batch takes the
        # position below its oldest event.
        version = head.room_version
        items = []
        marks = [(lowest - 1 - len(passed), visibility)]
        for i, (eid, pdu, held) in enumerate(reversed(passed)):
            position = lowest - 1 - i
            if not held:
                items.append(
                    PersistItem(StoredEvent(eid, head.room_id, position, pdu, {}), version, historical=True)
                )
            elif pdu.get("type") == HISTORY_VISIBILITY and pdu.get("state_key") == "":
                # Held at a later position (the state a join gave us): in force from here on.
                content = pdu.get("content")
                marks.append((position, visibility_of(content if isinstance(content, dict) else {})))
        await self.store.write(head.room_id, items, marks)
        if self.search is not None:
            await self._index(items)
        head.visibility_changes = None  # the kept list lacks the new marks and events
        log.info("backfilled {n} events of {room} from {s}", n=len(items), room=head.room_id, s=server)
        return len(items)

    async def _index(self, items: list[PersistItem]) -> None:
        """Backfilled messages into the search index, as the stream consumer does for new ones
        (core/search_index.py; no consumer reads negative positions). After the events are
        stored: a failure here leaves them out of /search results, never out of the room."""
        rows = [row for item in items if (row := search_row(item.event)) is not None]
        removed = [target for item in items if (target := redacted_target(item.event)) is not None]
        try:
            await self.search.index(rows, removed)  # type: ignore[union-attr]
        except Exception:
            log_failure(log, "indexing backfilled events for search")

    async def _visibility_before(self, server: str, head: RoomHead, event_id: str) -> str:
        """The history visibility in force just before `event_id`, per the resident's
        /state_ids there (the state event checked like any fetched one); `joined` if that
        cannot be told."""
        room = quote(head.room_id, safe="")
        try:
            answer = await self.client.get_json(
                server, f"/_matrix/federation/v1/state_ids/{room}", {"event_id": event_id}
            )
        except (RemoteError, RemoteServerError) as e:
            log.info("state_ids from {server} failed: {e}", server=server, e=e)
            return "joined"
        ids = answer.get("pdu_ids") if isinstance(answer, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            return "joined"
        version = head.room_version
        events = await self.ingest.fetch_checked(server, version, head.room_id, ids, MAX_STATE_FETCH)
        for pdu in events.values():
            if pdu.get("type") == HISTORY_VISIBILITY and pdu.get("state_key") == "":
                content = pdu.get("content")
                return visibility_of(content if isinstance(content, dict) else {})
        # None among the state: the spec's default, if we saw the whole state.
        return "shared" if len(events) == len(ids) else "joined"
