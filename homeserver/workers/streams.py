"""The single-writer streams across processes: receipts, typing, presence, account data,
to-device messages and device lists (docs/scaling.md, "Caches across processes").

Each stream has one writer process (`topology.writer_of`). Elsewhere a service's write is
handed to that writer by RPC ("<stream>.<verb>"); the writer publishes every change on
"stream.<name>" as {"stream", "position", "rows"}; every other process applies the rows
to its caches, advances the stream's position and wakes its notifier, as a local write
does. A forwarded write returns once this process has applied it too (or after
APPLY_WAIT_S), so a client reads its own write on whichever worker it asks next.

After every bus (re)connect, a process asks each writer how far its stream is and reads
what it missed from PostgreSQL. Typing lives in memory only: it is copied from its writer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from homeserver.errors import ServiceUnavailable
from homeserver.logs import log_failure

if TYPE_CHECKING:
    from homeserver.server import HomeServer

log = Logger()

STREAMS = ("receipts", "typing", "presence", "account_data", "to_device", "device_lists")
# How long a forwarded write waits for its own change to come back over the bus before it
# answers anyway (the change is committed; a reconnect's catch-up brings it here).
APPLY_WAIT_S = 5.0
# How often a process that does not write presence tells the writer who syncs through it.
PRESENCE_REPORT_S = 10.0
# How long a device-list position lent to another process stays open if it never says it
# is done (it died): the stream waits that long at most.
RESERVE_LEASE_S = 30.0

Rows = list[dict[str, Any]]
Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class StreamReplication:
    """Wires the six services of one process to the other processes (only when several)."""

    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.topology = hs.topology
        self.bus = hs.bus
        self.rpc = hs.rpc
        self.clock = hs.clock
        # stream -> (position, fired when this process's position reaches it)
        self._waiters: dict[str, list[tuple[int, Deferred[None]]]] = {}
        self._report_loop: Any = None
        # device-list positions lent to other processes -> the end of their lease
        self._leases: dict[int, Any] = {}

    # Wiring ----------------------------------------------------------------------------

    def wire(self) -> None:
        hs = self.hs
        self.rpc.register("streams.position", self._position_request)
        for name in STREAMS:
            if self.topology.writes(name):
                self._serve(name)
                continue
            self.bus.subscribe(f"stream.{name}", self._received)
        hs.receipts.forward = self._forwarder("receipts")
        hs.typing.forward = self._forwarder("typing")
        hs.presence.forward = self._forwarder("presence")
        hs.account_data.forward = self._forwarder("account_data")
        hs.keys.forward_to_device = self._forwarder("to_device")
        hs.keys.forward = self._forwarder("device_lists")
        self.bus.on_connected(self._catch_up)

    def start(self) -> None:
        """Jobs that need the services started: presence reports to the presence writer."""
        if not self.topology.writes("presence"):
            self._report_loop = self.clock.looping_call(
                PRESENCE_REPORT_S, lambda: Deferred.fromCoroutine(self._report_presence())
            )

    def stop(self) -> None:
        if self._report_loop is not None and self._report_loop.running:
            self._report_loop.stop()

    def _forwarder(self, name: str) -> Callable[[str, dict[str, Any]], Awaitable[Any]] | None:
        """None on the stream's writer (its writes run here); else hands writes to it."""
        if self.topology.writes(name):
            return None

        async def forward(verb: str, args: dict[str, Any]) -> Any:
            answer = await self.rpc.call(self.topology.writer_of(name), f"{name}.{verb}", args)
            position = answer.get("position")
            if position is not None:
                await self._wait_applied(name, int(position))
            return answer.get("result")

        return forward

    def _serve(self, name: str) -> None:
        """This process writes `name`: publish its changes, answer the others' writes."""

        def publisher(rows: Rows) -> None:
            self.bus.publish(f"stream.{name}", {"stream": name, "position": self._local(name), "rows": rows})

        for verb, handler in KINDS[name].serve(self, publisher).items():
            self.rpc.register(f"{name}.{verb}", self._answering(name, handler))

    def _publish_keys(self, name: str, publisher: Callable[[Rows], None]) -> None:
        """to_device and device_lists share the key service's one `replicate` hook."""
        previous = self.hs.keys.replicate

        def keys_publisher(stream: str, rows: Rows) -> None:
            if stream == name:
                publisher(rows)
            elif previous is not None:
                previous(stream, rows)

        self.hs.keys.replicate = keys_publisher

    def _answering(
        self, name: str, handler: Handler
    ) -> Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]:
        async def answer(args: dict[str, Any]) -> dict[str, Any]:
            result = await handler(args)
            # Typing positions are each process's own: the caller has nothing to wait for.
            position = self._local(name) if KINDS[name].shared_positions else None
            return {"result": result, "position": position}

        return answer

    # Positions ---------------------------------------------------------------------------

    def _local(self, name: str) -> int:
        """How far this process may read `name`."""
        return KINDS[name].position(self.hs)

    async def _position_request(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"position": self._local(args["stream"])}

    async def _wait_applied(self, name: str, position: int) -> None:
        if self._local(name) >= position or not self.bus.connected:
            return  # (disconnected: it would not come; the reconnect's catch-up brings it)
        reached: Deferred[None] = Deferred()
        self._waiters.setdefault(name, []).append((position, reached))

        def give_up() -> None:
            if not reached.called:
                reached.callback(None)

        timeout = self.clock.callLater(APPLY_WAIT_S, give_up)
        await reached
        if timeout.active():
            timeout.cancel()

    def _advanced(self, name: str) -> None:
        waiters = self._waiters.get(name)
        if not waiters:
            return
        current = self._local(name)
        due = [w for w in waiters if w[0] <= current]
        if due:
            self._waiters[name] = [w for w in waiters if w[0] > current]
            for _, reached in due:
                if not reached.called:
                    reached.callback(None)

    # Applying others' changes ------------------------------------------------------------

    def _received(self, message: dict[str, Any]) -> None:
        self._apply(message["stream"], message["rows"], int(message["position"]))

    def _apply(self, name: str, rows: Rows, position: int) -> None:
        kind = KINDS[name]
        kind.apply(self.hs, rows, position)
        if kind.wakes_audience:
            self._wake_audience(self.hs.presence.audience_of([row["user_id"] for row in rows]))
        self._advanced(name)

    def _wake_audience(self, audience: Awaitable[set[str]]) -> None:
        """Presence and key changes concern the users sharing a room, as this process knows them."""

        async def wake() -> None:
            try:
                self.hs.notifier.wake_users(await audience)
            except Exception:
                log_failure(log, "could not wake the audience of a replicated change")

        Deferred.fromCoroutine(wake())

    # Catching up after a (re)connect -----------------------------------------------------

    async def _catch_up(self) -> None:
        for name in STREAMS:
            if self.topology.writes(name):
                continue
            try:
                await self._catch_up_stream(name)
            except ServiceUnavailable:
                # Its writer is down: its restart publishes afresh; the next reconnect retries.
                log.warn("stream {name}: writer unreachable, not caught up", name=name)

    async def _catch_up_stream(self, name: str) -> None:
        writer = self.topology.writer_of(name)
        missed = KINDS[name].missed
        if missed is None:  # typing: in memory only, copied from its writer
            snapshot = await self.rpc.call(writer, "typing.snapshot", {})
            self.hs.typing.apply_snapshot(snapshot["result"])
            return
        upto = int((await self.rpc.call(writer, "streams.position", {"stream": name}))["position"])
        after = self._local(name)
        if upto <= after:
            return
        self._apply(name, await missed(self, after, upto), upto)

    def _members(self, room_id: str, user_id: str) -> list[str]:
        return sorted({user_id, *self.hs.notifier.room_members(room_id)})

    # Device-list positions lent to other processes ----------------------------------------

    async def _reserve_change(self, args: dict[str, Any]) -> int:
        """A position for another process's write of a remote user's device list: held open
        (readers stop below it) until released, or for RESERVE_LEASE_S if its holder dies."""
        position = self.hs.keys.reserve_change()
        self._leases[position] = self.clock.callLater(
            RESERVE_LEASE_S, lambda: self._end_lease(position, args["user_id"])
        )
        return position

    async def _release_change(self, args: dict[str, Any]) -> None:
        position = int(args["position"])
        lease = self._leases.pop(position, None)
        if lease is None:
            return  # already ended by its lease: released once only
        if lease.active():
            lease.cancel()
        await self.hs.keys.release_change(position, args["user_id"])

    def _end_lease(self, position: int, user_id: str) -> None:
        if self._leases.pop(position, None) is not None:
            log.warn("device-list position {position} released by its lease", position=position)
            Deferred.fromCoroutine(self.hs.keys.release_change(position, user_id))

    # Typing and presence, the writer's side -----------------------------------------------

    async def _set_typing(self, args: dict[str, Any]) -> None:
        self.hs.typing.set_typing(
            args["room_id"], args["user_id"], args["typing"], args["timeout_ms"], args["members"]
        )

    async def _typing_snapshot(self, args: dict[str, Any]) -> dict[str, Any]:
        return self.hs.typing.snapshot()

    async def _note_activity(self, args: dict[str, Any]) -> None:
        self.hs.presence.note_activity(args["users"])

    async def _report_presence(self) -> None:
        since = self.clock.time_ms() - int(2 * PRESENCE_REPORT_S * 1000)
        users = self.hs.presence.activity(since)
        if not users:
            return
        try:
            await self.rpc.call(self.topology.writer_of("presence"), "presence.activity", {"users": users})
        except ServiceUnavailable:
            pass  # the writer is restarting: the next report tells it
        except Exception:
            log_failure(log, "could not report presence activity")


# Per stream: what differs between the six ------------------------------------------------------


async def _missed_receipts(r: StreamReplication, after: int, upto: int) -> Rows:
    return [
        {"position": pos, "room_id": room_id, "user_id": user_id, "wake": r._members(room_id, user_id)}
        for pos, room_id, user_id in await r.hs.storage.user_data.receipts_between(after, upto)
    ]


async def _missed_account_data(r: StreamReplication, after: int, upto: int) -> Rows:
    rows = await r.hs.storage.user_data.account_data_between(after, upto)
    return [
        {"position": pos, "user_id": user_id, "room_id": room_id, "type": data_type, "content": content}
        for pos, user_id, room_id, data_type, content in rows
    ]


async def _missed_presence(r: StreamReplication, after: int, upto: int) -> Rows:
    return [
        {"user_id": u, "state": s, "status_msg": m, "last_active_ts": ts, "position": pos}
        for u, s, m, ts, pos in await r.hs.storage.user_data.presence_between(after, upto)
    ]


async def _missed_to_device(r: StreamReplication, after: int, upto: int) -> Rows:
    return [
        {"position": pos, "user_id": user_id, "device_id": device_id}
        for user_id, device_id, pos in await r.hs.storage.e2ee.to_device_between(after, upto)
    ]


async def _missed_device_lists(r: StreamReplication, after: int, upto: int) -> Rows:
    # Which users changed is all a sync needs; `upto` bounds each change.
    return [
        {"position": upto, "user_id": user_id}
        for user_id in await r.hs.storage.e2ee.users_changed_between(after, upto)
    ]


def _serve_receipts(r: StreamReplication, publish: Callable[[Rows], None]) -> dict[str, Handler]:
    receipts = r.hs.receipts
    receipts.replicate = publish
    return {
        "set": lambda a: receipts.set_receipt(
            a["user_id"], a["room_id"], a["type"], a["event_id"], a["thread_id"]
        ),
        "markers": lambda a: receipts.set_read_markers(a["user_id"], a["room_id"], a["markers"]),
        "remote": lambda a: receipts.record_remote_receipt(
            a["user_id"], a["room_id"], a["event_id"], a["thread_id"], a["members"]
        ),
    }


def _serve_typing(r: StreamReplication, publish: Callable[[Rows], None]) -> dict[str, Handler]:
    r.hs.typing.replicate = publish
    return {"set": r._set_typing, "snapshot": r._typing_snapshot}


def _serve_presence(r: StreamReplication, publish: Callable[[Rows], None]) -> dict[str, Handler]:
    presence = r.hs.presence
    presence.replicate = publish
    return {
        "set": lambda a: presence.set_state(a["user_id"], a["state"], a["status_msg"], a["active"]),
        "activity": r._note_activity,
    }


def _serve_account_data(r: StreamReplication, publish: Callable[[Rows], None]) -> dict[str, Handler]:
    account_data = r.hs.account_data
    account_data.replicate = publish
    push_rules = r.hs.push_rules
    return {
        "put": lambda a: account_data.put(a["user_id"], a["room_id"], a["type"], a["content"]),
        # A push-rule edit is a read, a change and a put of the whole ruleset: all on the writer.
        "push_rules": lambda a: push_rules.edit_here(a["user_id"], a["op"], a["args"]),
    }


def _serve_to_device(r: StreamReplication, publish: Callable[[Rows], None]) -> dict[str, Handler]:
    keys = r.hs.keys
    r._publish_keys("to_device", publish)
    return {
        "send_to_device": lambda a: keys.send_to_device(
            a["sender"], a["sender_device"], a["type"], a["txn_id"], a["body"]
        )
    }


def _serve_device_lists(r: StreamReplication, publish: Callable[[Rows], None]) -> dict[str, Handler]:
    keys = r.hs.keys
    r._publish_keys("device_lists", publish)
    return {
        "upload": lambda a: keys.upload(a["user_id"], a["device_id"], a["body"]),
        "upload_cross_signing": lambda a: keys.upload_cross_signing(a["user_id"], a["body"]),
        "upload_signatures": lambda a: keys.upload_signatures(a["user_id"], a["body"]),
        "devices_deleted": lambda a: keys.devices_deleted(a["user_id"], a["device_ids"]),
        "user_deactivated": lambda a: keys.user_deactivated(a["user_id"]),
        "reserve": r._reserve_change,
        "release": r._release_change,
    }


@dataclass(frozen=True)
class StreamKind:
    """One single-writer stream's part in replication."""

    # How far this process may read the stream.
    position: Callable[[HomeServer], int]
    # Another process's rows (and the position they bring it to) into this one's caches.
    apply: Callable[[HomeServer, Rows, int], None]
    # On its writer: hook the service's publishing up, and the RPC verbs it answers.
    serve: Callable[[StreamReplication, Callable[[Rows], None]], dict[str, Handler]]
    # The rows in (after, upto] from PostgreSQL; None: in memory only (copied whole).
    missed: Callable[[StreamReplication, int, int], Awaitable[Rows]] | None
    # Whether a forwarded write's caller waits for its position here (typing's are per process).
    shared_positions: bool = True
    # Whether a change wakes the users sharing a room with its user (presence, device lists).
    wakes_audience: bool = False


def _kinds() -> dict[str, StreamKind]:
    # In a function, so that mypy reads HomeServer's attributes after it has them.
    return {
        "receipts": StreamKind(
            lambda hs: hs.receipts.stream.current,
            lambda hs, rows, pos: hs.receipts.apply(rows, pos),
            _serve_receipts,
            _missed_receipts,
        ),
        "typing": StreamKind(
            lambda hs: hs.typing.position,
            lambda hs, rows, pos: hs.typing.apply(rows, pos),
            _serve_typing,
            None,
            shared_positions=False,
        ),
        "presence": StreamKind(
            lambda hs: hs.presence.stream.current,
            lambda hs, rows, pos: hs.presence.apply(rows, pos),
            _serve_presence,
            _missed_presence,
            wakes_audience=True,
        ),
        "account_data": StreamKind(
            lambda hs: hs.account_data.stream.current,
            lambda hs, rows, pos: hs.account_data.apply(rows, pos),
            _serve_account_data,
            _missed_account_data,
        ),
        "to_device": StreamKind(
            lambda hs: hs.keys.to_device.current,
            lambda hs, rows, pos: hs.keys.apply_to_device(rows, pos),
            _serve_to_device,
            _missed_to_device,
        ),
        "device_lists": StreamKind(
            lambda hs: hs.keys.device_lists.current,
            lambda hs, rows, pos: hs.keys.apply_device_lists(rows, pos),
            _serve_device_lists,
            _missed_device_lists,
            wakes_audience=True,
        ),
    }


KINDS = _kinds()
assert tuple(KINDS) == STREAMS
