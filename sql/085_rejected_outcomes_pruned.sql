-- Rejected remote events are kept a week, then forgotten (checking one again gives the
-- same answer, so forgetting loses nothing); the hourly prune finds the old ones here.
-- Outliers and soft-failed events are never pruned: they are part of the room's DAG.
CREATE INDEX remote_event_outcomes_rejected ON remote_event_outcomes (received_ts)
    WHERE status = 'rejected';
