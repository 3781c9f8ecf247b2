-- The admin dashboard's sign-ups per day read a range of creation times. Portable SQL.
CREATE INDEX users_by_created_ts ON users (created_ts);
