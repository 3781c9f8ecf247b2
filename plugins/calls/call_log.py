"""The call log: a durable subscription of the committed-event stream that turns the call
events the server can read into one row per call (plugins/calls/log_store.py), and the
page of a user's calls that `GET /api/calls` answers.

Encrypted rooms' call events are `m.room.encrypted` here and never reach the log: there
the client keeps it (docs/calls.md).
"""

from __future__ import annotations

from typing import Any

from homeserver.plugins import EventBatch, PluginApi, StreamEvent
from plugins.calls import log_store
from plugins.calls.log_store import NewCall
from plugins.calls.rules import (
    OUTCOMES,
    REJECTED,
    call_id_of,
    hangup_outcome,
    invite_lifetime_ms,
    kind_of_offer,
    rtc_membership,
)

SWEEP_INTERVAL_S = 5.0
MAX_PAGE = 100
RTC_MEMBER = "org.matrix.msc3401.call.member"


def is_call_event(event_type: str) -> bool:
    """The events the log reads: 1:1 call signalling and group-call membership."""
    return event_type.startswith("m.call.") or event_type == RTC_MEMBER


class CallLog:
    def __init__(self, api: PluginApi) -> None:
        self.api = api
        self.ended = api.counter("calls_ended", "Calls the call log saw end, by outcome", ("outcome",))
        self.logged = api.gauge("calls_logged", "Calls in the call log, by outcome", ("outcome",))

    async def start(self) -> None:
        # Call events only: every other batch then costs the subscription no position writes.
        await self.api.subscribe("call_log", self.on_batch, durable=True, wants=is_call_event)
        self.api.schedule(SWEEP_INTERVAL_S, self.sweep, now=True)

    async def on_batch(self, batch: EventBatch) -> None:
        for stream_event in batch.events:
            await self.on_event(stream_event)

    async def on_event(self, stream_event: StreamEvent) -> None:
        event = stream_event.event
        event_type = event.get("type")
        content = event.get("content")
        room_id, sender = str(event.get("room_id")), str(event.get("sender"))
        ts = int(event.get("origin_server_ts", 0))
        if event_type == RTC_MEMBER:
            membership = rtc_membership(event)
            if membership is not None:
                outcome = await self.api.run_db(
                    "calls_rtc_membership",
                    log_store.rtc_membership_txn,
                    room_id,
                    str(event.get("event_id")),
                    ts,
                    stream_event.position,
                    membership,
                )
                self._count(outcome)
            return
        if not isinstance(event_type, str) or not event_type.startswith("m.call."):
            return
        call_id = call_id_of(content)
        if call_id is None or not isinstance(content, dict):
            return
        if event_type == "m.call.invite":
            await self._invite(room_id, call_id, sender, ts, stream_event.position, content)
        elif event_type == "m.call.answer":
            await self.api.run_db("calls_answer", log_store.answer_call_txn, room_id, call_id, sender, ts)
        elif event_type in ("m.call.reject", "m.call.hangup"):
            reason = content.get("reason") if isinstance(content.get("reason"), str) else None
            outcome = await self.api.run_db(
                "calls_end", _end_txn, room_id, call_id, sender, ts, event_type, reason
            )
            self._count(outcome)

    async def _invite(
        self, room_id: str, call_id: str, sender: str, ts: int, seq: int, content: dict[str, Any]
    ) -> None:
        invitee = content.get("invitee")
        if isinstance(invitee, str) and invitee != sender:
            rung = [invitee]
        else:
            # No invitee: the invite rings every other member of the room.
            rung = [u for u in await self.api.joined_members(room_id) if u != sender]
        call = NewCall(
            room_id,
            call_id,
            False,
            kind_of_offer(content),
            sender,
            rung[0] if len(rung) == 1 else None,
            ts,
            invite_lifetime_ms(content),
            seq,
        )
        await self.api.run_db("calls_invite", log_store.start_call_txn, call, rung)

    def _count(self, outcome: str | None) -> None:
        if outcome is not None:
            self.ended.labels(outcome).inc()

    async def sweep(self) -> None:
        """End the invites nobody answered within their lifetime; refresh the gauges."""
        now_ms = int(self.api.clock.seconds() * 1000)
        expired = await self.api.run_db("calls_expire", log_store.expire_ringing_txn, now_ms)
        if expired:
            self.ended.labels("missed").inc(expired)
        counts = await self.api.run_db("calls_counts", log_store.outcome_counts_txn)
        for outcome in OUTCOMES:
            self.logged.labels(outcome).set(counts.get(outcome, 0))

    async def page(self, user_id: str, room_id: str | None, before: int | None, limit: int) -> dict[str, Any]:
        limit = max(1, min(limit, MAX_PAGE))
        rows = await self.api.run_db(
            "calls_page", log_store.calls_page_txn, user_id, room_id, before, limit + 1
        )
        response: dict[str, Any] = {"calls": [_render(row, user_id) for row in rows[:limit]]}
        if len(rows) > limit:
            response["before"] = str(rows[limit - 1][-1])
        return response


def _end_txn(
    txn: Any, room_id: str, call_id: str, sender: str, ts: int, event_type: str, reason: str | None
) -> str | None:
    state = log_store.call_state_txn(txn, room_id, call_id)
    if state is None or state[2]:
        return None
    caller, answered, _ = state
    if event_type == "m.call.reject":
        if answered:  # a reject is only valid while ringing
            return None
        outcome = REJECTED
    else:
        outcome = hangup_outcome(reason, sender, caller, answered)
    return outcome if log_store.end_call_txn(txn, room_id, call_id, outcome, ts, reason, sender) else None


def _render(row: tuple[Any, ...], user_id: str) -> dict[str, Any]:
    room_id, call_id, is_group, kind, caller, callee, started, answered, ended, outcome, _ = row
    state = "ended" if outcome is not None else "ongoing" if answered is not None else "ringing"
    return {
        "callId": call_id,
        "chatId": room_id,
        "callerId": caller,
        "calleeId": callee,
        "group": bool(is_group),
        "type": kind,
        "direction": "outgoing" if caller == user_id else "incoming",
        "state": state,
        "startedAt": started,
        "answeredAt": answered,
        "endedAt": ended,
        "durationMs": (ended - answered) if answered is not None and ended is not None else 0,
        "outcome": outcome,
    }
