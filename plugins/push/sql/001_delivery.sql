-- The push plugin's delivery bookkeeping (plugins/push/delivery_*.py, docs/push.md).
-- Portable SQL: runs unchanged on SQLite and PostgreSQL.

-- Per pusher, the stream position of the last notification settled for it (sent,
-- suppressed by the device's receipt, dropped or parked), in stream order. An event
-- handed over again after a crash is skipped for every pusher that has settled it.
CREATE TABLE push_progress (
    pusher_id TEXT PRIMARY KEY,
    position BIGINT NOT NULL
);

-- Notifications whose gateway failed, retried from here with backoff, oldest first,
-- until sent, rejected or given up.
CREATE TABLE push_parked (
    pusher_id TEXT NOT NULL,
    position BIGINT NOT NULL,
    event_id TEXT NOT NULL,
    -- The request body as first built (JSON); its `devices` are rebuilt at each try.
    body TEXT NOT NULL,
    first_failed_ts BIGINT NOT NULL,
    PRIMARY KEY (pusher_id, position)
);
