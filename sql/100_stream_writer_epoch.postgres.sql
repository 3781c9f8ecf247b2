-- Each start of an event writer is a new epoch of its row (ADR 0008, "A dead writer is
-- fenced"): `rejoin` counts it up, and every save of the writer names the epoch it started
-- in. A fenced writer that is still running (stopped, cut off) while its replacement has
-- started and rejoined finds its row not retired any more; without the epoch its saves would
-- match again and its commits land below what readers have already passed.
ALTER TABLE stream_writers ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0;

CREATE FUNCTION stream_writer_save(writer TEXT, promise BIGINT, writer_epoch BIGINT) RETURNS VOID AS $$
BEGIN
    INSERT INTO stream_writers AS w (name, position, epoch) VALUES (writer, promise, writer_epoch)
    ON CONFLICT (name) DO UPDATE SET position = GREATEST(w.position, excluded.position)
    WHERE w.retired_at IS NULL AND w.epoch = writer_epoch;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'event writer % was fenced: another writer retired it, or it was started again', writer
            USING ERRCODE = 'HSF01';
    END IF;
END
$$ LANGUAGE plpgsql;

-- A writer of the previous version, still running during an upgrade, names no epoch: it is
-- the first (0), refused once an upgraded instance of it has started (503, exit 75).
CREATE OR REPLACE FUNCTION stream_writer_save(writer TEXT, promise BIGINT) RETURNS VOID AS $$
BEGIN
    PERFORM stream_writer_save(writer, promise, 0);
END
$$ LANGUAGE plpgsql;
