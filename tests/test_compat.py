"""Older clients: what /versions promises, the r0 media paths, the `unstable` aliases.

Element Web 1.11 (matrix-js-sdk 26, libolm) uploads to /_matrix/media/r0/upload, reads
/_matrix/media/r0/config, posts cross-signing keys to /_matrix/client/unstable/keys/...
and sets cross-signing up only when `org.matrix.e2e_cross_signing` is advertised. These
tests make the same requests against a real server process.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import quote

import pytest
import requests
from conftest import ServerProcess, start_server_process
from signedjson.sign import sign_json
from test_e2ee_api import CrossSigning, new_user
from test_media import auth, jpeg, media_path, media_plugin, upload_ok

from homeserver.api.client.spec_versions import SPEC_VERSIONS

UNSTABLE = "/_matrix/client/unstable"
R0_MEDIA = "/_matrix/media/r0"


@pytest.fixture(scope="module")
def media_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_server_process(tmp_path_factory.mktemp("compat"), media_plugin())
    yield server
    server.stop()


@pytest.fixture(scope="module")
def legacy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_server_process(
        tmp_path_factory.mktemp("compat-legacy"), media_plugin(legacy_unauthenticated_download=True)
    )
    yield server
    server.stop()


def versions(server: ServerProcess) -> dict[str, object]:
    r = requests.get(server.url("/_matrix/client/versions"), timeout=10)
    assert r.status_code == 200, r.text
    body: dict[str, object] = r.json()
    return body


def error_of(r: requests.Response) -> tuple[int, str | None]:
    try:
        return r.status_code, r.json().get("errcode")
    except ValueError:
        return r.status_code, None


# /versions ---------------------------------------------------------------------------


def test_every_advertised_version_has_its_endpoints(
    server: ServerProcess, media_server: ServerProcess
) -> None:
    """Each endpoint of every advertised version answers (an auth or input error at most,
    never 404/405 M_UNRECOGNIZED); the first version not advertised has one that does not."""
    for srv in (server, media_server):
        advertised = versions(srv)["versions"]
        assert isinstance(advertised, list) and advertised[0] == "r0.6.1"
        order = [v for v, _ in SPEC_VERSIONS]
        assert advertised == order[: len(advertised)]
        for version, endpoints in SPEC_VERSIONS[: len(advertised)]:
            for method, path in endpoints:
                r = requests.request(method, srv.url(path), timeout=10)
                assert error_of(r)[1] != "M_UNRECOGNIZED", (version, method, path, r.text)
        if len(advertised) < len(SPEC_VERSIONS):
            _, missing = SPEC_VERSIONS[len(advertised)]
            answers = [requests.request(m, srv.url(p), timeout=10) for m, p in missing]
            assert any(error_of(r) in ((404, "M_UNRECOGNIZED"), (405, "M_UNRECOGNIZED")) for r in answers)
            cut = order[len(advertised)]
            assert srv.wait_for_log(f"/versions stops at {advertised[-1]}: {cut}") != ""
            assert f"/versions stops at {advertised[-1]}: {cut}" in srv.log_text()


def test_versions_without_the_media_plugin_stop_before_v1_7(server: ServerProcess) -> None:
    # Authenticated media (v1.11) and asynchronous uploads (v1.7) are the media plugin's.
    advertised = versions(server)["versions"]
    assert isinstance(advertised, list)
    assert "v1.7" not in advertised and "v1.11" not in advertised


def test_unstable_features_advertise_cross_signing(server: ServerProcess) -> None:
    features = versions(server)["unstable_features"]
    assert isinstance(features, dict)
    assert features["org.matrix.e2e_cross_signing"] is True
    assert features["org.matrix.msc2432"] is True
    assert features["org.matrix.msc2285.stable"] is True
    # The test config turns default encryption off; no preset is forced.
    assert features["io.element.e2ee_forced.private"] is False


def test_registration_token_validity(start_server: object) -> None:
    server = start_server({"registration": {"tokens": ["letmein-1234"]}})  # type: ignore[operator]
    path = "/_matrix/client/v1/register/m.login.registration_token/validity"
    ok = requests.get(server.url(path), params={"token": "letmein-1234"}, timeout=10)
    bad = requests.get(server.url(path), params={"token": "guess"}, timeout=10)
    assert (ok.status_code, ok.json()) == (200, {"valid": True})
    assert (bad.status_code, bad.json()) == (200, {"valid": False})
    missing = requests.get(server.url(path), timeout=10)
    assert error_of(missing) == (400, "M_MISSING_PARAM")


# The unstable aliases --------------------------------------------------------------------


def test_cross_signing_and_backup_through_the_unstable_prefix(server: ServerProcess) -> None:
    """What Element Web 1.11's secure-backup set-up posts, at the paths it posts to."""
    alice = new_user(server, "oldweb")
    alice.upload_keys()
    headers = {"Authorization": f"Bearer {alice.token}"}
    xs = CrossSigning.make(alice.user_id)

    r = requests.post(server.url(f"{UNSTABLE}/keys/device_signing/upload"), json=xs.upload_body(), timeout=10)
    assert error_of(r) == (401, "M_MISSING_TOKEN")
    r = requests.post(
        server.url(f"{UNSTABLE}/keys/device_signing/upload"),
        json=xs.upload_body(),
        headers=headers,
        timeout=10,
    )
    assert r.status_code == 200, r.text

    device = {k: v for k, v in alice.device_keys().items() if k != "signatures"}
    signed = sign_json(device, alice.user_id, xs.self_signing)
    r = requests.post(
        server.url(f"{UNSTABLE}/keys/signatures/upload"),
        json={alice.user_id: {alice.device_id: signed}},
        headers=headers,
        timeout=10,
    )
    assert (r.status_code, r.json()) == (200, {"failures": {}})

    # The same keys are seen through the stable path.
    query = alice.query([alice.user_id])
    assert query["master_keys"][alice.user_id]["keys"] == xs.upload_body()["master_key"]["keys"]
    sigs = query["device_keys"][alice.user_id][alice.device_id]["signatures"][alice.user_id]
    assert f"ed25519:{xs.self_signing.version}" in sigs

    # Key backup under unstable: none yet (404 M_NOT_FOUND, what clients key on), then one.
    r = requests.get(server.url(f"{UNSTABLE}/room_keys/version"), headers=headers, timeout=10)
    assert error_of(r) == (404, "M_NOT_FOUND")
    body = {"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": {"public_key": "abc"}}
    r = requests.post(server.url(f"{UNSTABLE}/room_keys/version"), json=body, headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    version = r.json()["version"]
    r = requests.get(
        server.url(f"/_matrix/client/v3/room_keys/version/{version}"), headers=headers, timeout=10
    )
    assert r.json()["auth_data"] == {"public_key": "abc"}

    # Endpoints that never had an unstable form are not aliased.
    r = requests.get(server.url(f"{UNSTABLE}/account/whoami"), headers=headers, timeout=10)
    assert error_of(r) == (404, "M_UNRECOGNIZED")


def test_msc2432_aliases_and_unstable_relations(server: ServerProcess) -> None:
    alice, bob = new_user(server, "fluffy"), new_user(server, "outsider")
    a = {"Authorization": f"Bearer {alice.token}"}
    r = requests.post(
        server.url("/_matrix/client/v3/createRoom"),
        json={"room_alias_name": alice.localpart},
        headers=a,
        timeout=10,
    )
    room = r.json()["room_id"]
    path = f"{UNSTABLE}/org.matrix.msc2432/rooms/{quote(room)}/aliases"
    r = requests.get(server.url(path), headers=a, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["aliases"] == [f"#{alice.localpart}:{server.server_name}"]
    # Same rules as the stable path: a non-member of a room that is not world-readable may not.
    r = requests.get(server.url(path), headers={"Authorization": f"Bearer {bob.token}"}, timeout=10)
    assert error_of(r) == (403, "M_FORBIDDEN")

    root = requests.put(
        server.url(f"/_matrix/client/v3/rooms/{quote(room)}/send/m.room.message/t1"),
        json={"msgtype": "m.text", "body": "root"},
        headers=a,
        timeout=10,
    ).json()["event_id"]
    reply = requests.put(
        server.url(f"/_matrix/client/v3/rooms/{quote(room)}/send/m.reaction/t2"),
        json={"m.relates_to": {"rel_type": "m.annotation", "event_id": root, "key": "👍"}},
        headers=a,
        timeout=10,
    ).json()["event_id"]
    r = requests.get(
        server.url(f"{UNSTABLE}/rooms/{quote(room)}/relations/{quote(root)}"), headers=a, timeout=10
    )
    assert r.status_code == 200, r.text
    assert [e["event_id"] for e in r.json()["chunk"]] == [reply]
    r = requests.get(
        server.url(f"{UNSTABLE}/rooms/{quote(room)}/relations/{quote(root)}"),
        headers={"Authorization": f"Bearer {bob.token}"},
        timeout=10,
    )
    assert error_of(r)[0] == 403


# The r0 media paths -----------------------------------------------------------------------


def test_r0_upload_and_config_need_a_token(media_server: ServerProcess) -> None:
    user = new_user(media_server, "r0")
    r = requests.post(media_server.url(f"{R0_MEDIA}/upload"), data=jpeg(16, 16), timeout=10)
    assert error_of(r) == (401, "M_MISSING_TOKEN")
    r = requests.get(media_server.url(f"{R0_MEDIA}/config"), timeout=10)
    assert error_of(r) == (401, "M_MISSING_TOKEN")

    r = requests.get(media_server.url(f"{R0_MEDIA}/config"), headers=auth(user.token), timeout=10)
    assert r.json() == {"m.upload.size": 2 * 1024 * 1024}
    r = requests.post(
        media_server.url(f"{R0_MEDIA}/upload?filename=cat.jpg"),
        data=jpeg(40, 30),
        headers={**auth(user.token), "Content-Type": "image/jpeg"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    mxc = r.json()["content_uri"]
    # What was uploaded through r0 downloads through authenticated media, to its uploader.
    r = requests.get(
        media_server.url(f"/_matrix/client/v1/media/download/{media_path(mxc)}"),
        headers=auth(user.token),
        timeout=10,
    )
    assert r.status_code == 200 and r.content == jpeg(40, 30)

    # The same size limit as v3, enforced while the body arrives.
    r = requests.post(
        media_server.url(f"{R0_MEDIA}/upload"),
        data=b"x" * (2 * 1024 * 1024 + 1),
        headers=auth(user.token),
        timeout=30,
    )
    assert error_of(r) == (413, "M_TOO_LARGE")


def test_r0_download_follows_the_legacy_switch(
    media_server: ServerProcess, legacy_server: ServerProcess
) -> None:
    # Off (the default): unauthenticated downloads are not served under r0 either.
    user = new_user(media_server, "r0off")
    mxc = upload_ok(media_server, user.token, jpeg(16, 16), "image/jpeg")
    for path in (f"download/{media_path(mxc)}", f"thumbnail/{media_path(mxc)}?width=8&height=8"):
        r = requests.get(media_server.url(f"{R0_MEDIA}/{path}"), timeout=10)
        assert error_of(r) == (404, "M_UNRECOGNIZED")

    # On: r0 serves what v3 serves, and refuses what v3 refuses.
    user = new_user(legacy_server, "r0on")
    mxc = upload_ok(legacy_server, user.token, jpeg(64, 48), "image/jpeg")
    r = requests.get(legacy_server.url(f"{R0_MEDIA}/download/{media_path(mxc)}"), timeout=10)
    assert r.status_code == 200 and r.content == jpeg(64, 48)
    assert r.headers["Content-Security-Policy"].startswith("sandbox")
    r = requests.get(
        legacy_server.url(f"{R0_MEDIA}/thumbnail/{media_path(mxc)}"),
        params={"width": 32, "height": 32, "method": "scale"},
        timeout=10,
    )
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("image/")
    r = requests.get(legacy_server.url(f"{R0_MEDIA}/download/{legacy_server.server_name}/nope"), timeout=10)
    assert error_of(r) == (404, "M_NOT_FOUND")
    r = requests.get(
        legacy_server.url(f"{R0_MEDIA}/thumbnail/{media_path(mxc)}?width=0&height=8"), timeout=10
    )
    assert error_of(r) == (400, "M_INVALID_PARAM")


def test_r0_preview_url_needs_a_token(media_server: ServerProcess) -> None:
    r = requests.get(
        media_server.url(f"{R0_MEDIA}/preview_url"), params={"url": "http://127.0.0.2/"}, timeout=10
    )
    assert error_of(r) == (401, "M_MISSING_TOKEN")
    user = new_user(media_server, "r0prev")
    r = requests.get(media_server.url(f"{R0_MEDIA}/preview_url"), headers=auth(user.token), timeout=10)
    assert error_of(r) == (400, "M_MISSING_PARAM")
