"""Room upgrades: `POST /rooms/{roomId}/upgrade` (spec: Client-Server API, Room Upgrades,
"Server behaviour").

1. Only a joined user who may send `m.room.tombstone` in the old room may upgrade it.
2. The new room's `m.room.create` names the old room as `predecessor` (with the last
   event of the old room) and copies its `type` (a space stays a space) and `m.federate`.
3. The transferable state is copied: the spec's recommended list plus the space links
   (`m.space.child` / `m.space.parent`, MSC4168). Memberships are not transferred (the
   spec forbids it: the server cannot join or invite users on their behalf); clients
   invite people themselves. Bans are copied, sent by the upgrader as Synapse does, so
   whoever was banned from the old room does not walk into the new one.
4. Local aliases move to the new room, the canonical alias with them, and a listing
   in the public directory moves too.
5. The old room gets the tombstone pointing at the new room.
6. The old room's power levels are raised so that only moderators may still talk or
   invite: `events_default` and `invite` become max(50, users_default + 1).

The upgrader must be able to send all of the copied state in the new room: its first
power levels event raises them to the highest level the copied levels require, and
the old levels are restored as the last event of the creation batch.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import DeferredLock

from homeserver.core.account_data import AccountDataService
from homeserver.core.room_tags import TagService
from homeserver.core.rooms import KNOWN_VERSIONS, PduState, RoomService
from homeserver.errors import Forbidden, MatrixError
from homeserver.events.power_levels import (
    CREATE,
    CREATOR_DEFAULT_LEVEL,
    MAX_POWER_LEVEL,
    is_valid_power_level,
    power_levels_content,
    room_creators,
    user_power_level,
)
from homeserver.events.room_versions import creators_are_privileged
from homeserver.storage import Storage
from homeserver.storage.events import StoredEvent
from homeserver.workers.event_writes import forwarded

TRANSFERABLE_STATE = (
    "m.room.server_acl",
    "m.room.encryption",
    "m.room.name",
    "m.room.avatar",
    "m.room.topic",
    "m.room.guest_access",
    "m.room.history_visibility",
    "m.room.join_rules",
    "m.space.child",
    "m.space.parent",
)
TOMBSTONE_BODY = "This room has been replaced"


def _needed_level(pl: dict[str, Any]) -> int:
    """The level that lets the upgrader send every event the copied power levels name
    (an absent level means its spec default: 50 for state, bans and kicks)."""
    levels = [pl.get(key, 50) for key in ("state_default", "ban", "kick")]
    levels += [pl.get(key, 0) for key in ("events_default", "invite")]
    events = pl.get("events")
    if isinstance(events, dict):
        levels.extend(events.values())
    return max(level for level in levels if is_valid_power_level(level))


def _locked_levels(pl: dict[str, Any]) -> dict[str, Any]:
    """Spec step 6: only users above the default may still send or invite."""
    users_default = pl.get("users_default", 0)
    floor = max(50, (users_default if is_valid_power_level(users_default) else 0) + 1)
    locked = dict(pl)
    for key in ("events_default", "invite"):
        current = pl.get(key, 0)
        if not is_valid_power_level(current) or current < floor:
            locked[key] = floor
    return locked


class RoomUpgrader:
    def __init__(
        self, storage: Storage, rooms: RoomService, account_data: AccountDataService, tags: TagService
    ) -> None:
        self.storage = storage
        self.rooms = rooms
        self.events = rooms.events
        self.account_data = account_data
        self.tags = tags
        # One upgrade at a time per old room (on its writer, where every upgrade of it runs).
        self._locks: dict[str, DeferredLock] = {}

    async def upgrade(self, user_id: str, room_id: str, new_version: str) -> str:
        """Replace `room_id` by a new room of `new_version`; the new room's ID.

        Upgrades of one room run one at a time: two at once each made a replacement room and
        a tombstone. A room already replaced answers with its replacement when that is of
        `new_version` (the second of two requests at once, a client retrying), else 400
        M_BAD_STATE: upgrading it again would give it two successors. (Synapse answers a
        second user's upgrade in progress 400 and the same user's the first one's room.)

        @raise MatrixError: 400 M_UNSUPPORTED_ROOM_VERSION for a version this server lacks;
            400 M_BAD_STATE when the room was replaced by a room of another version.
        @raise Forbidden: not joined, or not allowed to send the tombstone.
        """
        if new_version not in KNOWN_VERSIONS:
            raise MatrixError(f"Unsupported room version {new_version!r}", "M_UNSUPPORTED_ROOM_VERSION")
        # On the old room's writer, which builds the new room too, under an ID it writes.
        args = {"user_id": user_id, "room_id": room_id, "new_version": new_version}
        if (forward := forwarded(self.events.writers, room_id, "rooms.upgrade", args)) is not None:
            return str((await forward)["room_id"])
        lock = self._locks.setdefault(room_id, DeferredLock())
        await lock.acquire()
        try:
            return await self._upgrade(user_id, room_id, new_version)
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                self._locks.pop(room_id, None)

    async def _upgrade(self, user_id: str, room_id: str, new_version: str) -> str:
        old = await self.rooms.access_room_as_member(user_id, room_id)
        if not self.rooms.may(user_id, old, "state", event_type="m.room.tombstone"):
            raise Forbidden(
                "You may not upgrade this room (sending m.room.tombstone needs a higher power level)"
            )
        replacement = old.content("m.room.tombstone").get("replacement_room")
        if isinstance(replacement, str):
            successor = await self.events.heads.get(replacement)
            if successor is not None and successor.room_version == new_version:
                return replacement
            raise MatrixError(f"This room has been replaced by {replacement} already", "M_BAD_STATE")
        member_content = {"membership": "join", **await self.rooms._profile_content(user_id)}
        was_public = await self.storage.rooms.get_visibility(room_id) == "public"
        # Every await before the first build: the new room's events take consecutive positions.
        new = self.events.new_room_head(new_version)
        build = self.events.build
        old_create = old.content("m.room.create")
        create: dict[str, Any] = {
            "room_version": new_version,
            "predecessor": {"room_id": room_id, "event_id": old.extremities[-1]},
        }
        for key in ("type", "m.federate"):
            if key in old_create:
                create[key] = old_create[key]
        if new_version == "10":
            create["creator"] = user_id
        events = [build(new, user_id, "m.room.create", create, "")]
        events.append(build(new, user_id, "m.room.member", member_content, user_id))
        old_state = PduState(old)
        old_pl = dict(power_levels_content(old_state) or {})  # type: ignore[arg-type]
        own_level = user_power_level(user_id, old_state, old.room_version)  # type: ignore[arg-type]
        if own_level > MAX_POWER_LEVEL:  # a v12 creator: no listed level is above them
            own_level = max(CREATOR_DEFAULT_LEVEL, _needed_level(old_pl))
        # The new room's levels: the old ones; in v12 without the upgrader, who creates the
        # new room and so outranks every level and may not be listed (auth rule 10.4).
        new_pl = dict(old_pl)
        if creators_are_privileged(new_version):
            new_pl["users"] = {u: lvl for u, lvl in (old_pl.get("users") or {}).items() if u != user_id}
        elif creators_are_privileged(old.room_version):
            # From v12 down: the old room's creators held their power unlisted; list them at
            # the highest level the old room's levels use (at least 100).
            top = max(CREATOR_DEFAULT_LEVEL, _needed_level(old_pl))
            creators = (
                room_creators(old_state[CREATE], old.room_version) if CREATE in old_state else frozenset()
            )
            new_pl["users"] = {**(old_pl.get("users") or {}), **dict.fromkeys(sorted(creators), top)}
        needed = max(own_level, _needed_level(new_pl))
        raised = dict(new_pl)
        if not creators_are_privileged(new_version):
            raised["users"] = {**(new_pl.get("users") or {}), user_id: needed}
        events.append(build(new, user_id, "m.room.power_levels", raised, ""))
        for (event_type, state_key), ev in sorted(old.state.items()):
            if event_type in TRANSFERABLE_STATE:
                events.append(build(new, user_id, event_type, ev.content, state_key))
        for banned in old.members("ban"):
            ban = {"membership": "ban"}
            reason = old.content("m.room.member", banned).get("reason")
            if isinstance(reason, str):
                ban["reason"] = reason
            try:
                events.append(build(new, user_id, "m.room.member", ban, banned))
            except Forbidden:
                pass  # a banned user above the upgrader's level: the auth rules keep them
        if raised != new_pl:
            events.append(build(new, user_id, "m.room.power_levels", new_pl, ""))
        self.events.heads.put(new)
        await self.events.persist(new, events, is_new_room=True)

        moved = await self.storage.rooms.move_aliases(room_id, new.room_id)
        canonical = old.content("m.room.canonical_alias")
        alias = canonical.get("alias")
        alt_aliases = canonical.get("alt_aliases")
        moved_canonical: dict[str, Any] = {}
        if alias in moved:
            moved_canonical["alias"] = alias
        if isinstance(alt_aliases, list) and any(a in moved for a in alt_aliases):
            moved_canonical["alt_aliases"] = [a for a in alt_aliases if a in moved]
        if moved_canonical:
            await self._try_send(new.room_id, user_id, "m.room.canonical_alias", moved_canonical)
            await self._try_send(room_id, user_id, "m.room.canonical_alias", {})
        if was_public:
            await self.storage.rooms.set_visibility(new.room_id, "public")
            await self.storage.rooms.set_visibility(room_id, "private")

        await self.events.send(
            user_id,
            room_id,
            "m.room.tombstone",
            {"body": TOMBSTONE_BODY, "replacement_room": new.room_id},
            "",
        )
        locked = _locked_levels(old_pl)
        if locked != old_pl:
            await self._try_send(room_id, user_id, "m.room.power_levels", locked)
        await self.tags.copy_tags(user_id, room_id, new.room_id)
        if self.rooms.push_rules is not None:
            await self.rooms.push_rules.copy_room_rules(user_id, room_id, new.room_id)
        await self.account_data.copy_direct_room(user_id, room_id, new.room_id)
        return new.room_id

    async def _try_send(
        self, room_id: str, user_id: str, event_type: str, content: dict[str, Any]
    ) -> StoredEvent | None:
        """A step the spec asks for "if possible": skipped when the upgrader lacks the level."""
        try:
            return await self.events.send(user_id, room_id, event_type, content, "")
        except Forbidden:
            return None
