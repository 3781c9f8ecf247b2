// Cross-signing, interactive (SAS emoji) verification between two devices of one user,
// and server-side key backup, with matrix-js-sdk's Rust crypto against a real homeserver.
//
//   node e2ee_verify_backup.mjs <base_url> <alice> <bob> <carol>
//
// Alice's first device bootstraps cross-signing and secret storage with a new key
// backup; she and Bob exchange encrypted messages (backed up by her client). Her second
// device verifies itself against the first with SAS; Carol (a third user) then reads the
// cross-signing signatures with /keys/query (the raw answer is in the result for the
// Python side to check with signedjson). A third device of Alice's restores the backup
// with the secret-storage key and decrypts the older messages.
//
// The users exist already with the password "correct horse battery". The last stdout
// line is `RESULT {json}`.

import {
    Harness,
    PASSWORD,
    acceptInvite,
    check,
    cryptoApi,
    decrypted,
    runMain,
    sdk,
    sendAndRead,
    seeEvent,
    until,
    waitFor,
    waitForMembership,
} from "./e2ee_common.mjs";

const { KnownMembership } = sdk;
const { CryptoEvent, VerificationPhase, VerifierEvent } = cryptoApi;

const [baseUrl, aliceName, bobName, carolName] = process.argv.slice(2);
if (!baseUrl || !carolName) {
    console.error("usage: node e2ee_verify_backup.mjs <base_url> <alice> <bob> <carol>");
    process.exit(2);
}
const h = new Harness(baseUrl);

// Alice's secret-storage key (what a user keeps as a "recovery key"), shared by her devices.
let recoveryKey = null;
const secretStorageCallbacks = {
    getSecretStorageKey: async ({ keys }) => {
        if (!recoveryKey) return null;
        const keyId = Object.keys(keys)[0];
        return keyId ? [keyId, recoveryKey.privateKey] : null;
    },
};

function uiaPassword(user) {
    return async (makeRequest) => {
        await makeRequest({
            type: "m.login.password",
            identifier: { type: "m.id.user", user },
            password: PASSWORD,
        });
    };
}

/** Drive one side of a SAS verification: confirm the emoji when shown. */
function runSas(verifier) {
    const shown = new Promise((resolve) => {
        verifier.on(VerifierEvent.ShowSas, (sas) => {
            resolve(sas.sas.emoji?.map(([emoji, name]) => `${emoji} ${name}`) ?? null);
            sas.confirm();
        });
    });
    const done = verifier.verify();
    return { shown, done };
}

async function backupCount(client) {
    const { json } = await h.api(client.e2eeLogin.access_token, "GET", "/room_keys/version");
    return json;
}

async function main() {
    const alice1 = await h.startClient(aliceName, {
        deviceName: "alice desktop",
        cryptoCallbacks: secretStorageCallbacks,
    });
    const bob = await h.startClient(bobName, { deviceName: "bob phone" });
    const carol = await h.startClient(carolName, { deviceName: "carol phone" });
    const aliceId = alice1.getUserId();
    h.results.users = { alice: aliceId, bob: bob.getUserId(), carol: carol.getUserId() };

    // Cross-signing and secret storage with a key backup -------------------------------------------
    await h.step("bootstrap", async () => {
        const crypto = alice1.getCrypto();
        await crypto.bootstrapCrossSigning({ authUploadDeviceSigningKeys: uiaPassword(aliceName) });
        await crypto.bootstrapSecretStorage({
            createSecretStorageKey: async () => {
                recoveryKey = await crypto.createRecoveryKeyFromPassphrase();
                return recoveryKey;
            },
            setupNewSecretStorage: true,
            setupNewKeyBackup: true,
        });
        const status = await crypto.getCrossSigningStatus();
        const backupVersion = await until(() => crypto.getActiveSessionBackupVersion(), "the backup to be active");
        return {
            cross_signing_ready: await crypto.isCrossSigningReady(),
            secret_storage_ready: await crypto.isSecretStorageReady(),
            public_keys_on_device: status.publicKeysOnDevice,
            private_keys_cached: status.privateKeysCachedLocally,
            backup_version: backupVersion,
            master_key_id: await crypto.getCrossSigningKeyId(),
        };
    });

    // Encrypted messages that Alice's client backs up -----------------------------------------------
    let dmRoom;
    const history = [];
    await h.step("messages", async () => {
        const { room_id: roomId } = await alice1.createRoom({
            is_direct: true,
            invite: [bob.getUserId()],
            preset: "trusted_private_chat",
        });
        dmRoom = roomId;
        await acceptInvite(bob, roomId);
        await waitForMembership(alice1, roomId, bob.getUserId(), KnownMembership.Join);
        history.push(await sendAndRead(h, alice1, roomId, "backup-alice", [bob]));
        history.push(await sendAndRead(h, bob, roomId, "backup-bob", [alice1]));
        // Both Megolm sessions (Alice's outbound, Bob's inbound at Alice) reach the backup.
        const backup = await until(async () => {
            const info = await backupCount(alice1);
            return info.count >= 2 ? info : null;
        }, "the room keys in the backup");
        return { room_id: roomId, seen: Object.assign({}, ...history.map((m) => m.seen)), backup };
    });

    // SAS between two of Alice's devices ----------------------------------------------------------
    let alice2;
    await h.step("sas", async () => {
        alice2 = await h.startClient(aliceName, { deviceName: "alice new laptop" });
        // The old device hears of the new one through device_lists before it can verify it.
        await until(async () => {
            const map = await alice1.getCrypto().getUserDeviceInfo([aliceId], true);
            return map.get(aliceId)?.has(alice2.getDeviceId());
        }, "alice1 to see alice2");
        // Bob hears of it too (device_lists.changed in his sync): not signed by Alice yet.
        const before = await until(
            () => bob.getCrypto().getDeviceVerificationStatus(aliceId, alice2.getDeviceId()),
            "Bob to see alice2",
        );

        const received = waitFor(
            alice1,
            CryptoEvent.VerificationRequestReceived,
            (req) => req.otherDeviceId === alice2.getDeviceId(),
            "alice1 to receive the verification request",
        );
        const request2 = await alice2.getCrypto().requestOwnUserVerification();
        const [request1] = await received;
        await request1.accept();
        await until(() => request2.phase === VerificationPhase.Ready, "the request to be ready at alice2");

        const verifier2 = await request2.startVerification("m.sas.v1");
        const side2 = runSas(verifier2);
        await until(() => request1.verifier, "alice1's verifier");
        const side1 = runSas(request1.verifier);
        const [emoji1, emoji2] = await Promise.all([side1.shown, side2.shown]);
        await Promise.all([side1.done, side2.done]);
        await until(
            () => request1.phase === VerificationPhase.Done && request2.phase === VerificationPhase.Done,
            "both requests to be done",
        );

        // alice1 signed alice2's device with her self-signing key; alice2 gets the
        // cross-signing secrets by gossip (to-device) and trusts alice1.
        const alice1Sees = await until(async () => {
            const s = await alice1.getCrypto().getDeviceVerificationStatus(aliceId, alice2.getDeviceId());
            return s?.crossSigningVerified ? s : null;
        }, "alice1 to see alice2 cross-signed");
        const alice2Sees = await until(async () => {
            const s = await alice2.getCrypto().getDeviceVerificationStatus(aliceId, alice1.getDeviceId());
            return s?.crossSigningVerified ? s : null;
        }, "alice2 to see alice1 cross-signed");
        const alice2Ready = await until(
            () => alice2.getCrypto().isCrossSigningReady(),
            "alice2 to have the cross-signing keys",
        );
        // Bob (another user, who has not verified Alice) sees the device signed by its owner.
        const bobSees = await until(async () => {
            const s = await bob.getCrypto().getDeviceVerificationStatus(aliceId, alice2.getDeviceId());
            return s?.signedByOwner ? s : null;
        }, "Bob to see alice2 signed by Alice");
        return {
            alice1_device: alice1.getDeviceId(),
            alice2_device: alice2.getDeviceId(),
            emoji_alice1: emoji1,
            emoji_alice2: emoji2,
            phases: [request1.phase, request2.phase],
            alice1_sees_alice2_verified: alice1Sees.crossSigningVerified,
            alice2_sees_alice1_verified: alice2Sees.crossSigningVerified,
            alice2_cross_signing_ready: alice2Ready,
            bob_signed_by_owner_before: before?.signedByOwner ?? null,
            bob_signed_by_owner_after: bobSees.signedByOwner,
        };
    });

    // A third user's view: /keys/query -------------------------------------------------------------
    await h.step("third_user_query", async () => {
        const { status, json } = await h.api(carol.e2eeLogin.access_token, "POST", "/keys/query", {
            device_keys: { [aliceId]: [] },
        });
        check(status === 200, `keys/query answered ${status}`);
        return { response: json };
    });

    // A new device restores the backup and reads the older messages -------------------------------
    await h.step("restore", async () => {
        const alice3 = await h.startClient(aliceName, {
            deviceName: "alice restored",
            cryptoCallbacks: secretStorageCallbacks,
        });
        const crypto = alice3.getCrypto();
        // Before: the old messages are not readable on the new device.
        const undecryptable = [];
        for (const message of history) {
            const event = await seeEvent(alice3, dmRoom, message.eventId, "an old message");
            undecryptable.push(event.isDecryptionFailure());
        }
        await crypto.loadSessionBackupPrivateKeyFromSecretStorage();
        const restored = await crypto.restoreKeyBackup();
        const bodies = [];
        for (const message of history) {
            const event = await seeEvent(alice3, dmRoom, message.eventId, "an old message");
            const content = await decrypted(alice3, event, `old message ${message.eventId}`);
            bodies.push(content.body === message.body);
        }
        // Messages sent now reach the restored device as usual.
        const fresh = await sendAndRead(h, bob, dmRoom, "after-restore", [alice3]);
        return {
            undecryptable_before: undecryptable,
            restored,
            decrypted_after: bodies,
            fresh_seen: fresh.seen,
            backup_version: await crypto.getActiveSessionBackupVersion(),
        };
    });
}

await runMain(h, main);
