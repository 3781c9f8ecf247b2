// Sign-up, login and password reset against the Matrix Client-Server API, before any
// client exists.
//
// Sign-up follows the server's user-interactive auth (UIA): the first POST /register
// answers 401 with the flows it accepts; the client picks one made only of stages it can
// complete (m.login.dummy, and m.login.email.identity through a mailed link) and
// completes them in order.

import { EMAIL_STAGE, EmailProof } from "./email";
import { AuthError, type Answer, errorText, postJson } from "./http";
import type { Session } from "./session";

export { AuthError } from "./http";

const DEVICE_NAME = "Web client";
const SUPPORTED_STAGES = new Set(["m.login.dummy", EMAIL_STAGE]);

interface LoginAnswer {
    user_id: string;
    device_id: string;
    access_token: string;
}

function toSession(baseUrl: string, answer: LoginAnswer): Session {
    return { baseUrl, userId: answer.user_id, deviceId: answer.device_id, accessToken: answer.access_token };
}

function stringList(value: unknown): string[] {
    return Array.isArray(value) ? value.filter((v): v is string => typeof v === "string") : [];
}

/** One sign-up: `start()`, then, if it needs one, the email step (`email`), then `finish()`. */
export class SignUp {
    /** Set when the server asks for a verified address: send it, then `finish()`. */
    email: EmailProof | null = null;
    private stages: string[] = [];
    private session: string | undefined;
    private completed: string[] = [];

    constructor(
        private readonly baseUrl: string,
        private readonly username: string,
        private readonly password: string,
    ) {}

    private request(auth?: Record<string, unknown>): Promise<Answer> {
        return postJson(this.baseUrl, "/register", {
            username: this.username,
            password: this.password,
            initial_device_display_name: DEVICE_NAME,
            ...(auth ? { auth: { ...auth, session: this.session } } : {}),
        });
    }

    /** Learn the flows; a Session when none needs email (plain sign-up), else null. */
    async start(): Promise<Session | null> {
        const answer = await this.request();
        if (answer.status !== 401) throw new AuthError(errorText(answer.json, `Sign-up failed (${answer.status}).`));
        const flows = Array.isArray(answer.json.flows) ? (answer.json.flows as { stages?: unknown }[]) : [];
        const usable = flows
            .map((f) => stringList(f.stages))
            .filter((stages) => stages.every((stage) => SUPPORTED_STAGES.has(stage)));
        // Prefer a flow without email if the server offers one.
        const flow = usable.find((stages) => !stages.includes(EMAIL_STAGE)) ?? usable[0];
        if (!flow) throw new AuthError("This server asks for something at sign-up that this client cannot do yet.");
        this.stages = flow;
        this.session = typeof answer.json.session === "string" ? answer.json.session : undefined;
        if (flow.includes(EMAIL_STAGE)) {
            this.email = new EmailProof(this.baseUrl, "/register/email/requestToken");
            return null;
        }
        return this.finish();
    }

    /** Complete the flow's remaining stages (the email one once its link was opened). */
    async finish(): Promise<Session> {
        let answer: Answer | null = null;
        for (const stage of this.stages.filter((s) => !this.completed.includes(s))) {
            const auth: Record<string, unknown> = { type: stage };
            if (stage === EMAIL_STAGE && this.email) auth.threepid_creds = this.email.creds;
            answer = await this.request(auth);
            if (answer.status === 200) return toSession(this.baseUrl, answer.json as unknown as LoginAnswer);
            if (answer.status !== 401 || typeof answer.json.errcode === "string") break;
            this.completed = stringList(answer.json.completed);
        }
        const json = answer?.json ?? {};
        if (json.errcode === "M_THREEPID_AUTH_FAILED") {
            throw new AuthError(`${errorText(json, "Your email address is not confirmed yet.")}`);
        }
        throw new AuthError(errorText(json, `Sign-up failed (${answer?.status ?? "no answer"}).`));
    }
}

export async function logIn(baseUrl: string, username: string, password: string): Promise<Session> {
    const answer = await postJson(baseUrl, "/login", {
        type: "m.login.password",
        identifier: { type: "m.id.user", user: username },
        password,
        initial_device_display_name: DEVICE_NAME,
    });
    if (answer.status !== 200) {
        throw new AuthError(errorText(answer.json, `Login failed (${answer.status}).`));
    }
    return toSession(baseUrl, answer.json as unknown as LoginAnswer);
}

/** A forgotten password: the mailed link proved the address; every device is logged out. */
export async function resetPassword(baseUrl: string, proof: EmailProof, newPassword: string): Promise<void> {
    const answer = await postJson(baseUrl, "/account/password", {
        new_password: newPassword,
        logout_devices: true,
        auth: { type: EMAIL_STAGE, threepid_creds: proof.creds },
    });
    if (answer.status !== 200) {
        throw new AuthError(errorText(answer.json, `Could not change the password (${answer.status}).`));
    }
}
