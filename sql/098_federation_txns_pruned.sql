-- Stored transaction answers are kept a day (a sender retries only until it is answered);
-- the hourly prune finds the old ones by their arrival time.
CREATE INDEX federation_txns_received ON federation_txns (received_ts);
