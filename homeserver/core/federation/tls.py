"""TLS for federation: the listener's certificate, and whom outbound connections trust.

pyOpenSSL and twisted.internet.ssl are imported here only, when the listener starts or
the first outbound request is made (start-up time, docs/operations.md).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from zope.interface import implementer

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def server_context(cert_file: str, key_file: str) -> Any:
    """The listener's TLS options: the leaf and its chain from `cert_file`, the key from
    `key_file`. Raises ValueError naming the file when one cannot be used."""
    from twisted.internet import ssl

    try:
        cert_pem = Path(cert_file).read_bytes()
        key_pem = Path(key_file).read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read {e.filename}: {e.strerror}") from None
    certs = _PEM_CERT.findall(cert_pem)
    if not certs:
        raise ValueError(f"{cert_file} holds no PEM certificate")
    try:
        leaf = ssl.PrivateCertificate.loadPEM(certs[0] + b"\n" + key_pem)
        chain = [ssl.Certificate.loadPEM(c).original for c in certs[1:]]
        return ssl.CertificateOptions(
            privateKey=leaf.privateKey.original,
            certificate=leaf.original,
            extraCertChain=chain,
            # Clients that offer ALPN (most HTTP libraries) get an internal-error alert when the
            # server names no protocol: say the one it speaks.
            acceptableProtocols=[b"http/1.1"],
        )
    except Exception as e:
        raise ValueError(f"{cert_file} / {key_file}: not a usable certificate and key: {e}") from None


def trust_root(ca_file: str | None) -> Any:
    """The system's CAs, plus those in `ca_file` when given."""
    from twisted.internet._sslverify import IOpenSSLTrustRoot

    @implementer(IOpenSSLTrustRoot)
    class SystemAndExtra:
        def _addCACertsToContext(self, context: Any) -> None:  # noqa: N802 - twisted's name
            context.set_default_verify_paths()
            if ca_file:
                context.load_verify_locations(ca_file)

    return SystemAndExtra()


def client_options(tls_name: str, root: Any) -> Any:
    """Connection options checking that the peer's certificate names `tls_name` and chains
    to `root`; SNI carries `tls_name` (not for IP literals, which SNI cannot name)."""
    from twisted.internet import ssl

    return ssl.optionsForClientTLS(tls_name, trustRoot=root)
