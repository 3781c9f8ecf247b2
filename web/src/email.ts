// Proving an email address to the homeserver (spec: "Adding Account Administrative
// Contact Information", requestToken): the server mails a link and a short code; opening
// the link (or typing the code here) validates the session `sid`, which the client then
// hands to user-interactive auth as `m.login.email.identity` with these credentials.

import { AuthError, errorText, postJson } from "./http";

export const EMAIL_STAGE = "m.login.email.identity";

export interface ThreepidCreds {
    sid: string;
    client_secret: string;
}

function randomSecret(): string {
    const bytes = crypto.getRandomValues(new Uint8Array(24));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export class EmailProof {
    /** What the mail was sent to, once it was. */
    address = "";
    private readonly clientSecret = randomSecret();
    private sendAttempt = 0;
    private sid = "";
    private submitUrl = "";

    /** `purpose`: the requestToken path, `/register/...` or `/account/password/...`. */
    constructor(
        private readonly baseUrl: string,
        private readonly requestPath: "/register/email/requestToken" | "/account/password/email/requestToken",
    ) {}

    /** Mail the link and the code to `address` (again, for "send again": a new attempt). */
    async send(address: string): Promise<void> {
        this.sendAttempt += 1;
        const answer = await postJson(this.baseUrl, this.requestPath, {
            email: address,
            client_secret: this.clientSecret,
            send_attempt: this.sendAttempt,
        });
        if (answer.status !== 200 || typeof answer.json.sid !== "string") {
            throw new AuthError(errorText(answer.json, `Could not send the mail (${answer.status}).`));
        }
        this.address = address;
        this.sid = answer.json.sid;
        this.submitUrl = typeof answer.json.submit_url === "string" ? answer.json.submit_url : "";
    }

    /** The code from the mail, instead of opening its link. */
    async submitCode(code: string): Promise<void> {
        if (!this.submitUrl) throw new AuthError("This server takes only the link: open it from the mail.");
        const answer = await postJson(this.baseUrl, this.submitUrl, {
            sid: this.sid,
            client_secret: this.clientSecret,
            token: code,
        });
        if (answer.status !== 200) throw new AuthError(errorText(answer.json, "That code did not work."));
    }

    get creds(): ThreepidCreds {
        return { sid: this.sid, client_secret: this.clientSecret };
    }
}
