"""Strict parsing of the admin API's query parameters (Synapse's names and defaults)."""

from __future__ import annotations

from homeserver.plugins import ApiRequest, MatrixError


def bool_param(request: ApiRequest, name: str, default: bool) -> bool:
    raw = request.query_param(name)
    if raw is None or raw == "":
        return default
    if raw not in ("true", "false"):
        raise MatrixError(f"'{name}' must be true or false", "M_INVALID_PARAM")
    return raw == "true"


def optional_bool_param(request: ApiRequest, name: str) -> bool | None:
    return bool_param(request, name, False) if request.query_param(name) else None


def page_params(request: ApiRequest, default_limit: int = 100) -> tuple[int, int]:
    """`from` (an offset; Synapse's tokens are offsets written as strings) and `limit`."""
    offset = request.int_param("from", 0)
    limit = request.int_param("limit", default_limit)
    if offset < 0:
        raise MatrixError("'from' must not be negative", "M_INVALID_PARAM")
    if limit < 0:
        raise MatrixError("'limit' must not be negative", "M_INVALID_PARAM")
    return offset, limit


def ascending(request: ApiRequest, default: str = "f") -> bool:
    direction = request.query_param("dir") or default
    if direction not in ("f", "b"):
        raise MatrixError("'dir' must be f or b", "M_INVALID_PARAM")
    return direction == "f"


def next_token(offset: int, shown: int, total: int) -> dict[str, int]:
    return {"next_token": offset + shown} if offset + shown < total else {}
