-- What each user's account data holds (content, type and room id of every entry, in
-- characters; the content is ASCII JSON), kept by triggers on every write and delete, so
-- the client API checks limits.max_account_data_per_user with one row instead of a sum
-- over the user's entries (megabytes to read at the limit, at every PUT).
CREATE TABLE account_data_usage (
    user_id TEXT PRIMARY KEY,
    bytes BIGINT NOT NULL
);

INSERT INTO account_data_usage (user_id, bytes)
SELECT user_id, SUM(LENGTH(content) + LENGTH(type) + LENGTH(room_id)) FROM account_data GROUP BY user_id;

CREATE TRIGGER account_data_usage_insert AFTER INSERT ON account_data BEGIN
    INSERT INTO account_data_usage (user_id, bytes)
    VALUES (NEW.user_id, LENGTH(NEW.content) + LENGTH(NEW.type) + LENGTH(NEW.room_id))
    ON CONFLICT (user_id) DO UPDATE SET bytes = bytes + excluded.bytes;
END;

-- Also fired by the upsert's DO UPDATE (an entry written again).
CREATE TRIGGER account_data_usage_update AFTER UPDATE ON account_data BEGIN
    UPDATE account_data_usage
    SET bytes = bytes - (LENGTH(OLD.content) + LENGTH(OLD.type) + LENGTH(OLD.room_id))
        + (LENGTH(NEW.content) + LENGTH(NEW.type) + LENGTH(NEW.room_id))
    WHERE user_id = NEW.user_id;
END;

CREATE TRIGGER account_data_usage_delete AFTER DELETE ON account_data BEGIN
    UPDATE account_data_usage
    SET bytes = bytes - (LENGTH(OLD.content) + LENGTH(OLD.type) + LENGTH(OLD.room_id))
    WHERE user_id = OLD.user_id;
END;
