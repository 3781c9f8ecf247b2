"""URL previews (OpenGraph) fetched without becoming an SSRF hole.

Blocking (run it in a thread). For each hop (the URL, then each redirect):
the host name is resolved once, every address it resolves to is checked against
the blocklist (loopback, private, link-local, shared, multicast, reserved and
unspecified ranges, IPv4-mapped and NAT64 forms included, plus the configured
`ip_range_blacklist`; `ip_range_whitelist` wins), and the connection goes to a
checked address itself - the name is never resolved again, so DNS rebinding
cannot swap in an internal address. The whole fetch has one deadline and the
body is read up to `max_size` bytes.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin, urlsplit

from homeserver.plugins import address_blocked
from plugins.media.config import PreviewConfig

USER_AGENT = "Mozilla/5.0 (compatible; homeserver URL preview)"
_REDIRECTS = (301, 302, 303, 307, 308)


class PreviewError(Exception):
    def __init__(self, message: str, status: int, errcode: str) -> None:
        super().__init__(message)
        self.status = status
        self.errcode = errcode


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str
    port: int
    path: str


def _parse(url: str) -> _Target:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise PreviewError("Invalid URL", 400, "M_INVALID_PARAM") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PreviewError("Only http and https URLs can be previewed", 400, "M_INVALID_PARAM")
    if parts.username or parts.password:
        raise PreviewError("URLs with credentials are not previewed", 400, "M_INVALID_PARAM")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return _Target(parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80), path)


def _resolve(target: _Target, config: PreviewConfig) -> str:
    """A checked address of the host; refuses if any address of it is blocked."""
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise PreviewError("Could not resolve the host", 502, "M_UNKNOWN") from None
    addresses = []
    for info in infos:
        raw = str(info[4][0]).split("%", 1)[0]
        ip = ipaddress.ip_address(raw)
        if address_blocked(ip, config.ip_range_blacklist, config.ip_range_whitelist):
            raise PreviewError("IP address blocked by the URL preview blocklist", 403, "M_FORBIDDEN")
        addresses.append(raw)
    if not addresses:
        raise PreviewError("Could not resolve the host", 502, "M_UNKNOWN")
    return addresses[0]


def _connection(target: _Target, address: str, timeout: float) -> http.client.HTTPConnection:
    conn: http.client.HTTPConnection
    if target.scheme == "https":
        conn = http.client.HTTPSConnection(
            target.host, target.port, timeout=timeout, context=ssl.create_default_context()
        )
    else:
        conn = http.client.HTTPConnection(target.host, target.port, timeout=timeout)

    # Connect to the address we checked, never to a fresh resolution of the name
    # (TLS still verifies the certificate against the host name).
    def connect_checked(_addr: Any, timeout: float | None = None, source: Any = None) -> socket.socket:
        return socket.create_connection((address, target.port), timeout, source)

    conn._create_connection = connect_checked  # type: ignore[attr-defined]
    return conn


def fetch_preview(url: str, config: PreviewConfig) -> dict[str, Any]:
    """The OpenGraph data of `url` (may be empty), or PreviewError."""
    deadline = time.monotonic() + config.timeout_ms / 1000
    current = url
    for _ in range(config.max_redirects + 1):
        target = _parse(current)
        address = _resolve(target, config)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise PreviewError("Timed out fetching the URL", 504, "M_UNKNOWN")
        conn = _connection(target, address, remaining)
        try:
            conn.request(
                "GET",
                target.path,
                headers={
                    "User-Agent": USER_AGENT,
                    "Accept": "text/html,application/xhtml+xml;q=0.9,*/*;q=0.1",
                    "Accept-Encoding": "identity",
                },
            )
            resp = conn.getresponse()
            if resp.status in _REDIRECTS:
                location = resp.getheader("Location")
                if not location:
                    raise PreviewError("Redirect without a Location", 502, "M_UNKNOWN")
                current = urljoin(current, location)
                continue
            if resp.status != 200:
                raise PreviewError(f"The URL answered {resp.status}", 502, "M_UNKNOWN")
            content_type = (resp.getheader("Content-Type") or "").lower()
            length = resp.getheader("Content-Length")
            if length and length.isdigit() and int(length) > config.max_size and "html" not in content_type:
                raise PreviewError("Content is too large to preview", 502, "M_TOO_LARGE")
            body = _read(resp, config.max_size, deadline)
        except (OSError, http.client.HTTPException) as e:
            if isinstance(e, TimeoutError | socket.timeout):
                raise PreviewError("Timed out fetching the URL", 504, "M_UNKNOWN") from None
            raise PreviewError(f"Could not fetch the URL: {e.__class__.__name__}", 502, "M_UNKNOWN") from None
        finally:
            conn.close()
        if "html" not in content_type:
            return {}
        return parse_html(body, _charset(content_type))
    raise PreviewError("Too many redirects", 502, "M_UNKNOWN")


def _read(resp: http.client.HTTPResponse, max_size: int, deadline: float) -> bytes:
    """Up to `max_size` bytes (enough of a page for its <head>), within the deadline."""
    chunks: list[bytes] = []
    total = 0
    while total < max_size:
        if time.monotonic() > deadline:
            raise TimeoutError
        chunk = resp.read1(min(65536, max_size - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def _charset(content_type: str) -> str:
    for part in content_type.split(";")[1:]:
        name, _, value = part.strip().partition("=")
        if name == "charset" and value:
            return value.strip('"')
    return "utf-8"


class _OpenGraph(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.og: dict[str, str] = {}
        self.description: str | None = None
        self.title: str | None = None
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k.lower(): (v or "") for k, v in attrs}
        if tag == "meta":
            prop = a.get("property") or a.get("name") or ""
            content = a.get("content", "")
            if prop.startswith("og:") and content and prop not in self.og and len(self.og) < 50:
                self.og[prop] = content[:2000]
            elif prop.lower() == "description" and content and self.description is None:
                self.description = content[:2000]
        elif tag == "title" and self.title is None:
            self._in_title = True
            self.title = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title and self.title is not None and len(self.title) < 2000:
            self.title += data


def parse_html(body: bytes, charset: str) -> dict[str, Any]:
    try:
        text = body.decode(charset, "replace")
    except LookupError:
        text = body.decode("utf-8", "replace")
    parser = _OpenGraph()
    try:
        parser.feed(text)
        parser.close()
    except Exception:  # noqa: S110 - a broken page still gives what was parsed
        pass
    result: dict[str, Any] = dict(parser.og)
    if "og:title" not in result and parser.title and parser.title.strip():
        result["og:title"] = " ".join(parser.title.split())
    if "og:description" not in result and parser.description:
        result["og:description"] = parser.description
    # og:image would be a second fetch; it is not proxied into the media store.
    for key in [k for k in result if k.startswith("og:image")]:
        del result[key]
    return result
