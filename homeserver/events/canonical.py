"""Canonical JSON and unpadded base64: the byte-level encodings that Matrix hashes and signs.

Spec: Appendices, "Canonical JSON" (sorted keys, no insignificant whitespace, UTF-8, shortest
form) and "Unpadded Base64" / "URL-safe Unpadded Base64" (RFC 4648 alphabets, `=` stripped).

This module is a thin, typed façade over `canonicaljson` and `unpaddedbase64` so the rest of
the server has one place that defines "the bytes we hash".
"""

from typing import Any

import canonicaljson
import unpaddedbase64


def encode_canonical_json(obj: Any) -> bytes:
    """Return `obj` as Canonical JSON bytes (UTF-8, sorted keys, compact separators).

    Two servers that hold equal JSON values get byte-identical output, which is what makes
    hashes and signatures over JSON portable. NaN/Infinity raise `ValueError`.

    Not enforced here (it is an event-validation concern, spec "Canonical JSON" for room
    versions 6+): that numbers are integers within [-(2**53)+1, 2**53-1].
    """
    return canonicaljson.encode_canonical_json(obj)


def encode_base64(data: bytes) -> str:
    """Encode `data` as standard-alphabet base64 with the trailing `=` padding removed.

    Used for content hashes (`hashes.sha256`), signatures and public keys.
    """
    return unpaddedbase64.encode_base64(data)


def encode_base64_urlsafe(data: bytes) -> str:
    """Encode `data` as URL-safe base64 (`-` and `_` instead of `+` and `/`), unpadded.

    Used for event IDs in room versions 4+, so they can appear in URL paths unescaped.
    """
    return unpaddedbase64.encode_base64(data, urlsafe=True)


def decode_base64(text: str) -> bytes:
    """Decode unpadded (or padded) base64 in either the standard or the URL-safe alphabet.

    The spec asks receivers to accept both padded and unpadded input. Raises `ValueError`
    (`binascii.Error` or `UnicodeEncodeError`, both subclasses) when `text` is not base64.
    """
    return unpaddedbase64.decode_base64(text)
