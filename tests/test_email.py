"""Email verification and password reset end to end: a real server process, a real SMTP server.

The mails go to an aiosmtpd sink in this process (tests/mail_sink.py); the tests
read the link and the code out of them as a person would. After each test the
server log is searched for every link token, code, client secret and password
used: none may appear there.
"""

from __future__ import annotations

import re
import secrets
import stat
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from conftest import ServerProcess
from mail_sink import Mail, MailSink, parse_mail

CLIENT = "/_matrix/client/v3"
EMAIL_STAGE = "m.login.email.identity"
# Random per run, so a hit in the log cannot be a coincidence.
PASSWORD = "old-" + secrets.token_urlsafe(12)
NEW_PASSWORD = "new-" + secrets.token_urlsafe(12)
# The environment overrides the config's SMTP settings; empty values do not.
NO_SMTP_ENV = {"HOMESERVER_SMTP_HOST": "", "HOMESERVER_SMTP_USERNAME": "", "HOMESERVER_SMTP_PASSWORD": ""}


def _address(name: str) -> str:
    return f"{name}-{secrets.token_hex(4)}@example.org"


def _client_secret() -> str:
    return secrets.token_urlsafe(24)


def post(
    server: ServerProcess, path: str, body: dict[str, Any], token: str | None = None
) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.post(server.url(path), json=body, headers=headers, timeout=10)


def whoami(server: ServerProcess, token: str) -> requests.Response:
    return requests.get(
        server.url(f"{CLIENT}/account/whoami"), headers={"Authorization": f"Bearer {token}"}, timeout=10
    )


def email_login(server: ServerProcess, address: str, password: str) -> requests.Response:
    body = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.thirdparty", "medium": "email", "address": address},
        "password": password,
    }
    return post(server, f"{CLIENT}/login", body)


def simple_login(server: ServerProcess, address: str, password: str) -> requests.Response:
    return post(server, "/api/auth/login", {"email": address, "password": password})


def follow(link: str) -> requests.Response:
    """Open the mail's link as a browser would."""
    r = requests.get(link, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/html")
    assert "verified" in r.text
    return r


def email_auth(sid: str, client_secret: str, session: str | None = None) -> dict[str, Any]:
    auth: dict[str, Any] = {
        "type": EMAIL_STAGE,
        "threepid_creds": {"sid": sid, "client_secret": client_secret},
    }
    if session is not None:
        auth["session"] = session
    return auth


def assert_no_secrets_in_log(log: str, mails: list[Mail], passwords: list[str]) -> None:
    for mail in mails:
        for name in ("token", "client_secret"):
            value = mail.link_params[name]
            assert value not in log, f"the mail's {name} is in the server log"
        # Bounded by non-digits: a 6-digit run inside a timestamp is not the code.
        assert not re.search(rf"(?<!\d){mail.code}(?!\d)", log), "a mailed code is in the server log"
    for password in passwords:
        assert password not in log, "a password is in the server log"


@pytest.fixture
def mail_sink() -> Iterator[MailSink]:
    sink = MailSink().start()
    yield sink
    sink.stop()


@pytest.fixture
def hs(start_server: Callable[..., ServerProcess], mail_sink: MailSink) -> Iterator[ServerProcess]:
    """A server that mails through the sink and requires verified addresses; its log is checked after."""
    server = start_server(
        {"email": {"smtp": mail_sink.smtp_config}, "registration": {"require_email_verification": True}},
        env=NO_SMTP_ENV,
    )
    yield server
    assert mail_sink.mails, "the test sent no mail"
    assert_no_secrets_in_log(server.log_text(), mail_sink.mails, [PASSWORD, NEW_PASSWORD])


def request_token(
    server: ServerProcess, kind: str, address: str, client_secret: str, attempt: int = 1
) -> str:
    r = post(
        server,
        f"{CLIENT}/{kind}/email/requestToken",
        {"client_secret": client_secret, "email": address, "send_attempt": attempt},
    )
    assert r.status_code == 200, r.text
    sid = r.json()["sid"]
    assert isinstance(sid, str) and sid
    return str(sid)


def matrix_register_with_email(
    server: ServerProcess, sink: MailSink, username: str, address: str
) -> dict[str, Any]:
    """The whole m.login.email.identity registration, as a client and its user do it."""
    body = {"username": username, "password": PASSWORD}
    r = post(server, f"{CLIENT}/register", body)
    assert r.status_code == 401, r.text
    session = r.json()["session"]
    secret = _client_secret()
    before = len(sink.to(address))
    sid = request_token(server, "register", address, secret)
    mail = sink.wait_for(address, count=before + 1)
    follow(mail.link)
    r = post(server, f"{CLIENT}/register", {**body, "auth": email_auth(sid, secret, session)})
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


# a. Matrix registration ---------------------------------------------------------


def test_matrix_registration_with_email(hs: ServerProcess, mail_sink: MailSink) -> None:
    address = _address("Alice")
    body = {"username": "alice", "password": PASSWORD}
    r = post(hs, f"{CLIENT}/register", body)
    assert r.status_code == 401, r.text
    flows = [f["stages"] for f in r.json()["flows"]]
    assert [EMAIL_STAGE] in flows
    session = r.json()["session"]

    secret = _client_secret()
    sid = request_token(hs, "register", address, secret)
    mail = mail_sink.wait_for(address.lower())
    assert mail.rcpt_tos == [address.lower()]
    assert mail.message["To"] == address.lower()
    assert mail.subject == "Confirm your email address"
    assert mail.link.startswith(hs.base_url + "/")
    assert mail.link_params["sid"] == sid
    assert mail.link_params["client_secret"] == secret
    assert len(mail.code) == 6

    # A retry of the same request (same secret and send_attempt) is the same session: no second mail.
    assert request_token(hs, "register", address, secret) == sid
    assert len(mail_sink.to(address)) == 1

    # The client tries to finish before the user opened the link: the stage fails, the session stays.
    r = post(hs, f"{CLIENT}/register", {**body, "auth": email_auth(sid, secret, session)})
    assert r.status_code == 401, r.text
    uia = r.json()
    assert uia["errcode"] == "M_THREEPID_AUTH_FAILED"
    assert "link" in uia["error"]
    assert uia["session"] == session
    assert [EMAIL_STAGE] in [f["stages"] for f in uia["flows"]]
    assert EMAIL_STAGE not in uia.get("completed", [])

    # A tampered link does not verify anything.
    bad = requests.get(mail.link.replace(mail.token, secrets.token_urlsafe(32)), timeout=10)
    assert bad.status_code == 400
    assert bad.headers["Content-Type"].startswith("text/html")
    assert "not valid" in bad.text

    follow(mail.link)
    r = post(hs, f"{CLIENT}/register", {**body, "auth": email_auth(sid, secret, session)})
    assert r.status_code == 200, r.text
    reg = r.json()
    assert reg["user_id"] == f"@alice:{hs.server_name}"
    assert whoami(hs, reg["access_token"]).json()["user_id"] == reg["user_id"]

    # The address is the account's, verified: log in by it (any case), and it is listed.
    r = email_login(hs, address.upper(), PASSWORD)
    assert r.status_code == 200, r.text
    assert r.json()["user_id"] == reg["user_id"]
    r = requests.get(
        hs.url(f"{CLIENT}/account/3pid"),
        headers={"Authorization": f"Bearer {reg['access_token']}"},
        timeout=10,
    )
    assert [(t["medium"], t["address"]) for t in r.json()["threepids"]] == [("email", address.lower())]

    # The proof was good for one registration only, and the address is taken now.
    r = post(
        hs,
        f"{CLIENT}/register",
        {"username": "mallory", "password": PASSWORD, "auth": email_auth(sid, secret)},
    )
    assert r.status_code == 401
    assert r.json()["errcode"] == "M_THREEPID_AUTH_FAILED"
    r = post(
        hs,
        f"{CLIENT}/register/email/requestToken",
        {"client_secret": _client_secret(), "email": address, "send_attempt": 1},
    )
    assert r.status_code == 400
    assert r.json()["errcode"] == "M_THREEPID_IN_USE"
    assert len(mail_sink.to(address)) == 1


def test_new_send_attempt_sends_a_new_mail(hs: ServerProcess, mail_sink: MailSink) -> None:
    address = _address("bob")
    secret = _client_secret()
    first = request_token(hs, "register", address, secret, attempt=1)
    second = request_token(hs, "register", address, secret, attempt=2)
    assert first != second
    mails = [mail_sink.wait_for(address, count=1), mail_sink.wait_for(address, count=2)]
    assert [m.link_params["sid"] for m in mails] == [first, second]
    assert mails[0].token != mails[1].token


# b. Simple API registration -------------------------------------------------------


def test_simple_api_registration_with_code(hs: ServerProcess, mail_sink: MailSink) -> None:
    address = _address("carol")
    r = post(hs, "/api/auth/register", {"email": address, "password": PASSWORD})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["verificationRequired"] is True
    assert "token" not in body
    user_id = body["userId"]

    r = simple_login(hs, address, PASSWORD)
    assert r.status_code == 403, r.text
    assert r.json()["errcode"] == "M_FORBIDDEN"
    assert "not verified" in r.json()["error"].lower()
    # The Matrix login says the same.
    r = email_login(hs, address, PASSWORD)
    assert r.status_code == 403
    assert "not verified" in r.json()["error"].lower()

    mail = mail_sink.wait_for(address)
    assert re.fullmatch(r"\d{6}", mail.code)
    wrong = f"{(int(mail.code) + 1) % 1_000_000:06d}"
    r = post(hs, "/api/auth/verify-email", {"email": address, "code": wrong})
    assert r.status_code == 401, r.text
    assert r.json()["errcode"] == "M_THREEPID_AUTH_FAILED"
    assert simple_login(hs, address, PASSWORD).status_code == 403

    r = post(hs, "/api/auth/verify-email", {"email": address, "code": mail.code})
    assert r.status_code == 200, r.text

    r = simple_login(hs, address, PASSWORD)
    assert r.status_code == 200, r.text
    session = r.json()
    assert session["userId"] == user_id
    assert whoami(hs, session["token"]).json()["user_id"] == user_id
    assert email_login(hs, address, PASSWORD).status_code == 200


def test_simple_api_registration_with_link(hs: ServerProcess, mail_sink: MailSink) -> None:
    address = _address("dave")
    r = post(hs, "/api/auth/register", {"email": address, "password": PASSWORD})
    assert r.status_code == 201, r.text
    user_id = r.json()["userId"]
    assert simple_login(hs, address, PASSWORD).status_code == 403

    follow(mail_sink.wait_for(address).link)

    r = simple_login(hs, address, PASSWORD)
    assert r.status_code == 200, r.text
    assert r.json()["userId"] == user_id
    assert whoami(hs, r.json()["token"]).json()["user_id"] == user_id

    # The address is taken now; no second account, no second mail.
    r = post(hs, "/api/auth/register", {"email": address.upper(), "password": NEW_PASSWORD})
    assert r.status_code == 400, r.text
    assert r.json()["errcode"] == "M_THREEPID_IN_USE"
    assert len(mail_sink.to(address)) == 1


def test_verification_code_allows_five_wrong_attempts(hs: ServerProcess, mail_sink: MailSink) -> None:
    address = _address("oscar")
    assert post(hs, "/api/auth/register", {"email": address, "password": PASSWORD}).status_code == 201
    code = mail_sink.wait_for(address).code
    for i in range(1, 6):
        wrong = f"{(int(code) + i) % 1_000_000:06d}"
        r = post(hs, "/api/auth/verify-email", {"email": address, "code": wrong})
        assert r.status_code == 401, r.text
    r = post(hs, "/api/auth/verify-email", {"email": address, "code": code})
    assert r.status_code == 401, r.text
    assert r.json()["errcode"] == "M_THREEPID_AUTH_FAILED"
    assert simple_login(hs, address, PASSWORD).status_code == 403


def test_locked_code_leaves_link_and_resend_working(hs: ServerProcess, mail_sink: MailSink) -> None:
    """Someone guessing codes must not lock the owner out: the link and a new mail still work."""
    address = _address("peggy")
    assert post(hs, "/api/auth/register", {"email": address, "password": PASSWORD}).status_code == 201
    first = mail_sink.wait_for(address)
    for i in range(1, 7):
        wrong = f"{(int(first.code) + i) % 1_000_000:06d}"
        assert post(hs, "/api/auth/verify-email", {"email": address, "code": wrong}).status_code == 401
    assert requests.get(first.link, timeout=10).status_code == 200
    assert simple_login(hs, address, PASSWORD).status_code == 200

    other = _address("quentin")
    assert post(hs, "/api/auth/register", {"email": other, "password": PASSWORD}).status_code == 201
    mail_sink.wait_for(other)
    assert post(hs, "/api/auth/verify-email/resend", {"email": other}).status_code == 202
    second = mail_sink.wait_for(other, count=2)
    assert second.code
    r = post(hs, "/api/auth/verify-email", {"email": other, "code": second.code})
    assert r.status_code == 200, r.text
    assert simple_login(hs, other, PASSWORD).status_code == 200
    # A verified (or unknown) address gets no further mail, and the same answer.
    assert post(hs, "/api/auth/verify-email/resend", {"email": other}).status_code == 202
    assert post(hs, "/api/auth/verify-email/resend", {"email": _address("nobody")}).status_code == 202


# c. Password reset, the Matrix way -----------------------------------------------


def test_matrix_password_reset(hs: ServerProcess, mail_sink: MailSink) -> None:
    address = _address("erin")
    reg = matrix_register_with_email(hs, mail_sink, "erin", address)
    other = hs.login("erin", PASSWORD)
    assert whoami(hs, reg["access_token"]).status_code == 200

    r = post(
        hs,
        f"{CLIENT}/account/password/email/requestToken",
        {"client_secret": _client_secret(), "email": _address("nobody"), "send_attempt": 1},
    )
    assert r.status_code == 400, r.text
    assert r.json()["errcode"] == "M_THREEPID_NOT_FOUND"

    secret = _client_secret()
    sid = request_token(hs, "account/password", address, secret)
    mail = mail_sink.wait_for(address, count=2)
    assert mail.subject == "Reset your password"
    assert mail.link_params["sid"] == sid

    # Without an access token the only way in is the mailed link.
    r = post(hs, f"{CLIENT}/account/password", {"new_password": NEW_PASSWORD})
    assert r.status_code == 401, r.text
    assert [EMAIL_STAGE] in [f["stages"] for f in r.json()["flows"]]
    session = r.json()["session"]
    r = post(
        hs,
        f"{CLIENT}/account/password",
        {"new_password": NEW_PASSWORD, "auth": email_auth(sid, secret, session)},
    )
    assert r.status_code == 401, r.text
    assert r.json()["errcode"] == "M_THREEPID_AUTH_FAILED"

    follow(mail.link)
    r = post(
        hs,
        f"{CLIENT}/account/password",
        {"new_password": NEW_PASSWORD, "auth": email_auth(sid, secret, session)},
    )
    assert r.status_code == 200, r.text

    for token in (reg["access_token"], other["access_token"]):
        r = whoami(hs, token)
        assert r.status_code == 401
        assert r.json()["errcode"] == "M_UNKNOWN_TOKEN"
    r = email_login(hs, address, PASSWORD)
    assert r.status_code == 403
    assert r.json()["errcode"] == "M_FORBIDDEN"
    assert hs.login("erin", NEW_PASSWORD)["user_id"] == reg["user_id"]
    assert email_login(hs, address, NEW_PASSWORD).status_code == 200

    # The proof was used up by the reset.
    r = post(hs, f"{CLIENT}/account/password", {"new_password": PASSWORD, "auth": email_auth(sid, secret)})
    assert r.status_code == 401
    assert r.json()["errcode"] == "M_THREEPID_AUTH_FAILED"


# d. Password reset, the simple API's way -----------------------------------------


def test_simple_api_password_reset(hs: ServerProcess, mail_sink: MailSink) -> None:
    address = _address("frank")
    assert post(hs, "/api/auth/register", {"email": address, "password": PASSWORD}).status_code == 201
    verify = mail_sink.wait_for(address)
    assert post(hs, "/api/auth/verify-email", {"email": address, "code": verify.code}).status_code == 200
    old_session = simple_login(hs, address, PASSWORD).json()

    # Same answer for an unknown address, and no mail to it.
    unknown = _address("nobody")
    r = post(hs, "/api/auth/password-reset/request", {"email": unknown})
    assert r.status_code == 202, r.text
    assert mail_sink.to(unknown) == []

    r = post(hs, "/api/auth/password-reset/request", {"email": address})
    assert r.status_code == 202, r.text
    mail = mail_sink.wait_for(address, count=2)
    assert mail.subject == "Reset your password"

    wrong = f"{(int(mail.code) + 1) % 1_000_000:06d}"
    r = post(
        hs, "/api/auth/password-reset/confirm", {"email": address, "code": wrong, "newPassword": NEW_PASSWORD}
    )
    assert r.status_code == 401, r.text
    assert r.json()["errcode"] == "M_THREEPID_AUTH_FAILED"
    # The verification code of the first mail is not a reset code.
    r = post(
        hs,
        "/api/auth/password-reset/confirm",
        {"email": address, "code": verify.code, "newPassword": NEW_PASSWORD},
    )
    assert r.status_code == 401, r.text

    r = post(
        hs,
        "/api/auth/password-reset/confirm",
        {"email": address, "code": mail.code, "newPassword": NEW_PASSWORD},
    )
    assert r.status_code == 200, r.text

    r = simple_login(hs, address, PASSWORD)
    assert r.status_code == 403
    assert r.json()["errcode"] == "M_FORBIDDEN"
    r = simple_login(hs, address, NEW_PASSWORD)
    assert r.status_code == 200, r.text
    assert r.json()["userId"] == old_session["userId"]
    assert whoami(hs, old_session["token"]).status_code == 401

    # The code was used up by the reset.
    r = post(
        hs,
        "/api/auth/password-reset/confirm",
        {"email": address, "code": mail.code, "newPassword": PASSWORD},
    )
    assert r.status_code == 401


# e. No SMTP: mails land in the data dir ------------------------------------------


def test_without_smtp_mail_is_written_to_data_dir(start_server: Callable[..., ServerProcess]) -> None:
    # No SMTP host in the config, and none from the environment.
    server = start_server({"registration": {"require_email_verification": True}}, env=NO_SMTP_ENV)
    assert "host" not in server.config.get("email", {}).get("smtp", {})
    address = _address("grace")
    secret = _client_secret()
    sid = request_token(server, "register", address, secret)
    simple = _address("heidi")
    assert post(server, "/api/auth/register", {"email": simple, "password": PASSWORD}).status_code == 201

    outbox = server.data_dir / "mail"
    files = sorted(outbox.glob("*.eml"))
    assert len(files) == 2, files
    mails = {}
    log = server.log_text()
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        mail = parse_mail(path.read_bytes())
        mails[str(mail.message["To"])] = mail
        assert str(path) in log, "the log does not say where the mail is"
    assert set(mails) == {address.lower(), simple.lower()}
    assert mails[address.lower()].link_params["sid"] == sid

    # The written mails work: the link verifies the registration session, the code the account.
    follow(mails[address.lower()].link)
    r = post(server, "/api/auth/verify-email", {"email": simple, "code": mails[simple.lower()].code})
    assert r.status_code == 200, r.text
    assert simple_login(server, simple, PASSWORD).status_code == 200

    assert urlsplit(mails[address.lower()].link).netloc == urlsplit(server.base_url).netloc
    assert_no_secrets_in_log(server.log_text(), list(mails.values()), [PASSWORD])


# SMTP down ------------------------------------------------------------------------


def test_smtp_failure_is_reported_and_can_be_retried(start_server: Callable[..., ServerProcess]) -> None:
    sink = MailSink()  # its port is chosen, but nothing listens there yet
    server = start_server(
        {"email": {"smtp": sink.smtp_config}, "registration": {"require_email_verification": True}},
        env=NO_SMTP_ENV,
    )
    address, simple, secret = _address("ivan"), _address("judy"), _client_secret()
    token_request = {"client_secret": secret, "email": address, "send_attempt": 1}
    r = post(server, f"{CLIENT}/register/email/requestToken", token_request)
    assert r.status_code >= 400, r.text
    assert r.json()["errcode"] == "M_UNKNOWN"
    r = post(server, "/api/auth/register", {"email": simple, "password": PASSWORD})
    assert r.status_code >= 400, r.text
    assert r.json()["errcode"] == "M_UNKNOWN"
    assert "sending mail to" in server.log_text()

    sink.start()
    try:
        # The failed attempts left nothing behind: the same requests work now.
        sid = request_token(server, "register", address, secret)
        assert sink.wait_for(address).link_params["sid"] == sid
        r = post(server, "/api/auth/register", {"email": simple, "password": PASSWORD})
        assert r.status_code == 201, r.text
        code = sink.wait_for(simple).code
        assert post(server, "/api/auth/verify-email", {"email": simple, "code": code}).status_code == 200
        assert simple_login(server, simple, PASSWORD).status_code == 200
    finally:
        sink.stop()
    assert_no_secrets_in_log(server.log_text(), sink.mails, [PASSWORD])
