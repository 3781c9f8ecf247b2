// The signed-in session, kept in localStorage so a reload stays signed in. The crypto
// keys are not here: the Rust crypto keeps them in IndexedDB (see client.ts).

export interface Session {
    baseUrl: string;
    userId: string;
    deviceId: string;
    accessToken: string;
}

const KEY = "hs.session";

export function loadSession(): Session | null {
    const raw = localStorage.getItem(KEY);
    if (!raw) return null;
    try {
        const s = JSON.parse(raw) as Partial<Session>;
        if (s.baseUrl && s.userId && s.deviceId && s.accessToken) {
            return { baseUrl: s.baseUrl, userId: s.userId, deviceId: s.deviceId, accessToken: s.accessToken };
        }
    } catch {
        // A damaged entry: fall through to signing in again.
    }
    localStorage.removeItem(KEY);
    return null;
}

export function saveSession(session: Session): void {
    localStorage.setItem(KEY, JSON.stringify(session));
}

export function clearSession(): void {
    localStorage.removeItem(KEY);
}
