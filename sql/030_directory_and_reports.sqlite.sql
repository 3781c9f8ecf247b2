-- The user directory's search index, and abuse reports for the admin.
-- (The engines differ in the terms' collation - PostgreSQL compares them bytewise, as
-- SQLite does, so a prefix is a range of one B-tree index on both - and the report id.)

-- One row per local user: the normalised display name the ranking compares with.
CREATE TABLE user_directory (
    user_id TEXT PRIMARY KEY,
    search_name TEXT NOT NULL
);

-- The words a user is found by (of their display name and localpart), normalised.
CREATE TABLE user_directory_terms (
    term TEXT NOT NULL,
    user_id TEXT NOT NULL,
    PRIMARY KEY (term, user_id)
);
CREATE INDEX user_directory_terms_by_user ON user_directory_terms (user_id);

-- Rooms whose join rule is public: their members are found by everyone.
-- Kept by the stream consumer 'user_directory' (core/user_directory.py).
CREATE TABLE user_directory_public_rooms (
    room_id TEXT PRIMARY KEY
);

-- Reports of events, rooms and users (spec: Client-Server API, Reporting content).
-- kind: 'event' (room_id, event_id), 'room' (room_id) or 'user' (target_user_id).
CREATE TABLE reports (
    report_id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    reporter TEXT NOT NULL,
    room_id TEXT,
    event_id TEXT,
    target_user_id TEXT,
    reason TEXT,
    score INTEGER,
    received_ts BIGINT NOT NULL
);
CREATE INDEX reports_by_time ON reports (received_ts);
