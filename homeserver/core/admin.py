"""What a server admin may do to accounts, rooms and reports (the rules behind the admin API).

Authorisation is the caller's (the admin plugin lets only server admins in); these
functions check the targets: local users only, known rooms, valid values. Listing is
done in the database for users and reports; rooms are few enough on one server that
their summaries are built from the in-memory room heads and sorted here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from homeserver.core.accounts import check_email
from homeserver.core.event_format import client_event
from homeserver.core.profiles import check_value
from homeserver.core.rooms import check_user_id
from homeserver.errors import MatrixError, NotFound, ThreepidInUse
from homeserver.storage.admin import USER_ORDER_COLUMNS, AdminStore, UserFilter, UserSummary
from homeserver.storage.devices import DeviceRow
from homeserver.storage.reports import Report

if TYPE_CHECKING:
    from homeserver.core.accounts import AccountService
    from homeserver.core.clock import Clock
    from homeserver.core.profiles import ProfileService
    from homeserver.core.registration_tokens import RegistrationTokens
    from homeserver.core.restrictions import AccountRestrictions
    from homeserver.core.room_heads import RoomHeads
    from homeserver.core.rooms import RoomService
    from homeserver.core.timeline_cache import TimelineCache
    from homeserver.storage import Storage

MAX_PAGE = 1000

# Synapse's account types (its `UserTypes.ALL_USER_TYPES`). Accounts here have no type, so a
# known one is accepted (tools written for Synapse may send it) but not kept; anything else
# is refused rather than silently dropped.
SYNAPSE_USER_TYPES = ("bot", "support")

ROOM_ORDERS = (
    "name",
    "alphabetical",
    "size",
    "joined_members",
    "joined_local_members",
    "canonical_alias",
    "version",
    "creator",
    "encryption",
    "federatable",
    "public",
    "join_rules",
    "guest_access",
    "history_visibility",
    "state_events",
)


@dataclass(frozen=True, slots=True)
class UserDetails:
    summary: UserSummary
    threepids: list[tuple[str, str, int, int | None]]  # medium, address, added, validated


@dataclass(frozen=True, slots=True)
class RoomShutdown:
    """What deleting a room did (Synapse's `shutdown_room`)."""

    kicked_users: list[str]
    failed_to_kick_users: list[str]
    local_aliases: list[str]
    purged_events: int


@dataclass(frozen=True, slots=True)
class RoomSummary:
    room_id: str
    name: str | None
    canonical_alias: str | None
    topic: str | None
    avatar: str | None
    joined_members: int
    joined_local_members: int
    version: str
    creator: str | None
    encryption: str | None
    federatable: bool
    public: bool
    join_rules: str | None
    guest_access: str | None
    history_visibility: str | None
    state_events: int
    room_type: str | None
    created_ts: int


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    total: int


def check_room_id(room_id: str) -> str:
    # No server part is required: room version 12 IDs are `!` and a hash.
    if not room_id.startswith("!") or len(room_id) < 2 or len(room_id) > 255:
        raise MatrixError("Not a room id", "M_INVALID_PARAM")
    return room_id


def check_page(offset: int, limit: int) -> None:
    if offset < 0:
        raise MatrixError("'from' must not be negative", "M_INVALID_PARAM")
    if not 0 <= limit <= MAX_PAGE:
        raise MatrixError(f"'limit' must be between 0 and {MAX_PAGE}", "M_INVALID_PARAM")


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


class AdminService:
    def __init__(
        self,
        server_name: str,
        storage: "Storage",
        store: AdminStore,
        accounts: "AccountService",
        profiles: "ProfileService",
        heads: "RoomHeads",
        restrictions: "AccountRestrictions",
        timeline: "TimelineCache",
        registration_tokens: "RegistrationTokens",
        rooms: "RoomService",
        clock: "Clock",
    ) -> None:
        self.server_name = server_name
        self.storage = storage
        self.store = store
        self.accounts = accounts
        self.profiles = profiles
        self.heads = heads
        self.restrictions = restrictions
        self.timeline = timeline
        self.registration_tokens = registration_tokens  # create, list, change, delete
        self.rooms_service = rooms
        self.clock_ms = clock.time_ms
        # Called after a room is blocked or unblocked here, so other processes reload theirs
        # (homeserver/workers/invalidation.py).
        self.on_rooms_blocked: Any = None
        # Told after a purge of a room's messages (the server: retention's hand-over to plugins).
        self.on_messages_purged: Callable[[], Awaitable[None]] | None = None
        self._purged: set[str] = set()

    # Users ----------------------------------------------------------------------------

    def local_user(self, user_id: str) -> str:
        check_user_id(user_id, "userId")
        if not self.accounts.is_local(user_id):
            raise MatrixError("Can only look up local users", "M_INVALID_PARAM")
        return user_id

    async def list_users(
        self, where: UserFilter, order_by: str, ascending: bool, offset: int, limit: int
    ) -> Page[UserSummary]:
        check_page(offset, limit)
        if order_by not in USER_ORDER_COLUMNS:
            raise MatrixError(f"Unknown value for 'order_by': {order_by}", "M_INVALID_PARAM")
        for user_type in where.not_user_types:
            if user_type not in ("", *SYNAPSE_USER_TYPES):
                raise MatrixError("'not_user_type' must be 'bot', 'support' or empty", "M_INVALID_PARAM")
        items, total = await self.store.list_users(where, order_by, ascending, offset, limit)
        return Page(items, total)

    async def user(self, user_id: str) -> UserDetails:
        self.local_user(user_id)
        summary = await self.store.get_user(user_id)
        if summary is None:
            raise NotFound("User not found")
        return UserDetails(summary, await self.storage.accounts.get_threepids(user_id))

    async def put_user(self, user_id: str, body: dict[str, Any]) -> bool:
        """Create the account (True) or change the fields given (False): `password`,
        `logout_devices`, `displayname`, `avatar_url`, `threepids` (the account's email
        addresses, replaced), `admin`, `deactivated`, `locked`, `user_type` (null, which
        clears it, or one of Synapse's types, else M_INVALID_PARAM). Other keys
        (synapse-admin sends the whole record back) are ignored. Everything is checked
        before anything changes; unchanged values change nothing (no new member events)."""
        self.local_user(user_id)
        user_type = body.get("user_type")
        if user_type is not None and (not isinstance(user_type, str) or user_type not in SYNAPSE_USER_TYPES):
            raise MatrixError("'user_type' must be null, 'bot' or 'support'", "M_INVALID_PARAM")
        password = body.get("password")
        if password is not None:
            self.accounts.check_password(password)
        logout = _bool(body, "logout_devices", True)
        displayname = check_value("displayname", body.get("displayname"))
        avatar_url = check_value("avatar_url", body.get("avatar_url"))
        emails = _emails(body["threepids"]) if body.get("threepids") is not None else None
        admin = _optional_bool(body, "admin")
        deactivated = _optional_bool(body, "deactivated")
        locked = _optional_bool(body, "locked")
        existing = await self.storage.accounts.get_user(user_id)
        if emails is not None:
            for email in emails:
                owner = await self.storage.accounts.user_for_email(email)
                if owner is not None and owner[0] != user_id:
                    raise ThreepidInUse(f"{email} belongs to another account")
        if existing is None:
            if deactivated:
                raise MatrixError("Cannot create a deactivated account", "M_INVALID_PARAM")
            localpart = user_id[1:].split(":", 1)[0]
            if password is None:
                raise MatrixError("'password' is required to create an account", "M_MISSING_PARAM")
            await self.accounts.register(localpart, password, is_admin=bool(admin), displayname=displayname)
            if avatar_url:
                await self.profiles.set_field(user_id, user_id, "avatar_url", avatar_url, rate_limited=False)
            if emails:
                await self.store.replace_emails(user_id, emails, self.clock_ms())
            if locked:
                await self.restrictions.set(user_id, "locked", True)
            if user_type is not None:
                await self.store.set_user_type(user_id, user_type)
            return True
        if deactivated is False and existing.deactivated:
            if password is None:
                raise MatrixError("Reactivating an account needs a 'password'", "M_MISSING_PARAM")
            await self.store.reactivate(user_id)
        if password is not None:
            await self.accounts.set_password(user_id, password, None, logout)
        profile = await self.storage.accounts.get_profile(user_id) or (None, None)
        if displayname is not None and displayname != (profile[0] or ""):
            await self.profiles.set_field(user_id, user_id, "displayname", displayname, rate_limited=False)
        if avatar_url is not None and avatar_url != (profile[1] or ""):
            await self.profiles.set_field(user_id, user_id, "avatar_url", avatar_url, rate_limited=False)
        if emails is not None:
            await self.store.replace_emails(user_id, emails, self.clock_ms())
        if admin is not None and admin != existing.is_admin:
            await self.storage.accounts.set_admin(user_id, admin)
        if locked is not None:
            await self.restrictions.set(user_id, "locked", locked)
        if "user_type" in body:  # absent: unchanged; null: cleared
            await self.store.set_user_type(user_id, user_type)
        if deactivated and not existing.deactivated:
            await self.accounts.deactivate(user_id)
        return False

    async def known_user(self, user_id: str) -> str:
        self.local_user(user_id)
        if not await self.storage.accounts.user_exists(user_id):
            raise NotFound("User not found")
        return user_id

    async def displayname(self, user_id: str) -> str | None:
        profile = await self.storage.accounts.get_profile(user_id)
        return profile[0] if profile is not None else None

    async def reset_password(self, user_id: str, new_password: object, logout_devices: bool) -> None:
        await self.known_user(user_id)
        password = self.accounts.check_password(new_password)
        await self.accounts.set_password(user_id, password, None, logout_devices)

    async def deactivate(self, user_id: str, erase: bool) -> None:
        """Deactivate; with `erase`, erase the account's data too (core/erasure.py, docs/gdpr.md).
        Erasing a deactivated account again finishes what an interrupted erasure left."""
        await self.known_user(user_id)
        if erase:
            assert self.accounts.erase_user is not None
            await self.accounts.erase_user(user_id)
        else:
            await self.accounts.deactivate(user_id)

    async def devices(self, user_id: str) -> list[DeviceRow]:
        await self.known_user(user_id)
        return await self.storage.devices.get_devices(user_id)

    async def set_restriction(self, user_id: str, flag: str, value: bool) -> None:
        await self.known_user(user_id)
        await self.restrictions.set(user_id, flag, value)

    async def joined_rooms(self, user_id: str) -> list[str]:
        await self.known_user(user_id)
        rooms = await self.timeline.rooms_for_user(user_id)
        return sorted(room_id for room_id, (membership, _) in rooms.items() if membership == "join")

    # Rooms ----------------------------------------------------------------------------

    async def start(self) -> None:
        self.rooms_service.blocked = set(await self.store.blocked_rooms())
        self._purged = await self.store.purged_rooms()

    async def room_block(self, room_id: str) -> str | None:
        """Who blocked the room, or None if it is not blocked."""
        check_room_id(room_id)
        return (await self.store.blocked_rooms()).get(room_id)

    async def block_room(self, room_id: str, admin: str, block: bool) -> None:
        """Block (or unblock) a room id, known here or not: nobody may join it, be invited
        or knock. Members already in stay until the room is deleted."""
        check_room_id(room_id)
        await self.store.set_blocked(room_id, admin, self.clock_ms(), block)
        if block:
            self.rooms_service.blocked.add(room_id)
        else:
            self.rooms_service.blocked.discard(room_id)
        if self.on_rooms_blocked is not None:
            self.on_rooms_blocked()

    async def reload_blocked(self) -> None:
        """Another process blocked or unblocked a room (homeserver/workers/invalidation.py)."""
        self.rooms_service.blocked = set(await self.store.blocked_rooms())

    async def delete_room(self, room_id: str, admin: str, block: bool, purge: bool) -> RoomShutdown:
        """Make every member leave (joined, invited and knocking alike: each leave is the
        user's own, which the auth rules always allow), unpublish the room and drop its
        aliases; with `block` nobody gets back in; with `purge` its messages are deleted."""
        head = await self.heads.get(room_id)
        if head is None or room_id in self._purged:
            raise NotFound("Room not found")
        if block:
            await self.block_room(room_id, admin, True)
        kicked, failed = [], []
        for user_id in sorted(head.members("join", "invite", "knock")):
            try:
                await self.rooms_service.set_membership(user_id, room_id, user_id, "leave", "Room deleted")
                kicked.append(user_id)
            except MatrixError:
                failed.append(user_id)
        aliases = await self.storage.rooms.aliases_for_room(room_id)
        for alias in aliases:
            await self.storage.rooms.delete_alias(alias)
        await self.storage.rooms.set_visibility(room_id, "private")
        purged = 0
        if purge:
            purged = await self.store.purge_room_messages(room_id, admin, self.clock_ms())
            self.timeline.drop_messages(room_id)
            if self.on_messages_purged is not None:
                await self.on_messages_purged()  # plugins drop what only those events held (media)
            self._purged.add(room_id)
        return RoomShutdown(kicked, failed, aliases, purged)

    async def _summary(self, room_id: str, version: str, creator: str | None, created_ts: int) -> RoomSummary:
        head = await self.heads.get(room_id)
        if head is None:
            raise NotFound("Room not found")
        joined = head.members("join")
        create = head.content("m.room.create")
        public = await self.storage.rooms.get_visibility(room_id) == "public"
        return RoomSummary(
            room_id=room_id,
            name=_str(head.content("m.room.name").get("name")),
            canonical_alias=_str(head.content("m.room.canonical_alias").get("alias")),
            topic=_str(head.content("m.room.topic").get("topic")),
            avatar=_str(head.content("m.room.avatar").get("url")),
            joined_members=len(joined),
            joined_local_members=sum(1 for u in joined if self.accounts.is_local(u)),
            version=version,
            creator=creator,
            encryption=_str(head.content("m.room.encryption").get("algorithm")),
            federatable=create.get("m.federate", True) is not False,
            public=public,
            join_rules=_str(head.content("m.room.join_rules").get("join_rule")),
            guest_access=_str(head.content("m.room.guest_access").get("guest_access")),
            history_visibility=_str(head.content("m.room.history_visibility").get("history_visibility")),
            state_events=len(head.state),
            room_type=_str(create.get("type")),
            created_ts=created_ts,
        )

    async def list_rooms(
        self, search_term: str | None, order_by: str, ascending: bool, offset: int, limit: int
    ) -> Page[RoomSummary]:
        check_page(offset, limit)
        if order_by not in ROOM_ORDERS:
            raise MatrixError(f"Unknown value for 'order_by': {order_by}", "M_INVALID_PARAM")
        rooms = [
            await self._summary(*row)
            for row in await self.store.rooms()
            if row[0] not in self._purged and await self._holds_room(row[0])
        ]
        if search_term:
            needle = search_term.casefold()
            rooms = [
                r
                for r in rooms
                if needle in r.room_id.casefold()
                or needle in (r.name or "").casefold()
                or needle in (r.canonical_alias or "").casefold()
            ]
        rooms.sort(key=lambda r: _room_key(r, order_by), reverse=not ascending)
        return Page(rooms[offset : offset + limit], len(rooms))

    async def _holds_room(self, room_id: str) -> bool:
        """False for a room of another server we only hold an invite or knock for: one event
        and its stripped state, not a room this server has joined (docs/federation.md)."""
        head = await self.heads.get(room_id)
        return head is not None and head.get("m.room.create") is not None

    async def room(self, room_id: str) -> RoomSummary:
        if room_id in self._purged:
            raise NotFound("Room not found")
        row = await self.store.room(room_id)
        if row is None:
            raise NotFound("Room not found")
        return await self._summary(*row)

    async def room_members(self, room_id: str) -> list[str]:
        head = await self.heads.get(room_id)
        if head is None:
            raise NotFound("Room not found")
        return sorted(head.members("join"))

    async def room_state(self, room_id: str) -> list[dict[str, Any]]:
        head = await self.heads.get(room_id)
        if head is None:
            raise NotFound("Room not found")
        events = sorted(head.state.values(), key=lambda ev: ev.stream_ordering)
        return [client_event(ev, head.room_version) for ev in events]

    async def room_sizes(self) -> list[tuple[str, int]]:
        return await self.store.room_sizes()

    # Reports --------------------------------------------------------------------------

    async def event_reports(
        self, reporter: str | None, room_id: str | None, ascending: bool, offset: int, limit: int
    ) -> Page[Report]:
        check_page(offset, limit)
        items, total = await self.store.event_reports(reporter, room_id, ascending, offset, limit)
        return Page(items, total)

    async def event_report(self, report_id: int) -> tuple[Report, dict[str, Any] | None]:
        """The report and the reported event as stored (None if it is gone)."""
        report = await self.store.report(report_id)
        if report is None or report.kind != "event":
            raise NotFound("Event report not found")
        event_json: dict[str, Any] | None = None
        if report.event_id is not None:
            ev = (await self.storage.events.get_events([report.event_id])).get(report.event_id)
            if ev is not None:
                event_json = dict(ev.pdu)
        return report, event_json

    async def dismiss_report(self, report_id: int) -> None:
        report = await self.store.report(report_id)
        if report is None or report.kind != "event" or not await self.store.delete_report(report_id):
            raise NotFound("Event report not found")


def _room_key(room: RoomSummary, order_by: str) -> tuple[Any, ...]:
    if order_by in ("name", "alphabetical"):
        value: Any = (room.name or "").casefold()
    elif order_by == "size" or order_by == "joined_members":
        value = room.joined_members
    else:
        raw = getattr(room, order_by)
        value = (raw is not None, raw if raw is not None else "")
    return (value, room.room_id)


def _emails(threepids: object) -> list[str]:
    """Synapse's `threepids`: a list of {"medium": "email", "address"}; the addresses, checked."""
    if not isinstance(threepids, list) or len(threepids) > 20:
        raise MatrixError("'threepids' must be a list (at most 20)", "M_BAD_JSON")
    emails = []
    for item in threepids:
        if not isinstance(item, dict) or item.get("medium") != "email":
            raise MatrixError("Each threepid must be {'medium': 'email', 'address': ...}", "M_INVALID_PARAM")
        emails.append(check_email(item.get("address")))
    return sorted(set(emails))


def _bool(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise MatrixError(f"'{key}' must be a boolean", "M_BAD_JSON")
    return value


def _optional_bool(body: dict[str, Any], key: str) -> bool | None:
    value = body.get(key)
    if value is not None and not isinstance(value, bool):
        raise MatrixError(f"'{key}' must be a boolean", "M_BAD_JSON")
    return value
