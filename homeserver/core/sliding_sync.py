"""Simplified sliding sync (MSC4186): the rooms a client shows, a window at a time.

A client keeps a connection (per device and `conn_id`): its lists (filters, sort by
recency, ranges), its room subscriptions, and what it already has of each room. Each
response carries a `pos`; the next request names it and gets what changed since then.
The server remembers, per pos, what the client then had of each room (the stream
position the room was sent up to, the membership and room config it was sent with):
a room new to the client, or whose membership changed, is sent whole (`initial`),
any other only with its news. Connection state lives in memory, as the timeline cache
does: after a restart an old pos is answered `M_UNKNOWN_POS` and the client starts over.

It reads what /sync reads (core/sync.py): the same stream positions, the timeline
cache, room heads, unread counts, history visibility, and the notifier's wake-ups for
its long-poll.
"""

from __future__ import annotations

import functools
import itertools
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from homeserver.core.account_data import AccountDataService
from homeserver.core.clock import Clock
from homeserver.core.delivery import DeliveryTracker
from homeserver.core.e2ee import KeyService
from homeserver.core.event_format import dumps_with_raw
from homeserver.core.messages import state_at
from homeserver.core.receipts import ReceiptService
from homeserver.core.room_heads import RoomHead, RoomHeads
from homeserver.core.room_tags import TAG_TYPE, tag_names
from homeserver.core.rooms import RoomService
from homeserver.core.spaces import space_children
from homeserver.core.streams import SyncToken, pagination_token
from homeserver.core.sync import MAX_TIMEOUT_MS, SyncService, not_ignored
from homeserver.core.timeline_cache import TimelineCache
from homeserver.core.typing import TypingService
from homeserver.core.unread import UnreadCounter
from homeserver.errors import MatrixError
from homeserver.notifier import Notifier
from homeserver.storage import Storage
from homeserver.storage.events import PersistItem, StoredEvent

# Events that move a room up the list (what Synapse and Element X count as activity;
# a state change such as a member's new display name does not).
BUMP_TYPES = (
    "m.room.create",
    "m.room.message",
    "m.room.encrypted",
    "m.sticker",
    "m.call.invite",
    "m.poll.start",
    "m.beacon_info",
)
_BUMP_SET = frozenset(BUMP_TYPES)
LAZY = "$LAZY"
ME = "$ME"
WILDCARD = "*"
MAX_TIMELINE_LIMIT = 1000
# Timeline events in one response, all rooms together: 1000 rooms at the largest
# timeline_limit would be a million events (gigabytes of JSON built in memory). Clients
# ask for 1 to 20 a room in their lists (Element X: 1 for the room list, 20 for an open
# room), so a user with a few thousand rooms stays under it; past it, rooms get fewer
# events, `limited` and a `prev_batch` to page back from (docs/sliding-sync.md).
MAX_TIMELINE_EVENTS = 10_000
# Connections remembered (least recently used dropped past this), and positions per connection:
# the newest, and the one before it for a client retrying a response it lost.
MAX_CONNECTIONS = 50_000
# Per device, so that one device cannot push everyone else's out (Element X uses two or three).
MAX_CONNECTIONS_PER_DEVICE = 16
_POSITIONS_KEPT = 2
_MEMBERSHIPS_LISTED = ("join", "invite", "knock")
# Rooms the user is not in: shown with stripped state only (MSC4186 "Invite/knock/rejections").
_STRIPPED = ("invite", "knock")


class UnknownPos(MatrixError):
    """The pos is not (or no longer) known: the client starts a new connection (MSC4186)."""

    def __init__(self) -> None:
        super().__init__("Unknown position, start again without pos", "M_UNKNOWN_POS")


# The request ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RoomConfig:
    """What to send of a room: state keys (with `*`, `$LAZY`, `$ME`) and timeline length."""

    required_state: tuple[tuple[str, str], ...] = ()
    timeline_limit: int = 0

    def merge(self, other: "RoomConfig") -> "RoomConfig":
        """A room in two lists (or a list and a subscription) gets the union of both."""
        state = tuple(dict.fromkeys(self.required_state + other.required_state))
        return RoomConfig(state, max(self.timeline_limit, other.timeline_limit))


@dataclass(frozen=True, slots=True)
class ListFilters:
    is_dm: bool | None = None
    is_encrypted: bool | None = None
    is_invite: bool | None = None
    # None inside means "rooms without a type" (spec: room types; JSON null).
    room_types: tuple[str | None, ...] | None = None
    not_room_types: tuple[str | None, ...] = ()
    # Rooms that a joined space names in its m.space.child state (direct children only).
    spaces: tuple[str, ...] | None = None
    # Room tags (m.tag room account data): any of `tags`, none of `not_tags`.
    tags: tuple[str, ...] | None = None
    not_tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ListRequest:
    ranges: tuple[tuple[int, int], ...]
    config: RoomConfig
    filters: ListFilters = ListFilters()


ALL = (WILDCARD,)


@dataclass(frozen=True, slots=True)
class ExtensionScope:
    """Which rooms a per-room extension covers: the rooms in the windows of `lists` and the
    subscribed `rooms` (`*`: every list, every subscription)."""

    lists: tuple[str, ...] = ALL
    rooms: tuple[str, ...] = ALL

    def rooms_in(self, windows: dict[str, list[str]], subscribed: list[str]) -> set[str]:
        out: set[str] = set()
        for name, room_ids in windows.items():
            if WILDCARD in self.lists or name in self.lists:
                out.update(room_ids)
        if WILDCARD in self.rooms:
            out.update(subscribed)
        else:
            out.update(r for r in self.rooms if r in subscribed)
        return out


@dataclass(frozen=True, slots=True)
class Extensions:
    to_device: bool = False
    to_device_since: int | None = None
    e2ee: bool = False
    # None: not enabled.
    account_data: ExtensionScope | None = None
    receipts: ExtensionScope | None = None
    typing: ExtensionScope | None = None


@dataclass(slots=True)
class SlidingSyncRequest:
    user_id: str
    device_id: str
    conn_id: str = ""
    pos: str | None = None
    timeout_ms: int = 0
    lists: dict[str, ListRequest] = field(default_factory=dict)
    subscriptions: dict[str, RoomConfig] = field(default_factory=dict)
    extensions: Extensions = Extensions()


def _children_of(spaces: tuple[str, ...] | None, candidates: dict[str, "_Candidate"]) -> set[str] | None:
    """The rooms the `spaces` filter lets through: children named by the spaces the user is
    joined to (MSC4186: others are ignored; subspaces are not walked)."""
    if spaces is None:
        return None
    children: set[str] = set()
    for space_id in spaces:
        space = candidates.get(space_id)
        if space is not None and space.membership == "join":
            children.update(child.room_id for child in space_children(space.head))
    return children


# Connection state ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Sent:
    """What a client has of one room: sent up to `position`, with this membership and config,
    showing these unread counts."""

    position: int
    membership: str
    config: RoomConfig
    counts: tuple[int, int]


@dataclass(slots=True)
class _PosState:
    token: SyncToken
    rooms: dict[str, _Sent]
    counts: dict[str, int]


@dataclass(slots=True)
class _Connection:
    positions: OrderedDict[str, _PosState] = field(default_factory=OrderedDict)


@dataclass(slots=True)
class _Candidate:
    room_id: str
    membership: str
    position: int  # of the user's membership event
    head: RoomHead
    bump: int


class SlidingSyncService:
    def __init__(
        self,
        storage: Storage,
        clock: Clock,
        notifier: Notifier,
        heads: RoomHeads,
        timeline: TimelineCache,
        rooms: RoomService,
        receipts: ReceiptService,
        typing: TypingService,
        account_data: AccountDataService,
        delivery: DeliveryTracker,
        unread: UnreadCounter,
        keys: KeyService,
        sync: SyncService,
    ) -> None:
        self.storage = storage
        self.clock = clock
        self.notifier = notifier
        self.heads = heads
        self.timeline = timeline
        self.rooms = rooms
        self.receipts = receipts
        self.typing = typing
        self.account_data = account_data
        self.delivery = delivery
        self.unread = unread
        self.keys = keys
        self.classic = sync  # /sync: tokens, event encoding, device lists
        self.visibility = sync.visibility
        self._connections: OrderedDict[tuple[str, str, str], _Connection] = OrderedDict()
        # Each device's conn_ids, least recently used first.
        self._device_conns: dict[tuple[str, str], OrderedDict[str, None]] = {}
        self._pos_counter = itertools.count(1)
        # Positions name this process's run: a pos from before a restart can never match
        # one handed out after it (the same device and conn_id may have started again).
        self._run = secrets.token_hex(4)
        # Each room's newest bump-type event: set from the commit stream, read from the
        # database the first time a room is listed before it had one since start-up.
        self._bump: dict[str, int] = {}
        self.max_timeline_events = MAX_TIMELINE_EVENTS

    def on_committed(self, items: list[PersistItem]) -> None:
        """A consumer of the committed-event stream (in stream order): bump stamps."""
        bump = self._bump
        for item in items:
            ev = item.event
            if ev.type in _BUMP_SET:
                bump[ev.room_id] = ev.stream_ordering

    async def _bump_stamps(self, room_ids: list[str]) -> None:
        missing = [r for r in room_ids if r not in self._bump]
        if not missing:
            return
        found = await self.storage.events.last_positions_of_types(missing, BUMP_TYPES)
        for room_id in missing:
            # A commit seen while reading is newer than what was read.
            self._bump[room_id] = max(found.get(room_id, 0), self._bump.get(room_id, 0))

    # The request ----------------------------------------------------------------------

    async def sync(self, req: SlidingSyncRequest) -> str:
        """The JSON text of a response; with a pos and a timeout, waits for news first."""
        key = (req.user_id, req.device_id, req.conn_id)
        since: _PosState | None = None
        if req.pos is not None:
            conn = self._connections.get(key)
            since = conn.positions.get(req.pos) if conn is not None else None
            if since is None:
                raise UnknownPos()
            # Asking with a pos proves the response that carried it arrived (message status).
            self.delivery.acknowledge(req.user_id, req.device_id, since.token.events)
        # A device with a sync open gets new events by sync: pushes to it can wait for its receipt.
        self.delivery.connections.opened(req.user_id, req.device_id)
        try:
            response, state = await self._answer(req, since)
        finally:
            self.delivery.connections.closed(req.user_id, req.device_id)
        pos = f"{self._run}_{next(self._pos_counter)}"
        response["pos"] = pos
        self._remember(key, pos, state)
        return dumps_with_raw(response)

    async def _answer(
        self, req: SlidingSyncRequest, since: _PosState | None
    ) -> tuple[dict[str, Any], _PosState]:
        """The response, once it has news or the long-poll's timeout passed."""
        monotonic = self.clock.monotonic
        deadline = monotonic() + min(max(req.timeout_ms, 0), MAX_TIMEOUT_MS) / 1000
        while True:
            version = self.notifier.version
            response, state, has_data = await self._compute(req, since)
            remaining = deadline - monotonic()
            if has_data or since is None or remaining <= 0 or self.notifier.closing:
                return response, state
            if self.notifier.changed_since(req.user_id, version):
                continue
            del response, state
            await self.notifier.wait(req.user_id, remaining)
            if deadline - monotonic() <= 0:
                response, state, _ = await self._compute(req, since)
                return response, state

    def _remember(self, key: tuple[str, str, str], pos: str, state: _PosState) -> None:
        conn = self._connections.get(key)
        device = self._device_conns.setdefault(key[:2], OrderedDict())
        device[key[2]] = None
        device.move_to_end(key[2])
        if conn is None:
            conn = self._connections[key] = _Connection()
            if len(device) > MAX_CONNECTIONS_PER_DEVICE:
                self._drop((*key[:2], next(iter(device))))
            if len(self._connections) > MAX_CONNECTIONS:
                self._drop(next(iter(self._connections)))
        else:
            self._connections.move_to_end(key)
        conn.positions[pos] = state
        while len(conn.positions) > _POSITIONS_KEPT:
            conn.positions.popitem(last=False)

    def _drop(self, key: tuple[str, str, str]) -> None:
        self._connections.pop(key, None)
        device = self._device_conns.get(key[:2])
        if device is not None:
            device.pop(key[2], None)
            if not device:
                del self._device_conns[key[:2]]

    async def _compute(
        self, req: SlidingSyncRequest, since: _PosState | None
    ) -> tuple[dict[str, Any], _PosState, bool]:
        user_id = req.user_id
        upto = self.classic.current_token()
        since_token = since.token if since is not None else None
        candidates = await self._candidates(user_id, since, upto)
        filters = [lst.filters for lst in req.lists.values()]
        direct: set[str] | None = None
        if any(f.is_dm is not None for f in filters):
            direct = {r for rooms in (await self.account_data.direct_rooms(user_id)).values() for r in rooms}
        tags: dict[str, frozenset[str]] = {}
        if any(f.tags is not None or f.not_tags for f in filters):
            tags = {
                room_id: tag_names(content)
                for room_id, content in (await self.account_data.rooms_with(user_id, TAG_TYPE)).items()
            }

        # Lists: filter, sort by recency, cut the windows.
        wanted: dict[str, RoomConfig] = {}
        lists: dict[str, Any] = {}
        counts: dict[str, int] = {}
        windows: dict[str, list[str]] = {}
        in_lists: dict[str, dict[str, None]] = {}  # room -> the lists whose windows hold it
        ordered = sorted(candidates.values(), key=lambda c: (-c.bump, c.room_id))
        for name, lst in req.lists.items():
            children = _children_of(lst.filters.spaces, candidates)
            rooms = [
                c.room_id for c in ordered if self._passes(c, lst.filters, direct, tags, children, user_id)
            ]
            counts[name] = len(rooms)
            lists[name] = {"count": len(rooms)}
            window: dict[str, None] = {}  # overlapping ranges name a room once
            for start, end in lst.ranges:
                window.update(dict.fromkeys(rooms[start : end + 1]))
            windows[name] = list(window)
            for room_id in window:
                in_lists.setdefault(room_id, {})[name] = None
        # Rooms in the same lists share one merged config, computed once.
        merged: dict[tuple[str, ...], RoomConfig] = {}
        for room_id, names in in_lists.items():
            key = tuple(names)
            config = merged.get(key)
            if config is None:
                config = merged[key] = functools.reduce(RoomConfig.merge, (req.lists[n].config for n in key))
            wanted[room_id] = config

        # Subscriptions: any room the user is or was in and has not forgotten (a former member
        # sees it up to leaving).
        subscribed: list[str] = []
        for room_id, config in req.subscriptions.items():
            if room_id not in candidates:
                found = await self._former(user_id, room_id, upto)
                if found is None:
                    continue  # nothing to show, and no hint it exists
                candidates[room_id] = found
            subscribed.append(room_id)
            prior = wanted.get(room_id)
            wanted[room_id] = config if prior is None else prior.merge(config)

        sent_before = since.rooms if since is not None else {}
        rooms_out: dict[str, Any] = {}
        now_sent = dict(sent_before)
        initial_rooms: list[str] = []
        # The rooms the client subscribed to (the one it shows) get their timelines first,
        # then the lists' windows in order, until the response's budget is spent.
        budget = self.max_timeline_events
        for room_id in dict.fromkeys([*subscribed, *wanted]):
            c = candidates[room_id]
            result = await self._room(
                req, c, wanted[room_id], sent_before.get(room_id), since_token, upto, budget
            )
            if result is None:
                continue
            body, sent, initial = result
            now_sent[room_id] = sent
            if body is not None:
                rooms_out[room_id] = body
                budget -= len(body.get("timeline", ()))
                if initial:
                    initial_rooms.append(room_id)

        joined = {r for r in wanted if candidates[r].membership == "join"}
        extensions = await self._extensions(
            req, since_token, upto, joined, initial_rooms, windows, subscribed
        )
        response: dict[str, Any] = {"lists": lists, "rooms": rooms_out, "extensions": extensions}
        state = _PosState(upto, now_sent, counts)
        has_data = bool(
            rooms_out or since is None or counts != since.counts or self._extension_news(extensions)
        )
        return response, state, has_data

    @staticmethod
    def _extension_news(extensions: dict[str, Any]) -> bool:
        """Whether the extensions carry anything beyond counts a client always gets."""
        for name, ext in extensions.items():
            if name == "e2ee":
                lists = ext.get("device_lists", {})
                if lists.get("changed") or lists.get("left"):
                    return True
            elif name == "to_device":
                if ext["events"]:
                    return True
            elif name == "account_data":
                if ext["global"] or ext["rooms"]:
                    return True
            elif ext.get("rooms"):
                return True
        return False

    async def _candidates(
        self, user_id: str, since: _PosState | None, upto: SyncToken
    ) -> dict[str, _Candidate]:
        """The rooms lists choose from: joined and invited, and rooms the client has that the
        user left since (so it learns they left)."""
        memberships = await self.timeline.rooms_for_user(user_id)
        forgotten = await self.rooms.forgotten(user_id)
        ignored = await self.classic.ignored_by(user_id)
        picked: list[tuple[str, str, int]] = []
        for room_id, (membership, position) in list(memberships.items()):
            if position > upto.events or room_id in forgotten:
                continue  # a membership newer than this response belongs to the next one
            if membership in _MEMBERSHIPS_LISTED or (
                membership in ("leave", "ban")
                and since is not None
                and room_id in since.rooms
                and position > since.rooms[room_id].position
            ):
                picked.append((room_id, membership, position))
        await self._bump_stamps([r for r, m, _ in picked if m == "join"])
        out: dict[str, _Candidate] = {}
        for room_id, membership, position in picked:
            head = await self.heads.get(room_id)
            if head is None:
                continue
            if membership == "invite" and ignored:
                invite = head.get("m.room.member", user_id)
                if invite is not None and invite.sender in ignored:
                    continue  # an ignored user's invite is dropped (spec: Ignoring Users)
            if membership == "join":
                bump = self._bump.get(room_id, position)
                bump = bump if bump <= upto.events else position
            else:
                bump = position  # what happened after an invite or a leave is not theirs to see
            out[room_id] = _Candidate(room_id, membership, position, head, bump)
        return out

    async def _former(self, user_id: str, room_id: str, upto: SyncToken) -> _Candidate | None:
        memberships = await self.timeline.rooms_for_user(user_id)
        entry = memberships.get(room_id)
        if entry is None or entry[1] > upto.events or room_id in await self.rooms.forgotten(user_id):
            return None  # never in the room, or forgot it (its history is no longer theirs)
        head = await self.heads.get(room_id)
        if head is None:
            return None
        if entry[0] == "invite":
            # Only an invite the lists left out gets here: an ignored user's, which stays out.
            invite = head.get("m.room.member", user_id)
            if invite is not None and invite.sender in await self.classic.ignored_by(user_id):
                return None
        return _Candidate(room_id, entry[0], entry[1], head, entry[1])

    @staticmethod
    def _passes(
        c: _Candidate,
        f: ListFilters,
        direct: set[str] | None,
        tags: dict[str, frozenset[str]],
        children: set[str] | None,
        user_id: str,
    ) -> bool:
        if c.membership in ("leave", "ban"):
            return True  # shown once, so the client moves it out
        if f.is_invite is not None and (c.membership == "invite") != f.is_invite:
            return False
        if children is not None and c.room_id not in children:
            return False
        if f.tags is not None or f.not_tags:
            room_tags = tags.get(c.room_id, frozenset())
            if f.tags is not None and room_tags.isdisjoint(f.tags):
                return False
            if not room_tags.isdisjoint(f.not_tags):
                return False
        if f.is_dm is not None:
            is_dm = direct is not None and c.room_id in direct
            if c.membership == "invite":
                is_dm = is_dm or c.head.content("m.room.member", user_id).get("is_direct") is True
            if is_dm != f.is_dm:
                return False
        if f.is_encrypted is not None and (c.head.get("m.room.encryption") is not None) != f.is_encrypted:
            return False
        if f.room_types is not None or f.not_room_types:
            room_type = c.head.content("m.room.create").get("type")
            room_type = room_type if isinstance(room_type, str) else None
            if f.room_types is not None and room_type not in f.room_types:
                return False
            if room_type in f.not_room_types:
                return False
        return True

    # One room ---------------------------------------------------------------------------

    async def _room(
        self,
        req: SlidingSyncRequest,
        c: _Candidate,
        config: RoomConfig,
        sent: _Sent | None,
        since: SyncToken | None,
        upto: SyncToken,
        budget: int,
    ) -> tuple[dict[str, Any] | None, _Sent, bool] | None:
        """The room's entry (None when the client is up to date), what the client then has,
        and whether the entry is initial. At most `budget` timeline events (what is left of
        the response's MAX_TIMELINE_EVENTS)."""
        user_id = req.user_id
        head = c.head
        initial = sent is None or sent.membership != c.membership
        if c.membership in _STRIPPED:
            sent_now = _Sent(c.position, c.membership, config, (0, 0))
            if not initial:
                return None, sent_now, False
            # An invite or a knock: stripped state only, with the user's own member event (its
            # membership tells which). Synapse and the clients that read it (Element X's SDK,
            # matrix-js-sdk) name both `invite_state`.
            body: dict[str, Any] = {
                "initial": True,
                "invite_state": self.rooms.invite_state(head, user_id),
                "bump_stamp": c.bump,
            }
            return body, sent_now, True
        end = upto.events if c.membership == "join" else min(c.position, upto.events)
        entry = await self.unread.entry(user_id, c.room_id) if c.membership == "join" else None
        counts = (entry.notify, entry.highlight) if entry is not None else (0, 0)
        config_changed = sent is not None and sent.config != config
        after = 0 if initial or sent is None else sent.position
        news = self.timeline.room_last.get(c.room_id, 0) > after and after < end
        sent_now = _Sent(max(end, after), c.membership, config, counts)
        if not initial and not news and not config_changed and sent is not None and sent.counts == counts:
            return None, sent_now, False

        limit = min(config.timeline_limit, max(budget, 0))
        if news or initial:
            events, limited = await self._events_between(c.room_id, after, end, limit)
            if limit < config.timeline_limit and not events:
                # Cut to nothing by the response's budget: the client pages back for them.
                limited = min(self.timeline.room_last.get(c.room_id, 0), end) > after
        else:
            events, limited = [], False
        # A member joined at every event of the range needs no check (core/visibility.py, rule 2).
        joined_throughout = (
            not initial and c.membership == "join" and sent is not None and c.position <= sent.position
        )
        if events and not joined_throughout:
            events = await self.visibility.filter_for_user(user_id, head, events)
        events = not_ignored(events, await self.classic.ignored_by(user_id))
        state = await self._required_state(
            head, config, events, user_id, end, after if not (initial or config_changed) else None
        )
        summary_head = head
        if c.membership != "join":
            had_upto = await self._joined_until(user_id, head.room_id, end)
            state = await self._seen_state(user_id, head, state, had_upto)
            at_end = await self._head_at(head, end)
            seen = await self._seen_state(user_id, head, list(at_end.state.values()), had_upto)
            summary_head = RoomHead(
                head.room_id, head.room_version, {(e.type, e.state_key or ""): e for e in seen}
            )
        await self.rooms.load_redactions(events + state)
        bundles = await self.classic.thread_bundles(user_id, head, events)
        body = {
            "timeline": [
                self.classic.encode_with_thread(ev, head, user_id, req.device_id, bundles.get(ev.event_id))
                for ev in events
            ],
            "required_state": [self.classic.encode_for(ev, head, user_id, req.device_id) for ev in state],
            "limited": limited,
            "prev_batch": pagination_token(events[0].stream_ordering - 1 if events else end),
            "num_live": (
                sum(1 for ev in events if ev.stream_ordering > since.events) if since is not None else 0
            ),
            "bump_stamp": c.bump,
            "notification_count": counts[0],
            "highlight_count": counts[1],
            **self._summary(summary_head, user_id),
        }
        if initial:
            body["initial"] = True
        if c.membership != "join":
            # The client learns the membership from the leave in the timeline; show it even
            # when the visibility rules hide everything else.
            member = head.get("m.room.member", user_id)
            if (
                member is not None
                and member.stream_ordering <= end
                and all(ev.event_id != member.event_id for ev in events)
            ):
                body["timeline"].append(self.classic.encode_for(member, head, user_id, req.device_id))
        return body, sent_now, initial

    async def _events_between(
        self, room_id: str, after: int, upto: int, limit: int
    ) -> tuple[list[StoredEvent], bool]:
        """Up to `limit` newest events in (after, upto], oldest first, and whether some were left out."""
        if limit == 0:
            last = self.timeline.room_last.get(room_id, 0)
            return [], last > after and after > 0
        cached = self.timeline.events_between(room_id, after, upto)
        if cached is not None:
            events = cached
        else:
            events = list(
                reversed(await self.storage.events.room_events_between(room_id, after, upto, limit + 1))
            )
        limited = len(events) > limit
        return (events[-limit:] if limited else events), limited

    async def _required_state(
        self,
        head: RoomHead,
        config: RoomConfig,
        timeline: list[StoredEvent],
        user_id: str,
        end: int,
        changed_after: int | None,
    ) -> list[StoredEvent]:
        """The state the config asks for as of `end`; with `changed_after`, only what changed
        since then (and the members of the timeline's senders, for `$LAZY`)."""
        if not config.required_state:
            return []
        exact: set[tuple[str, str]] = set()
        any_key: set[str] = set()
        any_type_keys: set[str] = set()
        everything = False
        lazy = False
        for event_type, state_key in config.required_state:
            if event_type == "m.room.member" and state_key == LAZY:
                lazy = True
                continue
            key = user_id if state_key == ME else state_key
            if event_type == WILDCARD and key == WILDCARD:
                everything = True
            elif event_type == WILDCARD:
                any_type_keys.add(key)
            elif key == WILDCARD:
                any_key.add(event_type)
            else:
                exact.add((event_type, key))
        if lazy:
            exact.update(("m.room.member", ev.sender) for ev in timeline)
        if everything or any_key or any_type_keys:
            state = [
                ev
                for ev in await state_at(self.storage.events, head, end)
                if everything
                or ev.type in any_key
                or ev.state_key in any_type_keys
                or (ev.type, ev.state_key) in exact
            ]
        else:
            state = []
            for event_type, state_key in exact:
                ev = head.get(event_type, state_key)
                if ev is not None and ev.stream_ordering > end:
                    ev = await self.storage.events.state_event_at(head.room_id, event_type, state_key, end)
                if ev is not None:
                    state.append(ev)
        if changed_after is not None:
            senders = {ev.sender for ev in timeline} if lazy else set()
            state = [
                ev
                for ev in state
                if ev.stream_ordering > changed_after
                or (ev.type == "m.room.member" and ev.state_key in senders)
            ]
        state.sort(key=lambda ev: ev.stream_ordering)
        return state

    async def _joined_until(self, user_id: str, room_id: str, end: int) -> int | None:
        """Where the user's last join up to `end` ended (None: never joined by then)."""
        history = await self.storage.events.membership_history(user_id, room_id)
        until: int | None = None
        for i, (position, membership) in enumerate(history):
            if membership == "join" and position <= end:
                until = min(history[i + 1][0], end) if i + 1 < len(history) else end
        return until

    async def _seen_state(
        self, user_id: str, head: RoomHead, state: list[StoredEvent], had_upto: int | None
    ) -> list[StoredEvent]:
        """Of a room's state, what a user no longer joined may have: what was current when
        their last join ended at `had_upto` (they had it then), their own membership, and
        what history visibility shows them. Someone never joined (a refused invite or knock,
        a ban before joining) does not get the room's members, name and topic that way."""
        rest = [
            ev
            for ev in state
            if not (had_upto is not None and ev.stream_ordering <= had_upto)
            and not (ev.type == "m.room.member" and ev.state_key == user_id)
        ]
        if not rest:
            return state
        hidden = {ev.event_id for ev in rest} - {
            ev.event_id for ev in await self.visibility.filter_for_user(user_id, head, rest)
        }
        return [ev for ev in state if ev.event_id not in hidden]

    async def _head_at(self, head: RoomHead, end: int) -> RoomHead:
        """The room as it was at `end` (for a former member: what came after is not theirs)."""
        state = await state_at(self.storage.events, head, end)
        return RoomHead(head.room_id, head.room_version, {(ev.type, ev.state_key or ""): ev for ev in state})

    @staticmethod
    def _summary(head: RoomHead, user_id: str) -> dict[str, Any]:
        """name, avatar, heroes (when the room has no name) and member counts."""
        out: dict[str, Any] = {}
        name = head.content("m.room.name").get("name")
        if isinstance(name, str) and name:
            out["name"] = name
        avatar = head.content("m.room.avatar").get("url")
        if isinstance(avatar, str) and avatar:
            out["avatar"] = avatar
        joined = head.members("join")
        invited = head.members("invite")
        if "name" not in out:
            heroes = []
            for member in sorted(u for u in itertools.chain(joined, invited) if u != user_id)[:5]:
                content = head.content("m.room.member", member)
                hero: dict[str, Any] = {"user_id": member}
                if isinstance(content.get("displayname"), str):
                    hero["displayname"] = content["displayname"]
                if isinstance(content.get("avatar_url"), str):
                    hero["avatar_url"] = content["avatar_url"]
                heroes.append(hero)
            out["heroes"] = heroes
        out["joined_count"] = len(joined)
        out["invited_count"] = len(invited)
        return out

    # Extensions -------------------------------------------------------------------------

    async def _extensions(
        self,
        req: SlidingSyncRequest,
        since: SyncToken | None,
        upto: SyncToken,
        joined: set[str],
        initial_rooms: list[str],
        windows: dict[str, list[str]],
        subscribed: list[str],
    ) -> dict[str, Any]:
        """The extensions' data; account data, receipts and typing only for the joined rooms
        their `lists` and `rooms` scope."""
        ext = req.extensions
        user_id = req.user_id
        out: dict[str, Any] = {}
        if ext.to_device:
            events, reached = await self.keys.to_device_for_sync(
                user_id, req.device_id, ext.to_device_since or 0, upto.to_device
            )
            out["to_device"] = {"next_batch": str(reached), "events": events}
        if ext.e2ee:
            e2ee: dict[str, Any] = {
                "device_one_time_keys_count": await self.keys.one_time_key_counts(user_id, req.device_id),
                "device_unused_fallback_key_types": await self.keys.fallback_key_types(
                    user_id, req.device_id
                ),
            }
            if since is not None:
                memberships = await self.timeline.rooms_for_user(user_id)
                all_joined = [r for r, (m, p) in memberships.items() if m == "join" and p <= upto.events]
                changed, left = await self.classic.device_list_delta(user_id, since, upto, all_joined)
                e2ee["device_lists"] = {"changed": sorted(changed), "left": sorted(left)}
            else:
                e2ee["device_lists"] = {"changed": [], "left": []}
            out["e2ee"] = e2ee
        fresh = set(initial_rooms) & joined

        def scoped(scope: ExtensionScope) -> set[str]:
            if scope.lists == ALL and scope.rooms == ALL:
                return joined
            return scope.rooms_in(windows, subscribed) & joined

        if ext.account_data is not None:
            global_events = await self.classic.global_account_data(user_id, since, upto)
            per_room: dict[str, list[dict[str, Any]]] = {}
            wanted = scoped(ext.account_data)
            rows = await self.account_data.since(
                user_id, since.account_data if since else 0, upto.account_data
            )
            if since is not None and fresh & wanted:
                # A room new to the client gets all its account data, not only the latest changes.
                rows = [r for r in rows if r[0] not in fresh] + [
                    r for r in await self.account_data.since(user_id, 0, upto.account_data) if r[0] in fresh
                ]
            for room_id, data_type, content in rows:
                if room_id and room_id in wanted:
                    per_room.setdefault(room_id, []).append({"type": data_type, "content": content})
            out["account_data"] = {"global": global_events, "rooms": per_room}
        if ext.receipts is not None:
            in_scope = scoped(ext.receipts)
            receipts = await self.receipts.receipts_event(
                user_id,
                sorted(in_scope - fresh),
                since.receipts if since else 0,
                upto.receipts,
            )
            if fresh & in_scope:
                receipts.update(
                    await self.receipts.receipts_event(user_id, sorted(fresh & in_scope), 0, upto.receipts)
                )
            out["receipts"] = {"rooms": receipts}
        if ext.typing is not None:
            typing: dict[str, Any] = {}
            for room_id in sorted(scoped(ext.typing)):
                if since is None or room_id in fresh or self.typing.changed_since(room_id, since.typing):
                    users = self.typing.typing_users(room_id)
                    if since is not None and room_id not in fresh or users:
                        typing[room_id] = {"type": "m.typing", "content": {"user_ids": users}}
            out["typing"] = {"rooms": typing}
        return out
