"""The call log's tables (plugins/calls/sql): each function is one step in one transaction.

Every step is idempotent (a durable subscription may hand an event twice after a crash):
a call is created once, answered once and ended once; later repeats change nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from homeserver.plugins import Txn
from plugins.calls.rules import ANSWERED, MISSED, RtcMembership

_COLUMNS = "room_id, call_id, is_group, kind, caller, callee, started_ts, answered_ts, ended_ts, outcome, seq"


@dataclass(frozen=True)
class NewCall:
    room_id: str
    call_id: str
    is_group: bool
    kind: str
    caller: str
    callee: str | None
    started_ts: int
    lifetime_ms: int
    seq: int


def _add_participant(txn: Txn, user_id: str, room_id: str, call_id: str) -> None:
    row = txn.query_one("SELECT seq FROM calls_log WHERE room_id = ? AND call_id = ?", (room_id, call_id))
    if row is None:
        return
    seen = txn.query_one(
        "SELECT 1 FROM calls_participants WHERE user_id = ? AND room_id = ? AND call_id = ?",
        (user_id, room_id, call_id),
    )
    if seen is None:
        txn.execute(
            "INSERT INTO calls_participants (user_id, room_id, call_id, seq) VALUES (?, ?, ?, ?)",
            (user_id, room_id, call_id, row[0]),
        )


def start_call_txn(txn: Txn, call: NewCall, participants: list[str]) -> bool:
    """Record a new call (an invite, a group call's first join); False if it was known."""
    known = txn.query_one(
        "SELECT 1 FROM calls_log WHERE room_id = ? AND call_id = ?", (call.room_id, call.call_id)
    )
    if known is None:
        txn.execute(
            "INSERT INTO calls_log (room_id, call_id, is_group, kind, caller, callee, started_ts,"
            " lifetime_ms, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                call.room_id,
                call.call_id,
                call.is_group,
                call.kind,
                call.caller,
                call.callee,
                call.started_ts,
                call.lifetime_ms,
                call.seq,
            ),
        )
    for user_id in dict.fromkeys([call.caller, *participants]):
        _add_participant(txn, user_id, call.room_id, call.call_id)
    return known is None


def answer_call_txn(txn: Txn, room_id: str, call_id: str, user_id: str, ts: int) -> None:
    """The first answer counts; an answer after the call ended (or to no call) changes nothing."""
    txn.execute(
        "UPDATE calls_log SET answered_ts = ? WHERE room_id = ? AND call_id = ?"
        " AND answered_ts IS NULL AND outcome IS NULL",
        (ts, room_id, call_id),
    )
    _add_participant(txn, user_id, room_id, call_id)


def call_state_txn(txn: Txn, room_id: str, call_id: str) -> tuple[str, bool, bool] | None:
    """(caller, answered, ended) of a known call."""
    row = txn.query_one(
        "SELECT caller, answered_ts, outcome FROM calls_log WHERE room_id = ? AND call_id = ?",
        (room_id, call_id),
    )
    return None if row is None else (str(row[0]), row[1] is not None, row[2] is not None)


def end_call_txn(
    txn: Txn, room_id: str, call_id: str, outcome: str, ts: int, reason: str | None, user_id: str
) -> bool:
    """End a call that has not ended yet; True if this did it."""
    txn.execute(
        "UPDATE calls_log SET outcome = ?, ended_ts = ?, end_reason = ?"
        " WHERE room_id = ? AND call_id = ? AND outcome IS NULL",
        (outcome, ts, reason, room_id, call_id),
    )
    ended = txn.rowcount > 0
    _add_participant(txn, user_id, room_id, call_id)
    return ended


def expire_ringing_txn(txn: Txn, now_ms: int) -> int:
    """Unanswered 1:1 invites whose lifetime passed with no hangup: missed, ended when the
    ringing stopped."""
    txn.execute(
        "UPDATE calls_log SET outcome = ?, ended_ts = started_ts + lifetime_ms, end_reason = ?"
        " WHERE outcome IS NULL AND answered_ts IS NULL AND is_group = ? AND started_ts + lifetime_ms < ?",
        (MISSED, "invite_timeout", False, now_ms),
    )
    return int(txn.rowcount)


def rtc_membership_txn(
    txn: Txn, room_id: str, event_id: str, ts: int, seq: int, m: RtcMembership
) -> str | None:
    """Apply one MatrixRTC membership change; the outcome if it ended a group call."""
    if m.active:
        txn.execute("DELETE FROM calls_rtc_members WHERE room_id = ? AND slot = ?", (room_id, m.slot))
        txn.execute(
            "INSERT INTO calls_rtc_members (room_id, slot, user_id, rtc_call_id) VALUES (?, ?, ?, ?)",
            (room_id, m.slot, m.user_id, m.call_id),
        )
        session = txn.query_one(
            "SELECT call_id FROM calls_rtc_sessions WHERE room_id = ? AND rtc_call_id = ?",
            (room_id, m.call_id),
        )
        if session is None:
            call_id = f"rtc:{event_id}"
            txn.execute(
                "INSERT INTO calls_rtc_sessions (room_id, rtc_call_id, call_id) VALUES (?, ?, ?)",
                (room_id, m.call_id, call_id),
            )
            call = NewCall(room_id, call_id, True, m.kind, m.user_id, None, ts, 0, seq)
            start_call_txn(txn, call, [])
            return None
        call_id = str(session[0])
        _add_participant(txn, m.user_id, room_id, call_id)
        others = txn.query_one(
            "SELECT 1 FROM calls_rtc_members WHERE room_id = ? AND rtc_call_id = ? AND user_id <> ?",
            (room_id, m.call_id, m.user_id),
        )
        if others is not None:
            answer_call_txn(txn, room_id, call_id, m.user_id, ts)
        return None
    member = txn.query_one(
        "SELECT rtc_call_id FROM calls_rtc_members WHERE room_id = ? AND slot = ?", (room_id, m.slot)
    )
    if member is None:
        return None
    rtc_call_id = str(member[0])
    txn.execute("DELETE FROM calls_rtc_members WHERE room_id = ? AND slot = ?", (room_id, m.slot))
    left = txn.query_one(
        "SELECT 1 FROM calls_rtc_members WHERE room_id = ? AND rtc_call_id = ?", (room_id, rtc_call_id)
    )
    session = txn.query_one(
        "SELECT call_id FROM calls_rtc_sessions WHERE room_id = ? AND rtc_call_id = ?", (room_id, rtc_call_id)
    )
    if left is not None or session is None:
        return None
    txn.execute(
        "DELETE FROM calls_rtc_sessions WHERE room_id = ? AND rtc_call_id = ?", (room_id, rtc_call_id)
    )
    state = call_state_txn(txn, room_id, str(session[0]))
    outcome = ANSWERED if state is not None and state[1] else MISSED
    return outcome if end_call_txn(txn, room_id, str(session[0]), outcome, ts, None, m.user_id) else None


def calls_page_txn(
    txn: Txn, user_id: str, room_id: str | None, before: int | None, limit: int
) -> list[tuple[Any, ...]]:
    """The user's calls, newest first, older than the `before` position."""
    sql = (
        f"SELECT {', '.join('l.' + c.strip() for c in _COLUMNS.split(','))} FROM calls_participants p"
        " JOIN calls_log l ON l.room_id = p.room_id AND l.call_id = p.call_id WHERE p.user_id = ?"
    )
    args: list[Any] = [user_id]
    if room_id is not None:
        sql += " AND p.room_id = ?"
        args.append(room_id)
    if before is not None:
        sql += " AND p.seq < ?"
        args.append(before)
    sql += " ORDER BY p.seq DESC LIMIT ?"
    args.append(limit)
    return txn.query(sql, args)


def outcome_counts_txn(txn: Txn) -> dict[str, int]:
    rows = txn.query("SELECT outcome, COUNT(*) FROM calls_log WHERE outcome IS NOT NULL GROUP BY outcome")
    return {str(outcome): int(n) for outcome, n in rows}
