"""Events as clients see them, encoded once.

A client event is the PDU minus federation fields, plus `event_id` and an
`unsigned` block. Every recipient of an event in a sync gets the same bytes, so
each event is JSON-encoded once and cached (`EncodedEvents`); responses are
assembled around those bytes by `dumps_with_raw`. Only the sending device sees
`unsigned.transaction_id`, so that variant is encoded separately, on demand.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any

from homeserver.events.redaction import redact
from homeserver.json_encoding import dumps_text
from homeserver.storage.events import StoredEvent

_CACHE_SIZE = 20_000


class RawJson:
    """Already-encoded JSON, embedded verbatim by `dumps_with_raw`."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _encode(obj: Any) -> str:
    return dumps_text(obj)


# A private-use character: json.dumps(ensure_ascii=False) writes it unescaped, so a
# RawJson leaf comes out as the JSON string "<MARK><index>" and is swapped for its text.
_MARK = "\ue000"
_PLACEHOLDER = re.compile('"' + _MARK + '([0-9]+)"')


def dumps_with_raw(obj: Any) -> str:
    """json.dumps for a skeleton of dicts and lists whose leaves may be RawJson.

    The skeleton goes through the C encoder once, RawJson leaves as numbered
    placeholders, which are then replaced by their text. A string elsewhere in the
    skeleton (user content) that looks like a placeholder makes the counts differ:
    then the slow, exact path runs instead.
    """
    raws: list[str] = []

    def placeholder(o: Any) -> str:
        if isinstance(o, RawJson):
            raws.append(o.text)
            return f"{_MARK}{len(raws) - 1}"
        raise TypeError(f"{type(o).__name__} is not JSON serializable")

    text = dumps_text(obj, default=placeholder)
    if not raws:
        return text
    if text.count('"' + _MARK) != len(raws):
        return _dumps_slowly(obj)
    return _PLACEHOLDER.sub(lambda m: raws[int(m.group(1))], text)


def _dumps_slowly(obj: Any) -> str:
    if isinstance(obj, RawJson):
        return obj.text
    if isinstance(obj, dict):
        return "{" + ",".join(_encode(str(k)) + ":" + _dumps_slowly(v) for k, v in obj.items()) + "}"
    if isinstance(obj, list | tuple):
        return "[" + ",".join(_dumps_slowly(v) for v in obj) + "]"
    return _encode(obj)


def client_event(
    ev: StoredEvent,
    room_version: str,
    *,
    include_room_id: bool = True,
    redaction: StoredEvent | None = None,
    txn_id: str | None = None,
) -> dict[str, Any]:
    """The client format of a stored event (spec: Client-Server API, "Room event format")."""
    pdu = ev.pdu
    content = pdu.get("content", {})
    unsigned: dict[str, Any] = dict(ev.unsigned_extra)
    if redaction is not None:
        content = redact(pdu, room_version).get("content", {})
        unsigned.pop("prev_content", None)
        unsigned["redacted_because"] = client_event(redaction, room_version, include_room_id=include_room_id)
    out: dict[str, Any] = {
        "type": pdu["type"],
        "content": content,
        "sender": pdu["sender"],
        "origin_server_ts": pdu["origin_server_ts"],
        "event_id": ev.event_id,
    }
    if include_room_id:
        out["room_id"] = ev.room_id
    if "state_key" in pdu:
        out["state_key"] = pdu["state_key"]
    if pdu["type"] == "m.room.redaction":
        # v11 moved `redacts` into content; clients read either, so give both.
        redacts = pdu.get("redacts") or (pdu.get("content") or {}).get("redacts")
        if redacts is not None:
            out["redacts"] = redacts
            if redaction is None:
                out["content"] = {**content, "redacts": redacts}
    if txn_id is not None:
        unsigned["transaction_id"] = txn_id
    if unsigned:
        out["unsigned"] = unsigned
    return out


class EncodedEvents:
    """An LRU of encoded client events, per (event id, with room id?) and the redaction state.

    Entries hold only strings (and None) in plain tuples, which the garbage collector stops
    tracking after its first pass over them: a cache of RawJson objects would be 40,000
    objects for every full collection to walk.
    """

    def __init__(self) -> None:
        self._cache: OrderedDict[tuple[str, bool], tuple[str | None, str]] = OrderedDict()

    def get(
        self, ev: StoredEvent, room_version: str, redaction: StoredEvent | None, include_room_id: bool
    ) -> RawJson:
        key = (ev.event_id, include_room_id)
        redacted_by = redaction.event_id if redaction is not None else None
        hit = self._cache.get(key)
        if hit is not None and hit[0] == redacted_by:
            self._cache.move_to_end(key)
            return RawJson(hit[1])
        text = _encode(client_event(ev, room_version, include_room_id=include_room_id, redaction=redaction))
        self._cache[key] = (redacted_by, text)
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return RawJson(text)

    def invalidate(self, event_id: str) -> None:
        self._cache.pop((event_id, True), None)
        self._cache.pop((event_id, False), None)
