-- Counts-only notifications after read receipts (plugins/push/delivery.py, docs/push.md
-- "Badges"). Portable SQL: runs unchanged on SQLite and PostgreSQL.

-- A pusher whose badge update failed: after its parked notifications, it is sent one with
-- the user's count at that time. At most one per pusher: only the latest count matters.
CREATE TABLE push_badge_parked (
    pusher_id TEXT PRIMARY KEY,
    first_failed_ts BIGINT NOT NULL
);

-- The receipts stream position up to which every read receipt's badge update is settled
-- (one row, name 'badges'): after a restart, the receipts after it are looked at again.
CREATE TABLE push_receipts_progress (
    name TEXT PRIMARY KEY,
    position BIGINT NOT NULL
);
