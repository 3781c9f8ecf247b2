// JSON requests to the Client-Server API before a matrix-js-sdk client exists (sign-up,
// login, password reset): what the answer was, and the server's words for an error.

export const CLIENT = "/_matrix/client/v3";

export class AuthError extends Error {}

export interface Answer {
    status: number;
    json: Record<string, unknown>;
}

/** POST `body` to `url` (a full URL, or a path under the Client-Server API of `baseUrl`). */
export async function postJson(baseUrl: string, path: string, body: unknown): Promise<Answer> {
    const url = /^https?:\/\//.test(path) ? path : `${baseUrl}${CLIENT}${path}`;
    let response: Response;
    try {
        response = await fetch(url, {
            method: "POST",
            headers: { "Content-Type": "application/json" },
            body: JSON.stringify(body),
        });
    } catch {
        throw new AuthError("Cannot reach the server. Check your connection and try again.");
    }
    const json: unknown = await response.json().catch(() => ({}));
    return { status: response.status, json: json !== null && typeof json === "object" ? (json as Record<string, unknown>) : {} };
}

export function errorText(json: Record<string, unknown>, fallback: string): string {
    const error = json.error;
    return typeof error === "string" && error ? error : fallback;
}
