-- Message retention (MSC1763 m.room.retention; core/retention.py, docs/retention.md).
-- Portable SQL: runs unchanged on SQLite and PostgreSQL.

-- Where each purged room's timeline now begins: reads of the timeline (/messages,
-- /context, sync, jump to date, unread counts) see nothing at or below this position.
-- State events below it are kept (the room's state and its auth chains need them) but
-- are no longer part of the timeline.
CREATE TABLE room_history_floor (
    room_id TEXT PRIMARY KEY,
    stream_ordering BIGINT NOT NULL
);

-- Purged events that plugins (the media plugin deletes what only they shared) have not
-- been told about yet: written in the purge's own transaction, removed once told, so a
-- crash between the two tells them again instead of never.
CREATE TABLE purged_events_pending (
    event_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL
);

-- A purge drops the transaction ids of the events it deletes: found by event, not by scan.
CREATE INDEX event_txn_ids_by_event ON event_txn_ids (event_id);
