-- Every event the audit subscription was handed, once per handing.
CREATE TABLE stream_audit (
    run INTEGER NOT NULL,
    position BIGINT NOT NULL,
    event_id TEXT NOT NULL,
    batch_upto BIGINT NOT NULL,
    maybe_repeated INTEGER NOT NULL
);
