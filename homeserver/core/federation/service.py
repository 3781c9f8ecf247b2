"""The federation parts, wired once (HomeServer.federation)."""

from __future__ import annotations

from typing import Any

from signedjson.types import SigningKey

from homeserver.config import FederationConfig
from homeserver.core.clock import Clock
from homeserver.core.federation.authenticator import RequestAuthenticator
from homeserver.core.federation.client import FederationClient
from homeserver.core.federation.directory_queries import DirectoryQueries
from homeserver.core.federation.keys import KeyRing, Notary, OwnKeys
from homeserver.core.federation.media import RemoteMediaFetcher
from homeserver.core.federation.membership import FederatedMembership
from homeserver.core.federation.origin_limits import OriginLimits, Release
from homeserver.core.federation.queries import ProfileQueries
from homeserver.core.ratelimit import RateLimiter
from homeserver.storage import Storage


class Federation:
    # Joins, leaves and knocks both ways; set by the server once the event service exists.
    membership: FederatedMembership

    def __init__(
        self,
        server_name: str,
        signing_key: SigningKey,
        config: FederationConfig,
        storage: Storage,
        clock: Clock,
        reactor: Any,
        ratelimiter: RateLimiter,
    ) -> None:
        self.config = config
        self.own_keys = OwnKeys(server_name, signing_key, config, clock)
        self.client = FederationClient(reactor, clock, server_name, signing_key, config)

        async def get_unsigned(server: str, path: str) -> Any:
            return await self.client.get_json(server, path)

        self.key_ring = KeyRing(
            storage.server_keys,
            clock,
            self.own_keys,
            get_unsigned,
            self.client.post_json,
            config.trusted_key_servers,
        )
        self.notary = Notary(self.own_keys, self.key_ring, clock)
        self.authenticator = RequestAuthenticator(server_name, self.key_ring, clock)
        self.origin_limits = OriginLimits(ratelimiter, config)
        self.profiles = ProfileQueries(server_name, storage, self.client, clock)
        self.media = RemoteMediaFetcher(self.client)
        # Set by the server once the room directory exists (it needs the rooms).
        self.directory: DirectoryQueries

    async def admit(
        self, method: str, uri: str, authorization: str | None, content: Any
    ) -> tuple[str, Release]:
        """An inbound request's checked origin, through that origin's limits: (origin, the
        release to call once it is answered). 401 M_UNAUTHORIZED or 429 M_LIMIT_EXCEEDED."""
        origin = await self.authenticator.origin_of(method, uri, authorization, content)
        return origin, await self.origin_limits.admit(origin)

    def well_known(self) -> dict[str, str] | None:
        """Our /.well-known/matrix/server answer, when delegation is configured."""
        return {"m.server": self.config.well_known_server} if self.config.well_known_server else None

    def version(self) -> dict[str, Any]:
        from homeserver import __version__

        return {"server": {"name": "homeserver", "version": __version__}}
