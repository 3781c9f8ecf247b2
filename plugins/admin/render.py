"""The Synapse admin API's response shapes (element-hq/synapse docs/admin_api), so tools built
for it (synapse-admin, synadm) read ours unchanged. Synapse's quirks are kept on purpose:
`creation_ts` in seconds, 0/1 integers for the older flags, booleans for the newer ones."""

from __future__ import annotations

from typing import Any

from homeserver.plugins import (
    AdminMedia,
    DeviceRow,
    RegistrationToken,
    Report,
    RoomSummary,
    UserDetails,
    UserSummary,
)


def user_summary(u: UserSummary) -> dict[str, Any]:
    return {
        "name": u.user_id,
        "user_type": u.user_type,
        "is_guest": 0,
        "admin": int(u.is_admin),
        "deactivated": int(u.deactivated),
        "shadow_banned": int(u.shadow_banned),
        "displayname": u.displayname,
        "avatar_url": u.avatar_url,
        "creation_ts": u.created_ts // 1000,
        "approved": True,
        "erased": u.erased,
        "last_seen_ts": u.last_seen_ts,
        "locked": u.locked,
        "suspended": u.suspended,
    }


def user_details(d: UserDetails) -> dict[str, Any]:
    out = user_summary(d.summary)
    out.update(
        {
            "threepids": [
                {"medium": m, "address": a, "added_at": added, "validated_at": validated}
                for m, a, added, validated in d.threepids
            ],
            "appservice_id": None,
            "consent_server_notice_sent": None,
            "consent_version": None,
            "consent_ts": None,
            "external_ids": [],
        }
    )
    return out


def device(user_id: str, d: DeviceRow) -> dict[str, Any]:
    return {
        "device_id": d.device_id,
        "display_name": d.display_name,
        "last_seen_ip": d.last_seen_ip,
        "last_seen_ts": d.last_seen_ts,
        "last_seen_user_agent": None,
        "user_id": user_id,
    }


def whois(user_id: str, devices: list[DeviceRow]) -> dict[str, Any]:
    connections = [
        {"ip": d.last_seen_ip, "last_seen": d.last_seen_ts, "user_agent": None}
        for d in devices
        if d.last_seen_ts is not None
    ]
    return {"user_id": user_id, "devices": {"": {"sessions": [{"connections": connections}]}}}


def room_summary(r: RoomSummary) -> dict[str, Any]:
    return {
        "room_id": r.room_id,
        "name": r.name,
        "canonical_alias": r.canonical_alias,
        "joined_members": r.joined_members,
        "joined_local_members": r.joined_local_members,
        "version": r.version,
        "creator": r.creator,
        "encryption": r.encryption,
        "federatable": r.federatable,
        "public": r.public,
        "join_rules": r.join_rules,
        "guest_access": r.guest_access,
        "history_visibility": r.history_visibility,
        "state_events": r.state_events,
        "room_type": r.room_type,
    }


def room_details(r: RoomSummary, forgotten: bool = False) -> dict[str, Any]:
    out = room_summary(r)
    out.update({"avatar": r.avatar, "topic": r.topic, "joined_local_devices": None, "forgotten": forgotten})
    return out


def event_report(report: Report, room: RoomSummary | None, event_sender: str | None) -> dict[str, Any]:
    return {
        "id": report.report_id,
        "received_ts": report.received_ts,
        "room_id": report.room_id,
        "name": room.name if room is not None else None,
        "event_id": report.event_id,
        "user_id": report.reporter,
        "reason": report.reason,
        "score": report.score,
        "sender": event_sender,
        "canonical_alias": room.canonical_alias if room is not None else None,
    }


def registration_token(t: RegistrationToken) -> dict[str, Any]:
    return {
        "token": t.token,
        "uses_allowed": t.uses_allowed,
        "pending": t.pending,
        "completed": t.completed,
        "expiry_time": t.expiry_time,
    }


def media(m: AdminMedia) -> dict[str, Any]:
    return {
        "created_ts": m.created_ts,
        "last_access_ts": None,
        "media_id": m.media_id,
        "media_length": m.size,
        "media_type": m.content_type,
        "quarantined_by": m.quarantined_by,
        "safe_from_quarantine": False,
        "upload_name": m.upload_name,
    }
