-- The media plugin's tables. `media_files` is the first spec's Media entity
-- (mediaId, messageId, type, url = the download path, size) plus what the
-- Matrix content repository needs.
CREATE TABLE media_files (
    media_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,              -- the uploader
    created_ts BIGINT NOT NULL,
    state TEXT NOT NULL,                -- pending (POST /create, no bytes yet), uploading, ready
    expires_ts BIGINT,                  -- pending only: when the reserved id lapses
    content_type TEXT,                  -- the type we serve (sniffed from the bytes)
    upload_name TEXT,
    size BIGINT NOT NULL DEFAULT 0,
    storage_key TEXT,
    width INTEGER,
    height INTEGER,
    duration_ms BIGINT,
    blurhash TEXT,
    poster_key TEXT,                    -- a video's poster frame (JPEG), if ffmpeg made one
    message_id TEXT                     -- the first event that shared it
);
CREATE INDEX media_files_by_user ON media_files (user_id, created_ts);
CREATE INDEX media_files_by_state ON media_files (state, created_ts);

-- Rooms (and events) where a media was shared: who else may download it.
CREATE TABLE media_refs (
    media_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    PRIMARY KEY (media_id, event_id)
);

CREATE TABLE media_thumbnails (
    media_id TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    method TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size BIGINT NOT NULL,
    storage_key TEXT NOT NULL,
    PRIMARY KEY (media_id, width, height, method)
);
