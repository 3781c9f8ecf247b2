// What Element Web 1.11 did, through its own library: matrix-js-sdk 26 with libolm
// (`initCrypto()`, the legacy crypto; in-memory stores). Two users chat in an encrypted
// room, one sends an image (uploaded to /_matrix/media/r0/upload after reading
// /_matrix/media/r0/config; the other downloads it and a thumbnail through r0 without a
// token, as an <img> does), then the first sets up cross-signing (posted to the
// `unstable` prefix, after checking `org.matrix.e2e_cross_signing`) and secure backup
// (secret storage + a key backup version), and a new device of theirs restores the
// room key from the backup and reads the old message.
//
//   node element_web_1_11.mjs <base_url> <user_alice> <user_bob> <password>
//
// The last stdout line is `RESULT {json}`; on failure `FAILED: ...` goes to stderr and
// the exit code is 1. The assertions are in tests/test_legacy_client.py.

import { deflateSync } from "node:zlib";

import Olm from "@matrix-org/olm";

// The legacy crypto finds libolm as a global, as in the browser.
globalThis.Olm = Olm;

const sdk = await import("matrix-js-sdk");
const { logger } = await import("matrix-js-sdk/lib/logger.js");
const { SyncState } = await import("matrix-js-sdk/lib/sync.js");
const { ClientEvent } = sdk;

const DEBUG = !!process.env.HS_LEGACY_DEBUG;
logger.setLevel(DEBUG ? "debug" : "error");

const [baseUrl, aliceUser, bobUser, password] = process.argv.slice(2);
if (!password) {
    console.error("usage: node element_web_1_11.mjs <base_url> <user_alice> <user_bob> <password>");
    process.exit(2);
}

const STEP_TIMEOUT_MS = 20_000;
const requests = []; // "METHOD path" of every request the SDK made
const failures = []; // "METHOD path -> status body" of every answer >= 400

async function recordingFetch(url, init) {
    const { pathname } = new URL(String(url));
    requests.push(`${init?.method ?? "GET"} ${pathname}`);
    const response = await fetch(url, init);
    if (response.status >= 400) {
        failures.push(`${init?.method ?? "GET"} ${pathname} -> ${response.status} ${(await response.clone().text()).slice(0, 300)}`);
    }
    if (DEBUG) console.error(`${init?.method ?? "GET"} ${url} -> ${response.status}`);
    return response;
}

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

async function until(fn, what, ms = STEP_TIMEOUT_MS) {
    return withTimeout(
        (async () => {
            for (;;) {
                const value = await fn();
                if (value) return value;
                await new Promise((r) => setTimeout(r, 50));
            }
        })(),
        what,
        ms,
    );
}

/** A PNG of w x h pixels (a gradient), built here so the test needs no image library. */
function png(w, h) {
    const crcTable = Array.from({ length: 256 }, (_, n) => {
        let c = n;
        for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
        return c >>> 0;
    });
    const crc32 = (buf) => {
        let c = 0xffffffff;
        for (const b of buf) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8);
        return (c ^ 0xffffffff) >>> 0;
    };
    const chunk = (type, data) => {
        const body = Buffer.concat([Buffer.from(type, "ascii"), data]);
        const out = Buffer.alloc(body.length + 8);
        out.writeUInt32BE(data.length, 0);
        body.copy(out, 4);
        out.writeUInt32BE(crc32(body), body.length + 4);
        return out;
    };
    const header = Buffer.alloc(13);
    header.writeUInt32BE(w, 0);
    header.writeUInt32BE(h, 4);
    header.set([8, 2, 0, 0, 0], 8); // 8-bit RGB
    const rows = Buffer.alloc((w * 3 + 1) * h);
    for (let y = 0; y < h; y++) {
        for (let x = 0; x < w; x++) rows.set([x * 4, y * 5, 128], y * (w * 3 + 1) + 1 + x * 3);
    }
    return Buffer.concat([
        Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
        chunk("IHDR", header),
        chunk("IDAT", deflateSync(rows)),
        chunk("IEND", Buffer.alloc(0)),
    ]);
}

const clients = [];

/** Log in as Element Web does (an m.id.user identifier) and start a client on libolm. */
async function start(user, deviceName, cryptoCallbacks = {}) {
    const anonymous = sdk.createClient({ baseUrl, fetchFn: recordingFetch });
    const login = await anonymous.login("m.login.password", {
        identifier: { type: "m.id.user", user },
        password,
        initial_device_display_name: deviceName,
    });
    const client = sdk.createClient({
        baseUrl,
        accessToken: login.access_token,
        userId: login.user_id,
        deviceId: login.device_id,
        cryptoStore: new sdk.MemoryCryptoStore(),
        cryptoCallbacks,
        fetchFn: recordingFetch,
    });
    clients.push(client);
    await client.initCrypto();
    client.setGlobalErrorOnUnknownDevices(false);
    const prepared = new Promise((resolve, reject) => {
        client.on(ClientEvent.Sync, (state, _prev, data) => {
            if (state === SyncState.Prepared) resolve();
            if (state === SyncState.Error) reject(new Error(`${login.user_id}: sync error ${data?.error}`));
        });
    });
    await client.startClient({ initialSyncLimit: 20 });
    await withTimeout(prepared, `${login.user_id} to finish its first sync`);
    return client;
}

/** The first encrypted timeline event of `roomId` whose clear content has `body`
 * (retrying decryption: a room key may arrive after its message). */
async function findByBody(client, roomId, body, what) {
    return until(async () => {
        const room = client.getRoom(roomId);
        for (const ev of room?.getLiveTimeline().getEvents() ?? []) {
            if (!ev.isEncrypted()) continue;
            if (ev.isDecryptionFailure()) await client.decryptEventIfNeeded(ev, { isRetry: true });
            if (ev.getContent().body === body) return ev;
        }
        return null;
    }, what);
}

async function get(url, headers = {}) {
    const response = await fetch(url, { headers });
    return { status: response.status, type: response.headers.get("content-type"), body: Buffer.from(await response.arrayBuffer()) };
}

const out = { steps: [] };
try {
    // Element's SecurityManager callbacks: the secret storage key is kept in memory while
    // a set-up runs, and handed back when the SDK asks.
    const ssssKeys = {};
    const aliceCallbacks = {
        getSecretStorageKey: async ({ keys }) => {
            const id = Object.keys(keys).find((k) => ssssKeys[k]);
            return id ? [id, ssssKeys[id]] : null;
        },
        cacheSecretStorageKey: (keyId, _info, key) => {
            ssssKeys[keyId] = key;
        },
    };
    const alice = await start(aliceUser, "Element Web 1.11 (alice)", aliceCallbacks);
    const bob = await start(bobUser, "Element Web 1.11 (bob)");
    out.steps.push("login");

    // An encrypted room, as Element creates a private one.
    const { room_id: roomId } = await alice.createRoom({
        preset: "private_chat",
        invite: [bob.getUserId()],
        initial_state: [{ type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } }],
    });
    await until(() => bob.getRoom(roomId)?.getMyMembership() === "invite", "bob's invite");
    await bob.joinRoom(roomId);
    await until(() => alice.getRoom(roomId)?.getMember(bob.getUserId())?.membership === "join", "bob's join at alice");
    check(alice.isRoomEncrypted(roomId), "alice's client sees the room as encrypted");

    const secret = `legacy-${Math.random().toString(36).slice(2)}`;
    await alice.sendTextMessage(roomId, secret);
    const atBob = await findByBody(bob, roomId, secret, "bob decrypting alice's message");
    out.bob_read = atBob.getContent().body === secret;
    out.wire_type = atBob.getWireType();
    out.algorithm = atBob.getWireContent().algorithm;
    const reply = `reply-${Math.random().toString(36).slice(2)}`;
    await bob.sendTextMessage(roomId, reply);
    out.alice_read = (await findByBody(alice, roomId, reply, "alice decrypting bob's reply")).getContent().body === reply;
    out.steps.push("encrypted chat");

    // What Element calls at start-up and in its settings, through the same library.
    const flows = await sdk.createClient({ baseUrl, fetchFn: recordingFetch }).loginFlows();
    const capabilities = await alice.getCapabilities(true);
    await alice.setDisplayName("Alice (1.11)");
    const atBobEvent = bob.getRoom(roomId).getLiveTimeline().getEvents().at(-1);
    await bob.sendReadReceipt(atBobEvent);
    await bob.sendTyping(roomId, true, 5000);
    await alice.setRoomTag(roomId, "m.favourite", { order: 0.5 });
    out.startup = {
        password_login: flows.flows.some((f) => f.type === "m.login.password"),
        change_password: capabilities["m.change_password"]?.enabled ?? true,
        turn: await alice.turnServer(),
        protocols: await alice.getThirdpartyProtocols(),
        devices: (await alice.getDevices()).devices.length,
        push_rules: Object.keys((await alice.getPushRules()).global ?? {}).sort(),
        pushers: (await alice.getPushers()).pushers,
        display_name: (await bob.getProfileInfo(alice.getUserId())).displayname,
        threepids: (await alice.getThreePids()).threepids,
        fetched: (await bob.fetchRoomEvent(roomId, atBob.getId())).type,
    };
    out.steps.push("start-up and settings");

    // An image: the media config first (Element checks the size limit), then the upload.
    const config = await alice.getMediaConfig();
    out.upload_size = config["m.upload.size"];
    const image = png(64, 48);
    const uploaded = await alice.uploadContent(image, { name: "gradient.png", type: "image/png" });
    const mxc = uploaded.content_uri;
    out.mxc_ok = typeof mxc === "string" && mxc.startsWith("mxc://");
    await alice.sendMessage(roomId, { msgtype: "m.image", body: "gradient.png", url: mxc, info: { mimetype: "image/png", w: 64, h: 48, size: image.length } });
    const imageEvent = await until(() => {
        const events = bob.getRoom(roomId)?.getLiveTimeline().getEvents() ?? [];
        return events.find((ev) => ev.getContent().msgtype === "m.image");
    }, "bob decrypting the image message");
    const seenUrl = imageEvent.getContent().url;
    // What an <img> fetches: no access token.
    const download = await get(bob.mxcUrlToHttp(seenUrl));
    out.download = { url: new URL(bob.mxcUrlToHttp(seenUrl)).pathname.split("/").slice(0, 5).join("/"), status: download.status, same: download.body.equals(image) };
    const thumbUrl = bob.mxcUrlToHttp(seenUrl, 32, 32, "scale");
    const thumb = await get(thumbUrl);
    out.thumbnail = { url: new URL(thumbUrl).pathname.split("/").slice(0, 5).join("/"), status: thumb.status, type: thumb.type, bytes: thumb.body.length };
    out.steps.push("image");

    // Cross-signing, as Element's "Set up Secure Backup" does: the server must advertise it.
    out.cross_signing_advertised = await alice.doesServerSupportUnstableFeature("org.matrix.e2e_cross_signing");
    // Element's InteractiveAuth: try without auth first; on 401, answer with the password.
    const uia = [];
    const authUploadDeviceSigningKeys = async (makeRequest) => {
        try {
            await makeRequest(null);
            uia.push("none needed");
            return;
        } catch (e) {
            check(e.httpStatus === 401 && e.data?.session, `device_signing/upload without auth answered ${e.httpStatus}`);
            uia.push(e.data.flows.map((f) => f.stages.join(",")).join(" | "));
            await makeRequest({
                type: "m.login.password",
                identifier: { type: "m.id.user", user: aliceUser },
                password,
                session: e.data.session,
            });
        }
    };
    await alice.bootstrapCrossSigning({ setupNewCrossSigning: true, authUploadDeviceSigningKeys });
    out.cross_signing_ready = await alice.isCrossSigningReady();
    await bob.downloadKeys([alice.getUserId()], true);
    out.bob_sees_master_key = !!bob.getStoredCrossSigningForUser(alice.getUserId())?.getId("master");
    out.steps.push("cross-signing");

    // Secure backup: a recovery key, secret storage holding the cross-signing and backup
    // keys, and a key backup version the room keys go to.
    const recoveryKey = await alice.createRecoveryKeyFromPassphrase();
    await alice.bootstrapSecretStorage({
        createSecretStorageKey: async () => recoveryKey,
        setupNewKeyBackup: true,
        setupNewSecretStorage: true,
    });
    // Element's Secure Backup panel then reloads its status, which checks the backup and
    // starts using it.
    const checked = await alice.checkKeyBackup();
    out.backup_enabled = alice.getKeyBackupEnabled();
    out.secret_storage_ready = await alice.isSecretStorageReady();
    const backupInfo = checked?.backupInfo;
    out.backup_version = backupInfo?.version ?? null;
    const trust = await alice.isKeyBackupTrusted(backupInfo);
    out.backup_trust = { usable: trust.usable, sigs: trust.sigs.map((s) => ({ valid: s.valid, crossSigning: !!s.crossSigningId, device: s.device?.deviceId })) };
    out.backup_info = backupInfo;
    await alice.scheduleAllGroupSessionsForBackup();
    const backedUp = await until(async () => {
        const keys = await alice.http.authedRequest("GET", "/room_keys/keys", { version: backupInfo.version });
        const sessions = Object.values(keys.rooms?.[roomId]?.sessions ?? {});
        return sessions.length ? sessions.length : null;
    }, "alice's room keys in the backup", 30_000);
    out.backed_up_sessions = backedUp;
    out.steps.push("secure backup");

    // A new device of alice's: the recovery key restores the room key from the backup.
    const fresh = await start(aliceUser, "Element Web 1.11 (alice, new device)", {
        // The user types the recovery key: it opens whichever secret storage key is asked for.
        getSecretStorageKey: async ({ keys }) => [Object.keys(keys)[0], recoveryKey.privateKey],
    });
    const freshInfo = await fresh.getKeyBackupVersion();
    out.fresh_sees_backup = freshInfo?.version === backupInfo.version;
    const restored = await fresh.restoreKeyBackupWithSecretStorage(freshInfo);
    out.restored = { total: restored.total, imported: restored.imported };
    out.fresh_read = (await findByBody(fresh, roomId, secret, "the new device decrypting the old message")).getContent().body === secret;
    out.steps.push("restore");

    // "Reset cross-signing" in Element's settings: replacing existing keys needs the password.
    const oldMaster = alice.getStoredCrossSigningForUser(alice.getUserId()).getId("master");
    await alice.bootstrapCrossSigning({ setupNewCrossSigning: true, authUploadDeviceSigningKeys });
    await bob.downloadKeys([alice.getUserId()], true);
    const newMaster = bob.getStoredCrossSigningForUser(alice.getUserId())?.getId("master");
    out.reset_master_changed = !!newMaster && newMaster !== oldMaster;
    out.uia = uia;
    out.steps.push("reset cross-signing");

    // The r0 and unstable paths used, ids cut off (media ids, transaction ids, room ids).
    out.requests = [
        ...new Set(
            requests
                .filter((r) => /\/_matrix\/(media\/r0|client\/unstable)\//.test(r))
                .map((r) => r.split("/").slice(0, 7).join("/")),
        ),
    ].sort();
    out.error_answers = failures;
    for (const client of clients) client.stopClient();
    console.log(`RESULT ${JSON.stringify(out)}`);
    process.exit(0);
} catch (e) {
    console.error(`FAILED: ${e?.stack ?? e}`);
    console.error(`steps done: ${out.steps.join(", ")}\n${JSON.stringify(out)}`);
    console.error(`last requests:\n  ${requests.filter((r, i) => r !== requests[i - 1]).slice(-40).join("\n  ")}`);
    console.error(`error answers:\n  ${failures.join("\n  ")}`);
    for (const client of clients) client.stopClient();
    process.exit(1);
}
