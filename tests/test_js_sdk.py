"""A real JavaScript client, matrix-js-sdk, against a real server process.

The users are registered from Python; `tests/js/rooms.mjs` logs their tokens in
with matrix-js-sdk, starts its sync loop and walks through DMs, a group, receipts,
typing, edits, redactions and pagination, printing `RESULT {json}`. Without
`node` the test skips, except in CI (`CI` set), where it fails. `make test`
installs the npm packages (`npm ci` in tests/js).
"""

from __future__ import annotations

from typing import Any

from conftest import ServerProcess
from js_runner import node_or_skip, run_script


def test_js_sdk_rooms(start_server: Any) -> None:
    node = node_or_skip()
    server: ServerProcess = start_server()
    tokens = [server.register(name)["access_token"] for name in ("jsalice", "jsbob", "jscarol")]
    result = run_script(node, "rooms.mjs", server.base_url, *tokens)
    alice, bob, carol = result["users"]
    steps = result["steps"]

    dm, group = steps["dm"], steps["group"]
    assert dm["bob_saw"] == "hi bob (js)" and dm["alice_saw"] == "hi alice (js)"
    assert dm["joined"] == sorted([alice, bob])
    assert dm["direct"] == {bob: [dm["room_id"]]}
    assert dm["names"] == {"alice": "jsbob", "bob": "jsalice"}
    assert group["lazy_members"] == sorted([alice, bob, carol])

    for user in (alice, bob, carol):
        seen = group["seen"][user]
        assert seen["name"] == "JS Group ✓"
        assert seen["bodies"] == [f"group hello from {u}" for u in (alice, bob, carol)]
        assert seen["power"] == {alice: 100, bob: 0, carol: 0}
        assert seen["joined"] == 3
    assert group["refused"] == "M_FORBIDDEN"

    receipts = steps["receipts_typing"]
    assert receipts["readers"] == [bob]
    assert receipts["read_up_to"] == receipts["event_id"]
    assert receipts["typing_on"] and receipts["typing_off"]

    edit = steps["edit_redact"]
    assert edit["edit_relation"] == {"rel_type": "m.replace", "event_id": edit["original"]}
    assert edit["replacing_event_id"] == edit["edit"]
    assert edit["edited_body"] == "the typo"
    assert edit["redaction_seen"] == edit["redaction_id"]
    assert edit["original_is_redacted"] is True
    assert edit["original_content_after"] == {}
    assert edit["fetched_content"] == {}
    assert edit["fetched_redacted_because"] == edit["redaction_id"]

    paginate = steps["paginate"]
    assert paginate["sent"] == 500
    assert paginate["initial_timeline"] <= 10
    assert paginate["backwards_count"] == paginate["backwards_unique"] == 500
    assert paginate["forwards_count"] == paginate["forwards_unique"] == 500
    assert paginate["all_sent_seen"] and paginate["same_order"] and paginate["batches_in_order"]
    assert paginate["first_type"] == "m.room.create"
    assert paginate["ends_with"]
    # Opened at message 250 through /context, then paged both ways by a TimelineWindow.
    assert paginate["window_loaded_middle"]
    assert paginate["window_count"] == 500 and paginate["window_same_order"]

    log = server.log_text()
    assert "Traceback" not in log
