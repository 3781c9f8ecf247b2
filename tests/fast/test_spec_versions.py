"""What /versions promises, from what is routed (api/client/spec_versions.py)."""

from __future__ import annotations

from homeserver.api.client.spec_versions import SPEC_VERSIONS, supported_versions

ALL = [v for v, _ in SPEC_VERSIONS]


def test_every_endpoint_routed_advertises_every_version() -> None:
    assert supported_versions(lambda method, path: True) == (ALL, None)


def test_a_missing_endpoint_cuts_its_version_and_every_later_one() -> None:
    def serves(method: str, path: str) -> bool:
        return not path.endswith("/threads")

    advertised, cut = supported_versions(serves)
    assert advertised == ALL[: ALL.index("v1.4")]
    assert cut == "v1.4: GET /_matrix/client/v1/rooms/!room:example.org/threads"
    # v1.6 and v1.11 are routed in this case, yet not advertised: versions are cumulative.
    assert "v1.11" not in advertised


def test_nothing_routed_leaves_the_base_version() -> None:
    advertised, cut = supported_versions(lambda method, path: False)
    assert advertised == ["r0.6.1"] and cut is not None and cut.startswith("v1.1: ")
