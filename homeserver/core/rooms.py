"""Rooms: creation, membership, state, aliases and the public directory.

Every change is an event built by `EventService.build` (so the auth rules of the
room version are checked on each one) and persisted through the group commit.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger

from homeserver.core.account_data import AccountDataService
from homeserver.core.events import EventService
from homeserver.core.join_rules import KNOCK_JOIN_RULES, join_authoriser, join_rule
from homeserver.core.ratelimit import RateLimiter
from homeserver.core.retention import check_policy_content
from homeserver.core.room_heads import RoomHead
from homeserver.core.txn_ids import scoped_txn_id
from homeserver.errors import Forbidden, MatrixError, NotFound
from homeserver.events.power_levels import can_do, default_power_levels_content
from homeserver.events.room_versions import creators_are_privileged
from homeserver.storage import Storage
from homeserver.storage.events import StoredEvent
from homeserver.storage.rooms import AliasExists
from homeserver.workers.event_writes import event_from_json, forwarded

if TYPE_CHECKING:
    from homeserver.core.federation.membership import FederatedMembership
    from homeserver.core.push_rules import PushRuleService
    from homeserver.core.restrictions import AccountRestrictions
    from homeserver.core.room_tags import TagService

log = Logger()

KNOWN_VERSIONS = ("10", "11", "12")
MEGOLM = "m.megolm.v1.aes-sha2"
DEFAULT_ROOM_VERSION = "10"
_ALIAS_RE = re.compile(r"#[^:\s]+:.+")
_USER_ID_RE = re.compile(r"@[^:\s]+:.+")

PRESETS: dict[str, dict[str, str]] = {
    "private_chat": {"join_rule": "invite", "history_visibility": "shared", "guest_access": "can_join"},
    "trusted_private_chat": {
        "join_rule": "invite",
        "history_visibility": "shared",
        "guest_access": "can_join",
    },
    "public_chat": {"join_rule": "public", "history_visibility": "shared", "guest_access": "forbidden"},
}

# Spec: state an invitee sees before joining ("stripped state").
INVITE_STATE_TYPES = (
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
)


class PduState(Mapping[tuple[str, str], Mapping[str, Any]]):
    """A read-only view of a head's state as PDUs, for the power-level helpers."""

    def __init__(self, head: RoomHead) -> None:
        self._state = head.state

    def __getitem__(self, key: tuple[str, str]) -> Mapping[str, Any]:
        return self._state[key].pdu

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._state)

    def __len__(self) -> int:
        return len(self._state)


def check_user_id(value: object, what: str = "user_id") -> str:
    if not isinstance(value, str) or not _USER_ID_RE.fullmatch(value) or len(value) > 255:
        raise MatrixError(f"'{what}' must be a user id", "M_INVALID_PARAM")
    return value


# Rooms whose member events one profile change builds before waiting for their commit.
_PROFILE_CHUNK = 100
_ALIAS_LOCALPART_RE = re.compile(r"[^:\s]+")


def is_alias_localpart(local: object) -> bool:
    """An alias localpart we accept: not empty, no ':' (the first one splits off the server)
    and no whitespace, which would make look-alike aliases and break alias links."""
    return isinstance(local, str) and _ALIAS_LOCALPART_RE.fullmatch(local) is not None


def _claimed_aliases(content: dict[str, Any]) -> list[object]:
    """The aliases an m.room.canonical_alias content names (`alias`, then `alt_aliases`)."""
    alt_aliases = content.get("alt_aliases") or []
    if not isinstance(alt_aliases, list):
        raise MatrixError("'alt_aliases' must be a list of aliases", "M_BAD_JSON")
    return [a for a in [content.get("alias"), *alt_aliases] if a is not None]


class RoomService:
    def __init__(
        self,
        server_name: str,
        storage: Storage,
        events: EventService,
        encrypt_by_default: str = "invite",
        account_data: AccountDataService | None = None,
    ) -> None:
        self.server_name = server_name
        self.account_data = account_data
        # all | invite (private and direct chats) | off: which new rooms start encrypted.
        self.encrypt_by_default = encrypt_by_default
        self.storage = storage
        self.events = events
        self.tags: TagService | None = None  # set by the server (core/room_tags.py)
        self.push_rules: PushRuleService | None = None  # set by the server (core/push_rules.py)
        # Set by the server: createRoom, join and invite are limited per user.
        self.ratelimiter: RateLimiter | None = None
        self._redactions: dict[str, StoredEvent] = {}
        self._forgotten: dict[str, set[str]] = {}
        # Called after each change here, so other processes reload theirs
        # (homeserver/workers/invalidation.py).
        self.on_forgotten: Any = None
        # Rooms a server admin blocked: no joins, invites or knocks (core/admin.py fills it).
        self.blocked: set[str] = set()
        # Set by the server: a suspended account may not create, join, invite, knock or set state.
        self.restrictions: AccountRestrictions | None = None
        # Set by the server: joins, leaves and knocks through another server (federation).
        self.remote: FederatedMembership | None = None

    def _may_act(self, user_id: str) -> None:
        if self.restrictions is not None:
            self.restrictions.check_may_send(user_id)

    # Access -------------------------------------------------------------------------

    async def head(self, room_id: str) -> RoomHead:
        head = await self.events.heads.get(room_id)
        if head is None:
            raise NotFound("Unknown room")
        return head

    async def access_room_as_member(self, user_id: str, room_id: str) -> RoomHead:
        """The room's head if `user_id` is joined to it; else Forbidden (or NotFound)."""
        head = await self.events.heads.get(room_id)
        if head is None or head.membership(user_id) != "join":
            raise Forbidden("You are not a member of this room")
        return head

    async def _profile_content(self, user_id: str) -> dict[str, Any]:
        profile = await self.storage.accounts.get_profile(user_id)
        content: dict[str, Any] = {}
        if profile is not None:
            if profile[0]:
                content["displayname"] = profile[0]
            if profile[1]:
                content["avatar_url"] = profile[1]
        return content

    def _limit(self, action: str, user_id: str) -> None:
        if self.ratelimiter is not None:
            self.ratelimiter.check_user(action, user_id)

    def limit_user(self, action: str, user_id: str, cost: float = 1.0) -> None:
        """Take `cost` of `action` from `rate_limits.<action>_per_user` (LimitExceeded if
        empty; a cost over 1 may overdraw the bucket, as RateLimiter.check_user says)."""
        if self.ratelimiter is not None:
            self.ratelimiter.check_user(action, user_id, cost, overdraw=cost > 1)

    def _limit_creation(self, creator: str, invites: int) -> None:
        """createRoom's limits: one room, and its invitations as that many invites (one
        request inviting thousands was thousands of invite events at the cost of a room).
        A list past the invite burst could never go through: 400, not 429."""
        limiter = self.ratelimiter
        if limiter is None or not limiter.enabled:
            return
        burst = limiter.limits.invite_per_user.burst
        if invites > burst:
            raise MatrixError(
                f"At most {burst} users may be invited when creating a room; invite the others after",
                "M_INVALID_PARAM",
            )
        limiter.peek("create_room", creator, limiter.limits.create_room_per_user)
        if invites:
            limiter.check_user("invite", creator, invites)
        limiter.check_user("create_room", creator)

    def _is_remote(self, user_id: str) -> bool:
        """A user of another server we can reach (federation is on)."""
        return self.remote is not None and not user_id.endswith(":" + self.server_name)

    async def _check_local_user(self, user_id: str) -> None:
        if not user_id.endswith(":" + self.server_name):
            raise Forbidden("Inviting users of other servers needs federation, which is not enabled yet")
        if not await self.is_local_user(user_id):
            raise NotFound(f"Unknown user {user_id}")

    async def is_local_user(self, user_id: str) -> bool:
        """Whether `user_id` is an active account of this server."""
        if not user_id.endswith(":" + self.server_name):
            return False
        user = await self.storage.accounts.get_user(user_id)
        return user is not None and not user.deactivated

    # Creation -------------------------------------------------------------------------

    async def create_room(self, creator: str, body: dict[str, Any], *, encrypted: bool | None = None) -> str:
        """createRoom (spec: Client-Server API, Creation): all its events commit together.

        `encrypted` overrides the server's default (`encryption.enabled_by_default_for_room_type`).
        """
        writers = self.events.writers
        if writers is not None and not writers.writes_events:
            # Made by an event writer, under an ID that writer writes (EventService.new_room_head).
            args = {"creator": creator, "body": body, "encrypted": encrypted}
            return str((await writers.call_creator(creator, "rooms.create", args))["room_id"])
        self._may_act(creator)
        version = body.get("room_version", DEFAULT_ROOM_VERSION)
        if version not in KNOWN_VERSIONS:
            raise MatrixError(f"Unsupported room version {version!r}", "M_UNSUPPORTED_ROOM_VERSION")
        visibility = body.get("visibility", "private")
        if visibility not in ("public", "private"):
            raise MatrixError("'visibility' must be public or private", "M_INVALID_PARAM")
        preset_name = body.get("preset") or ("public_chat" if visibility == "public" else "private_chat")
        if not isinstance(preset_name, str):
            raise MatrixError("'preset' must be a string", "M_BAD_JSON")
        if preset_name not in PRESETS:
            raise MatrixError(f"Unknown preset {preset_name!r}", "M_INVALID_PARAM")
        preset = PRESETS[preset_name]
        invites = body.get("invite", [])
        if not isinstance(invites, list):
            raise MatrixError("'invite' must be a list of user ids", "M_BAD_JSON")
        invites = list(dict.fromkeys(check_user_id(u, "invite") for u in invites))
        self._limit_creation(creator, len(invites))
        # Users of other servers are invited over federation once the room exists (their
        # server must countersign); ours are invited in the room's first commit.
        remote_invites = [u for u in invites if self._is_remote(u)]
        for user_id in invites:
            if user_id not in remote_invites:
                await self._check_local_user(user_id)
        is_direct = body.get("is_direct") is True
        initial_state = body.get("initial_state", [])
        if not isinstance(initial_state, list) or not all(
            isinstance(e, dict)
            and isinstance(e.get("type"), str)
            and isinstance(e.get("state_key", ""), str)
            and isinstance(e.get("content"), dict)
            for e in initial_state
        ):
            raise MatrixError("'initial_state' must be a list of {type, state_key, content}", "M_BAD_JSON")
        for e in initial_state:
            check_policy_content(e["type"], e.get("state_key", ""), e["content"])
        creation_content = body.get("creation_content") or {}
        override = body.get("power_level_content_override") or {}
        if not isinstance(creation_content, dict) or not isinstance(override, dict):
            raise MatrixError(
                "creation_content and power_level_content_override must be objects", "M_BAD_JSON"
            )
        additional = creation_content.get("additional_creators")
        if additional is not None and (
            version != "12"
            or not isinstance(additional, list)
            or not all(isinstance(u, str) and _USER_ID_RE.fullmatch(u) and len(u) <= 255 for u in additional)
        ):
            raise MatrixError(
                "'additional_creators' must be a list of user ids (room version 12 only)", "M_BAD_JSON"
            )
        for key in ("name", "topic"):
            if key in body and not isinstance(body[key], str):
                raise MatrixError(f"'{key}' must be a string", "M_BAD_JSON")
        alias = None
        if body.get("room_alias_name") is not None:
            local = body["room_alias_name"]
            if not is_alias_localpart(local) or len(local) > 200:
                raise MatrixError("Invalid room_alias_name", "M_INVALID_PARAM")
            alias = f"#{local}:{self.server_name}"
            if await self.storage.rooms.room_for_alias(alias) is not None:
                raise MatrixError("Room alias already taken", "M_ROOM_IN_USE")
        # A new room has no aliases but its room_alias_name: initial_state must not claim
        # another room's alias (it would show in the directory as this room's).
        for e in initial_state:
            if e["type"] == "m.room.canonical_alias":
                for claimed in _claimed_aliases(e["content"]):
                    if claimed != alias:
                        raise MatrixError(f"Alias {claimed} does not point to this room", "M_BAD_ALIAS")
        member_content = {"membership": "join", **await self._profile_content(creator)}
        # Every await before the first build: the events take consecutive stream positions
        # and must be queued in that order (core/persist.py).
        invite_contents: list[dict[str, Any]] = []
        for user_id in invites:
            content: dict[str, Any] = {"membership": "invite", **await self._profile_content(user_id)}
            if is_direct:
                content["is_direct"] = True
            invite_contents.append(content)

        head = self.events.new_room_head(version)
        build = self.events.build
        create_content = {**creation_content, "room_version": version}
        if version == "10":
            create_content["creator"] = creator
        else:
            create_content.pop("creator", None)
        privileged = creators_are_privileged(version)
        if privileged and preset_name == "trusted_private_chat" and invites:
            # v12: a trusted chat's invitees become creators (they would get 100 before).
            listed = create_content.get("additional_creators", [])
            create_content["additional_creators"] = list(dict.fromkeys([*listed, *invites]))
        events = [build(head, creator, "m.room.create", create_content, "")]
        events.append(build(head, creator, "m.room.member", member_content, creator))
        power = default_power_levels_content(creator, version)
        if preset_name == "trusted_private_chat" and not privileged:
            for user_id in invites:
                power["users"][user_id] = 100
        power.update(override)
        events.append(build(head, creator, "m.room.power_levels", power, ""))
        if alias is not None:
            events.append(build(head, creator, "m.room.canonical_alias", {"alias": alias}, ""))
        events.append(build(head, creator, "m.room.join_rules", {"join_rule": preset["join_rule"]}, ""))
        events.append(
            build(
                head,
                creator,
                "m.room.history_visibility",
                {"history_visibility": preset["history_visibility"]},
                "",
            )
        )
        events.append(
            build(head, creator, "m.room.guest_access", {"guest_access": preset["guest_access"]}, "")
        )
        wants_encryption = self.encrypt_by_default == "all" or (
            self.encrypt_by_default == "invite" and preset_name in ("private_chat", "trusted_private_chat")
        )
        if encrypted is not None:
            wants_encryption = encrypted
        if wants_encryption and not any(s["type"] == "m.room.encryption" for s in initial_state):
            events.append(build(head, creator, "m.room.encryption", {"algorithm": MEGOLM}, ""))
        for state in initial_state:
            events.append(build(head, creator, state["type"], state["content"], state.get("state_key", "")))
        if body.get("name"):
            events.append(build(head, creator, "m.room.name", {"name": body["name"]}, ""))
        if body.get("topic"):
            events.append(build(head, creator, "m.room.topic", {"topic": body["topic"]}, ""))
        for user_id, content in zip(invites, invite_contents, strict=True):
            if user_id not in remote_invites:
                events.append(build(head, creator, "m.room.member", content, user_id))
        if alias is not None:
            # Claimed before the room is stored: two createRooms naming one alias at once both
            # passed the check above, and the second made a room claiming the first's alias (a 500).
            try:
                await self.storage.rooms.create_alias(alias, head.room_id, creator)
            except AliasExists:
                raise MatrixError("Room alias already taken", "M_ROOM_IN_USE") from None
        self.events.heads.put(head)
        try:
            await self.events.persist(head, events, is_new_room=True)
        except Exception:
            if alias is not None:
                await self.storage.rooms.delete_alias(alias)
            raise
        if remote_invites:
            await self._invite_remote_users(head.room_id, creator, remote_invites, is_direct)
        if visibility == "public":
            await self.storage.rooms.set_visibility(head.room_id, "public")
        return head.room_id

    async def _invite_remote_users(
        self, room_id: str, creator: str, user_ids: list[str], is_direct: bool
    ) -> None:
        """createRoom's invites of other servers' users, all at once: each waits for its
        server to countersign, so one slow or unreachable server does not hold up the others.

        One that fails is logged and left out, and the room is answered all the same: it
        exists by now and is the creator's, who sees who is invited and may invite again.
        Failing the request (Synapse answers the invite's error) has clients create the room
        again on retry, one more empty room each time."""
        assert self.remote is not None
        remote = self.remote
        content = {"membership": "invite", **({"is_direct": True} if is_direct else {})}
        head = await self.head(room_id)

        async def invite(user_id: str) -> None:
            try:
                await remote.invite_remote(head, creator, user_id, dict(content))
            except MatrixError as e:
                log.warn("createRoom: inviting {user} failed: {error}", user=user_id, error=e)

        await gatherResults([Deferred.fromCoroutine(invite(u)) for u in user_ids])

    # Membership ----------------------------------------------------------------------

    async def resolve_room(self, room_id_or_alias: str) -> str:
        if room_id_or_alias.startswith("#"):
            if not _ALIAS_RE.fullmatch(room_id_or_alias):
                raise MatrixError("Invalid room alias", "M_INVALID_PARAM")
            room_id = await self.storage.rooms.room_for_alias(room_id_or_alias)
            if room_id is None:
                raise NotFound("Room alias not found")
            return room_id
        if not room_id_or_alias.startswith("!"):
            raise MatrixError("Not a room id or alias", "M_INVALID_PARAM")
        return room_id_or_alias

    async def set_membership(
        self,
        sender: str,
        room_id: str,
        target: str,
        membership: str,
        reason: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> StoredEvent | None:
        """Build a membership event; None when it would change nothing (e.g. joining twice)."""
        args = {
            "sender": sender,
            "room_id": room_id,
            "target": target,
            "membership": membership,
            "reason": reason,
            "extra": extra,
        }
        if (forward := forwarded(self.events.writers, room_id, "rooms.set_membership", args)) is not None:
            answer = (await forward)["event"]
            return event_from_json(answer) if answer is not None else None
        head = await self.events.heads.get(room_id)
        if head is None:
            raise NotFound("Unknown room")
        if room_id in self.blocked and membership in ("join", "invite", "knock"):
            raise Forbidden("This room has been blocked on this server")
        current = head.membership(target)
        if current == membership and membership in ("join", "leave", "ban"):
            return None
        if membership == "leave" and current is None and sender == target:
            raise Forbidden("You are not a member of this room")
        content: dict[str, Any] = {"membership": membership}
        if membership in ("join", "invite", "knock"):
            content.update(await self._profile_content(target))
        if reason is not None:
            if not isinstance(reason, str):
                raise MatrixError("'reason' must be a string", "M_BAD_JSON")
            content["reason"] = reason
        if extra:
            content.update(extra)
        event = self.events.build(head, sender, "m.room.member", content, target)
        await self.events.persist(head, [event])
        return event

    async def update_member_profiles(self, user_id: str, room_ids: list[str]) -> int:
        """Rewrite `user_id`'s join event in each room with their current display name and
        avatar (spec: "Events on Change of Profile Information"), so the other members see
        the change. Rooms go in chunks whose events are built at once and persisted
        together (one group commit per chunk), so a user in hundreds of rooms costs a few
        commits, not hundreds. A room that refuses the event (its rules changed) is skipped.
        Returns how many member events were sent."""
        writers = self.events.writers
        if writers is not None:
            # Each room's event on its own writer; this process's rooms below.
            elsewhere: dict[str, list[str]] = {}
            for room_id in room_ids:
                if not writers.is_mine(room_id):
                    elsewhere.setdefault(writers.topology.event_writer_for(room_id), []).append(room_id)
            room_ids = [r for r in room_ids if writers.is_mine(r)]
            forwarded = [
                Deferred.fromCoroutine(
                    writers.call(rooms[0], "rooms.member_profiles", {"user_id": user_id, "room_ids": rooms})
                )
                for rooms in elsewhere.values()
            ]
            sent = sum(int(answer["sent"]) for answer in await gatherResults(forwarded))
            return sent + await self.update_member_profiles_here(user_id, room_ids)
        return await self.update_member_profiles_here(user_id, room_ids)

    async def update_member_profiles_here(self, user_id: str, room_ids: list[str]) -> int:
        """`update_member_profiles` for rooms this process writes."""
        profile = await self._profile_content(user_id)
        sent = 0
        for start in range(0, len(room_ids), _PROFILE_CHUNK):
            writes = []
            for room_id in room_ids[start : start + _PROFILE_CHUNK]:
                head = await self.events.heads.get(room_id)
                if head is None or head.membership(user_id) != "join":
                    continue
                current = dict(head.content("m.room.member", user_id))
                content = {k: v for k, v in current.items() if k not in ("displayname", "avatar_url")}
                content.update(profile)
                if content == current:
                    continue
                try:
                    event = self.events.build(head, user_id, "m.room.member", content, user_id)
                except MatrixError:
                    continue
                writes.append(Deferred.fromCoroutine(self.events.persist(head, [event])))
            await gatherResults(writes, consumeErrors=True)
            sent += len(writes)
        return sent

    async def invite(self, sender: str, room_id: str, target: str, reason: str | None = None) -> None:
        args = {"sender": sender, "room_id": room_id, "target": target, "reason": reason}
        if (forward := forwarded(self.events.writers, room_id, "rooms.invite", args)) is not None:
            await forward
            return
        check_user_id(target)
        self._may_act(sender)
        remote = self._is_remote(target)
        if not remote:
            await self._check_local_user(target)
        head = await self.access_room_as_member(sender, room_id)
        if head.membership(target) == "join":
            raise Forbidden(f"{target} is already in the room")
        self._limit("invite", sender)
        if head.membership(target) == "ban":
            raise Forbidden(f"{target} is banned from the room")
        direct = None
        # Keep the DM flag when re-inviting into a direct chat.
        if head.content("m.room.member", target).get("is_direct"):
            direct = {"is_direct": True}
        if remote:
            assert self.remote is not None
            if room_id in self.blocked:
                raise Forbidden("This room has been blocked on this server")
            content: dict[str, Any] = {"membership": "invite", **(direct or {})}
            if reason is not None:
                content["reason"] = reason
            await self.remote.invite_remote(head, sender, target, content)
            return
        await self.set_membership(sender, room_id, target, "invite", reason, direct)

    def _remote_servers(
        self, room_id: str, head: RoomHead | None, via: list[str] | None, user_id: str = ""
    ) -> list[str] | None:
        """The servers to join or leave through, when this server is not in the room (no
        local member joined); None when it is and the event is built here."""
        suffix = ":" + self.server_name
        if head is not None and any(m.endswith(suffix) for m in head.members("join")):
            return None
        servers = list(via or [])
        if ":" in room_id and not room_id.endswith(suffix):
            servers.append(room_id.split(":", 1)[1])  # v10/v11 room IDs name their creator's server
        if head is not None:
            own = head.get("m.room.member", user_id)
            if own is not None and own.sender != user_id:
                servers.append(own.sender.split(":", 1)[1])  # who invited us knows the room
            servers.extend(sorted({m.split(":", 1)[1] for m in head.members("join") if ":" in m}))
        servers = [s for s in dict.fromkeys(servers) if s != self.server_name]
        return servers if servers and self.remote is not None else None

    async def join(self, user_id: str, room_id_or_alias: str, via: list[str] | None = None) -> str:
        self._may_act(user_id)
        room_id = await self.resolve_room(room_id_or_alias)
        args = {"user_id": user_id, "room_id": room_id, "via": via}
        if (forward := forwarded(self.events.writers, room_id, "rooms.join", args)) is not None:
            return str((await forward)["room_id"])
        head = await self.events.heads.get(room_id)
        if head is None or head.membership(user_id) != "join":
            self._limit("join", user_id)  # joining again a room one is in changes nothing
        remote = self._remote_servers(room_id, head, via, user_id)
        if remote is not None and (head is None or head.membership(user_id) != "join"):
            assert self.remote is not None
            if room_id in self.blocked:
                raise Forbidden("This room has been blocked on this server")
            profile = await self._profile_content(user_id)
            await self.remote.remote_membership("join", user_id, room_id, remote, profile)
            return room_id
        invite = head.get("m.room.member", user_id) if head is not None else None
        authoriser = None
        if head is not None:
            authoriser = await join_authoriser(self.events.heads, self.server_name, head, user_id)
        extra = {"join_authorised_via_users_server": authoriser} if authoriser else None
        await self.set_membership(user_id, room_id, user_id, "join", extra=extra)
        if (
            invite is not None
            and invite.content.get("membership") == "invite"
            and invite.content.get("is_direct") is True
            and self.account_data is not None
        ):
            # The join replaces the invite and does not carry its is_direct: remember the
            # direct chat in the joiner's m.direct, as Matrix clients do on accepting one.
            await self.account_data.add_direct_room(user_id, invite.sender, room_id)
        predecessor = head.content("m.room.create").get("predecessor") if head is not None else None
        if isinstance(predecessor, dict) and isinstance(predecessor.get("room_id"), str):
            # Spec: Room Upgrades: joining the new room carries the user's tags and
            # notification settings over (and, as in Synapse, a direct chat stays one).
            if self.tags is not None:
                await self.tags.copy_tags(user_id, predecessor["room_id"], room_id)
            if self.push_rules is not None:
                await self.push_rules.copy_room_rules(user_id, predecessor["room_id"], room_id)
            if self.account_data is not None:
                await self.account_data.copy_direct_room(user_id, predecessor["room_id"], room_id)
        return room_id

    async def knock(
        self, user_id: str, room_id_or_alias: str, reason: str | None = None, via: list[str] | None = None
    ) -> str:
        """`POST /knock/{roomIdOrAlias}`: ask to be let in (spec: Knocking on rooms). The
        room's moderators see the knock in their timeline; an invite accepts it, a kick
        (a leave sent by them) rejects it, and the knocker may withdraw it by leaving.

        @raise NotFound: unknown room. @raise Forbidden: the room takes no knocks, or the
            user is joined, invited or banned already (auth rule 4.7).
        """
        self._may_act(user_id)
        room_id = await self.resolve_room(room_id_or_alias)
        args = {"user_id": user_id, "room_id": room_id, "reason": reason, "via": via}
        if (forward := forwarded(self.events.writers, room_id, "rooms.knock", args)) is not None:
            return str((await forward)["room_id"])
        head = await self.events.heads.get(room_id)
        if head is None or head.membership(user_id) != "knock":
            # A knock is a request to join, counted as one: a loop of knock and leave made
            # an event for the room's moderators each time (knocking again asks nothing).
            self._limit("join", user_id)
        remote = self._remote_servers(room_id, head, via, user_id)
        if remote is not None and (head is None or head.membership(user_id) != "knock"):
            assert self.remote is not None
            if room_id in self.blocked:
                raise Forbidden("This room has been blocked on this server")
            reason_extra = {"reason": reason} if isinstance(reason, str) else {}
            await self.remote.remote_membership("knock", user_id, room_id, remote, reason_extra)
            return room_id
        if head is None:
            raise NotFound("Unknown room")
        current = head.membership(user_id)
        if current == "knock":
            return room_id  # knocking twice asks once
        if current in ("join", "invite", "ban"):
            raise Forbidden(f"You cannot knock: your membership is {current}")
        if join_rule(head) not in KNOCK_JOIN_RULES:
            raise Forbidden("This room does not accept knocks")
        await self.set_membership(user_id, room_id, user_id, "knock", reason)
        return room_id

    async def leave(self, user_id: str, room_id: str, reason: str | None = None) -> None:
        args = {"user_id": user_id, "room_id": room_id, "reason": reason}
        if (forward := forwarded(self.events.writers, room_id, "rooms.leave", args)) is not None:
            await forward
            return
        head = await self.events.heads.get(room_id)
        if head is None:
            raise NotFound("Unknown room")
        if head.membership(user_id) in (None, "leave"):
            return
        remote = self._leave_through(user_id, head)
        if remote:
            assert self.remote is not None
            extra = {"reason": reason} if reason is not None else None
            await self.remote.remote_membership("leave", user_id, room_id, remote, extra)
            return
        await self.set_membership(user_id, room_id, user_id, "leave", reason)

    def _leave_through(self, user_id: str, head: RoomHead) -> list[str]:
        """Servers to leave through when no other member of ours is joined (our last member
        leaving, or rejecting a remote invite or knock): the leave must reach a server still
        in the room, since nothing here will send it. Empty: build the leave here."""
        suffix = ":" + self.server_name
        if self.remote is None or any(m.endswith(suffix) and m != user_id for m in head.members("join")):
            return []
        servers = [m.split(":", 1)[1] for m in head.members("join") if not m.endswith(suffix)]
        own = head.get("m.room.member", user_id)
        if own is not None and own.sender != user_id:
            servers.insert(0, own.sender.split(":", 1)[1])  # who invited us
        return [s for s in dict.fromkeys(servers) if s != self.server_name]

    async def kick(self, sender: str, room_id: str, target: str, reason: str | None) -> None:
        check_user_id(target)
        head = await self.access_room_as_member(sender, room_id)
        if head.membership(target) not in ("join", "invite", "knock"):
            raise Forbidden(f"{target} is not in the room")
        await self.set_membership(sender, room_id, target, "leave", reason)

    async def ban(self, sender: str, room_id: str, target: str, reason: str | None) -> None:
        check_user_id(target)
        await self.access_room_as_member(sender, room_id)
        await self.set_membership(sender, room_id, target, "ban", reason)

    async def unban(self, sender: str, room_id: str, target: str, reason: str | None) -> None:
        check_user_id(target)
        head = await self.access_room_as_member(sender, room_id)
        if head.membership(target) != "ban":
            raise Forbidden(f"{target} is not banned")
        await self.set_membership(sender, room_id, target, "leave", reason)

    async def forget(self, user_id: str, room_id: str) -> None:
        head = await self.events.heads.get(room_id)
        if head is None:
            raise NotFound("Unknown room")
        if head.membership(user_id) in ("join", "invite", "knock"):
            raise MatrixError("Leave the room before forgetting it", "M_UNKNOWN")
        if head.membership(user_id) is None:
            raise NotFound("You were never in this room")
        await self.storage.events.forget_room(user_id, room_id)
        self._forgotten.setdefault(user_id, set()).add(room_id)
        if self.on_forgotten is not None:
            self.on_forgotten(user_id)

    def drop_all_forgotten(self) -> None:
        self._forgotten.clear()

    def drop_forgotten(self, user_id: str) -> None:
        """Another process recorded a forgotten room: read the user's anew when asked."""
        self._forgotten.pop(user_id, None)

    # State -------------------------------------------------------------------------

    async def send_state(
        self, sender: str, room_id: str, event_type: str, state_key: str, content: dict[str, Any]
    ) -> StoredEvent:
        if event_type == "m.room.member":
            raise MatrixError(
                "Use the membership endpoints (invite, join, leave, kick, ban)", "M_FORBIDDEN", status=403
            )
        self._may_act(sender)
        if event_type == "m.room.canonical_alias":
            await self._check_canonical_alias(room_id, content)
        return await self.events.send(sender, room_id, event_type, content, state_key)

    async def _check_canonical_alias(self, room_id: str, content: dict[str, Any]) -> None:
        for alias in _claimed_aliases(content):
            if not isinstance(alias, str) or await self.storage.rooms.room_for_alias(alias) != room_id:
                raise MatrixError(f"Alias {alias} does not point to this room", "M_BAD_ALIAS")

    async def joined_members(self, user_id: str, room_id: str) -> dict[str, dict[str, Any]]:
        """`GET /joined_members`: each joined member's display name and avatar, for a member."""
        head = await self.access_room_as_member(user_id, room_id)
        joined = {}
        for member in head.members("join"):
            content = head.content("m.room.member", member)
            joined[member] = {
                "display_name": content.get("displayname"),
                "avatar_url": content.get("avatar_url"),
            }
        return joined

    # Redactions and forgotten rooms -------------------------------------------------------

    async def redact(
        self, user_id: str, device_id: str, room_id: str, event_id: str, reason: str | None, txn_id: str
    ) -> StoredEvent:
        """`PUT /rooms/{roomId}/redact/{eventId}/{txnId}`. The auth rules allow any same-server
        redaction; the client API asks for the redact level to remove someone else's event."""
        head = await self.access_room_as_member(user_id, room_id)
        target = (await self.storage.events.get_events([event_id])).get(event_id)
        if target is None or target.room_id != room_id:
            raise NotFound("Event not found")
        if target.sender != user_id and not self.may(user_id, head, "redact"):
            raise Forbidden("You may not redact other users' events")
        return await self.events.send(
            user_id,
            room_id,
            "m.room.redaction",
            {"reason": reason} if reason is not None else {},
            txn=(device_id, scoped_txn_id(f"redact/{room_id}/{event_id}", txn_id)),
            redacts=event_id,
            rate_limited=True,
        )

    def redaction_of(self, ev: StoredEvent) -> StoredEvent | None:
        """The redaction event of a redacted event (call `load_redactions` first for old events)."""
        return self._redactions.get(ev.redacted_by) if ev.redacted_by else None

    def forget_redactions(self, event_ids: list[str]) -> None:
        """Retention deleted these events: a redaction among them is no longer served."""
        for event_id in event_ids:
            self._redactions.pop(event_id, None)

    async def load_redactions(self, events: list[StoredEvent]) -> None:
        missing = [
            ev.redacted_by for ev in events if ev.redacted_by and ev.redacted_by not in self._redactions
        ]
        if missing:
            self._redactions.update(await self.storage.events.get_events(missing))

    def on_committed(self, events: list[StoredEvent], find: Any) -> list[StoredEvent]:
        """Apply committed redactions to cached copies; return the events they redacted."""
        redacted = []
        for ev in events:
            if ev.type == "m.room.member" and ev.content.get("membership") in ("join", "invite", "knock"):
                self._forgotten.get(ev.state_key or "", set()).discard(ev.room_id)
            if ev.type != "m.room.redaction":
                continue
            target_id = ev.pdu.get("redacts") or ev.content.get("redacts")
            self._redactions[ev.event_id] = ev
            target = find(ev.room_id, target_id) if isinstance(target_id, str) else None
            if target is not None and target.redacted_by is None:
                target.redacted_by = ev.event_id
                redacted.append(target)
        return redacted

    async def forgotten(self, user_id: str) -> set[str]:
        cached = self._forgotten.get(user_id)
        if cached is None:
            cached = self._forgotten[user_id] = await self.storage.events.forgotten_rooms(user_id)
        return cached

    def may(self, user_id: str, head: RoomHead, action: str, **kwargs: Any) -> bool:
        return can_do(user_id, action, PduState(head), room_version=head.room_version, **kwargs)  # type: ignore[arg-type]

    def invite_state(self, head: RoomHead, invitee: str) -> list[dict[str, Any]]:
        """Stripped state events shown with an invite (or with one's own knock: `knock_state`)."""
        out: list[dict[str, Any]] = []
        member = head.get("m.room.member", invitee)
        if head.get("m.room.create") is None and member is not None:
            # A room of another server we are not in: the stripped state its server sent.
            extra = member.unsigned_extra
            out.extend(extra.get("invite_room_state") or extra.get("knock_room_state") or [])
        for event_type in INVITE_STATE_TYPES:
            ev = head.get(event_type)
            if ev is not None:
                out.append({"type": ev.type, "state_key": "", "content": ev.content, "sender": ev.sender})
        member = head.get("m.room.member", invitee)
        if member is not None:
            out.append(
                {
                    "type": member.type,
                    "state_key": invitee,
                    "content": member.content,
                    "sender": member.sender,
                    "event_id": member.event_id,
                    "origin_server_ts": member.origin_server_ts,
                }
            )
            inviter = head.get("m.room.member", member.sender) if member.sender != invitee else None
            if inviter is not None:
                out.append(
                    {
                        "type": inviter.type,
                        "state_key": inviter.state_key,
                        "content": inviter.content,
                        "sender": inviter.sender,
                    }
                )
        return out
