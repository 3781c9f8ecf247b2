-- Full-text search over unencrypted messages, room names and topics (POST /search).
-- Filled by the stream consumer 'search_index' (core/search_index.py), off the send path.
-- Encrypted rooms' messages are ciphertext to the server: clients search those themselves.

CREATE TABLE event_search (
    event_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    type TEXT NOT NULL,
    key TEXT NOT NULL,                  -- content.body, content.name or content.topic
    stream_ordering BIGINT NOT NULL,
    origin_server_ts BIGINT NOT NULL,
    vector TSVECTOR NOT NULL
);
CREATE INDEX event_search_vector ON event_search USING GIN (vector);
CREATE INDEX event_search_by_room ON event_search (room_id, stream_ordering);
