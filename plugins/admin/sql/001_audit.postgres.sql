-- The admin plugin's audit log: one row per call of the admin API by an authenticated user
-- (admins and refused non-admins alike), written before the answer goes out.
CREATE TABLE admin_audit (
    audit_id BIGSERIAL PRIMARY KEY,
    ts BIGINT NOT NULL,             -- when the call was answered (ms)
    user_id TEXT NOT NULL,          -- who called
    method TEXT NOT NULL,
    route TEXT NOT NULL,            -- the route's template, e.g. /_synapse/admin/v2/users/{user_id}
    target TEXT,                    -- the user, room, report or token it acted on, if any
    status INTEGER NOT NULL         -- the HTTP status answered: 200, 201, 403, 404...
);
CREATE INDEX admin_audit_by_time ON admin_audit (ts);
