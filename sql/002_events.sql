-- Rooms and events, stored from the start in the Matrix room-version format
-- (spec: Server-Server API, PDUs; room versions 10 and 11) so federation never
-- needs a data migration. `json` holds the whole PDU as canonical JSON: event id
-- (reference hash), hashes, signatures, prev_events, auth_events and depth.

CREATE TABLE rooms (
    room_id TEXT PRIMARY KEY,
    room_version TEXT NOT NULL,
    creator TEXT,
    created_ts BIGINT NOT NULL
);

CREATE TABLE events (
    event_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL REFERENCES rooms (room_id),
    stream_ordering BIGINT NOT NULL UNIQUE,  -- global stream position
    depth BIGINT NOT NULL,                   -- per-room order (PDU depth)
    type TEXT NOT NULL,
    state_key TEXT,
    sender TEXT NOT NULL,
    origin_server_ts BIGINT NOT NULL,
    json TEXT NOT NULL
);
CREATE INDEX events_by_room_order ON events (room_id, stream_ordering);

CREATE TABLE event_edges (
    event_id TEXT NOT NULL,
    prev_event_id TEXT NOT NULL,
    PRIMARY KEY (event_id, prev_event_id)
);

CREATE TABLE event_auth (
    event_id TEXT NOT NULL,
    auth_event_id TEXT NOT NULL,
    PRIMARY KEY (event_id, auth_event_id)
);
