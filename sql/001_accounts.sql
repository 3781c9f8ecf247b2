-- Accounts, their third-party ids (email), profiles, devices and tokens.
-- Portable SQL: runs unchanged on SQLite and PostgreSQL.

CREATE TABLE users (
    user_id TEXT PRIMARY KEY,
    password_hash TEXT,                 -- argon2id string; NULL: no password login
    created_ts BIGINT NOT NULL,
    is_admin BOOLEAN NOT NULL DEFAULT FALSE,
    deactivated BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE TABLE user_threepids (
    medium TEXT NOT NULL,               -- 'email'
    address TEXT NOT NULL,              -- lower-cased
    user_id TEXT NOT NULL REFERENCES users (user_id),
    added_ts BIGINT NOT NULL,
    validated_ts BIGINT,                -- NULL until the owner followed the mail's link
    PRIMARY KEY (medium, address)
);
CREATE INDEX user_threepids_by_user ON user_threepids (user_id);

CREATE TABLE profiles (
    user_id TEXT PRIMARY KEY REFERENCES users (user_id),
    displayname TEXT,
    avatar_url TEXT
);

CREATE TABLE devices (
    user_id TEXT NOT NULL REFERENCES users (user_id),
    device_id TEXT NOT NULL,
    display_name TEXT,
    created_ts BIGINT NOT NULL,
    last_seen_ts BIGINT,
    last_seen_ip TEXT,
    PRIMARY KEY (user_id, device_id)
);

-- One row per live access token; the token itself (a JWT) is never stored,
-- only its id (the `jti` claim). Deleting the row revokes the token.
CREATE TABLE access_tokens (
    token_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    expires_ts BIGINT NOT NULL,
    refreshable BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX access_tokens_by_device ON access_tokens (user_id, device_id);

-- Refresh tokens are stored as SHA-256 hashes; each is used once.
CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    expires_ts BIGINT NOT NULL
);
CREATE INDEX refresh_tokens_by_device ON refresh_tokens (user_id, device_id);

-- User-interactive auth sessions (spec: Client-Server API, User-Interactive Authentication).
CREATE TABLE ui_auth_sessions (
    session_id TEXT PRIMARY KEY,
    created_ts BIGINT NOT NULL,
    uri TEXT NOT NULL,                  -- the endpoint the session is for
    user_id TEXT,                       -- set once a stage identified the user
    completed TEXT NOT NULL             -- JSON list of completed stage types
);

-- Email validation sessions: registration, password reset, simple-API verification.
CREATE TABLE threepid_validations (
    session_id TEXT PRIMARY KEY,
    client_secret TEXT NOT NULL,
    purpose TEXT NOT NULL,              -- 'register' | 'password_reset' | 'verify_account'
    medium TEXT NOT NULL,
    address TEXT NOT NULL,
    token_hash TEXT NOT NULL,           -- SHA-256 of the link token
    code_hash TEXT NOT NULL,            -- SHA-256 of the short code typed by hand
    attempts INTEGER NOT NULL DEFAULT 0,
    send_attempt INTEGER NOT NULL,
    created_ts BIGINT NOT NULL,
    expires_ts BIGINT NOT NULL,
    validated_ts BIGINT
);
CREATE INDEX threepid_validations_by_address ON threepid_validations (medium, address);
