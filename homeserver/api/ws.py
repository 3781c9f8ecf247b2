"""The WebSocket stream: /sync pushed over one socket per device, and sends answered after the commit.

Frame format: docs/api.md, "WebSocket stream". In short:

- Auth: an `Authorization: Bearer` header on the upgrade request, or a first
  frame `{"type": "auth", "token": ..., "since": ...}` within AUTH_TIMEOUT_S.
  Never a token in the URL: URLs end up in proxies' and browsers' logs.
- The server pushes `{"type": "sync", "next_batch": T, "data": <a /sync response>}`:
  first the delta since `since` (or an initial sync), then one whenever the
  notifier wakes the user and the delta is not empty. Each delta covers
  (last token, now], computed by `SyncService.delta`, so a client that resumes
  from the last `next_batch` it processed misses nothing and gets nothing twice.
- The client sends `ack` (proof of receipt, for message status), `send`
  (answered with `send_ack` after the commit) and `ping`.

Back-pressure: a connection never queues deltas. A wake-up only marks it
"wanted"; one computation runs at a time and covers everything since the last
token, so at most one delta is ever pending. When the socket's send buffer is
full (the transport pauses us), nothing more is computed nor read from the
client; a connection stalled for MAX_STALL_S is dropped, and resumes from its
token when it reconnects.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionRequest
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from homeserver.api.http import ApiRequest, Response, Router
from homeserver.core.filters import SyncFilter
from homeserver.core.streams import SyncToken
from homeserver.core.sync import SyncRequest
from homeserver.core.tokens import Requester
from homeserver.core.txn_ids import scoped_txn_id
from homeserver.errors import (
    BadJson,
    InvalidParam,
    LimitExceeded,
    MatrixError,
    MissingParam,
    NotJson,
    UnknownToken,
    Unrecognized,
)

if TYPE_CHECKING:
    from homeserver.server import HomeServer

log = Logger()

WS_PATH = b"/_homeserver/ws"
# A client that connects without the header has this long to send its auth frame.
AUTH_TIMEOUT_S = 10.0
# Pings reap dead peers; the timeout is generous because a ping queues behind a
# large initial sync on a slow link.
AUTO_PING_INTERVAL_S = 30.0
AUTO_PING_TIMEOUT_S = 60.0
# A connection whose send buffer stays full this long is dropped (it resumes from its token).
MAX_STALL_S = 60.0
# How often an open stream re-checks its token (logout, expiry) and counts as active for presence.
KEEPALIVE_S = 60.0
# A send frame carries one event of at most 64 KiB (canonical JSON) plus the envelope.
MAX_FRAME_BYTES = 128 * 1024
MAX_SENDS_IN_FLIGHT = 64
# Frames received while the token is being checked, handled right after.
MAX_EARLY_FRAMES = 32
MAX_TXN_ID = 255

# Close codes (4000-4999 belong to the application): 4000 + the HTTP status they resemble.
CLOSE_BAD_REQUEST = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_AUTH_TIMEOUT = 4408
CLOSE_REPLACED = 4409
CLOSE_INTERNAL = 4500
CLOSE_SHUTDOWN = 4503

_DEFAULT_FILTER = SyncFilter()


def encode_frame(frame: dict[str, Any]) -> bytes:
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def sync_frame(next_batch: SyncToken, body: str) -> bytes:
    """`{"type":"sync","next_batch":...,"data":...}` around an already encoded /sync response."""
    # A token is "s" and digits joined by "_": nothing in it needs escaping.
    return b'{"type":"sync","next_batch":"%s","data":%s}' % (str(next_batch).encode(), body.encode("utf-8"))


def parse_frame(payload: bytes) -> dict[str, Any]:
    """A client frame as a JSON object, or M_NOT_JSON / M_BAD_JSON."""
    try:
        frame = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise NotJson("Frame is not JSON") from None
    if not isinstance(frame, dict):
        raise BadJson("A frame must be a JSON object")
    return frame


def _optional_str(frame: dict[str, Any], key: str) -> str | None:
    value = frame.get(key)
    if value is not None and not isinstance(value, str):
        raise BadJson(f"'{key}' must be a string")
    return value


# Plain HTTP on the stream's path -------------------------------------------------------


def add_upgrade_required_route(router: Router) -> None:
    """A plain GET of WS_PATH (no WebSocket upgrade) gets a Matrix-shaped 426."""

    async def upgrade_required(request: ApiRequest) -> Response:
        return Response(
            {"errcode": "M_UNRECOGNIZED", "error": "This endpoint only speaks WebSocket (docs/api.md)"},
            426,
            headers=((b"Upgrade", b"websocket"),),
        )

    router.add("GET", WS_PATH.decode(), upgrade_required)


# Connections ---------------------------------------------------------------------------


class StreamFactory(WebSocketServerFactory):
    """The stream's open connections, by user and device; the notifier wakes them."""

    def __init__(self, hs: "HomeServer") -> None:
        super().__init__(server="homeserver")
        self.hs = hs
        self.protocol = StreamProtocol
        self.setProtocolOptions(
            webStatus=False,
            # A protocol error (e.g. a frame over the size limit) gets a close frame with its
            # code (1009, 1002...) rather than a bare TCP drop the client cannot explain.
            failByDrop=False,
            autoPingInterval=AUTO_PING_INTERVAL_S,
            autoPingTimeout=AUTO_PING_TIMEOUT_S,
            maxFramePayloadSize=MAX_FRAME_BYTES,
            maxMessagePayloadSize=MAX_FRAME_BYTES,
            openHandshakeTimeout=10,
            closeHandshakeTimeout=5,
        )
        self.connections: set[StreamProtocol] = set()
        self._by_user: dict[str, set[StreamProtocol]] = {}
        self._by_device: dict[tuple[str, str], StreamProtocol] = {}
        hs.notifier.add_listener(self.on_wake)

    def on_wake(self, users: set[str]) -> None:
        """Notifier listener: every stream of a woken user computes its next delta."""
        for user_id in users:
            conns = self._by_user.get(user_id)
            if conns:
                for conn in list(conns):
                    conn.wake()

    def attach(self, conn: StreamProtocol, requester: Requester) -> None:
        """An authenticated connection; one per device, so an older one for the device is closed."""
        key = (requester.user_id, requester.device_id)
        old = self._by_device.get(key)
        if old is not None and old is not conn:
            self.detach(old, requester)
            old.close(CLOSE_REPLACED, "replaced by a newer stream for this device")
        self._by_device[key] = conn
        self._by_user.setdefault(requester.user_id, set()).add(conn)

    def detach(self, conn: StreamProtocol, requester: Requester) -> None:
        key = (requester.user_id, requester.device_id)
        if self._by_device.get(key) is conn:
            del self._by_device[key]
        conns = self._by_user.get(requester.user_id)
        if conns is not None:
            conns.discard(conn)
            if not conns:
                del self._by_user[requester.user_id]

    def close_all(self) -> None:
        """Server shutdown: close every stream (clients reconnect and resume from their token)."""
        for conn in list(self.connections):
            conn.close(CLOSE_SHUTDOWN, "server shutting down; reconnect and resume")


@implementer(IPushProducer)
class _Backpressure:
    """Registered on the connection's transport: told when its send buffer fills and drains."""

    def __init__(self, conn: StreamProtocol) -> None:
        self.conn = conn

    def pauseProducing(self) -> None:  # noqa: N802 - twisted's name
        self.conn.pause()

    def resumeProducing(self) -> None:  # noqa: N802 - twisted's name
        self.conn.resume()

    def stopProducing(self) -> None:  # noqa: N802 - twisted's name
        pass


class StreamProtocol(WebSocketServerProtocol):
    """One client's stream: authenticates, pushes sync deltas, handles the client's frames."""

    factory: StreamFactory

    def __init__(self) -> None:
        super().__init__()
        self.requester: Requester | None = None
        # The last token this stream computed up to (pushed, or empty for this user).
        self.since: SyncToken | None = None
        # Kept only to re-check revocation and expiry; never logged.
        self._token: str | None = None
        self._header_token: str | None = None
        self._url_token = False
        self._since_param: str | None = None
        self._authenticating = False
        self._early: list[bytes] = []
        self._closing = False
        self._wanted = False
        self._computing = False
        self._paused = False
        self._sends = 0
        self._presence_started = False
        self._opened_at = time.monotonic()
        self._auth_timer: Any = None
        self._stall_timer: Any = None
        self._keepalive: LoopingCall | None = None

    @property
    def _hs(self) -> "HomeServer":
        return self.factory.hs

    # Handshake and auth -----------------------------------------------------------------

    def onConnect(self, request: ConnectionRequest) -> None:  # noqa: N802 - autobahn's name
        self._url_token = any(name.lower() == "access_token" for name in request.params)
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, token = str(header).partition(" ")
            # A header that is not a bearer token is a bad token, not a missing one.
            self._header_token = token.strip() if scheme.lower() == "bearer" else ""
        since = request.params.get("since")
        self._since_param = since[-1] if since else None

    def onOpen(self) -> None:  # noqa: N802 - autobahn's name
        self._opened_at = time.monotonic()
        self.factory.connections.add(self)
        transport: Any = self.transport
        # Registered on the transport, to hear when the send buffer fills.
        transport.registerProducer(_Backpressure(self), True)
        if self._url_token:
            self.close(CLOSE_BAD_REQUEST, "M_INVALID_PARAM: access tokens are not accepted in the URL")
        elif self._header_token is not None:
            self._start_auth(self._header_token, self._since_param)
        else:
            self._auth_timer = self._hs.reactor.callLater(AUTH_TIMEOUT_S, self._auth_timed_out)

    def _auth_timed_out(self) -> None:
        self._auth_timer = None
        if self.requester is None and not self._authenticating:
            self.close(CLOSE_AUTH_TIMEOUT, "M_MISSING_TOKEN: no auth frame in time")

    def _on_auth_frame(self, payload: bytes) -> None:
        try:
            frame = parse_frame(payload)
            if frame.get("type") != "auth":
                raise MatrixError("The first frame must be an auth frame", "M_MISSING_TOKEN")
            token = frame.get("token")
            if not isinstance(token, str) or not token:
                raise MatrixError("The auth frame has no token", "M_MISSING_TOKEN")
            since = _optional_str(frame, "since")
        except MatrixError as e:
            self.close(
                CLOSE_UNAUTHORIZED if e.errcode == "M_MISSING_TOKEN" else CLOSE_BAD_REQUEST, _reason(e)
            )
            return
        if self._auth_timer is not None and self._auth_timer.active():
            self._auth_timer.cancel()
        self._auth_timer = None
        self._start_auth(token, since)

    def _start_auth(self, token: str, since: str | None) -> None:
        self._authenticating = True
        Deferred.fromCoroutine(self._authenticate(token, since)).addErrback(self._crashed)

    async def _authenticate(self, token: str, since_text: str | None) -> None:
        hs = self._hs
        try:
            since = SyncToken.parse(since_text) if since_text else None
        except MatrixError as e:
            self.close(CLOSE_BAD_REQUEST, _reason(e))
            return
        try:
            requester = await hs.tokens.get_requester(token)
        except UnknownToken as e:
            self.close(CLOSE_UNAUTHORIZED, _reason(e))
            return
        if self._closing:
            return
        # An open stream counts as syncing for presence, like a /sync in progress.
        await hs.presence.sync_started(requester.user_id, None)
        if self._closing:
            hs.presence.sync_finished(requester.user_id)
            return
        self._presence_started = True
        self._token = token
        self.requester = requester
        self._authenticating = False
        self.factory.attach(self, requester)
        if hs.router.access_log:
            log.info(
                "{ip} WS {path} open {user_id} {device_id}",
                ip=self._peer_host(),
                path=WS_PATH.decode(),
                user_id=requester.user_id,
                device_id=requester.device_id,
            )
        if since is not None:
            # Resuming from a token proves receipt of everything before it, as a /sync `since` does
            # (never past what the server has, whatever the client claims).
            hs.delivery.acknowledge(requester.user_id, min(since.events, hs.sync.current_token().events))
        self.send_frame({"type": "ready", "user_id": requester.user_id, "device_id": requester.device_id})
        self.since = since
        self._keepalive = LoopingCall(lambda: Deferred.fromCoroutine(self._keep_alive()))
        self._keepalive.clock = hs.reactor
        self._keepalive.start(KEEPALIVE_S, now=False)
        self._wanted = True
        self.wake()
        early, self._early = self._early, []
        for payload in early:
            if not self._closing:
                self._handle(payload)

    async def _keep_alive(self) -> None:
        """Close the stream once its token is revoked or expired; keep the user active for presence."""
        requester, token = self.requester, self._token
        if requester is None or token is None or self._closing:
            return
        try:
            await self._hs.tokens.get_requester(token)
            await self._hs.presence.sync_started(requester.user_id, None)
            self._hs.presence.sync_finished(requester.user_id)
        except UnknownToken as e:
            self.close(CLOSE_UNAUTHORIZED, _reason(e))
        except Exception:
            log.failure("WebSocket stream keep-alive failed")

    # Pushing deltas ------------------------------------------------------------------------

    def wake(self) -> None:
        """Something may have changed for the user: compute the next delta (coalesced)."""
        if self.requester is None or self._closing:
            return
        self._wanted = True
        if self._computing or self._paused:
            return
        self._computing = True
        Deferred.fromCoroutine(self._push()).addErrback(self._crashed)

    async def _push(self) -> None:
        requester = self.requester
        assert requester is not None
        try:
            # Wake-ups during a computation only set `_wanted`: one more round covers them all.
            while self._wanted and not self._paused and not self._closing:
                self._wanted = False
                req = SyncRequest(requester.user_id, requester.device_id, self.since, 0, _DEFAULT_FILTER)
                body, upto, has_data = await self._hs.sync.delta(req)
                if self._closing:
                    return
                if has_data or self.since is None:
                    self._write(sync_frame(upto, body))
                # An empty delta moves the stream on without a frame: the client's older token
                # still resumes correctly (the range it adds holds nothing for this user).
                self.since = upto
        finally:
            self._computing = False

    def pause(self) -> None:
        """The send buffer is full: compute nothing, read nothing, until it drains."""
        if self._paused:
            return
        self._paused = True
        transport: Any = self.transport
        transport.pauseProducing()
        self._stall_timer = self._hs.reactor.callLater(MAX_STALL_S, self._stalled)

    def resume(self) -> None:
        if not self._paused:
            return
        self._paused = False
        if self._stall_timer is not None and self._stall_timer.active():
            self._stall_timer.cancel()
        self._stall_timer = None
        transport: Any = self.transport
        transport.resumeProducing()
        if self._wanted:
            self.wake()

    def _stalled(self) -> None:
        self._stall_timer = None
        log.info("{ip} WS {path} dropped: fell too far behind", ip=self._peer_host(), path=WS_PATH.decode())
        self._closing = True
        self.dropConnection(abort=True)

    # Client frames ----------------------------------------------------------------------------

    def onMessage(self, payload: bytes, isBinary: bool) -> None:  # noqa: N802,N803 - autobahn's names
        if self._closing:
            return
        if self.requester is None:
            if not self._authenticating:
                self._on_auth_frame(payload)
            elif len(self._early) < MAX_EARLY_FRAMES:
                self._early.append(payload)
            else:
                self.close(CLOSE_BAD_REQUEST, "M_LIMIT_EXCEEDED: too many frames before auth")
            return
        self._handle(payload)

    def _handle(self, payload: bytes) -> None:
        txn_id: Any = None
        try:
            frame = parse_frame(payload)
            txn_id = frame.get("txn_id")
            kind = frame.get("type")
            if kind == "ack":
                self._on_ack(frame)
            elif kind == "send":
                self._on_send(frame)
            elif kind == "ping":
                pong: dict[str, Any] = {"type": "pong"}
                if "id" in frame:
                    pong["id"] = frame["id"]
                self.send_frame(pong)
            elif kind == "auth":
                raise InvalidParam("Already authenticated")
            elif kind is None:
                raise MissingParam("Missing 'type'")
            else:
                raise Unrecognized(f"Unknown frame type {str(kind)[:50]!r}")
        except MatrixError as e:
            self.send_error(e, txn_id if isinstance(txn_id, str) else None)

    def _on_ack(self, frame: dict[str, Any]) -> None:
        """The client processed everything up to `next_batch`: proof of receipt for message status."""
        text = _optional_str(frame, "next_batch")
        if text is None:
            raise MissingParam("Missing 'next_batch'")
        token = SyncToken.parse(text)
        assert self.requester is not None
        served = self.since.events if self.since is not None else 0
        self._hs.delivery.acknowledge(self.requester.user_id, min(token.events, served))

    def _on_send(self, frame: dict[str, Any]) -> None:
        txn_id = _optional_str(frame, "txn_id")
        if not txn_id:
            raise MissingParam("Missing 'txn_id'")
        if len(txn_id) > MAX_TXN_ID:
            raise InvalidParam("'txn_id' is too long")
        room_id = _optional_str(frame, "room_id")
        chat_id = _optional_str(frame, "chatId")
        receiver_id = _optional_str(frame, "receiverId")
        event_type = _optional_str(frame, "event_type") or "m.room.message"
        if room_id is not None and (chat_id is not None or receiver_id is not None):
            raise InvalidParam("Give 'room_id' or 'chatId'/'receiverId', not both")
        if room_id is None and chat_id is None and receiver_id is None:
            raise MissingParam("'room_id', 'chatId' or 'receiverId' is required")
        if "content" not in frame:
            raise MissingParam("Missing 'content'")
        content = frame["content"]
        if room_id is not None and not isinstance(content, dict):
            raise BadJson("'content' must be a JSON object")
        if self._sends >= MAX_SENDS_IN_FLIGHT:
            raise LimitExceeded(retry_after_ms=100)
        self._sends += 1
        encrypted = frame.get("encrypted") is True
        Deferred.fromCoroutine(
            self._send_event(txn_id, room_id, chat_id, receiver_id, event_type, content, encrypted)
        )

    async def _send_event(
        self,
        txn_id: str,
        room_id: str | None,
        chat_id: str | None,
        receiver_id: str | None,
        event_type: str,
        content: Any,
        encrypted: bool = False,
    ) -> None:
        requester = self.requester
        assert requester is not None
        try:
            if room_id is not None:
                # The same (device, txn id) key as PUT /rooms/{roomId}/send/{type}/{txnId}.
                event = await self._hs.events.send(
                    requester.user_id,
                    room_id,
                    event_type,
                    content,
                    txn=(requester.device_id, scoped_txn_id(f"send/{room_id}/{event_type}", txn_id)),
                )
            else:
                # As POST /api/messages/send with clientMessageId = txn_id.
                event = await self._hs.chats.send(
                    requester.user_id, requester.device_id, chat_id, receiver_id, content, txn_id, encrypted
                )
            self.send_frame(
                {"type": "send_ack", "txn_id": txn_id, "event_id": event.event_id, "room_id": event.room_id}
            )
        except MatrixError as e:
            self.send_error(e, txn_id)
        except Exception:
            log.failure("WebSocket send failed")
            self.send_error(MatrixError("Internal server error"), txn_id)
        finally:
            self._sends -= 1

    # Output and closing ---------------------------------------------------------------------------

    def send_frame(self, frame: dict[str, Any]) -> None:
        if not self._closing and self.state == WebSocketServerProtocol.STATE_OPEN:
            self._write(encode_frame(frame))

    def _write(self, data: bytes) -> None:
        # maxMessagePayloadSize is meant for what clients send, but autobahn applies it to what
        # we send too, and a sync delta may be far larger than any client frame.
        limit: int = getattr(self, "maxMessagePayloadSize", 0)
        self.maxMessagePayloadSize = 0
        try:
            self.sendMessage(data)
        finally:
            self.maxMessagePayloadSize = limit

    def send_error(self, error: MatrixError, txn_id: str | None = None) -> None:
        frame: dict[str, Any] = {"type": "error"}
        frame.update(error.to_json())
        frame["type"] = "error"
        if txn_id is not None:
            frame["txn_id"] = txn_id
        self.send_frame(frame)

    def close(self, code: int, reason: str) -> None:
        """Send a close frame (once); the stream does nothing more."""
        if self._closing:
            return
        self._closing = True
        if self.state == WebSocketServerProtocol.STATE_OPEN:
            self.sendClose(code, reason)
        else:
            self.dropConnection(abort=True)

    def _crashed(self, failure: Failure) -> None:
        log.failure("WebSocket stream failed", failure)
        self.close(CLOSE_INTERNAL, "M_UNKNOWN: internal error; reconnect and resume")

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:  # noqa: N802,N803
        self._closing = True
        self.factory.connections.discard(self)
        for timer in (self._auth_timer, self._stall_timer):
            if timer is not None and timer.active():
                timer.cancel()
        if self._keepalive is not None and self._keepalive.running:
            self._keepalive.stop()
        requester = self.requester
        if requester is not None:
            self.factory.detach(self, requester)
            if self._presence_started:
                self._presence_started = False
                self._hs.presence.sync_finished(requester.user_id)
            if self._hs.router.access_log:
                log.info(
                    "{ip} WS {path} closed {user_id} {device_id} {code} after {s:.1f}s",
                    ip=self._peer_host(),
                    path=WS_PATH.decode(),
                    user_id=requester.user_id,
                    device_id=requester.device_id,
                    code=code,
                    s=time.monotonic() - self._opened_at,
                )

    def _peer_host(self) -> str:
        transport: Any = self.transport
        peer = transport.getPeer() if transport is not None else None
        return str(getattr(peer, "host", "unknown"))


def _reason(error: MatrixError) -> str:
    """A close reason: the errcode first, so clients can match it (at most 123 bytes are sent)."""
    return f"{error.errcode}: {error.message}"


def stream_factory(hs: "HomeServer", router: Router) -> StreamFactory:
    """The stream's factory (the HTTP server hands it upgrades of WS_PATH), and the
    router's answer to plain requests there."""
    add_upgrade_required_route(router)
    return StreamFactory(hs)
