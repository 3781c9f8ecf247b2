"""Event writes sharded by room: each room's events are built and committed by one event
writer (Topology.event_writer_for), which alone holds the room's head for writing. A
process that is not the room's writer forwards the write to it over WorkerRpc.

`RoomWriters` is what core services hold (None when single: no check, no forwarding), and
`forwarded` the one check every entry point makes: "is this room written elsewhere? then
the writer's answer";
`register_event_writes` installs the writer side: one RPC method per entry point, each
calling the same core function a local request would, after checking this process really
is the room's writer (two processes disagreeing about the topology must not bounce a
request between them forever).
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from homeserver.errors import ServiceUnavailable
from homeserver.events.pdu_checks import PduStatus
from homeserver.storage.events import StoredEvent
from homeserver.workers.rpc import RpcHandler, WorkerRpc
from homeserver.workers.topology import Topology, room_shard

if TYPE_CHECKING:
    from homeserver.core.federation.ingest import IngestOutcome
    from homeserver.server import HomeServer


class RoomWriters:
    """Which process writes a room, and forwarding a write to it."""

    def __init__(self, topology: Topology, rpc: WorkerRpc) -> None:
        self.topology = topology
        self.rpc = rpc

    def is_mine(self, room_id: str) -> bool:
        return self.topology.writes_room(room_id)

    @property
    def writes_events(self) -> bool:
        """Whether this process is an event writer at all (it may create rooms)."""
        return self.topology.writer_index() is not None

    async def call(self, room_id: str, method: str, args: dict[str, Any]) -> dict[str, Any]:
        return await self.rpc.call(self.topology.event_writer_for(room_id), method, args)

    async def call_creator(self, user_id: str, method: str, args: dict[str, Any]) -> dict[str, Any]:
        """To the event writer that makes `user_id`'s new rooms (a process that writes no events
        creates none; the same user's rooms spread as evenly as anyone's)."""
        writers = self.topology.event_writers
        return await self.rpc.call(writers[room_shard(user_id, len(writers))], method, args)


def forwarded(
    writers: RoomWriters | None, room_id: str, method: str, args: dict[str, Any]
) -> Coroutine[Any, Any, dict[str, Any]] | None:
    """`method` with `args` sent to the room's writer when another process writes `room_id`
    (await it for the writer's answer); None when this process writes the room (a single
    process writes every room), and the caller writes it here."""
    if writers is None or writers.is_mine(room_id):
        return None
    return writers.call(room_id, method, args)


def event_to_json(event: StoredEvent) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "room_id": event.room_id,
        "stream_ordering": event.stream_ordering,
        "pdu": event.pdu,
        "unsigned": event.unsigned_extra,
        "redacted_by": event.redacted_by,
    }


def event_from_json(data: dict[str, Any]) -> StoredEvent:
    return StoredEvent(
        data["event_id"],
        data["room_id"],
        int(data["stream_ordering"]),
        data["pdu"],
        data.get("unsigned") or {},
        data.get("redacted_by"),
    )


def outcome_to_json(outcome: IngestOutcome) -> dict[str, Any]:
    return {
        "event_id": outcome.event_id,
        "status": outcome.status.value,
        "reason": outcome.reason,
        "duplicate": outcome.duplicate,
    }


def outcome_from_json(data: dict[str, Any]) -> IngestOutcome:
    from homeserver.core.federation.ingest import IngestOutcome

    return IngestOutcome(data["event_id"], PduStatus(data["status"]), data["reason"], data["duplicate"])


def register_event_writes(hs: HomeServer, writers: RoomWriters) -> None:
    """The writer side of every forwarded entry point."""
    rpc = writers.rpc

    async def send(args: dict[str, Any]) -> dict[str, Any]:
        txn = args.get("txn")
        event = await hs.events.send(
            args["sender"],
            args["room_id"],
            args["event_type"],
            args["content"],
            args.get("state_key"),
            txn=(txn[0], txn[1]) if txn else None,
            redacts=args.get("redacts"),
            rate_limited=bool(args.get("rate_limited")),
        )
        return event_to_json(event)

    async def set_membership(args: dict[str, Any]) -> dict[str, Any]:
        event = await hs.rooms.set_membership(
            args["sender"],
            args["room_id"],
            args["target"],
            args["membership"],
            args.get("reason"),
            args.get("extra"),
        )
        return {"event": event_to_json(event) if event is not None else None}

    async def join(args: dict[str, Any]) -> dict[str, Any]:
        return {"room_id": await hs.rooms.join(args["user_id"], args["room_id"], args.get("via"))}

    async def knock(args: dict[str, Any]) -> dict[str, Any]:
        return {
            "room_id": await hs.rooms.knock(
                args["user_id"], args["room_id"], args.get("reason"), args.get("via")
            )
        }

    async def leave(args: dict[str, Any]) -> dict[str, Any]:
        await hs.rooms.leave(args["user_id"], args["room_id"], args.get("reason"))
        return {}

    async def invite(args: dict[str, Any]) -> dict[str, Any]:
        await hs.rooms.invite(args["sender"], args["room_id"], args["target"], args.get("reason"))
        return {}

    async def create(args: dict[str, Any]) -> dict[str, Any]:
        if not writers.writes_events:
            raise ServiceUnavailable(f"{writers.topology.me} writes no events; try again")
        return {
            "room_id": await hs.rooms.create_room(
                args["creator"], args["body"], encrypted=args.get("encrypted")
            )
        }

    async def member_profiles(args: dict[str, Any]) -> dict[str, Any]:
        rooms = [r for r in args["room_ids"] if writers.is_mine(r)]
        return {"sent": await hs.rooms.update_member_profiles(args["user_id"], rooms)}

    async def upgrade(args: dict[str, Any]) -> dict[str, Any]:
        new = await hs.room_upgrader.upgrade(args["user_id"], args["room_id"], args["new_version"])
        return {"room_id": new}

    async def federation_make(args: dict[str, Any]) -> dict[str, Any]:
        return await hs.federation.membership.make(
            args["membership"], args["origin"], args["room_id"], args["user_id"], args.get("versions")
        )

    async def federation_send(args: dict[str, Any]) -> dict[str, Any]:
        return await hs.federation.membership.answer_send(
            args["membership"], args["origin"], args["room_id"], args["event_id"], args["pdu"]
        )

    async def federation_invite(args: dict[str, Any]) -> dict[str, Any]:
        return await hs.federation.membership.receive_invite(
            args["origin"], args["room_id"], args["event_id"], args["body"]
        )

    async def federation_pdu(args: dict[str, Any]) -> dict[str, Any]:
        outcome = await hs.federation_ingest.receive_pdu(args["origin"], args["room_version"], args["pdu"])
        return outcome_to_json(outcome)

    async def backfill(args: dict[str, Any]) -> dict[str, Any]:
        return {"added": await hs.federation_backfill.backfill(args["room_id"])}

    def mine(handler: RpcHandler) -> RpcHandler:
        """Run `handler` only where its args' room is written here."""

        async def checked(args: dict[str, Any]) -> dict[str, Any]:
            room_id = args["room_id"]
            if not writers.is_mine(room_id):
                owner = writers.topology.event_writer_for(room_id)
                raise ServiceUnavailable(
                    f"{writers.topology.me} does not write {room_id} ({owner} does); try again"
                )
            return await handler(args)

        return checked

    for method, handler in (
        ("events.send", mine(send)),
        ("rooms.set_membership", mine(set_membership)),
        ("rooms.join", mine(join)),
        ("rooms.knock", mine(knock)),
        ("rooms.leave", mine(leave)),
        ("rooms.invite", mine(invite)),
        ("rooms.create", create),  # any event writer may make a room
        ("rooms.member_profiles", member_profiles),  # several rooms: sends for those it writes
        ("rooms.upgrade", mine(upgrade)),
        ("federation.make_membership", mine(federation_make)),
        ("federation.send_membership", mine(federation_send)),
        ("federation.invite", mine(federation_invite)),
        ("federation.pdu", mine(federation_pdu)),
        ("federation.backfill", mine(backfill)),
    ):
        rpc.register(method, handler)
