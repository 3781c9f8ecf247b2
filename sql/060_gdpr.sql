-- GDPR: erased accounts and data exports (docs/gdpr.md). Portable SQL.

-- Accounts deactivated with `erase: true`. Their events' content was pruned in place (the
-- redaction algorithm); the row keeps the fact, so tools and later code can tell.
CREATE TABLE erased_users (
    user_id TEXT PRIMARY KEY,
    erased_ts BIGINT NOT NULL
);

-- Erasure and export walk one user's events in stream order.
CREATE INDEX events_by_sender ON events (sender, stream_ordering);

-- A user's export jobs: the state survives a restart (a running job starts over), the zip
-- lives under DATA_DIR/exports/ until the export is deleted.
CREATE TABLE user_exports (
    export_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    state TEXT NOT NULL,                -- running, done, failed
    done_steps BIGINT NOT NULL DEFAULT 0,
    total_steps BIGINT NOT NULL DEFAULT 0,
    created_ts BIGINT NOT NULL,
    finished_ts BIGINT,
    size BIGINT,
    error TEXT
);
CREATE INDEX user_exports_by_user ON user_exports (user_id, created_ts);
