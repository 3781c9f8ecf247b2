// The call screen, over everything else while a call is on: an incoming call rings
// (Accept / Decline); an outgoing one says it is calling; a connected one shows the other
// side's video (or only their name for a voice call), my own small preview, the time since
// it connected, and Mute, Camera off, Hang up. It lives in <body>, outside the screens that
// re-render, so a call survives moving between chats and settings.

import { CallDirection, CallState, CallType, type MatrixCall } from "matrix-js-sdk/lib/webrtc/call.js";

import { h, show } from "../dom";
import { formatDuration } from "./call_notices";

export interface CallScreenActions {
    accept: () => void;
    decline: () => void;
    hangUp: () => void;
    /** The other person's name. */
    name: (call: MatrixCall) => string;
}

export class CallScreen {
    private readonly root = h("section", { class: "call-screen", id: "call-screen", role: "dialog", "aria-labelledby": "call-title" });
    private readonly title = h("h2", { id: "call-title" });
    private readonly status = h("p", { class: "call-status", id: "call-status", "aria-live": "polite" });
    private readonly remoteVideo = h("video", { id: "call-remote-video", autoplay: true, playsinline: true });
    private readonly localVideo = h("video", { id: "call-local-video", autoplay: true, playsinline: true, muted: true });
    private readonly controls = h("div", { class: "call-controls" });
    private readonly peer = h("p", { class: "call-peer", id: "call-peer" });
    private timer = 0;
    private call: MatrixCall | null = null;
    private answeredAt: number | null = null;
    private drawn = "";

    constructor(private readonly actions: CallScreenActions) {
        this.localVideo.muted = true; // my own microphone is never played back to me
        // Built once: moving a playing <video> in the DOM would pause it.
        this.root.append(this.title, this.peer, this.status, this.remoteVideo, this.localVideo, this.controls);
    }

    update(call: MatrixCall, answeredAt: number | null): void {
        this.call = call;
        this.answeredAt = answeredAt;
        if (!this.root.isConnected) document.body.append(this.root);
        const video = call.type === CallType.Video;
        this.root.classList.toggle("video", video);
        this.root.dataset.state = call.state;
        const peer = this.actions.name(call);
        const ringing = call.state === CallState.Ringing;
        const connected = call.state === CallState.Connected;
        this.title.textContent = ringing ? `Incoming ${video ? "video" : "voice"} call` : `${video ? "Video" : "Voice"} call`;
        this.peer.textContent = peer;
        this.peer.textContent = peer;
        this.attach(this.remoteVideo, call.remoteUsermediaFeed?.stream);
        this.attach(this.localVideo, video ? call.localUsermediaFeed?.stream : undefined);
        // Controls are redrawn only when what they offer changes (keeping keyboard focus).
        const kind = ringing ? "ringing" : connected ? "connected" : "calling";
        if (kind !== this.drawn) {
            this.drawn = kind;
            show(this.controls, ...(ringing ? this.ringingButtons() : this.callButtons(call, connected)));
            this.controls.querySelector("button")?.focus();
        }
        this.tick();
        window.clearInterval(this.timer);
        if (connected) this.timer = window.setInterval(() => this.tick(), 1000);
    }

    close(): void {
        window.clearInterval(this.timer);
        this.attach(this.remoteVideo, undefined);
        this.attach(this.localVideo, undefined);
        this.call = null;
        this.drawn = "";
        this.root.remove();
    }

    private attach(video: HTMLVideoElement, stream: MediaStream | undefined): void {
        if (video.srcObject !== (stream ?? null)) video.srcObject = stream ?? null;
    }

    private tick(): void {
        const call = this.call;
        if (!call) return;
        if (call.state === CallState.Connected) {
            this.status.textContent = formatDuration(Date.now() - (this.answeredAt ?? Date.now()));
        } else if (call.state === CallState.Ringing) {
            this.status.textContent = `${this.actions.name(call)} is calling you`;
        } else if (call.direction === CallDirection.Inbound || call.state === CallState.Connecting) {
            this.status.textContent = "Connecting…";
        } else {
            this.status.textContent = "Calling…";
        }
    }

    private ringingButtons(): HTMLButtonElement[] {
        const accept = h("button", { type: "button", id: "call-accept", class: "call-accept" }, "Accept");
        accept.addEventListener("click", () => this.actions.accept());
        const decline = h("button", { type: "button", id: "call-decline", class: "call-end" }, "Decline");
        decline.addEventListener("click", () => this.actions.decline());
        return [accept, decline];
    }

    private callButtons(call: MatrixCall, connected: boolean): HTMLButtonElement[] {
        const hangUp = h("button", { type: "button", id: "call-hangup", class: "call-end" }, "Hang up");
        hangUp.addEventListener("click", () => this.actions.hangUp());
        if (!connected) return [hangUp];
        const mute = toggle("call-mute", "Mute", () => call.isMicrophoneMuted(), (on) => call.setMicrophoneMuted(on));
        const buttons = [mute];
        if (call.type === CallType.Video) {
            buttons.push(toggle("call-camera", "Camera off", () => call.isLocalVideoMuted(), (on) => call.setLocalVideoMuted(on)));
        }
        return [...buttons, hangUp];
    }
}

/** A pressed/unpressed button for a call setting (aria-pressed says which). */
function toggle(id: string, label: string, isOn: () => boolean, set: (on: boolean) => Promise<boolean>): HTMLButtonElement {
    const button = h("button", { type: "button", id, class: "call-toggle secondary", "aria-pressed": String(isOn()) }, label);
    button.addEventListener("click", () => {
        void set(!isOn()).then(() => button.setAttribute("aria-pressed", String(isOn())));
    });
    return button;
}
