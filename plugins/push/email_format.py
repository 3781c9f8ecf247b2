"""The text of an email notification: pure, the caller looks up names and events.

One mail lists every room with unread notifying messages: the room's name, and per
message its sender's display name and text. An encrypted room's messages (and any
`m.room.encrypted` event) say only "an encrypted message": the server has no plaintext,
and a mail should not suggest otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

_MAX_TEXT = 300  # characters of one message's text in the mail
_MAX_PER_ROOM = 10  # messages listed per room; the rest are counted


@dataclass(frozen=True)
class MailedMessage:
    sender_name: str
    # The event as the user may see it now; None if gone or hidden meanwhile.
    event: dict[str, Any] | None


@dataclass(frozen=True)
class MailedRoom:
    room_id: str
    name: str | None
    encrypted: bool
    messages: list[MailedMessage]


def message_text(message: MailedMessage, encrypted: bool, user_id: str) -> str:
    event = message.event
    if encrypted or (event is not None and event.get("type") == "m.room.encrypted"):
        return "an encrypted message"
    if event is None:
        return "a message"
    content = event.get("content")
    content = content if isinstance(content, dict) else {}
    if event.get("type") == "m.room.member":
        if event.get("state_key") == user_id and content.get("membership") == "invite":
            return "invited you"
        return "changed their membership"
    body = content.get("body")
    if not isinstance(body, str) or not body.strip():
        return "a message"  # redacted, or an event without text
    text = " ".join(body.split())
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 1] + "…"


def room_title(room: MailedRoom) -> str:
    if room.name:
        return room.name
    senders = sorted({m.sender_name for m in room.messages})
    return "A conversation with " + ", ".join(senders)


def subject(server_name: str, rooms: list[MailedRoom]) -> str:
    count = sum(len(r.messages) for r in rooms)
    noun = "message" if count == 1 else "messages"
    if len(rooms) == 1:
        return f"[{server_name}] {count} unread {noun} in {room_title(rooms[0])}"
    return f"[{server_name}] {count} unread {noun} in {len(rooms)} rooms"


def body(
    server_name: str, user_id: str, address: str, rooms: list[MailedRoom], client_url: str | None
) -> str:
    lines = [f"You have unread messages on {server_name} ({user_id}).", ""]
    for room in rooms:
        lines.append(room_title(room))
        shown = room.messages[-_MAX_PER_ROOM:]
        if len(room.messages) > len(shown):
            lines.append(f"  … and {len(room.messages) - len(shown)} earlier messages")
        for message in shown:
            lines.append(f"  {message.sender_name}: {message_text(message, room.encrypted, user_id)}")
        if client_url is not None:
            lines.append(f"  Open: {client_url}/#/room/{quote(room.room_id, safe='!:')}")
        lines.append("")
    lines.append(
        f"You get this mail because {address} has email notifications on. To stop them,"
        " remove the email notifications in your client's notification settings."
    )
    return "\n".join(lines) + "\n"
