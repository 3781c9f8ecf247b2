// Shared helpers for the end-to-end encryption scripts (e2ee.mjs, e2ee_verify_backup.mjs):
// matrix-js-sdk clients with its Rust crypto (the wasm package from npm, in-memory stores)
// against a real homeserver process.
//
// Each script prints `RESULT {json}` as its last stdout line; on failure it prints
// `FAILED: ...` to stderr and exits 1 (see `runMain`).

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

export const sdk = await import("matrix-js-sdk");
export const cryptoApi = await import("matrix-js-sdk/lib/crypto-api/index.js");
// A client waits a random 0-10 s before uploading new room keys to the backup (to spread
// load over clients); tests don't need to wait that long.
const { RustBackupManager } = await import("matrix-js-sdk/lib/rust-crypto/backup.js");
RustBackupManager.maxBackupLoopStartDelayMillis = 200;

const { ClientEvent, EventType, MsgType, RoomEvent, RoomMemberEvent, SyncState, KnownMembership, MatrixEventEvent } =
    sdk;

// The SDK (and the Rust crypto through it) logs a lot at debug level; keep warnings and
// errors, on stderr. HS_E2EE_DEBUG=1 shows everything.
const DEBUG = !!process.env.HS_E2EE_DEBUG;
export const quietLogger = {
    trace: DEBUG ? (...a) => console.error(...a) : () => {},
    debug: DEBUG ? (...a) => console.error(...a) : () => {},
    info: DEBUG ? (...a) => console.error(...a) : () => {},
    warn: (...args) => console.error(...args),
    error: (...args) => console.error(...args),
    getChild() {
        return quietLogger;
    },
};
sdk.logger?.setLevel?.(DEBUG ? "debug" : "warn");

// HS_E2EE_TRACE=<regex>: print the requests (and answers) whose URL matches, for debugging.
const TRACE = process.env.HS_E2EE_TRACE ? new RegExp(process.env.HS_E2EE_TRACE) : null;
async function tracingFetch(url, init) {
    const response = await fetch(url, init);
    if (TRACE && TRACE.test(String(url))) {
        const text = await response.clone().text();
        console.error(`TRACE ${init?.method ?? "GET"} ${url}\n  > ${init?.body ?? ""}\n  < ${response.status} ${text}`);
    }
    return response;
}

export const STEP_TIMEOUT_MS = 20_000;
export const PASSWORD = "correct horse battery";

export function check(condition, message) {
    if (!condition) throw new Error(`check failed: ${message}`);
}

export function sleep(ms) {
    return new Promise((r) => setTimeout(r, ms));
}

export function withTimeout(promise, what, ms = STEP_TIMEOUT_MS) {
    let timer;
    const timeout = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    });
    return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Poll `fn` until it returns a truthy value. */
export async function until(fn, what, ms = STEP_TIMEOUT_MS, every = 50) {
    return withTimeout(
        (async () => {
            for (;;) {
                const value = await fn();
                if (value) return value;
                await sleep(every);
            }
        })(),
        what,
        ms,
    );
}

/** Resolve with the emitted arguments the first time `predicate(...args)` holds. */
export function waitFor(emitter, event, predicate, what, ms = STEP_TIMEOUT_MS) {
    let listener;
    const promise = new Promise((resolve) => {
        listener = (...args) => {
            if (predicate(...args)) resolve(args);
        };
        emitter.on(event, listener);
    });
    return withTimeout(promise, what, ms).finally(() => emitter.removeListener(event, listener));
}

/** A unique marker for a test message: the Python side searches storage and logs for it. */
export function secretText(label) {
    const random = Math.random().toString(36).slice(2, 10);
    return `plaintext-${label}-${random}-never-stored`;
}

export class Harness {
    constructor(baseUrl) {
        this.baseUrl = baseUrl;
        this.clients = [];
        this.results = { steps: {}, plaintexts: [] };
        this.started = Date.now();
    }

    async step(name, fn) {
        const t0 = Date.now();
        const out = await fn();
        this.results.steps[name] = { ms: Date.now() - t0, ...(out ?? {}) };
    }

    /** POST /login with the password: a new device. */
    async login(user, deviceName) {
        const response = await fetch(`${this.baseUrl}/_matrix/client/v3/login`, {
            method: "POST",
            headers: { "Content-Type": "application/json" },
            body: JSON.stringify({
                type: "m.login.password",
                identifier: { type: "m.id.user", user },
                password: PASSWORD,
                initial_device_display_name: deviceName,
            }),
        });
        check(response.ok, `login of ${user} answered ${response.status}`);
        return response.json();
    }

    async api(token, method, path, body) {
        const response = await fetch(`${this.baseUrl}/_matrix/client/v3${path}`, {
            method,
            headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
            body: body === undefined ? undefined : JSON.stringify(body),
        });
        const json = await response.json().catch(() => ({}));
        return { status: response.status, json };
    }

    /**
     * Log `user` in as a new device and start a client with Rust crypto; resolves once
     * the first sync is done and its device keys are on the server.
     */
    async startClient(user, { deviceName, cryptoCallbacks } = {}) {
        const login = await this.login(user, deviceName ?? `${user} e2ee test`);
        const client = sdk.createClient({
            baseUrl: this.baseUrl,
            accessToken: login.access_token,
            userId: login.user_id,
            deviceId: login.device_id,
            logger: quietLogger,
            fetchFn: tracingFetch,
            cryptoCallbacks,
        });
        client.e2eeLogin = login;
        client.e2eeUser = user;
        this.clients.push(client);
        await client.initRustCrypto({ useIndexedDB: false });
        const prepared = waitFor(
            client,
            ClientEvent.Sync,
            (state) => state === SyncState.Prepared,
            `${login.user_id}/${login.device_id} to reach PREPARED`,
        );
        const syncError = new Promise((_, reject) => {
            client.on(ClientEvent.Sync, (state, _prev, data) => {
                if (state === SyncState.Error && !client.e2eeDeleted)
                    reject(new Error(`${login.user_id}: sync error ${data?.error}`));
            });
        });
        syncError.catch(() => {});
        await client.startClient({ initialSyncLimit: 20 });
        await Promise.race([prepared, syncError]);
        // The device's keys are uploaded by the crypto layer's outgoing-request loop.
        await until(async () => {
            const { json } = await this.api(login.access_token, "POST", "/keys/query", {
                device_keys: { [login.user_id]: [login.device_id] },
            });
            return json.device_keys?.[login.user_id]?.[login.device_id];
        }, `${login.device_id}'s device keys on the server`);
        return client;
    }

    stopAll() {
        for (const client of this.clients) {
            try {
                client.stopClient();
            } catch {
                // already stopped
            }
        }
    }
}

export async function waitForMembership(client, roomId, userId, membership) {
    const has = () => client.getRoom(roomId)?.getMember(userId)?.membership === membership;
    if (has()) return;
    await waitFor(
        client,
        RoomMemberEvent.Membership,
        (_ev, member) => member.roomId === roomId && member.userId === userId && member.membership === membership,
        `${client.getUserId()} to see ${userId} ${membership} ${roomId}`,
    );
}

/** Join through an invite, waiting for the invite to arrive by sync first. */
export async function acceptInvite(client, roomId) {
    await waitForMembership(client, roomId, client.getUserId(), KnownMembership.Invite);
    await client.joinRoom(roomId);
    await waitForMembership(client, roomId, client.getUserId(), KnownMembership.Join);
}

export async function sendText(client, roomId, body) {
    const { event_id: eventId } = await client.sendEvent(roomId, EventType.RoomMessage, {
        msgtype: MsgType.Text,
        body,
    });
    return eventId;
}

/** The MatrixEvent with this id once it is in the client's live timeline of the room. */
export async function seeEvent(client, roomId, eventId, what) {
    const room = client.getRoom(roomId);
    const existing = room?.getLiveTimeline().getEvents().find((e) => e.getId() === eventId);
    if (existing) return existing;
    const [event] = await waitFor(
        client,
        RoomEvent.Timeline,
        (ev, r) => r?.roomId === roomId && ev.getId() === eventId,
        `${client.getUserId()}/${client.getDeviceId()} to see ${what}`,
    );
    return event;
}

/** Wait until the (encrypted) event is decrypted; its clear content. */
export async function decrypted(client, event, what, ms = STEP_TIMEOUT_MS) {
    check(event.getWireType() === EventType.RoomMessageEncrypted, `${what} was sent encrypted`);
    const done = () => event.getClearContent() && !event.isDecryptionFailure();
    if (!done()) {
        const waiting = waitFor(event, MatrixEventEvent.Decrypted, () => done(), `decryption of ${what}`, ms);
        // Keys may have arrived after the first attempt: ask again.
        await client.decryptEventIfNeeded(event, { isRetry: true }).catch(() => {});
        if (!done()) await waiting;
        else waiting.catch(() => {});
    }
    return event.getContent();
}

/** Send a secret text and check that each reader decrypts it. */
export async function sendAndRead(h, sender, roomId, label, readers) {
    const body = secretText(label);
    h.results.plaintexts.push(body);
    const eventId = await sendText(sender, roomId, body);
    const seen = {};
    for (const reader of readers) {
        const event = await seeEvent(reader, roomId, eventId, label);
        const content = await decrypted(reader, event, `${label} at ${reader.getDeviceId()}`);
        seen[`${reader.getUserId()}|${reader.getDeviceId()}`] = content.body === body;
    }
    return { eventId, body, seen };
}

export async function runMain(h, main, totalMs = 110_000) {
    try {
        await withTimeout(main(), "the whole script", totalMs);
        h.results.ms = Date.now() - h.started;
        console.log(`RESULT ${JSON.stringify(h.results)}`);
        h.stopAll();
        process.exit(0);
    } catch (e) {
        console.error(`FAILED: ${e?.stack ?? e}`);
        if (e?.data) console.error(JSON.stringify(e.data));
        console.log(`RESULT ${JSON.stringify({ error: String(e?.message ?? e), ...h.results })}`);
        h.stopAll();
        process.exit(1);
    }
}
