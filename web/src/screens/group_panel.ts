// The group screens: "New group" in the chat list, and in an open group the panel to
// rename it, invite people, remove someone (member list, groups.ts decides who may) and
// leave. Each action answers with the server's error in place when it fails.

import type { MatrixClient, Room } from "matrix-js-sdk";

import { h } from "../dom";
import "./chats.css";
import { canRemove, createGroup, parseUserIds, roleOf } from "../groups";

function errorText(err: unknown): string {
    return (err as { data?: { error?: string } }).data?.error ?? (err instanceof Error ? err.message : "It did not work.");
}

/** Run `action` from `form`'s submit, its button disabled meanwhile, errors in `error`. */
function onSubmit(form: HTMLFormElement, error: HTMLElement, action: () => Promise<void>): void {
    form.addEventListener("submit", (e) => {
        e.preventDefault();
        error.textContent = "";
        const button = form.querySelector("button[type=submit]") as HTMLButtonElement | null;
        if (button) button.disabled = true;
        action()
            .catch((err: unknown) => {
                error.textContent = errorText(err);
            })
            .finally(() => {
                if (button) button.disabled = false;
            });
    });
}

/** "New group": a toggle and its form (name, people, encrypted). */
export function newGroupForm(client: MatrixClient, opened: (roomId: string) => void): HTMLElement {
    const name = h("input", { id: "gp-name", name: "name", required: true, maxlength: 255, "aria-label": "Group name", placeholder: "Group name" });
    const people = h("input", {
        id: "gp-people",
        name: "people",
        placeholder: "@bob:server, @carol:server",
        autocapitalize: "none",
        spellcheck: "false",
        "aria-label": "People to invite (user ids)",
    });
    const encrypted = h("input", { type: "checkbox", id: "gp-encrypted", checked: true });
    const error = h("p", { class: "error", role: "alert", id: "gp-error" });
    const form = h(
        "form",
        { class: "gp-form", id: "gp-form", hidden: true },
        name,
        people,
        h("label", { class: "gp-check" }, encrypted, "End-to-end encrypted"),
        h("button", { type: "submit", id: "gp-create" }, "Create group"),
        error,
    );
    const toggle = h("button", { type: "button", class: "secondary", id: "gp-new", "aria-expanded": "false", "aria-controls": "gp-form" }, "New group");
    toggle.addEventListener("click", () => {
        form.hidden = !form.hidden;
        toggle.setAttribute("aria-expanded", String(!form.hidden));
        if (!form.hidden) name.focus();
    });
    // Escape folds the form away and gives the focus back to its button.
    form.addEventListener("keydown", (e) => {
        if (e.key !== "Escape") return;
        form.hidden = true;
        toggle.setAttribute("aria-expanded", "false");
        toggle.focus();
    });
    onSubmit(form, error, async () => {
        if (!name.value.trim()) throw new Error("Give the group a name.");
        const invite = parseUserIds(people.value, client.getUserId());
        const roomId = await createGroup(client, name.value.trim(), invite, encrypted.checked);
        form.reset();
        form.hidden = true;
        toggle.setAttribute("aria-expanded", "false");
        opened(roomId);
    });
    return h("div", { class: "gp-new" }, toggle, form);
}

/** The open group's panel: rename, invite, leave. */
export function groupPanel(client: MatrixClient, room: Room, left: () => void): HTMLElement {
    const rename = h("input", { id: "gp-rename", name: "name", value: room.name, "aria-label": "Group name", required: true });
    const renameError = h("p", { class: "error", role: "alert" });
    const renameForm = h("form", { class: "gp-row" }, rename, h("button", { type: "submit", id: "gp-rename-save" }, "Rename"), renameError);
    onSubmit(renameForm, renameError, async () => {
        if (!rename.value.trim()) throw new Error("Give the group a name.");
        await client.setRoomName(room.roomId, rename.value.trim());
    });
    const invite = h("input", { id: "gp-invite", name: "user", placeholder: "@someone:server", autocapitalize: "none", "aria-label": "Invite (user id)" });
    const inviteError = h("p", { class: "error", role: "alert", id: "gp-invite-error" });
    const invited = h("p", { class: "gp-done", role: "status", id: "gp-invited" });
    const inviteForm = h(
        "form",
        { class: "gp-row" },
        invite,
        h("button", { type: "submit", id: "gp-invite-send" }, "Invite"),
        inviteError,
        invited,
    );
    onSubmit(inviteForm, inviteError, async () => {
        invited.textContent = "";
        const ids = parseUserIds(invite.value, client.getUserId());
        if (!ids.length) throw new Error("Enter a user id like @alice:example.org");
        for (const id of ids) await client.invite(room.roomId, id);
        invite.value = "";
        invited.textContent = `Invited ${ids.join(", ")}`;
    });
    const leave = h("button", { type: "button", class: "secondary", id: "gp-leave" }, "Leave group");
    const leaveError = h("p", { class: "error", role: "alert" });
    leave.addEventListener("click", () => {
        leave.disabled = true;
        client
            .leave(room.roomId)
            .then(left)
            .catch((err: unknown) => {
                leave.disabled = false;
                leaveError.textContent = errorText(err);
            });
    });
    // Only what my power level allows (the server would refuse the rest anyway).
    const me = client.getUserId() ?? "";
    return h(
        "div",
        { class: "gp-panel", id: "gp-panel", hidden: true },
        room.currentState.maySendStateEvent("m.room.name", me) ? renameForm : null,
        room.canInvite(me) ? inviteForm : null,
        h("div", { class: "gp-row" }, leave, leaveError),
    );
}

/** The "Group" button of the header that shows and hides `panel`. */
export function groupToggle(panel: HTMLElement): HTMLElement {
    const toggle = h("button", { type: "button", class: "secondary", id: "gp-manage", "aria-expanded": "false", "aria-controls": "gp-panel" }, "Group");
    toggle.addEventListener("click", () => {
        panel.hidden = !panel.hidden;
        toggle.setAttribute("aria-expanded", String(!panel.hidden));
    });
    return toggle;
}

/** A member's admin mark and, if I may, the button that removes them (member list). */
export function memberExtras(client: MatrixClient, room: Room, userId: string, name: string): Node[] {
    const role = roleOf(room, userId);
    const out: Node[] = role ? [h("span", { class: `gp-role gp-${role.toLowerCase()}`, title: `${role} of this chat` }, role)] : [];
    if (canRemove(client, room, userId)) {
        const remove = h("button", { type: "button", class: "secondary gp-remove", "aria-label": `Remove ${name}` }, "Remove");
        remove.addEventListener("click", () => {
            remove.disabled = true;
            client.kick(room.roomId, userId).catch(() => {
                remove.disabled = false;
                remove.textContent = "Could not remove";
            });
        });
        out.push(remove);
    }
    return out;
}
