// matrix-js-sdk's own calls for the everyday features of issue 14, each with who may not use
// them: room tags, a space hierarchy, the room summary, an upgrade, jump to date, message
// search, the user directory, reports, ignoring a user, the thread list and knocking.
//
//   node client_features.mjs <base_url> <token_alice> <token_bob> <token_carol> <token_dave>
//
// Alice owns the rooms, Bob is a member, Carol is in none of Alice's main rooms (the
// non-member) and Dave joins the main room and leaves it (the left member). Outcomes are
// collected and printed as the last line `RESULT {json}`; errors a call should give are
// recorded as {status, errcode}. The assertions are in tests/test_client_features_js.py.

// matrix-js-sdk >= 38 needs Promise.withResolvers (Node 22); define it before the SDK loads.
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
const { ClientEvent, Direction, EventType, MsgType, RoomEvent, SyncState, ThreadFilterType, logger } = sdk;
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
if (!baseUrl || tokens.length < 4) {
    console.error("usage: node client_features.mjs <base_url> <token_alice> <token_bob> <token_carol> <token_dave>");
    process.exit(2);
}

const STEP_TIMEOUT_MS = 15_000;
const clients = [];

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

async function client(token, opts = {}) {
    const response = await fetch(`${baseUrl}/_matrix/client/v3/account/whoami`, {
        headers: { Authorization: `Bearer ${token}` },
    });
    const who = await response.json();
    const made = sdk.createClient({
        ...opts,
        baseUrl,
        accessToken: token,
        userId: who.user_id,
        deviceId: who.device_id,
        logger: quietLogger,
    });
    clients.push(made);
    return made;
}

/** {status, errcode} of the MatrixError a call fails with, or {ok: value} if it succeeds. */
async function outcome(promise) {
    try {
        return { ok: await promise };
    } catch (e) {
        if (e?.httpStatus === undefined) throw e;
        return { status: e.httpStatus, errcode: e.errcode };
    }
}

async function sendText(cl, roomId, body, extra = {}) {
    const { event_id: eventId } = await cl.sendEvent(roomId, EventType.RoomMessage, {
        msgtype: MsgType.Text,
        body,
        ...extra,
    });
    return eventId;
}

async function main() {
    // Alice syncs like Element Web (threads on), so the SDK picks the stable thread list path.
    const alice = await client(tokens[0], { threadSupport: true });
    const [bob, carol, dave] = [await client(tokens[1]), await client(tokens[2]), await client(tokens[3])];
    const prepared = waitFor(alice, ClientEvent.Sync, (state) => state === SyncState.Prepared, "Alice's first sync");
    await alice.startClient({ initialSyncLimit: 10, threadSupport: true });
    await prepared;
    const out = { users: [alice, bob, carol, dave].map((c) => c.getUserId()) };
    await bob.setDisplayName("Bobby Tables");

    // The main room: private, Bob and Dave join; Dave leaves after the first messages.
    const { room_id: room } = await alice.createRoom({ preset: "private_chat", name: "features" });
    out.room = room;
    for (const member of [bob, dave]) {
        await alice.invite(room, member.getUserId());
        await member.joinRoom(room);
    }
    // Jump to date needs a time strictly between Dave's join and the first message: the
    // server rounds its timestamps to the nearest millisecond, so wait for the clock to pass
    // two whole milliseconds (a busy wait of 2 ms at most, not a sleep for an ordering).
    const mark = Date.now();
    while (Date.now() < mark + 2);
    const beforeTs = mark + 2;
    const early = await sendText(alice, room, "the pineapple before Dave left");
    await dave.leave(room);
    const late = await sendText(alice, room, "the pineapple after Dave left");
    out.events = { early, late };

    // Tags ---------------------------------------------------------------------------------------
    await alice.setRoomTag(room, "m.favourite", { order: 0.25 });
    await alice.setRoomTag(room, "u.work", {});
    const tagged = await alice.getRoomTags(room);
    await alice.deleteRoomTag(room, "u.work");
    out.tags = {
        set: tagged,
        after_delete: await alice.getRoomTags(room),
        non_member_set: await outcome(carol.setRoomTag(room, "m.favourite", {})),
    };

    // A space with the room as a child -----------------------------------------------------------------
    const { room_id: space } = await alice.createRoom({
        preset: "private_chat",
        name: "a space",
        creation_content: { type: "m.space" },
    });
    await alice.sendStateEvent(space, "m.space.child", { via: [alice.getDomain()], suggested: true }, room);
    await alice.invite(space, dave.getUserId());
    await dave.joinRoom(space);
    await dave.leave(space);
    const hierarchy = await alice.getRoomHierarchy(space, 10, 1);
    out.hierarchy = {
        space,
        rooms: hierarchy.rooms.map((r) => ({ room_id: r.room_id, room_type: r.room_type ?? null, name: r.name })),
        child_via: hierarchy.rooms.find((r) => r.room_id === space)?.children_state?.map((e) => e.state_key),
        non_member: await outcome(carol.getRoomHierarchy(space)),
        left_member: await outcome(dave.getRoomHierarchy(space)),
    };

    // Room summary -----------------------------------------------------------------------------------
    const summary = await alice.getRoomSummary(room);
    out.summary = {
        own: { room_id: summary.room_id, name: summary.name, membership: summary.membership, join_rule: summary.join_rule },
        non_member: await outcome(carol.getRoomSummary(room)),
    };

    // Jump to date ----------------------------------------------------------------------------------
    out.jump = {
        forward: (await alice.timestampToEvent(room, beforeTs, Direction.Forward)).event_id,
        backward_from_now: (await alice.timestampToEvent(room, Date.now() + 1000, Direction.Backward)).event_id,
        non_member: await outcome(carol.timestampToEvent(room, beforeTs, Direction.Forward)),
        left_member_now: await outcome(dave.timestampToEvent(room, Date.now() + 1000, Direction.Backward)),
    };

    // Message search ---------------------------------------------------------------------------------
    const found = async (cl) => {
        const res = await cl.searchRoomEvents({ term: "pineapple" });
        return { count: res.count, ids: res.results.map((r) => r.context.getEvent().getId()).sort() };
    };
    out.search = { member: await found(alice), non_member: await found(carol), left_member: await found(dave) };

    // User directory -----------------------------------------------------------------------------------
    const directory = async (cl) => (await cl.searchUserDirectory({ term: "bobby" })).results.map((u) => u.user_id);
    out.directory = { shares_room: await directory(alice), shares_none: await directory(carol) };

    // Reports ----------------------------------------------------------------------------------------
    out.reports = {
        member: await outcome(bob.reportEvent(room, late, -100, "spam")),
        room: await outcome(bob.reportRoom(room, "bad room")),
        non_member: await outcome(carol.reportEvent(room, late, -100, "spam")),
        left_member_later_event: await outcome(dave.reportEvent(room, late, -100, "spam")),
    };
    // POST /users/{userId}/report (v1.14): js-sdk 43 has no method for it; Element calls it
    // through the client's own HTTP API, as here.
    const reportUser = (cl, userId, body) =>
        outcome(cl.http.authedRequest(sdk.Method.Post, `/users/${encodeURIComponent(userId)}/report`, undefined, body));
    const serverName = alice.getUserId().split(":").slice(1).join(":");
    out.user_reports = {
        shares_room: await reportUser(bob, alice.getUserId(), { reason: "rude" }),
        shares_none: await reportUser(carol, bob.getUserId(), { reason: "" }),
        unknown_user: await reportUser(bob, `@nobody-${Date.now()}:${serverName}`, { reason: "x" }),
        not_a_user_id: await reportUser(bob, "nobody", { reason: "x" }),
        self: await reportUser(bob, bob.getUserId(), { reason: "x" }),
        missing_reason: await reportUser(bob, alice.getUserId(), {}),
        reason_not_text: await reportUser(bob, alice.getUserId(), { reason: 5 }),
        no_token: await fetch(`${baseUrl}/_matrix/client/v3/users/${encodeURIComponent(alice.getUserId())}/report`, {
            method: "POST",
            headers: { "Content-Type": "application/json" },
            body: JSON.stringify({ reason: "x" }),
        }).then(async (r) => ({ status: r.status, errcode: (await r.json()).errcode })),
    };

    // Threads --------------------------------------------------------------------------------------
    const root = await sendText(alice, room, "thread root");
    const reply = await sendText(bob, room, "thread reply", {
        "m.relates_to": { rel_type: "m.thread", event_id: root },
    });
    const threads = await alice.createThreadListMessagesRequest(room, null, 10, Direction.Backward, ThreadFilterType.All);
    const bundle = threads.chunk.find((e) => e.event_id === root)?.unsigned?.["m.relations"]?.["m.thread"];
    out.threads = {
        roots: threads.chunk.map((e) => e.event_id),
        root,
        reply,
        bundle: bundle && { count: bundle.count, latest: bundle.latest_event?.event_id, mine: bundle.current_user_participated },
        participated_by_alice: (
            await alice.createThreadListMessagesRequest(room, null, 10, Direction.Backward, ThreadFilterType.My)
        ).chunk.map((e) => e.event_id),
        non_member: await outcome(carol.createThreadListMessagesRequest(room, null, 10)),
    };
    out.threads.left_member = await outcome(dave.createThreadListMessagesRequest(room, null, 10));

    // Upgrade ----------------------------------------------------------------------------------------
    const { room_id: old } = await alice.createRoom({ preset: "private_chat", name: "to upgrade" });
    await alice.invite(old, bob.getUserId());
    await bob.joinRoom(old);
    out.upgrade = {
        by_member: await outcome(bob.upgradeRoom(old, "11")),
        by_non_member: await outcome(carol.upgradeRoom(old, "11")),
    };
    const { replacement_room: replacement } = await alice.upgradeRoom(old, "11");
    const tombstone = await alice.getStateEvent(old, EventType.RoomTombstone, "");
    const create = await alice.getStateEvent(replacement, EventType.RoomCreate, "");
    out.upgrade.old = old;
    out.upgrade.replacement = replacement;
    out.upgrade.tombstone = tombstone.replacement_room;
    out.upgrade.predecessor = create.predecessor?.room_id;
    out.upgrade.version = create.room_version;
    out.upgrade.name = (await alice.getStateEvent(replacement, EventType.RoomName, "")).name;
    out.upgrade.old_send = await outcome(sendText(bob, old, "into the old room"));

    // Knocking -----------------------------------------------------------------------------------------
    const { room_id: knockable } = await alice.createRoom({
        preset: "private_chat",
        name: "knock here",
        initial_state: [{ type: "m.room.join_rules", state_key: "", content: { join_rule: "knock" } }],
    });
    const knocked = await carol.knockRoom(knockable, { reason: "let me in" });
    const knockMember = await alice.getStateEvent(knockable, EventType.RoomMember, carol.getUserId());
    out.knock = {
        room_id: knocked.room_id,
        expected: knockable,
        membership: knockMember.membership,
        reason: knockMember.reason,
        invite_only: await outcome(carol.knockRoom(room)),
        already_member: await outcome(bob.knockRoom(room)),
    };

    // Ignoring: Bob's messages after Alice ignores him never reach her sync --------------------------
    const { room_id: chat } = await alice.createRoom({ preset: "private_chat", name: "ignore" });
    for (const member of [bob, carol]) {
        await alice.invite(chat, member.getUserId());
        await member.joinRoom(chat);
    }
    const ignored = waitFor(
        alice,
        ClientEvent.AccountData,
        (ev) => ev.getType() === "m.ignored_user_list" && bob.getUserId() in (ev.getContent().ignored_users ?? {}),
        "the ignore list to come back",
    );
    await alice.setIgnoredUsers([bob.getUserId()]);
    await ignored;
    const seen = [];
    alice.on(RoomEvent.Timeline, (ev, r) => {
        if (r?.roomId === chat) seen.push(ev.getId());
    });
    const fromBob = await sendText(bob, chat, "you cannot see me");
    // A mention would highlight; from an ignored user it counts for nothing and notifies no one.
    const bobMention = await sendText(bob, chat, "hey alice", { "m.mentions": { user_ids: [alice.getUserId()] } });
    const marker = waitFor(
        alice,
        RoomEvent.Timeline,
        (ev, r) => r?.roomId === chat && ev.getSender() === carol.getUserId() && ev.getContent().body === "after bob",
        "Carol's message after Bob's",
    );
    const fromCarol = await sendText(carol, chat, "after bob");
    await marker;
    const chatRoom = alice.getRoom(chat);
    const listed = await alice.http.authedRequest(sdk.Method.Get, "/notifications", { limit: "50" });
    out.ignore_counts = {
        total: chatRoom.getUnreadNotificationCount(sdk.NotificationCountType.Total),
        highlight: chatRoom.getUnreadNotificationCount(sdk.NotificationCountType.Highlight),
        notified: listed.notifications.filter((n) => n.room_id === chat).map((n) => n.event.event_id),
        bob_mention: bobMention,
    };
    out.ignore = {
        is_ignored: alice.isUserIgnored(bob.getUserId()),
        list: alice.getIgnoredUsers(),
        from_bob: fromBob,
        from_carol: fromCarol,
        bob_seen: seen.includes(fromBob),
        carol_seen: seen.includes(fromCarol),
        bob_in_room: alice
            .getRoom(chat)
            .getLiveTimeline()
            .getEvents()
            .some((e) => e.getId() === fromBob),
    };
    return out;
}

try {
    const out = await withTimeout(main(), "the whole script", 100_000);
    console.log(`RESULT ${JSON.stringify(out)}`);
    for (const cl of clients) cl.stopClient();
    process.exit(0);
} catch (e) {
    console.error(`FAILED: ${e?.stack ?? e}`);
    if (e?.data) console.error(JSON.stringify(e.data));
    for (const cl of clients) cl.stopClient();
    process.exit(1);
}
