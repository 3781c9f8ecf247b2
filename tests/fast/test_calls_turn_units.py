"""The calls plugin's TURN credentials and config (plugins/calls), without sockets.

The HMAC is checked against one computed here independently (coturn's REST-API scheme:
base64 HMAC-SHA1 of `expiry:user` keyed with the shared secret); coturn itself checks
the same credentials in tests/test_calls_coturn.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from homeserver.plugins import PluginConfigError
from plugins.calls.config import SECRET_ENV, parse_calls_config
from plugins.calls.turn import turn_credentials

URIS = [
    "turn:turn.example.org:3478?transport=udp",
    "turn:turn.example.org:3478?transport=tcp",
    "turns:turn.example.org:5349?transport=tcp",
]


def test_credentials_follow_coturns_rest_scheme() -> None:
    config = parse_calls_config({"turn": {"uris": URIS, "shared_secret": "s3cret", "ttl": "1h"}})
    creds = turn_credentials(config.turn, "@alice:example.org", now_s=1_700_000_000.7)
    assert creds["username"] == "1700003600:@alice:example.org"
    expected = hmac.new(b"s3cret", b"1700003600:@alice:example.org", hashlib.sha1).digest()
    assert base64.b64decode(creds["password"]) == expected
    assert creds["uris"] == URIS and creds["ttl"] == 3600


def test_no_uris_means_no_turn() -> None:
    assert not parse_calls_config({}).turn.enabled
    assert not parse_calls_config({"turn": {"uris": []}}).turn.enabled


def test_the_environment_secret_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, "from-env")
    config = parse_calls_config({"turn": {"uris": URIS[:1], "shared_secret": "from-file"}})
    assert config.turn.shared_secret == "from-env"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"turn": {"uris": URIS}}, "shared_secret"),
        ({"turn": {"uris": ["stun:example.org"], "shared_secret": "x"}}, "not a turn"),
        ({"turn": {"uris": "turn:example.org", "shared_secret": "x"}}, "list"),
        ({"turn": {"uris": ["turn:a?transport=sctp"], "shared_secret": "x"}}, "not a turn"),
        ({"turn": {"ttl": 0}}, "positive"),
        ({"turn": {"ttl": "soon"}}, "duration"),
        ({"turn": {"url": []}}, "unknown key"),
        ({"tunr": {}}, "unknown key"),
    ],
)
def test_bad_config_is_refused(raw: dict, message: str) -> None:
    with pytest.raises(PluginConfigError, match=message):
        parse_calls_config(raw)


def test_group_calls_focus() -> None:
    config = parse_calls_config({"group_calls": {"livekit_service_url": "https://lk-jwt.example.org/"}})
    assert config.livekit_service_url == "https://lk-jwt.example.org"
    assert parse_calls_config({}).livekit_service_url == ""
    for bad in ({"livekit_service_url": "lk-jwt.example.org"}, {"livekit_service_url": 5}, {"url": ""}):
        with pytest.raises(PluginConfigError):
            parse_calls_config({"group_calls": bad})
