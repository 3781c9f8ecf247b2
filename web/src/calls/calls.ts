// One-to-one calls (matrix-js-sdk's MatrixCall): placing them from a chat's header,
// ringing for incoming ones, and the one call in progress, which the call screen
// (call_screen.ts) shows. The SDK fetches the server's TURN credentials itself at start
// (/voip/turnServer, the calls plugin) and hands them to each RTCPeerConnection.
// When a call ends in an encrypted chat it goes into this device's call log (call_log.ts).

import { ClientEvent, KnownMembership, type MatrixClient, type Room } from "matrix-js-sdk";
import {
    CallDirection,
    CallErrorCode,
    CallEvent,
    CallParty,
    CallState,
    CallType,
    createNewMatrixCall,
    type MatrixCall,
} from "matrix-js-sdk/lib/webrtc/call.js";
import { CallEventHandlerEvent } from "matrix-js-sdk/lib/webrtc/callEventHandler.js";

import { h } from "../dom";
import { type CallRecord, type LoggedOutcome, logCallOnDevice } from "./call_log";
import { CallScreen } from "./call_screen";
import { applyRelaySetting } from "./relay_setting";
import "./calls.css";

/** What this device saw of a call, for its log. */
interface Seen {
    startedAt: number;
    answeredAt: number | null;
    declinedHere: boolean;
    /** Seen with video at any point (the SDK's type falls back to voice once tracks stop). */
    video: boolean;
}

export class Calls {
    private call: MatrixCall | null = null;
    private readonly seen = new Map<string, Seen>();
    private readonly screen: CallScreen;
    private readonly listeners = new Set<() => void>();

    constructor(private readonly client: MatrixClient) {
        applyRelaySetting(client);
        this.screen = new CallScreen({
            // Without a microphone or camera the SDK ends the call itself (user_media_failed).
            accept: () => void this.call?.answer().catch((e: unknown) => console.warn("could not answer", e)),
            decline: () => this.decline(),
            hangUp: () => this.call?.hangup(CallErrorCode.UserHangup, false),
            name: (call) => this.peerOf(call).name,
        });
        client.on(CallEventHandlerEvent.Incoming, (incoming: MatrixCall) => {
            if (this.call) {
                // One call at a time: the other side hears "busy".
                incoming.hangup(CallErrorCode.UserBusy, false);
                return;
            }
            this.follow(incoming);
        });
        // After each sync, not on member events: the SDK applies the room summary's member
        // counts after it emits those.
        client.on(ClientEvent.Sync, () => this.changed());
    }

    /** Called when calls start or end (the chat header's buttons follow it). */
    onChange(listener: () => void): void {
        this.listeners.add(listener);
    }

    /** Whether a call can be placed in the room: a one-to-one chat the other person joined. */
    canCall(room: Room): boolean {
        return this.call === null && room.getJoinedMemberCount() === 2 && room.getMyMembership() === KnownMembership.Join;
    }

    async place(room: Room, video: boolean): Promise<void> {
        if (!this.canCall(room)) return;
        const call = createNewMatrixCall(this.client, room.roomId);
        if (!call) {
            window.alert("This browser cannot make calls (it has no WebRTC).");
            return;
        }
        this.follow(call);
        try {
            await (video ? call.placeVideoCall() : call.placeVoiceCall());
        } catch (e) {
            // No camera or microphone (or permission refused): the SDK ends the call.
            console.warn("call failed to start", e);
        }
    }

    private decline(): void {
        const call = this.call;
        if (!call) return;
        const seen = this.seen.get(call.callId);
        if (seen) seen.declinedHere = true;
        call.reject();
    }

    private follow(call: MatrixCall): void {
        this.call = call;
        const seen: Seen = { startedAt: Date.now(), answeredAt: null, declinedHere: false, video: call.type === CallType.Video };
        this.seen.set(call.callId, seen);
        call.on(CallEvent.State, (state: CallState) => {
            // Answered: both sides go to "connecting" once the answer is sent or received
            // (the time the timeline's notice and the server's log count from, too).
            if ((state === CallState.Connecting || state === CallState.Connected) && seen.answeredAt === null) {
                seen.answeredAt = Date.now();
            }
            if (state !== CallState.Ended && call.type === CallType.Video) seen.video = true;
            this.screen.update(call, seen.answeredAt);
        });
        call.on(CallEvent.FeedsChanged, () => this.screen.update(call, this.seen.get(call.callId)?.answeredAt ?? null));
        call.on(CallEvent.Hangup, () => this.ended(call));
        this.screen.update(call, null);
        this.changed();
    }

    private ended(call: MatrixCall): void {
        const seen = this.seen.get(call.callId);
        this.seen.delete(call.callId);
        if (this.call === call) {
            this.call = null;
            this.screen.close();
        }
        this.changed();
        if (seen && this.client.isRoomEncrypted(call.roomId)) void this.logOnDevice(call, seen);
    }

    private async logOnDevice(call: MatrixCall, seen: Seen): Promise<void> {
        const record: CallRecord = {
            callId: call.callId,
            chatId: call.roomId,
            peerId: this.peerOf(call).userId,
            direction: call.direction === CallDirection.Inbound ? "incoming" : "outgoing",
            type: seen.video ? "video" : "voice",
            startedAt: seen.startedAt,
            answeredAt: seen.answeredAt,
            endedAt: Date.now(),
            outcome: outcomeOf(call, seen),
            source: "device",
        };
        try {
            await logCallOnDevice(this.client.getUserId() ?? "", record);
        } catch (e) {
            console.warn("could not keep the call in this device's log", e);
        }
    }

    /** Who is at the other end: the member who answered, else the other person in the chat
     * (a call not answered yet, or declined, has no opponent in the SDK). */
    private peerOf(call: MatrixCall): { userId: string; name: string } {
        const me = this.client.getUserId();
        const member =
            call.getOpponentMember() ??
            this.client
                .getRoom(call.roomId)
                ?.getMembers()
                .find((m) => m.userId !== me);
        return { userId: member?.userId ?? "", name: member?.name ?? member?.userId ?? "" };
    }

    private changed(): void {
        for (const listener of this.listeners) listener();
    }
}

function outcomeOf(call: MatrixCall, seen: Seen): LoggedOutcome {
    const reason = call.hangupReason;
    if (reason === CallErrorCode.UserBusy) return "busy";
    // As the server's log: an ending for another reason than a hang-up is a failure.
    if (reason && reason !== CallErrorCode.UserHangup && reason !== CallErrorCode.InviteTimeout) return "failed";
    if (seen.answeredAt !== null) return "answered";
    if (seen.declinedHere) return "declined";
    // The other side ended a call I placed before answering it: they declined it.
    if (call.direction === CallDirection.Outbound && call.hangupParty === CallParty.Remote) return "declined";
    return "missed";
}

let calls: Calls | null = null;

/** Start taking calls for the signed-in client (once, from main.ts). */
export function startCalls(client: MatrixClient): Calls {
    if (!calls) {
        calls = new Calls(client);
        calls.onChange(updateButtons);
    }
    return calls;
}

// The header's buttons on screen; each updates itself when calls start or end and when a
// chat's members change (the header is drawn once per opened chat).
const buttonGroups = new Set<{ element: HTMLElement; update: () => void }>();

function updateButtons(): void {
    for (const group of buttonGroups) {
        if (group.element.isConnected) group.update();
        else buttonGroups.delete(group);
    }
}

/** The chat header's "Voice call" and "Video call" buttons, shown in one-to-one chats. */
export function callButtons(client: MatrixClient, room: Room): HTMLElement {
    const element = h("span", { class: "call-buttons" });
    const manager = calls;
    if (!manager) return element;
    const button = (video: boolean): HTMLButtonElement => {
        const label = video ? "Video call" : "Voice call";
        const b = h(
            "button",
            { type: "button", class: "call-start secondary", id: video ? "call-video" : "call-voice", "aria-label": label, title: label },
            video ? "🎥" : "📞",
        );
        b.addEventListener("click", () => void manager.place(room, video));
        return b;
    };
    const buttons = [button(false), button(true)];
    element.append(...buttons);
    const update = (): void => {
        const current = client.getRoom(room.roomId) ?? room;
        element.hidden = current.getJoinedMemberCount() !== 2;
        for (const b of buttons) b.disabled = !manager.canCall(current);
    };
    update();
    buttonGroups.add({ element, update });
    return element;
}
