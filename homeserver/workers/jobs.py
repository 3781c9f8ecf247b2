"""Work handed to the one process that runs a job (`workers.federation_sender`).

The federation sender numbers its outgoing queue in memory and wakes its destinations in
memory, so every EDU or event queued for other servers (a typing change, a receipt, a
to-device message, a device-list change, an event handed on) goes to that process, which
queues it and answers once it is committed, as a local queueing does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from homeserver.server import HomeServer


def wire_jobs(hs: HomeServer) -> None:
    sender = hs.federation_sender
    if hs.topology.runs("federation_sender"):

        async def enqueue(args: dict[str, Any]) -> dict[str, Any]:
            await sender.enqueue([(d, event_id, edu, key) for d, event_id, edu, key in args["rows"]])
            return {}

        hs.rpc.register("federation_sender.enqueue", enqueue)
        return
    # Topology.jobs: job -> the instance running it (the first event writer when unnamed).
    runner = hs.topology.jobs["federation_sender"]

    async def forward(rows: list[tuple[str, str | None, dict[str, Any] | None, str | None]]) -> None:
        await hs.rpc.call(runner, "federation_sender.enqueue", {"rows": [list(r) for r in rows]})

    sender.forward_enqueue = forward
