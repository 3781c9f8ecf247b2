-- Rooms, membership, state, and the per-user streams that sync reads.
-- Portable SQL: runs unchanged on SQLite and PostgreSQL.

-- Local, client-facing extras kept beside the PDU (prev_content, replaces_state).
ALTER TABLE events ADD COLUMN unsigned_extra TEXT;

-- The current state of each room: one event per (type, state_key).
CREATE TABLE current_state_events (
    room_id TEXT NOT NULL,
    type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (room_id, type, state_key)
);

-- Every membership event, in stream order: who was in which room when.
CREATE TABLE room_memberships (
    event_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    membership TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL
);
CREATE INDEX room_memberships_by_user ON room_memberships (user_id, stream_ordering);
CREATE INDEX room_memberships_by_room ON room_memberships (room_id, stream_ordering);

-- Rooms a user has forgotten (after leaving): hidden from sync and /messages.
CREATE TABLE forgotten_rooms (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    PRIMARY KEY (user_id, room_id)
);

-- PUT .../{txnId} idempotency: one event per (user, device, txn id).
CREATE TABLE event_txn_ids (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id)
);

CREATE TABLE redactions (
    event_id TEXT PRIMARY KEY,      -- the m.room.redaction event
    redacts TEXT NOT NULL,
    room_id TEXT NOT NULL
);
CREATE INDEX redactions_by_target ON redactions (redacts);

CREATE TABLE event_relations (
    event_id TEXT PRIMARY KEY,
    relates_to TEXT NOT NULL,
    rel_type TEXT NOT NULL,
    room_id TEXT NOT NULL,
    type TEXT NOT NULL,
    sender TEXT NOT NULL,
    aggregation_key TEXT,
    stream_ordering BIGINT NOT NULL
);
CREATE INDEX event_relations_by_parent ON event_relations (relates_to, rel_type, stream_ordering);

CREATE TABLE room_aliases (
    room_alias TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    creator TEXT NOT NULL
);
CREATE INDEX room_aliases_by_room ON room_aliases (room_id);

CREATE TABLE room_directory (
    room_id TEXT PRIMARY KEY,
    visibility TEXT NOT NULL        -- 'public' | 'private'
);

CREATE TABLE receipts (
    room_id TEXT NOT NULL,
    receipt_type TEXT NOT NULL,     -- m.read | m.read.private
    user_id TEXT NOT NULL,
    thread_id TEXT NOT NULL,        -- '' for unthreaded
    event_id TEXT NOT NULL,
    event_stream_ordering BIGINT NOT NULL,
    stream_id BIGINT NOT NULL,
    ts BIGINT NOT NULL,
    PRIMARY KEY (room_id, receipt_type, user_id, thread_id)
);
CREATE INDEX receipts_by_stream ON receipts (stream_id);

CREATE TABLE account_data (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,          -- '' for global account data
    type TEXT NOT NULL,
    content TEXT NOT NULL,
    stream_id BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id, type)
);
CREATE INDEX account_data_by_stream ON account_data (user_id, stream_id);

CREATE TABLE user_filters (
    user_id TEXT NOT NULL,
    filter_id BIGINT NOT NULL,
    filter_json TEXT NOT NULL,
    PRIMARY KEY (user_id, filter_id)
);

CREATE TABLE presence (
    user_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    status_msg TEXT,
    last_active_ts BIGINT NOT NULL,
    stream_id BIGINT NOT NULL
);

-- The highest event stream position each user has proven to have received
-- (a device asked for a newer sync token after being served it).
CREATE TABLE delivery_positions (
    user_id TEXT PRIMARY KEY,
    stream_ordering BIGINT NOT NULL
);

CREATE INDEX current_state_by_key ON current_state_events (type, state_key);
