"""Small checks for request bodies: the right type or M_BAD_JSON / M_MISSING_PARAM."""

from __future__ import annotations

from typing import Any, TypeVar

from homeserver.errors import BadJson, MissingParam

T = TypeVar("T")


def required(body: dict[str, Any], key: str, kind: type[T]) -> T:
    if key not in body or body[key] is None:
        raise MissingParam(f"Missing '{key}'")
    return of_type(body, key, kind)  # type: ignore[return-value]


def optional(body: dict[str, Any], key: str, kind: type[T], default: T | None = None) -> T | None:
    if key not in body or body[key] is None:
        return default
    return of_type(body, key, kind)


def of_type(body: dict[str, Any], key: str, kind: type[T]) -> T:
    value = body[key]
    # bool is an int in Python; JSON keeps them apart.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadJson(f"'{key}' must be {_names.get(kind, kind.__name__)}")
    return value


_names = {str: "a string", bool: "a boolean", int: "an integer", dict: "an object", list: "a list"}
