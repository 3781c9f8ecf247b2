-- What a server admin can restrict on an account (the admin API, docs/admin.md):
-- locked: every request with the account's tokens gets 401 M_USER_LOCKED;
-- suspended: the account may read but its sends get 403 M_USER_SUSPENDED;
-- shadow_banned: its sends are answered with an event id but reach no one.
-- Portable SQL: runs unchanged on SQLite and PostgreSQL.
ALTER TABLE users ADD COLUMN locked BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE users ADD COLUMN suspended BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE users ADD COLUMN shadow_banned BOOLEAN NOT NULL DEFAULT FALSE;
