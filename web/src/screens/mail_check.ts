// The "check your mail" part of email sign-up and password reset: where the mail went,
// the code from the mail as an alternative to its link, and sending it again.

import type { EmailProof } from "../email";
import { AuthError } from "../http";
import { h } from "../dom";

/** A block to put in a form; `report` shows an error or a confirmation (empty clears). */
export function mailCheck(proof: EmailProof, report: (text: string, isError: boolean) => void): HTMLElement {
    const code = h("input", {
        id: "mail-code",
        name: "code",
        inputmode: "numeric",
        autocomplete: "one-time-code",
        maxlength: 6,
        "aria-label": "Code from the mail",
        placeholder: "123456",
    });
    const useCode = h("button", { type: "button", id: "use-code", class: "secondary" }, "Use code");
    const again = h("button", { type: "button", id: "send-again", class: "secondary" }, "Send the mail again");
    const failed = (e: unknown): void =>
        report(e instanceof AuthError ? e.message : "Something went wrong. Please try again.", true);
    useCode.addEventListener("click", () => {
        useCode.disabled = true;
        report("", false);
        proof
            .submitCode(code.value.trim())
            .then(() => report("Your email address is confirmed.", false))
            .catch(failed)
            .finally(() => {
                useCode.disabled = false;
            });
    });
    again.addEventListener("click", () => {
        again.disabled = true;
        report("", false);
        proof
            .send(proof.address)
            .then(() => report(`A new mail is on its way to ${proof.address}: use the link or code in that one.`, false))
            .catch(failed)
            .finally(() => {
                again.disabled = false;
            });
    });
    return h(
        "div",
        { class: "mail-check" },
        h(
            "p",
            { id: "mail-sent" },
            "We sent a mail to ",
            h("strong", {}, proof.address),
            ". Open the link in it, then come back here.",
        ),
        h("p", { class: "hint" }, "Or type the code from the mail:"),
        h("div", { class: "row" }, code, useCode),
        again,
    );
}
