"""Messages between the processes of one server: Redis pub/sub, or nothing when single.

A publish reaches every other process that is connected at that moment; a process that
was disconnected has lost what was published meanwhile and must catch up from PostgreSQL
(the record): every subscriber does that in its `on_connected` callback, which runs after
each (re)connect, the first one included, once its channels are subscribed.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from homeserver.json_encoding import dumps_internal, loads_internal
from homeserver.logs import log_failure

log = Logger()

Message = dict[str, Any]  # JSON-serialisable
_MAC_BYTES = 32  # HMAC-SHA256, before each Redis message
Handler = Callable[[Message], None]
ConnectedCallback = Callable[[], Awaitable[None]]


class Bus(Protocol):
    instance: str
    connected: bool

    def publish(self, channel: str, message: Message) -> None:
        """To every OTHER process; fire and forget (dropped while disconnected)."""

    def subscribe(self, channel: str, handler: Handler) -> None: ...

    def on_connected(self, callback: ConnectedCallback) -> None:
        """`callback` runs after every (re)connect, the first one included."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class _Subscriptions:
    """The handlers and connect callbacks every bus keeps, and calling them safely: one
    failing handler is logged and never stops the others or the connection."""

    def __init__(self, instance: str) -> None:
        self.instance = instance
        self.handlers: dict[str, list[Handler]] = {}
        self.connect_callbacks: list[ConnectedCallback] = []

    def subscribe(self, channel: str, handler: Handler) -> None:
        self.handlers.setdefault(channel, []).append(handler)

    def on_connected(self, callback: ConnectedCallback) -> None:
        self.connect_callbacks.append(callback)

    def deliver(self, channel: str, message: Message) -> None:
        for handler in self.handlers.get(channel, ()):
            try:
                handler(message)
            except Exception:
                log_failure(log, f"bus handler for {channel} failed")

    async def run_connect_callbacks(self) -> None:
        for callback in list(self.connect_callbacks):
            try:
                await callback()
            except Exception:
                log_failure(log, "bus catch-up after connect failed")


class LocalBus(_Subscriptions):
    """One process: nobody to tell. The connect callbacks run once, at start."""

    connected = True

    def __init__(self, instance: str = "main") -> None:
        super().__init__(instance)

    def publish(self, channel: str, message: Message) -> None:
        pass

    async def start(self) -> None:
        await self.run_connect_callbacks()

    async def stop(self) -> None:
        pass


class MemoryBus(_Subscriptions):
    """One process's side of a MemoryHub."""

    def __init__(self, hub: MemoryHub, instance: str) -> None:
        super().__init__(instance)
        self.hub = hub
        self.connected = False

    def publish(self, channel: str, message: Message) -> None:
        if self.connected:
            # Through JSON, as over Redis: a message that would not survive it fails here too.
            self.hub.send(self.instance, channel, loads_internal(dumps_internal(message)))

    async def start(self) -> None:
        self.connected = True
        await self.run_connect_callbacks()

    async def stop(self) -> None:
        self.connected = False


class MemoryHub:
    """Tests: several HomeServers in one reactor, each with `hub.bus(name)`. Delivery is
    synchronous but never nested: a message published by a handler waits until the one
    being delivered has reached everyone, so each subscriber sees one publisher's messages
    on one channel in order."""

    def __init__(self) -> None:
        self.buses: dict[str, MemoryBus] = {}
        self._queue: deque[tuple[str, str, Message]] = deque()
        self._delivering = False

    def bus(self, instance: str) -> MemoryBus:
        if instance not in self.buses:
            self.buses[instance] = MemoryBus(self, instance)
        return self.buses[instance]

    def send(self, sender: str, channel: str, message: Message) -> None:
        self._queue.append((sender, channel, message))
        if self._delivering:
            return
        self._delivering = True
        try:
            while self._queue:
                sender, channel, message = self._queue.popleft()
                for name, bus in list(self.buses.items()):
                    if name != sender and bus.connected:
                        bus.deliver(channel, message)
        finally:
            self._delivering = False

    def disconnect(self, instance: str) -> None:
        """Messages to and from `instance` are lost until `reconnect(instance)`."""
        self.bus(instance).connected = False

    def reconnect(self, instance: str) -> Deferred[None]:
        """Connected again; its on_connected callbacks run (the returned Deferred: when done)."""
        bus = self.bus(instance)
        bus.connected = True
        return Deferred.fromCoroutine(bus.run_connect_callbacks())


class RedisBus(_Subscriptions):
    """Pub/sub over Redis with txredisapi: one subscriber connection and one publisher
    connection, each reconnecting with backoff. Channel names get `prefix`.

    Each message carries an HMAC-SHA256 of it under the workers' shared `secret` (that of the
    internal listener): what arrives without it is dropped. Whoever else can publish on this
    Redis (another server sharing it, a compromised neighbour) could otherwise put events in
    every process's stream, revoke or un-revoke tokens, or move rate limits."""

    # Reconnect backoff (seconds): quick first tries, so a Redis restart costs little.
    INITIAL_DELAY_S = 0.1
    MAX_DELAY_S = 5.0

    def __init__(self, instance: str, url: str, prefix: str = "hs:", secret: bytes = b"") -> None:
        super().__init__(instance)
        self.url = url
        self.prefix = prefix
        self._secret = secret
        self.connected = False
        self._subscriber: Any = None  # the SubscriberProtocol while connected
        self._publisher: Any = None  # the RedisProtocol while connected
        self._factories: list[Any] = []
        self._first: Deferred[None] = Deferred()
        self._stopping = False

    def _channel(self, channel: str) -> bytes:
        return (self.prefix + channel).encode("utf-8")

    def subscribe(self, channel: str, handler: Handler) -> None:
        new = channel not in self.handlers
        super().subscribe(channel, handler)
        if new and self._subscriber is not None:
            self._subscriber.subscribe([self._channel(channel)]).addErrback(lambda _: None)

    def publish(self, channel: str, message: Message) -> None:
        publisher = self._publisher
        if publisher is None:
            return  # lost: the subscribers catch up from PostgreSQL when they can
        # The sender's name travels with the message: Redis also delivers it to the sender's
        # own subscription, which drops it (a publish is for the OTHER processes).
        payload = dumps_internal([self.instance, message])
        d = publisher.publish(self._channel(channel), self._mac(payload) + payload)
        d.addErrback(lambda f: log.warn("bus publish on {channel} failed: {e}", channel=channel, e=f.value))
        _send_now(publisher.transport)

    async def start(self) -> None:
        """Connect both sides; returns once subscribed the first time (and caught up)."""
        import txredisapi
        from twisted.internet import reactor
        from twisted.internet.endpoints import clientFromString

        bus = self
        host, port, dbid = _parse_redis_url(self.url)
        endpoint = clientFromString(reactor, f"tcp:host={host}:port={port}:timeout=5")

        def tune(factory: Any) -> Any:
            # Bytes in and out: no lossy number conversion of payloads (STACK-NOTES).
            factory.charset = None
            factory.convertNumbers = False
            factory.initialDelay = self.INITIAL_DELAY_S
            factory.maxDelay = self.MAX_DELAY_S
            factory.noisy = False
            return factory

        class Subscriber(txredisapi.SubscriberProtocol):  # type: ignore[misc]
            def messageReceived(self, pattern: Any, channel: bytes, message: bytes) -> None:  # noqa: N802
                bus._received(channel, message)

        class SubscriberFactory(txredisapi.SubscriberFactory):  # type: ignore[misc]
            protocol = Subscriber

            def buildProtocol(self, addr: Any) -> Any:  # noqa: N802 - twisted's name
                p = super().buildProtocol(addr)
                p.whenConnected().addCallback(lambda conn: Deferred.fromCoroutine(bus._subscriber_up(conn)))
                p.whenDisconnected().addCallback(bus._subscriber_down)
                return p

        class PublisherFactory(txredisapi.RedisFactory):  # type: ignore[misc]
            def buildProtocol(self, addr: Any) -> Any:  # noqa: N802 - twisted's name
                p = super().buildProtocol(addr)
                p.whenConnected().addCallback(bus._publisher_up)
                p.whenDisconnected().addCallback(bus._publisher_down)
                return p

        sub = tune(SubscriberFactory())
        pub = tune(PublisherFactory(None, dbid, 1, isLazy=True))
        self._factories = [sub, pub]
        sub.startConnecting(endpoint)
        pub.startConnecting(endpoint)
        if not self._first.called:
            log.info("bus: connecting to Redis at {host}:{port}", host=host, port=port)
        await self._first

    def _received(self, channel: bytes, message: bytes) -> None:
        name = channel.decode("utf-8")
        if not name.startswith(self.prefix):
            return
        mac, payload = message[:_MAC_BYTES], message[_MAC_BYTES:]
        try:
            if not hmac.compare_digest(mac, self._mac(payload)):
                raise ValueError("not signed with our secret")
            sender, decoded = loads_internal(payload)
        except (ValueError, TypeError, RecursionError):
            log.warn("bus: a message on {channel} is not ours; dropped", channel=name)
            return
        if sender != self.instance:
            self.deliver(name[len(self.prefix) :], decoded)

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, payload, hashlib.sha256).digest()

    def client_name(self, role: str) -> bytes:
        """The connection's CLIENT SETNAME (Redis's CLIENT LIST shows who is who)."""
        return f"{self.prefix}{self.instance}:{role}".replace(" ", "_").encode("utf-8")

    async def _subscriber_up(self, conn: Any) -> None:
        if self._stopping:
            return
        await conn.execute_command(b"CLIENT", b"SETNAME", self.client_name("sub"))
        channels = [self._channel(c) for c in self.handlers]
        if channels:
            await conn.subscribe(channels)
        if not conn.connected:
            return  # lost again before it was subscribed: the next connect starts over
        self._subscriber = conn
        self.connected = True
        log.info("bus: connected to Redis as {instance}", instance=self.instance)
        await self.run_connect_callbacks()
        if not self._first.called:
            self._first.callback(None)

    def _subscriber_down(self, conn: Any) -> None:
        if self._subscriber is conn:
            self._subscriber = None
            self.connected = False
            if not self._stopping:
                log.warn("bus: lost the Redis subscriber connection; reconnecting")

    def _publisher_up(self, conn: Any) -> None:
        self._publisher = conn
        conn.execute_command(b"CLIENT", b"SETNAME", self.client_name("pub")).addErrback(lambda _: None)

    def _publisher_down(self, conn: Any) -> None:
        if self._publisher is conn:
            self._publisher = None

    async def stop(self) -> None:
        self._stopping = True
        for factory in self._factories:
            await factory.disconnect()
        self._subscriber = self._publisher = None
        self.connected = False


def _send_now(transport: Any) -> None:
    """Hand what the connection holds to the socket now, not at the reactor's next turn.

    A writer publishes each commit's batch and then, in the same turn, wakes its own
    syncs: in a 500-member room that turn lasted ~50 ms, and the batch sat in the buffer
    meanwhile, so the other processes began their share of the fan-out only after this
    one had finished its own (W3, docs/scaling.md). An error is left for the reactor: the
    descriptor stays registered for writing, and its next write attempt reports the loss.
    """
    if transport is None or not transport.connected or transport.disconnecting:
        return
    if transport.dataBuffer or transport._tempDataLen:
        transport.doWrite()


def _parse_redis_url(url: str) -> tuple[str, int, int | None]:
    """redis://HOST[:PORT][/DB] -> (host, port, db)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    db = parts.path.strip("/")
    return parts.hostname or "127.0.0.1", parts.port or 6379, int(db) if db else None
