-- The calls plugin's call log (the product spec's CallLog), built from the call events
-- the server can read: m.call.* in unencrypted rooms and MatrixRTC membership state.
CREATE TABLE calls_log (
    room_id TEXT NOT NULL,
    call_id TEXT NOT NULL,              -- m.call.*'s call_id; "rtc:" + first event id for a group call
    is_group BOOLEAN NOT NULL,
    kind TEXT NOT NULL,                 -- voice or video
    caller TEXT NOT NULL,
    callee TEXT,                        -- the invitee; NULL when it rang several users, or a group call
    started_ts BIGINT NOT NULL,         -- origin_server_ts of the invite (first join)
    lifetime_ms BIGINT NOT NULL,        -- how long the invite rings; 0 for group calls
    answered_ts BIGINT,
    ended_ts BIGINT,
    outcome TEXT,                       -- NULL while ringing or going on
    end_reason TEXT,
    seq BIGINT NOT NULL,                -- stream position of the first event: the log's order
    PRIMARY KEY (room_id, call_id)
);
CREATE INDEX calls_log_ringing ON calls_log (outcome, answered_ts, started_ts);

-- Whose log a call is in: the caller, whoever it rang, whoever answered or joined.
CREATE TABLE calls_participants (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    call_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id, call_id)
);
CREATE INDEX calls_participants_by_user ON calls_participants (user_id, seq);

-- MatrixRTC: the devices in a group call now (one row per membership state key)...
CREATE TABLE calls_rtc_members (
    room_id TEXT NOT NULL,
    slot TEXT NOT NULL,
    user_id TEXT NOT NULL,
    rtc_call_id TEXT NOT NULL,
    PRIMARY KEY (room_id, slot)
);
-- ...and the log entry of each group call going on.
CREATE TABLE calls_rtc_sessions (
    room_id TEXT NOT NULL,
    rtc_call_id TEXT NOT NULL,
    call_id TEXT NOT NULL,
    PRIMARY KEY (room_id, rtc_call_id)
);
