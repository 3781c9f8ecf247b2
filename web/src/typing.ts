// "Bob is typing…": who else is writing in a chat now, from the server's typing notices.

import type { Room } from "matrix-js-sdk";

export function typingText(room: Room, me: string | null): string {
    const names = room
        .getJoinedMembers()
        .filter((m) => m.typing && m.userId !== me)
        .map((m) => m.name);
    if (names.length === 0) return "";
    if (names.length === 1) return `${names[0]} is typing…`;
    return `${names.slice(0, -1).join(", ")} and ${names.at(-1)} are typing…`;
}
