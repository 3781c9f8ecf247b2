-- The room's thread list (GET /rooms/{roomId}/threads), kept by the writer in the events'
-- own transaction (storage/events.py) instead of an aggregate over every reply at each page.
-- Portable SQL: runs unchanged on SQLite and PostgreSQL.

-- One row a thread with at least one unredacted reply: the position of its newest one.
CREATE TABLE threads (
    root_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    latest BIGINT NOT NULL
);
CREATE INDEX threads_by_activity ON threads (room_id, latest);

-- Who took part in a thread (include=participated): its root's sender and each sender of
-- an unredacted reply.
CREATE TABLE thread_participants (
    root_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    PRIMARY KEY (root_id, user_id)
);
CREATE INDEX thread_participants_by_user ON thread_participants (user_id, room_id);

-- Fill both from the relations already stored.
INSERT INTO threads (root_id, room_id, latest)
    SELECT x.relates_to, MIN(x.room_id), MAX(x.stream_ordering) FROM event_relations x
    LEFT JOIN redactions r ON r.redacts = x.event_id
    WHERE x.rel_type = 'm.thread' AND r.event_id IS NULL
    GROUP BY x.relates_to;

INSERT INTO thread_participants (root_id, user_id, room_id)
    SELECT DISTINCT x.relates_to, x.sender, t.room_id FROM event_relations x
    JOIN threads t ON t.root_id = x.relates_to
    LEFT JOIN redactions r ON r.redacts = x.event_id
    WHERE x.rel_type = 'm.thread' AND r.event_id IS NULL;

INSERT INTO thread_participants (root_id, user_id, room_id)
    SELECT t.root_id, e.sender, t.room_id FROM threads t JOIN events e ON e.event_id = t.root_id
    WHERE NOT EXISTS (
        SELECT 1 FROM thread_participants u WHERE u.root_id = t.root_id AND u.user_id = e.sender
    );
