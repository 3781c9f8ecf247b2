"""HTTP byte ranges for downloads (RFC 9110 §14): what part of a file a request asks for.

Browsers play audio and video through `<video>`/`<audio>`, which ask for `Range:
bytes=...` and need `206 Partial Content` to seek (iOS Safari plays nothing without it).
Media never changes once stored, so one range of it is always a range of the same bytes.

Only a single range is served. RFC 9110 lets a server ignore a Range field it does not
want to honour (§14.2), and a multipart/byteranges answer is what no media player needs:
several ranges, a malformed field, another unit or an `If-Range` (we send no validator it
could match, §13.1.5) get the whole file with 200. A well-formed range that starts past
the end is the one refusal, 416 (§15.5.17).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# More digits than any file can have: read as "beyond the end" rather than parsed (and
# never handed to int(), which refuses strings over 4300 digits).
_MAX_DIGITS = 18
_BEYOND = 10**_MAX_DIGITS
_SPEC_RE = re.compile(r"([0-9]*)-([0-9]*)")


class RangeNotSatisfiable(Exception):
    """The request's single range lies wholly past the end of the file (416)."""


@dataclass(frozen=True)
class ByteRange:
    """Bytes `start` to `end` of a file of `size` bytes, both ends included."""

    start: int
    end: int
    size: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self) -> bytes:
        return b"bytes %d-%d/%d" % (self.start, self.end, self.size)


def _number(digits: str) -> int:
    return _BEYOND if len(digits) > _MAX_DIGITS else int(digits)


def requested_range(header: bytes | None, if_range: bytes | None, size: int) -> ByteRange | None:
    """The one range of a `size`-byte file that a GET's `Range` field asks for, or None
    to send the whole file.

    `bytes=a-b` (b past the end means to the end), `bytes=a-` and `bytes=-n` (the last n
    bytes) are honoured; None for no field, a malformed one, another unit, several
    ranges or an `If-Range`.
    @raise RangeNotSatisfiable: `a` is at or past the end of the file, or `n` is 0.
    """
    if header is None or if_range is not None:
        return None
    try:
        text = header.decode("ascii")
    except UnicodeDecodeError:
        return None
    unit, eq, ranges = text.partition("=")
    if not eq or unit.lower() != "bytes":
        return None
    # The list rule (§5.6.1) allows empty elements: `bytes=0-1,` is one range.
    specs = [spec.strip(" \t") for spec in ranges.split(",")]
    specs = [spec for spec in specs if spec]
    if len(specs) != 1:
        return None
    match = _SPEC_RE.fullmatch(specs[0])
    if match is None:
        return None
    first, last = match.groups()
    if first:
        start = _number(first)
        end = _number(last) if last else _BEYOND
        if end < start:
            return None  # invalid (§14.1.1): ignored, not refused
        if start >= size:
            raise RangeNotSatisfiable()
        chosen = ByteRange(start, min(end, size - 1), size)
    elif last:
        suffix = _number(last)
        if suffix == 0:
            # A zero-length suffix selects nothing (§14.1.1): not satisfiable.
            raise RangeNotSatisfiable()
        if size == 0:
            return None  # the last n bytes of an empty file: the whole (empty) file
        chosen = ByteRange(max(0, size - suffix), size - 1, size)
    else:
        return None  # a bare "-"
    # `bytes=0-` (how Chrome's player probes) covers the whole file and is still a 206:
    # the player learns from it that seeking works and the file's size.
    return chosen
