-- Email notifications (plugins/push/email*.py, docs/push.md "Email notifications").
-- Portable SQL: runs unchanged on SQLite and PostgreSQL.

-- Notifying events for users with an email pusher, not yet mailed: ids only (the text is
-- read at mail time, as the user may see it then, so a redaction is honoured).
CREATE TABLE push_email_pending (
    user_id TEXT NOT NULL,
    position BIGINT NOT NULL,
    room_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    -- When the event came (ms): the mail is due `email_delay` after the oldest.
    received_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, position)
);

-- Per user, the last mail: its time (the throttle) and the stream position it covered up
-- to (an event handed over again after a crash is not mailed twice).
CREATE TABLE push_email_sent (
    user_id TEXT PRIMARY KEY,
    mailed_upto BIGINT NOT NULL,
    last_sent_ts BIGINT NOT NULL
);
