"""What other servers may ask about our users' devices and keys (Server-Server API,
"End-to-End Encryption" and "Device Management"): GET /user/devices/{userId},
POST /user/keys/query and POST /user/keys/claim.

Any server that signs its request may ask, as with Synapse: it needs the keys to encrypt
for our users before it shares a room with them (an invite's first message). What it
gets is what our users publish for everyone anyway, without device display names (they
say where one uses Matrix; Synapse leaves them out by default too) and without anyone's
user-signing key or signatures (those are for the owner's eyes only).
"""

from __future__ import annotations

from typing import Any

from homeserver.core.e2ee import KeyService, check_claim_size, check_query_size
from homeserver.core.rooms import check_user_id
from homeserver.errors import BadJson, InvalidParam
from homeserver.storage import Storage

JsonDict = dict[str, Any]


def _without_display_name(keys: JsonDict) -> JsonDict:
    unsigned = {k: v for k, v in (keys.get("unsigned") or {}).items() if k != "device_display_name"}
    out = {k: v for k, v in keys.items() if k != "unsigned"}
    return out | ({"unsigned": unsigned} if unsigned else {})


class FederationUserKeys:
    def __init__(self, server_name: str, storage: Storage, keys: KeyService) -> None:
        self.server_name = server_name
        self.storage = storage
        self.keys = keys

    def _is_ours(self, user_id: str) -> bool:
        return user_id.partition(":")[2] == self.server_name

    async def devices(self, user_id: str) -> JsonDict:
        """GET /_matrix/federation/v1/user/devices/{userId}: the devices with keys, the list's
        stream position (what our m.device_list_update EDUs count from) and the master and
        self-signing keys."""
        check_user_id(user_id, "userId")
        if not self._is_ours(user_id):
            raise InvalidParam(f"{user_id} is not a user of this server")
        # Read the position first: a change landing in between is then announced after it.
        stream_id = await self.storage.e2ee.latest_change(user_id)
        keys = (await self.storage.e2ee.query_device_keys({user_id: []})).get(user_id, {})
        # Devices without keys are left out (the spec's `keys` is required; Synapse does so).
        listed = [{"device_id": d, "keys": _without_display_name(k)} for d, k in sorted(keys.items())]
        answer: JsonDict = {"user_id": user_id, "stream_id": stream_id, "devices": listed}
        cross = (await self.storage.e2ee.get_cross_signing_keys([user_id])).get(user_id, {})
        for key_type, field in (("master", "master_key"), ("self_signing", "self_signing_key")):
            if key_type in cross:
                answer[field] = _own_signatures(cross[key_type], user_id)
        return answer

    async def query(self, body: Any) -> JsonDict:
        """POST /_matrix/federation/v1/user/keys/query: keys of our users; others ignored."""
        wanted = body.get("device_keys") if isinstance(body, dict) else None
        if not isinstance(wanted, dict):
            raise BadJson("'device_keys' must be an object")
        # The same bounds as our clients' requests (core/e2ee.py): a server asks for its
        # users' batches as they asked it.
        check_query_size(wanted)
        ours: dict[str, list[str]] = {}
        for user_id, devices in wanted.items():
            check_user_id(user_id, "device_keys")
            if not isinstance(devices, list) or not all(isinstance(d, str) for d in devices):
                raise BadJson("device_keys values must be lists of device ids")
            if self._is_ours(user_id):
                ours[user_id] = devices
        answer = await self.keys.query_local("", ours)
        answer["device_keys"] = {
            u: {d: _without_display_name(k) for d, k in devices.items()}
            for u, devices in answer["device_keys"].items()
        }
        answer.pop("user_signing_keys", None)
        answer.pop("failures", None)
        return answer

    async def claim(self, body: Any) -> JsonDict:
        """POST /_matrix/federation/v1/user/keys/claim: one key per device of our users."""
        wanted = body.get("one_time_keys") if isinstance(body, dict) else None
        if not isinstance(wanted, dict):
            raise BadJson("'one_time_keys' must be an object")
        check_claim_size(wanted)
        claims: dict[str, dict[str, str]] = {}
        for user_id, devices in wanted.items():
            check_user_id(user_id, "one_time_keys")
            if not isinstance(devices, dict) or not all(
                isinstance(d, str) and isinstance(a, str) and d and a for d, a in devices.items()
            ):
                raise BadJson("one_time_keys values must map device ids to algorithms")
            if self._is_ours(user_id):
                claims[user_id] = devices
        answer = await self.keys.claim_local(claims)
        answer.pop("failures", None)
        return answer


def _own_signatures(key: JsonDict, owner: str) -> JsonDict:
    signatures = key.get("signatures")
    if not isinstance(signatures, dict):
        return key
    return {**key, "signatures": {u: s for u, s in signatures.items() if u == owner}}
