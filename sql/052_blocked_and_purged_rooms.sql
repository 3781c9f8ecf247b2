-- Rooms a server admin blocked (nobody may join, be invited or knock) or purged (its
-- members were made to leave and its messages deleted; the room's state stays, so the
-- leave events still reach everyone's sync). The admin API, docs/admin.md.
-- Portable SQL: runs unchanged on SQLite and PostgreSQL.
CREATE TABLE blocked_rooms (
    room_id TEXT PRIMARY KEY,
    blocked_by TEXT NOT NULL,
    blocked_ts BIGINT NOT NULL
);

CREATE TABLE purged_rooms (
    room_id TEXT PRIMARY KEY,
    purged_by TEXT NOT NULL,
    purged_ts BIGINT NOT NULL
);
