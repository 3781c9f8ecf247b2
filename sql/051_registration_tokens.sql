-- Registration tokens an admin hands out (the admin API's /v1/registration_tokens): with
-- `registration.requires_token`, signing up needs one (m.login.registration_token).
-- A sign-up that passed the token stage holds one `pending` use until it finishes
-- (`completed` + 1) or its auth session expires (the use is given back).
-- Portable SQL: runs unchanged on SQLite and PostgreSQL.
CREATE TABLE registration_tokens (
    token TEXT PRIMARY KEY,
    uses_allowed INTEGER,           -- NULL: unlimited
    pending INTEGER NOT NULL DEFAULT 0,
    completed INTEGER NOT NULL DEFAULT 0,
    expiry_time BIGINT              -- ms; NULL: never expires
);

ALTER TABLE ui_auth_sessions ADD COLUMN registration_token TEXT;
