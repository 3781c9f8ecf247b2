-- Jump to date (GET /rooms/{roomId}/timestamp_to_event): the nearest event of a room
-- before or after a timestamp, found by index instead of by scanning the room.
CREATE INDEX events_by_room_ts ON events (room_id, origin_server_ts, stream_ordering);
