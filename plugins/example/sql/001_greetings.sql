-- The example plugin's own table: greetings per user.
CREATE TABLE example_greetings (
    user_id TEXT PRIMARY KEY,
    count INTEGER NOT NULL
);
