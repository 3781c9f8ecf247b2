// matrix-js-sdk's SlidingSync (MSC4186, simplified sliding sync) against a real homeserver:
// the room list, room names and timelines, invites, a knock, a list filtered by room tag,
// a live message, typing and a to-device message, all through the SDK's sliding sync loop
// instead of /sync.
//
//   node sliding_sync.mjs <base_url> <token_alice> <token_bob> <room_id> <invite_room_id> <knocked_room_id>
//
// Alice only sends (plain HTTP); Bob runs the SDK. On success the last line on stdout is
// `RESULT {json}`; on failure it prints `FAILED: ...` to stderr and exits 1.

// matrix-js-sdk >= 38 declares Node >= 22; on Node 20 it needs Promise.withResolvers.
if (typeof Promise.withResolvers !== "function") {
    Promise.withResolvers = function withResolvers() {
        let resolve;
        let reject;
        const promise = new this((res, rej) => {
            resolve = res;
            reject = rej;
        });
        return { promise, resolve, reject };
    };
}

const sdk = await import("matrix-js-sdk");
const { SlidingSync } = await import("matrix-js-sdk/lib/sliding-sync.js");
const { ClientEvent, RoomEvent, RoomMemberEvent, SyncState, logger } = sdk;

logger?.setLevel?.("warn");
const quietLogger = {
    trace() {},
    debug() {},
    info() {},
    warn: (...args) => console.error(...args),
    error: (...args) => console.error(...args),
    getChild() {
        return quietLogger;
    },
};

const [baseUrl, aliceToken, bobToken, roomId, inviteRoomId, knockedRoomId] = process.argv.slice(2);
const STEP_TIMEOUT_MS = 15_000;

function check(condition, message) {
    if (!condition) throw new Error(`check failed: ${message}`);
}

function withTimeout(promise, what, ms = STEP_TIMEOUT_MS) {
    let timer;
    const timeout = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    });
    return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function waitFor(emitter, event, predicate, what) {
    let listener;
    const promise = new Promise((resolve) => {
        listener = (...args) => {
            if (predicate(...args)) resolve(args);
        };
        emitter.on(event, listener);
    });
    return withTimeout(promise, what).finally(() => emitter.removeListener(event, listener));
}

async function http(method, token, path, body) {
    const response = await fetch(`${baseUrl}${path}`, {
        method,
        headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
    });
    check(response.ok, `${method} ${path} answered ${response.status}`);
    return response.json();
}

let client;
let slidingSync;
try {
    const alice = await http("GET", aliceToken, "/_matrix/client/v3/account/whoami");
    const bob = await http("GET", bobToken, "/_matrix/client/v3/account/whoami");
    client = sdk.createClient({
        baseUrl,
        accessToken: bobToken,
        userId: bob.user_id,
        deviceId: bob.device_id,
        logger: quietLogger,
    });
    const roomConfig = { timeline_limit: 10, required_state: [["*", "*"]] };
    slidingSync = new SlidingSync(
        baseUrl,
        new Map([
            ["all", { ranges: [[0, 19]], ...roomConfig }],
            ["favourites", { ranges: [[0, 19]], ...roomConfig, filters: { tags: ["m.favourite"] } }],
        ]),
        roomConfig,
        client,
        5_000,
    );
    const prepared = waitFor(client, ClientEvent.Sync, (state) => state === SyncState.Prepared, "PREPARED");
    await client.startClient({ slidingSync });
    await prepared;

    const room = client.getRoom(roomId);
    check(room, "the joined room is known after the first response");
    const bodies = () =>
        room
            .getLiveTimeline()
            .getEvents()
            .filter((e) => e.getType() === "m.room.message")
            .map((e) => e.getContent().body);
    const result = {
        name: room.name,
        members: room.getJoinedMemberCount(),
        bodies_before: bodies(),
        list_count: slidingSync.getListData("all")?.joinedCount,
        invite_membership: client.getRoom(inviteRoomId)?.getMyMembership(),
        knock_membership: client.getRoom(knockedRoomId)?.getMyMembership(),
        knock_name: client.getRoom(knockedRoomId)?.name,
        favourites_count: slidingSync.getListData("favourites")?.joinedCount,
    };

    // A live message from Alice reaches Bob's timeline through the long-poll.
    const live = waitFor(
        client,
        RoomEvent.Timeline,
        (event) => event.getRoomId() === roomId && event.getContent().body === "live from alice",
        "the live message",
    );
    await http("PUT", aliceToken, `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/send/m.room.message/live1`, {
        msgtype: "m.text",
        body: "live from alice",
    });
    await live;
    result.bodies_after = bodies();

    // Typing (the typing extension).
    const typing = waitFor(
        client,
        RoomMemberEvent.Typing,
        (_event, member) => member.userId === alice.user_id && member.typing,
        "alice typing",
    );
    await http(
        "PUT",
        aliceToken,
        `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/typing/${encodeURIComponent(alice.user_id)}`,
        { typing: true, timeout: 30_000 },
    );
    await typing;
    result.typing = true;

    // A to-device message (the to_device extension).
    const toDevice = waitFor(
        client,
        ClientEvent.ToDeviceEvent,
        (event) => event.getType() === "org.example.sliding",
        "the to-device message",
    );
    await http("PUT", aliceToken, "/_matrix/client/v3/sendToDevice/org.example.sliding/td1", {
        messages: { [bob.user_id]: { [bob.device_id]: { hello: "bob" } } },
    });
    const [event] = await toDevice;
    result.to_device = event.getContent();
    console.log(`RESULT ${JSON.stringify(result)}`);
    slidingSync.stop();
    client.stopClient();
    process.exit(0);
} catch (e) {
    console.error(`FAILED: ${e?.stack ?? e}`);
    slidingSync?.stop();
    client?.stopClient();
    process.exit(1);
}
