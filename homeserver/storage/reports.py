"""Reports of events, rooms and users, kept for the server's admins."""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.storage.database import Database


@dataclass(frozen=True, slots=True)
class Report:
    report_id: int
    kind: str  # event | room | user
    reporter: str
    room_id: str | None
    event_id: str | None
    target_user_id: str | None
    reason: str | None
    score: int | None
    received_ts: int


class ReportStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(
        self,
        kind: str,
        reporter: str,
        received_ts: int,
        *,
        room_id: str | None = None,
        event_id: str | None = None,
        target_user_id: str | None = None,
        reason: str | None = None,
        score: int | None = None,
    ) -> None:
        await self.db.execute(
            "add_report",
            "INSERT INTO reports (kind, reporter, room_id, event_id, target_user_id, reason, score,"
            " received_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            kind,
            reporter,
            room_id,
            event_id,
            target_user_id,
            reason,
            score,
            received_ts,
        )

    async def recent(self, limit: int) -> list[Report]:
        """The newest reports first."""
        rows = await self.db.query(
            "recent_reports",
            "SELECT report_id, kind, reporter, room_id, event_id, target_user_id, reason, score, received_ts"
            " FROM reports ORDER BY report_id DESC LIMIT ?",
            limit,
        )
        return [
            Report(
                int(r[0]), r[1], r[2], r[3], r[4], r[5], r[6], None if r[7] is None else int(r[7]), int(r[8])
            )
            for r in rows
        ]
