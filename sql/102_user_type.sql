-- An account's type as the admin API sets it (Synapse's user_type): NULL for a normal
-- account, else 'bot' or 'support'.
ALTER TABLE users ADD COLUMN user_type TEXT;
