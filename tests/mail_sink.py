"""A real SMTP server for tests: aiosmtpd in a thread of the test process, keeping every mail.

`Controller(port=0)` fails its own start-up check, so a free port is picked by
binding a socket first (REAL-PARTS.md §6).
"""

from __future__ import annotations

import email
import email.policy
import re
import socket
import threading
import time
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aiosmtpd.controller import Controller

VALIDATE_PATH = "/_homeserver/email/validate"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Mail:
    """One received mail: the SMTP envelope and the parsed message."""

    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    @property
    def text(self) -> str:
        body = self.message.get_body(("plain",))
        assert body is not None, "the mail has no text/plain part"
        return str(body.get_content())

    @property
    def link(self) -> str:
        """The verification link (the only URL to the validate page in the mail)."""
        links = [u for u in re.findall(r"https?://\S+", self.text) if VALIDATE_PATH in u]
        assert len(links) == 1, self.text
        return str(links[0])

    @property
    def link_params(self) -> dict[str, str]:
        query = parse_qs(urlsplit(self.link).query)
        return {k: v[0] for k, v in query.items()}

    @property
    def token(self) -> str:
        return self.link_params["token"]

    @property
    def code(self) -> str:
        """The 6-digit code (searched outside the link, so the token cannot fake one)."""
        codes = re.findall(r"(?<![\w-])\d{6}(?![\w-])", self.text.replace(self.link, " "))
        assert len(codes) == 1, self.text
        return str(codes[0])


def parse_mail(raw: bytes, mail_from: str = "", rcpt_tos: list[str] | None = None) -> Mail:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return Mail(mail_from, list(rcpt_tos or []), message)


class MailSink:
    """Collects mails; `wait_for(address)` blocks until one for that address arrives."""

    def __init__(self) -> None:
        self.mails: list[Mail] = []
        self._cond = threading.Condition()
        self.port = _free_port()
        self.host = "127.0.0.1"
        self._controller = Controller(self, hostname=self.host, port=self.port)

    # aiosmtpd handler hook
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        mail = parse_mail(envelope.content, envelope.mail_from, envelope.rcpt_tos)
        with self._cond:
            self.mails.append(mail)
            self._cond.notify_all()
        return "250 OK"

    def start(self) -> MailSink:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    @property
    def smtp_config(self) -> dict[str, Any]:
        """The homeserver's `email.smtp` section for this sink."""
        return {"host": self.host, "port": self.port, "security": "none"}

    def to(self, address: str) -> list[Mail]:
        with self._cond:
            return [m for m in self.mails if address.lower() in (r.lower() for r in m.rcpt_tos)]

    def wait_for(self, address: str, count: int = 1, timeout: float = 5.0) -> Mail:
        """The `count`-th mail to `address`, waiting for it up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.to(address)) < count:
                left = deadline - time.monotonic()
                assert left > 0, f"no mail #{count} to {address}; got {[m.rcpt_tos for m in self.mails]}"
                self._cond.wait(left)
            return self.to(address)[count - 1]
