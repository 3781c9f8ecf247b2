// Settings: this device and my other devices, with their names and when they were last
// seen; rename any of them, log another one out (it lands on its login page at once).

import type { IMyDevice, MatrixClient } from "matrix-js-sdk";

import { relaySettingSection } from "../calls/relay_setting";
import { logOutDevice, myDevices, renameDevice } from "../devices";
import { h, show } from "../dom";
import { AuthError } from "../http";

function lastSeen(device: IMyDevice): string {
    if (!device.last_seen_ts) return "Not seen yet";
    const when = new Date(device.last_seen_ts).toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
    return device.last_seen_ip ? `Last seen ${when} from ${device.last_seen_ip}` : `Last seen ${when}`;
}

function messageOf(e: unknown, fallback: string): string {
    if (e instanceof AuthError) return e.message;
    const error = (e as { data?: { error?: unknown } }).data?.error;
    return typeof error === "string" ? error : fallback;
}

export class Settings {
    private readonly list = h("ul", { class: "devices", id: "devices", "aria-label": "Devices" });
    private readonly error = h("p", { class: "error", role: "alert", id: "settings-error" });

    constructor(
        private readonly root: Element,
        private readonly client: MatrixClient,
        private readonly onBack: () => void,
    ) {}

    mount(): void {
        const back = h("button", { type: "button", class: "secondary", id: "settings-back" }, "Back to chats");
        back.addEventListener("click", () => this.onBack());
        show(
            this.root,
            h(
                "section",
                { class: "settings", "aria-labelledby": "settings-title" },
                h("header", {}, h("h1", { id: "settings-title" }, "Settings"), back),
                h("p", { class: "me" }, this.client.getUserId()),
                h("h2", {}, "Devices"),
                h("p", { class: "hint" }, "Where you are logged in. Log out any device you do not recognise."),
                this.error,
                this.list,
                relaySettingSection(this.client),
            ),
        );
        void this.refresh();
    }

    private async refresh(): Promise<void> {
        try {
            const devices = await myDevices(this.client);
            show(this.list, ...devices.map((d) => this.item(d)));
        } catch (e) {
            this.error.textContent = messageOf(e, "Could not load your devices.");
        }
    }

    private item(device: IMyDevice): HTMLLIElement {
        const current = device.device_id === this.client.getDeviceId();
        const actions = h("div", { class: "actions" });
        const li = h(
            "li",
            { class: "device", "data-device-id": device.device_id, "data-current": current },
            h(
                "div",
                { class: "device-info" },
                h("span", { class: "device-name" }, device.display_name ?? device.device_id),
                current ? h("span", { class: "badge" }, "This device") : null,
                h("span", { class: "device-id" }, device.device_id),
                h("span", { class: "last-seen" }, current ? "Active now" : lastSeen(device)),
            ),
            actions,
        );
        const rename = h("button", { type: "button", class: "secondary rename" }, "Rename");
        rename.addEventListener("click", () => show(actions, this.renameForm(device)));
        const logout = h("button", { type: "button", class: "secondary log-out-device" }, "Log out");
        logout.addEventListener("click", () => show(actions, this.logOutForm(device)));
        show(actions, rename, current ? null : logout);
        return li;
    }

    private renameForm(device: IMyDevice): HTMLFormElement {
        const name = h("input", {
            name: "device-name",
            class: "device-name-input",
            value: device.display_name ?? "",
            maxlength: 100,
            required: true,
            "aria-label": "Device name",
        });
        const cancel = h("button", { type: "button", class: "secondary" }, "Cancel");
        cancel.addEventListener("click", () => void this.refresh());
        const form = h("form", { class: "inline" }, name, h("button", { type: "submit" }, "Save"), cancel);
        cancelOnEscape(form, cancel);
        form.addEventListener("submit", (e) => {
            e.preventDefault();
            this.error.textContent = "";
            renameDevice(this.client, device.device_id, name.value.trim())
                .then(() => this.refresh())
                .catch((err: unknown) => {
                    this.error.textContent = messageOf(err, "Could not rename the device.");
                });
        });
        queueMicrotask(() => name.focus());
        return form;
    }

    private logOutForm(device: IMyDevice): HTMLFormElement {
        const password = h("input", {
            name: "password",
            type: "password",
            class: "confirm-password",
            autocomplete: "current-password",
            required: true,
            "aria-label": "Your password",
            placeholder: "Your password",
        });
        const cancel = h("button", { type: "button", class: "secondary" }, "Cancel");
        cancel.addEventListener("click", () => void this.refresh());
        const submit = h("button", { type: "submit", class: "danger" }, "Log out device");
        const form = h(
            "form",
            { class: "inline" },
            h("span", { class: "hint" }, "Enter your password to log this device out:"),
            password,
            submit,
            cancel,
        );
        cancelOnEscape(form, cancel);
        form.addEventListener("submit", (e) => {
            e.preventDefault();
            submit.disabled = true;
            this.error.textContent = "";
            logOutDevice(this.client, device.device_id, password.value)
                .then(() => this.refresh())
                .catch((err: unknown) => {
                    this.error.textContent = messageOf(err, "Could not log that device out.");
                    submit.disabled = false;
                });
        });
        queueMicrotask(() => password.focus());
        return form;
    }
}

/** Escape in an inline form does what its Cancel button does. */
function cancelOnEscape(form: HTMLFormElement, cancel: HTMLButtonElement): void {
    form.addEventListener("keydown", (e) => {
        if (e.key !== "Escape") return;
        e.preventDefault();
        cancel.click();
    });
}
