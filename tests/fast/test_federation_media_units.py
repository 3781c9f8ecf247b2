"""The multipart/mixed reading and writing of federation media (spec v1.11), and what a
remote's malformed answers become: a 502 for our client, never a 500."""

from __future__ import annotations

import pytest
import pytest_twisted

from homeserver.core.federation.directory_queries import _clean_page, alias_server
from homeserver.core.federation.media import (
    RemoteMediaFetcher,
    check_media_id,
    multipart_body,
    multipart_boundary,
    parse_multipart,
)
from homeserver.errors import MatrixError


def test_what_we_write_reads_back() -> None:
    head, tail = multipart_body("b0undary", b"image/png", b'inline; filename="a.png"')
    body = head + b"\x89PNG\r\n--b0und\r\n\r\n" + tail
    parts = parse_multipart(body, "b0undary")
    assert parts[0] == ({"content-type": "application/json"}, b"{}")
    headers, data = parts[1]
    assert headers == {"content-type": "image/png", "content-disposition": 'inline; filename="a.png"'}
    # Bytes that look like a boundary's start or a header end stay part of the media.
    assert data == b"\x89PNG\r\n--b0und\r\n\r\n"


@pytest.mark.parametrize(
    ("header", "boundary"),
    [
        ("multipart/mixed; boundary=abc", "abc"),
        ('multipart/mixed; boundary="a b"', "a b"),
        ("Multipart/Mixed;Boundary=x1", "x1"),
        ("multipart/form-data; boundary=abc", None),
        ("application/json", None),
        ("multipart/mixed", None),
        (None, None),
    ],
)
def test_boundaries(header: str | None, boundary: str | None) -> None:
    assert multipart_boundary(header) == boundary


@pytest.mark.parametrize(
    "body",
    [
        b"no boundary at all",
        b"--b\r\nContent-Type: a/b\r\n\r\nnever closed",
        b"--bX",
        b"--b\r\nno colon here\r\n\r\nx\r\n--b--",
        b"".join(b"--b\r\n\r\nx\r\n" for _ in range(20)) + b"--b--",
    ],
)
def test_malformed_multipart_is_refused(body: bytes) -> None:
    with pytest.raises(ValueError):
        parse_multipart(body, "b")


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b"{}"),
        ("multipart/mixed; boundary=b", b"garbage"),
        ("multipart/mixed; boundary=b", b"--b\r\n\r\n{}\r\n--b--"),  # one part, not two
    ],
)
def test_a_remotes_nonsense_is_a_502(content_type: str, body: bytes) -> None:
    with pytest.raises(MatrixError) as raised:
        RemoteMediaFetcher._unwrap("remote.example", content_type, body, 1000)
    assert raised.value.status == 502


def test_a_location_part_names_where_the_media_is() -> None:
    body = (
        b"--b\r\nContent-Type: application/json\r\n\r\n{}\r\n"
        b"--b\r\nLocation: https://cdn.example/x \r\n\r\n\r\n--b--\r\n"
    )
    found = RemoteMediaFetcher._unwrap("remote.example", "multipart/mixed; boundary=b", body, 1000)
    assert found == "https://cdn.example/x"


def test_media_past_the_limit_is_413() -> None:
    head, tail = multipart_body("b", b"application/octet-stream", None)
    with pytest.raises(MatrixError) as raised:
        RemoteMediaFetcher._unwrap(
            "remote.example", "multipart/mixed; boundary=b", head + b"x" * 11 + tail, 10
        )
    assert (raised.value.status, raised.value.errcode) == (413, "M_TOO_LARGE")


@pytest.mark.parametrize("media_id", ["../x", "a/b", "a.b", "%2e", "", "x" * 256, "a\x00b", "ü"])
def test_media_ids_that_could_leave_their_path_are_refused(media_id: str) -> None:
    with pytest.raises(MatrixError) as raised:
        check_media_id(media_id)
    assert raised.value.status == 400


@pytest.mark.parametrize("alias", ["#a:b/c", "#a:", "a:b.example", "#a", "#a:" + "b" * 300, "#a:b:99999"])
def test_aliases_that_name_no_server_are_refused(alias: str) -> None:
    with pytest.raises(MatrixError) as raised:
        alias_server(alias)
    assert raised.value.status == 400


def test_a_remote_room_list_passes_on_only_the_spec_fields() -> None:
    page = _clean_page(
        {
            "chunk": [
                {"room_id": "!a:x", "name": "A", "num_joined_members": 3, "evil": "<script>", "topic": 7},
                {"name": "no room id"},
                "not an object",
                {"room_id": "!b:x", "num_joined_members": True, "world_readable": "yes"},
            ],
            "next_batch": "n2",
            "total_room_count_estimate": "many",
            "extra": 1,
        }
    )
    assert page == {
        "chunk": [
            {
                "room_id": "!a:x",
                "name": "A",
                "num_joined_members": 3,
                "world_readable": False,
                "guest_can_join": False,
            },
            {"room_id": "!b:x", "num_joined_members": 0, "world_readable": False, "guest_can_join": False},
        ],
        "next_batch": "n2",
    }


class _Answers:
    """A remote that answers every media request with one status and body."""

    def __init__(self, status: int, body: bytes) -> None:
        self.status, self.body = status, body

    async def get_raw(self, *_: object) -> tuple[int, str | None, bytes]:
        return self.status, "application/json", self.body


@pytest_twisted.ensureDeferred
async def test_a_404_nested_past_the_parsers_depth_is_a_404() -> None:
    """The 404's body is read for M_UNRECOGNIZED (to try the legacy route); nested deeper
    than the JSON parser goes, it raised RecursionError: a 500 for our client."""
    fetcher = RemoteMediaFetcher(_Answers(404, b"[" * 100_000))  # type: ignore[arg-type]
    with pytest.raises(MatrixError) as raised:
        await fetcher.fetch("remote.example", "abc", 1000)
    assert (raised.value.status, raised.value.errcode) == (404, "M_NOT_FOUND")
