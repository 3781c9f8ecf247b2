"""The server part of a user ID, as federation reads it to route and to check origins."""

from __future__ import annotations


def server_of(user_id: str) -> str:
    """Everything after the first colon; "" for a string without one (nobody's server)."""
    return user_id.partition(":")[2]
