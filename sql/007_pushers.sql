-- Pushers (POST /pushers/set): where a user's devices want notifications sent.
-- Portable SQL: runs unchanged on SQLite and PostgreSQL.

CREATE TABLE pushers (
    -- A random id: the push plugin keys its own rows (delivery progress, parked
    -- notifications) by it, and it stays when the pusher is updated in place.
    pusher_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    -- The device whose access token set it: deleting or logging out the device removes it.
    device_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    app_id TEXT NOT NULL,
    pushkey TEXT NOT NULL,
    -- When the pushkey was set (seconds: the push gateway API's `pushkey_ts`).
    pushkey_ts BIGINT NOT NULL,
    app_display_name TEXT NOT NULL,
    device_display_name TEXT NOT NULL,
    profile_tag TEXT,
    lang TEXT NOT NULL,
    data TEXT NOT NULL,
    UNIQUE (user_id, app_id, pushkey)
);
-- append: false removes other users' pushers with the same app id and pushkey.
CREATE INDEX pushers_app_pushkey ON pushers (app_id, pushkey);
CREATE INDEX pushers_device ON pushers (user_id, device_id);
