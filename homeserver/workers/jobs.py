"""Work handed to the one process that runs a job.

`workers.federation_sender`: the federation sender numbers its outgoing queue in memory and
wakes its destinations in memory, so every EDU or event queued for other servers (a typing
change, a receipt, a to-device message, a device-list change, an event handed on) goes to
that process, which queues it and answers once it is committed, as a local queueing does.

`workers.background`: the search index and the user directory's public rooms are filled
by durable stream consumers on that process alone (a repeat would only write the same
rows again, on every process). A search elsewhere waits, as a local one does, for them to
reach its own stream position: it asks that process (a position means the same on every
process, ADR 0008); unreachable or failing, the search goes on with what is indexed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from homeserver.errors import MatrixError, ServiceUnavailable

if TYPE_CHECKING:
    from homeserver.core.event_stream import ConsumedOnOneProcess, RemoteCaughtUp
    from homeserver.server import HomeServer

log = Logger()


def wire_jobs(hs: HomeServer) -> None:
    _wire_indexes(hs)
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


def _wire_indexes(hs: HomeServer) -> None:
    indexes: dict[str, ConsumedOnOneProcess] = {
        "search_index": hs.search_index,
        "user_directory": hs.user_directory,
    }
    if hs.topology.runs("background"):
        for name, index in indexes.items():

            async def reached(args: dict[str, Any], index: ConsumedOnOneProcess = index) -> dict[str, Any]:
                return {"reached": await index.reached(int(args["position"]), float(args["timeout_s"]))}

            hs.rpc.register(f"{name}.caught_up", reached)
        return
    runner = hs.topology.jobs["background"]
    for name, index in indexes.items():
        index.remote_caught_up = _asking(hs, runner, name)


def _asking(hs: HomeServer, runner: str, name: str) -> RemoteCaughtUp:
    async def caught_up(position: int, timeout_s: float) -> bool:
        try:
            args = {"position": position, "timeout_s": timeout_s}
            return bool((await hs.rpc.call(runner, f"{name}.caught_up", args))["reached"])
        except ServiceUnavailable:
            log.warn("{name}: {runner} unreachable; searching what is indexed", name=name, runner=runner)
            return False
        except MatrixError as e:
            # Its own failure (a 500, a method it does not know in a rolling upgrade) is no
            # fault of the search: answered from what is indexed, not with that error.
            log.warn(
                "{name}: {runner} answered {e}; searching what is indexed",
                name=name,
                runner=runner,
                e=e.errcode,
            )
            return False

    return caught_up
