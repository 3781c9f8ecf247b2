// The sign-up and login screens: one form each, switched by a link.

import { AuthError, logIn, signUp } from "../auth";
import { h, show } from "../dom";
import type { Session } from "../session";

export type AuthMode = "signup" | "login";

export function authScreen(root: Element, mode: AuthMode, baseUrl: string, done: (session: Session) => void): void {
    const signingUp = mode === "signup";
    const error = h("p", { class: "error", role: "alert", id: "auth-error" });
    const username = h("input", {
        id: "username",
        name: "username",
        autocomplete: "username",
        required: true,
        autocapitalize: "none",
        spellcheck: "false",
    });
    const password = h("input", {
        id: "password",
        name: "password",
        type: "password",
        autocomplete: signingUp ? "new-password" : "current-password",
        required: true,
        minlength: signingUp ? 8 : null,
    });
    const submit = h("button", { type: "submit" }, signingUp ? "Sign up" : "Log in");
    const form = h(
        "form",
        { class: "card", "aria-labelledby": "auth-title" },
        h("h1", { id: "auth-title" }, signingUp ? "Create your account" : "Log in"),
        h("label", { for: "username" }, "Username"),
        username,
        h("label", { for: "password" }, "Password"),
        password,
        error,
        submit,
        h(
            "p",
            {},
            signingUp ? "Already have an account? " : "New here? ",
            h(
                "a",
                {
                    href: signingUp ? "/login" : "/signup",
                    onclick: (e: Event) => {
                        e.preventDefault();
                        history.pushState(null, "", signingUp ? "/login" : "/signup");
                        authScreen(root, signingUp ? "login" : "signup", baseUrl, done);
                    },
                },
                signingUp ? "Log in" : "Sign up",
            ),
        ),
    );
    form.addEventListener("submit", (e) => {
        e.preventDefault();
        submit.disabled = true;
        error.textContent = "";
        const attempt = signingUp ? signUp : logIn;
        attempt(baseUrl, username.value.trim(), password.value)
            .then(done)
            .catch((e: unknown) => {
                error.textContent = e instanceof AuthError ? e.message : "Something went wrong. Please try again.";
                submit.disabled = false;
            });
    });
    show(root, form);
    username.focus();
}
