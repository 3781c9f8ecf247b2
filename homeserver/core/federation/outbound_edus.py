"""The EDUs this server sends: what local users do that other servers must hear of.

Each is queued through the federation sender (core/federation/sender.py) to the servers
that should see it, and returns once queued: typing and read receipts to the servers of
the room, presence and device-list changes to the servers sharing a room with the user,
to-device messages to the server of each remote recipient (with a dedupe key, so a client's
retried sendToDevice is not queued twice).

Only to-device messages fail their client's request when they cannot be queued (the client
retries them). The others are told after the change is stored: a failure to queue them is
logged, and the client's request still succeeds (failing it would not bring them back).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec

from twisted.logger import Logger

from homeserver.core.federation.discovery import split_server_name
from homeserver.core.federation.edus import REMOTE_TYPING_TIMEOUT_MS
from homeserver.core.federation.sender import FederationSender
from homeserver.core.federation.user_ids import server_of
from homeserver.logs import log_failure

log = Logger()


P = ParamSpec("P")


def _logged(fn: Callable[P, Awaitable[None]]) -> Callable[P, Awaitable[None]]:
    """Log a failure to queue instead of raising it (see the module docstring)."""

    @functools.wraps(fn)
    async def quietly(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            await fn(*args, **kwargs)
        except Exception:
            log_failure(log, "could not queue {what} for other servers", what=fn.__name__)

    return quietly


class OutboundEdus:
    def __init__(
        self,
        sender: FederationSender,
        server_name: str,
        change_before: Callable[[str, int], Awaitable[int | None]],
    ) -> None:
        self.sender = sender
        self.server_name = server_name
        # (user, stream id) -> the user's device-list change before it (storage): prev_id.
        self._change_before = change_before

    def is_remote(self, user_id: Any) -> bool:
        """A user of another, well-formed server name (anything else is nobody's)."""
        if not isinstance(user_id, str) or server_of(user_id) in ("", self.server_name):
            return False
        try:
            split_server_name(server_of(user_id))
        except ValueError:
            return False
        return True

    def _is_local(self, user_id: str) -> bool:
        return server_of(user_id) == self.server_name

    @_logged
    async def typing(self, room_id: str, user_id: str, typing: bool) -> None:
        hosts = await self.sender.hosts_in_room(room_id)
        if hosts:
            content = {"room_id": room_id, "user_id": user_id, "typing": typing}
            # A remote keeps a typing notice 30 s; one a down server would get later is stale.
            await self.sender.queue_edu(hosts, "m.typing", content, ttl_ms=REMOTE_TYPING_TIMEOUT_MS)

    @_logged
    async def receipt(
        self, user_id: str, room_id: str, event_id: str, thread_id: str | None, ts: int
    ) -> None:
        hosts = await self.sender.hosts_in_room(room_id)
        if not hosts:
            return
        data: dict[str, Any] = {"ts": ts}
        if thread_id is not None:
            data["thread_id"] = thread_id
        content = {room_id: {"m.read": {user_id: {"event_ids": [event_id], "data": data}}}}
        await self.sender.queue_edu(hosts, "m.receipt", content)

    @_logged
    async def presence(self, user_id: str, state: dict[str, Any]) -> None:
        """`state` is the user's m.presence content as clients see it (presence.to_json)."""
        if not self._is_local(user_id):
            return  # a remote user's presence came from their server
        hosts = await self.sender.hosts_sharing_rooms(user_id)
        if hosts:
            await self.sender.queue_edu(hosts, "m.presence", {"push": [{"user_id": user_id, **state}]})

    async def send_to_device(
        self,
        sender: str,
        sender_device: str,
        event_type: str,
        txn_id: str,
        messages: dict[str, Any],
    ) -> None:
        """Queue `messages` (remote user -> device id or "*" -> content) for each user's server."""
        by_server: dict[str, dict[str, Any]] = {}
        for user_id, devices in messages.items():
            by_server.setdefault(server_of(user_id), {})[user_id] = devices
        message_id = f"{sender_device}.{txn_id}"
        for server, theirs in sorted(by_server.items()):
            content = {"sender": sender, "type": event_type, "message_id": message_id, "messages": theirs}
            key = f"to_device {sender} {sender_device} {txn_id}"
            await self.sender.queue_edu([server], "m.direct_to_device", content, dedupe_key=key)

    @_logged
    async def device_changed(
        self, user_id: str, device_id: str, stream_id: int, keys: dict[str, Any] | None
    ) -> None:
        """A local device's keys were uploaded (`keys`) or the device deleted (None)."""
        await self._device_updates(user_id, [device_id], stream_id, keys)

    @_logged
    async def devices_deleted(self, user_id: str, device_ids: list[str], stream_id: int) -> None:
        """Local devices deleted at once: the user's servers and previous change read once."""
        await self._device_updates(user_id, device_ids, stream_id, None)

    async def _device_updates(
        self, user_id: str, device_ids: list[str], stream_id: int, keys: dict[str, Any] | None
    ) -> None:
        hosts = await self.sender.hosts_sharing_rooms(user_id)
        if not hosts:
            return
        previous = await self._change_before(user_id, stream_id)
        for device_id in device_ids:
            content: dict[str, Any] = {
                "user_id": user_id,
                "device_id": device_id,
                "stream_id": stream_id,
                "prev_id": [previous] if previous is not None else [],
                "deleted": keys is None,
            }
            if keys is not None:
                content["keys"] = keys
            await self.sender.queue_edu(hosts, "m.device_list_update", content)

    @_logged
    async def signing_keys_changed(self, user_id: str, keys: dict[str, Any]) -> None:
        """New cross-signing keys of a local user (`master`, `self_signing`; the user-signing
        key is for the user's own eyes and never leaves this server)."""
        hosts = await self.sender.hosts_sharing_rooms(user_id)
        content: dict[str, Any] = {"user_id": user_id}
        if "master" in keys:
            content["master_key"] = keys["master"]
        if "self_signing" in keys:
            content["self_signing_key"] = keys["self_signing"]
        if hosts and len(content) > 1:
            await self.sender.queue_edu(hosts, "m.signing_key_update", content)
