-- Quarantine by a server admin (the admin plugin, docs/admin.md): while set, nobody can
-- download the media or its thumbnails. Holds the admin's user id.
ALTER TABLE media_files ADD COLUMN quarantined_by TEXT;
