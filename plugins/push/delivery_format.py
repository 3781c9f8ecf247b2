"""The push gateway request for one notification (spec: Push Gateway API,
`POST /_matrix/push/v1/notify`). Pure: the caller looks up names and counts.

Three shapes:

- `event_id_only` (the pusher's `data.format`), and every event of an encrypted room
  whatever the format: the event and room ids, the counts, the priority and the device.
  The gateway (and the push service behind it, Google or Apple) learns no content and no
  names; the app fetches the event itself.
- the full format otherwise: also the type, sender, sender's display name, room name,
  whether a membership event targets the user, and the content. Never the content of an
  `m.room.encrypted` event (one in a room without encryption state takes the short shape).
- counts only (`badge_body`): no event at all, the user's new unread count after a read
  receipt, so the app can set its icon's badge without showing anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from homeserver.plugins import PushDecision, Pusher


@dataclass(frozen=True)
class EventFacts:
    """What the full format says beyond the event itself (looked up by the caller)."""

    room_encrypted: bool
    room_name: str | None
    sender_display_name: str | None


def is_short(event: dict[str, Any], pusher: Pusher, facts: EventFacts) -> bool:
    return (
        pusher.data.get("format") == "event_id_only"
        or facts.room_encrypted
        or event.get("type") == "m.room.encrypted"
    )


def priority(event: dict[str, Any], decision: PushDecision) -> str:
    """high: it makes a sound, or it is an invite for the user or a call; else low."""
    if decision.tweaks.get("sound"):
        return "high"
    if event.get("type") == "m.call.invite":
        return "high"
    content = event.get("content")
    if (
        event.get("type") == "m.room.member"
        and event.get("state_key") == decision.user_id
        and isinstance(content, dict)
        and content.get("membership") == "invite"
    ):
        return "high"
    return "low"


def device_entry(pusher: Pusher, tweaks: dict[str, Any]) -> dict[str, Any]:
    """The `devices` entry of a pusher: its data but the URL (the gateway's own address)."""
    return {
        "app_id": pusher.app_id,
        "pushkey": pusher.pushkey,
        "pushkey_ts": pusher.pushkey_ts,
        "data": {k: v for k, v in pusher.data.items() if k != "url"},
        "tweaks": tweaks,
    }


def notify_body(
    event: dict[str, Any], pusher: Pusher, decision: PushDecision, facts: EventFacts, unread: int
) -> dict[str, Any]:
    notification: dict[str, Any] = {
        "event_id": event["event_id"],
        "room_id": event["room_id"],
        "prio": priority(event, decision),
        "counts": {"unread": unread},
    }
    if not is_short(event, pusher, facts):
        notification["type"] = event["type"]
        notification["sender"] = event["sender"]
        if facts.sender_display_name is not None:
            notification["sender_display_name"] = facts.sender_display_name
        if facts.room_name is not None:
            notification["room_name"] = facts.room_name
        if event["type"] == "m.room.member":
            notification["user_is_target"] = event.get("state_key") == decision.user_id
        content = event.get("content")
        if isinstance(content, dict) and content:
            notification["content"] = content
    notification["devices"] = [device_entry(pusher, dict(decision.tweaks))]
    return {"notification": notification}


def badge_body(pusher: Pusher, unread: int) -> dict[str, Any]:
    """A counts-only notification: no event fields, low priority (nothing to alert)."""
    notification = {"prio": "low", "counts": {"unread": unread}, "devices": [device_entry(pusher, {})]}
    return {"notification": notification}
