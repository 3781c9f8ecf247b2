"""Small checks for request bodies: the right type or M_BAD_JSON / M_MISSING_PARAM."""

from __future__ import annotations

from typing import Any, TypeVar

from homeserver.errors import BadJson, MissingParam

T = TypeVar("T")

# Canonical JSON's integer range (spec: Appendices, Canonical JSON); a larger number
# would not fit the database's integer columns either.
MAX_SAFE_INTEGER = 2**53 - 1
# PostgreSQL cannot store U+0000 in text, so no request may carry it (on either engine).
NUL_MESSAGE = "strings must not contain U+0000"


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
    if kind is int and not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:  # type: ignore[operator]
        raise BadJson(f"'{key}' is out of range")
    return value


def contains_nul(value: Any) -> bool:
    """Whether any string (key or value) in a parsed JSON value holds U+0000."""
    stack = [value]
    while stack:  # a loop, not recursion: the body may be nested as deep as the parser allows
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


_names = {str: "a string", bool: "a boolean", int: "an integer", dict: "an object", list: "a list"}
