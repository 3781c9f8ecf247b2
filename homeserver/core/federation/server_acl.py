"""Server ACLs (`m.room.server_acl`, spec: Server Access Control Lists): may a server take
part in a room?

Pure: the caller passes the room's current `m.room.server_acl` content (None when the
room has none). Every room-scoped federation route calls `server_allowed(origin, acl)`
before anything else and answers 403 `M_FORBIDDEN` when it is False (docs/federation.md).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from homeserver.core.globs import glob_fullmatch


def server_allowed(server_name: str, acl_content: dict[str, Any] | None) -> bool:
    """True when `server_name` (with or without a port) may take part under this ACL.

    The spec's order: the port is ignored; an IP literal is refused when
    `allow_ip_literals` is false; a `deny` match refuses (deny wins over allow); an
    `allow` match admits; anything else is refused (a missing `allow` allows nobody).
    Globs take `*` and `?`; matching ignores case, as DNS names do (Synapse does the
    same), so `EVIL.example` cannot slip past a deny of `evil.example`.
    """
    if acl_content is None:
        return True
    host = _host_of(server_name).lower()
    allow_ip = acl_content.get("allow_ip_literals", True)
    # A non-boolean is read as the default, as Synapse reads it: the event is in the
    # room, and every server must read it the same way.
    if not isinstance(allow_ip, bool):
        allow_ip = True
    if not allow_ip and _is_ip_literal(host):
        return False
    if any(_matches(entry, host) for entry in _entries(acl_content.get("deny"))):
        return False
    return any(_matches(entry, host) for entry in _entries(acl_content.get("allow")))


def _host_of(server_name: str) -> str:
    """The server name without its port: `[::1]:8448` -> `[::1]`, `a.b:80` -> `a.b`."""
    if server_name.startswith("["):
        end = server_name.find("]")
        return server_name[: end + 1] if end != -1 else server_name
    return server_name.rsplit(":", 1)[0] if ":" in server_name else server_name


def _is_ip_literal(host: str) -> bool:
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _entries(value: Any) -> list[str]:
    # Entries that are not strings are skipped (one odd entry must not void the list).
    if not isinstance(value, list):
        return []
    return [e for e in value if isinstance(e, str)]


def _matches(glob: str, host: str) -> bool:
    # `*` any run of characters (dots too: the spec's `*.evil.com` covers deeper names),
    # `?` exactly one; everything else literal. Not a regex: an ACL comes from any server
    # in the room, and a backtracking glob would stall every request (homeserver/core/globs.py).
    return glob_fullmatch(glob.lower(), host)


def room_acl(state: Any) -> dict[str, Any] | None:
    """The `m.room.server_acl` content of a room's current state (a RoomHead), or None
    when the room has none. An ACL event with empty content is an ACL: it allows nobody."""
    event = state.get("m.room.server_acl", "") if state is not None else None
    content = getattr(event, "content", None)
    return content if isinstance(content, dict) else None


def check_server_allowed(origin: str, state: Any) -> None:
    """For the room-scoped federation routes, right after `require_origin`: 403
    M_FORBIDDEN when the room's ACL (from its RoomHead, `await hs.room_heads.get(room_id)`)
    does not admit `origin`."""
    from homeserver.errors import Forbidden

    if not server_allowed(origin, room_acl(state)):
        raise Forbidden(f"Server {origin} is banned from this room by its server ACL")
