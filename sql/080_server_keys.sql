-- Other servers' signing keys (Server-Server API, "Retrieving server keys"), one row per
-- key: the public key, until when the server promised it (valid_until_ts; an old key has
-- expired_ts instead) and the server's whole signed answer, which the notary hands on.
CREATE TABLE server_keys (
    server_name TEXT NOT NULL,
    key_id TEXT NOT NULL,
    verify_key TEXT NOT NULL,
    valid_until_ts BIGINT NOT NULL,
    expired_ts BIGINT,
    fetched_ts BIGINT NOT NULL,
    key_json TEXT NOT NULL,
    PRIMARY KEY (server_name, key_id)
);
