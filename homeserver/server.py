"""Builds the server from a config: storage, services, routes, plugins, the listening port."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import deferLater
from twisted.logger import Logger

from homeserver.api.client import account, devices, login, profile, versions
from homeserver.api.client import register as register_routes
from homeserver.api.http import ApiSite, Router
from homeserver.api.simple import auth as simple_auth
from homeserver.config import Config
from homeserver.core.accounts import AccountService
from homeserver.core.clock import Clock
from homeserver.core.email_validation import EmailValidator
from homeserver.core.mailer import Mailer
from homeserver.core.passwords import PasswordHasher
from homeserver.core.ratelimit import RateLimiter
from homeserver.core.tokens import TokenService
from homeserver.core.uia import InteractiveAuth
from homeserver.plugins import EventCallback, PluginApi, start_plugins
from homeserver.signing_key import load_or_create_signing_key
from homeserver.storage import Storage
from homeserver.storage.migrations import migrate

log = Logger()

# How long a shutdown waits for in-flight requests before closing anyway.
SHUTDOWN_GRACE_S = 5.0


def load_jwt_secret(config: Config) -> bytes:
    """The key that signs access tokens: from config/env, else a file made once in the data dir."""
    if config.auth.jwt_secret:
        return config.auth.jwt_secret.encode("utf-8")
    path = config.data_path / "jwt.secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48))
    return path.read_text().strip().encode("utf-8")


class HomeServer:
    """The server's parts, wired once. Handlers receive this and use its attributes."""

    def __init__(self, config: Config, reactor: Any, clock: Clock | None = None) -> None:
        self.config = config
        self.reactor = reactor
        self.clock = clock or Clock()
        self.signing_key = load_or_create_signing_key(config.signing_key_file)
        self.storage = Storage.from_url(
            config.database.url, config.database.pool_min, config.database.pool_max
        )
        self.metrics = CollectorRegistry()
        self.hasher = PasswordHasher(config.auth.password_hashing)
        self.ratelimiter = RateLimiter(self.clock, config.rate_limits.enabled)
        self.tokens = TokenService(
            self.storage,
            self.clock,
            load_jwt_secret(config),
            config.server_name,
            config.auth.access_token_lifetime,
            config.auth.non_refreshable_token_lifetime,
            config.auth.refresh_token_lifetime,
        )
        self.mailer = Mailer(config.email, config.data_path)
        self.email = EmailValidator(
            self.storage.auth_sessions, self.mailer, self.clock, config.base_url, config.email.token_lifetime
        )
        self.accounts = AccountService(
            config, self.storage, self.clock, self.hasher, self.tokens, self.email, self.ratelimiter
        )
        self.uia = InteractiveAuth(
            self.storage, self.clock, self.hasher, self.email, config.server_name, config.registration.tokens
        )
        self.router = Router()
        self.router.access_log = config.logging.access_log
        self.event_subscribers: list[tuple[str, EventCallback]] = []
        self.plugin_apis: list[PluginApi] = []
        self.plugins: list[Any] = []
        for module in (versions, login, register_routes, account, devices, profile, simple_auth):
            module.register(self.router, self)

    async def start(self) -> None:
        """Migrate the schema and start the plugins (before the port opens)."""
        await migrate(self.storage.db)
        self.plugins = await start_plugins(self, self.router)

    def site(self) -> ApiSite:
        return ApiSite(self.router, self.config.limits.max_request_body_size)

    async def stop(self, port: IListeningPort | None) -> None:
        """Stop accepting, let in-flight requests finish (bounded), stop plugins, close the database."""
        if port is not None:
            stopped = port.stopListening()  # type: ignore[misc]
            if stopped is not None:
                await stopped
        idle = self.router.wait_idle()

        def give_up() -> None:
            if not idle.called:
                log.warn("shutting down with requests still in flight")
                idle.callback(None)

        timeout = self.reactor.callLater(SHUTDOWN_GRACE_S, give_up)
        await idle
        if timeout.active():
            timeout.cancel()
        # The last responses may still sit in their connections' write buffers, and the
        # reactor's shutdown drops connections without flushing them: let it write them out.
        get_writers = getattr(self.reactor, "getWriters", None)
        flush_deadline = self.reactor.seconds() + 1.0
        while get_writers is not None and get_writers() and self.reactor.seconds() < flush_deadline:
            await deferLater(self.reactor, 0.01, lambda: None)
        for api in self.plugin_apis:
            api.stop_jobs()
        for plugin in self.plugins:
            stop = getattr(plugin, "stop", None)
            if stop is not None:
                try:
                    result = stop()
                    if isinstance(result, Deferred) or hasattr(result, "__await__"):
                        await result
                except Exception:
                    log.failure("plugin failed to stop")
        self.storage.close()
        log.info("shut down cleanly")


def data_dir_ready(config: Config) -> Path:
    config.data_path.mkdir(parents=True, exist_ok=True)
    return config.data_path
