"""Which spec versions /versions may promise: each version with the endpoints it added.

A client that reads `v1.N` in /versions assumes every endpoint of v1.1 ... v1.N exists
(js-sdk calls /threads from v1.4 on, every client switches to authenticated media at
v1.11: MATRIX-NOTES §0). So the server advertises a version only when it routes every
endpoint that version and all earlier ones added: the list is cut at the first version
with an endpoint missing, and that endpoint is logged once, so an operator (or a missing
plugin) can see why.

The table comes from the spec's `x-addedInMatrixVersion` annotations
(../shared/matrix-spec/client-server.json). Endpoints the spec leaves optional are not
required here; each is named with the reason in OPTIONAL.
"""

from __future__ import annotations

from collections.abc import Callable

R = "/_matrix/client/v3"
V1 = "/_matrix/client/v1"
ROOM = "!room:example.org"

# (version, endpoints added in it as (method, an example path)); r0.6.1 is the base
# every other test of this repository exercises.
SPEC_VERSIONS: list[tuple[str, tuple[tuple[str, str], ...]]] = [
    ("r0.6.1", ()),
    (
        "v1.1",
        (
            ("POST", f"{R}/knock/{ROOM}"),
            ("POST", f"{R}/keys/device_signing/upload"),
            ("POST", f"{R}/keys/signatures/upload"),
            ("GET", f"{R}/room_keys/version"),
            ("PUT", f"{R}/room_keys/keys/{ROOM}/session"),
        ),
    ),
    (
        "v1.2",
        (
            ("GET", f"{V1}/rooms/{ROOM}/hierarchy"),
            ("GET", f"{V1}/register/m.login.registration_token/validity"),
        ),
    ),
    ("v1.3", (("POST", f"{R}/refresh"), ("GET", f"{V1}/rooms/{ROOM}/relations/$event"))),
    ("v1.4", (("GET", f"{V1}/rooms/{ROOM}/threads"),)),
    ("v1.5", ()),
    ("v1.6", (("GET", f"{V1}/rooms/{ROOM}/timestamp_to_event"),)),
    (
        "v1.7",
        (
            ("POST", "/_matrix/media/v1/create"),
            ("PUT", "/_matrix/media/v3/upload/example.org/media"),
        ),
    ),
    ("v1.8", ()),  # room version 11 (ROOM_VERSIONS in versions.py)
    ("v1.9", ()),
    ("v1.10", ()),
    (
        "v1.11",
        (
            ("GET", "/_matrix/client/v1/media/config"),
            ("GET", "/_matrix/client/v1/media/download/example.org/media"),
            ("GET", "/_matrix/client/v1/media/thumbnail/example.org/media"),
        ),
    ),
]

# Added by a version but optional for a server, so not required above.
OPTIONAL = {
    "GET /_matrix/client/v3/login/sso/redirect (v1.1)": "only for servers offering m.login.sso",
    "POST /_matrix/client/v1/appservice/{id}/ping (v1.7)": "only for servers with application services",
    "POST /_matrix/client/v1/login/get_token (v1.7)": "capability m.get_login_token says it is off",
    "GET /.well-known/matrix/support (v1.10)": "a server may have no support contacts (404)",
    "GET /_matrix/client/v1/media/preview_url (v1.11)": "URL previews are the operator's choice",
}


def supported_versions(serves: Callable[[str, str], bool]) -> tuple[list[str], str | None]:
    """The versions whose endpoints (and all earlier versions' endpoints) `serves(method, path)`,
    and what cut the list: "v1.N: METHOD PATH" for the first missing endpoint, or None."""
    out: list[str] = []
    for version, endpoints in SPEC_VERSIONS:
        for method, path in endpoints:
            if not serves(method, path):
                return out, f"{version}: {method} {path}"
        out.append(version)
    return out, None
