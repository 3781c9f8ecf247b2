"""Start-up time (issue 16; docs/operations.md, "Start-up"): the server answers without having
imported the heavy modules it needs only later, and TLS, imported late, still works.

The server runs with the sample config's plugins, as `make run` starts it, with Python's
import log on (PYTHONPROFILEIMPORTTIME): the log names every module imported up to the
moment the test reads it, just after the first answer.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import yaml
from conftest import ROOT, start_server_process

# Imported at the first use of what needs them, never to answer the first request.
LATE = {
    "OpenSSL": "pyOpenSSL: TLS, with the first outbound HTTPS request or startTLS",
    "twisted.protocols.tls": "TLS, likewise",
    "twisted.internet.ssl": "TLS, likewise",
    "twisted.internet._newtls": "startTLS on a TCP connection",
    "service_identity": "TLS certificate checks",
    "cryptography.x509": "TLS certificates",
    "http_ece": "Web Push, only with a Web Push app",
    "PIL": "Pillow, the first image",
    "firebase_admin": "FCM, only with an FCM app",
    "treq": "the first push",
    "twisted.web.client": "the first push",
    "jwt": "the first access token",
    "autobahn": "the first WebSocket upgrade",
}


def imported_modules(log: str) -> set[str]:
    names = set()
    for line in log.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip())
    return names


def test_the_server_answers_before_importing_what_it_needs_later(tmp_path: Path) -> None:
    sample = yaml.safe_load((ROOT / "config" / "homeserver.yaml").read_text())
    server = start_server_process(
        tmp_path, {"plugins": sample["plugins"]}, env={"PYTHONPROFILEIMPORTTIME": "1"}
    )
    try:
        imported = imported_modules(server.log_text())
        assert {"homeserver.server", "plugins.media.repository"} <= imported  # the log is on
        early = {
            name: why
            for name, why in LATE.items()
            if any(m == name or m.startswith(name + ".") for m in imported)
        }
        assert early == {}, f"imported before the first answer: {early}"
    finally:
        assert server.stop() == 0


# In a fresh interpreter set up as `homeserver run` sets it up: the reactor did not load TLS,
# and both ways of using it work (a TLS listener and client, startTLS on a plain TCP connection,
# with the certificate and host name checked), while a connection made before goes on in clear.
TLS_SCRIPT = textwrap.dedent(
    """
    import datetime, sys
    from homeserver import lazy_imports
    lazy_imports.defer()
    from homeserver.reactor import install
    install()
    from twisted.internet import defer, reactor, task
    from twisted.internet.protocol import Factory, Protocol
    assert "OpenSSL" not in sys.modules, "the reactor imported pyOpenSSL"
    from twisted.internet.endpoints import SSL4ClientEndpoint, TCP4ClientEndpoint, connectProtocol

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )

    class Peer(Protocol):
        def __init__(self):
            self.buffer, self.waiting = b"", None

        def dataReceived(self, data):
            self.buffer += data
            self._deliver()

        def _deliver(self):
            if self.waiting is not None and b"\\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\\n", 1)
                waiting, self.waiting = self.waiting, None
                waiting.callback(line)

        def ask(self, line):
            self.waiting = defer.Deferred()
            self.transport.write(line + b"\\n")
            self._deliver()
            return self.waiting

    class Echo(Protocol):
        buffer = b""

        def dataReceived(self, data):
            self.buffer += data
            while b"\\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\\n", 1)
                self.transport.write(line + b"\\n")
                if line == b"starttls":
                    self.transport.startTLS(server_options)

    async def main(reactor):
        from twisted.internet import ssl
        from twisted.internet.interfaces import ISSLTransport

        plain_port = reactor.listenTCP(0, Factory.forProtocol(Echo), interface="127.0.0.1")
        plain = TCP4ClientEndpoint(reactor, "127.0.0.1", plain_port.getHost().port)
        first = await connectProtocol(plain, Peer())
        assert await first.ask(b"hello") == b"hello"

        global server_options
        server_options = ssl.PrivateCertificate.loadPEM(key_pem + cert_pem).options()
        client_options = ssl.optionsForClientTLS("localhost", trustRoot=ssl.Certificate.loadPEM(cert_pem))
        wrong_host = ssl.optionsForClientTLS("example.org", trustRoot=ssl.Certificate.loadPEM(cert_pem))

        tls_port = reactor.listenSSL(0, Factory.forProtocol(Echo), server_options, interface="127.0.0.1")
        tls = SSL4ClientEndpoint(reactor, "127.0.0.1", tls_port.getHost().port, client_options)
        second = await connectProtocol(tls, Peer())
        assert await second.ask(b"over a TLS listener") == b"over a TLS listener"
        assert ISSLTransport.providedBy(second.transport)

        third = await connectProtocol(plain, Peer())
        assert await third.ask(b"starttls") == b"starttls"
        third.transport.startTLS(client_options)
        assert await third.ask(b"after startTLS") == b"after startTLS"
        assert ISSLTransport.providedBy(third.transport)
        assert third.transport.getPeerCertificate() is not None

        # The host name is checked: a client expecting another host gets no answer, but a
        # closed connection.
        fourth = await connectProtocol(plain, Peer())
        assert await fourth.ask(b"starttls") == b"starttls"
        lost = []
        closed = defer.Deferred()
        fourth.connectionLost = lambda reason: (lost.append(reason), closed.callback(None))
        fourth.transport.startTLS(wrong_host)
        fourth.transport.write(b"to the wrong host\\n")
        await closed
        assert fourth.buffer == b"" and "DNSMismatch" in str(lost[0].value), lost

        assert await first.ask(b"still in clear") == b"still in clear"
        assert not ISSLTransport.providedBy(first.transport)
        for connection in (first, second, third):
            connection.transport.loseConnection()
        await plain_port.stopListening()
        await tls_port.stopListening()
        print("tls ok")

    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
    """
)


def test_tls_works_when_loaded_late() -> None:
    result = subprocess.run(  # noqa: S603 - fixed argv
        [sys.executable, "-c", TLS_SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "tls ok" in result.stdout, result.stdout + result.stderr
