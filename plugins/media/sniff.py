"""What a file is, from its bytes; how it may be served.

The client's Content-Type is a claim, not a fact: the type we serve comes from
the first bytes of the file (`sniff`), and the claim is kept only where the bytes
cannot tell and the claimed type is served as an attachment anyway (`served_type`).
Only inert types are ever served inline (the spec's "serving inline content"
list); everything a browser could run - HTML, SVG, XML, JavaScript, PDF - is an
attachment, and every download carries a sandboxing Content-Security-Policy.
"""

from __future__ import annotations

import re
from urllib.parse import quote

OCTET_STREAM = "application/octet-stream"

# The spec's list of types that may be served with `Content-Disposition: inline`.
INLINE_TYPES = frozenset(
    {
        "text/css",
        "text/plain",
        "text/csv",
        "application/json",
        "application/ld+json",
        "image/jpeg",
        "image/gif",
        "image/png",
        "image/apng",
        "image/webp",
        "image/avif",
        "video/mp4",
        "video/webm",
        "video/ogg",
        "video/quicktime",
        "audio/mp4",
        "audio/webm",
        "audio/aac",
        "audio/mpeg",
        "audio/ogg",
        "audio/wave",
        "audio/wav",
        "audio/x-wav",
        "audio/x-pn-wav",
        "audio/flac",
        "audio/x-flac",
    }
)

# Sniffed types that say nothing precise: a client's claim may refine them.
GENERIC_TYPES = frozenset({OCTET_STREAM, "text/plain", "application/zip", "application/xml"})

# Inline text types a client may claim for text the sniffer sees as plain.
_TEXT_CLAIMS = frozenset({"text/plain", "text/csv", "text/css", "application/json", "application/ld+json"})

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (
        b"Content-Security-Policy",
        b"sandbox; default-src 'none'; script-src 'none'; style-src 'unsafe-inline'; "
        b"media-src 'self'; object-src 'self'; frame-ancestors 'none'",
    ),
    (b"X-Content-Type-Options", b"nosniff"),
    (b"Cross-Origin-Resource-Policy", b"cross-origin"),
    (b"Referrer-Policy", b"no-referrer"),
)

_MIME_RE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")

_FTYP_BRANDS = {
    b"avif": "image/avif",
    b"avis": "image/avif",
    b"heic": "image/heic",
    b"heix": "image/heic",
    b"mif1": "image/heif",
    b"msf1": "image/heif",
    b"qt  ": "video/quicktime",
    b"M4A ": "audio/mp4",
    b"M4B ": "audio/mp4",
    b"3gp4": "video/3gpp",
    b"3gp5": "video/3gpp",
    b"3g2a": "video/3gpp2",
}

_HTML_STARTS = (
    b"<!doctype html",
    b"<html",
    b"<head",
    b"<body",
    b"<script",
    b"<iframe",
    b"<style",
    b"<title",
    b"<table",
    b"<div",
    b"<font",
    b"<h1",
    b"<a ",
    b"<b>",
    b"<br",
    b"<p>",
    b"<p ",
    b"<!--",
)


def normalize_type(value: str | bytes | None) -> str | None:
    """A client's Content-Type, lower-cased and without parameters, or None if malformed."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    mime = value.split(";", 1)[0].strip().lower()
    return mime if _MIME_RE.fullmatch(mime) else None


def sniff(head: bytes) -> str:
    """The type the first bytes (a few kB) of a file show, or application/octet-stream."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head.startswith(b"RIFF") and len(head) >= 12:
        kind = head[8:12]
        if kind == b"WEBP":
            return "image/webp"
        if kind == b"WAVE":
            return "audio/wav"
        if kind == b"AVI ":
            return "video/x-msvideo"
    if len(head) >= 12 and head[4:8] == b"ftyp":
        return _FTYP_BRANDS.get(head[8:12], "video/mp4")
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video/webm" if b"webm" in head[:64] else "video/x-matroska"
    if head.startswith(b"OggS"):
        return "video/ogg" if b"\x80theora" in head[:256] else "audio/ogg"
    if head.startswith(b"fLaC"):
        return "audio/flac"
    if head.startswith(b"ID3") or _is_mpeg_audio_frame(head):
        return "audio/mpeg"
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "image/tiff"
    if (
        head.startswith(b"BM")
        and len(head) >= 15
        and head[6:10] == b"\0\0\0\0"
        and head[14] in (12, 40, 108, 124)
    ):
        return "image/bmp"
    if head.startswith(b"PK\x03\x04"):
        return "application/zip"
    if head.startswith(b"\x1f\x8b"):
        return "application/gzip"
    if head.startswith(b"7z\xbc\xaf\x27\x1c"):
        return "application/x-7z-compressed"
    if head.startswith(b"\x7fELF"):
        return "application/x-executable"
    if head.startswith((b"wOFF", b"wOF2")):
        return "font/woff2" if head.startswith(b"wOF2") else "font/woff"
    text = _as_text(head)
    if text is None:
        return OCTET_STREAM
    return _markup_type(text) or "text/plain"


def _is_mpeg_audio_frame(head: bytes) -> bool:
    if len(head) < 4 or head[0] != 0xFF or (head[1] & 0xE0) != 0xE0:
        return False
    version, layer = (head[1] >> 3) & 3, (head[1] >> 1) & 3
    bitrate, rate = head[2] >> 4, (head[2] >> 2) & 3
    return version != 1 and layer != 0 and bitrate not in (0, 15) and rate != 3


def _as_text(head: bytes) -> bytes | None:
    """The bytes, lower-cased, if they look like UTF-8 text (else None)."""
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:]
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return None  # UTF-16: leave it opaque
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        # A multi-byte character cut at the end of the sample is fine.
        if e.start < len(head) - 3:
            return None
    if any(b < 0x20 and b not in (0x09, 0x0A, 0x0C, 0x0D, 0x1B) for b in head):
        return None
    return head.lower()


def _markup_type(text: bytes) -> str | None:
    """HTML, SVG or XML if the text is (or hides) such markup: a browser would run it."""
    start = text.lstrip()
    early = text[:4096]
    if b"<svg" in early:
        return "image/svg+xml"
    if start.startswith(_HTML_STARTS) or b"<html" in early or b"<script" in early:
        return "text/html"
    if start.startswith(b"<?xml"):
        if b"<html" in text or b"xhtml" in text:
            return "application/xhtml+xml"
        return "application/xml"
    return None


def served_type(sniffed: str, claimed: str | None) -> str:
    """The Content-Type to record and serve, from what the bytes show and the client said.

    A precise sniffed type always wins. Where the bytes are generic (unknown binary,
    plain text, zip, xml), the claim is kept if it is served as an attachment anyway,
    or if it is an inert text type and the bytes are text; otherwise the sniffed type.
    An encrypted file claimed as image/png is therefore served as octet-stream.

    A claim of octet-stream is kept whatever the bytes show: the uploader says they are
    opaque (an encrypted attachment), and random ciphertext can begin like an MP3 frame
    (about 1 in 5,600 files). Typed as audio, such a file left the rule that lets room
    mates read opaque media (repository.py), and its recipients got 403. Served as an
    attachment of opaque bytes, it is harmless whatever it holds.
    """
    if claimed == OCTET_STREAM:
        return OCTET_STREAM
    if sniffed not in GENERIC_TYPES or claimed is None or claimed == sniffed:
        return sniffed
    if claimed not in INLINE_TYPES:
        return claimed
    if sniffed == "text/plain" and claimed in _TEXT_CLAIMS:
        return claimed
    return sniffed


def is_inline(content_type: str) -> bool:
    return content_type in INLINE_TYPES


def content_type_header(content_type: str) -> bytes:
    if content_type.startswith("text/") or content_type in ("application/json", "application/ld+json"):
        return f"{content_type}; charset=utf-8".encode()
    return content_type.encode()


def clean_filename(name: str | None) -> str | None:
    """A file name safe to store and echo: no path, no control characters, bounded."""
    if not name:
        return None
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if c.isprintable() and c not in '"').strip()
    return name[:255] or None


def content_disposition(content_type: str, filename: str | None) -> bytes:
    """`inline` only for inert types; the file name in the RFC 6266 forms."""
    kind = "inline" if is_inline(content_type) else "attachment"
    name = clean_filename(filename)
    if not name:
        return kind.encode()
    if name.isascii() and re.fullmatch(r"[\x20-\x7e]+", name) and ";" not in name:
        return f'{kind}; filename="{name}"'.encode()
    return f"{kind}; filename*=utf-8''{quote(name, safe='')}".encode()


def download_headers(content_type: str, filename: str | None) -> tuple[tuple[bytes, bytes], ...]:
    return (
        (b"Content-Disposition", content_disposition(content_type, filename)),
        (b"Cache-Control", b"private, max-age=86400"),
        *SECURITY_HEADERS,
    )
