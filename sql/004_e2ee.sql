-- End-to-end encryption: the server stores and routes keys and ciphertext,
-- never plaintext. Portable SQL: runs unchanged on SQLite and PostgreSQL.

CREATE TABLE device_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    key_json TEXT NOT NULL,             -- the signed DeviceKeys object
    PRIMARY KEY (user_id, device_id)
);

CREATE TABLE one_time_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id TEXT NOT NULL,
    key_json TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, algorithm, key_id)
);

CREATE TABLE fallback_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id TEXT NOT NULL,
    key_json TEXT NOT NULL,
    used BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (user_id, device_id, algorithm)
);

CREATE TABLE cross_signing_keys (
    user_id TEXT NOT NULL,
    key_type TEXT NOT NULL,             -- master | self_signing | user_signing
    key_json TEXT NOT NULL,
    PRIMARY KEY (user_id, key_type)
);

-- Users whose devices or cross-signing keys changed, in stream order.
CREATE TABLE device_list_changes (
    stream_id BIGINT PRIMARY KEY,
    user_id TEXT NOT NULL
);
CREATE INDEX device_list_changes_by_user ON device_list_changes (user_id, stream_id);

CREATE TABLE to_device_messages (
    stream_id BIGINT PRIMARY KEY,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    message_json TEXT NOT NULL          -- {type, sender, content}
);
CREATE INDEX to_device_by_device ON to_device_messages (user_id, device_id, stream_id);

-- sendToDevice idempotency: one delivery per (sender, device, txn id).
CREATE TABLE to_device_txns (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id)
);

CREATE TABLE room_key_backup_versions (
    user_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    algorithm TEXT NOT NULL,
    auth_data TEXT NOT NULL,
    etag BIGINT NOT NULL DEFAULT 0,
    deleted BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (user_id, version)
);

CREATE TABLE room_key_backups (
    user_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    room_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    first_message_index BIGINT NOT NULL,
    forwarded_count BIGINT NOT NULL,
    is_verified BOOLEAN NOT NULL,
    session_data TEXT NOT NULL,
    PRIMARY KEY (user_id, version, room_id, session_id)
);
