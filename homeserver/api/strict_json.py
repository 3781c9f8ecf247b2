"""Strict JSON for bodies other servers sign: what two parsers could read differently is
refused rather than guessed, since a signature covers one reading of the bytes.

Refused: NaN and Infinity (not JSON: M_NOT_JSON), and with M_BAD_JSON a key given twice
in one object, an integer outside canonical JSON's range (±(2**53 - 1)), a number
that overflows to infinity (1e400) and a lone surrogate escape (`"\\ud800"`: no UTF-8
encodes it, so canonical JSON, hence any signature or event ID, cannot be computed)."""

from __future__ import annotations

import json
import math
from typing import Any

from homeserver.errors import BadJson, NotJson
from homeserver.json_encoding import has_lone_surrogate

MAX_SAFE_INT = 2**53 - 1


class _Refused(ValueError):
    def __init__(self, error: BadJson | NotJson) -> None:
        super().__init__(error.message)
        self.error = error


def _no_constant(name: str) -> Any:
    raise _Refused(NotJson(f"Content not JSON: {name} is not a JSON value"))


# JSON as RFC 8259 has it: json.loads also takes NaN, Infinity and -Infinity, which a body or
# frame would then carry on (account data stored them as null, a pong echoed them back).
# Its refusal is a ValueError, as any other malformed JSON.
JSON_DECODER = json.JSONDecoder(parse_constant=_no_constant)


def _int(text: str) -> int:
    # Past 17 characters the value is out of range anyway: refused before int() works on it.
    value = int(text) if len(text) <= 17 else MAX_SAFE_INT + 1
    if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
        raise _Refused(BadJson("Integers must be within ±(2**53 - 1) (canonical JSON)"))
    return value


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(BadJson(f"The number {text[:40]} is out of range"))
    return value


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Refused(BadJson(f"The key {key[:80]!r} appears twice in one object"))
            seen.add(key)
    return result


_DECODER = json.JSONDecoder(
    object_pairs_hook=_object, parse_int=_int, parse_float=_float, parse_constant=_no_constant
)


def loads_strict(raw: bytes) -> Any:
    """The JSON value of `raw`, or M_NOT_JSON / M_BAD_JSON saying what is wrong."""
    try:
        text = raw.decode("utf-8")
        value = _DECODER.decode(text)
    except _Refused as e:
        raise e.error from None
    except (ValueError, UnicodeDecodeError, RecursionError):
        # RecursionError: deeply nested arrays are malformed input, not a server error.
        raise NotJson("Content not JSON.") from None
    check_unicode(raw, value)
    return value


def check_unicode(raw: bytes, value: Any) -> None:
    """M_BAD_JSON when the value parsed from `raw` holds a lone surrogate (from a `\\ud800`
    escape): no UTF-8 encodes it, so it could be neither hashed, signed nor stored."""
    if has_lone_surrogate(raw, value):
        raise BadJson("Strings must be Unicode text: a lone surrogate is not")
