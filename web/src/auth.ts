// Sign-up and login against the Matrix Client-Server API, before any client exists.
//
// Sign-up follows the server's user-interactive auth (UIA): the first POST /register
// answers 401 with the flows it accepts; the client picks one made only of stages it can
// complete and completes them in order. This slice completes m.login.dummy (plain
// sign-up); email verification (m.login.email.identity) comes later.

import type { Session } from "./session";

const CLIENT = "/_matrix/client/v3";
const DEVICE_NAME = "Web client";
const SUPPORTED_STAGES = new Set(["m.login.dummy"]);

export class AuthError extends Error {}

interface UiaState {
    flows?: { stages?: string[] }[];
    session?: string;
    completed?: string[];
    error?: string;
}

interface LoginAnswer {
    user_id: string;
    device_id: string;
    access_token: string;
}

async function post(baseUrl: string, path: string, body: unknown): Promise<{ status: number; json: unknown }> {
    let response: Response;
    try {
        response = await fetch(`${baseUrl}${CLIENT}${path}`, {
            method: "POST",
            headers: { "Content-Type": "application/json" },
            body: JSON.stringify(body),
        });
    } catch {
        throw new AuthError("Cannot reach the server. Check your connection and try again.");
    }
    const json: unknown = await response.json().catch(() => ({}));
    return { status: response.status, json };
}

function errorText(json: unknown, fallback: string): string {
    const error = (json as { error?: unknown }).error;
    return typeof error === "string" && error ? error : fallback;
}

function toSession(baseUrl: string, answer: LoginAnswer): Session {
    return { baseUrl, userId: answer.user_id, deviceId: answer.device_id, accessToken: answer.access_token };
}

export async function signUp(baseUrl: string, username: string, password: string): Promise<Session> {
    const request = { username, password, initial_device_display_name: DEVICE_NAME };
    let answer = await post(baseUrl, "/register", request);
    if (answer.status !== 401) {
        throw new AuthError(errorText(answer.json, `Sign-up failed (${answer.status}).`));
    }
    const uia = answer.json as UiaState;
    const flow = uia.flows?.find((f) => (f.stages ?? []).every((stage) => SUPPORTED_STAGES.has(stage)));
    if (!flow) {
        throw new AuthError("This server asks for a verified email address at sign-up, which this client cannot do yet.");
    }
    for (const stage of flow.stages ?? []) {
        answer = await post(baseUrl, "/register", { ...request, auth: { type: stage, session: uia.session } });
        if (answer.status === 200) return toSession(baseUrl, answer.json as LoginAnswer);
        if (answer.status !== 401) break;
    }
    throw new AuthError(errorText(answer.json, `Sign-up failed (${answer.status}).`));
}

export async function logIn(baseUrl: string, username: string, password: string): Promise<Session> {
    const answer = await post(baseUrl, "/login", {
        type: "m.login.password",
        identifier: { type: "m.id.user", user: username },
        password,
        initial_device_display_name: DEVICE_NAME,
    });
    if (answer.status !== 200) {
        throw new AuthError(errorText(answer.json, `Login failed (${answer.status}).`));
    }
    return toSession(baseUrl, answer.json as LoginAnswer);
}
