// The encryption screens before the chats: the recovery key shown once after sign-up, and
// "confirm it's you" on a new device (emoji from another device, or the recovery key).

import type { MatrixClient } from "matrix-js-sdk";

import { h, show } from "../dom";
import { RecoveryKeyError, restoreHistory, unlockWithRecoveryKey } from "../e2ee";
import { runSas, VerificationCancelled } from "./verification";

/** Show the new recovery key with copy and download; resolves once the user says it is saved. */
export function recoveryKeyScreen(root: Element, recoveryKey: string, userId: string): Promise<void> {
    return new Promise((resolve) => {
        const copied = h("span", { class: "hint", id: "copy-status", role: "status" });
        const copy = h("button", { type: "button", id: "copy-recovery-key", class: "secondary" }, "Copy");
        copy.addEventListener("click", () => {
            navigator.clipboard.writeText(recoveryKey).then(
                () => (copied.textContent = "Copied."),
                () => (copied.textContent = "Could not copy: select the key and copy it."),
            );
        });
        const file = URL.createObjectURL(new Blob([`Recovery key for ${userId}:\n${recoveryKey}\n`], { type: "text/plain" }));
        const download = h("a", { href: file, download: "recovery-key.txt", id: "download-recovery-key", class: "button secondary" }, "Download");
        const saved = h("input", { type: "checkbox", id: "saved-recovery-key" });
        const next = h("button", { type: "submit", id: "recovery-continue", disabled: true }, "Continue");
        saved.addEventListener("change", () => (next.disabled = !saved.checked));
        const form = h(
            "form",
            { class: "card", "aria-labelledby": "recovery-title" },
            h("h1", { id: "recovery-title" }, "Save your recovery key"),
            h("p", {}, "Your messages are end-to-end encrypted. If you sign in on a new device with none of your other devices at hand, this key is the only way to read your earlier messages. Keep it somewhere safe: it is shown only once."),
            h("code", { class: "recovery-key", id: "recovery-key" }, recoveryKey),
            h("div", { class: "actions" }, copy, download, copied),
            h("label", { class: "check" }, saved, " I have saved my recovery key"),
            next,
        );
        form.addEventListener("submit", (e) => {
            e.preventDefault();
            if (!saved.checked) return;
            URL.revokeObjectURL(file);
            resolve();
        });
        show(root, form);
        copy.focus();
    });
}

/**
 * A device the account's cross-signing does not vouch for yet: verify it by emoji from
 * another device, or with the recovery key; either way its earlier messages come back
 * from the key backup. Skipping leaves them unreadable. Resolves when the user is through.
 */
export function newDeviceScreen(root: Element, client: MatrixClient): Promise<void> {
    return new Promise((resolve) => {
        const error = h("p", { class: "error", role: "alert", id: "verify-error" });
        const panel = h("div", { class: "sas", id: "device-sas" });
        const choices = h("div", { class: "choices" });
        const status = (text: string): void => show(panel, h("p", { class: "sas-status", id: "sas-status" }, text));

        const restored = (imported: number): void => {
            choices.hidden = withDevice.hidden = true;
            show(
                panel,
                h("p", { class: "verified", id: "sas-status" }, `This device is verified ✓ ${imported} message keys restored.`),
                h("button", { type: "button", id: "verify-done", onclick: () => resolve() }, "Go to my chats"),
            );
            (panel.querySelector("#verify-done") as HTMLButtonElement).focus();
        };

        const withDevice = h("button", { type: "button", id: "verify-with-device" }, "Verify with another device");
        withDevice.addEventListener("click", () => {
            withDevice.disabled = true;
            choices.hidden = true;
            error.textContent = "";
            const crypto = client.getCrypto();
            if (!crypto) return;
            crypto
                .requestOwnUserVerification()
                .then((request) => runSas(panel, request, "your other device"))
                .then(() => {
                    status("Verified. Fetching your message keys…");
                    return restoreHistory(client);
                })
                .then(restored)
                .catch((e: unknown) => {
                    show(panel);
                    error.textContent = e instanceof Error ? e.message : "The verification failed.";
                    withDevice.disabled = false;
                    choices.hidden = false;
                });
        });

        const keyInput = h("input", {
            id: "recovery-key-input",
            name: "recovery-key",
            autocomplete: "off",
            spellcheck: "false",
            "aria-label": "Recovery key",
            placeholder: "Recovery key",
        });
        const useKey = h("button", { type: "submit", id: "use-recovery-key" }, "Use recovery key");
        const keyForm = h("form", { class: "recovery-form" }, keyInput, useKey);
        keyForm.addEventListener("submit", (e) => {
            e.preventDefault();
            useKey.disabled = true;
            error.textContent = "";
            status("Checking the key and fetching your message keys…");
            unlockWithRecoveryKey(client, keyInput.value)
                .then(restored)
                .catch((err: unknown) => {
                    show(panel);
                    error.textContent =
                        err instanceof RecoveryKeyError || err instanceof VerificationCancelled
                            ? err.message
                            : "Could not use that key. Check it and try again.";
                    useKey.disabled = false;
                });
        });

        const skip = h("button", { type: "button", id: "skip-verification", class: "link" }, "Skip: my earlier messages stay unreadable here");
        skip.addEventListener("click", () => resolve());

        choices.append(h("p", { class: "or" }, "or"), keyForm, skip);
        show(
            root,
            h(
                "section",
                { class: "card", "aria-labelledby": "verify-title" },
                h("h1", { id: "verify-title" }, "Confirm it's you"),
                h("p", {}, "To read your earlier encrypted messages on this device, verify it from a device where you are signed in (you compare emoji), or enter your recovery key."),
                withDevice,
                panel,
                choices,
                error,
            ),
        );
    });
}
