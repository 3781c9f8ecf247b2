-- An event writer stopped gracefully (homeserver/workers/event_replication.py, ADR 0008):
-- `retired_at` is its promise when it stopped; while set, the other writers move its
-- `position` up for it, so no process waits for it. NULL: it writes (or died unannounced).
ALTER TABLE stream_writers ADD COLUMN retired_at BIGINT;
