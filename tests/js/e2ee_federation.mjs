// End-to-end encryption across two homeservers with matrix-js-sdk's Rust crypto: Alice on
// one server makes an encrypted room, invites Bob of the other, and each decrypts what the
// other sends. Device keys are queried and one-time keys claimed over federation, and the
// room keys travel as to-device messages between the servers.
//
//   node e2ee_federation.mjs <base_url_a> <alice> <base_url_b> <bob>
//
// The users exist already with the password "correct horse battery"
// (tests/test_federation_e2e.py and tests/test_federation_e2e_synapse.py register them; either
// server may be ours or Synapse). The last stdout line is `RESULT {json}`.

import { Harness, acceptInvite, runMain, sdk, sendAndRead, waitForMembership } from "./e2ee_common.mjs";

const { KnownMembership } = sdk;

const [baseA, aliceName, baseB, bobName] = process.argv.slice(2);
if (!baseA || !bobName) {
    console.error("usage: node e2ee_federation.mjs <base_url_a> <alice> <base_url_b> <bob>");
    process.exit(2);
}
const h = new Harness(baseA);
const onB = new Harness(baseB);
onB.results = h.results; // one report for both sides

async function main() {
    const alice = await h.startClient(aliceName, { deviceName: "alice on A" });
    const bob = await onB.startClient(bobName, { deviceName: "bob on B" });
    h.clients.push(bob);
    await h.step("room", async () => {
        const { room_id: roomId } = await alice.createRoom({
            preset: "private_chat",
            invite: [bob.getUserId()],
            initial_state: [
                { type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } },
            ],
        });
        await acceptInvite(bob, roomId);
        await waitForMembership(alice, roomId, bob.getUserId(), KnownMembership.Join);
        const first = await sendAndRead(h, alice, roomId, "fed-alice", [bob]);
        const reply = await sendAndRead(h, bob, roomId, "fed-bob", [alice]);
        const again = await sendAndRead(h, alice, roomId, "fed-alice-again", [bob]);
        return { room_id: roomId, seen: [first.seen, reply.seen, again.seen] };
    });
}

await runMain(h, main);
