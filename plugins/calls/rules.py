"""What call events mean for the call log: pure functions, no database, no clock.

1:1 calls (spec: Client-Server API, Voice over IP) are `m.call.*` room events; the
server reads them only in unencrypted rooms (in encrypted rooms they arrive as
`m.room.encrypted`). Group calls (MatrixRTC, MSC4143) are `org.matrix.msc3401.call.member`
state events, never encrypted: one per participating device, its content emptied when the
device leaves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ANSWERED = "answered"
MISSED = "missed"
REJECTED = "rejected"
BUSY = "busy"
FAILED = "failed"
OUTCOMES = (ANSWERED, MISSED, REJECTED, BUSY, FAILED)

RTC_MEMBER = "org.matrix.msc3401.call.member"
# Clients hang up with these when the call broke rather than a person ending it.
ERROR_REASONS = frozenset({"ice_failed", "ice_timeout", "user_media_failed", "unknown_error"})
# The spec's default when an invite has no (valid) lifetime: js-sdk rings for 60 s.
DEFAULT_LIFETIME_MS = 60_000
MAX_LIFETIME_MS = 10 * 60_000


def kind_of_offer(content: dict[str, Any]) -> str:
    """ "video" when the invite's SDP offer has a video media section, else "voice"."""
    offer = content.get("offer")
    sdp = offer.get("sdp") if isinstance(offer, dict) else None
    if isinstance(sdp, str) and any(line.startswith("m=video") for line in sdp.splitlines()):
        return "video"
    return "voice"


def invite_lifetime_ms(content: dict[str, Any]) -> int:
    lifetime = content.get("lifetime")
    if isinstance(lifetime, int) and not isinstance(lifetime, bool) and 0 < lifetime <= MAX_LIFETIME_MS:
        return lifetime
    return DEFAULT_LIFETIME_MS


def call_id_of(content: Any) -> str | None:
    call_id = content.get("call_id") if isinstance(content, dict) else None
    return call_id if isinstance(call_id, str) and call_id and len(call_id) <= 255 else None


def hangup_outcome(reason: Any, sender: str, caller: str, answered: bool) -> str:
    """The outcome of a call that ends with `m.call.hangup` from `sender`.

    An error ends it as failed, answered or not; `user_busy` is busy; else an answered call
    was answered, and an unanswered one was missed if the caller gave up (or it timed out)
    and rejected if the callee hung up on the ringing (version 0 clients reject that way).
    """
    if reason in ERROR_REASONS:
        return FAILED
    if reason == "user_busy":
        return BUSY
    if answered:
        return ANSWERED
    if reason == "invite_timeout" or sender == caller:
        return MISSED
    return REJECTED


@dataclass(frozen=True)
class RtcMembership:
    """One device's MatrixRTC membership state: joined (active) or left."""

    user_id: str
    slot: str  # the state key: one per device (or per user in the legacy form)
    call_id: str  # "" for the room's call
    active: bool
    kind: str


def rtc_membership(event: dict[str, Any]) -> RtcMembership | None:
    """Read an `org.matrix.msc3401.call.member` state event, in the per-device form
    (content = one membership, `{}` to leave) or the legacy per-user one
    (`memberships: [...]`, empty to leave). Only `m.call` applications count."""
    if event.get("type") != RTC_MEMBER or not isinstance(event.get("state_key"), str):
        return None
    content = event.get("content")
    if not isinstance(content, dict):
        return None
    sender = str(event.get("sender"))
    legacy = content.get("memberships")
    if isinstance(legacy, list):
        calls = [m for m in legacy if isinstance(m, dict) and m.get("application", "m.call") == "m.call"]
        membership = calls[0] if calls else {}
    else:
        membership = content if content.get("application", "m.call") == "m.call" else {}
    call_id = membership.get("call_id", "")
    if not isinstance(call_id, str):
        return None
    intent = membership.get("m.call.intent")
    kind = "voice" if intent in ("audio", "voice") else "video"
    return RtcMembership(sender, str(event["state_key"]), call_id, bool(membership), kind)
