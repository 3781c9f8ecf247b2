-- The committed-event stream (core/event_stream.py) and the room heads it feeds.
-- Portable SQL: runs unchanged on SQLite and PostgreSQL.

-- Each room's forward extremities: its events that no other event names in prev_events
-- yet. A new local event names them all; federation will bring several at once.
CREATE TABLE event_forward_extremities (
    room_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (room_id, event_id)
);
-- Until now a room's extremity was its newest event.
INSERT INTO event_forward_extremities (room_id, event_id)
    SELECT e.room_id, e.event_id FROM events e
    WHERE e.stream_ordering = (SELECT MAX(x.stream_ordering) FROM events x WHERE x.room_id = e.room_id);

-- Durable consumers of the stream: where each one is. Every event up to `position` is
-- handled; events up to `handed_upto` may have been handed to it too (they were in flight
-- when it last stopped, and are handed again, marked as such).
CREATE TABLE stream_consumers (
    name TEXT PRIMARY KEY,
    position BIGINT NOT NULL,
    handed_upto BIGINT NOT NULL,
    updated_ts BIGINT NOT NULL
);
