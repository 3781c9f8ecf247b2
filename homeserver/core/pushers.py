"""Pushers: `GET /pushers`, `POST /pushers/set`, and who may be pushed where.

A pusher belongs to the user and to the device whose access token set it (spec:
Client-Server API, "Push Notifications", POST /pushers/set). It goes when:

- the client deletes it (`kind: null`) or sets the same app id and pushkey without
  `append` as another user (the spec: "the homeserver must remove any other pushers
  with the same App ID and pushkey for different users");
- its device is deleted or logged out (the device's tokens are gone: nothing should
  keep sending that device's notifications);
- the user's password changes: every pusher but those of the device that changed it
  (Synapse removes the pushers of every other access token then; a password change is
  often a response to a lost or stolen device, whose pushes reveal who writes when);
- a push gateway rejects its pushkey (the push plugin, through `remove`).

Delivery is not here: the push plugin (plugins/push, docs/push.md) reads pushers through
the plugin API. Lists are cached in memory per user: every committed message asks for
the pushers of each member it notifies.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from twisted.logger import Logger

from homeserver.config import PushersConfig
from homeserver.core.clock import Clock
from homeserver.core.email_validation import normalise_email
from homeserver.core.push_addresses import is_public_address, literal_address
from homeserver.errors import Forbidden, InvalidParam, MatrixError, ThreepidNotFound
from homeserver.storage import Storage
from homeserver.storage.pushers import Pusher, PusherLimitReached, new_pusher_id

log = Logger()

KINDS = ("http", "email")
NOTIFY_PATH = "/_matrix/push/v1/notify"
# Spec (POST /pushers/set): app_id "max length, 64 chars", pushkey "max length, 512 bytes";
# we count bytes for both. profile_tag: "max length, 32 bytes".
MAX_APP_ID_BYTES = 64
MAX_PUSHKEY_BYTES = 512
MAX_PROFILE_TAG_BYTES = 32
# Ours: room for any client's names, a bounded row.
MAX_NAME_BYTES = 512
MAX_LANG_BYTES = 64
MAX_DATA_BYTES = 4096
_CACHED_USERS = 100_000


@dataclass(frozen=True)
class PusherSettings:
    """A `POST /pushers/set` body, its types checked by the API layer."""

    app_id: str
    pushkey: str
    kind: str | None  # None: delete
    app_display_name: str | None = None
    device_display_name: str | None = None
    profile_tag: str | None = None
    lang: str | None = None
    data: dict[str, Any] | None = None
    append: bool = False


def pusher_json(pusher: Pusher) -> dict[str, Any]:
    """A pusher as `GET /pushers` lists it."""
    body: dict[str, Any] = {
        "app_id": pusher.app_id,
        "pushkey": pusher.pushkey,
        "kind": pusher.kind,
        "app_display_name": pusher.app_display_name,
        "device_display_name": pusher.device_display_name,
        "lang": pusher.lang,
        "data": pusher.data,
    }
    if pusher.profile_tag is not None:
        body["profile_tag"] = pusher.profile_tag
    return body


def check_http_pusher_url(url: Any, allow_private: bool) -> str:
    """`data.url` of an http pusher: an http(s) URL whose path is the push gateway API's
    notify path, with no literal non-public address unless the config allows them."""
    if not isinstance(url, str) or not url:
        raise InvalidParam("An http pusher needs 'data.url'")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidParam("'data.url' is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidParam("'data.url' must be an http or https URL")
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        raise InvalidParam("'data.url' must have no credentials, query or fragment")
    if parts.path != NOTIFY_PATH:
        raise InvalidParam(f"'data.url' must have the path {NOTIFY_PATH}")
    if port == 0:
        raise InvalidParam("'data.url' has no valid port")
    address = literal_address(parts.hostname)
    if address is not None and not allow_private and not is_public_address(address):
        raise InvalidParam("'data.url' must not point at a private, loopback or link-local address")
    return url


class PusherService:
    def __init__(self, storage: Storage, config: PushersConfig, clock: Clock) -> None:
        self.storage = storage
        self.config = config
        self.clock = clock
        self._cache: OrderedDict[str, tuple[Pusher, ...]] = OrderedDict()
        # Bumped on every change: a read that began before one does not fill the cache.
        self._changes = 0
        # Every user with a pusher, kept current by each change: the commit pass keeps push
        # decisions only for them (core/unread.py), not for every member of every room.
        self.owners: set[str] = set()
        # Called after each change here, so other processes reload theirs
        # (homeserver/workers/invalidation.py).
        self.on_change: Any = None

    async def start(self) -> None:
        self.owners.update(await self.storage.pushers.owners())

    async def refresh_all(self) -> None:
        """Forget every cached list and read the owners again (changes may have been missed)."""
        self._changes += 1
        self._cache.clear()
        owners = await self.storage.pushers.owners()
        # In place: the unread counter holds this very set.
        self.owners.clear()
        self.owners.update(owners)

    # Reading ------------------------------------------------------------------

    async def list_pushers(self, user_id: str) -> list[Pusher]:
        """`GET /pushers`: the user's pushers."""
        return list((await self.for_users([user_id])).get(user_id, ()))

    async def for_users(self, user_ids: list[str]) -> dict[str, tuple[Pusher, ...]]:
        """Each user's pushers (cached; users without pushers map to an empty tuple)."""
        out: dict[str, tuple[Pusher, ...]] = {}
        missing = []
        for user_id in user_ids:
            found = self._cache.get(user_id)
            if found is None:
                missing.append(user_id)
            else:
                out[user_id] = found
        if missing:
            changes = self._changes
            loaded: dict[str, list[Pusher]] = {u: [] for u in missing}
            for pusher in await self.storage.pushers.for_users(missing):
                loaded[pusher.user_id].append(pusher)
            for user_id, pushers in loaded.items():
                out[user_id] = tuple(sorted(pushers, key=lambda p: (p.app_id, p.pushkey)))
                if changes == self._changes:
                    self._cache[user_id] = out[user_id]
            while len(self._cache) > _CACHED_USERS:
                self._cache.popitem(last=False)
        return out

    async def by_ids(self, pusher_ids: list[str]) -> list[Pusher]:
        """The pushers with these ids that still exist."""
        return await self.storage.pushers.by_ids(pusher_ids)

    # Changing -----------------------------------------------------------------

    async def set_pusher(self, user_id: str, device_id: str, settings: PusherSettings) -> None:
        """`POST /pushers/set`: create, update in place (same app id and pushkey) or delete
        (`kind` None) a pusher of the user, owned from now on by the requesting device."""
        _check_bytes("app_id", settings.app_id, MAX_APP_ID_BYTES)
        _check_bytes("pushkey", settings.pushkey, MAX_PUSHKEY_BYTES)
        if not settings.app_id or not settings.pushkey:
            raise InvalidParam("'app_id' and 'pushkey' must not be empty")
        if settings.kind is None:
            await self.storage.pushers.delete_pusher(user_id, settings.app_id, settings.pushkey)
            await self._changed(user_id)
            return
        if settings.kind not in KINDS:
            raise InvalidParam(f"'kind' must be one of {', '.join(KINDS)} or null")
        app_display_name = _required_text("app_display_name", settings.app_display_name, MAX_NAME_BYTES)
        device_display_name = _required_text(
            "device_display_name", settings.device_display_name, MAX_NAME_BYTES
        )
        lang = _required_text("lang", settings.lang, MAX_LANG_BYTES)
        if settings.profile_tag is not None:
            _check_bytes("profile_tag", settings.profile_tag, MAX_PROFILE_TAG_BYTES)
        data = settings.data
        if data is None:
            raise MatrixError("Missing 'data'", "M_MISSING_PARAM")
        if len(json.dumps(data).encode("utf-8")) > MAX_DATA_BYTES:
            raise InvalidParam(f"'data' must be at most {MAX_DATA_BYTES} bytes of JSON")
        if "format" in data and data["format"] != "event_id_only":
            raise InvalidParam("'data.format' can only be 'event_id_only'")
        if settings.kind == "http":
            check_http_pusher_url(data.get("url"), self.config.allow_private_addresses)
        else:
            address = normalise_email(settings.pushkey)
            validated = await self.storage.accounts.get_threepids(user_id)
            if not any(m == "email" and a == address and v is not None for m, a, _, v in validated):
                raise ThreepidNotFound("An email pusher needs an email address you have validated")
        pusher = Pusher(
            new_pusher_id(),
            user_id,
            device_id,
            settings.kind,
            settings.app_id,
            settings.pushkey,
            self.clock.time_ms() // 1000,
            app_display_name,
            device_display_name,
            settings.profile_tag,
            lang,
            data,
        )
        try:
            others = await self.storage.pushers.set_pusher(pusher, settings.append, self.config.max_per_user)
        except PusherLimitReached:
            raise Forbidden(
                f"You have {self.config.max_per_user} pushers, the most this server allows; delete one first"
            ) from None
        self.owners.add(user_id)  # before any event can be committed after the answer
        await self._changed(user_id, *others)

    async def remove(self, user_id: str, app_id: str, pushkey: str) -> None:
        """Delete one pusher (a push gateway rejected its pushkey)."""
        await self.storage.pushers.delete_pusher(user_id, app_id, pushkey)
        await self._changed(user_id)
        log.info(
            "removed pusher {app_id} of {user_id}: its gateway rejected it", app_id=app_id, user_id=user_id
        )

    async def devices_deleted(self, user_id: str, device_ids: list[str]) -> None:
        """A listener of AccountService: deleted or logged-out devices take their pushers."""
        await self.storage.pushers.delete_for_devices(user_id, device_ids)
        await self._changed(user_id)

    async def password_changed(self, user_id: str, keep_device: str | None) -> None:
        """A listener of AccountService: every pusher goes but those of the device that
        changed the password while logged in (`keep_device`)."""
        await self.storage.pushers.delete_all_but_device(user_id, keep_device)
        await self._changed(user_id)

    async def remove_all(self, user_id: str) -> None:
        """Every pusher of the user goes (an erased account), whatever device set it."""
        await self.storage.pushers.delete_all_but_device(user_id, None)
        await self._changed(user_id)

    async def _changed(self, *user_ids: str) -> None:
        """After a write: forget the cached lists and read whether each user still has a
        pusher. A read that another change overtook leaves `owners` as it is (a user kept
        there by mistake costs an evaluation, one dropped by mistake would miss pushes)."""
        if self.on_change is not None:
            self.on_change(list(user_ids))
        await self.refresh(*user_ids)

    async def refresh(self, *user_ids: str) -> None:
        """Forget these users' cached pushers and read whether each still has one."""
        self._changes += 1
        for user_id in user_ids:
            self._cache.pop(user_id, None)
        changes = self._changes
        found = await self.for_users(list(user_ids))
        for user_id, pushers in found.items():
            if pushers:
                self.owners.add(user_id)
            elif changes == self._changes:
                self.owners.discard(user_id)


def _check_bytes(key: str, value: str, limit: int) -> None:
    if len(value.encode("utf-8")) > limit:
        raise InvalidParam(f"'{key}' must be at most {limit} bytes")


def _required_text(key: str, value: str | None, limit: int) -> str:
    if value is None:
        raise MatrixError(f"Missing '{key}'", "M_MISSING_PARAM")
    _check_bytes(key, value, limit)
    return value
