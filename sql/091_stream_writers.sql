-- Each event writer's promise (homeserver/workers/event_positions.py): every event it will
-- still write has a position above this one. Updated in each batch's commit transaction, so
-- a process that lost bus messages, or a writer that restarts, reads where everyone stands.
CREATE TABLE stream_writers (
    name TEXT PRIMARY KEY,
    position BIGINT NOT NULL
);
