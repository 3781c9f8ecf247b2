"""The audit log: who called which admin route on what, when, and what they were answered."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from homeserver.plugins import PluginApi, Txn


@dataclass(frozen=True, slots=True)
class AuditEntry:
    audit_id: int
    ts: int
    user_id: str
    method: str
    route: str
    target: str | None
    status: int


class AuditLog:
    def __init__(self, api: PluginApi) -> None:
        self.api = api

    async def record(self, user_id: str, method: str, route: str, target: str | None, status: int) -> None:
        def insert_txn(txn: Txn) -> None:
            txn.execute(
                "INSERT INTO admin_audit (ts, user_id, method, route, target, status)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (self.api.clock.time_ms(), user_id, method, route, target, status),
            )

        await self.api.run_db("audit_record", insert_txn)

    async def page(
        self, user_id: str | None, target: str | None, offset: int, limit: int
    ) -> tuple[list[AuditEntry], int]:
        """Newest first, optionally only one caller's calls or those on one target."""
        clauses: list[str] = []
        args: list[Any] = []
        if user_id:
            clauses.append("user_id = ?")
            args.append(user_id)
        if target:
            clauses.append("target = ?")
            args.append(target)
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""

        def page_txn(txn: Txn) -> tuple[list[AuditEntry], int]:
            total = txn.query_one("SELECT COUNT(*) FROM admin_audit" + where, args)
            rows = txn.query(
                "SELECT audit_id, ts, user_id, method, route, target, status FROM admin_audit"
                f"{where} ORDER BY audit_id DESC LIMIT ? OFFSET ?",
                [*args, limit, offset],
            )
            entries = [AuditEntry(int(r[0]), int(r[1]), r[2], r[3], r[4], r[5], int(r[6])) for r in rows]
            return entries, int(total[0]) if total else 0

        result: tuple[list[AuditEntry], int] = await self.api.run_db("audit_page", page_txn)
        return result

    async def expire(self, max_age_s: int) -> None:
        if max_age_s <= 0:
            return
        cutoff = self.api.clock.time_ms() - max_age_s * 1000

        def delete_txn(txn: Txn) -> None:
            txn.execute("DELETE FROM admin_audit WHERE ts < ?", (cutoff,))

        await self.api.run_db("audit_expire", delete_txn)
