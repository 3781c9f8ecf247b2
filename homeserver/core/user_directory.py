"""`POST /user_directory/search` (spec: Client-Server API, User directory).

Who may be found: users who share a room with the searcher (both joined) or sit in
a room whose join rule is public or whose history is world-readable (the spec's
minimum), or, with `user_directory.search_all_users`, every
local user. Ranked by how the query matches the display name: equal to it, then a
prefix of it, then each word of the query a prefix of some word of the name or the
user id; by name within a tier.

Kept current cheaply: a user's terms are rewritten when they register, change their
display name or are deactivated (the `on_profile_changed` hooks of the account and
profile services); memberships are read from the rooms' current state at query time;
which rooms are public is kept by a durable consumer of the committed-event stream
(it sees every m.room.join_rules event, in order, across restarts; a search waits, up to
`search.index_wait`, for it to reach the events committed before it). Each query reads
the index ranges of its words, never every user.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from homeserver.core.event_stream import ConsumedOnOneProcess, EventStream, StreamBatch
from homeserver.core.room_heads import RoomHeads
from homeserver.core.timeline_cache import TimelineCache
from homeserver.errors import MatrixError
from homeserver.storage import Storage
from homeserver.storage.events import StoredEvent

MAX_LIMIT = 50
DEFAULT_LIMIT = 10
MAX_TERM_LENGTH = 256
_WORD_RE = re.compile(r"\w+")
_BACKFILL_PAGE = 500
# The state events that make a room's members findable by everyone.
_PUBLICITY = ("m.room.join_rules", "m.room.history_visibility")


def _publicity(ev: StoredEvent) -> bool:
    return ev.type in _PUBLICITY and ev.state_key == ""


def normalise(text: str) -> str:
    """Case and accents folded: "Zoë" and "ZOE" both become "zoe"."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold().strip()


def words_of(text: str) -> list[str]:
    return _WORD_RE.findall(normalise(text))


def terms_for(user_id: str, displayname: str | None) -> list[str]:
    """What a user is found by: the words of their display name, their localpart and its words."""
    localpart = normalise(user_id[1:].split(":", 1)[0])
    return [*words_of(displayname or ""), localpart, *_WORD_RE.findall(localpart)]


class UserDirectory(ConsumedOnOneProcess):
    def __init__(
        self,
        storage: Storage,
        heads: RoomHeads,
        timeline: TimelineCache,
        stream: EventStream,
        search_all_users: bool,
        wait_s: float,
    ) -> None:
        super().__init__(stream)
        self.storage = storage
        self.wait_s = wait_s
        self.heads = heads
        self.timeline = timeline
        self.search_all_users = search_all_users

    async def start(self) -> None:
        """Index the users of a server that had none indexed (its first start with the directory),
        and follow the join rules of rooms."""
        if await self.storage.user_directory.is_empty():
            after = ""
            while True:
                users = await self.storage.user_directory.users_after(after, _BACKFILL_PAGE)
                for user_id, displayname, deactivated in users:
                    await self._write(user_id, None if deactivated else displayname, deactivated)
                if len(users) < _BACKFILL_PAGE:
                    break
                after = users[-1][0]
        # Idempotent: a repeated batch sets the same rooms public or not again.
        self._consumer = await self.stream.subscribe_durable(
            "user_directory", self._on_events, from_start=True, wants=_publicity, idempotent=True
        )

    async def _on_events(self, batch: StreamBatch) -> None:
        rooms = {
            item.event.room_id
            for item in batch.items
            if item.event.type in _PUBLICITY and item.event.state_key == ""
        }
        for room_id in sorted(rooms):
            # Decided by the room's current state: after the last event of the stream, right.
            head = await self.heads.get(room_id)
            if head is None:
                continue
            public = (
                head.content("m.room.join_rules").get("join_rule") == "public"
                or head.content("m.room.history_visibility").get("history_visibility") == "world_readable"
            )
            await self.storage.user_directory.set_public_room(room_id, public)

    async def profile_changed(self, user_id: str) -> None:
        """Re-index the user from their stored profile (after registration, a new display name,
        deactivation)."""
        user = await self.storage.accounts.get_user(user_id)
        profile = await self.storage.accounts.get_profile(user_id)
        deactivated = user is None or user.deactivated
        await self._write(user_id, profile[0] if profile else None, deactivated)

    async def _write(self, user_id: str, displayname: str | None, deactivated: bool) -> None:
        if deactivated:
            await self.storage.user_directory.set_user(user_id, None, [])
            return
        name = normalise(displayname) if displayname else normalise(user_id[1:].split(":", 1)[0])
        await self.storage.user_directory.set_user(user_id, name, terms_for(user_id, displayname))

    async def search(self, searcher: str, body: dict[str, Any]) -> dict[str, Any]:
        term = body.get("search_term")
        if term is None:
            raise MatrixError("Missing 'search_term'", "M_MISSING_PARAM")
        if not isinstance(term, str):
            raise MatrixError("'search_term' must be a string", "M_BAD_JSON")
        if len(term) > MAX_TERM_LENGTH:
            raise MatrixError("'search_term' is too long", "M_INVALID_PARAM")
        limit = body.get("limit", DEFAULT_LIMIT)
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise MatrixError("'limit' must be a non-negative integer", "M_BAD_JSON")
        limit = min(limit, MAX_LIMIT)
        words = words_of(term)
        if not words:
            return {"results": [], "limited": False}
        rooms: list[str] | None = None
        if not self.search_all_users:
            # Public rooms as of every event committed before this search.
            await self.caught_up(self.wait_s)
            memberships = await self.timeline.rooms_for_user(searcher)
            rooms = sorted(r for r, (m, _) in memberships.items() if m == "join")
        found = await self.storage.user_directory.search(words, normalise(term), rooms, limit + 1)
        results = []
        for user_id, displayname, avatar_url in found[:limit]:
            entry: dict[str, Any] = {"user_id": user_id}
            if displayname is not None:
                entry["display_name"] = displayname
            if avatar_url is not None:
                entry["avatar_url"] = avatar_url
            results.append(entry)
        return {"results": results, "limited": len(found) > limit}
