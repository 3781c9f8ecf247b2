// matrix-js-sdk against a real homeserver: DMs, a group, receipts, typing, edits,
// redactions and paginating 500 messages.
//
//   node rooms.mjs <base_url> <token_alice> <token_bob> <token_carol>
//
// The users exist already (tests/test_js_sdk.py registers them). On success the
// last line on stdout is `RESULT {json}`; on failure it prints `FAILED: ...` to
// stderr and exits 1.

// matrix-js-sdk >= 38 declares Node >= 22; on Node 20 its first sync fails without
// Promise.withResolvers. Define it before the SDK is loaded (dynamic import: static
// imports would run first).
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
const {
    ClientEvent,
    Direction,
    EventType,
    MsgType,
    RoomEvent,
    RoomMemberEvent,
    SyncState,
    KnownMembership,
    TimelineWindow,
    logger,
} = sdk;

// The SDK logs every request at debug level on stdout; keep warnings and errors, on stderr.
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

const [baseUrl, ...tokens] = process.argv.slice(2);
if (!baseUrl || tokens.length < 3) {
    console.error("usage: node rooms.mjs <base_url> <token_alice> <token_bob> <token_carol>");
    process.exit(2);
}

const STEP_TIMEOUT_MS = 15_000;
const started = Date.now();
const results = { steps: {} };
const clients = [];

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

/** Resolve with the emitted arguments the first time `predicate(...args)` holds. */
function waitFor(emitter, event, predicate, what, ms = STEP_TIMEOUT_MS) {
    let listener;
    const promise = new Promise((resolve) => {
        listener = (...args) => {
            if (predicate(...args)) resolve(args);
        };
        emitter.on(event, listener);
    });
    return withTimeout(promise, what, ms).finally(() => emitter.removeListener(event, listener));
}

async function step(name, fn) {
    const t0 = Date.now();
    const out = await fn();
    results.steps[name] = { ms: Date.now() - t0, ...(out ?? {}) };
}

async function whoami(token) {
    const response = await fetch(`${baseUrl}/_matrix/client/v3/account/whoami`, {
        headers: { Authorization: `Bearer ${token}` },
    });
    check(response.ok, `whoami answered ${response.status}`);
    return response.json();
}

// Element Web's settings: lazy-loaded members and threads.
const ELEMENT_LIKE = { lazyLoadMembers: true, threadSupport: true };

async function startClient(token, initialSyncLimit = 20, opts = {}, createOpts = {}) {
    const who = await whoami(token);
    const client = sdk.createClient({
        ...createOpts,
        baseUrl,
        accessToken: token,
        userId: who.user_id,
        deviceId: who.device_id,
        logger: quietLogger,
    });
    clients.push(client);
    const prepared = waitFor(
        client,
        ClientEvent.Sync,
        (state) => state === SyncState.Prepared,
        `${who.user_id} to reach PREPARED`,
    );
    // A sync error before PREPARED fails the script at once instead of after a timeout.
    const syncError = new Promise((_, reject) => {
        client.on(ClientEvent.Sync, (state, _prev, data) => {
            if (state === SyncState.Error) reject(new Error(`${who.user_id}: sync error ${data?.error}`));
        });
    });
    syncError.catch(() => {});
    await client.startClient({ initialSyncLimit, ...opts });
    await Promise.race([prepared, syncError]);
    return client;
}

/** The MatrixEvent with this id once it is in the client's live timeline of the room. */
async function seeEvent(client, roomId, eventId, what) {
    const room = client.getRoom(roomId);
    const existing = room?.getLiveTimeline().getEvents().find((e) => e.getId() === eventId);
    if (existing) return existing;
    const [event] = await waitFor(
        client,
        RoomEvent.Timeline,
        (ev, r) => r?.roomId === roomId && ev.getId() === eventId,
        `${client.getUserId()} to see ${what}`,
    );
    return event;
}

/** Join through an invite, waiting for the invite to arrive by sync first. */
async function acceptInvite(client, roomId) {
    const room = client.getRoom(roomId);
    if (room?.getMyMembership() !== KnownMembership.Invite) {
        await waitFor(
            client,
            RoomMemberEvent.Membership,
            (_ev, member) =>
                member.roomId === roomId &&
                member.userId === client.getUserId() &&
                member.membership === KnownMembership.Invite,
            `${client.getUserId()}'s invite to ${roomId}`,
        );
    }
    const joined = waitFor(
        client,
        RoomMemberEvent.Membership,
        (_ev, member) =>
            member.roomId === roomId &&
            member.userId === client.getUserId() &&
            member.membership === KnownMembership.Join,
        `${client.getUserId()}'s join of ${roomId} to come back by sync`,
    );
    await client.joinRoom(roomId);
    await joined;
}

async function sendText(client, roomId, body, extra = {}) {
    const { event_id: eventId } = await client.sendEvent(roomId, EventType.RoomMessage, {
        msgtype: MsgType.Text,
        body,
        ...extra,
    });
    return eventId;
}

async function main() {
    const all = [];
    all.push(await startClient(tokens[0]));
    all.push(await startClient(tokens[1], 20, ELEMENT_LIKE));
    all.push(await startClient(tokens[2]));
    const [a, b, c] = all;
    results.users = all.map((cl) => cl.getUserId());

    // A direct chat -----------------------------------------------------------------------------
    let dmRoom;
    await step("dm", async () => {
        const { room_id: roomId } = await a.createRoom({
            is_direct: true,
            invite: [b.getUserId()],
            preset: "trusted_private_chat",
        });
        dmRoom = roomId;
        // Element records DMs in m.direct account data; it must come back by sync.
        const direct = waitFor(
            a,
            ClientEvent.AccountData,
            (ev) => ev.getType() === EventType.Direct && ev.getContent()[b.getUserId()]?.includes(roomId),
            "m.direct to come back",
        );
        await a.setAccountData(EventType.Direct, { [b.getUserId()]: [roomId] });
        await direct;
        await acceptInvite(b, roomId);
        const inviteEvent = b.getRoom(roomId).currentState.getMember(b.getUserId()).events.member;
        check(inviteEvent.getPrevContent()?.is_direct === true, "Bob's invite carried is_direct");

        const fromAlice = await sendText(a, roomId, "hi bob (js)");
        const seenByBob = await seeEvent(b, roomId, fromAlice, "Alice's message");
        const fromBob = await sendText(b, roomId, "hi alice (js)");
        const seenByAlice = await seeEvent(a, roomId, fromBob, "Bob's message");
        check(seenByBob.getContent().body === "hi bob (js)", "Bob read Alice's text");
        check(seenByAlice.getContent().body === "hi alice (js)", "Alice read Bob's text");
        check(seenByAlice.getSender() === b.getUserId(), "sender of Bob's message");
        const members = a.getRoom(roomId).getJoinedMembers().map((m) => m.userId).sort();
        return {
            room_id: roomId,
            bob_saw: seenByBob.getContent().body,
            alice_saw: seenByAlice.getContent().body,
            joined: members,
            direct: a.getAccountData(EventType.Direct)?.getContent(),
            // An unnamed DM is named after the other member.
            names: { alice: a.getRoom(roomId).name, bob: b.getRoom(roomId).name },
            is_direct_invite: true,
        };
    });

    // A group with a name and an admin -------------------------------------------------------------
    await step("group", async () => {
        const { room_id: roomId } = await a.createRoom({
            name: "JS Group ✓",
            invite: [b.getUserId(), c.getUserId()],
        });
        await acceptInvite(b, roomId);
        await acceptInvite(c, roomId);
        const sent = [];
        for (const client of all) sent.push(await sendText(client, roomId, `group hello from ${client.getUserId()}`));
        // What Element does on opening a room: load the members lazily.
        const bobRoom = b.getRoom(roomId);
        await bobRoom.loadMembersIfNeeded();
        const lazyMembers = bobRoom.getJoinedMembers().map((m) => m.userId).sort();
        const seen = {};
        for (const client of all) {
            const bodies = [];
            for (const eventId of sent) bodies.push((await seeEvent(client, roomId, eventId, eventId)).getContent().body);
            const room = client.getRoom(roomId);
            const levels = room.currentState.getStateEvents(EventType.RoomPowerLevels, "")?.getContent() ?? {};
            seen[client.getUserId()] = {
                name: room.name,
                bodies,
                power: Object.fromEntries(all.map((x) => [x.getUserId(), room.getMember(x.getUserId())?.powerLevel])),
                users_default: levels.users_default ?? 0,
                joined: room.getJoinedMemberCount(),
            };
        }
        // Only the admin may rename the room.
        let refused = null;
        try {
            await c.setRoomName(roomId, "not allowed");
        } catch (e) {
            refused = e.errcode ?? String(e);
        }
        return { room_id: roomId, seen, refused, lazy_members: lazyMembers };
    });

    // Receipts and typing ----------------------------------------------------------------------
    await step("receipts_typing", async () => {
        const roomId = dmRoom;
        const eventId = await sendText(a, roomId, "did you read this?");
        const event = await seeEvent(b, roomId, eventId, "the message to read");
        const receiptSeen = waitFor(
            a,
            RoomEvent.Receipt,
            (ev, room) =>
                room.roomId === roomId && Object.values(ev.getContent()[eventId]?.["m.read"] ?? {}).length > 0,
            "Bob's read receipt",
        );
        await b.sendReadReceipt(event);
        const [receiptEvent] = await receiptSeen;
        const readers = Object.keys(receiptEvent.getContent()[eventId]["m.read"]);
        const upTo = a.getRoom(roomId).getEventReadUpTo(b.getUserId());

        const typingOn = waitFor(
            b,
            RoomMemberEvent.Typing,
            (_ev, member) => member.roomId === roomId && member.userId === a.getUserId() && member.typing,
            "Alice typing",
        );
        await a.sendTyping(roomId, true, 20_000);
        await typingOn;
        const typingOff = waitFor(
            b,
            RoomMemberEvent.Typing,
            (_ev, member) => member.roomId === roomId && member.userId === a.getUserId() && !member.typing,
            "Alice to stop typing",
        );
        await a.sendTyping(roomId, false, 0);
        await typingOff;
        return { readers, read_up_to: upTo, event_id: eventId, typing_on: true, typing_off: true };
    });

    // An edit and a redaction -------------------------------------------------------------------------
    await step("edit_redact", async () => {
        const roomId = dmRoom;
        const original = await sendText(a, roomId, "teh typo");
        const originalSeen = await seeEvent(b, roomId, original, "the original");
        const edit = await sendText(a, roomId, "* the typo", {
            "m.new_content": { msgtype: MsgType.Text, body: "the typo" },
            "m.relates_to": { rel_type: "m.replace", event_id: original },
        });
        const editSeen = await seeEvent(b, roomId, edit, "the edit");
        // js-sdk applies the edit to the original it holds.
        const replaced = await withTimeout(
            (async () => {
                while (!originalSeen.replacingEventId()) await new Promise((r) => setTimeout(r, 20));
                return originalSeen;
            })(),
            "the edit to be applied",
        );
        const editedBody = replaced.getContent().body;
        const replacingEventId = replaced.replacingEventId();

        const redacted = waitFor(
            b,
            RoomEvent.Redaction,
            (ev, room) => room.roomId === roomId && ev.event.redacts === original,
            "the redaction",
        );
        const { event_id: redactionId } = await a.redactEvent(roomId, original, undefined, { reason: "typo" });
        const [redactionEvent] = await redacted;
        // Read back from the server: the original is empty and says who redacted it.
        const fetched = await b.fetchRoomEvent(roomId, original);
        return {
            original,
            edit,
            edit_relation: editSeen.getWireContent()["m.relates_to"],
            replacing_event_id: replacingEventId,
            edited_body: editedBody,
            redaction_id: redactionId,
            redaction_seen: redactionEvent.getId(),
            original_is_redacted: originalSeen.isRedacted(),
            original_content_after: originalSeen.getContent(),
            fetched_content: fetched.content,
            fetched_redacted_because: fetched.unsigned?.redacted_because?.event_id ?? null,
        };
    });

    // 500 messages, paginated both ways -------------------------------------------------------------
    await step("paginate", async () => {
        const COUNT = 500;
        const BATCH = 50;
        const { room_id: roomId } = await a.createRoom({ invite: [b.getUserId()], name: "history" });
        await acceptInvite(b, roomId);
        const sent = [];
        for (let start = 0; start < COUNT; start += BATCH) {
            const batch = [];
            for (let i = start; i < start + BATCH; i++) batch.push(sendText(a, roomId, `js message ${i}`));
            sent.push(...(await Promise.all(batch)));
        }
        const last = await sendText(a, roomId, "the end");
        await seeEvent(b, roomId, last, "the last message");

        // A fresh client gets a gap (limited timeline) and scrolls back to the room's start.
        const fresh = await startClient(tokens[1], 10, ELEMENT_LIKE);
        const room = fresh.getRoom(roomId);
        check(room, "the fresh client knows the room");
        const initial = room.getLiveTimeline().getEvents().length;
        let requests = 0;
        while (room.oldState.paginationToken !== null) {
            await fresh.scrollback(room, 100);
            requests += 1;
            check(requests < 50, "scrollback ends");
        }
        const backwards = room.getLiveTimeline().getEvents().map((e) => e.getId());
        const first = room.getLiveTimeline().getEvents()[0];

        // Forwards from the start with /messages.
        const forwards = [];
        let from = null;
        let pages = 0;
        for (;;) {
            const page = await fresh.createMessagesRequest(roomId, from, 64, Direction.Forward);
            forwards.push(...page.chunk.map((e) => e.event_id));
            pages += 1;
            check(pages < 50, "forward pagination ends");
            if (!page.end || page.chunk.length === 0) break;
            from = page.end;
        }
        // Element's way: open the room at an old event (/context), then page both ways
        // with a TimelineWindow until it meets the start of the room and the live timeline.
        const viewer = await startClient(tokens[1], 10, ELEMENT_LIKE, { timelineSupport: true });
        const viewed = viewer.getRoom(roomId);
        const window = new TimelineWindow(viewer, viewed.getUnfilteredTimelineSet(), { windowLimit: 10_000 });
        await window.load(sent[COUNT / 2], 20);
        const loadedAround = window.getEvents().map((e) => e.getId());
        let windowPages = 0;
        for (const dir of [Direction.Forward, Direction.Backward]) {
            while (window.canPaginate(dir)) {
                await window.paginate(dir, 100);
                windowPages += 1;
                check(windowPages < 50, "the timeline window stops paginating");
            }
        }
        const windowed = window.getEvents().map((e) => e.getId());

        const sentSet = new Set(sent);
        const order = (ids) => ids.filter((id) => sentSet.has(id));
        const batchOf = new Map(sent.map((id, i) => [id, Math.floor(i / BATCH)]));
        const batches = order(forwards).map((id) => batchOf.get(id));
        return {
            sent: sent.length,
            initial_timeline: initial,
            scrollback_requests: requests,
            backwards_count: order(backwards).length,
            backwards_unique: new Set(order(backwards)).size,
            forwards_count: order(forwards).length,
            forwards_unique: new Set(order(forwards)).size,
            same_order: JSON.stringify(backwards) === JSON.stringify(forwards),
            all_sent_seen: sent.every((id) => backwards.includes(id)),
            batches_in_order: batches.every((x, i) => i === 0 || batches[i - 1] <= x),
            first_type: first.getType(),
            ends_with: forwards[forwards.length - 1] === last,
            forward_pages: pages,
            window_loaded_middle: loadedAround.includes(sent[COUNT / 2]) && loadedAround.length <= 21,
            window_same_order: JSON.stringify(windowed) === JSON.stringify(forwards),
            window_count: order(windowed).length,
        };
    });
}

try {
    await withTimeout(main(), "the whole script", 120_000);
    results.ms = Date.now() - started;
    console.log(`RESULT ${JSON.stringify(results)}`);
    for (const client of clients) client.stopClient();
    process.exit(0);
} catch (e) {
    console.error(`FAILED: ${e?.stack ?? e}`);
    if (e?.data) console.error(JSON.stringify(e.data));
    console.log(`RESULT ${JSON.stringify({ error: String(e?.message ?? e), ...results })}`);
    for (const client of clients) client.stopClient();
    process.exit(1);
}
