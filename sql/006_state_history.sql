-- A room's state events of one (type, state_key) in stream order: the history_visibility
-- in force at each event (core/visibility.py) and the state at a position
-- (EventStore.state_event_at) read a handful of rows instead of scanning the room.
-- Partial: messages, the bulk of the table, are not state and stay out of it.
-- Portable SQL: runs unchanged on SQLite and PostgreSQL.

CREATE INDEX events_state_history ON events (room_id, type, state_key, stream_ordering)
    WHERE state_key IS NOT NULL;
