-- What each user's account data holds (content, type and room id of every entry, in
-- bytes; the content is ASCII JSON), kept by a trigger on every write and delete, so the
-- client API checks limits.max_account_data_per_user with one row instead of a sum over
-- the user's entries (megabytes to read at the limit, at every PUT). octet_length reads
-- a stored value's size without fetching it from TOAST.
CREATE TABLE account_data_usage (
    user_id TEXT PRIMARY KEY,
    bytes BIGINT NOT NULL
);

INSERT INTO account_data_usage (user_id, bytes)
SELECT user_id, SUM(octet_length(content) + octet_length(type) + octet_length(room_id))
FROM account_data GROUP BY user_id;

CREATE FUNCTION account_data_usage_track() RETURNS TRIGGER AS $$
DECLARE
    delta BIGINT := 0;
    owner TEXT;
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        delta := octet_length(NEW.content) + octet_length(NEW.type) + octet_length(NEW.room_id);
        owner := NEW.user_id;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        delta := delta - (octet_length(OLD.content) + octet_length(OLD.type) + octet_length(OLD.room_id));
        owner := OLD.user_id;
    END IF;
    INSERT INTO account_data_usage AS u (user_id, bytes) VALUES (owner, delta)
    ON CONFLICT (user_id) DO UPDATE SET bytes = u.bytes + excluded.bytes;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

-- An upsert's DO UPDATE fires it as an UPDATE (an entry written again).
CREATE TRIGGER account_data_usage AFTER INSERT OR UPDATE OR DELETE ON account_data
FOR EACH ROW EXECUTE FUNCTION account_data_usage_track();
