"""The spec's predefined push rules (spec: Client-Server API, Push Rules: Predefined Rules).

Clients need the ruleset before their first sync (matrix-js-sdk retries
`GET /pushrules/` forever without it; matrix-dart-sdk reads it from the
`m.push_rules` account data in sync). A user's changes are kept in their
`m.push_rules` account data and laid over these defaults.
"""

from __future__ import annotations

from typing import Any

NOTIFY = ["notify"]
SOUND = {"set_tweak": "sound", "value": "default"}
HIGHLIGHT = {"set_tweak": "highlight"}
NO_HIGHLIGHT = {"set_tweak": "highlight", "value": False}


def _rule(
    rule_id: str, conditions: list[dict[str, Any]], actions: list[Any], enabled: bool = True
) -> dict[str, Any]:
    return {
        "rule_id": rule_id,
        "default": True,
        "enabled": enabled,
        "conditions": conditions,
        "actions": actions,
    }


def _match(key: str, pattern: str) -> dict[str, Any]:
    return {"kind": "event_match", "key": key, "pattern": pattern}


def default_push_rules(user_id: str) -> dict[str, Any]:
    localpart = user_id[1:].split(":", 1)[0]
    override = [
        _rule(".m.rule.master", [], [], enabled=False),
        _rule(".m.rule.suppress_notices", [_match("content.msgtype", "m.notice")], []),
        _rule(
            ".m.rule.invite_for_me",
            [
                _match("type", "m.room.member"),
                _match("content.membership", "invite"),
                _match("state_key", user_id),
            ],
            ["notify", SOUND, NO_HIGHLIGHT],
        ),
        _rule(".m.rule.member_event", [_match("type", "m.room.member")], []),
        _rule(
            ".m.rule.is_user_mention",
            [{"kind": "event_property_contains", "key": "content.m\\.mentions.user_ids", "value": user_id}],
            ["notify", SOUND, HIGHLIGHT],
        ),
        _rule(
            ".m.rule.contains_display_name", [{"kind": "contains_display_name"}], ["notify", SOUND, HIGHLIGHT]
        ),
        _rule(
            ".m.rule.is_room_mention",
            [
                {"kind": "event_property_is", "key": "content.m\\.mentions.room", "value": True},
                {"kind": "sender_notification_permission", "key": "room"},
            ],
            ["notify", HIGHLIGHT],
        ),
        _rule(
            ".m.rule.roomnotif",
            [{"kind": "sender_notification_permission", "key": "room"}, _match("content.body", "@room")],
            ["notify", HIGHLIGHT],
        ),
        _rule(
            ".m.rule.tombstone",
            [_match("type", "m.room.tombstone"), _match("state_key", "")],
            ["notify", HIGHLIGHT],
        ),
        _rule(".m.rule.reaction", [_match("type", "m.reaction")], []),
        _rule(
            ".m.rule.suppress_edits",
            [{"kind": "event_property_is", "key": "content.m\\.relates_to.rel_type", "value": "m.replace"}],
            [],
        ),
    ]
    content = [
        {
            "rule_id": ".m.rule.contains_user_name",
            "default": True,
            "enabled": True,
            "pattern": localpart,
            "actions": ["notify", SOUND, HIGHLIGHT],
        }
    ]
    underride = [
        _rule(
            ".m.rule.call",
            [_match("type", "m.call.invite")],
            ["notify", {"set_tweak": "sound", "value": "ring"}],
        ),
        _rule(
            ".m.rule.encrypted_room_one_to_one",
            [{"kind": "room_member_count", "is": "2"}, _match("type", "m.room.encrypted")],
            ["notify", SOUND],
        ),
        _rule(
            ".m.rule.room_one_to_one",
            [{"kind": "room_member_count", "is": "2"}, _match("type", "m.room.message")],
            ["notify", SOUND],
        ),
        _rule(".m.rule.message", [_match("type", "m.room.message")], NOTIFY),
        _rule(".m.rule.encrypted", [_match("type", "m.room.encrypted")], NOTIFY),
    ]
    return {
        "global": {"override": override, "content": content, "room": [], "sender": [], "underride": underride}
    }
