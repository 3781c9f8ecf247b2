"""The email notifications' tables (plugins/push/sql/002_email.sql): the pending events per
user and each user's last mail. Each function runs in one transaction through `api.run_db`."""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.plugins import PluginApi, Txn


@dataclass(frozen=True)
class PendingEvent:
    user_id: str
    position: int
    room_id: str
    event_id: str
    received_ts: int


@dataclass(frozen=True)
class UserDue:
    """What decides when a user's mail is due: their oldest pending event and last mail."""

    user_id: str
    oldest_ts: int
    last_sent_ts: int | None


class EmailStore:
    def __init__(self, api: PluginApi) -> None:
        self.api = api

    async def remember(self, events: list[PendingEvent]) -> list[UserDue]:
        """Keep these events (those not already mailed, as after a crash); returns the users
        that have pending events now, with what decides when their mail is due."""
        result: list[UserDue] = await self.api.run_db("email_remember", _remember_txn, events)
        return result

    async def due_users(self) -> list[UserDue]:
        """Every user with pending events (at start-up)."""
        result: list[UserDue] = await self.api.run_db("email_due_users", _due_txn, None)
        return result

    async def pending(self, user_id: str) -> tuple[list[PendingEvent], int | None]:
        """The user's pending events, oldest first, and the time of their last mail."""
        result: tuple[list[PendingEvent], int | None] = await self.api.run_db(
            "email_pending", _pending_txn, user_id
        )
        return result

    async def settle(self, user_id: str, positions: list[int], mailed_at: int | None) -> None:
        """Forget these events of the user: mailed (at `mailed_at` ms: the throttle starts and
        they are never mailed again) or read, or the user has no email pusher any more."""
        await self.api.run_db("email_settle", _settle_txn, user_id, positions, mailed_at)


def _last_sent(txn: Txn, user_id: str) -> tuple[int, int | None]:
    rows = txn.query("SELECT mailed_upto, last_sent_ts FROM push_email_sent WHERE user_id = ?", (user_id,))
    return (int(rows[0][0]), int(rows[0][1])) if rows else (0, None)


def _remember_txn(txn: Txn, events: list[PendingEvent]) -> list[UserDue]:
    users: dict[str, tuple[int, int | None]] = {}
    for ev in sorted(events, key=lambda e: (e.user_id, e.position)):  # the same lock order each time
        if ev.user_id not in users:
            users[ev.user_id] = _last_sent(txn, ev.user_id)
        if ev.position <= users[ev.user_id][0]:
            continue  # mailed before a crash: this is the repeat of its batch
        txn.execute(
            "INSERT INTO push_email_pending (user_id, position, room_id, event_id, received_ts)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (user_id, position) DO NOTHING",
            (ev.user_id, ev.position, ev.room_id, ev.event_id, ev.received_ts),
        )
    due = []
    for user_id, (_, last_sent) in users.items():
        rows = txn.query("SELECT MIN(received_ts) FROM push_email_pending WHERE user_id = ?", (user_id,))
        if rows and rows[0][0] is not None:
            due.append(UserDue(user_id, int(rows[0][0]), last_sent))
    return due


def _due_txn(txn: Txn, _: None) -> list[UserDue]:
    rows = txn.query(
        "SELECT p.user_id, MIN(p.received_ts), MAX(s.last_sent_ts) FROM push_email_pending p"
        " LEFT JOIN push_email_sent s ON s.user_id = p.user_id GROUP BY p.user_id"
    )
    return [UserDue(r[0], int(r[1]), None if r[2] is None else int(r[2])) for r in rows]


def _pending_txn(txn: Txn, user_id: str) -> tuple[list[PendingEvent], int | None]:
    rows = txn.query(
        "SELECT user_id, position, room_id, event_id, received_ts FROM push_email_pending"
        " WHERE user_id = ? ORDER BY position",
        (user_id,),
    )
    events = [PendingEvent(r[0], int(r[1]), r[2], r[3], int(r[4])) for r in rows]
    return events, _last_sent(txn, user_id)[1]


def _settle_txn(txn: Txn, user_id: str, positions: list[int], mailed_at: int | None) -> None:
    for position in positions:
        txn.execute("DELETE FROM push_email_pending WHERE user_id = ? AND position = ?", (user_id, position))
    if mailed_at is not None and positions:
        txn.execute(
            "INSERT INTO push_email_sent (user_id, mailed_upto, last_sent_ts) VALUES (?, ?, ?)"
            " ON CONFLICT (user_id) DO UPDATE SET last_sent_ts = excluded.last_sent_ts,"
            " mailed_upto = CASE WHEN excluded.mailed_upto > push_email_sent.mailed_upto"
            " THEN excluded.mailed_upto ELSE push_email_sent.mailed_upto END",
            (user_id, max(positions), mailed_at),
        )
