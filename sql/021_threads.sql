-- Threads of a room by activity (GET /rooms/{roomId}/threads): replies in a thread, newest
-- last, found without scanning other rooms' relations. Partial: edits and reactions, most
-- of the table, stay out of it. Portable SQL: runs unchanged on SQLite and PostgreSQL.

CREATE INDEX event_relations_threads ON event_relations (room_id, stream_ordering)
    WHERE rel_type = 'm.thread';
