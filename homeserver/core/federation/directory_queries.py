"""Room directory queries over federation, both ways (spec: Server-Server API, "Query:
directory" and "Public Room List"): what other servers get from us, and what our
clients get when they ask about another server's alias or room list."""

from __future__ import annotations

from typing import Any

from homeserver.core.clock import Clock
from homeserver.core.directory import DirectoryService
from homeserver.core.federation.client import FederationClient, RemoteError
from homeserver.core.federation.discovery import split_server_name
from homeserver.errors import InvalidParam, MatrixError, MissingParam

# An alias's room rarely changes; a short cache spares the remote a room list's worth of
# lookups without keeping a moved alias wrong for long. Errors are not cached.
REMOTE_ALIAS_CACHE_S = 30.0
_CACHE_MAX = 10_000
# Bounds on what other people's input makes us send or accept (an alias is at most 255
# bytes by the spec; a search term past this is a probe, not a search).
MAX_ALIAS_LENGTH = 255
MAX_SEARCH_TERM = 512
MAX_SERVERS_LISTED = 50


def alias_server(alias: str) -> str:
    """The server part of `#local:server`, or 400 M_INVALID_PARAM."""
    if not alias.startswith("#") or ":" not in alias or len(alias.encode()) > MAX_ALIAS_LENGTH:
        raise InvalidParam(f"{alias[:64]!r} is not a room alias")
    return checked_server(alias.split(":", 1)[1])


def checked_server(server: str) -> str:
    """`server` if it is a server name, else 400 M_INVALID_PARAM (before anything is asked)."""
    try:
        split_server_name(server)
    except ValueError:
        raise InvalidParam(f"{server[:64]!r} is not a server name") from None
    if len(server) > MAX_ALIAS_LENGTH:
        raise InvalidParam("The server name is too long")
    return server


def passed_on(error: RemoteError) -> MatrixError:
    """A remote's error as our client sees it: its 404 stays a 404 (with its errcode);
    anything else is the other server's failure, a 502."""
    if error.status == 404:
        return MatrixError(error.message, error.errcode, status=404)
    return MatrixError(f"{error.server_name} answered {error.status}: {error.message[:200]}", status=502)


class DirectoryQueries:
    def __init__(
        self, server_name: str, directory: DirectoryService, client: FederationClient, clock: Clock
    ) -> None:
        self.server_name = server_name
        self.directory = directory
        self.client = client
        self.clock = clock
        self._aliases: dict[str, tuple[float, dict[str, Any]]] = {}

    # Served to other servers ---------------------------------------------------------

    async def answer_alias(self, alias: str | None) -> dict[str, Any]:
        """GET /_matrix/federation/v1/query/directory: our alias's room and the servers
        that can join it (this one)."""
        if not alias:
            raise MissingParam("'room_alias' is required")
        if alias_server(alias) != self.server_name:
            raise InvalidParam("That alias is not on this server")
        room_id = await self.directory.room_for_alias(alias)
        return {"room_id": room_id, "servers": [self.server_name]}

    async def answer_public_rooms(
        self,
        limit: int | None,
        since: str | None,
        term: str | None,
        room_types: object = None,
        include_all_networks: bool = False,
        third_party_instance_id: str | None = None,
    ) -> dict[str, Any]:
        """/_matrix/federation/v1/publicRooms: our listed rooms. This server has no
        third-party networks: a request for one gets an empty page; `include_all_networks`
        changes nothing."""
        if term is not None and len(term) > MAX_SEARCH_TERM:
            raise InvalidParam(f"'generic_search_term' is longer than {MAX_SEARCH_TERM} characters")
        if third_party_instance_id is not None and not include_all_networks:
            return {"chunk": [], "total_room_count_estimate": 0}
        return await self.directory.public_rooms(limit, since, term, room_types)

    # Asked of other servers ---------------------------------------------------------

    async def remote_alias(self, alias: str) -> dict[str, Any]:
        """Another server's alias: {"room_id", "servers"}, kept REMOTE_ALIAS_CACHE_S.
        Its 404 is passed on; a server that cannot be reached is 502 (504 on a timeout)."""
        server = alias_server(alias)
        now = self.clock.seconds()
        cached = self._aliases.get(alias)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            answer = await self.client.get_json(
                server, "/_matrix/federation/v1/query/directory", {"room_alias": alias}
            )
        except RemoteError as e:
            raise passed_on(e) from None
        room_id = answer.get("room_id") if isinstance(answer, dict) else None
        servers = answer.get("servers") if isinstance(answer, dict) else None
        if not isinstance(room_id, str) or not room_id.startswith("!") or not isinstance(servers, list):
            raise MatrixError(f"{server} answered the alias query with something unusable", status=502)
        # The alias's own server first: it can certainly help us join.
        listed = [s for s in servers if isinstance(s, str) and s and len(s) <= MAX_ALIAS_LENGTH]
        ordered = [server] + [s for s in dict.fromkeys(listed) if s != server]
        result = {"room_id": room_id, "servers": ordered[:MAX_SERVERS_LISTED]}
        if len(self._aliases) >= _CACHE_MAX:
            self._aliases.clear()
        self._aliases[alias] = (now + REMOTE_ALIAS_CACHE_S, result)
        return result

    async def remote_public_rooms(
        self,
        server: str,
        limit: int | None,
        since: str | None,
        search_filter: dict[str, Any] | None,
        include_all_networks: bool,
        third_party_instance_id: str | None,
    ) -> dict[str, Any]:
        """Another server's public room list (POST when there is a filter, as Synapse
        does; GET otherwise). Not cached: pages move."""
        path = "/_matrix/federation/v1/publicRooms"
        checked_server(server)
        try:
            if search_filter:
                body: dict[str, Any] = {"filter": search_filter, "include_all_networks": include_all_networks}
                if limit is not None:
                    body["limit"] = limit
                if since is not None:
                    body["since"] = since
                if third_party_instance_id is not None:
                    body["third_party_instance_id"] = third_party_instance_id
                answer = await self.client.post_json(server, path, body)
            else:
                query: dict[str, Any] = {"include_all_networks": "true" if include_all_networks else "false"}
                if limit is not None:
                    query["limit"] = str(limit)
                if since is not None:
                    query["since"] = since
                if third_party_instance_id is not None:
                    query["third_party_instance_id"] = third_party_instance_id
                answer = await self.client.get_json(server, path, query)
        except RemoteError as e:
            raise passed_on(e) from None
        if not isinstance(answer, dict) or not isinstance(answer.get("chunk"), list):
            raise MatrixError(f"{server} answered with a room list that is not one", status=502)
        return _clean_page(answer)


def _clean_page(answer: dict[str, Any]) -> dict[str, Any]:
    """Pass on only the spec's fields of a remote page, each of its type: another server's
    answer reaches our clients, and nothing odd should ride along."""
    chunk = []
    for room in answer["chunk"]:
        if not isinstance(room, dict) or not isinstance(room.get("room_id"), str):
            continue
        entry = {
            k: v
            for k, v in room.items()
            if (k in _STRING_FIELDS and isinstance(v, str))
            or (k in _BOOL_FIELDS and isinstance(v, bool))
            or (k == "num_joined_members" and isinstance(v, int) and not isinstance(v, bool))
        }
        entry.setdefault("num_joined_members", 0)
        entry.setdefault("world_readable", False)
        entry.setdefault("guest_can_join", False)
        chunk.append(entry)
    page: dict[str, Any] = {"chunk": chunk}
    for key in ("next_batch", "prev_batch"):
        if isinstance(answer.get(key), str):
            page[key] = answer[key]
    estimate = answer.get("total_room_count_estimate")
    if isinstance(estimate, int) and not isinstance(estimate, bool):
        page["total_room_count_estimate"] = estimate
    return page


_STRING_FIELDS = {"room_id", "name", "topic", "canonical_alias", "avatar_url", "join_rule", "room_type"}
_BOOL_FIELDS = {"world_readable", "guest_can_join"}
