"""A push gateway for the bench: accepts `POST /_matrix/push/v1/notify` and counts.

It answers every notification at once with `{"rejected": []}`, so what W3 with pushers
measures is the homeserver's own cost of deciding and sending pushes, not a gateway's.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter

NOTIFY_PATH = "/_matrix/push/v1/notify"
_OK = b'{"rejected":[]}'
_MAX_BODY = 1 << 20


class PushSink:
    def __init__(self) -> None:
        self.notifications = 0
        self.devices = 0
        self.by_event: Counter[str] = Counter()
        self.malformed = 0
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{NOTIFY_PATH}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def reset(self) -> None:
        self.notifications = self.devices = self.malformed = 0
        self.by_event.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                if length > _MAX_BODY:
                    break
                self._count(head, await reader.readexactly(length))
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(_OK), _OK)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    def _count(self, head: bytes, body: bytes) -> None:
        try:
            if not head.startswith(b"POST " + NOTIFY_PATH.encode()):
                raise ValueError("not a notify request")
            notification = json.loads(body)["notification"]
            self.devices += len(notification["devices"])
            self.by_event[str(notification.get("event_id", ""))] += 1
            self.notifications += 1
        except (ValueError, KeyError, TypeError):
            self.malformed += 1
