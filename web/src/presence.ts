// "online" / "last seen 5 min ago": a person's presence from the server's m.presence
// events (the SDK keeps them on its User objects), for the chat list and the chat header.

import { KnownMembership, type MatrixClient, type Room } from "matrix-js-sdk";

function ago(ms: number): string {
    const minutes = Math.floor(ms / 60_000);
    if (minutes < 1) return "just now";
    if (minutes < 60) return `${minutes} min ago`;
    const hours = Math.floor(minutes / 60);
    if (hours < 24) return `${hours} h ago`;
    return `${Math.floor(hours / 24)} d ago`;
}

/** "online", "last seen 3 min ago", or "" while the server has said nothing about them. */
export function presenceText(client: MatrixClient, userId: string, now = Date.now()): string {
    const user = client.getUser(userId);
    if (!user?.presence) return "";
    if (user.presence === "online") return "online";
    // lastActiveAgo is as of the event's arrival (lastPresenceTs), not as of now.
    const lastActive = user.lastPresenceTs && user.lastActiveAgo !== undefined ? user.lastPresenceTs - user.lastActiveAgo : 0;
    return lastActive > 0 ? `last seen ${ago(Math.max(0, now - lastActive))}` : user.presence === "unavailable" ? "away" : "offline";
}

/** The other person of a one-to-one chat: exactly two members (joined or invited). */
export function otherPerson(client: MatrixClient, room: Room): string | null {
    const me = client.getUserId();
    const members = room
        .getMembers()
        .filter((m) => m.membership === KnownMembership.Join || m.membership === KnownMembership.Invite);
    if (members.length !== 2 || room.currentState.getStateEvents("m.room.name", "")?.getContent().name) return null;
    return members.find((m) => m.userId !== me)?.userId ?? null;
}

/** A chat's presence line: the other person's presence, or how many of a group are online. */
export function chatPresence(client: MatrixClient, room: Room): string {
    const other = otherPerson(client, room);
    if (other) return presenceText(client, other);
    const me = client.getUserId();
    const others = room.getJoinedMembers().filter((m) => m.userId !== me);
    const online = others.filter((m) => client.getUser(m.userId)?.presence === "online").length;
    const count = others.length + 1;
    return `${count} members${online ? `, ${online} online` : ""}`;
}
