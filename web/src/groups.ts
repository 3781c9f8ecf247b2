// Group chats: create one (a name, several people), invite, remove, leave, rename, and who
// is an admin or a moderator (by power level, as every Matrix client reads it).

import { EventType, KnownMembership, type MatrixClient, Preset, type Room } from "matrix-js-sdk";

export const USER_ID = /^@[^:\s]+:\S+$/;
const ADMIN = 100;
const MODERATOR = 50;

/** User ids typed in one box, separated by commas or spaces; throws on one that is not. */
export function parseUserIds(text: string, me: string | null): string[] {
    const ids = [...new Set(text.split(/[\s,]+/).filter(Boolean))];
    for (const id of ids) {
        if (!USER_ID.test(id)) throw new Error(`"${id}" is not a user id like @alice:example.org`);
        if (id === me) throw new Error("You are in the group already: leave yourself out.");
    }
    return ids;
}

/** A new group named `name` with `invite`d people, encrypted from its first event unless
 * the creator turned that off (only unencrypted chats can be searched on the server). */
export async function createGroup(client: MatrixClient, name: string, invite: string[], encrypted: boolean): Promise<string> {
    const { room_id: roomId } = await client.createRoom({
        name,
        invite,
        preset: Preset.PrivateChat,
        initial_state: encrypted
            ? [{ type: EventType.RoomEncryption, state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } }]
            : [],
    });
    return roomId;
}

export type Role = "Admin" | "Moderator" | null;

export function roleOf(room: Room, userId: string): Role {
    const level = room.getMember(userId)?.powerLevel ?? 0;
    return level >= ADMIN ? "Admin" : level >= MODERATOR ? "Moderator" : null;
}

/** Whether I may remove `userId` from the room: the kick level and a lower level than mine. */
export function canRemove(client: MatrixClient, room: Room, userId: string): boolean {
    const me = client.getUserId() ?? "";
    const mine = room.getMember(me)?.powerLevel ?? 0;
    const theirs = room.getMember(userId)?.powerLevel ?? 0;
    return room.currentState.hasSufficientPowerLevelFor("kick", mine) && theirs < mine;
}

/** A group (not a one-to-one chat): it has a name of its own. */
export function isGroup(room: Room): boolean {
    return Boolean(room.currentState.getStateEvents(EventType.RoomName, "")?.getContent().name);
}

/** Why I am no longer in a chat I have open ("Bob removed you"), or null while I am in it. */
export function leftReason(client: MatrixClient, room: Room): string | null {
    const membership = room.getMyMembership();
    if (membership !== KnownMembership.Leave && membership !== KnownMembership.Ban) return null;
    const event = room.currentState.getStateEvents(EventType.RoomMember, client.getUserId() ?? "");
    const by = event?.getSender();
    if (!by || by === client.getUserId()) return "You left this chat.";
    const name = room.getMember(by)?.name ?? by;
    return membership === KnownMembership.Ban ? `${name} banned you from this chat.` : `${name} removed you from this chat.`;
}
