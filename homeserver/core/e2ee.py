"""End-to-end encryption support: the server stores and routes keys, never plaintext.

Clients do the cryptography (Olm/Megolm); this module checks what the spec
asks a server to check - device keys self-signed by the device, cross-signing
keys signed along the chain (master -> self-signing / user-signing -> devices
and other users' master keys) - with signedjson, hands out each one-time key
once, queues to-device messages until the device's next sync proves receipt,
and keeps the device-list stream that tells others to re-query keys.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from signedjson.key import decode_verify_key_base64
from signedjson.sign import SignatureVerifyException, verify_signed_json
from twisted.logger import Logger

from homeserver.core.clock import Clock
from homeserver.core.ratelimit import RateLimiter
from homeserver.core.streams import StreamIdGenerator
from homeserver.core.uia import PASSWORD, InteractiveAuth
from homeserver.errors import Forbidden, MatrixError, NotFound, TooLarge
from homeserver.notifier import Notifier
from homeserver.storage import Storage

log = Logger()

JsonDict = dict[str, Any]
CROSS_SIGNING_TYPES = ("master", "self_signing", "user_signing")
MAX_TO_DEVICE_BYTES = 65536
# What one sendToDevice may queue once `*` is expanded to every device of each user named:
# the body is bounded (4 x 64 KiB), but `{"@u:hs": {"*": <64 KiB>}}` for a user with
# thousands of devices, or `*` for thousands of users, multiplied it. A client sends `*`
# to one user at a time (verification, secret and key-request cancellations, a few KiB).
MAX_TO_DEVICE_QUEUED = 10_000
MAX_TO_DEVICE_QUEUED_BYTES = 64 * MAX_TO_DEVICE_BYTES
# What one device's queue may hold (limits.max_to_device_queued_per_device's default).
DEFAULT_MAX_QUEUED_PER_DEVICE = 64 * 1024 * 1024
MAX_KEY_ID_LENGTH = 255  # "algorithm:key id" of a one-time or fallback key
TO_DEVICE_BATCH = 100
MAX_REMEMBERED_CHANGES = 100_000
# How long /keys/query and /keys/claim wait for other servers (the spec's default: 10 s).
DEFAULT_REMOTE_TIMEOUT_MS = 10_000
MAX_REMOTE_TIMEOUT_MS = 60_000
# How much one /keys/query or /keys/claim (ours, or another server's over federation) may
# ask for; more is 413 M_TOO_LARGE. Each user or device is work in one transaction, so the
# body size limit alone (configurable, 1 MiB: ~30,000 users) is no bound. Set well above
# what real clients send: the Rust crypto SDK queries 250 users a request, but matrix-nio
# and the legacy matrix-js-sdk query every user they track at once, and the Rust SDK claims
# keys for every device it has no Olm session with in one request (a large room's first
# encrypted message).
MAX_QUERY_USERS = 5_000
MAX_QUERY_DEVICES = 10_000  # device ids named in a query's lists, all users together
MAX_CLAIM_DEVICES = 10_000


class InvalidSignature(MatrixError):
    errcode = "M_INVALID_SIGNATURE"


def _ed25519_key(obj: JsonDict, key_id: str) -> Any:
    """The verify key `ed25519:<id>` published in `obj["keys"]`."""
    value = (obj.get("keys") or {}).get(f"ed25519:{key_id}")
    if not isinstance(value, str):
        raise InvalidSignature(f"No ed25519:{key_id} key")
    try:
        return decode_verify_key_base64("ed25519", key_id, value)
    except Exception:
        raise InvalidSignature(f"Malformed ed25519:{key_id} key") from None


def _verify(obj: JsonDict, user_id: str, signer_obj: JsonDict, signer_key_id: str) -> None:
    """Check that `obj` carries a valid signature by `signer_obj`'s ed25519:<signer_key_id>."""
    key = _ed25519_key(signer_obj, signer_key_id)
    try:
        verify_signed_json(obj, user_id, key)
    except SignatureVerifyException:
        raise InvalidSignature("Invalid signature") from None
    except Exception:
        raise InvalidSignature("Invalid signature") from None


def _cross_signing_key_id(key: JsonDict) -> str:
    keys = key.get("keys")
    if not isinstance(keys, dict) or len(keys) != 1:
        raise MatrixError("A cross-signing key must have exactly one key", "M_INVALID_PARAM")
    key_id, value = next(iter(keys.items()))
    if not key_id.startswith("ed25519:") or key_id[len("ed25519:") :] != value:
        raise MatrixError("Cross-signing key ids are ed25519:<public key>", "M_INVALID_PARAM")
    return str(value)


def _visible_signatures(key: JsonDict, owner: str, requester: str) -> JsonDict:
    """The key with the signatures `requester` may see: the owner's own, and the requester's
    (another user's signature on a master key says whom they verified: theirs to see only)."""
    signatures = key.get("signatures")
    if not isinstance(signatures, dict):
        return key
    return {**key, "signatures": {u: s for u, s in signatures.items() if u in (owner, requester)}}


def _timeout_s(value: Any) -> float:
    """A /keys/query or /keys/claim `timeout` (ms) for other servers' answers, in seconds."""
    if value is None:
        return DEFAULT_REMOTE_TIMEOUT_MS / 1000
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise MatrixError("'timeout' must be a non-negative integer", "M_INVALID_PARAM")
    return min(value, MAX_REMOTE_TIMEOUT_MS) / 1000


def check_query_size(wanted: JsonDict) -> None:
    """Refuse a /keys/query for more users, or naming more devices, than one request may.

    @raise TooLarge: over MAX_QUERY_USERS users or MAX_QUERY_DEVICES device ids.
    """
    if len(wanted) > MAX_QUERY_USERS:
        raise TooLarge(f"At most {MAX_QUERY_USERS} users may be queried at once")
    named = sum(len(devices) for devices in wanted.values() if isinstance(devices, list))
    if named > MAX_QUERY_DEVICES:
        raise TooLarge(f"At most {MAX_QUERY_DEVICES} devices may be named in one query")


def check_claim_size(wanted: JsonDict) -> None:
    """Refuse a /keys/claim for more devices than one request may.

    @raise TooLarge: over MAX_CLAIM_DEVICES devices, all users together.
    """
    if sum(len(devices) for devices in wanted.values() if isinstance(devices, dict)) > MAX_CLAIM_DEVICES:
        raise TooLarge(f"At most {MAX_CLAIM_DEVICES} keys may be claimed at once")


def _strip(obj: JsonDict) -> JsonDict:
    return {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}


class KeyService:
    def __init__(
        self, storage: Storage, clock: Clock, notifier: Notifier, auth: InteractiveAuth | None = None
    ) -> None:
        self.storage = storage
        self.store = storage.e2ee
        self.uia = auth
        self.clock = clock
        self.notifier = notifier
        # Other servers' users' keys (core/federation/remote_keys.py): set by the server.
        self.remote: Any = None
        self.device_lists = StreamIdGenerator()
        self.to_device = StreamIdGenerator()
        # Who should hear that a user's keys changed (room co-members): set by the server.
        self.audience: Any = None
        # The federation side (core/federation/outbound_edus.py), when wired: told of local
        # device and cross-signing key changes and handed to-device messages for remote users.
        self.federation: Any = None
        # Per-device key counts for every sync, kept in memory; dropped when they change.
        self._counts: dict[tuple[str, str], tuple[dict[str, int], list[str]]] = {}
        # Bumped whenever counts are dropped: a read that overlapped a claim or an upload
        # may have seen the old rows and must not be cached (it would stay stale).
        self._counts_generation = 0
        # To-device bookkeeping per (user, device), see to_device_for_sync: devices whose queue
        # was read since start-up, the newest message queued for each, and how far it was deleted.
        self._loaded: set[tuple[str, str]] = set()
        # Device-list changes since start-up (position, user), so syncs need no query for them.
        self._changes: list[tuple[int, str]] = []
        self._changes_known_after = 0
        self._queued_upto: dict[tuple[str, str], int] = {}
        self._deleted_upto: dict[tuple[str, str], int] = {}
        # Several processes (homeserver/workers/streams.py): `forward(verb, args)` hands a
        # device-list write to that stream's writer, `forward_to_device` a to-device send to
        # its own; `replicate(stream, rows)` tells the others of one made here;
        # `on_counts_dropped(user, device)` of key counts another process caches.
        self.forward: Any = None
        self.forward_to_device: Any = None
        self.replicate: Any = None
        self.on_counts_dropped: Any = None
        # `rate_limits.to_device_per_user` (set by the server) and `limits.max_to_device_queued_per_device`.
        self.ratelimiter: RateLimiter | None = None
        self.max_queued_per_device = DEFAULT_MAX_QUEUED_PER_DEVICE

    def _forget_counts(self, user_id: str, device_id: str) -> None:
        self.forget_counts(user_id, device_id)
        if self.on_counts_dropped is not None:
            self.on_counts_dropped(user_id, device_id)

    def forget_all_counts(self) -> None:
        self._counts.clear()
        self._counts_generation += 1

    def forget_counts(self, user_id: str, device_id: str) -> None:
        self._counts.pop((user_id, device_id), None)
        self._counts_generation += 1

    async def _device_counts(self, user_id: str, device_id: str) -> tuple[dict[str, int], list[str]]:
        key = (user_id, device_id)
        counts = self._counts.get(key)
        if counts is None:
            generation = self._counts_generation
            counts = (
                await self.store.count_one_time_keys(user_id, device_id),
                await self.store.unused_fallback_key_types(user_id, device_id),
            )
            if generation == self._counts_generation:
                self._counts[key] = counts
        return counts

    async def one_time_key_counts(self, user_id: str, device_id: str) -> dict[str, int]:
        # Clients read a missing algorithm as "unknown"; signed_curve25519 0 means "upload more".
        return {"signed_curve25519": 0, **(await self._device_counts(user_id, device_id))[0]}

    async def fallback_key_types(self, user_id: str, device_id: str) -> list[str]:
        return (await self._device_counts(user_id, device_id))[1]

    async def start(self) -> None:
        device_lists, to_device = await self.store.max_stream_ids()
        self.device_lists = StreamIdGenerator(device_lists)
        self.to_device = StreamIdGenerator(to_device)
        self._changes_known_after = device_lists

    def _change_done(self, position: int, user_id: str) -> None:
        """Record a device-list change in memory, then let readers see its position."""
        self._remember_change(position, user_id)
        self.device_lists.done(position)
        if self.replicate is not None:
            self.replicate("device_lists", [{"position": position, "user_id": user_id}])

    def _remember_change(self, position: int, user_id: str) -> None:
        self._changes.append((position, user_id))
        if len(self._changes) > MAX_REMEMBERED_CHANGES:
            dropped = self._changes[: len(self._changes) // 2]
            del self._changes[: len(dropped)]
            self._changes_known_after = max(p for p, _ in dropped)

    def apply_device_lists(self, rows: list[JsonDict], position: int) -> None:
        """Device-list changes the writer process stored (homeserver/workers/streams.py);
        the caller wakes their audiences."""
        for row in rows:
            self._remember_change(row["position"], row["user_id"])
        self.device_lists.advance_to(position)

    def apply_to_device(self, rows: list[JsonDict], position: int) -> None:
        """To-device messages the writer process queued (homeserver/workers/streams.py)."""
        for row in rows:
            key = (row["user_id"], row["device_id"])
            self._queued_upto[key] = max(row["position"], self._queued_upto.get(key, 0))
        self.to_device.advance_to(position)
        self.notifier.wake_users({row["user_id"] for row in rows})

    async def users_changed_between(self, after: int, upto: int) -> set[str]:
        """Users whose keys changed in (after, upto]: from memory unless `after` predates it."""
        if after >= upto:
            return set()
        if after >= self._changes_known_after:
            return {user for position, user in self._changes if after < position <= upto}
        return await self.store.users_changed_between(after, upto)

    async def _announce(self, user_id: str) -> None:
        audience = await self.audience(user_id) if self.audience is not None else {user_id}
        self.notifier.wake_users(audience)

    # Upload ---------------------------------------------------------------------------------

    async def upload(self, user_id: str, device_id: str, body: JsonDict) -> JsonDict:
        """`POST /keys/upload`: the whole body is checked first, then stored in one
        transaction, so a refused upload changes nothing (no device keys without the
        one-time keys that came with them, no one-time keys without the fallback key)."""
        if self.forward is not None:
            args = {"user_id": user_id, "device_id": device_id, "body": body}
            answer: JsonDict = await self.forward("upload", args)
            return answer
        device_keys = body.get("device_keys")
        new_device_keys = None
        if device_keys is not None:
            new_device_keys = await self._check_device_keys(user_id, device_id, device_keys)
        one_time_keys = _key_rows(body, "one_time_keys")
        fallback_keys: list[tuple[str, str, JsonDict | str]] = []
        for field in ("fallback_keys", "org.matrix.msc2732.fallback_keys"):
            fallback_keys.extend(_key_rows(body, field))
        position = self.device_lists.allocate() if new_device_keys is not None else None
        try:
            await self.store.upload_keys(
                user_id, device_id, new_device_keys, position, one_time_keys, fallback_keys
            )
        except ValueError as e:
            raise MatrixError(str(e), "M_INVALID_PARAM") from None
        finally:
            # Done even when nothing was stored: readers must not wait for it.
            if position is not None:
                self._change_done(position, user_id)
            self._forget_counts(user_id, device_id)
        if new_device_keys is not None and position is not None:
            await self._announce(user_id)
            if self.federation is not None:
                await self.federation.device_changed(user_id, device_id, position, new_device_keys)
        return {"one_time_key_counts": await self.store.count_one_time_keys(user_id, device_id)}

    async def _check_device_keys(self, user_id: str, device_id: str, keys: Any) -> JsonDict | None:
        """The device keys to store, None if these are stored already.

        @raise MatrixError: malformed, not signed by the device's own key, for another
            user or device, or other keys than those the device published before.
        """
        if not isinstance(keys, dict):
            raise MatrixError("'device_keys' must be an object", "M_BAD_JSON")
        if keys.get("user_id") != user_id or keys.get("device_id") != device_id:
            raise Forbidden("device_keys must be for your own user and device")
        if not isinstance(keys.get("algorithms"), list) or not isinstance(keys.get("keys"), dict):
            raise MatrixError("device_keys needs 'algorithms' and 'keys'", "M_BAD_JSON")
        # Every field typed as the spec's DeviceKeys says: these keys go to every server
        # sharing a room with the user, and one a server cannot read could make it refuse
        # our transactions (Synapse's CVE-2025-61672).
        if not _device_keys_well_formed(keys):
            raise MatrixError(
                "device_keys: 'algorithms' must be strings and 'keys' must map key IDs"
                " (algorithm:id) to strings",
                "M_BAD_JSON",
            )
        # Spec: the device keys must be signed by the device's own ed25519 key.
        _verify(keys, user_id, keys, device_id)
        existing = await self.store.get_device_keys(user_id, device_id)
        if existing is not None:
            if _strip(existing) != _strip(keys):
                raise MatrixError("Device keys cannot change; log in as a new device", "M_INVALID_PARAM")
            return None
        return _strip(keys) | {"signatures": keys.get("signatures", {})}

    # Query and claim -----------------------------------------------------------------------

    async def query(self, requester: str, body: JsonDict) -> JsonDict:
        """POST /keys/query: our users' keys from here, other servers' users' keys from
        what we keep of their lists or from their servers (at once, within `timeout`)."""
        wanted = body.get("device_keys")
        if not isinstance(wanted, dict):
            raise MatrixError("'device_keys' must be an object", "M_BAD_JSON")
        check_query_size(wanted)
        queries: dict[str, list[str]] = {}
        for user_id, devices in wanted.items():
            if not isinstance(devices, list) or not all(isinstance(d, str) for d in devices):
                raise MatrixError("device lists must be lists of device ids", "M_BAD_JSON")
            queries[str(user_id)] = devices
        timeout_s = _timeout_s(body.get("timeout"))
        remote = {u: d for u, d in queries.items() if self.remote is not None and self.remote.is_remote(u)}
        response = await self.query_local(requester, {u: d for u, d in queries.items() if u not in remote})
        if remote:
            found = await self.remote.query(remote, timeout_s)
            response["device_keys"].update(found["device_keys"])
            for field in ("master_keys", "self_signing_keys"):
                for user_id, key in found[field].items():
                    response[field][user_id] = _visible_signatures(key, user_id, requester)
            response["failures"].update(found["failures"])
        return response

    async def query_local(self, requester: str, queries: dict[str, list[str]]) -> JsonDict:
        """Keys of the users in `queries` as stored here (device lists: [] for all)."""
        device_keys = await self.store.query_device_keys(queries)
        cross = await self.store.get_cross_signing_keys(list(queries))
        response: JsonDict = {"device_keys": device_keys, "failures": {}}
        for key_type, field in (
            ("master", "master_keys"),
            ("self_signing", "self_signing_keys"),
            ("user_signing", "user_signing_keys"),
        ):
            found = {}
            for user_id, keys in cross.items():
                # A user's user-signing key is for their own eyes only.
                if key_type in keys and (key_type != "user_signing" or user_id == requester):
                    found[user_id] = _visible_signatures(keys[key_type], user_id, requester)
            response[field] = found
        return response

    async def claim(self, body: JsonDict) -> JsonDict:
        """POST /keys/claim: our users' keys here, other servers' users' keys from their
        servers (at once, within `timeout`; `failures` names those that did not answer)."""
        wanted = body.get("one_time_keys")
        if not isinstance(wanted, dict):
            raise MatrixError("'one_time_keys' must be an object", "M_BAD_JSON")
        check_claim_size(wanted)
        claims: dict[str, dict[str, str]] = {}
        for user_id, devices in wanted.items():
            if not isinstance(devices, dict):
                raise MatrixError("one_time_keys values must be objects", "M_BAD_JSON")
            if not all(isinstance(algorithm, str) for algorithm in devices.values()):
                raise MatrixError("algorithms must be strings", "M_BAD_JSON")
            claims[str(user_id)] = {str(d): a for d, a in devices.items()}
        timeout_s = _timeout_s(body.get("timeout"))
        remote = {u: d for u, d in claims.items() if self.remote is not None and self.remote.is_remote(u)}
        response = await self.claim_local({u: d for u, d in claims.items() if u not in remote})
        if remote:
            found = await self.remote.claim(remote, timeout_s)
            response["one_time_keys"].update(found["one_time_keys"])
            response["failures"].update(found["failures"])
        return response

    async def claim_local(self, wanted: dict[str, dict[str, str]]) -> JsonDict:
        """Hand out one key per (user, device, algorithm) of the users here."""
        claims = [(u, d, a) for u, devices in wanted.items() for d, a in devices.items()]
        claimed = await self.store.claim_keys(claims)
        # Only the devices a key was taken from: a claim may name thousands that had none.
        for user_id, device_id in claimed:
            self._forget_counts(user_id, device_id)
        # The owners learn their new counts (and top up) on their next sync.
        self.notifier.wake_users({user_id for user_id, _ in claimed})
        out: JsonDict = {}
        for (user_id, device_id), (key_id, key) in claimed.items():
            out.setdefault(user_id, {}).setdefault(device_id, {})[key_id] = key
        return {"one_time_keys": out, "failures": {}}

    # Other servers' users --------------------------------------------------------------------

    async def remote_list_changed(self, user_id: str, write: Callable[[int], Awaitable[Any]]) -> Any:
        """A remote user's devices or keys changed: `write(position)` stores it with a
        position on our device-list stream, so /sync and /keys/changes tell our users."""
        if self.forward is not None:
            # The position comes from the device-list writer, which holds it open until
            # this write is done (or its lease ends, homeserver/workers/streams.py).
            position = int(await self.forward("reserve", {"user_id": user_id}))
            try:
                return await write(position)
            finally:
                await self.forward("release", {"user_id": user_id, "position": position})
        position = self.device_lists.allocate()
        try:
            result = await write(position)
        finally:
            self._change_done(position, user_id)
        await self._announce(user_id)
        return result

    def reserve_change(self) -> int:
        """A device-list position for another process's write (see remote_list_changed)."""
        return self.device_lists.allocate()

    async def release_change(self, position: int, user_id: str) -> None:
        """That write is done (or abandoned): readers may pass its position."""
        self._change_done(position, user_id)
        await self._announce(user_id)

    # Cross-signing --------------------------------------------------------------------------

    async def has_master_key(self, user_id: str) -> bool:
        return "master" in (await self.store.get_cross_signing_keys([user_id])).get(user_id, {})

    async def upload_cross_signing(self, user_id: str, body: JsonDict) -> None:
        """`POST /keys/device_signing/upload`. Once a master key exists, replacing any
        cross-signing key needs the account password (spec v1.11, MSC3967: user-interactive
        auth unless the user has no master key yet)."""
        if self.forward is not None:
            await self.forward("upload_cross_signing", {"user_id": user_id, "body": body})
            return
        if await self.has_master_key(user_id):
            if self.uia is None:
                raise Forbidden("Replacing cross-signing keys is not possible here")
            await self.uia.authenticate(
                body.get("auth"), "/keys/device_signing/upload", [[PASSWORD]], expected_user=user_id
            )
        existing = (await self.store.get_cross_signing_keys([user_id])).get(user_id, {})
        new: dict[str, JsonDict] = {}
        for key_type in CROSS_SIGNING_TYPES:
            key = body.get(f"{key_type}_key")
            if key is None:
                continue
            if (
                not isinstance(key, dict)
                or key.get("user_id") != user_id
                or not isinstance(key.get("usage"), list)
                or key_type not in key["usage"]
            ):
                raise MatrixError(f"Bad {key_type}_key", "M_INVALID_PARAM")
            _cross_signing_key_id(key)
            new[key_type] = key
        if not new:
            raise MatrixError("No cross-signing keys given", "M_MISSING_PARAM")
        master = new.get("master") or existing.get("master")
        if master is None:
            raise MatrixError("A master key is needed first", "M_INVALID_PARAM")
        master_id = _cross_signing_key_id(master)
        for key_type in ("self_signing", "user_signing"):
            if key_type in new:
                # Spec: the self-signing and user-signing keys are signed by the master key.
                _verify(new[key_type], user_id, master, master_id)
        position = self.device_lists.allocate()
        try:
            await self.store.set_cross_signing_keys(user_id, new, position)
        finally:
            self._change_done(position, user_id)
        await self._announce(user_id)
        if self.federation is not None:
            await self.federation.signing_keys_changed(user_id, new)

    async def upload_signatures(self, user_id: str, body: JsonDict) -> JsonDict:
        if self.forward is not None:
            answer: JsonDict = await self.forward("upload_signatures", {"user_id": user_id, "body": body})
            return answer
        failures: JsonDict = {}
        updates: list[tuple[str, str, str, str, str]] = []
        mine = (await self.store.get_cross_signing_keys([user_id])).get(user_id, {})
        for target_user, objects in body.items():
            if not isinstance(objects, dict):
                raise MatrixError("signature uploads are objects of signed objects", "M_BAD_JSON")
            theirs = (await self.store.get_cross_signing_keys([target_user])).get(target_user, {})
            for target_id, signed in objects.items():
                try:
                    updates.extend(
                        await self._check_signed(user_id, mine, target_user, theirs, target_id, signed)
                    )
                except MatrixError as e:
                    failures.setdefault(target_user, {})[target_id] = {
                        "errcode": e.errcode,
                        "error": e.message,
                    }
        if updates:
            changed = {u for u, *_ in updates}
            positions = {u: self.device_lists.allocate() for u in changed}
            try:
                await self.store.add_signatures(updates, positions)
            finally:
                for target_user, p in positions.items():
                    self._change_done(p, target_user)
            for target_user in changed:
                await self._announce(target_user)
        return {"failures": failures}

    async def _check_signed(
        self,
        user_id: str,
        mine: dict[str, JsonDict],
        target_user: str,
        theirs: dict[str, JsonDict],
        target_id: str,
        signed: Any,
    ) -> list[tuple[str, str, str, str, str]]:
        if not isinstance(signed, dict):
            raise MatrixError("A signed object is required", "M_BAD_JSON")
        signatures = signed.get("signatures")
        if not isinstance(signatures, dict):
            raise InvalidSignature("No signature from you")
        sigs = signatures.get(user_id)
        if not isinstance(sigs, dict) or not sigs:
            raise InvalidSignature("No signature from you")
        if target_user == user_id:
            device = await self.store.get_device_keys(user_id, target_id)
            if device is not None:
                # My device, signed by my self-signing key.
                ssk = mine.get("self_signing")
                if ssk is None:
                    raise InvalidSignature("No self-signing key")
                ssk_id = _cross_signing_key_id(ssk)
                if _strip(signed) != _strip(device):
                    raise InvalidSignature("Signed object does not match the stored device keys")
                _verify(signed, user_id, ssk, ssk_id)
                return [(user_id, target_id, user_id, f"ed25519:{ssk_id}", sigs[f"ed25519:{ssk_id}"])]
            master = mine.get("master")
            if master is not None and _cross_signing_key_id(master) == target_id:
                # My master key, signed by one of my devices.
                if _strip(signed) != _strip(master):
                    raise InvalidSignature("Signed object does not match the stored master key")
                out = []
                for key_id, sig in sigs.items():
                    device_id = key_id.partition(":")[2]
                    device_keys = await self.store.get_device_keys(user_id, device_id)
                    if device_keys is None:
                        continue
                    _verify(
                        {**_strip(signed), "signatures": {user_id: {key_id: sig}}},
                        user_id,
                        device_keys,
                        device_id,
                    )
                    out.append((user_id, target_id, user_id, key_id, sig))
                if not out:
                    raise InvalidSignature("No signature by a known device")
                return out
            raise NotFound("Unknown key")
        # Someone else's master key, signed by my user-signing key.
        usk = mine.get("user_signing")
        master = theirs.get("master")
        if usk is None or master is None or _cross_signing_key_id(master) != target_id:
            raise InvalidSignature("Only another user's master key can be signed, with your user-signing key")
        if _strip(signed) != _strip(master):
            raise InvalidSignature("Signed object does not match the stored master key")
        usk_id = _cross_signing_key_id(usk)
        _verify(
            {**_strip(signed), "signatures": {user_id: {f"ed25519:{usk_id}": sigs.get(f"ed25519:{usk_id}")}}},
            user_id,
            usk,
            usk_id,
        )
        return [(target_user, target_id, user_id, f"ed25519:{usk_id}", sigs[f"ed25519:{usk_id}"])]

    # Devices -------------------------------------------------------------------------------

    async def devices_deleted(self, user_id: str, device_ids: list[str]) -> None:
        if self.forward is not None:
            await self.forward("devices_deleted", {"user_id": user_id, "device_ids": device_ids})
            return
        for device_id in device_ids:
            self._forget_counts(user_id, device_id)
        position = self.device_lists.allocate()
        try:
            await self.store.delete_device(user_id, device_ids, position)
        finally:
            self._change_done(position, user_id)
        await self._announce(user_id)
        if self.federation is not None:
            await self.federation.devices_deleted(user_id, device_ids, position)

    async def user_deactivated(self, user_id: str) -> None:
        """The account is deactivated (its devices are deleted already): its cross-signing
        keys, key backup and any one-time or fallback keys left go too, so /keys/query
        answers no keys for it and nobody verifies or encrypts for it again; a reactivated
        account starts over, as Synapse's deactivation does with the devices' keys and the
        backup."""
        if self.forward is not None:
            await self.forward("user_deactivated", {"user_id": user_id})
            return
        position = self.device_lists.allocate()
        try:
            device_ids = await self.store.delete_user_keys(user_id, position)
        finally:
            self._change_done(position, user_id)
        for device_id in device_ids:
            self._forget_counts(user_id, device_id)
        await self._announce(user_id)

    # To-device -----------------------------------------------------------------------------

    async def _expand_to_device_targets(
        self, sized: list[tuple[str, str, JsonDict, int]]
    ) -> list[tuple[str, str, JsonDict]]:
        """(user, device, content) for each device a message goes to, `*` read as every
        device of its user (their devices read in one query a 500 users); TooLarge past
        MAX_TO_DEVICE_QUEUED messages or MAX_TO_DEVICE_QUEUED_BYTES."""
        everyone = sorted({user_id for user_id, device_id, _, _ in sized if device_id == "*"})
        devices = await self.storage.devices.device_ids_of_users(everyone) if everyone else {}
        targets: list[tuple[str, str, JsonDict]] = []
        total = 0
        for user_id, device_id, content, size in sized:
            device_ids = devices.get(user_id, []) if device_id == "*" else [device_id]
            total += size * len(device_ids)
            targets.extend((user_id, target, content) for target in device_ids)
            if len(targets) > MAX_TO_DEVICE_QUEUED or total > MAX_TO_DEVICE_QUEUED_BYTES:
                raise TooLarge(
                    f"At most {MAX_TO_DEVICE_QUEUED} to-device messages and"
                    f" {MAX_TO_DEVICE_QUEUED_BYTES} bytes a request, with '*' counted as each device"
                )
        return targets

    async def send_to_device(
        self,
        sender: str,
        sender_device: str,
        event_type: str,
        txn_id: str,
        body: JsonDict,
    ) -> None:
        """Queue to-device messages; `*` names every device of the user."""
        if self.forward_to_device is not None:
            args = {"sender": sender, "sender_device": sender_device, "type": event_type}
            await self.forward_to_device("send_to_device", {**args, "txn_id": txn_id, "body": body})
            return
        messages = body.get("messages")
        if not isinstance(messages, dict):
            raise MatrixError("'messages' must be an object", "M_BAD_JSON")
        if len(json.dumps(messages)) > MAX_TO_DEVICE_BYTES * 4:
            raise TooLarge("To-device payload too large")
        remote: dict[str, JsonDict] = {}
        sized: list[tuple[str, str, JsonDict, int]] = []  # local (user, device or *, content, size)
        for user_id, devices in messages.items():
            if not isinstance(devices, dict):
                raise MatrixError("messages values must be objects", "M_BAD_JSON")
            if self.federation is not None and self.federation.is_remote(user_id):
                remote[user_id] = devices  # checked below, then queued for the user's server
            for device_id, content in devices.items():
                if not isinstance(content, dict):
                    raise MatrixError("to-device contents must be objects", "M_BAD_JSON")
                size = len(json.dumps(content))
                if size > MAX_TO_DEVICE_BYTES:
                    raise TooLarge("A to-device message is larger than 64 KiB")
                if user_id not in remote:
                    sized.append((str(user_id), str(device_id), content, size))
        targets = await self._expand_to_device_targets(sized)
        if self.ratelimiter is not None and sender_device:
            # A local client's messages, each device one (a request past the burst still goes
            # through once, then waits for the bucket to refill: a room key for a big room).
            cost = len(targets) + sum(len(devices) for devices in remote.values())
            self.ratelimiter.check_user("to_device", sender, cost, overdraw=True)
        if remote:
            # Queued durably before the client is answered: never lost, in order per server.
            await self.federation.send_to_device(sender, sender_device, event_type, txn_id, remote)
        if not targets:
            return
        positions = [self.to_device.allocate() for _ in targets]
        try:
            rows = [
                (pos, user_id, device_id, {"type": event_type, "sender": sender, "content": content})
                for pos, (user_id, device_id, content) in zip(positions, targets, strict=True)
            ]
            _, dropped = await self.store.add_to_device(
                sender, sender_device, txn_id, rows, self.clock.time_ms(), self.max_queued_per_device
            )
            if dropped:
                log.warn(
                    "{n} to-device messages from {sender} not queued: their devices' queues are full",
                    n=dropped,
                    sender=sender,
                )
            # Before the positions count as done, so a sync that can see them looks for them.
            for pos, user_id, device_id, _ in rows:
                self._queued_upto[(user_id, device_id)] = max(
                    pos, self._queued_upto.get((user_id, device_id), 0)
                )
        finally:
            for pos in positions:
                self.to_device.done(pos)
        self.notifier.wake_users({user_id for user_id, _, _ in targets})
        if self.replicate is not None:
            self.replicate(
                "to_device",
                [{"position": pos, "user_id": u, "device_id": d} for pos, u, d, _ in rows],
            )

    async def receive_remote_to_device(
        self,
        sender: str,
        message_id: str,
        event_type: str,
        messages: JsonDict,
        is_ours: Callable[[str], bool],
    ) -> None:
        """An m.direct_to_device EDU: queued for our users' devices as a local send is; the
        txn table keys on (sender, device, txn id), and a remote sender has no device of
        ours, so (sender, "", message_id) delivers it once however often it is sent."""
        local = {u: d for u, d in messages.items() if is_ours(str(u))}
        if local:
            await self.send_to_device(sender, "", event_type, message_id, {"messages": local})

    async def to_device_for_sync(
        self, user_id: str, device_id: str, since: int, upto: int
    ) -> tuple[list[JsonDict], int]:
        """Messages after `since` (deleting those up to it: the device has them) and the position reached.

        Most syncs have no to-device traffic: once a device's queue was read from the
        database, what is queued for it later is known here, so those syncs touch no table.
        """
        key = (user_id, device_id)
        queued = self._queued_upto.get(key, 0)
        deleted = self._deleted_upto.get(key, 0)
        if key in self._loaded and queued <= since:
            if since > deleted and queued > deleted:
                await self.store.delete_to_device_upto(user_id, device_id, since)
                self._deleted_upto[key] = since
            return [], upto
        if since > 0:
            await self.store.delete_to_device_upto(user_id, device_id, since)
            self._deleted_upto[key] = since
        self._loaded.add(key)
        if since >= upto:
            return [], upto
        rows = await self.store.to_device_for(user_id, device_id, since, upto, TO_DEVICE_BATCH)
        reached = rows[-1][0] if len(rows) == TO_DEVICE_BATCH else upto
        return [m for _, m in rows], reached


def _device_keys_well_formed(keys: JsonDict) -> bool:
    def key_map(value: Any) -> bool:
        return isinstance(value, dict) and all(
            isinstance(k, str) and ":" in k and isinstance(v, str) for k, v in value.items()
        )

    # Signatures are checked next: a malformed one is an invalid signature.
    algorithms = keys["algorithms"]
    return len(algorithms) <= 100 and all(isinstance(a, str) for a in algorithms) and key_map(keys["keys"])


def _key_rows(body: JsonDict, field: str) -> list[tuple[str, str, JsonDict | str]]:
    """The (algorithm, key id, key) rows of an upload's `one_time_keys` or `fallback_keys`.

    @raise MatrixError: the field is not an object of "algorithm:id" to key.
    """
    keys = body.get(field)
    if keys is None:
        return []
    if not isinstance(keys, dict):
        raise MatrixError(f"'{field}' must be an object", "M_BAD_JSON")
    rows: list[tuple[str, str, JsonDict | str]] = []
    for full_id, key in keys.items():
        algorithm, _, key_id = str(full_id).partition(":")
        if not algorithm or not key_id or not isinstance(key, dict | str):
            raise MatrixError(f"Bad key id {full_id!r}", "M_BAD_JSON")
        # Both parts are in the table's primary key: PostgreSQL refuses an index
        # entry over ~2.7 kB, and real ids are tens of characters.
        if len(full_id) > MAX_KEY_ID_LENGTH:
            raise MatrixError(f"Key ids are at most {MAX_KEY_ID_LENGTH} characters", "M_INVALID_PARAM")
        # Kept as uploaded: an unsigned curve25519 key is a bare string, and a claim
        # must hand it back as one (spec: one-time keys are string | KeyObject).
        rows.append((algorithm, key_id, key))
    return rows
