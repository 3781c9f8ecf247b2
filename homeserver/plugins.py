"""The plugin interface: one narrow `PluginApi` object per plugin, and the YAML loader.

A plugin is a class named in `plugins:` of the config (`module: pkg.mod.Class`).
It may define `parse_config(raw: dict) -> Any` (a staticmethod raising
`PluginConfigError`), and is constructed as `Class(config, api)`. Through `api`
it can: register HTTP routes under its own prefix, subscribe to new events,
schedule background jobs, expose metrics, read its config and own its tables.
It sees nothing else of the core, and the core never imports a plugin.
See docs/plugins.md.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge, Histogram
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from homeserver.api.auth import require_user
from homeserver.api.http import ApiRequest, Response, Router, StreamBody
from homeserver.core.tokens import Requester
from homeserver.errors import MatrixError
from homeserver.storage.database import Txn
from homeserver.storage.migrations import migrate

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from homeserver.server import HomeServer

log = Logger()

EventCallback = Callable[[dict[str, Any]], Awaitable[None] | None]


class PluginConfigError(Exception):
    """Raised by a plugin's parse_config: start-up stops with this message."""


class PluginLoadError(Exception):
    pass


@dataclass(frozen=True)
class PluginInfo:
    name: str
    module: str
    prefixes: tuple[str, ...]


class PluginApi:
    """Everything a plugin may use. Plugins must not reach past this object."""

    def __init__(self, hs: "HomeServer", name: str, config: Any, prefixes: tuple[str, ...]) -> None:
        self._hs = hs
        self._name = name
        self._prefixes = prefixes
        self._jobs: list[task.LoopingCall] = []
        self.config = config
        self.log = Logger(namespace=f"plugins.{name}")

    # Facts --------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def server_name(self) -> str:
        return self._hs.config.server_name

    @property
    def data_dir(self) -> Path:
        """A directory of this plugin's own under the server's data dir."""
        path = self._hs.config.data_path / "plugins" / self._name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def reactor(self) -> "IReactorTime":
        reactor: IReactorTime = self._hs.reactor
        return reactor

    # HTTP -----------------------------------------------------------------------

    def register_route(
        self,
        method: str,
        path: str,
        handler: Callable[..., Awaitable[Any]],
        *,
        require_auth: bool = True,
    ) -> None:
        """Serve `method path` (under one of this plugin's prefixes) with `handler`.

        The handler is called as `handler(request, requester, **path_params)` when
        `require_auth` (the requester is already authenticated), else
        `handler(request, **path_params)`. It returns a JSON-able dict or a
        `Response`, and may raise `MatrixError`.
        """
        if not any(path.startswith(p) for p in self._prefixes):
            raise PluginLoadError(
                f"plugin {self._name}: route {path} is outside its prefixes {self._prefixes}"
            )
        if require_auth:
            hs = self._hs

            async def authenticated(request: ApiRequest, **params: str) -> Any:
                requester = await require_user(hs, request)
                return await handler(request, requester, **params)

            self._hs.router.add(method, path, authenticated)
        else:
            self._hs.router.add(method, path, handler)

    def set_body_limit(self, path_prefix: str, max_bytes: int) -> None:
        """Accept request bodies of up to `max_bytes` on paths starting with `path_prefix`
        (one of this plugin's prefixes or below), instead of `limits.max_request_body_size`.

        The limit is enforced while the body arrives: a larger body is refused with
        413 `M_TOO_LARGE` before any handler runs, and what had arrived is dropped.
        Bodies over 100 kB are spooled to an anonymous temporary file
        (`request.content`), never held in memory.
        """
        if not any(path_prefix.startswith(p) for p in self._prefixes):
            raise PluginLoadError(
                f"plugin {self._name}: body limit for {path_prefix} is outside its prefixes {self._prefixes}"
            )
        if max_bytes < 0:
            raise PluginLoadError(f"plugin {self._name}: body limit must not be negative")
        self._hs.router.set_body_limit(path_prefix, max_bytes)

    # Events -----------------------------------------------------------------------

    def subscribe_events(self, callback: EventCallback) -> None:
        """Call `callback(event)` after each new event is committed (client format).

        An exception in the callback is logged; it never reaches the core.
        """
        self._hs.event_subscribers.append((self._name, callback))

    # Background jobs ---------------------------------------------------------------

    def schedule(
        self, interval_s: float, job: Callable[[], Awaitable[None] | None], *, now: bool = False
    ) -> None:
        """Run `job` every `interval_s` seconds; errors are logged and the job keeps running."""

        async def run() -> None:
            try:
                result = job()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                self.log.failure(f"background job of plugin {self._name} failed")

        self._jobs.append(
            self._hs.clock.looping_call(interval_s, lambda: Deferred.fromCoroutine(run()), now=now)
        )

    def stop_jobs(self) -> None:
        for loop in self._jobs:
            if loop.running:
                loop.stop()

    # Metrics ------------------------------------------------------------------------

    def _metric_name(self, name: str) -> str:
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise PluginLoadError(f"plugin {self._name}: bad metric name {name!r}")
        return f"homeserver_plugin_{self._name}_{name}"

    def counter(self, name: str, documentation: str, labels: tuple[str, ...] = ()) -> Counter:
        return Counter(self._metric_name(name), documentation, labels, registry=self._hs.metrics)

    def gauge(self, name: str, documentation: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(self._metric_name(name), documentation, labels, registry=self._hs.metrics)

    def histogram(self, name: str, documentation: str, labels: tuple[str, ...] = ()) -> Histogram:
        return Histogram(self._metric_name(name), documentation, labels, registry=self._hs.metrics)

    # Tables ------------------------------------------------------------------------

    async def migrate_schema(self, directory: Path) -> None:
        """Apply this plugin's numbered SQL files (same rules as the core's `sql/`)."""
        await migrate(self._hs.storage.db, directory, component=f"plugin.{self._name}")

    async def run_db(self, desc: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(txn, *args)` in one transaction. Touch only this plugin's own tables."""
        return await self._hs.storage.db.run_interaction(f"{self._name}.{desc}", fn, *args)

    # Users ------------------------------------------------------------------------

    async def authenticate(self, request: ApiRequest) -> Requester:
        return await require_user(self._hs, request)

    async def is_admin(self, user_id: str) -> bool:
        """Whether `user_id` is a server admin (`homeserver admin create-user --admin`)."""
        user = await self._hs.storage.accounts.get_user(user_id)
        return user is not None and user.is_admin and not user.deactivated

    # Rooms ------------------------------------------------------------------------

    async def room_membership(self, room_id: str, user_id: str) -> str | None:
        """`user_id`'s current membership of `room_id` ("join", "invite", "leave",
        "ban", "knock"), or None if they have none or the room is unknown."""
        head = await self._hs.room_heads.get(room_id)
        return head.membership(user_id) if head is not None else None

    async def joined_rooms(self, user_id: str) -> set[str]:
        """The ids of the rooms `user_id` is joined to now."""
        rooms = await self._hs.timeline.rooms_for_user(user_id)
        return {room_id for room_id, (membership, _) in rooms.items() if membership == "join"}


# Re-exported for plugins, so they import only from this module.
__all__ = [
    "ApiRequest",
    "MatrixError",
    "PluginApi",
    "PluginConfigError",
    "Requester",
    "Response",
    "StreamBody",
    "Txn",
]


def load_plugin_class(path: str) -> type:
    module_name, _, class_name = path.rpartition(".")
    if not module_name:
        raise PluginLoadError(f"plugin module {path!r} must be 'package.module.ClassName'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise PluginLoadError(f"cannot import plugin {path!r}: {e}") from None
    cls = getattr(module, class_name, None)
    if not inspect.isclass(cls):
        raise PluginLoadError(f"plugin {path!r}: {module_name} has no class {class_name}")
    return cls


def parse_plugin_config(index: int, module: str, raw: dict[str, Any], source: str) -> tuple[type, Any]:
    """Import a plugin class and validate its config block (before anything starts)."""
    cls = load_plugin_class(module)
    parse = getattr(cls, "parse_config", None)
    try:
        config = parse(raw) if parse is not None else raw
    except PluginConfigError as e:
        raise PluginLoadError(f"{source}: 'plugins[{index}].config' ({module}): {e}") from None
    return cls, config


def plugin_name(cls: type) -> str:
    name = getattr(cls, "NAME", None) or cls.__module__.rsplit(".", 1)[-1]
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise PluginLoadError(f"plugin {cls.__module__}: NAME must be lower_case")
    return str(name)


async def start_plugins(hs: "HomeServer", router: Router) -> list[Any]:
    """Construct every configured plugin with its own PluginApi and let it start."""
    instances = []
    seen: set[str] = set()
    for index, entry in enumerate(hs.config.plugins):
        cls, config = parse_plugin_config(index, entry.module, entry.config, hs.config.source)
        name = plugin_name(cls)
        if name in seen:
            raise PluginLoadError(f"{hs.config.source}: plugin {name} is listed twice")
        seen.add(name)
        prefixes = tuple(getattr(cls, "PATH_PREFIXES", ())) + (f"/_plugins/{name}/",)
        for prefix in prefixes:
            if any(t.startswith(prefix) for t in router.templates()):
                raise PluginLoadError(f"plugin {name}: prefix {prefix} overlaps routes already registered")
        api = PluginApi(hs, name, config, prefixes)
        instance = cls(config, api)
        start = getattr(instance, "start", None)
        if start is not None:
            result = start()
            if inspect.isawaitable(result):
                await result
        hs.plugin_apis.append(api)
        instances.append(instance)
        log.info("plugin {name} started ({module})", name=name, module=entry.module)
    return instances


async def dispatch_event(hs: "HomeServer", event: dict[str, Any]) -> None:
    """Hand a committed event to every subscriber; a failing plugin is logged, never raised."""
    for name, callback in list(hs.event_subscribers):
        try:
            result = callback(event)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.failure(
                "plugin {name} failed while handling event {event_id}",
                name=name,
                event_id=event.get("event_id"),
            )
