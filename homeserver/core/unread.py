"""Unread counts per (user, room), from the user's push rules: `notification_count` counts
the events after the user's read receipt whose matching rule notifies, `highlight_count`
those whose rule also highlights; each per thread too (`unread_thread_notifications`).

Loaded from the database once per (user, room) (the events after the receipt, evaluated
against the room's current state), then kept current from the commit stream, so a sync
never counts rows. Loads are batched: the pairs asked for while one read runs are read
together in the next (one query on PostgreSQL), so the burst after a restart or a login
storm (every member's first message in a room) costs a few reads, not one each. After a
read receipt, or when the user's rules change, the entry is dropped and loaded afresh on
the next read.

While a load's read runs, the room moves on. The read is bounded by the stream position
taken before it: everything up to there was published before the load began (the inline
pass skipped it, no entry yet) and is committed, so the read sees it; what is published
after, the inline pass keeps for the pairs being loaded and they evaluate it, as if read,
when the read lands. Each message is counted once, whichever event writer committed it and
whenever the read's snapshot was taken. A receipt, rule or ignore-list change, or retention
that reaches a pair while its read runs makes that read stale: the pair is read again
(before its askers are answered) rather than kept with what it counted before. At most
MAX_LOAD_READS times in a row: a steady stream of receipts (a user reading each message
as it comes, on a busy room) could otherwise send a load round forever, its askers never
answered. The last read's count then answers them, as it stood while they asked, and is
not kept: the change it missed is counted by the next load.

With several processes a receipt can reach this one before the event it points at (they
come through different streams, homeserver/workers/): the load after it reads the receipt
from the database with its events, and the entry keeps the event position the receipt is
at (`read_at`). An event at or below it, published here later, counts for nothing, in the
inline pass and in a load it reaches while the read runs, as in the database's count.

Push decisions follow the same rule: an event at or below the user's read receipt
notifies no one, whichever came first here. `decisions` checks each recipient's receipt
when the pusher asks (the count in memory knows where it is; else it is read), so a
message read on another device, or through another process, before its push went out
is not pushed.

The inline pass evaluates each committed event once per joined member that has counts in
memory (core/push_eval.py shares the event's work between them). When a push plugin asks
for decisions (`push_decisions`), the pass also keeps, per recent event, which of the
members with a pusher it notifies, so delivery does not evaluate the rules a second time
(members without a pusher have nothing to deliver to, and cost nothing there).

Messages from users the member ignores (m.ignored_user_list) count for nothing and notify
no one who ignores their sender: per event, the pass looks up once who ignores the sender
(core/ignored_users.py, in memory), so it reads nothing per recipient.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from homeserver.core.event_stream import EventStream
from homeserver.core.ignored_users import IgnoredUsers
from homeserver.core.push_eval import NO_MATCH, EventFacts, Outcome, Plan, Program
from homeserver.core.push_rules import PushRuleService
from homeserver.core.room_heads import RoomHead, RoomHeads
from homeserver.storage import Storage
from homeserver.storage.events import EventRow, PersistItem, StoredEvent, UnreadQuery

_MAX_ENTRIES = 200_000
# At most this many events after the receipt are evaluated when loading (the count shows "999+").
MAX_COUNTED = 1000
# Decisions kept for the push plugin, in recipients summed over events (a 500-member room's
# message holds up to 499).
MAX_DECISIONS = 100_000
_MAX_FACTS = 2048
# At most this many (user, room) pairs are loaded in one read (one statement's parameters).
LOAD_BATCH = 200
# A pair overtaken by a change during its read is read at most this many times in a row.
MAX_LOAD_READS = 3
_NO_PLAN = Plan((), NO_MATCH, None)


def _invites(pdu: Mapping[str, Any], user_id: str) -> bool:
    """Whether the event invites `user_id` (the default rules notify them of it)."""
    if pdu.get("type") != "m.room.member" or pdu.get("state_key") != user_id:
        return False
    content = pdu.get("content")
    return isinstance(content, dict) and content.get("membership") == "invite"


def thread_of(ev: StoredEvent) -> str | None:
    """The root of the thread `ev` is in (spec: "Threading"), or None for the main timeline."""
    rel = ev.content.get("m.relates_to")
    if isinstance(rel, dict) and rel.get("rel_type") == "m.thread":
        root = rel.get("event_id")
        return root if isinstance(root, str) else None
    return None


class Counts:
    """One user's counts in one room: totals, and per thread root."""

    __slots__ = ("notify", "highlight", "threads", "read_at")

    def __init__(self, read_at: int = 0) -> None:
        # The event position of the read receipt the count starts after.
        self.read_at = read_at
        self.notify = 0
        self.highlight = 0
        self.threads: dict[str, list[int]] | None = None

    def add(self, highlight: bool, thread: str | None) -> None:
        self.notify += 1
        if highlight:
            self.highlight += 1
        if thread is not None:
            threads = self.threads
            if threads is None:
                threads = self.threads = {}
            counts = threads.get(thread)
            if counts is None:
                counts = threads[thread] = [0, 0]
            counts[0] += 1
            if highlight:
                counts[1] += 1

    def render(self, by_thread: bool = False) -> tuple[dict[str, int], dict[str, dict[str, int]] | None]:
        """`unread_notifications`, and with `by_thread` the main timeline's only plus
        `unread_thread_notifications` (spec: /sync, "unread_thread_notifications")."""
        if not by_thread:
            return {"notification_count": self.notify, "highlight_count": self.highlight}, None
        threads = self.threads or {}
        main_n = self.notify - sum(c[0] for c in threads.values())
        main_h = self.highlight - sum(c[1] for c in threads.values())
        per_thread = {
            root: {"notification_count": c[0], "highlight_count": c[1]} for root, c in threads.items() if c[0]
        }
        return {"notification_count": main_n, "highlight_count": main_h}, per_thread


@dataclass(frozen=True, slots=True)
class Decision:
    user_id: str
    outcome: Outcome


@dataclass(slots=True)
class _Load:
    """One read in flight: the stream position it is bounded by, the events of its rooms
    published since (the newest MAX_COUNTED per room; `overflowed`: older ones were let go),
    and its pairs overtaken by a receipt or a rule change (`stale`: read again)."""

    upto: int
    keys: frozenset[tuple[str, str]]
    rooms: dict[str, deque[StoredEvent]]
    overflowed: set[str] = field(default_factory=set)
    stale: set[tuple[str, str]] = field(default_factory=set)


class UnreadCounter:
    def __init__(
        self,
        storage: Storage,
        heads: RoomHeads,
        rules: PushRuleService,
        ignored: IgnoredUsers,
        stream: EventStream,
    ) -> None:
        self.storage = storage
        self.stream = stream
        self.heads = heads
        self.rules = rules
        self.ignored = ignored
        self._counts: OrderedDict[tuple[str, str], Counts] = OrderedDict()
        self._by_user: dict[str, set[str]] = {}
        rules.on_change.append(self.forget_user)
        ignored.on_change.append(self.forget_user)
        # event id -> (room, position, who it notifies, members whose rules were not in memory then)
        self._decisions: OrderedDict[str, tuple[str, int, list[Decision], list[str]]] = OrderedDict()
        self._decision_total = 0
        self.keep_decisions = False  # set once a push plugin asks
        # Whose decisions are kept: the users with a pusher (core/pushers.py keeps the set);
        # None keeps everyone's.
        self.push_owners: set[str] | None = None
        self._recent_facts: OrderedDict[tuple[str, int], tuple[EventFacts, str | None]] = OrderedDict()
        # Loads in progress: who waits for each pair, the pairs for the next batch, whether
        # one runs.
        self._waiters: dict[tuple[str, str], list[Deferred[Counts]]] = {}
        self._to_load: list[tuple[str, str]] = []
        # How many reads in a row went stale, of the pairs being read again.
        self._stale_reads: dict[tuple[str, str], int] = {}
        self._loading = False
        self._reads: list[_Load] = []  # in flight (one at a time, as loads are sequential)

    # Counts -------------------------------------------------------------------------------

    async def counts(self, user_id: str, room_id: str) -> dict[str, int]:
        return (await self.entry(user_id, room_id)).render()[0]

    async def entry(self, user_id: str, room_id: str) -> Counts:
        key = (user_id, room_id)
        entry = self._counts.get(key)
        if entry is not None:
            return entry
        # Loaded in batches: every pair asked for while a load runs goes in the next one (a
        # burst of first reads after a restart or a login storm: one query for them all).
        waiter: Deferred[Counts] = Deferred()
        waiters = self._waiters.get(key)
        if waiters is None:
            self._waiters[key] = [waiter]
            self._to_load.append(key)
            if not self._loading:
                Deferred.fromCoroutine(self._load_batches())
        else:
            waiters.append(waiter)
        return await waiter

    async def _load_batches(self) -> None:
        self._loading = True
        try:
            while self._to_load:
                keys, self._to_load = self._to_load[:LOAD_BATCH], self._to_load[LOAD_BATCH:]
                try:
                    loaded = await self._load(keys)
                except Exception:
                    if len(keys) == 1:
                        self._fail(keys[0], Failure())
                        continue
                    # One pair's trouble (its user's push rules, say) must not fail the
                    # others asked with it: each alone, then only the bad one fails.
                    for key in keys:
                        try:
                            ((entry, stale),) = await self._load([key])
                        except Exception:
                            self._fail(key, Failure())
                        else:
                            self._deliver(key, entry, stale)
                    continue
                for key, (entry, stale) in zip(keys, loaded, strict=True):
                    self._deliver(key, entry, stale)
        finally:
            self._loading = False

    def _deliver(self, key: tuple[str, str], entry: Counts, stale: bool) -> None:
        if stale:  # overtaken by a receipt or a rule change
            reads = self._stale_reads.get(key, 0) + 1
            if reads < MAX_LOAD_READS:  # read again, askers wait
                self._stale_reads[key] = reads
                self._to_load.append(key)
                return
        self._stale_reads.pop(key, None)
        if not stale:
            self._keep_entry(key, entry)
        for waiter in self._waiters.pop(key, []):
            waiter.callback(entry)

    def _fail(self, key: tuple[str, str], failure: Failure) -> None:
        self._stale_reads.pop(key, None)
        for waiter in self._waiters.pop(key, []):
            waiter.errback(failure)

    async def _load(self, keys: list[tuple[str, str]]) -> list[tuple[Counts, bool]]:
        """Count each (user, room) afresh from the database, in one read; each with whether a
        receipt or rule change reached it meanwhile (stale: to be read again)."""
        rooms = list(dict.fromkeys(r for _, r in keys))
        # Taken before anything is awaited: from here on, on_committed keeps these rooms'
        # events, and the read stops at this position.
        load = _Load(self.stream.position, frozenset(keys), {r: deque(maxlen=MAX_COUNTED) for r in rooms})
        self._reads.append(load)
        try:
            programs = await self.rules.programs(u for u, _ in keys)
            heads = {room_id: await self.heads.get(room_id) for room_id in rooms}
            queries = [
                UnreadQuery(u, r, sorted(programs[u].silent_types), sorted(self.ignored.now(u)))
                for u, r in keys
            ]
            rows = await self.storage.events.unread_events_many(queries, MAX_COUNTED, load.upto)
        finally:
            self._reads.remove(load)
        # From here to keeping the entries nothing is awaited: no event falls between.
        out: list[tuple[Counts, bool]] = []
        for q, (read_at, events) in zip(queries, rows, strict=True):
            head = heads[q.room_id]
            entry = Counts(read_at)
            if head is not None:
                newer = self._counted_by_read(q, read_at, programs[q.user_id], load.rooms[q.room_id])
                # The newest MAX_COUNTED in all: those published since the position, then the
                # read's (none if more came since than are kept: older ones were let go).
                room_full = q.room_id in load.overflowed
                events = [] if room_full else events[: max(0, MAX_COUNTED - len(newer))]
                members = len(head.members("join"))
                program = programs[q.user_id]
                counted = [self._facts_of_row(row, head, members) for row in reversed(events)]
                counted += [self._facts_of_event(ev, head, members) for ev in newer]
                joined = head.membership(q.user_id) == "join"
                for facts, thread in counted:
                    if joined and _invites(facts.pdu, q.user_id):
                        continue  # an invitation the user has accepted is no news any more
                    outcome = program.evaluate(facts, q.user_id)
                    if outcome.notify:
                        entry.add(outcome.highlight, thread)
            out.append((entry, (q.user_id, q.room_id) in load.stale))
        return out

    @staticmethod
    def _counted_by_read(
        q: UnreadQuery, read_at: int, program: Program, events: Iterable[StoredEvent]
    ) -> list[StoredEvent]:
        """The events that the read of `q` would have returned, had they been in its snapshot
        (storage: `unread_events_many`), oldest first; at most the newest MAX_COUNTED."""
        user_id = q.user_id
        skip_senders = set(q.skip_senders)
        silent = program.silent_types
        kept = [
            ev
            for ev in events
            if ev.stream_ordering > read_at  # a receipt that came before its event
            and ev.sender != user_id
            and ev.sender not in skip_senders
            and (ev.type not in silent or ev.state_key == user_id)
        ]
        return kept[-MAX_COUNTED:]

    def _keep_entry(self, key: tuple[str, str], entry: Counts) -> None:
        # Never kept meanwhile: a pair has one load at a time (`_waiters`).
        self._counts[key] = entry
        self._by_user.setdefault(key[0], set()).add(key[1])
        if len(self._counts) > _MAX_ENTRIES:
            (old_user, old_room), _ = self._counts.popitem(last=False)
            self._unindex(old_user, old_room)

    async def total(self, user_id: str, room_ids: list[str]) -> int:
        """Unread notifications summed over these rooms (a push's `counts.unread`)."""
        return sum([(await self.entry(user_id, room_id)).notify for room_id in room_ids])

    def forget(self, user_id: str, room_id: str) -> None:
        """After a read receipt: count again from the new position next time."""
        key = (user_id, room_id)
        if self._counts.pop(key, None) is not None:
            self._unindex(user_id, room_id)
        for load in self._reads:
            if key in load.keys:
                load.stale.add(key)

    def forget_room(self, room_id: str) -> None:
        """Drop every user's counts in the room (retention deleted events they counted)."""
        for user_id, room in [key for key in self._counts if key[1] == room_id]:
            self.forget(user_id, room)
        for load in self._reads:
            load.stale.update(key for key in load.keys if key[1] == room_id)

    def forget_user(self, user_id: str) -> None:
        """After the user's rules changed: every room's count again, with the new rules."""
        for room_id in self._by_user.pop(user_id, set()):
            self._counts.pop((user_id, room_id), None)
        for load in self._reads:
            load.stale.update(key for key in load.keys if key[0] == user_id)

    def _unindex(self, user_id: str, room_id: str) -> None:
        rooms = self._by_user.get(user_id)
        if rooms is not None:
            rooms.discard(room_id)
            if not rooms:
                del self._by_user[user_id]

    # The inline pass ----------------------------------------------------------------------

    def on_committed(self, items: list[PersistItem]) -> None:
        counts = self._counts
        programs = self.rules.cached_programs
        keep = self.keep_decisions
        owners = self.push_owners
        for item in items:
            ev = item.event
            room_id = ev.room_id
            for load in self._reads:  # pairs being read, applied when their read lands
                waiting = load.rooms.get(room_id)
                if waiting is not None and ev.stream_ordering > load.upto:
                    if len(waiting) == waiting.maxlen:
                        load.overflowed.add(room_id)
                    waiting.append(ev)
            head = self.heads.peek(room_id)
            if head is None:
                continue
            members = head.members("join")
            sender = ev.sender
            ignorers = self.ignored.ignorers_of(sender)
            facts: EventFacts | None = None
            thread: str | None = None
            decided: list[Decision] = []
            unknown: list[str] = []
            planned: Program | None = None
            plan = _NO_PLAN
            for user_id in members:
                if user_id == sender or (ignorers is not None and user_id in ignorers):
                    continue
                entry = counts.get((user_id, room_id))
                if entry is not None and ev.stream_ordering <= entry.read_at:
                    continue  # read already: the receipt came first (another process's stream)
                wanted = keep and (owners is None or user_id in owners)
                if entry is None and not wanted:
                    continue
                program = programs.get(user_id)
                if program is None:
                    # Rules no longer in memory: count afresh on the next read.
                    if entry is not None:
                        self.forget(user_id, room_id)
                    if wanted:
                        unknown.append(user_id)
                    continue
                if facts is None:
                    facts = self._facts(ev, head, len(members))
                    thread = thread_of(ev)
                if program is not planned:  # mostly one program (the defaults) for everyone
                    planned, plan = program, program.plan(facts)
                outcome = plan.outcome(facts, user_id) if plan.candidates else plan.final
                if outcome.notify:
                    if entry is not None:
                        entry.add(outcome.highlight, thread)
                    if wanted:
                        decided.append(Decision(user_id, outcome))
            if keep:
                self._keep(ev, decided, unknown)

    def _facts(self, ev: StoredEvent, head: RoomHead, members: int) -> EventFacts:
        """The event's facts, shared by every member evaluating it: the inline pass and the
        loads that follow it (a big room's members load their counts after the same events)
        evaluate each recent event's recipient-independent conditions once."""
        return self._facts_of_event(ev, head, members)[0]

    def _facts_of_row(self, row: EventRow, head: RoomHead, members: int) -> tuple[EventFacts, str | None]:
        found = self._recent_facts.get((row.event_id, members))
        return found if found is not None else self._remember_facts(row.decode(), head, members)

    def _facts_of_event(self, ev: StoredEvent, head: RoomHead, members: int) -> tuple[EventFacts, str | None]:
        found = self._recent_facts.get((ev.event_id, members))
        return found if found is not None else self._remember_facts(ev, head, members)

    def _remember_facts(self, ev: StoredEvent, head: RoomHead, members: int) -> tuple[EventFacts, str | None]:
        entry = (EventFacts(ev.pdu, head.state, head.room_version, members), thread_of(ev))
        self._recent_facts[(ev.event_id, members)] = entry
        if len(self._recent_facts) > _MAX_FACTS:
            self._recent_facts.popitem(last=False)
        return entry

    # Decisions for the push plugin ---------------------------------------------------------

    def _keep(self, ev: StoredEvent, decided: list[Decision], unknown: list[str]) -> None:
        self._decisions[ev.event_id] = (ev.room_id, ev.stream_ordering, decided, unknown)
        self._decision_total += len(decided) + len(unknown) + 1
        while self._decision_total > MAX_DECISIONS and self._decisions:
            _, (_, _, old, old_unknown) = self._decisions.popitem(last=False)
            self._decision_total -= len(old) + len(old_unknown) + 1

    async def decisions(self, event_id: str) -> list[Decision]:
        """The joined members (never the sender) with a pusher (`push_owners`) whose rules
        make the committed event `event_id` notify and who have not read it (their read
        receipt is before it now): from the inline pass when it kept them, else evaluated
        now against the room's current state."""
        self.keep_decisions = True
        kept = self._decisions.get(event_id)
        if kept is not None:
            room_id, position, decided, unknown = kept
            if unknown:
                ev = (await self.storage.events.get_events([event_id])).get(event_id)
                head = await self.heads.get(room_id) if ev is not None else None
                if ev is None or head is None:
                    return []
                decided = [*decided, *await self._evaluate(ev, head, unknown)]
            return await self._unread_only(room_id, position, decided)
        ev = (await self.storage.events.get_events([event_id])).get(event_id)
        head = await self.heads.get(ev.room_id) if ev is not None else None
        if ev is None or head is None:
            return []
        owners = self.push_owners
        users = [u for u in head.members("join") if u != ev.sender and (owners is None or u in owners)]
        return await self._unread_only(ev.room_id, ev.stream_ordering, await self._evaluate(ev, head, users))

    async def read_past(self, user_id: str, room_id: str, position: int) -> bool:
        """Whether the user's read receipt in the room is at or past stream `position` (a
        notification queued for the event there tells of a message already read)."""
        return (await self._read_positions(room_id, [user_id]))[user_id] >= position

    async def _unread_only(self, room_id: str, position: int, decided: list[Decision]) -> list[Decision]:
        """Those of `decided` whose read receipt is before the event at `position`: a receipt
        stored after the commit (another device), or that reached this process before the
        event (another process's stream), makes the event read, and it is not pushed."""
        if not decided:
            return decided
        read = await self._read_positions(room_id, [d.user_id for d in decided])
        return [d for d in decided if read[d.user_id] < position]

    async def _read_positions(self, room_id: str, user_ids: list[str]) -> dict[str, int]:
        """The event position each user's read receipt in the room is at (0 without one):
        from their count in memory (a receipt drops it, so its `read_at` is current), else
        read, all missing in one query."""
        out: dict[str, int] = {}
        missing: list[str] = []
        for user_id in user_ids:
            entry = self._counts.get((user_id, room_id))
            if entry is not None:
                out[user_id] = entry.read_at
            else:
                missing.append(user_id)
        if missing:
            stored = await self.storage.user_data.read_positions_of(room_id, missing)
            for user_id in missing:
                out[user_id] = stored.get(user_id, 0)
        return out

    async def _evaluate(self, ev: StoredEvent, head: RoomHead, users: list[str]) -> list[Decision]:
        facts = EventFacts(ev.pdu, head.state, head.room_version, len(head.members("join")))
        ignorers = self.ignored.ignorers_of(ev.sender) or ()
        users = [u for u in users if u not in ignorers]
        programs = await self.rules.programs(users)
        out = []
        for user_id in users:
            outcome = programs[user_id].evaluate(facts, user_id)
            if outcome.notify:
                out.append(Decision(user_id, outcome))
        return out
