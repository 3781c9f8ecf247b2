"""X-Matrix request signatures (Server-Server API, "Request Authentication").

The origin signs a JSON object of the request, {method, uri, origin, destination,
content?}, and sends the signature in `Authorization: X-Matrix origin=...,destination=...,
key=...,sig=...`. These are pure functions: fetching the origin's key is the key ring's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from signedjson.sign import SignatureVerifyException, sign_json, verify_signed_json
from signedjson.types import SigningKey, VerifyKey

from homeserver.errors import Unauthorized

# One auth-param of RFC 9110: name=token or name="quoted string".
_PARAM = re.compile(r'\s*([A-Za-z0-9_\-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]+))\s*(?:,|$)')


@dataclass(frozen=True)
class XMatrix:
    origin: str
    destination: str | None
    key_id: str
    signature: str


def signed_request_json(
    method: str, uri: str, origin: str, destination: str, content: Any = None
) -> dict[str, Any]:
    """The object both sides sign and check; `uri` is the path and query as sent."""
    request: dict[str, Any] = {"method": method, "uri": uri, "origin": origin, "destination": destination}
    if content is not None:
        request["content"] = content
    return request


def authorization_header(
    method: str, uri: str, origin: str, destination: str, key: SigningKey, content: Any = None
) -> str:
    """The Authorization header value our outbound request carries."""
    signed = sign_json(signed_request_json(method, uri, origin, destination, content), origin, key)
    key_id = f"{key.alg}:{key.version}"
    signature = signed["signatures"][origin][key_id]
    return f'X-Matrix origin="{origin}",destination="{destination}",key="{key_id}",sig="{signature}"'


def parse_authorization(header: str | None) -> XMatrix:
    """The X-Matrix parameters of an Authorization header, or 401 M_UNAUTHORIZED saying what
    is wrong with it."""
    if not header:
        raise Unauthorized("Missing Authorization header: federation requests must be signed (X-Matrix)")
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != "x-matrix":
        raise Unauthorized("The Authorization header's scheme must be X-Matrix")
    params: dict[str, str] = {}
    pos = 0
    while pos < len(rest):
        m = _PARAM.match(rest, pos)
        if m is None or m.end() == pos:
            raise Unauthorized("Malformed X-Matrix Authorization header")
        value = m.group(2) if m.group(2) is not None else m.group(3)
        params[m.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
        pos = m.end()
    missing = [name for name in ("origin", "key", "sig") if not params.get(name)]
    if missing:
        raise Unauthorized(f"The X-Matrix Authorization header lacks {', '.join(missing)}")
    return XMatrix(params["origin"], params.get("destination"), params["key"], params["sig"])


def check_signature(request: dict[str, Any], auth: XMatrix, verify_key: VerifyKey) -> None:
    """401 M_UNAUTHORIZED unless `auth.signature` is `auth.origin`'s signature of `request`."""
    signed = dict(request, signatures={auth.origin: {auth.key_id: auth.signature}})
    try:
        verify_signed_json(signed, auth.origin, verify_key)
    except SignatureVerifyException:
        raise Unauthorized(f"Invalid X-Matrix signature from {auth.origin} with key {auth.key_id}") from None
