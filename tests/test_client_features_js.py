"""matrix-js-sdk's own calls for issue 14's everyday features (tests/js/client_features.mjs),
with who may not use them: a non-member, a left member and an ignored user.

The endpoints' rules are tested in depth over HTTP and matrix-nio elsewhere (test_room_tags,
test_spaces, test_room_upgrade, test_jump_to_date, test_search, test_user_directory,
test_reports, test_ignore_users, test_thread_list, test_knock); this checks that the SDK's
requests and its reading of the answers work against this server.
"""

from __future__ import annotations

import secrets

from conftest import ServerProcess
from js_runner import node_or_skip, run_script


def test_js_sdk_client_features(server: ServerProcess) -> None:
    node = node_or_skip()
    suffix = secrets.token_hex(3)
    users = [server.register(f"jsfeat_{name}_{suffix}") for name in ("alice", "bob", "carol", "dave")]
    out = run_script(node, "client_features.mjs", server.base_url, *(u["access_token"] for u in users))
    alice, bob, carol, dave = out["users"]
    room, early, late = out["room"], out["events"]["early"], out["events"]["late"]
    forbidden, not_found = (
        {"status": 403, "errcode": "M_FORBIDDEN"},
        {"status": 404, "errcode": "M_NOT_FOUND"},
    )

    tags = out["tags"]
    assert tags["set"] == {"tags": {"m.favourite": {"order": 0.25}, "u.work": {}}}
    assert tags["after_delete"] == {"tags": {"m.favourite": {"order": 0.25}}}
    assert tags["non_member_set"] == forbidden

    hierarchy = out["hierarchy"]
    assert hierarchy["rooms"] == [
        {"room_id": hierarchy["space"], "room_type": "m.space", "name": "a space"},
        {"room_id": room, "room_type": None, "name": "features"},
    ]
    assert hierarchy["child_via"] == [room]
    assert hierarchy["non_member"] == forbidden and hierarchy["left_member"] == forbidden

    # Needs org.matrix.msc3266 in /versions, else the SDK asks the old im.nheko.summary path.
    summary = out["summary"]
    assert summary["own"] == {
        "room_id": room,
        "name": "features",
        "membership": "join",
        "join_rule": "invite",
    }
    assert summary["non_member"] == not_found  # a private room's existence is not told

    jump = out["jump"]
    assert jump["forward"] == early and jump["backward_from_now"] == late
    assert jump["non_member"] == forbidden
    # Dave sees the room up to his leave: the nearest event before now is not Alice's later one.
    assert jump["left_member_now"]["ok"]["event_id"] not in (early, late)

    search = out["search"]
    assert search["member"]["ids"] == sorted([early, late])
    assert search["non_member"] == {"count": 0, "ids": []}
    assert search["left_member"]["ids"] == [early]

    assert out["directory"] == {"shares_room": [bob], "shares_none": []}

    reports = out["reports"]
    assert reports["member"] == {"ok": {}} and reports["room"] == {"ok": {}}
    assert reports["non_member"] == not_found
    assert reports["left_member_later_event"] == not_found  # sent after Dave left: not his to see
    # Reporting a user needs no shared room; a blank reason is a reason, a missing one is not.
    invalid = {"status": 400, "errcode": "M_INVALID_PARAM"}
    assert out["user_reports"] == {
        "shares_room": {"ok": {}},
        "shares_none": {"ok": {}},
        "unknown_user": not_found,
        "not_a_user_id": invalid,
        "self": invalid,
        "missing_reason": {"status": 400, "errcode": "M_MISSING_PARAM"},
        "reason_not_text": {"status": 400, "errcode": "M_BAD_JSON"},
        "no_token": {"status": 401, "errcode": "M_MISSING_TOKEN"},
    }

    threads = out["threads"]
    assert threads["roots"] == [threads["root"]] == threads["participated_by_alice"]
    assert threads["bundle"] == {"count": 1, "latest": threads["reply"], "mine": True}
    assert threads["non_member"] == forbidden
    assert threads["left_member"] == {"ok": {"chunk": []}}  # the thread began after Dave left

    upgrade = out["upgrade"]
    assert upgrade["by_member"] == forbidden and upgrade["by_non_member"] == forbidden
    assert upgrade["tombstone"] == upgrade["replacement"]
    assert upgrade["version"] == "11" and upgrade["name"] == "to upgrade"
    assert upgrade["predecessor"] == upgrade["old"]
    assert upgrade["old_send"] == forbidden  # the tombstoned room is closed to members

    knock = out["knock"]
    assert knock["room_id"] == knock["expected"]
    assert (knock["membership"], knock["reason"]) == ("knock", "let me in")
    assert knock["invite_only"] == forbidden and knock["already_member"] == forbidden

    ignore = out["ignore"]
    assert ignore["is_ignored"] is True and ignore["list"] == [bob]
    assert ignore["carol_seen"] is True
    assert ignore["bob_seen"] is False and ignore["bob_in_room"] is False
    assert {alice, carol, dave} & set(ignore["list"]) == set()
    # Bob's messages (a mention too) neither count nor notify: Carol's one message does.
    counts = out["ignore_counts"]
    assert (counts["total"], counts["highlight"]) == (1, 0)
    assert counts["notified"] == [ignore["from_carol"]]
