"""Which bytes of a download a `Range` field asks for (RFC 9110 §14), and the local
store's reads of just those bytes. The HTTP answers themselves (206, 416, headers) are
tested against a running server in tests/test_media.py and test_media_s3.py."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from plugins.media.ranges import ByteRange, RangeNotSatisfiable, requested_range
from plugins.media.storage import LocalStorage, Slice

SIZE = 1000


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (b"bytes=0-0", (0, 0)),
        (b"bytes=0-499", (0, 499)),
        (b"bytes=500-999", (500, 999)),
        (b"bytes=999-999", (999, 999)),
        (b"bytes=998-", (998, 999)),
        (b"bytes=0-", (0, 999)),
        # A last-pos past the end means up to the end (§14.1.1).
        (b"bytes=900-5000", (900, 999)),
        (b"bytes=1-99999999999999999999999999", (1, 999)),
        (b"bytes=-1", (999, 999)),
        (b"bytes=-100", (900, 999)),
        (b"bytes=-1000", (0, 999)),
        (b"bytes=-5000", (0, 999)),
        # The unit is case-insensitive; the list rule allows empty elements.
        (b"Bytes=10-19", (10, 19)),
        (b"bytes=10-19,", (10, 19)),
        (b"bytes=, 10-19", (10, 19)),
    ],
)
def test_single_ranges(header: bytes, expected: tuple[int, int]) -> None:
    got = requested_range(header, None, SIZE)
    assert got == ByteRange(*expected, SIZE)
    assert got.length == expected[1] - expected[0] + 1
    assert got.content_range() == b"bytes %d-%d/%d" % (*expected, SIZE)


@pytest.mark.parametrize(
    "header",
    [
        None,
        b"",
        b"bytes=",
        b"bytes=-",
        b"bytes=abc",
        b"bytes=5-2",  # last before first: invalid, so ignored
        b"bytes=0-1,3-4",  # several ranges: served whole, no multipart/byteranges
        b"bytes=0-1, -5",
        b"bytes=--1",
        b"bytes=1--2",
        b"bytes=0x10-",
        b"bytes= 0-1 - 2",
        b"bytes 0-5",
        b"items=0-5",
        b"bytes=\xff-1",
        b"bytes=1.5-2",
        b"bytes=+1-2",
        b"bytes=\xd9\xa1-2",  # a non-ASCII digit
    ],
)
def test_malformed_or_multiple_ranges_get_the_whole_file(header: bytes | None) -> None:
    assert requested_range(header, None, SIZE) is None


@pytest.mark.parametrize("header", [b"bytes=1000-", b"bytes=1000-1000", b"bytes=5000-6000", b"bytes=-0"])
def test_ranges_past_the_end_are_not_satisfiable(header: bytes) -> None:
    with pytest.raises(RangeNotSatisfiable):
        requested_range(header, None, SIZE)


def test_if_range_gets_the_whole_file() -> None:
    """We send no ETag or Last-Modified, so no If-Range can match (§13.1.5)."""
    assert requested_range(b"bytes=0-1", b'"some-etag"', SIZE) is None
    assert requested_range(b"bytes=5000-", b"Mon, 07 Dec 2026 10:00:00 GMT", SIZE) is None


def test_an_empty_file() -> None:
    with pytest.raises(RangeNotSatisfiable):
        requested_range(b"bytes=0-", None, 0)
    assert requested_range(b"bytes=-5", None, 0) is None


def test_local_store_reads_only_the_range(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    store.check()
    data = bytes(range(256)) * 2000
    store.put("originals/ab/cd/abcdef", io.BytesIO(data), "application/octet-stream")
    for start, length in ((0, 1), (255, 2), (100_000, 300_000), (len(data) - 7, 7)):
        reader = store.open_range("originals/ab/cd/abcdef", start, length)
        got = b""
        while chunk := reader.read(4096):
            got += chunk
        reader.close()
        assert got == data[start : start + length]
    with pytest.raises(FileNotFoundError):
        store.open_range("originals/no/ne/none", 0, 1)


def test_slice_skips_when_a_backend_ignores_the_range() -> None:
    """An S3 server that answers a ranged GET with the whole object."""
    data = bytes(range(256)) * 4000
    whole = Slice(io.BytesIO(data), 300_000, 500_000)
    got = b""
    while chunk := whole.read(65536):
        got += chunk
    assert got == data[300_000:800_000]
    assert Slice(io.BytesIO(b"short"), 10, 5).read() == b""
