"""Other servers' users' devices and keys, for our clients' /keys/query and /keys/claim,
and the EDUs that keep what we know of them fresh (Server-Server API, "Device Management",
"End-to-End Encryption", "Send-to-device messaging").

Lists of users who share a room with one of ours are kept (table remote_device_lists):
their server tells us of each change with an m.device_list_update EDU, and each EDU names
the list position(s) it follows (`prev_id`). One that follows what we hold is applied; one
after a gap (an EDU lost while we were unreachable) makes us fetch the whole list again
(`/user/devices`). Lists of users sharing no room are asked for at each query and not
kept: nothing would tell us when they change.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from twisted.internet.defer import Deferred, DeferredLock, gatherResults
from twisted.logger import Logger

from homeserver.core.clock import Clock
from homeserver.core.e2ee import KeyService
from homeserver.core.federation.client import FederationClient, RemoteError
from homeserver.core.federation.user_ids import server_of
from homeserver.errors import MatrixError
from homeserver.storage.remote_devices import RemoteDeviceList, RemoteDeviceStore

log = Logger()

JsonDict = dict[str, Any]
FEDERATION = "/_matrix/federation/v1"
# Locks of users whose lists are being changed; dropped when free, so this stays small.
_MAX_DEVICES = 1000
# Servers one /keys/query or /keys/claim of a client may make us ask at once: each is an
# outbound connection, and a request naming ten thousand made-up servers must not turn
# one client into ten thousand connections. The rest are named in `failures` (429): a
# client asks again for what failed, and lists kept for shared rooms need no asking.
MAX_SERVERS_PER_REQUEST = 100


def _device_keys_for(user_id: str, device_id: str, keys: Any) -> JsonDict | None:
    """A remote server's DeviceKeys if they are for this user and device (else dropped:
    a server answers only for its own users' devices)."""
    if (
        isinstance(keys, dict)
        and keys.get("user_id") == user_id
        and keys.get("device_id") == device_id
        and isinstance(keys.get("keys"), dict)
        and isinstance(keys.get("algorithms"), list)
    ):
        return keys
    return None


def _cross_signing_key_for(user_id: str, usage: str, key: Any) -> JsonDict | None:
    if (
        isinstance(key, dict)
        and key.get("user_id") == user_id
        and isinstance(key.get("keys"), dict)
        and isinstance(key.get("usage"), list)
        and usage in key["usage"]
    ):
        return key
    return None


def _is_stream_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


class RemoteKeys:
    def __init__(
        self,
        server_name: str,
        store: RemoteDeviceStore,
        client: FederationClient,
        clock: Clock,
        keys: KeyService,
        shares_room: Callable[[str], Awaitable[bool]],
    ) -> None:
        self.server_name = server_name
        self.store = store
        self.client = client
        self.clock = clock
        self.keys = keys
        # Does this remote user share a room with one of our users? (then their list is kept)
        self.shares_room = shares_room
        self._locks: dict[str, DeferredLock] = {}

    def is_remote(self, user_id: str) -> bool:
        domain = server_of(user_id)
        return bool(domain) and domain != self.server_name

    # Our clients' queries ---------------------------------------------------------------

    async def query(self, wanted: dict[str, list[str]], timeout_s: float) -> JsonDict:
        """device_keys / master_keys / self_signing_keys / failures for remote users."""
        out: JsonDict = {"device_keys": {}, "master_keys": {}, "self_signing_keys": {}, "failures": {}}
        kept = await self.store.get(list(wanted))
        by_server: dict[str, dict[str, list[str]]] = {}
        to_keep: set[str] = set()
        for user_id, devices in wanted.items():
            sharing = await self.shares_room(user_id)
            device_list = kept.get(user_id)
            if device_list is not None and sharing:
                _answer_from(device_list, devices, out)
                continue
            if device_list is not None:
                await self.store.forget(user_id)  # no room shared any more: nothing keeps it fresh
            if sharing:
                to_keep.add(user_id)
            by_server.setdefault(server_of(user_id), {})[user_id] = devices

        async def ask(server: str, users: dict[str, list[str]]) -> None:
            rest = dict(users)
            keep = sorted(to_keep & set(users))
            # They share a room with ours: fetch each whole list once and keep it (EDUs update it).
            fetched = await gatherResults([Deferred.fromCoroutine(self._fetch_and_keep(u)) for u in keep])
            for user_id, device_list in zip(keep, fetched, strict=True):
                if device_list is not None:
                    _answer_from(device_list, users[user_id], out)
                    del rest[user_id]
            if not rest:
                return
            answer = await self.client.post_json(
                server, f"{FEDERATION}/user/keys/query", {"device_keys": rest}
            )
            if not isinstance(answer, dict):
                raise RemoteError(server, 502, "M_UNKNOWN", "an answer that is not an object")
            for user_id, devices in _objects(answer.get("device_keys")).items():
                if user_id not in rest:
                    continue
                found = {
                    d: k for d, k in _objects(devices).items() if _device_keys_for(user_id, d, k) is not None
                }
                out["device_keys"][user_id] = found
            for field, usage in (("master_keys", "master"), ("self_signing_keys", "self_signing")):
                for user_id, key in _objects(answer.get(field)).items():
                    if user_id in rest and _cross_signing_key_for(user_id, usage, key) is not None:
                        out[field][user_id] = key

        await self._each_server(by_server, ask, timeout_s, out["failures"])
        return out

    async def claim(self, wanted: dict[str, dict[str, str]], timeout_s: float) -> JsonDict:
        out: JsonDict = {"one_time_keys": {}, "failures": {}}
        by_server: dict[str, dict[str, dict[str, str]]] = {}
        for user_id, devices in wanted.items():
            by_server.setdefault(server_of(user_id), {})[user_id] = devices

        async def ask(server: str, users: dict[str, dict[str, str]]) -> None:
            answer = await self.client.post_json(
                server, f"{FEDERATION}/user/keys/claim", {"one_time_keys": users}
            )
            if not isinstance(answer, dict):
                raise RemoteError(server, 502, "M_UNKNOWN", "an answer that is not an object")
            for user_id, devices in _objects(answer.get("one_time_keys")).items():
                if user_id not in users:
                    continue
                claimed = {
                    d: keys
                    for d, keys in _objects(devices).items()
                    if d in users[user_id] and isinstance(keys, dict)
                }
                if claimed:
                    out["one_time_keys"][user_id] = claimed

        await self._each_server(by_server, ask, timeout_s, out["failures"])
        return out

    async def _each_server(
        self,
        by_server: dict[str, Any],
        ask: Callable[[str, Any], Coroutine[Any, Any, None]],
        timeout_s: float,
        failures: JsonDict,
    ) -> None:
        """Ask every server at once; one that fails or is still silent at the timeout is
        named in `failures` (status and message, as Synapse reports them). Past
        MAX_SERVERS_PER_REQUEST, those with the fewest users wanted are not asked."""

        async def one(server: str, users: Any) -> None:
            try:
                call: Deferred[None] = Deferred.fromCoroutine(ask(server, users))
                call.addTimeout(timeout_s, self.clock)  # type: ignore[arg-type]
                await call
            except RemoteError as e:
                failures[server] = {"status": e.status, "message": e.message}
            except Exception as e:
                failures[server] = {"status": 503, "message": _describe(e)}

        ranked = sorted(by_server.items(), key=lambda item: (-len(item[1]), item[0]))
        for server, _ in ranked[MAX_SERVERS_PER_REQUEST:]:
            failures[server] = {"status": 429, "message": "Too many servers in one request; ask again"}
        asked = ranked[:MAX_SERVERS_PER_REQUEST]
        await gatherResults([Deferred.fromCoroutine(one(s, u)) for s, u in asked])

    # Keeping lists --------------------------------------------------------------------------

    async def _locked(self, user_id: str, fn: Callable[[], Awaitable[None]]) -> None:
        """One change of a user's kept list at a time (two EDUs may arrive together)."""
        lock = self._locks.setdefault(user_id, DeferredLock())
        await lock.acquire()
        try:
            await fn()
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                self._locks.pop(user_id, None)

    async def _fetch(self, user_id: str) -> RemoteDeviceList | None:
        try:
            answer = await self.client.get_json(
                server_of(user_id), f"{FEDERATION}/user/devices/{_quote(user_id)}"
            )
            return parse_user_devices(user_id, answer)
        except Exception as e:
            log.warn("Could not fetch the devices of {user}: {e}", user=user_id, e=_describe(e))
            return None

    async def _fetch_and_keep(self, user_id: str) -> RemoteDeviceList | None:
        """For a query: the user's whole list, fetched and kept unless kept meanwhile."""
        result: list[RemoteDeviceList | None] = [None]

        async def fetch() -> None:
            kept = (await self.store.get([user_id])).get(user_id)
            if kept is not None:
                result[0] = kept
                return
            device_list = await self._fetch(user_id)
            if device_list is not None:
                await self.keys.remote_list_changed(user_id, lambda p: self.store.replace(device_list, p))
            result[0] = device_list

        await self._locked(user_id, fetch)
        return result[0]

    async def resync(self, user_id: str) -> None:
        """Fetch and keep the user's whole list (holding the user's lock). On failure keep
        nothing (a query then asks their server) and still tell our users it changed."""
        device_list = await self._fetch(user_id)
        if device_list is None:
            await self.store.forget(user_id)
            await self.keys.remote_list_changed(user_id, lambda p: self.store.record_change(user_id, p))
            return
        await self.keys.remote_list_changed(user_id, lambda p: self.store.replace(device_list, p))

    async def on_device_list_update(self, origin: str, content: JsonDict) -> None:
        user_id, device_id = content.get("user_id"), content.get("device_id")
        stream_id: Any = content.get("stream_id")
        prev_ids = content.get("prev_id", [])
        deleted = content.get("deleted", False)
        if (
            not isinstance(user_id, str)
            or server_of(user_id) != origin  # a server speaks only for its own users
            or not isinstance(device_id, str)
            or not device_id
            or not _is_stream_id(stream_id)
            or not isinstance(prev_ids, list)
            or not all(_is_stream_id(p) for p in prev_ids)
            or not isinstance(deleted, bool)
        ):
            log.info("Ignored a malformed m.device_list_update from {origin}", origin=origin)
            return
        keys = content.get("keys")
        if not deleted and keys is not None and _device_keys_for(user_id, device_id, keys) is None:
            log.info("Ignored device keys for another device from {origin}", origin=origin)
            return
        if not await self.shares_room(user_id):
            return  # nobody here needs the list: it is asked for at each query instead

        async def apply() -> None:
            kept = (await self.store.get([user_id])).get(user_id)
            if kept is not None and stream_id <= kept.stream_id:
                return  # already have it (a transaction sent again)
            if (
                kept is not None
                and all(p <= kept.stream_id for p in prev_ids)
                and (deleted or len(kept.devices) < _MAX_DEVICES or device_id in kept.devices)
            ):
                held = kept.stream_id

                async def write(position: int) -> bool:
                    return await self.store.update_device(
                        user_id, held, stream_id, device_id, keys, deleted, position
                    )

                if await self.keys.remote_list_changed(user_id, write):
                    return
            # Never kept, or an update we missed came before this one: fetch the whole list.
            await self.resync(user_id)

        await self._locked(user_id, apply)

    async def on_signing_key_update(self, origin: str, content: JsonDict) -> None:
        user_id = content.get("user_id")
        if not isinstance(user_id, str) or server_of(user_id) != origin:
            return
        new: dict[str, JsonDict] = {}
        for field, usage in (("master_key", "master"), ("self_signing_key", "self_signing")):
            if field in content:
                key = _cross_signing_key_for(user_id, usage, content[field])
                if key is None:
                    log.info("Ignored a malformed m.signing_key_update from {origin}", origin=origin)
                    return
                new[usage] = key
        if not new or not await self.shares_room(user_id):
            return

        async def apply() -> None:
            await self.keys.remote_list_changed(
                user_id, lambda p: self.store.set_cross_signing(user_id, new, p)
            )

        await self._locked(user_id, apply)

    async def on_direct_to_device(self, origin: str, content: JsonDict) -> None:
        sender, event_type = content.get("sender"), content.get("type")
        message_id, messages = content.get("message_id"), content.get("messages")
        if (
            not isinstance(sender, str)
            or server_of(sender) != origin
            or not isinstance(event_type, str)
            or not event_type
            or not isinstance(message_id, str)
            or not message_id
            or len(message_id) > 255
            or not isinstance(messages, dict)
        ):
            log.info("Ignored a malformed m.direct_to_device from {origin}", origin=origin)
            return
        try:
            await self.keys.receive_remote_to_device(
                sender, message_id, event_type, messages, lambda u: server_of(u) == self.server_name
            )
        except MatrixError as e:  # contents that are not objects, or too large
            log.info("Ignored an m.direct_to_device from {origin}: {e}", origin=origin, e=e.message)


def _answer_from(device_list: RemoteDeviceList, devices: list[str], out: JsonDict) -> None:
    user_id = device_list.user_id
    out["device_keys"][user_id] = {
        d: k for d, k in device_list.devices.items() if k is not None and (not devices or d in devices)
    }
    if device_list.master_key is not None:
        out["master_keys"][user_id] = device_list.master_key
    if device_list.self_signing_key is not None:
        out["self_signing_keys"][user_id] = device_list.self_signing_key


def parse_user_devices(user_id: str, answer: Any) -> RemoteDeviceList:
    if (
        not isinstance(answer, dict)
        or answer.get("user_id") != user_id
        or not _is_stream_id(answer.get("stream_id"))
    ):
        raise ValueError("not a device list of that user")
    devices: dict[str, JsonDict | None] = {}
    listed = answer.get("devices")
    if not isinstance(listed, list):
        raise ValueError("'devices' is not a list")
    for entry in listed[:_MAX_DEVICES]:
        if isinstance(entry, dict) and isinstance(entry.get("device_id"), str) and entry["device_id"]:
            device_id = entry["device_id"]
            devices[device_id] = _device_keys_for(user_id, device_id, entry.get("keys"))
    return RemoteDeviceList(
        user_id,
        answer["stream_id"],
        devices,
        _cross_signing_key_for(user_id, "master", answer.get("master_key")),
        _cross_signing_key_for(user_id, "self_signing", answer.get("self_signing_key")),
    )


def _objects(value: Any) -> dict[str, Any]:
    return {k: v for k, v in value.items() if isinstance(k, str)} if isinstance(value, dict) else {}


def _quote(user_id: str) -> str:
    from urllib.parse import quote

    return quote(user_id, safe="")


def _describe(e: Exception) -> str:
    from twisted.internet.defer import TimeoutError as DeferredTimeout

    if isinstance(e, DeferredTimeout):
        return "timed out"
    return str(e) or type(e).__name__
