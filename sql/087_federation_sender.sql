-- The federation sender's queues (homeserver/core/federation/sender.py). One ordered queue
-- per destination server: a row is a PDU (by event id; its JSON is read from `events` when
-- sent) or an EDU (its JSON here). `seq` grows across all destinations. Rows up to the
-- destination's `sent_upto` were answered: deleted then, or later for those with a
-- `dedupe_key` (the sender's prune, once no batch can be handed to it again).
CREATE TABLE federation_outbox (
    destination TEXT NOT NULL,
    seq BIGINT NOT NULL,
    event_id TEXT,
    edu_json TEXT,
    -- What makes a row the same as one queued before: a PDU's event id, a to-device
    -- message's (sender, device, txn id). NULL for EDUs that may repeat.
    dedupe_key TEXT,
    PRIMARY KEY (destination, seq)
);
-- An event handed to the sender again after a crash, or a client's retried sendToDevice,
-- is not queued twice.
CREATE UNIQUE INDEX federation_outbox_dedupe ON federation_outbox (destination, dedupe_key);

-- Per destination: everything up to `sent_upto` was answered; the transaction in flight
-- (`txn_id`, carrying the rows up to `txn_upto`) is sent again as it is until answered;
-- the backoff of a destination that does not answer.
CREATE TABLE federation_destinations (
    destination TEXT PRIMARY KEY,
    sent_upto BIGINT NOT NULL DEFAULT 0,
    txn_id TEXT,
    txn_upto BIGINT,
    retry_interval_ms BIGINT NOT NULL DEFAULT 0,
    retry_at_ts BIGINT NOT NULL DEFAULT 0
);
