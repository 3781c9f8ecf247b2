// Calls in a chat's timeline: one notice per call (at its m.call.invite), never a chat
// bubble. The notice says how the call went, from the call's own events in the loaded
// timeline: answered (with its duration), declined (m.call.reject), missed (hung up or
// expired while it rang), or still ringing / going on.

import type { MatrixEvent } from "matrix-js-sdk";

export type CallOutcome = "ringing" | "ongoing" | "answered" | "declined" | "missed";

export interface CallNotice {
    callId: string;
    video: boolean;
    callerId: string;
    outcome: CallOutcome;
    durationMs: number | null;
    text: string;
}

function callIdOf(event: MatrixEvent): string | null {
    const id = (event.getContent() as { call_id?: unknown }).call_id;
    return typeof id === "string" && id ? id : null;
}

/** "1:05", "12:00", "1:02:03". */
export function formatDuration(ms: number): string {
    const total = Math.max(0, Math.floor(ms / 1000));
    const [hours, minutes, seconds] = [Math.floor(total / 3600), Math.floor(total / 60) % 60, total % 60];
    const ss = String(seconds).padStart(2, "0");
    return hours ? `${hours}:${String(minutes).padStart(2, "0")}:${ss}` : `${minutes}:${ss}`;
}

/** Whether an invite's SDP offer asks for video. */
export function offersVideo(invite: MatrixEvent): boolean {
    const sdp = (invite.getContent() as { offer?: { sdp?: unknown } }).offer?.sdp;
    return typeof sdp === "string" && /^m=video /m.test(sdp);
}

/** The notice's words, as the person reading it sees the call (they placed it, or not). */
function noticeText(video: boolean, outcome: CallOutcome, durationMs: number | null, placedByMe: boolean): string {
    const kind = video ? "video call" : "voice call";
    const Kind = video ? "Video call" : "Voice call";
    switch (outcome) {
        case "answered":
            return `${Kind} · ${formatDuration(durationMs ?? 0)}`;
        case "declined":
            return placedByMe ? `${Kind} declined` : `Declined ${kind}`;
        case "missed":
            return placedByMe ? `${Kind}, no answer` : `Missed ${kind}`;
        case "ongoing":
            return `${Kind} in progress`;
        default:
            return `${Kind}: ringing…`;
    }
}

/** The notice of every call whose invite is in `events`, by the invite's event id, as `me` sees it. */
export function callNotices(events: MatrixEvent[], me: string, now: number = Date.now()): Map<string, CallNotice> {
    const answers = new Map<string, MatrixEvent>();
    const ends = new Map<string, MatrixEvent>();
    for (const event of events) {
        const callId = callIdOf(event);
        if (!callId) continue;
        if (event.getType() === "m.call.answer" && !answers.has(callId)) answers.set(callId, event);
        if ((event.getType() === "m.call.hangup" || event.getType() === "m.call.reject") && !ends.has(callId)) {
            ends.set(callId, event);
        }
    }
    const notices = new Map<string, CallNotice>();
    for (const invite of events) {
        const callId = callIdOf(invite);
        if (invite.getType() !== "m.call.invite" || !callId) continue;
        const answer = answers.get(callId);
        const end = ends.get(callId);
        const lifetime = Number((invite.getContent() as { lifetime?: unknown }).lifetime) || 60_000;
        let outcome: CallOutcome;
        let durationMs: number | null = null;
        if (answer && end) {
            outcome = "answered";
            durationMs = end.getTs() - answer.getTs();
        } else if (answer) {
            outcome = "ongoing";
        } else if (end?.getType() === "m.call.reject") {
            outcome = "declined";
        } else if (end || now > invite.getTs() + lifetime) {
            outcome = "missed";
        } else {
            outcome = "ringing";
        }
        const video = offersVideo(invite);
        notices.set(invite.getId() ?? callId, {
            callId,
            video,
            callerId: invite.getSender() ?? "",
            outcome,
            durationMs,
            text: noticeText(video, outcome, durationMs, invite.getSender() === me),
        });
    }
    return notices;
}
