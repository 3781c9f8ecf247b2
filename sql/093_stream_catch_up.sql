-- With several processes, one that missed a stream writer's messages (a Redis reconnect)
-- reads what changed after its position, for every user at once (homeserver/workers/streams.py).
CREATE INDEX account_data_by_stream_id ON account_data (stream_id);
CREATE INDEX presence_by_stream ON presence (stream_id);
CREATE INDEX to_device_by_stream ON to_device_messages (stream_id);
CREATE INDEX device_list_changes_by_stream ON device_list_changes (stream_id);
