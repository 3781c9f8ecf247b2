// The admin dashboard: log-in, then four views over the admin API (metrics, users, rooms,
// reports), routed by the URL's hash. Every text from the server goes in as text, never as HTML.

import { ApiError, download, forget, login, logout, q, request, session } from "./api.js";
import { barChart, formatBytes } from "./charts.js";

const V1 = "/_synapse/admin/v1";
const V2 = "/_synapse/admin/v2";
const PLUGIN = "/_plugins/admin";

const $ = (id) => document.getElementById(id);

/** Build an element: h("td", {class: "x"}, "text", childNode, ...). */
function h(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
        if (v === undefined || v === null || v === false) continue;
        if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
        else if (k === "dataset") Object.assign(node.dataset, v);
        else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const child of children.flat()) {
        if (child === null || child === undefined) continue;
        node.append(child instanceof Node ? child : String(child));
    }
    return node;
}

function when(ms) {
    return ms ? new Date(ms).toISOString().replace("T", " ").slice(0, 19) + " UTC" : "never";
}

function show(...nodes) {
    $("status").textContent = "";
    $("view").replaceChildren(...nodes);
}

function fail(error) {
    if (error instanceof ApiError && error.status === 401) {
        forget();
        route();
        return;
    }
    $("status").textContent = `Error: ${error.message}`;
}

function details(pairs) {
    return h("dl", {}, pairs.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v ?? "")]));
}

function table(headers, rows) {
    return h("table", {}, h("thead", {}, h("tr", {}, headers.map((t) => h("th", {}, t)))), h("tbody", {}, rows));
}

// Metrics ------------------------------------------------------------------------------

async function metricsView() {
    const m = await request("GET", `${PLUGIN}/metrics/daily?days=30`);
    const card = (id, label, value) =>
        h("div", { class: "card", id }, h("div", { class: "value" }, value), h("div", { class: "label" }, label));
    const sum = (key) => m.days.reduce((s, d) => s + d[key], 0);
    const series = (key) => m.days.map((d) => ({ label: d.date, value: d[key] }));
    const connections = m.connections.websocket_streams + m.connections.long_polls;
    show(
        h("h2", {}, "Metrics (last 30 days, UTC)"),
        h(
            "div",
            { class: "cards" },
            card("m-accounts", "accounts", m.accounts),
            card("m-dau", "daily active users", m.daily_active_users),
            card("m-mau", "monthly active users", m.monthly_active_users),
            card("m-signups", "sign-ups, 30 days", sum("signups")),
            card("m-messages", "messages, 30 days", sum("messages")),
            card("m-calls", "calls, 30 days", sum("calls")),
            card("m-media", "media stored", m.media ? formatBytes(m.media.bytes) : "no media plugin"),
            card("m-connections", "open connections (WebSocket + /sync)", connections),
        ),
        h(
            "div",
            { class: "charts" },
            barChart("Sign-ups per day", series("signups")),
            barChart("Active users per day", series("active_users")),
            barChart("Messages per day", series("messages")),
            barChart("Calls per day", series("calls")),
        ),
    );
    $("m-media").dataset.bytes = String(m.media ? m.media.bytes : 0);
}

// Users --------------------------------------------------------------------------------

async function usersView(search = "") {
    const params = `from=0&limit=100&deactivated=true&locked=true${search ? `&name=${q(search)}` : ""}`;
    const page = await request("GET", `${V2}/users?${params}`);
    const input = h("input", { id: "user-search", type: "search", placeholder: "user id or name", value: search });
    const go = () => usersView(input.value.trim()).catch(fail);
    input.addEventListener("keydown", (e) => e.key === "Enter" && go());
    const flags = (u) =>
        [u.admin ? "admin" : "", u.deactivated ? "deactivated" : "", u.locked ? "locked" : "", u.suspended ? "suspended" : ""]
            .filter(Boolean)
            .join(", ");
    show(
        h("h2", {}, `Users (${page.total})`),
        h("div", { class: "toolbar" }, input, h("button", { id: "user-search-go", type: "button", onclick: go }, "Search")),
        table(
            ["user", "display name", "created", "status"],
            page.users.map((u) =>
                h(
                    "tr",
                    { dataset: { user: u.name } },
                    h("td", {}, h("a", { href: `#/users/${q(u.name)}` }, u.name)),
                    h("td", {}, u.displayname ?? ""),
                    h("td", {}, when(u.creation_ts * 1000)),
                    h("td", { class: "flags" }, flags(u)),
                ),
            ),
        ),
    );
}

async function userView(userId) {
    const base = `${V2}/users/${q(userId)}`;
    const [u, rooms, exports] = await Promise.all([
        request("GET", base),
        request("GET", `${V1}/users/${q(userId)}/joined_rooms`),
        request("GET", `${PLUGIN}/users/${q(userId)}/exports`),
    ]);
    const act = (label, fn, cls = "") =>
        h("button", {
            type: "button",
            class: cls,
            id: `act-${label.toLowerCase().replace(/\W+/g, "-")}`,
            onclick: async () => {
                try {
                    await fn();
                    await userView(userId);
                } catch (e) {
                    fail(e);
                }
            },
        }, label);
    const password = h("input", { id: "new-password", type: "password", placeholder: "new password", autocomplete: "new-password" });
    const actions = [];
    if (!u.deactivated) {
        actions.push(
            act("Deactivate", async () => {
                if (confirm(`Deactivate ${userId}? They are logged out everywhere and cannot log in again.`))
                    await request("POST", `${V1}/deactivate/${q(userId)}`, { erase: false });
            }, "danger"),
            act(u.locked ? "Unlock" : "Lock", () => request("PUT", base, { locked: !u.locked })),
            act(u.suspended ? "Unsuspend" : "Suspend", () =>
                request("PUT", `${V1}/suspend/${q(userId)}`, { suspend: !u.suspended }),
            ),
            password,
            act("Reset password", async () => {
                if (!password.value) throw new Error("type the new password first");
                await request("POST", `${V1}/reset_password/${q(userId)}`, {
                    new_password: password.value,
                    logout_devices: true,
                });
            }),
        );
    }
    actions.push(act("Export data", () => request("POST", `${PLUGIN}/users/${q(userId)}/export`)));
    show(
        h("h2", {}, u.name),
        details([
            ["display name", u.displayname],
            ["created", when(u.creation_ts * 1000)],
            ["last seen", when(u.last_seen_ts)],
            ["admin", u.admin ? "yes" : "no"],
            ["deactivated", h("span", { id: "user-deactivated" }, u.deactivated ? "yes" : "no")],
            ["locked", u.locked ? "yes" : "no"],
            ["suspended", u.suspended ? "yes" : "no"],
            ["email", (u.threepids || []).map((t) => t.address).join(", ")],
            ["rooms", rooms.joined_rooms.length],
        ]),
        h("div", { class: "actions" }, actions),
        h("h3", {}, "Data exports"),
        exports.exports.length === 0
            ? h("p", { class: "notice" }, "None yet.")
            : table(
                  ["started", "state", "progress", ""],
                  exports.exports.map((x) =>
                      h(
                          "tr",
                          {},
                          h("td", {}, when(x.created_ts)),
                          h("td", {}, x.state),
                          h("td", {}, `${x.progress.done} / ${x.progress.total}`),
                          h("td", {}, x.download
                              ? h("button", {
                                    type: "button",
                                    class: "plain",
                                    onclick: () => download(x.download, `export-${x.export_id}.zip`).catch(fail),
                                }, `Download (${formatBytes(x.size)})`)
                              : ""),
                      ),
                  ),
              ),
        h("p", {}, h("a", { href: "#/users" }, "← all users")),
    );
}

// Rooms --------------------------------------------------------------------------------

async function roomsView(search = "") {
    const page = await request("GET", `${V1}/rooms?from=0&limit=100${search ? `&search_term=${q(search)}` : ""}`);
    const input = h("input", { id: "room-search", type: "search", placeholder: "name, alias or id", value: search });
    const go = () => roomsView(input.value.trim()).catch(fail);
    input.addEventListener("keydown", (e) => e.key === "Enter" && go());
    show(
        h("h2", {}, `Rooms (${page.total_rooms})`),
        h("div", { class: "toolbar" }, input, h("button", { type: "button", onclick: go }, "Search")),
        table(
            ["room", "alias", "members", "encrypted", "public"],
            page.rooms.map((r) =>
                h(
                    "tr",
                    { dataset: { room: r.room_id } },
                    h("td", {}, h("a", { href: `#/rooms/${q(r.room_id)}` }, r.name || r.room_id)),
                    h("td", {}, r.canonical_alias ?? ""),
                    h("td", {}, r.joined_members),
                    h("td", {}, r.encryption ? "yes" : "no"),
                    h("td", {}, r.public ? "yes" : "no"),
                ),
            ),
        ),
    );
}

async function roomView(roomId) {
    const [r, members] = await Promise.all([
        request("GET", `${V1}/rooms/${q(roomId)}`),
        request("GET", `${V1}/rooms/${q(roomId)}/members`),
    ]);
    const block = h("input", { id: "delete-block", type: "checkbox" });
    const purge = h("input", { id: "delete-purge", type: "checkbox", checked: true });
    const remove = async () => {
        if (!confirm(`Delete ${roomId}? Every member leaves.`)) return;
        try {
            await request("DELETE", `${V2}/rooms/${q(roomId)}`, { block: block.checked, purge: purge.checked });
            location.hash = "#/rooms";
        } catch (e) {
            fail(e);
        }
    };
    show(
        h("h2", {}, r.name || r.room_id),
        details([
            ["id", r.room_id],
            ["alias", r.canonical_alias],
            ["topic", r.topic],
            ["creator", r.creator],
            ["version", r.version],
            ["encryption", r.encryption ?? "none"],
            ["join rule", r.join_rules],
            ["members", members.members.join(", ")],
        ]),
        h(
            "div",
            { class: "actions" },
            h("label", {}, block, " block (nobody may join again)"),
            h("label", {}, purge, " purge (delete its messages)"),
            h("button", { type: "button", class: "danger", id: "act-delete-room", onclick: remove }, "Delete room"),
        ),
        h("p", {}, h("a", { href: "#/rooms" }, "← all rooms")),
    );
}

// Reports ------------------------------------------------------------------------------

async function reportsView() {
    const page = await request("GET", `${V1}/event_reports?from=0&limit=100`);
    show(
        h("h2", {}, `Reports (${page.total})`),
        page.event_reports.length === 0
            ? h("p", { class: "notice", id: "no-reports" }, "No open reports.")
            : table(
                  ["received", "reported by", "sender", "room", "reason"],
                  page.event_reports.map((r) =>
                      h(
                          "tr",
                          { dataset: { report: r.id } },
                          h("td", {}, h("a", { href: `#/reports/${r.id}` }, when(r.received_ts))),
                          h("td", {}, r.user_id),
                          h("td", {}, r.sender ?? ""),
                          h("td", {}, r.name || r.room_id || ""),
                          h("td", {}, r.reason ?? ""),
                      ),
                  ),
              ),
    );
}

async function reportView(id) {
    const r = await request("GET", `${V1}/event_reports/${q(id)}`);
    const dismiss = async () => {
        try {
            await request("DELETE", `${V1}/event_reports/${q(id)}`);
            location.hash = "#/reports";
        } catch (e) {
            fail(e);
        }
    };
    show(
        h("h2", {}, `Report ${r.id}`),
        details([
            ["received", when(r.received_ts)],
            ["reported by", r.user_id],
            ["reason", r.reason],
            ["score", r.score],
            ["room", r.name || r.room_id],
            ["event", r.event_id],
            ["sender", r.sender],
        ]),
        h("h3", {}, "The reported event"),
        h("pre", { id: "report-event" }, JSON.stringify(r.event_json, null, 2)),
        h(
            "div",
            { class: "actions" },
            h("button", { type: "button", id: "act-dismiss", onclick: dismiss }, "Dismiss"),
            r.sender ? h("a", { href: `#/users/${q(r.sender)}` }, `open ${r.sender}`) : null,
        ),
        h("p", {}, h("a", { href: "#/reports" }, "← all reports")),
    );
}

// Routing ------------------------------------------------------------------------------

const ROUTES = [
    [/^#\/users\/(.+)$/, (m) => userView(decodeURIComponent(m[1]))],
    [/^#\/users$/, () => usersView()],
    [/^#\/rooms\/(.+)$/, (m) => roomView(decodeURIComponent(m[1]))],
    [/^#\/rooms$/, () => roomsView()],
    [/^#\/reports\/(\d+)$/, (m) => reportView(m[1])],
    [/^#\/reports$/, () => reportsView()],
    [/^#\/metrics$/, () => metricsView()],
];

async function route() {
    const signedIn = session();
    $("login").hidden = !!signedIn;
    $("nav").hidden = !signedIn;
    $("view").hidden = !signedIn;
    if (!signedIn) return;
    $("who").textContent = signedIn.userId;
    const hash = location.hash || "#/metrics";
    for (const a of document.querySelectorAll("nav a")) {
        a.classList.toggle("current", hash.startsWith(a.getAttribute("href")));
    }
    const found = ROUTES.find(([pattern]) => pattern.test(hash));
    const view = found ? found[1](hash.match(found[0])) : metricsView();
    document.body.dataset.loading = "1";
    try {
        await view;
    } catch (e) {
        fail(e);
    } finally {
        delete document.body.dataset.loading;
    }
}

$("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    $("login-error").textContent = "";
    try {
        await login($("login-user").value.trim(), $("login-password").value);
        $("login-password").value = "";
        if (location.hash === "#/metrics") await route();
        else location.hash = "#/metrics"; // the hashchange renders it
    } catch (e) {
        $("login-error").textContent =
            e instanceof ApiError && e.status === 403
                ? "This account is not a server admin: the dashboard is for server admins only."
                : `Could not log in: ${e.message}`;
    }
});

$("logout").addEventListener("click", async () => {
    await logout();
    route();
});

window.addEventListener("hashchange", route);
route();
