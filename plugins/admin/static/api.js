// The admin API as the dashboard calls it: same origin, the admin's token from sessionStorage.

const TOKEN_KEY = "hs-admin-token";
const USER_KEY = "hs-admin-user";

export class ApiError extends Error {
    constructor(status, body) {
        super((body && body.error) || `HTTP ${status}`);
        this.status = status;
        this.errcode = body && body.errcode;
    }
}

export function session() {
    const token = sessionStorage.getItem(TOKEN_KEY);
    return token ? { token, userId: sessionStorage.getItem(USER_KEY) } : null;
}

export function forget() {
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(USER_KEY);
}

export async function request(method, path, body, token = session()?.token) {
    const headers = { Accept: "application/json" };
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    let parsed = null;
    try {
        parsed = text ? JSON.parse(text) : {};
    } catch {
        parsed = null;
    }
    if (!response.ok) throw new ApiError(response.status, parsed);
    return parsed;
}

/** Log in; keep the token only if the account is a server admin (a 403 otherwise). */
export async function login(user, password) {
    const answer = await request("POST", "/_matrix/client/v3/login", {
        type: "m.login.password",
        identifier: { type: "m.id.user", user },
        password,
        initial_device_display_name: "Admin dashboard",
    }, null);
    try {
        await request("GET", "/_synapse/admin/v1/server_version", undefined, answer.access_token);
    } catch (e) {
        // Not an admin: give the token back at once, keep nothing.
        await request("POST", "/_matrix/client/v3/logout", {}, answer.access_token).catch(() => {});
        throw e;
    }
    sessionStorage.setItem(TOKEN_KEY, answer.access_token);
    sessionStorage.setItem(USER_KEY, answer.user_id);
    return answer.user_id;
}

export async function logout() {
    await request("POST", "/_matrix/client/v3/logout", {}).catch(() => {});
    forget();
}

/** Download a file the admin API serves (a user's export zip) with the token. */
export async function download(path, filename) {
    const response = await fetch(path, { headers: { Authorization: `Bearer ${session()?.token}` } });
    if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
    const url = URL.createObjectURL(await response.blob());
    const a = document.createElement("a");
    a.href = url;
    a.download = filename;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

export const q = encodeURIComponent;
