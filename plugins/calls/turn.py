"""TURN credentials in coturn's REST-API scheme (`use-auth-secret`).

The username is `expiry:user_id` (expiry in Unix seconds) and the password the base64
HMAC-SHA1 of that username keyed with the secret shared with the TURN server. coturn
recomputes the HMAC and refuses a username whose expiry has passed, so the homeserver
and the TURN server share nothing but the secret: no per-user state, no callback.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

from plugins.calls.config import TurnConfig


def turn_password(secret: str, username: str) -> str:
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def turn_credentials(turn: TurnConfig, user_id: str, now_s: float) -> dict[str, Any]:
    """The spec's `/voip/turnServer` answer for `user_id`, valid for `turn.ttl_s` from now."""
    username = f"{int(now_s) + turn.ttl_s}:{user_id}"
    return {
        "username": username,
        "password": turn_password(turn.shared_secret, username),
        "uris": list(turn.uris),
        "ttl": turn.ttl_s,
    }
