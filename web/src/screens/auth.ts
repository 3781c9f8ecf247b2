// The sign-up, login and forgotten-password screens: one form each, switched by links.
// Sign-up asks for an email address when the server wants a verified one, then waits for
// the mailed link; a forgotten password is reset through the same kind of mail.

import { AuthError, logIn, resetPassword, SignUp } from "../auth";
import { h, show } from "../dom";
import { EmailProof } from "../email";
import type { Session } from "../session";
import { mailCheck } from "./mail_check";

export type AuthMode = "signup" | "login" | "reset";

const PATHS: Record<AuthMode, string> = { signup: "/signup", login: "/login", reset: "/reset" };
const FALLBACK = "Something went wrong. Please try again.";

/** What the encryption set-up needs from the form: whether it was a sign-up, and the
 * password (the server asks for it again to upload the cross-signing keys). */
export interface Entered {
    mode: AuthMode;
    password: string;
}

type Done = (session: Session, entered: Entered) => void;

function messageOf(e: unknown): string {
    return e instanceof AuthError ? e.message : FALLBACK;
}

function field(id: string, label: string, attrs: Record<string, string | number | boolean | null>): HTMLElement[] {
    return [h("label", { for: id }, label), h("input", { id, name: id, required: true, ...attrs })];
}

function input(form: HTMLElement, id: string): HTMLInputElement {
    return form.querySelector(`#${id}`) as HTMLInputElement;
}

/** A link to another auth screen, without reloading the page. */
function switchTo(root: Element, mode: AuthMode, baseUrl: string, done: Done, text: string, id: string): HTMLElement {
    return h(
        "a",
        {
            href: PATHS[mode],
            id,
            onclick: (e: Event) => {
                e.preventDefault();
                history.pushState(null, "", PATHS[mode]);
                authScreen(root, mode, baseUrl, done);
            },
        },
        text,
    );
}

/** A form card whose submit runs `action` with the button disabled and errors shown. */
function card(title: string, children: (Node | string)[], submitText: string, action: () => Promise<void>): HTMLFormElement {
    const error = h("p", { class: "error", role: "alert", id: "auth-error" });
    const submit = h("button", { type: "submit", id: "auth-submit" }, submitText);
    const form = h(
        "form",
        { class: "card", "aria-labelledby": "auth-title" },
        h("h1", { id: "auth-title" }, title),
        ...children,
        error,
        submit,
    );
    form.addEventListener("submit", (e) => {
        e.preventDefault();
        submit.disabled = true;
        error.textContent = "";
        action()
            .catch((err: unknown) => {
                error.textContent = messageOf(err);
            })
            .finally(() => {
                submit.disabled = false;
            });
    });
    return form;
}

/** A line under the form's error: a confirmation, or an error in the error's place. */
function reporter(form: HTMLElement): (text: string, isError: boolean) => void {
    const error = form.querySelector("#auth-error") as HTMLElement;
    const note = h("p", { class: "note", role: "status", id: "auth-note" });
    error.before(note);
    return (text, isError) => {
        error.textContent = isError ? text : "";
        note.textContent = isError ? "" : text;
    };
}

export function authScreen(root: Element, mode: AuthMode, baseUrl: string, done: Done, notice = ""): void {
    if (mode === "reset") return resetScreen(root, baseUrl, done);
    const signingUp = mode === "signup";
    const form = card(
        signingUp ? "Create your account" : "Log in",
        [
            ...(notice ? [h("p", { class: "note", role: "status", id: "auth-notice" }, notice)] : []),
            ...field("username", "Username", { autocomplete: "username", autocapitalize: "none", spellcheck: "false" }),
            ...field("password", "Password", {
                type: "password",
                autocomplete: signingUp ? "new-password" : "current-password",
                minlength: signingUp ? 8 : null,
            }),
        ],
        signingUp ? "Sign up" : "Log in",
        async () => {
            const username = input(form, "username").value.trim();
            const password = input(form, "password").value;
            if (!signingUp) return done(await logIn(baseUrl, username, password), { mode, password });
            const signUp = new SignUp(baseUrl, username, password);
            const session = await signUp.start();
            if (session) done(session, { mode, password });
            else emailSignUpScreen(root, signUp, password, done);
        },
    );
    form.append(
        h(
            "p",
            {},
            signingUp ? "Already have an account? " : "New here? ",
            switchTo(root, signingUp ? "login" : "signup", baseUrl, done, signingUp ? "Log in" : "Sign up", "switch-auth"),
        ),
    );
    if (!signingUp) form.append(h("p", {}, switchTo(root, "reset", baseUrl, done, "Forgot your password?", "forgot")));
    show(root, form);
    input(form, "username").focus();
}

/** Sign-up, second step: the address to verify, then the mailed link. */
function emailSignUpScreen(root: Element, signUp: SignUp, password: string, done: Done): void {
    const proof = signUp.email as EmailProof;
    const form = card(
        "Confirm your email",
        [
            h("p", {}, "This server asks for an email address at sign-up. We will send you a link to confirm it."),
            ...field("email", "Email address", { type: "email", autocomplete: "email" }),
        ],
        "Send the link",
        async () => {
            await proof.send(input(form, "email").value.trim());
            const check = card("Check your mail", [], "I opened the link: continue", async () => {
                done(await signUp.finish(), { mode: "signup", password });
            });
            check.querySelector("#auth-error")?.before(mailCheck(proof, reporter(check)));
            show(root, check);
        },
    );
    show(root, form);
    input(form, "email").focus();
}

/** A forgotten password: the address, the mailed link, then the new password. */
function resetScreen(root: Element, baseUrl: string, done: Done): void {
    const proof = new EmailProof(baseUrl, "/account/password/email/requestToken");
    const form = card(
        "Reset your password",
        [
            h("p", {}, "Enter the email address of your account. We will send you a link to reset its password."),
            ...field("email", "Email address", { type: "email", autocomplete: "email" }),
        ],
        "Send the link",
        async () => {
            await proof.send(input(form, "email").value.trim());
            const next = card(
                "Choose a new password",
                field("new-password", "New password", { type: "password", autocomplete: "new-password", minlength: 8 }),
                "Set the new password",
                async () => {
                    await resetPassword(baseUrl, proof, input(next, "new-password").value);
                    history.pushState(null, "", PATHS.login);
                    authScreen(root, "login", baseUrl, done, "Your password has been changed, and every device logged out. Log in with the new one.");
                },
            );
            next.querySelector("h1")?.after(mailCheck(proof, reporter(next)));
            show(root, next);
            input(next, "new-password").focus();
        },
    );
    form.append(h("p", {}, switchTo(root, "login", baseUrl, done, "Back to log in", "switch-auth")));
    show(root, form);
    input(form, "email").focus();
}
