-- Full-text search over unencrypted messages, room names and topics (POST /search).
-- Filled by the stream consumer 'search_index' (core/search_index.py), off the send path.
-- Encrypted rooms' messages are ciphertext to the server: clients search those themselves.

-- One row per indexed event; its rowid is the event's stream position, and the row of
-- the same rowid in event_search_fts holds its text.
CREATE TABLE event_search (
    stream_ordering INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    room_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    type TEXT NOT NULL,
    key TEXT NOT NULL,                  -- content.body, content.name or content.topic
    origin_server_ts BIGINT NOT NULL
);
CREATE INDEX event_search_by_room ON event_search (room_id, stream_ordering);
CREATE VIRTUAL TABLE event_search_fts USING fts5(value, tokenize = 'porter unicode61');
