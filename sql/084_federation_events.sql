-- Inbound federation (Server-Server API "Transactions" and "PDUs").
-- federation_txns: the answer given to each (origin, transaction id), so a retried
-- transaction is answered the same without processing its PDUs and EDUs twice.
CREATE TABLE federation_txns (
    origin TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    response TEXT NOT NULL,
    received_ts BIGINT NOT NULL,
    PRIMARY KEY (origin, txn_id)
);

-- Remote events that are not in the room's timeline: `outlier` (an auth event fetched to
-- check another one), `rejected` (never used as state, never served as state) and
-- `soft_failed` (part of the DAG, not shown to clients, not a forward extremity). Kept
-- apart from `events`, which every timeline and sync query reads.
CREATE TABLE remote_event_outcomes (
    event_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT NOT NULL,
    json TEXT NOT NULL,
    received_ts BIGINT NOT NULL
);
