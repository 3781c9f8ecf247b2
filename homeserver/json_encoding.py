"""Compact JSON encoding for the hot paths (responses, sync bodies, stored rows), by orjson.

orjson encodes 8-18x faster than the standard library here (measured on a sync
skeleton and an event: 20 -> 2.6 us, 5.3 -> 0.3 us). Its output is the same
compact UTF-8 JSON as `json.dumps(obj, ensure_ascii=False, separators=(",", ":"))`
up to float spelling (1e16 vs 1e+16). What it refuses (integers past 64 bits,
non-string keys, lone surrogates) goes to the standard library, which behaves
as before.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson


def dumps_bytes(obj: Any, default: Callable[[Any], Any] | None = None) -> bytes:
    try:
        return orjson.dumps(obj, default=default)
    except orjson.JSONEncodeError:
        return dumps_text_slowly(obj, default).encode("utf-8")


def dumps_text(obj: Any, default: Callable[[Any], Any] | None = None) -> str:
    try:
        return orjson.dumps(obj, default=default).decode("utf-8")
    except orjson.JSONEncodeError:
        return dumps_text_slowly(obj, default)


def dumps_text_slowly(obj: Any, default: Callable[[Any], Any] | None = None) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=default)


# Canonical JSON's integer range (spec: Appendices, Canonical JSON).
MAX_SAFE_INT = 2**53 - 1


def ints_in_canonical_range(value: Any) -> bool:
    """Whether every integer in a parsed JSON value is within ±MAX_SAFE_INT: one past 64 bits
    cannot go between processes (orjson, homeserver/workers/)."""
    stack = [value]
    while stack:  # a loop, not recursion: a body may be nested as deep as the parser allows
        item = stack.pop()
        if isinstance(item, int) and not isinstance(item, bool):
            if not -MAX_SAFE_INT <= item <= MAX_SAFE_INT:
                return False
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True
