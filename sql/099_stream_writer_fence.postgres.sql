-- Fencing of event writers (ADR 0008, "A dead writer is fenced"): a writer's every promise
-- save goes through this function, which matches only its row while no one retired it. Once
-- another writer has force-retired it (`retired_at` set while it held no lock), the save
-- raises, and the transaction it belongs to (a commit of events) rolls back: nothing the
-- fenced writer still had in flight is stored above the position it was retired at.
-- The UPDATE of ON CONFLICT waits for the row lock of a concurrent fence and re-reads the
-- row after it (READ COMMITTED), so the check cannot pass on a stale row.
CREATE FUNCTION stream_writer_save(writer TEXT, promise BIGINT) RETURNS VOID AS $$
BEGIN
    INSERT INTO stream_writers AS w (name, position) VALUES (writer, promise)
    ON CONFLICT (name) DO UPDATE SET position = GREATEST(w.position, excluded.position)
    WHERE w.retired_at IS NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'event writer % was fenced: another writer retired it', writer
            USING ERRCODE = 'HSF01';
    END IF;
END
$$ LANGUAGE plpgsql;
