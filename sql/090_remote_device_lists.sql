-- Other servers' users' device lists and cross-signing keys, kept while they share a room
-- with one of ours (Server-Server API, "Device Management"), so our clients' /keys/query
-- is answered here and kept fresh by m.device_list_update / m.signing_key_update EDUs.
CREATE TABLE remote_device_lists (
    user_id TEXT PRIMARY KEY,
    stream_id BIGINT NOT NULL,          -- their server's device-list position we are up to
    master_key TEXT,                    -- JSON, or NULL when they have none
    self_signing_key TEXT
);

CREATE TABLE remote_devices (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    key_json TEXT,                      -- the signed DeviceKeys, or NULL before keys are uploaded
    PRIMARY KEY (user_id, device_id)
);
