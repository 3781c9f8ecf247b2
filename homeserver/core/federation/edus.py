"""Inbound EDUs handed to the handler registered for their type (Server-Server API, "EDUs").

Minimal version for the /send handler; the federation sender's part brings the handlers.
Unknown types are ignored and one bad EDU never fails the others.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.logger import Logger

log = Logger()

EduHandler = Callable[[str, dict[str, Any]], Awaitable[None]]


class EduReceiver:
    def __init__(self) -> None:
        self._handlers: dict[str, EduHandler] = {}

    def register(self, edu_type: str, handler: EduHandler) -> None:
        self._handlers[edu_type] = handler

    async def receive_all(self, origin: str, edus: list[dict[str, Any]]) -> None:
        for edu in edus:
            edu_type = edu.get("edu_type")
            handler = self._handlers.get(edu_type) if isinstance(edu_type, str) else None
            content = edu.get("content")
            if handler is None or not isinstance(content, dict):
                continue
            try:
                await handler(origin, content)
            except Exception:
                log.failure("EDU {type} from {origin} failed", type=edu_type, origin=origin)
