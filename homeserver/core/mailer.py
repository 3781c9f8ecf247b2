"""Outgoing mail: SMTP when configured, else a file in the data dir.

The log-only fallback writes each mail to `<data_dir>/mail/` and logs where:
the mail holds a verification token, and no token may appear in a log line.
"""

from __future__ import annotations

import secrets
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

from twisted.logger import Logger

from homeserver.config import EmailConfig
from homeserver.core.clock import Clock
from homeserver.threads import WorkerThreads

log = Logger()


class Mailer:
    def __init__(self, config: EmailConfig, data_dir: Path, clock: Clock, threads: WorkerThreads) -> None:
        self.config = config
        self.outbox = data_dir / "mail"
        self.clock = clock
        self._run = threads.run

    def _message(self, to: str, subject: str, text: str) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self.config.sender
        msg["To"] = to
        msg["Subject"] = subject
        msg["Date"] = formatdate(self.clock.seconds(), localtime=False)
        msg["Message-ID"] = make_msgid(domain="homeserver")
        msg.set_content(text)
        return msg

    async def send(self, to: str, subject: str, text: str) -> None:
        """Deliver one plain-text mail; raise on SMTP failure (the caller reports it)."""
        msg = self._message(to, subject, text)
        if self.config.smtp.host is None:
            path = await self._run(self._write_to_outbox, msg, self.clock.time_ms())
            log.info("no SMTP configured: mail to {to} written to {path}", to=to, path=str(path))
            return
        await self._run(self._send_smtp, msg)
        log.info("mail sent to {to}: {subject}", to=to, subject=subject)

    def _write_to_outbox(self, msg: EmailMessage, stamp_ms: int) -> Path:
        self.outbox.mkdir(parents=True, exist_ok=True, mode=0o700)
        suffix = secrets.token_hex(3)
        path = self.outbox / f"{stamp_ms}-{suffix}-{msg['To'].replace('/', '_')}.eml"
        path.write_bytes(bytes(msg))
        path.chmod(0o600)
        return path

    def _send_smtp(self, msg: EmailMessage) -> None:
        smtp = self.config.smtp
        assert smtp.host is not None
        timeout = smtp.timeout / 1000
        client: smtplib.SMTP
        if smtp.security == "tls":
            client = smtplib.SMTP_SSL(
                smtp.host, smtp.port, timeout=timeout, context=ssl.create_default_context()
            )
        else:
            client = smtplib.SMTP(smtp.host, smtp.port, timeout=timeout)
        with client:
            if smtp.security == "starttls":
                client.starttls(context=ssl.create_default_context())
            if smtp.username and smtp.password:
                client.login(smtp.username, smtp.password)
            client.send_message(msg)
