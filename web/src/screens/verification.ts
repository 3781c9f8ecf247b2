// Emoji verification (SAS): both sides show the same seven emoji and each person confirms
// they match. Used to verify a new device of mine from another one, and another person
// from their entry in a chat's member list; requests from others arrive in a dialog.

import { ClientEvent, KnownMembership, type MatrixClient, type MatrixEvent, type Room, RoomStateEvent } from "matrix-js-sdk";
import {
    CryptoEvent,
    type ShowSasCallbacks,
    VerificationPhase,
    type VerificationRequest,
    VerificationRequestEvent,
    type Verifier,
    VerifierEvent,
} from "matrix-js-sdk/lib/crypto-api/index.js";

import { h, show } from "../dom";

export class VerificationCancelled extends Error {}

// The SDK's request object (and through it its verifier) hears from the Rust crypto only
// through a weak reference. While it waits for the other side, a request held by nothing
// but its own listeners (and the awaits chained on them) can be garbage-collected: the
// other side's next event then reaches no one, and the flow stalls for good with no emoji
// shown. Each request whose emoji are being compared is held here until it ends.
const inProgress = new Set<VerificationRequest>();

declare global {
    interface Window {
        /** What this page saw of verifications (`note`); tests print it when one stalls. */
        hsVerificationLog?: string[];
    }
}

// The last 100 steps, timed: the verification events this device received, each request's
// phases, the emoji shown, the outcome. tests/browser/web_e2ee.mjs prints it when a wait
// times out, to tell which side stopped where.
const trail: string[] = [];
window.hsVerificationLog = trail;

function note(line: string): void {
    trail.push(`${new Date().toISOString().slice(11, 23)} ${line}`);
    if (trail.length > 100) trail.shift();
}

const describe = (request: VerificationRequest): string =>
    `request ${request.transactionId ?? "(not sent)"} ${VerificationPhase[request.phase]}${request.verifier ? " with verifier" : ""}`;

/** Resolves once `test` holds for the request; rejects if it is cancelled first. */
function until(request: VerificationRequest, test: () => boolean): Promise<void> {
    return new Promise((resolve, reject) => {
        const check = (): void => {
            note(describe(request));
            if (request.phase === VerificationPhase.Cancelled) {
                request.off(VerificationRequestEvent.Change, check);
                reject(new VerificationCancelled("The verification was cancelled."));
            } else if (test()) {
                request.off(VerificationRequestEvent.Change, check);
                resolve();
            }
        };
        request.on(VerificationRequestEvent.Change, check);
        check();
    });
}

function emojiList(sas: ShowSasCallbacks): HTMLElement {
    return h(
        "ol",
        { class: "sas-emoji", id: "sas-emoji", "aria-label": "Verification emoji" },
        ...(sas.sas.emoji ?? []).map(([emoji, name]) =>
            h("li", {}, h("span", { class: "emoji", "aria-hidden": "true" }, emoji), h("span", { class: "emoji-name" }, name)),
        ),
    );
}

/**
 * Run the emoji comparison of `request` inside `panel`: wait for the other side, show the
 * emoji with "They match" / "They don't match", and resolve once both confirmed.
 * The side that sent the request starts it; the other side joins.
 */
export async function runSas(panel: HTMLElement, request: VerificationRequest, otherSide: string): Promise<void> {
    inProgress.add(request);
    try {
        await compareEmoji(panel, request, otherSide);
        note(`${describe(request)}: verified`);
    } catch (e) {
        note(`${describe(request)}: failed (${request.cancellationCode ?? String(e)})`);
        throw e;
    } finally {
        inProgress.delete(request);
    }
}

/** `runSas` itself, without the holding and the log. */
async function compareEmoji(panel: HTMLElement, request: VerificationRequest, otherSide: string): Promise<void> {
    show(panel, h("p", { class: "sas-status", id: "sas-status" }, `Waiting for ${otherSide} to accept…`));
    let verifier: Verifier;
    if (request.initiatedByMe) {
        await until(request, () => request.phase >= VerificationPhase.Ready);
        verifier = request.verifier ?? (await request.startVerification("m.sas.v1"));
    } else {
        show(panel, h("p", { class: "sas-status", id: "sas-status" }, `Waiting for ${otherSide} to start…`));
        await until(request, () => request.verifier !== undefined);
        verifier = request.verifier as Verifier;
    }
    const compare = (sas: ShowSasCallbacks): void => {
        note(`${describe(request)}: emoji shown`);
        const match = h("button", { type: "button", id: "sas-match" }, "They match");
        const mismatch = h("button", { type: "button", id: "sas-mismatch", class: "secondary" }, "They don't match");
        match.addEventListener("click", () => {
            match.disabled = mismatch.disabled = true;
            show(panel, emojiList(sas), h("p", { class: "sas-status", id: "sas-status" }, `Waiting for ${otherSide} to confirm…`));
            void sas.confirm().catch(() => undefined);
        });
        mismatch.addEventListener("click", () => sas.mismatch());
        show(
            panel,
            h("p", {}, `Compare these emoji with the ones ${otherSide} shows, in the same order.`),
            emojiList(sas),
            h("div", { class: "actions" }, match, mismatch),
        );
    };
    verifier.on(VerifierEvent.ShowSas, compare);
    const shown = verifier.getShowSasCallbacks();
    if (shown) compare(shown);
    try {
        await verifier.verify();
    } catch {
        throw new VerificationCancelled("The verification was cancelled or the emoji did not match.");
    }
}

/** A modal card over the app, holding `panel`; returns it with a Close button that removes it. */
function dialog(title: string, panel: HTMLElement): { overlay: HTMLElement; close: HTMLButtonElement } {
    const close = h("button", { type: "button", id: "verification-close", class: "secondary" }, "Close");
    const overlay = h(
        "div",
        { class: "overlay" },
        h(
            "section",
            { class: "card", role: "dialog", "aria-modal": "true", "aria-labelledby": "verification-title", id: "verification-dialog" },
            h("h1", { id: "verification-title" }, title),
            panel,
        ),
    );
    // Escape closes a finished dialog or declines a request not accepted yet; while the
    // emoji are compared it does nothing ("They don't match" is the way out there).
    const onKey = (e: KeyboardEvent): void => {
        if (e.key !== "Escape") return;
        if (!overlay.isConnected) return document.removeEventListener("keydown", onKey);
        const way = overlay.querySelector<HTMLButtonElement>("#verification-close, #verification-decline");
        if (!way) return;
        e.preventDefault();
        way.click();
    };
    document.addEventListener("keydown", onKey);
    close.addEventListener("click", () => {
        document.removeEventListener("keydown", onKey);
        overlay.remove();
    });
    return { overlay, close };
}

/** Someone (or my other device) asks to verify: a dialog to accept and compare emoji. */
export function watchVerificationRequests(client: MatrixClient): void {
    // For the log: every verification event this device receives, in a chat or to itself.
    const seen = (event: MatrixEvent): void => {
        const type = isVerificationRequest(event) ? "m.key.verification.request" : event.getType();
        if (!type.startsWith("m.key.verification.")) return;
        note(`${type} from ${event.getSender()} ${event.getRoomId() ? "in a chat" : "to this device"}`);
    };
    client.on(ClientEvent.Event, seen);
    client.on(ClientEvent.ToDeviceEvent, seen);
    client.on(CryptoEvent.VerificationRequestReceived, (request) => {
        note(`asked: ${describe(request)} from ${request.otherUserId}`);
        // Requests this page sent itself run in their own panel.
        if (request.initiatedByMe) return;
        const who = request.isSelfVerification ? "your other device" : nameOf(client, request);
        const panel = h("div", { class: "sas" });
        const { overlay, close } = dialog(request.isSelfVerification ? "Verify your new device" : `Verify ${who}`, panel);
        const dismiss = (): void => overlay.remove();
        const accept = h("button", { type: "button", id: "verification-accept" }, "Accept");
        const decline = h("button", { type: "button", id: "verification-decline", class: "secondary" }, "Decline");
        decline.addEventListener("click", () => {
            void request.cancel().catch(() => undefined);
            dismiss();
        });
        accept.addEventListener("click", () => {
            void request
                .accept()
                .then(() => runSas(panel, request, who))
                .then(() => show(panel, h("p", { class: "verified", id: "sas-status" }, "Verified ✓"), close))
                .catch((e: unknown) => show(panel, h("p", { class: "error", id: "sas-status" }, errorText(e)), close));
        });
        const text = request.isSelfVerification
            ? "You signed in on another device and want to verify it from here."
            : `${who} wants to verify you by comparing emoji.`;
        show(panel, h("p", {}, text), h("div", { class: "actions" }, accept, decline));
        document.body.append(overlay);
        accept.focus();
        // Cancelled before it was accepted (once accepted, runSas reports it).
        void until(request, () => false).catch(() => {
            if (accept.isConnected) show(panel, h("p", { class: "error", id: "sas-status" }, "The request was cancelled."), close);
        });
    });
}

/** The other person's name in the chat the request came from, else their user id. */
function nameOf(client: MatrixClient, request: VerificationRequest): string {
    const room = request.roomId ? client.getRoom(request.roomId) : null;
    return room?.getMember(request.otherUserId)?.name ?? request.otherUserId;
}

function errorText(e: unknown): string {
    return e instanceof VerificationCancelled ? e.message : "The verification failed.";
}

/** A request to verify sent in a chat: a message for clients without verification, not for us. */
export function isVerificationRequest(event: MatrixEvent): boolean {
    return event.getContent().msgtype === "m.key.verification.request";
}

/** Whether I verified `userId` (their identity signed by my cross-signing key). */
export async function isVerified(client: MatrixClient, userId: string): Promise<boolean> {
    const status = await client.getCrypto()?.getUserVerificationStatus(userId);
    return status?.isCrossSigningVerified() ?? false;
}

/**
 * The chat's other members, each with a verified mark or a "Verify" button that compares
 * emoji with them (a request in the chat, as the spec's in-room verification does).
 */
export function memberList(
    client: MatrixClient,
    room: Room,
    extras: (userId: string, name: string) => Node[] = () => [],
): HTMLElement {
    const me = client.getUserId();
    const list = h("ul", { class: "members", id: "members", "aria-label": "Members" });
    const render = async (): Promise<void> => {
        const members = room.getMembers().filter((m) => m.userId !== me && m.membership === KnownMembership.Join);
        const items = await Promise.all(
            members.map(async (member) => {
                const verified = await isVerified(client, member.userId);
                const item = h("li", { "data-user-id": member.userId }, h("span", { class: "member-name" }, member.name));
                item.append(...extras(member.userId, member.name)); // admin marks, remove (group_panel.ts)
                if (verified) {
                    item.append(h("span", { class: "verified", "aria-label": "verified", title: "Verified by emoji" }, "✓ Verified"));
                } else {
                    const verify = h("button", { type: "button", class: "secondary verify-user" }, "Verify");
                    verify.addEventListener("click", () => void verifyUser(client, room, member.userId, member.name));
                    item.append(verify);
                }
                return item;
            }),
        );
        show(list, ...items);
    };
    void render();
    // Again when someone joins or leaves, or my trust in someone changes; until the list
    // has left the page.
    const again = (): void => {
        if (list.isConnected) {
            void render();
            return;
        }
        client.off(CryptoEvent.UserTrustStatusChanged, again);
        client.off(RoomStateEvent.Members, again);
    };
    client.on(CryptoEvent.UserTrustStatusChanged, again);
    client.on(RoomStateEvent.Members, again);
    return list;
}

async function verifyUser(client: MatrixClient, room: Room, userId: string, name: string): Promise<void> {
    const crypto = client.getCrypto();
    if (!crypto) return;
    const panel = h("div", { class: "sas" });
    const { overlay, close } = dialog(`Verify ${name}`, panel);
    document.body.append(overlay);
    try {
        const request = await crypto.requestVerificationDM(userId, room.roomId);
        await runSas(panel, request, name);
        show(panel, h("p", { class: "verified", id: "sas-status" }, `${name} is verified ✓`), close);
    } catch (e) {
        show(panel, h("p", { class: "error", id: "sas-status" }, errorText(e)), close);
    }
    close.focus();
}
