"""Telling a dead event writer from a slow one, with PostgreSQL as the judge (ADR 0008).

A writer that dies holds every process's stream at its last promise (workers/event_positions.py)
until it restarts. The other writers may retire it in its place (fence it:
`StreamWriterStore.fence`) once both hold:

- its lock is free: each writer holds a session advisory lock of its own
  (storage/writer_lock.py) on a connection that pings every heartbeat and that PostgreSQL
  ends after LEASE_S of silence (`idle_session_timeout`): a killed process loses it at once,
  a stopped (SIGSTOP) or cut-off one after LEASE_S;
- its bus announcements have been missing for SILENT_S (`DeathWatch`).

Either alone would fence every writer at once: every lock goes with a PostgreSQL restart,
every announcement with a Redis restart. Fencing a writer that was only slow costs it a
restart, never an event: its saves match no row once it is retired (sql/099, 100), so its commits
in flight roll back (their clients retry them, stored once), and it exits to be restarted.
"""

from __future__ import annotations

# A writer silent on the bus this long (its heartbeat is every second) may be fenced if its
# lock is free too.
SILENT_S = 5.0


class DeathWatch:
    """When each other writer was last heard on the bus (their own messages, not carries)."""

    def __init__(self, writers: list[str], now: float) -> None:
        self._heard = dict.fromkeys(writers, now)

    def heard(self, name: str, now: float) -> None:
        if name in self._heard:
            self._heard[name] = now

    def silent(self, now: float) -> list[str]:
        """The writers not heard for SILENT_S: candidates, if their lock is free too."""
        return [name for name, at in self._heard.items() if now - at >= SILENT_S]
