"""Who sent an inbound federation request: the X-Matrix signature, checked against the
origin's current key (fetched through the key ring)."""

from __future__ import annotations

from typing import Any

from homeserver.core.clock import Clock
from homeserver.core.federation.discovery import split_server_name
from homeserver.core.federation.keys import KeyNotFound, KeyRing
from homeserver.core.federation.request_auth import check_signature, parse_authorization, signed_request_json
from homeserver.errors import Unauthorized


class RequestAuthenticator:
    def __init__(self, server_name: str, ring: KeyRing, clock: Clock) -> None:
        self.server_name = server_name
        self.ring = ring
        self.clock = clock

    async def origin_of(self, method: str, uri: str, authorization: str | None, content: Any) -> str:
        """The server that signed this request, or 401 M_UNAUTHORIZED saying why not.

        The destination must be us; the key must be the origin's and valid now."""
        auth = parse_authorization(authorization)
        if auth.destination is None:
            raise Unauthorized("The X-Matrix Authorization header lacks destination")
        if auth.destination != self.server_name:
            raise Unauthorized(
                f"This request is for {auth.destination}, not this server ({self.server_name})"
            )
        try:
            split_server_name(auth.origin)
        except ValueError:
            raise Unauthorized(f"The X-Matrix origin {auth.origin!r} is not a server name") from None
        if not auth.key_id.startswith("ed25519:"):
            raise Unauthorized(f"Unsupported key algorithm in {auth.key_id!r} (ed25519 only)")
        if auth.origin == self.server_name:
            raise Unauthorized("A request signed as this server did not come from it")
        try:
            verify_key = await self.ring.verify_key(auth.origin, auth.key_id, self.clock.time_ms())
        except KeyNotFound as e:
            raise Unauthorized(f"Cannot check the signature: {e}") from None
        except ValueError:
            raise Unauthorized(f"Malformed key id or key for {auth.origin}") from None
        check_signature(
            signed_request_json(method, uri, auth.origin, self.server_name, content), auth, verify_key
        )
        return auth.origin
