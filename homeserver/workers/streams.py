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
        hs = self.hs

        def publisher(rows: Rows) -> None:
            self.bus.publish(f"stream.{name}", {"stream": name, "position": self._local(name), "rows": rows})

        handlers: dict[str, Handler] = {}
        if name == "receipts":
            hs.receipts.replicate = publisher
            handlers["set"] = lambda a: hs.receipts.set_receipt(
                a["user_id"], a["room_id"], a["type"], a["event_id"], a["thread_id"]
            )
            handlers["remote"] = lambda a: hs.receipts.record_remote_receipt(
                a["user_id"], a["room_id"], a["event_id"], a["thread_id"], a["members"]
            )
        elif name == "typing":
            hs.typing.replicate = publisher
            handlers["set"] = self._set_typing
            handlers["snapshot"] = self._typing_snapshot
        elif name == "presence":
            hs.presence.replicate = publisher
            handlers["set"] = lambda a: hs.presence.set_state(
                a["user_id"], a["state"], a["status_msg"], a["active"]
            )
            handlers["activity"] = self._note_activity
        elif name == "account_data":
            hs.account_data.replicate = publisher
            handlers["put"] = lambda a: hs.account_data.put(
                a["user_id"], a["room_id"], a["type"], a["content"]
            )
        elif name == "to_device":
            handlers["send_to_device"] = lambda a: hs.keys.send_to_device(
                a["sender"], a["sender_device"], a["type"], a["txn_id"], a["body"]
            )
        elif name == "device_lists":
            handlers["upload"] = lambda a: hs.keys.upload(a["user_id"], a["device_id"], a["body"])
            handlers["upload_cross_signing"] = lambda a: hs.keys.upload_cross_signing(a["user_id"], a["body"])
            handlers["upload_signatures"] = lambda a: hs.keys.upload_signatures(a["user_id"], a["body"])
            handlers["devices_deleted"] = lambda a: hs.keys.devices_deleted(a["user_id"], a["device_ids"])
            handlers["reserve"] = self._reserve_change
            handlers["release"] = self._release_change
        if name in ("to_device", "device_lists"):
            previous = hs.keys.replicate

            def keys_publisher(stream: str, rows: Rows) -> None:
                if stream == name:
                    publisher(rows)
                elif previous is not None:
                    previous(stream, rows)

            hs.keys.replicate = keys_publisher
        for verb, handler in handlers.items():
            self.rpc.register(f"{name}.{verb}", self._answering(name, handler))

    def _answering(
        self, name: str, handler: Handler
    ) -> Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]:
        async def answer(args: dict[str, Any]) -> dict[str, Any]:
            result = await handler(args)
            # Typing positions are each process's own: the caller has nothing to wait for.
            position = None if name == "typing" else self._local(name)
            return {"result": result, "position": position}

        return answer

    # Positions ---------------------------------------------------------------------------

    def _local(self, name: str) -> int:
        """How far this process may read `name`."""
        hs = self.hs
        if name == "receipts":
            return hs.receipts.stream.current
        if name == "typing":
            return hs.typing.position
        if name == "presence":
            return hs.presence.stream.current
        if name == "account_data":
            return hs.account_data.stream.current
        if name == "to_device":
            return hs.keys.to_device.current
        return hs.keys.device_lists.current

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
        hs = self.hs
        if name == "receipts":
            hs.receipts.apply(rows, position)
        elif name == "typing":
            hs.typing.apply(rows, position)
        elif name == "presence":
            hs.presence.apply(rows, position)
        elif name == "account_data":
            hs.account_data.apply(rows, position)
        elif name == "to_device":
            hs.keys.apply_to_device(rows, position)
        elif name == "device_lists":
            hs.keys.apply_device_lists(rows, position)
        if name in ("presence", "device_lists"):
            self._wake_audience(hs.presence.audience_of([row["user_id"] for row in rows]))
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
        if name == "typing":
            snapshot = await self.rpc.call(writer, "typing.snapshot", {})
            self.hs.typing.apply_snapshot(snapshot["result"])
            return
        upto = int((await self.rpc.call(writer, "streams.position", {"stream": name}))["position"])
        after = self._local(name)
        if upto <= after:
            return
        self._apply(name, await self._missed(name, after, upto), upto)

    async def _missed(self, name: str, after: int, upto: int) -> Rows:
        """The rows of `name` in (after, upto], from PostgreSQL, as the writer would publish them."""
        hs = self.hs
        user_data = hs.storage.user_data
        if name == "receipts":
            return [
                {
                    "position": pos,
                    "room_id": room_id,
                    "user_id": user_id,
                    "wake": self._members(room_id, user_id),
                }
                for pos, room_id, user_id in await user_data.receipts_between(after, upto)
            ]
        if name == "account_data":
            return [
                {
                    "position": pos,
                    "user_id": user_id,
                    "room_id": room_id,
                    "type": data_type,
                    "content": content,
                }
                for pos, user_id, room_id, data_type, content in await user_data.account_data_between(
                    after, upto
                )
            ]
        if name == "presence":
            return [
                {"user_id": u, "state": s, "status_msg": m, "last_active_ts": ts, "position": pos}
                for u, s, m, ts, pos in await user_data.presence_between(after, upto)
            ]
        if name == "to_device":
            return [
                {"position": pos, "user_id": user_id, "device_id": device_id}
                for user_id, device_id, pos in await hs.storage.e2ee.to_device_between(after, upto)
            ]
        # Device lists: which users changed is all a sync needs; `upto` bounds each change.
        return [
            {"position": upto, "user_id": user_id}
            for user_id in await hs.storage.e2ee.users_changed_between(after, upto)
        ]

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
