"""Accounts in the web client (docs/web-client.md), in Chromium (tests/browser/web_accounts.mjs)
against a server that requires a verified email at sign-up and mails through a real SMTP
sink in this process (tests/mail_sink.py); the test hands the script each mail's link.

One person, two browser contexts as two devices: email sign-up through the mailed link,
login on a second device, the device list with rename and remote logout (the other device
lands on its login page at once), and a password reset by mail from the login page (the
mail sent again, its code typed in).

Not in the fast tier (it starts a server and a browser); it takes about 20 s.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import built_web_client, run_asking_browser_script
from conftest import ServerProcess
from mail_sink import MailSink

PASSWORD = "correct horse battery"
NEW_PASSWORD = "a brand new horse battery"
DOCS_SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
# The sink's settings must win over any SMTP host in the environment.
NO_SMTP_ENV = {"HOMESERVER_SMTP_HOST": "", "HOMESERVER_SMTP_USERNAME": "", "HOMESERVER_SMTP_PASSWORD": ""}


@pytest.fixture
def mail_sink() -> Iterator[MailSink]:
    sink = MailSink().start()
    yield sink
    sink.stop()


def test_email_sign_up_devices_and_password_reset_in_the_web_client(
    start_server: Any, mail_sink: MailSink, tmp_path: Path
) -> None:
    dist = built_web_client()
    server: ServerProcess = start_server(
        {
            "web_client": {"enabled": True, "path": str(dist)},
            "email": {"smtp": mail_sink.smtp_config},
            "registration": {"require_email_verification": True},
        },
        env=NO_SMTP_ENV,
    )
    username = f"dana{secrets.token_hex(3)}"
    address = f"{username}@example.org"
    shots = DOCS_SCREENSHOTS if os.environ.get("HS_UPDATE_SCREENSHOTS") else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    subjects: list[str] = []

    def answer(question: str) -> str:
        kind, to, count = question.split(" ")
        assert kind == "mail"
        mail = mail_sink.wait_for(to, int(count), timeout=30)
        subjects.append(mail.subject)
        return f"{mail.link} {mail.code}"

    result = run_asking_browser_script(
        "web_accounts.mjs",
        server.base_url,
        username,
        address,
        PASSWORD,
        NEW_PASSWORD,
        str(shots),
        answer=answer,
        timeout=150,
    )

    user_id = f"@{username}:{server.server_name}"
    # Sign-up: the page asked for the address, mailed it, refused to go on before the link
    # was opened, then completed.
    assert result["emailStepTitle"] == "Confirm your email"
    assert result["mailSent"] == f"We sent a mail to {address}. Open the link in it, then come back here."
    assert "not yet validated" in result["tooEarly"]
    assert result["linkPage"] == "Your email address has been verified. You can return to your app."
    assert result["signedUp"] == {"userId": user_id, "path": "/"}
    assert subjects == ["Confirm your email address", "Reset your password", "Reset your password"]

    # The device list: this device first, the phone with its name and when it was seen.
    assert result["settingsPath"] == "/settings"
    laptop, phone = result["devicesBefore"]
    assert (laptop["current"], laptop["lastSeen"], laptop["canLogOut"]) == (True, "Active now", False)
    assert (phone["current"], phone["name"], phone["canLogOut"]) == (False, "Web client", True)
    assert phone["lastSeen"].startswith("Last seen ") and "127.0.0.1" in phone["lastSeen"]
    assert result["renamed"] == "Phone in my pocket"
    # Remote logout: a wrong password is refused; then the phone is gone from the list and
    # is on its login page, its session forgotten.
    assert result["wrongPassword"] == "Wrong password."
    assert [d["id"] for d in result["devicesAfter"]] == [laptop["id"]]
    assert result["phoneLoggedOut"]["path"] == "/login"
    assert result["phoneLoggedOut"]["title"] == "Log in"
    assert result["phoneLoggedOut"]["notice"] == "This device was logged out. Log in again to continue."
    assert result["phoneLoggedOut"]["session"] is None
    assert result["backToChats"] == {"path": "/", "list": "No chats yet: start one above."}

    # Password reset by mail from the login page; the old password fails, the new one works.
    assert result["resetPath"] == "/reset"
    assert result["sentAgain"] == f"A new mail is on its way to {address}: use the link or code in that one."
    assert result["codeAccepted"] == "Your email address is confirmed."
    assert result["afterReset"]["path"] == "/login"
    assert result["afterReset"]["notice"].startswith("Your password has been changed")
    assert result["oldPassword"] == "Invalid username or password"
    assert result["newPasswordLogin"] == {"path": "/", "userId": user_id}
    # The reset logged out every device: the laptop is back on its login page.
    assert result["laptopAfterReset"] == {"path": "/login", "title": "Log in"}
    assert result["problems"] == []
    # The server agrees: the old password is refused, the new one accepted.
    server.login(username, NEW_PASSWORD)
