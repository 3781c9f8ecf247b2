// End-to-end encryption with matrix-js-sdk's Rust crypto against a real homeserver:
// an encrypted DM, an encrypted three-member group, a second device that reads what is
// sent after it appeared, and a deleted device that gets nothing new.
//
//   node e2ee.mjs <base_url> <alice> <bob> <carol> [dm-only]
//
// The users exist already with the password "correct horse battery"
// (tests/test_e2ee_js.py registers them); each client here is a new device logged in
// by password. The last stdout line is `RESULT {json}`; `plaintexts` lists every
// message text sent, for the test that searches the server's storage and logs.

import {
    Harness,
    PASSWORD,
    acceptInvite,
    check,
    runMain,
    sdk,
    sendAndRead,
    seeEvent,
    until,
    waitForMembership,
} from "./e2ee_common.mjs";

const { EventType, KnownMembership, MatrixEvent } = sdk;

const [baseUrl, aliceName, bobName, carolName, mode] = process.argv.slice(2);
if (!baseUrl || !carolName) {
    console.error("usage: node e2ee.mjs <base_url> <alice> <bob> <carol> [dm-only]");
    process.exit(2);
}
const h = new Harness(baseUrl);

/** A fresh copy of an encrypted event as it came from the server (for another device to decrypt). */
function asReceived(event) {
    return new MatrixEvent({
        type: EventType.RoomMessageEncrypted,
        content: event.getWireContent(),
        sender: event.getSender(),
        event_id: event.getId(),
        origin_server_ts: event.getTs(),
        room_id: event.getRoomId(),
    });
}

/** The devices `client` knows for `userId` (downloading their keys if needed). */
async function knownDevices(client, userId) {
    const map = await client.getCrypto().getUserDeviceInfo([userId], true);
    return [...(map.get(userId)?.keys() ?? [])].sort();
}

async function main() {
    const alice = await h.startClient(aliceName, { deviceName: "alice phone" });
    const bob = await h.startClient(bobName, { deviceName: "bob laptop" });
    h.results.users = { alice: alice.getUserId(), bob: bob.getUserId() };
    h.results.devices = { alice: alice.getDeviceId(), bob: bob.getDeviceId() };

    // An encrypted DM -----------------------------------------------------------------------------
    let dmRoom;
    await h.step("dm", async () => {
        const { room_id: roomId } = await alice.createRoom({
            is_direct: true,
            invite: [bob.getUserId()],
            preset: "trusted_private_chat",
        });
        dmRoom = roomId;
        await acceptInvite(bob, roomId);
        await waitForMembership(alice, roomId, bob.getUserId(), KnownMembership.Join);
        const encryption = alice.getRoom(roomId).currentState.getStateEvents(EventType.RoomEncryption, "");
        const encryptedForAlice = await alice.getCrypto().isEncryptionEnabledInRoom(roomId);
        const first = await sendAndRead(h, alice, roomId, "dm-alice", [bob]);
        const reply = await sendAndRead(h, bob, roomId, "dm-bob", [alice]);
        const wire = (await seeEvent(bob, roomId, first.eventId, "the first DM")).getWireContent();
        return {
            room_id: roomId,
            encryption: encryption?.getContent() ?? null,
            encrypted_for_alice: encryptedForAlice,
            seen: { ...first.seen, ...reply.seen },
            wire_algorithm: wire.algorithm,
            wire_has_ciphertext: typeof wire.ciphertext === "string" && wire.ciphertext.length > 0,
            wire_has_body: "body" in wire,
        };
    });
    if (mode === "dm-only") return;

    // An encrypted group of three -------------------------------------------------------------------
    const carol = await h.startClient(carolName, { deviceName: "carol tablet" });
    await h.step("group", async () => {
        const { room_id: roomId } = await alice.createRoom({
            name: "E2EE group",
            preset: "private_chat",
            invite: [bob.getUserId(), carol.getUserId()],
        });
        await acceptInvite(bob, roomId);
        await acceptInvite(carol, roomId);
        const all = [alice, bob, carol];
        for (const client of all) {
            for (const other of all) await waitForMembership(client, roomId, other.getUserId(), KnownMembership.Join);
        }
        const seen = {};
        for (const sender of all) {
            const others = all.filter((c) => c !== sender);
            const sent = await sendAndRead(h, sender, roomId, `group-${sender.getUserId().slice(1, 6)}`, others);
            for (const [reader, ok] of Object.entries(sent.seen)) seen[`${sender.getUserId()}->${reader}`] = ok;
        }
        return { room_id: roomId, seen, encryption: alice.getRoom(roomId).hasEncryptionStateEvent() };
    });

    // Alice's second device reads what is sent after it appeared ------------------------------------
    let alice2;
    let beforeDeletion;
    await h.step("second_device", async () => {
        alice2 = await h.startClient(aliceName, { deviceName: "alice laptop" });
        // Bob learns of the new device from device_lists.changed in his sync, re-queries
        // Alice's keys and shares his next room key with it.
        const bobSees = await until(async () => {
            const devices = await knownDevices(bob, alice.getUserId());
            return devices.includes(alice2.getDeviceId()) ? devices : null;
        }, "Bob to see Alice's second device");
        const sent = await sendAndRead(h, bob, dmRoom, "dm-after-second-device", [alice, alice2]);
        const fromAlice2 = await sendAndRead(h, alice2, dmRoom, "dm-from-second-device", [bob, alice]);
        beforeDeletion = sent;
        const wire = (await seeEvent(alice, dmRoom, sent.eventId, "Bob's message")).getWireContent();
        return {
            device_id: alice2.getDeviceId(),
            bob_sees_devices: bobSees,
            seen: { ...sent.seen, ...fromAlice2.seen },
            session_id: wire.session_id,
        };
    });

    // Deleting the second device: it gets nothing new ---------------------------------------------
    await h.step("deleted_device", async () => {
        const deviceId = alice2.getDeviceId();
        const token = alice2.e2eeLogin.access_token;
        alice2.e2eeDeleted = true;
        // UIA: the first attempt returns the session, the second carries the password.
        const first = await h.api(alice.e2eeLogin.access_token, "DELETE", `/devices/${deviceId}`, {});
        check(first.status === 401 && first.json.session, `DELETE /devices asks for auth (${first.status})`);
        const deleted = await h.api(alice.e2eeLogin.access_token, "DELETE", `/devices/${deviceId}`, {
            auth: {
                type: "m.login.password",
                identifier: { type: "m.id.user", user: aliceName },
                password: PASSWORD,
                session: first.json.session,
            },
        });
        check(deleted.status === 200, `DELETE /devices answered ${deleted.status} ${JSON.stringify(deleted.json)}`);
        // Not stopped: a stopped client's crypto is closed, and it is used below.
        const afterWhoami = await h.api(token, "GET", "/account/whoami");

        // Bob's sync says Alice's devices changed; his client forgets the deleted device.
        const bobSees = await until(async () => {
            const devices = await knownDevices(bob, alice.getUserId());
            return devices.includes(deviceId) ? null : devices;
        }, "Bob to forget the deleted device");
        const sent = await sendAndRead(h, bob, dmRoom, "dm-after-deletion", [alice]);
        const event = await seeEvent(alice, dmRoom, sent.eventId, "Bob's message after the deletion");
        const wire = event.getWireContent();

        // The deleted device's crypto (still in memory) cannot read the new message: the
        // room key was never sent to it.
        const oldEvent = await seeEvent(alice, dmRoom, beforeDeletion.eventId, "the message before deletion");
        let deletedCanReadOld = null;
        let deletedCanReadNew = null;
        try {
            const old = asReceived(oldEvent);
            await alice2.decryptEventIfNeeded(old);
            deletedCanReadOld = !old.isDecryptionFailure() && old.getContent().body === beforeDeletion.body;
            const fresh = asReceived(event);
            await alice2.decryptEventIfNeeded(fresh);
            deletedCanReadNew = !fresh.isDecryptionFailure() && fresh.getContent().body === sent.body;
        } catch (e) {
            deletedCanReadNew = `error: ${e?.message ?? e}`;
        }
        return {
            device_id: deviceId,
            delete_status: deleted.status,
            old_token_status: afterWhoami.status,
            old_token_errcode: afterWhoami.json.errcode,
            bob_sees_devices: bobSees,
            seen: sent.seen,
            session_id: wire.session_id,
            deleted_can_read_old: deletedCanReadOld,
            deleted_can_read_new: deletedCanReadNew,
        };
    });

    // Carol's keys/query view of Alice: the deleted device is gone --------------------------------
    await h.step("query_after_deletion", async () => {
        const { json } = await h.api(carol.e2eeLogin.access_token, "POST", "/keys/query", {
            device_keys: { [alice.getUserId()]: [] },
        });
        return { devices: Object.keys(json.device_keys?.[alice.getUserId()] ?? {}).sort() };
    });
}

await runMain(h, main);
