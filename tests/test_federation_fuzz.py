"""The federation and key routes the server has, fuzzed from the spec's own Server-Server
definitions (tests/matrix-spec/server-server.json): requests signed by another of our
servers, with paths, query parameters and bodies generated from each operation's schemas
(and odd values besides), never answer a server error, and answer what the spec defines
where it defines the status. Unsigned, forged, misaddressed and tampered variants of
every signed operation are refused with 401 M_UNAUTHORIZED.

Which operations are fuzzed comes from the router: a route added later is fuzzed as soon
as it exists. The seed and the example count are fixed (FUZZ_EXAMPLES raises the count).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import pytest
import requests
from federation_harness import FederatedServer, TestCA, make_ca, start_federated_server
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from openapi_core import OpenAPI
from openapi_core.templating.paths.exceptions import PathError
from openapi_core.templating.responses.exceptions import ResponseNotFound
from openapi_core.testing import MockRequest, MockResponse
from signedjson.key import generate_signing_key, read_signing_keys

from homeserver.core.federation.request_auth import authorization_header
from plugins.media import MediaPlugin

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
SPEC_FILE = Path(__file__).resolve().parent / "matrix-spec" / "server-server.json"
SPEC_JSON: dict[str, Any] = json.loads(SPEC_FILE.read_text())
SPEC = OpenAPI.from_file_path(str(SPEC_FILE))
METHODS = ("get", "put", "post", "delete")
ODD_STRINGS = ["", " ", "é☃", "x" * 3000, "@x", "!x:y", "$x", "..", "a/b", "%", "-1", "9" * 30, "\x01"]
MEDIA_PLUGIN = {"module": "plugins.media.MediaPlugin", "config": {}}
GENEROUS = {"rc_requests": {"per_second": 10_000, "burst": 100_000}, "rc_concurrent": 50}


def served_operations(tmp_path: Path) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, spec path, operation) of every spec operation the router serves."""
    from twisted.internet import reactor

    from homeserver.config import parse_config
    from homeserver.server import HomeServer

    hs = HomeServer(parse_config({"server_name": "t.example", "data_dir": str(tmp_path)}, env={}), reactor)
    # Plugins register their routes when they start; the fuzzed servers load these, so
    # the spec's operations under their federation prefixes are theirs to answer.
    plugin_prefixes = tuple(p for p in MediaPlugin.PATH_PREFIXES if p.startswith("/_matrix/federation/"))
    try:
        found = []
        for path, item in SPEC_JSON["paths"].items():
            concrete = path.replace("{", "x").replace("}", "")
            for method in METHODS:
                if method in item and (
                    hs.router.serves(method.upper(), concrete) or path.startswith(plugin_prefixes)
                ):
                    found.append((method.upper(), path, item[method]))
        return found
    finally:
        hs.storage.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    ca: TestCA = make_ca(tmp_path_factory.mktemp("ca"))
    a = start_federated_server(
        tmp_path_factory.mktemp("hs-a"), ca, {"federation": GENEROUS, "plugins": [MEDIA_PLUGIN]}
    )
    b = start_federated_server(tmp_path_factory.mktemp("hs-b"), ca, {"federation": GENEROUS})
    alice_account = a.process.register("alice_fuzz")
    alice = alice_account["user_id"]
    r = requests.post(
        a.process.url("/_matrix/media/v3/upload"),
        data=b"fuzz media",
        headers={"Authorization": f"Bearer {alice_account['access_token']}", "Content-Type": "text/plain"},
        timeout=30,
    )
    media_id = r.json()["content_uri"].rsplit("/", 1)[1]
    key_file = (b.process.data_dir / "signing.key").read_text().splitlines()
    yield {
        "a": a,
        "b": b,
        "b_key": read_signing_keys(key_file)[0],
        "operations": served_operations(tmp_path_factory.mktemp("routes")),
        # Real values for the parameters the spec names, used most of the time.
        "places": {
            "user_id": [alice, f"@nobody:{a.server_name}", f"@bob:{b.server_name}"],
            "userId": [alice],
            "serverName": [b.server_name, a.server_name, "localhost:1"],
            "field": ["displayname", "avatar_url"],
            "mediaId": [media_id],
        },
    }
    for server in (a, b):
        server.stop()


def from_schema(schema: Any, depth: int = 0) -> st.SearchStrategy[Any]:
    """Values shaped by a JSON schema (the parts the spec uses), often its own example."""
    if not isinstance(schema, dict) or depth > 5:
        return json_values()
    shaped = _shaped(schema, depth)
    if "example" in schema:
        return st.one_of(st.just(schema["example"]), shaped)
    return shaped


def _shaped(schema: dict[str, Any], depth: int) -> st.SearchStrategy[Any]:
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    for combiner in ("oneOf", "anyOf"):
        if combiner in schema:
            return st.one_of([from_schema(s, depth + 1) for s in schema[combiner]])
    if "allOf" in schema:
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            merged = {
                **merged,
                **part,
                "properties": {**merged.get("properties", {}), **part.get("properties", {})},
            }
        return from_schema(merged, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([_shaped({**schema, "type": k}, depth) for k in kind])
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        required = [k for k in schema.get("required", []) if k in props]
        optional = [k for k in props if k not in required]
        extra = schema.get("additionalProperties")
        fixed = st.fixed_dictionaries(
            {k: from_schema(props[k], depth + 1) for k in required},
            optional={k: from_schema(props[k], depth + 1) for k in optional},
        )
        if isinstance(extra, dict):
            more = st.dictionaries(st.text(max_size=12), from_schema(extra, depth + 1), max_size=3)
            return st.builds(lambda a, b: {**b, **a}, fixed, more)
        return fixed
    if kind == "array":
        return st.lists(from_schema(schema.get("items"), depth + 1), max_size=3)
    if kind == "string":
        return st.text(max_size=20) | st.sampled_from(ODD_STRINGS)
    if kind == "integer":
        return st.integers(-(2**53) + 1, 2**53 - 1) | st.sampled_from([0, -1, 2**63])
    if kind == "number":
        return st.floats(allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return json_values()


def json_values() -> st.SearchStrategy[Any]:
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(-(2**60), 2**60)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=12)
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
        max_leaves=10,
    )


def draw_request(world: dict[str, Any], path: str, operation: dict[str, Any], data: Any) -> tuple[str, Any]:
    """The URI (path and query) and JSON body of one generated request."""
    query: dict[str, str] = {}
    for param in operation.get("parameters", []):
        name, where, schema = param["name"], param["in"], param.get("schema", {})
        real = world["places"].get(name)
        choice = data.draw(st.integers(0, 3), label=f"{name} kind")
        if real and choice < 2:
            value: Any = data.draw(st.sampled_from(real), label=name)
        else:
            value = data.draw(from_schema(schema), label=name)
        if isinstance(value, bool):
            value = str(value).lower()
        if where == "path":
            path = path.replace("{" + name + "}", quote(str(value), safe=""))
        elif where == "query" and (param.get("required") or data.draw(st.booleans(), label=f"{name} sent")):
            query[name] = value if isinstance(value, str) else json.dumps(value)
    body = None
    content = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if content is not None:
        body = data.draw(from_schema(content.get("schema")) | json_values(), label="body")
    return path + ("?" + urlencode(query) if query else ""), body


def send(
    world: dict[str, Any], method: str, uri: str, body: Any, authorization: str | None
) -> requests.Response:
    a: FederatedServer = world["a"]
    headers = {"Authorization": authorization} if authorization is not None else {}
    return requests.request(
        method, a.federation_url(uri), json=body, headers=headers, verify=str(a.ca.ca_file), timeout=30
    )


def signed_by_b(
    world: dict[str, Any], method: str, uri: str, body: Any, key: Any = None, to: str = ""
) -> str:
    b, a = world["b"], world["a"]
    return authorization_header(method, uri, b.server_name, to or a.server_name, key or world["b_key"], body)


def check_against_spec(method: str, r: requests.Response) -> None:
    u = urlsplit(r.url)
    request = MockRequest(f"{u.scheme}://{u.netloc}", method.lower(), u.path)
    response = MockResponse(r.content, r.status_code, content_type=r.headers.get("Content-Type", ""))
    try:
        SPEC.validate_response(request, response)
    except ResponseNotFound:
        pass  # a status the operation does not list (400 M_BAD_JSON, 401, 429...)
    except PathError:
        pass  # an odd segment ("a/b", "..") made a path the spec does not have


def test_the_fuzz_covers_what_the_server_serves(world: dict[str, Any]) -> None:
    served = {(method, path) for method, path, _ in world["operations"]}
    assert ("GET", "/_matrix/federation/v1/query/profile") in served
    assert ("POST", "/_matrix/key/v2/query") in served
    assert ("GET", "/_matrix/key/v2/server") in served
    assert ("GET", "/_matrix/federation/v1/query/directory") in served
    assert ("POST", "/_matrix/federation/v1/publicRooms") in served
    assert ("GET", "/_matrix/federation/v1/media/download/{mediaId}") in served


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@seed(20261218)
@given(data=st.data())
def test_generated_signed_requests_never_make_a_server_error(world: dict[str, Any], data: Any) -> None:
    # Drawn by name, so a failure prints the route, not the spec's whole operation.
    method, path = data.draw(st.sampled_from([(m, p) for m, p, _ in world["operations"]]), label="operation")
    operation = next(op for m, p, op in world["operations"] if (m, p) == (method, path))
    uri, body = draw_request(world, path, operation, data)
    signs = bool(operation.get("security")) or data.draw(st.booleans(), label="signed anyway")
    r = send(world, method, uri, body, signed_by_b(world, method, uri, body) if signs else None)
    what = f"{method} {uri} {str(body)[:300]}: {r.status_code} {r.text[:300]}"
    assert r.status_code < 500, what
    if r.headers.get("Content-Type", "").startswith("application/json") and r.status_code >= 400:
        assert isinstance(r.json().get("errcode"), str), what
    check_against_spec(method, r)


def test_unsigned_forged_and_tampered_requests_are_refused(world: dict[str, Any]) -> None:
    """Each signed operation, with a request the genuine signature lets through first."""
    a, b = world["a"], world["b"]
    signed_ops = [(m, p, op) for m, p, op in world["operations"] if op.get("security")]
    assert signed_ops
    forger = generate_signing_key(
        next(iter(b.get("/_matrix/key/v2/server").json()["verify_keys"])).split(":")[1]
    )
    for method, path, _ in signed_ops:
        uri = path.replace("{", "").replace("}", "")
        if path.endswith("/query/profile"):
            uri = f"{path}?user_id={quote(world['places']['user_id'][0], safe='')}"
        body = {"fuzz": 1} if method in ("PUT", "POST") else None
        genuine = send(world, method, uri, body, signed_by_b(world, method, uri, body))
        assert genuine.status_code != 401, (method, uri, genuine.text)
        variants = {
            "unsigned": None,
            "forged": signed_by_b(world, method, uri, body, key=forger),
            "another destination": signed_by_b(world, method, uri, body, to=b.server_name),
            "another uri": signed_by_b(world, method, uri + "&x=1" if "?" in uri else uri + "?x=1", body),
            "another method": signed_by_b(world, "DELETE", uri, body),
            "bearer": "Bearer abc",
        }
        if body is not None:
            variants["another body"] = signed_by_b(world, method, uri, {"fuzz": 2})
        for name, authorization in variants.items():
            r = send(world, method, uri, body, authorization)
            assert (r.status_code, r.json().get("errcode")) == (401, "M_UNAUTHORIZED"), (
                name,
                method,
                uri,
                r.text,
            )
    assert "Traceback" not in a.process.log_text()
