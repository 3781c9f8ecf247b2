// The page side of the browser call test (tests/test_calls_browser.py): a matrix-js-sdk
// client with its Rust crypto, and its MatrixCall, in Chromium. Bundled with esbuild by
// call.mjs; the driver calls what is on `window.hs` through page.evaluate.
//
// Every client is made with `forceTURN: true`, so each MatrixCall's RTCPeerConnection
// uses `iceTransportPolicy: "relay"` with the TURN servers the SDK fetched from the
// homeserver's /voip/turnServer.

import * as sdk from "matrix-js-sdk";
import { CallErrorCode, CallEvent } from "matrix-js-sdk/lib/webrtc/call.js";
import { CallEventHandlerEvent } from "matrix-js-sdk/lib/webrtc/callEventHandler.js";

const { ClientEvent, EventType, KnownMembership, SyncState } = sdk;

const quiet = {
    trace() {},
    debug() {},
    info() {},
    warn: (...a) => console.warn(...a),
    error: (...a) => console.error(...a),
    getChild() {
        return quiet;
    },
};
sdk.logger?.setLevel?.("warn");

let client = null;
let call = null;
const seen = { states: [], incoming: 0, hangupParty: null, hangupReason: null, errors: [] };

function until(fn, what, ms = 20_000, every = 50) {
    return new Promise((resolve, reject) => {
        const started = Date.now();
        const tick = async () => {
            let value;
            try {
                value = await fn();
            } catch (e) {
                reject(e);
                return;
            }
            if (value) resolve(value);
            else if (Date.now() - started > ms) reject(new Error(`timed out after ${ms} ms waiting for ${what}`));
            else setTimeout(tick, every);
        };
        void tick();
    });
}

function follow(c) {
    call = c;
    c.on(CallEvent.State, (state) => seen.states.push(state));
    c.on(CallEvent.Hangup, () => {
        seen.hangupParty = c.hangupParty ?? null;
        seen.hangupReason = c.hangupReason ?? null;
    });
    c.on(CallEvent.Error, (err) => seen.errors.push(String(err?.message ?? err)));
    c.on(CallEvent.FeedsChanged, showRemote);
}

/** What the user sees of the other side: its stream in a <video> on the page. */
function showRemote() {
    const feed = call?.remoteUsermediaFeed;
    const video = document.getElementById("remote");
    if (feed && video.srcObject !== feed.stream) video.srcObject = feed.stream;
}

async function login(baseUrl, user, password) {
    const response = await fetch(`${baseUrl}/_matrix/client/v3/login`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({
            type: "m.login.password",
            identifier: { type: "m.id.user", user },
            password,
            initial_device_display_name: `${user} in Chromium`,
        }),
    });
    if (!response.ok) throw new Error(`login of ${user}: ${response.status}`);
    return response.json();
}

window.hs = {
    /** Log in as a new device, start the client with Rust crypto; once it has synced and
     * holds TURN credentials. */
    async start(baseUrl, user, password) {
        const session = await login(baseUrl, user, password);
        client = sdk.createClient({
            baseUrl,
            accessToken: session.access_token,
            userId: session.user_id,
            deviceId: session.device_id,
            forceTURN: true,
            logger: quiet,
        });
        await client.initRustCrypto({ useIndexedDB: false });
        client.on(CallEventHandlerEvent.Incoming, (incoming) => {
            seen.incoming += 1;
            follow(incoming);
        });
        const prepared = new Promise((resolve) => {
            client.on(ClientEvent.Sync, (state) => state === SyncState.Prepared && resolve());
        });
        await client.startClient({ initialSyncLimit: 10 });
        await prepared;
        const turn = await until(() => client.getTurnServers()[0], "TURN credentials from /voip/turnServer");
        return { userId: session.user_id, deviceId: session.device_id, turnUris: turn.urls };
    },

    /** An encrypted DM with `userId` (invited). */
    async createDm(userId) {
        const { room_id: roomId } = await client.createRoom({
            is_direct: true,
            invite: [userId],
            preset: "trusted_private_chat",
            initial_state: [
                { type: EventType.RoomEncryption, state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } },
            ],
        });
        return { roomId };
    },

    /** Whether this client's crypto treats the room as encrypted (once it synced its state). */
    async encrypted(roomId) {
        await until(() => client.getRoom(roomId), `room ${roomId} in the client`);
        return client.getCrypto().isEncryptionEnabledInRoom(roomId);
    },

    async join(roomId) {
        await this.waitMembership(roomId, client.getUserId(), KnownMembership.Invite);
        await client.joinRoom(roomId);
        await this.waitMembership(roomId, client.getUserId(), KnownMembership.Join);
    },

    async waitJoined(roomId, userId) {
        await this.waitMembership(roomId, userId, KnownMembership.Join);
    },

    async waitMembership(roomId, userId, membership) {
        const has = () => client.getRoom(roomId)?.getMember(userId)?.membership === membership;
        await until(has, `${client.getUserId()} to see ${userId} ${membership} in ${roomId}`);
    },

    /** Place a video call (camera and microphone: Chromium's fake devices). */
    async placeVideoCall(roomId) {
        const outgoing = client.createCall(roomId);
        follow(outgoing);
        await outgoing.placeVideoCall();
        return { callId: outgoing.callId };
    },

    /** Wait for the ringing call; its id, type and state. */
    async ringing() {
        await until(() => call && call.state === "ringing", "an incoming call to ring");
        return { callId: call.callId, type: call.type, state: call.state, from: call.getOpponentMember()?.userId };
    },

    async answer() {
        await call.answer();
        return { state: call.state };
    },

    async waitState(state, ms = 20_000) {
        await until(() => call?.state === state, `call state ${state}`, ms);
        return { state: call.state, states: seen.states };
    },

    hangup() {
        call.hangup(CallErrorCode.UserHangup, false);
        return { state: call.state };
    },

    /** What the peer connection reports: remote tracks, inbound bytes, the ICE pair in use. */
    async media() {
        const pc = call.peerConn;
        const report = await pc.getStats();
        const byId = new Map();
        report.forEach((s) => byId.set(s.id, s));
        const inbound = {};
        let pair = null;
        for (const s of byId.values()) {
            if (s.type === "inbound-rtp") {
                inbound[s.kind] = {
                    bytes: s.bytesReceived ?? 0,
                    packets: s.packetsReceived ?? 0,
                    framesDecoded: s.framesDecoded ?? null,
                };
            }
            if (s.type === "transport" && s.selectedCandidatePairId) {
                const selected = byId.get(s.selectedCandidatePairId);
                const local = byId.get(selected.localCandidateId);
                const remote = byId.get(selected.remoteCandidateId);
                pair = {
                    state: selected.state,
                    // Checks this pair answered: a validated pair reads "in-progress" again
                    // while a consent check is out (Chromium's stats, seen in a full run).
                    responsesReceived: selected.responsesReceived ?? 0,
                    local: local.candidateType,
                    remote: remote.candidateType,
                    relayProtocol: local.relayProtocol ?? null,
                    localAddress: `${local.address}:${local.port}`,
                    remoteAddress: `${remote.address}:${remote.port}`,
                };
            }
        }
        const localCandidateTypes = [...byId.values()]
            .filter((s) => s.type === "local-candidate")
            .map((s) => s.candidateType);
        const video = document.getElementById("remote");
        return {
            remoteTracks: pc
                .getReceivers()
                .map((r) => r.track)
                .filter((t) => t && t.readyState === "live")
                .map((t) => t.kind)
                .sort(),
            inbound,
            pair,
            localCandidateTypes: [...new Set(localCandidateTypes)].sort(),
            connectionState: pc.connectionState,
            video: { width: video.videoWidth, height: video.videoHeight, time: video.currentTime },
        };
    },

    seen() {
        return { ...seen, state: call?.state ?? null, peerConnection: call?.peerConn?.connectionState ?? null };
    },

    stop() {
        client?.stopClient();
    },
};
