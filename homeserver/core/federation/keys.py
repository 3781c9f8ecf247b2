"""Server keys (Server-Server API, "Retrieving server keys").

`OwnKeys` is what GET /_matrix/key/v2/server publishes. `KeyRing` finds other servers'
keys: from memory, the database, the server itself or a configured notary, fetching at
most once at a time per server and remembering a failure for a while. `Notary` answers
/_matrix/key/v2/query for other servers from what the key ring holds, with our signature
added to each server's own signed answer.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from signedjson.key import decode_verify_key_bytes
from signedjson.sign import SignatureVerifyException, sign_json, verify_signed_json
from signedjson.types import SigningKey, VerifyKey
from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger
from unpaddedbase64 import decode_base64

from homeserver.config import FederationConfig
from homeserver.core.clock import Clock
from homeserver.errors import BadJson, RemoteServerError
from homeserver.signing_key import key_id, verify_key_base64
from homeserver.storage.server_keys import ServerKeyStore, StoredKey

log = Logger()

log = Logger()

# A failed fetch is not tried again for this long: lookups meanwhile fail at once.
FAILURE_CACHE_S = 30.0
# Nor is a server asked again this soon after it answered: requests naming made-up key ids
# cannot make us fetch its keys over and over.
REFETCH_AFTER_S = 30.0
# Servers whose keys (or whose failure) are kept in memory at most; the database keeps all.
MAX_CACHED_SERVERS = 10_000
# Most servers and key ids one notary query may name.
MAX_QUERY_SERVERS = 100
# Of those, at most this many are fetched afresh (at once); the rest are answered from what
# is held: one query cannot make us send a hundred requests.
MAX_QUERY_FETCHES = 10

# get_json(server_name, path) -> the JSON answer of an unsigned GET to that server;
# post_json(server_name, path, body) likewise for a POST.
GetJson = Callable[[str, str], Awaitable[Any]]
PostJson = Callable[[str, str, Any], Awaitable[Any]]


class KeyNotFound(Exception):
    """No valid key with that id is known for that server, nor could one be fetched."""


class OwnKeys:
    def __init__(self, server_name: str, signing_key: SigningKey, config: FederationConfig, clock: Clock):
        self.server_name = server_name
        self.signing_key = signing_key
        self.config = config
        self.clock = clock

    def response(self) -> dict[str, Any]:
        """Our signed key answer, valid for `federation.key_validity` from now."""
        body = {
            "server_name": self.server_name,
            "valid_until_ts": self.clock.time_ms() + self.config.key_validity,
            "verify_keys": {key_id(self.signing_key): {"key": verify_key_base64(self.signing_key)}},
            "old_verify_keys": {
                kid: {"key": old.key, "expired_ts": old.expired_ts}
                for kid, old in self.config.old_verify_keys.items()
            },
        }
        return sign_json(body, self.server_name, self.signing_key)

    def sign(self, body: dict[str, Any]) -> dict[str, Any]:
        """`body` with our signature added beside those it has (the notary's countersignature)."""
        return sign_json(body, self.server_name, self.signing_key)


def _verify_key(kid: str, encoded: str) -> VerifyKey:
    return decode_verify_key_bytes(kid, decode_base64(encoded))


def parse_key_response(server_name: str, body: Any, now_ms: int) -> list[StoredKey]:
    """The keys of a server's answer to /_matrix/key/v2/server, after checking that it is
    about `server_name` and signed by every key it lists as current. ValueError if not."""
    if not isinstance(body, dict) or body.get("server_name") != server_name:
        raise ValueError(f"the key answer is not about {server_name}")
    valid_until = body.get("valid_until_ts")
    verify_keys = body.get("verify_keys")
    old_keys = body.get("old_verify_keys") or {}
    if not isinstance(valid_until, int) or not isinstance(verify_keys, dict) or not verify_keys:
        raise ValueError("the key answer lacks valid_until_ts or verify_keys")
    if not isinstance(old_keys, dict):
        raise ValueError("old_verify_keys must be an object")
    encoded = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    keys: list[StoredKey] = []
    for kid, entry in verify_keys.items():
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("key"), str)
            or not kid.startswith("ed25519:")
        ):
            continue  # an algorithm we do not know is skipped, not fatal
        try:
            verify_signed_json(body, server_name, _verify_key(kid, entry["key"]))
        except (SignatureVerifyException, ValueError) as e:
            raise ValueError(f"the key answer is not signed by its key {kid}: {e}") from None
        keys.append(StoredKey(server_name, kid, entry["key"], valid_until, None, encoded))
    if not keys:
        raise ValueError("the key answer has no ed25519 key")
    for kid, entry in old_keys.items():
        usable = isinstance(entry, dict) and isinstance(entry.get("key"), str)
        if usable and isinstance(entry.get("expired_ts"), int) and kid.startswith("ed25519:"):
            expired = entry["expired_ts"]
            if kid not in verify_keys:
                keys.append(StoredKey(server_name, kid, entry["key"], expired, expired, encoded))
    return keys


class KeyRing:
    def __init__(
        self,
        store: ServerKeyStore,
        clock: Clock,
        own: OwnKeys,
        get_json: GetJson,
        post_json: PostJson,
        trusted_key_servers: list[str],
    ) -> None:
        self.store = store
        self.clock = clock
        self.own = own
        self.get_json = get_json
        self.post_json = post_json
        self.trusted_key_servers = trusted_key_servers
        self._keys: dict[str, dict[str, StoredKey]] = {}  # server -> key id -> key
        self._fetching: dict[str, list[Deferred[None]]] = {}
        self._failed: dict[str, tuple[float, str]] = {}  # server -> (until, why)
        self._fetched: dict[str, float] = {}  # server -> when it last answered

    async def verify_key(self, server_name: str, kid: str, at_ts: int) -> VerifyKey:
        """`server_name`'s key `kid` if it was valid at `at_ts` (ms), fetching it if need be.

        A current key counts up to its valid_until_ts, an old one up to its expired_ts.
        Raises KeyNotFound."""
        if server_name == self.own.server_name:
            if kid == key_id(self.own.signing_key):
                return _verify_key(kid, verify_key_base64(self.own.signing_key))
            old = self.own.config.old_verify_keys.get(kid)
            if old is not None and old.expired_ts > at_ts:
                return _verify_key(kid, old.key)
            raise KeyNotFound(f"we have no key {kid}")
        key = await self._known(server_name, kid)
        if key is None or key.valid_until_ts < at_ts:
            last = self._fetched.get(server_name)
            if last is not None and self.clock.seconds() - last < REFETCH_AFTER_S:
                raise KeyNotFound(
                    f"{server_name} has no key {kid} valid at {at_ts} (asked {REFETCH_AFTER_S:.0f} s ago)"
                )
            await self.fetch(server_name)
            key = self._keys.get(server_name, {}).get(kid)
        if key is None:
            raise KeyNotFound(f"{server_name} has no key {kid}")
        if key.valid_until_ts < at_ts:
            raise KeyNotFound(f"{server_name}'s key {kid} was not valid at {at_ts}")
        return _verify_key(kid, key.verify_key)

    def cached_key(self, server_name: str, kid: str, at_ts: int) -> VerifyKey | None:
        """`verify_key` from memory only, None where it would fetch or refuse: the key lookup
        of the event layer's synchronous checks (events/pdu_checks.py), after `ensure_keys`."""
        if server_name == self.own.server_name:
            try:
                own = key_id(self.own.signing_key)
                if kid == own:
                    return _verify_key(kid, verify_key_base64(self.own.signing_key))
                old = self.own.config.old_verify_keys.get(kid)
                return _verify_key(kid, old.key) if old is not None and old.expired_ts > at_ts else None
            except ValueError:
                return None
        key = self._keys.get(server_name, {}).get(kid)
        if key is None or key.valid_until_ts < at_ts:
            return None
        try:
            return _verify_key(kid, key.verify_key)
        except ValueError:
            return None

    async def ensure_keys(self, wanted: list[tuple[str, str, int]]) -> None:
        """Load or fetch what `cached_key` will be asked for: (server, key id, time) each.
        Keys that cannot be had are left out (the signature check then fails), not raised."""
        for server_name, kid, at_ts in wanted:
            if self.cached_key(server_name, kid, at_ts) is None:
                try:
                    await self.verify_key(server_name, kid, at_ts)
                except (KeyNotFound, ValueError):
                    pass

    async def has_current_key(self, server_name: str, min_valid_until: int) -> bool:
        """Whether a current key of `server_name` valid until `min_valid_until` is held."""
        await self._known(server_name, "")
        held = self._keys.get(server_name, {}).values()
        return any(k.expired_ts is None and k.valid_until_ts >= min_valid_until for k in held)

    async def keys_of(
        self, server_name: str, min_valid_until: int, may_fetch: bool = True
    ) -> list[StoredKey]:
        """What we hold of `server_name`'s keys, fetched afresh (if `may_fetch`) when no
        current key is valid until `min_valid_until` (for the notary). A failed fetch leaves
        what was held."""
        if may_fetch and not await self.has_current_key(server_name, min_valid_until):
            try:
                await self.fetch(server_name)
            except KeyNotFound:
                pass
        return list(self._keys.get(server_name, {}).values())

    async def _known(self, server_name: str, kid: str) -> StoredKey | None:
        if server_name not in self._keys:
            if len(self._keys) >= MAX_CACHED_SERVERS:
                # Origins come from request headers: drop servers we hold no key of, then all.
                self._keys = {name: keys for name, keys in self._keys.items() if keys}
                if len(self._keys) >= MAX_CACHED_SERVERS:
                    self._keys.clear()
                self._fetched = {name: t for name, t in self._fetched.items() if name in self._keys}
            stored = await self.store.keys_of(server_name)
            self._keys.setdefault(server_name, {}).update({k.key_id: k for k in stored})
        return self._keys[server_name].get(kid)

    async def fetch(self, server_name: str) -> None:
        """Ask the server (then the notaries) for its keys; one fetch per server at a time.
        Raises KeyNotFound if nothing usable came back (remembered for FAILURE_CACHE_S)."""
        failed = self._failed.get(server_name)
        if failed is not None and failed[0] > self.clock.seconds():
            raise KeyNotFound(f"fetching {server_name}'s keys failed recently: {failed[1]}")
        waiting = self._fetching.get(server_name)
        if waiting is not None:
            d: Deferred[None] = Deferred()
            waiting.append(d)
            await d
            return
        self._fetching[server_name] = []
        error: Exception | None = None
        try:
            await self._fetch_now(server_name)
            self._failed.pop(server_name, None)
            self._fetched[server_name] = self.clock.seconds()
        except Exception as e:
            error = KeyNotFound(f"could not fetch {server_name}'s keys: {e}")
            if len(self._failed) >= MAX_CACHED_SERVERS:
                now = self.clock.seconds()
                self._failed = {name: f for name, f in self._failed.items() if f[0] > now}
            self._failed[server_name] = (self.clock.seconds() + FAILURE_CACHE_S, str(e))
        finally:
            for d in self._fetching.pop(server_name):
                if error is None:
                    d.callback(None)
                else:
                    d.errback(error)
        if error is not None:
            raise error

    async def _fetch_now(self, server_name: str) -> None:
        try:
            body = await self.get_json(server_name, "/_matrix/key/v2/server")
            await self._remember(parse_key_response(server_name, body, self.clock.time_ms()))
            return
        except Exception as e:
            if not self.trusted_key_servers:
                raise
            direct_error: Exception = e
        for notary in self.trusted_key_servers:
            try:
                await self._fetch_from_notary(notary, server_name)
                return
            except Exception as e:
                log.info(
                    "notary {notary} gave no keys of {server}: {error}",
                    notary=notary,
                    server=server_name,
                    error=e,
                )
        raise direct_error

    async def _fetch_from_notary(self, notary: str, server_name: str) -> None:
        query: dict[str, Any] = {"server_keys": {server_name: {}}}
        answer = await self.post_json(notary, "/_matrix/key/v2/query", query)
        results = answer.get("server_keys") if isinstance(answer, dict) else None
        if not isinstance(results, list):
            raise ValueError(f"{notary} gave no server_keys")
        for body in results:
            if not isinstance(body, dict) or body.get("server_name") != server_name:
                continue
            keys = parse_key_response(server_name, body, self.clock.time_ms())
            notary_sigs = (body.get("signatures") or {}).get(notary) or {}
            for kid in notary_sigs:
                notary_key = await self.verify_key(notary, kid, self.clock.time_ms())
                verify_signed_json(body, notary, notary_key)
                await self._remember(keys)
                return
        raise ValueError(f"{notary} vouched for no keys of {server_name}")

    async def _remember(self, keys: list[StoredKey]) -> None:
        await self.store.store(keys, self.clock.time_ms())
        for key in keys:
            self._keys.setdefault(key.server_name, {})[key.key_id] = key


class Notary:
    """Answers /_matrix/key/v2/query (POST, and GET for one server)."""

    def __init__(self, own: OwnKeys, ring: KeyRing, clock: Clock) -> None:
        self.own = own
        self.ring = ring
        self.clock = clock

    async def query(self, body: Mapping[str, Any]) -> dict[str, Any]:
        wanted = body.get("server_keys")
        if not isinstance(wanted, dict):
            raise BadJson("'server_keys' must be an object of server names")
        if len(wanted) > MAX_QUERY_SERVERS:
            raise BadJson(f"at most {MAX_QUERY_SERVERS} servers per query")
        now = self.clock.time_ms()
        minimums: dict[str, int] = {}
        for server_name, key_ids in wanted.items():
            if not isinstance(key_ids, dict):
                raise BadJson(f"'server_keys.{server_name}' must be an object of key ids")
            minimum = now
            for criteria in key_ids.values():
                if not isinstance(criteria, dict):
                    raise BadJson(f"'server_keys.{server_name}' criteria must be objects")
                ts = criteria.get("minimum_valid_until_ts")
                if ts is not None:
                    if not isinstance(ts, int) or isinstance(ts, bool):
                        raise BadJson("'minimum_valid_until_ts' must be an integer")
                    minimum = max(minimum, ts)
            minimums[check_server_name(str(server_name))] = minimum
        fetches = 0
        lookups = []
        for server_name, minimum in minimums.items():
            needs_fetch = server_name != self.own.server_name and not await self.ring.has_current_key(
                server_name, minimum
            )
            fetches += needs_fetch
            lookups.append(
                Deferred.fromCoroutine(self.answers_for(server_name, minimum, fetches <= MAX_QUERY_FETCHES))
            )
        results: list[dict[str, Any]] = []
        for answers in await gatherResults(lookups):
            results.extend(answers)
        return {"server_keys": results}

    async def answers_for(
        self, server_name: str, minimum_valid_until: int | None, may_fetch: bool = True
    ) -> list[dict[str, Any]]:
        """The signed key answers we can vouch for, countersigned; [] if the server is unknown
        and unreachable (the spec leaves such servers out rather than failing the query)."""
        if server_name == self.own.server_name:
            return [self.own.response()]
        keys = await self.ring.keys_of(server_name, minimum_valid_until or self.clock.time_ms(), may_fetch)
        answers: dict[str, dict[str, Any]] = {}
        for key in keys:
            if key.expired_ts is None:
                answers.setdefault(key.key_json, json.loads(key.key_json))
        return [self.own.sign(answer) for answer in answers.values()]


def check_server_name(name: str) -> str:
    from homeserver.core.federation.discovery import split_server_name

    try:
        split_server_name(name)
    except ValueError:
        raise BadJson(f"{name!r} is not a server name") from None
    return name


__all__ = ["KeyNotFound", "KeyRing", "Notary", "OwnKeys", "RemoteServerError", "check_server_name"]
