-- Backfilled history (core/federation/backfill.py). Events fetched from another server with
-- /backfill go into `events` at negative stream positions, counting down: older than every
-- event we held, never past a sync token. For each batch, the room's history visibility at
-- its oldest event (from the resident's /state_ids there), at the position just below the
-- batch: the visibility of the events before the oldest m.room.history_visibility we hold.
CREATE TABLE backfill_visibility (
    room_id TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL,
    visibility TEXT NOT NULL,
    PRIMARY KEY (room_id, stream_ordering)
);
