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
  (answered with `send_ack` after the commit), `read` (`read_ack`) and `ping`.

Back-pressure: a connection never queues deltas. A wake-up only marks it
"wanted"; one computation runs at a time and covers everything since the last
token, so at most one delta is ever pending. When the socket's send buffer is
full (the transport pauses us), nothing more is computed nor read from the
client; a connection stalled for MAX_STALL_S is dropped, and resumes from its
token when it reconnects.

Idle streams (docs/adr/0004, "Idle connections"): one sweep per second over
all streams sends the keep-alive pings, drops peers that do not answer, and
runs the token/presence keep-alive, instead of timers per connection. Once a
stream is authenticated, its Autobahn protocol instance sheds what only the
handshake needed and every attribute whose value its class already holds.
"""

from __future__ import annotations

import json
import struct
from collections import deque
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, cast

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import TrafficStats
from autobahn.websocket.types import ConnectionRequest
from autobahn.websocket.utf8validator import Utf8Validator
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from homeserver.api.forwarded import client_address
from homeserver.api.strict_json import JSON_DECODER, check_unicode
from homeserver.api.validate import NUL_MESSAGE, contains_nul
from homeserver.api.ws_route import WS_PATH
from homeserver.core.filters import SyncFilter
from homeserver.core.restrictions import UserLocked
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

# A client that connects without the header has this long to send its auth frame.
AUTH_TIMEOUT_S = 10.0
# Pings reap dead peers; the timeout is generous because a ping queues behind a
# large initial sync on a slow link. A pong, or any message, answers a ping.
AUTO_PING_INTERVAL_S = 30.0
AUTO_PING_TIMEOUT_S = 60.0
# The one timer of all streams: pings, ping timeouts and keep-alives are this accurate.
SWEEP_S = 1.0
# A connection whose send buffer stays full this long is dropped (it resumes from its token).
MAX_STALL_S = 60.0
# How often an open stream re-checks its token (logout, expiry) and counts as active for presence.
KEEPALIVE_S = 60.0
# A send frame carries one event of at most 64 KiB (canonical JSON) plus the envelope.
MAX_FRAME_BYTES = 128 * 1024
# Fragments of one client message: clients send a frame as one message, and an endless run of
# empty fragments (each one more entry in Autobahn's list of the message's parts) would
# otherwise grow without bound under the byte limit.
MAX_FRAGMENTS = 64
# Sends and reads waiting for their commit, per stream: a flood of frames gets M_LIMIT_EXCEEDED
# rather than an unbounded pile of pending database writes.
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
    """A client frame as a JSON object, or M_NOT_JSON / M_BAD_JSON (as a request body:
    strict UTF-8, no lone surrogate, no U+0000)."""
    try:
        # Binary frames are not UTF-8-checked by Autobahn; json.loads(bytes) would take an
        # encoded surrogate (ED A0 80) as text that no later encode, hash or INSERT can take.
        frame = JSON_DECODER.decode(payload.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise NotJson("Frame is not JSON") from None
    if not isinstance(frame, dict):
        raise BadJson("A frame must be a JSON object")
    check_unicode(payload, frame)
    if b"\\u0000" in payload and contains_nul(frame):
        raise BadJson(NUL_MESSAGE)
    return frame


def _optional_str(frame: dict[str, Any], key: str) -> str | None:
    value = frame.get(key)
    if value is not None and not isinstance(value, str):
        raise BadJson(f"'{key}' must be a string")
    return value


# Connections ---------------------------------------------------------------------------


class StreamFactory(WebSocketServerFactory):
    """The stream's open connections, by user and device; the notifier wakes them."""

    def __init__(self, hs: "HomeServer") -> None:
        super().__init__(server="homeserver")
        self.hs = hs
        self.setProtocolOptions(
            webStatus=False,
            # A protocol error (e.g. a frame over the size limit) gets a close frame with its
            # code (1009, 1002...) rather than a bare TCP drop the client cannot explain.
            failByDrop=False,
            # Pings are the sweep's (AUTO_PING_INTERVAL_S), not a timer per connection.
            autoPingInterval=0,
            autoPingTimeout=0,
            maxFramePayloadSize=MAX_FRAME_BYTES,
            maxMessagePayloadSize=MAX_FRAME_BYTES,
            openHandshakeTimeout=10,
            closeHandshakeTimeout=5,
        )
        # The options as class attributes of this factory's own protocol class: Autobahn then
        # copies none of them (~30) into every connection's instance dict.
        options = {name: getattr(self, name) for name in StreamProtocol.CONFIG_ATTRS}
        self.protocol = cast("type[StreamProtocol]", type("StreamProtocol", (StreamProtocol,), options))
        self.connections: set[StreamProtocol] = set()
        # One stream (the usual case) or a list of them, by user.
        self._by_user: dict[str, StreamProtocol | list[StreamProtocol]] = {}
        self._by_device: dict[tuple[str, str], StreamProtocol] = {}
        self._sweeper: Any = None  # a LoopingCall while any stream is open
        # Streams to compact at the next sweep (StreamProtocol._compact): authenticated or
        # answering a ping since the last one.
        self._to_compact: list[StreamProtocol] = []
        hs.notifier.add_listener(self.on_wake)

    def on_wake(self, users: set[str]) -> None:
        """Notifier listener: every stream of a woken user computes its next delta."""
        for user_id in users:
            conns = self._by_user.get(user_id)
            if conns is None:
                continue
            if isinstance(conns, list):
                for conn in list(conns):
                    conn.wake()
            else:
                conns.wake()

    def attach(self, conn: StreamProtocol, requester: Requester) -> None:
        """An authenticated connection; one per device, so an older one for the device is closed."""
        key = (requester.user_id, requester.device_id)
        old = self._by_device.get(key)
        if old is not None and old is not conn:
            self.detach(old, requester)
            old.close(CLOSE_REPLACED, "replaced by a newer stream for this device")
        self._by_device[key] = conn
        conns = self._by_user.get(requester.user_id)
        if conns is None:
            self._by_user[requester.user_id] = conn
        elif isinstance(conns, list):
            if conn not in conns:
                conns.append(conn)
        elif conns is not conn:
            self._by_user[requester.user_id] = [conns, conn]
        self._to_compact.append(conn)

    def detach(self, conn: StreamProtocol, requester: Requester) -> None:
        key = (requester.user_id, requester.device_id)
        if self._by_device.get(key) is conn:
            del self._by_device[key]
        conns = self._by_user.get(requester.user_id)
        if conns is conn:
            del self._by_user[requester.user_id]
        elif isinstance(conns, list) and conn in conns:
            conns.remove(conn)
            if len(conns) == 1:
                self._by_user[requester.user_id] = conns[0]

    def authenticated_count(self) -> int:
        return len(self._by_device)

    def opened(self, conn: StreamProtocol) -> None:
        self.connections.add(conn)
        if self._sweeper is None:
            self._sweeper = self.hs.clock.looping_call(SWEEP_S, self._sweep)

    def closed(self, conn: StreamProtocol) -> None:
        self.connections.discard(conn)
        if not self.connections and self._sweeper is not None:
            if self._sweeper.running:
                self._sweeper.stop()
            self._sweeper = None
            self._to_compact = []

    def _sweep(self) -> None:
        """Once per SWEEP_S: pings, ping timeouts and keep-alives that are due; compactions."""
        now = self.hs.clock.seconds()
        to_compact, self._to_compact = self._to_compact, []
        for conn in to_compact:
            conn._compact()
        due = [c for c in self.connections if c._next_ping <= now or c._next_keepalive <= now]
        if due:
            # Every stream pinged in this sweep gets the same payload (and the same bytes object).
            payload = struct.pack(">d", now)
            for conn in due:
                conn._on_sweep(now, payload)

    def close_all(self) -> None:
        """Server shutdown: close every stream (clients reconnect and resume from their token)."""
        for conn in list(self.connections):
            conn.close(CLOSE_SHUTDOWN, "server shutting down; reconnect and resume")


class _PerConnection:
    """A class attribute that builds the instance's own value on first use (a non-data
    descriptor): an instance that dropped its value gets a fresh one when next asked."""

    def __init__(self, make: Any) -> None:
        self._make = make
        self._name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        value = obj.__dict__[self._name] = self._make()
        return value


_MISSING = object()

# Autobahn's per-connection state with the value it has on an open, idle stream: held by
# the class, so the instance needs no entry until Autobahn sets something else (a frame or
# a close sets some again; the next compaction drops them once they are back to these).
_AUTOBAHN_IDLE: dict[str, Any] = {
    "state": WebSocketServerProtocol.STATE_OPEN,
    "send_state": WebSocketServerProtocol.SEND_STATE_GROUND,
    "data": b"",
    "triggered": False,
    "_perMessageCompress": None,
    "trackedTimings": None,
    "wasMaxFramePayloadSizeExceeded": False,
    "wasMaxMessagePayloadSizeExceeded": False,
    "closedByMe": False,
    "failedByMe": False,
    "droppedByMe": False,
    "wasClean": False,
    "wasNotCleanReason": None,
    "wasServerConnectionDropTimeout": False,
    "wasOpenHandshakeTimeout": False,
    "wasCloseHandshakeTimeout": False,
    "wasServingFlashSocketPolicyFile": False,
    "localCloseCode": None,
    "localCloseReason": None,
    "remoteCloseCode": None,
    "remoteCloseReason": None,
    "openHandshakeTimeoutCall": None,
    "closeHandshakeTimeoutCall": None,
    "autoPingTimeoutCall": None,
    "autoPingPending": None,
    "autoPingPendingCall": None,
    "autoPingPendingSeq": 0,
    "autoPingPendingSent": None,
    "websocket_version": 13,
    "websocket_protocol_in_use": None,
    "inside_message": False,
    "current_frame": None,
    "_isMessageCompressed": False,
    "message_is_binary": False,
    "message_data": None,
    "frame_data": None,
    "control_frame_data": None,
    # Empty unless a send asks for chopped or synchronous writes (StreamProtocol.sendData).
    "send_queue": (),
}
# Only meaningful during the opening handshake or inside a message: dropped from idle
# streams whatever their value, with these stand-ins on the class.
_TRANSIENT: dict[str, Any] = {
    "http_request_data": b"",
    "http_status_line": "",
    "http_headers": MappingProxyType({}),
    "http_request_uri": "",
    "http_request_path": "",
    "http_request_params": MappingProxyType({}),
    "http_request_host": "",
    "http_response_data": "",
    "_wskey": "",
    "websocket_origin": "",
    "websocket_protocols": (),
    "websocket_extensions": (),
    "websocket_extensions_in_use": (),
    # ITransport.transport_details (WAMP's); nothing here reads it.
    "_transport_details": None,
    # ObservableMixin's: only used once someone calls .on(), which nothing here does.
    "_valid_events": None,
    "_results": None,
    "message_data_total_length": 0,
    "frame_length": 0,
    "utf8validateIncomingCurrentMessage": False,
    "utf8validateLast": (True, True, 0, 0),
    "current_frame_masker": None,
}


@implementer(IPushProducer)
class StreamProtocol(WebSocketServerProtocol):
    """One client's stream: authenticates, pushes sync deltas, handles the client's frames.

    Registered as the producer on its own transport, to hear when the send buffer fills
    (pauseProducing) and drains (resumeProducing).

    The per-connection state below starts as class attributes: an instance holds an entry
    only once it differs (see `_compact`).
    """

    factory: StreamFactory

    requester: Requester | None = None
    # The last token this stream computed up to (pushed, or empty for this user).
    since: SyncToken | None = None
    # Kept only to re-check revocation and expiry; never logged.
    _token: str | None = None
    _header_token: str | None = None
    _url_token = False
    _since_param: str | None = None
    # The client's address (api/forwarded.py: behind a trusted balancer, the one it names).
    _client_ip: str | None = None
    _authenticating = False
    _early: list[bytes] | None = None
    _closing = False
    _wanted = False
    _computing = False
    _paused = False
    _sends = 0
    # Whether the stream still counts as syncing for presence: from the moment it has a
    # requester until its close (so True here, where it is only read with a requester).
    _presence_started = True
    # Fragments of the message being read (MAX_FRAGMENTS); no entry between messages.
    _fragments = 0
    _auth_timer: Any = None
    _stall_timer: Any = None
    # Reactor times of the next ping (or, while `_ping_payload` waits for its pong, of the
    # ping timeout) and of the next keep-alive; the factory's sweep acts on them.
    _next_ping = float("inf")
    _next_keepalive = float("inf")
    _opened_at = 0.0
    _ping_payload: bytes | None = None
    # Autobahn's incremental UTF-8 validator, made again when a message needs one.
    utf8validator = _PerConnection(Utf8Validator)
    # Autobahn's futures: is_open, dropped once resolved (fired Deferreds are all alike), and
    # is_closed, made when first asked for (by Autobahn, when it resolves it on close).
    is_open = _PerConnection(lambda: succeed(None))
    is_closed = _PerConnection(Deferred)
    # Autobahn's per-connection traffic counters: nothing reads them, all streams share one.
    trafficStats = TrafficStats()

    def __init__(self) -> None:
        super().__init__()
        del self.is_closed

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
        forwarded = request.headers.get("x-forwarded-for")
        self._client_ip = client_address(
            self._transport_host(),
            str(forwarded).encode("latin-1", "replace") if forwarded is not None else None,
            self._hs.trusted_proxies,
        )

    def onOpen(self) -> None:  # noqa: N802 - autobahn's name
        self._opened_at = now = self._hs.clock.seconds()
        self._next_ping = now + AUTO_PING_INTERVAL_S
        self.factory.opened(self)
        transport: Any = self.transport
        # Registered on the transport, to hear when the send buffer fills.
        transport.registerProducer(self, True)
        if self._url_token:
            self.close(CLOSE_BAD_REQUEST, "M_INVALID_PARAM: access tokens are not accepted in the URL")
        elif self._header_token is not None:
            token, since = self._header_token, self._since_param
            self._header_token = self._since_param = None
            self._start_auth(token, since)
        else:
            self._auth_timer = self._hs.clock.callLater(AUTH_TIMEOUT_S, self._auth_timed_out)

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
            hs.device_activity.seen(requester.user_id, requester.device_id, self._peer_host())
        except (UnknownToken, UserLocked) as e:
            self.close(CLOSE_UNAUTHORIZED, _reason(e))
            return
        if self._closing:
            return
        # An open stream counts as syncing for presence, like a /sync in progress.
        await hs.presence.sync_started(requester.user_id, None)
        if self._closing:
            hs.presence.sync_finished(requester.user_id)
            return
        # An open stream gets new events: pushes to its device can wait for its ack.
        hs.delivery.connections.opened(requester.user_id, requester.device_id)
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
            hs.delivery.acknowledge(
                requester.user_id, requester.device_id, min(since.events, hs.sync.current_token().events)
            )
        self.send_frame({"type": "ready", "user_id": requester.user_id, "device_id": requester.device_id})
        self.since = since
        self._next_keepalive = hs.clock.seconds() + KEEPALIVE_S
        self._wanted = True
        self.wake()
        early, self._early = self._early, None
        for payload in early or ():
            if not self._closing:
                self._handle(payload)

    async def _keep_alive(self) -> None:
        """Close the stream once its token is revoked or expired or its account locked; keep the
        user active for presence."""
        requester, token = self.requester, self._token
        if requester is None or token is None or self._closing:
            return
        try:
            await self._hs.tokens.get_requester(token)
            self._hs.device_activity.seen(requester.user_id, requester.device_id, self._peer_host())
            await self._hs.presence.sync_started(requester.user_id, None)
            self._hs.presence.sync_finished(requester.user_id)
        except (UnknownToken, UserLocked) as e:
            self.close(CLOSE_UNAUTHORIZED, _reason(e))
        except Exception:
            log.failure("WebSocket stream keep-alive failed")

    # Timers (the factory's sweep) and idle memory ------------------------------------------

    def _on_sweep(self, now: float, payload: bytes) -> None:
        """A ping, a ping timeout or a keep-alive is due."""
        if self._closing or self.state != WebSocketServerProtocol.STATE_OPEN:
            return
        if self._next_ping <= now:
            if self._ping_payload is not None:
                # As Autobahn's auto-ping: the peer did not answer in time; drop it.
                self.onAutoPingTimeout()
                return
            self._ping_payload = payload
            self._next_ping = now + AUTO_PING_TIMEOUT_S
            self.sendPing(payload)
        if self._next_keepalive <= now and self.requester is not None:
            self._next_keepalive = now + KEEPALIVE_S
            Deferred.fromCoroutine(self._keep_alive())

    def _heard(self) -> None:
        """The peer answered the pending ping (a pong, or any message): next ping in an interval.

        Also the stream's regular compaction (once the frame is done: at the next sweep),
        which sheds what the frames since the last one left behind.
        """
        self._ping_payload = None
        self._next_ping = self._hs.clock.seconds() + AUTO_PING_INTERVAL_S
        self.factory._to_compact.append(self)

    def onPong(self, payload: bytes) -> None:  # noqa: N802 - autobahn's name
        if self._ping_payload is not None and payload == self._ping_payload:
            self._heard()

    def _compact(self) -> None:
        """Rebuild the instance dict without what the stream no longer needs.

        An Autobahn protocol instance carries ~110 attributes; after the handshake most
        are dead (the HTTP request and response) or hold the same value as every other
        idle stream. Dropped: entries whose value is the class attribute's own object,
        and the handshake and in-message state of _TRANSIENT (stand-ins on the class).
        A new dict is built because a dict never shrinks when entries are deleted.
        Not while a frame or message is half read, nor while chopped writes are queued.
        """
        d = self.__dict__
        if d.get("inside_message") or d.get("current_frame") is not None or d.get("send_queue"):
            return
        cls = type(self)
        kept: dict[str, Any] = {}
        for name, value in d.items():
            if name in _TRANSIENT or getattr(cls, name, _MISSING) is value:
                continue
            if name in ("utf8validator", "trafficStats", "send_queue"):
                continue
            if name == "is_open" and value.called:
                continue
            kept[name] = value
        self.__dict__ = kept

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:  # noqa: N802
        # Autobahn queues chopped or synchronous writes; the idle stream has no queue of its own.
        if (sync or chopsize) and "send_queue" not in self.__dict__:
            self.send_queue = deque()
        super().sendData(data, sync, chopsize)

    # Back-pressure: the transport's producer calls ------------------------------------------

    def pauseProducing(self) -> None:  # noqa: N802 - twisted's name
        self.pause()

    def resumeProducing(self) -> None:  # noqa: N802 - twisted's name
        self.resume()

    def stopProducing(self) -> None:  # noqa: N802 - twisted's name
        pass

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
        self._stall_timer = self._hs.clock.callLater(MAX_STALL_S, self._stalled)

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

    def onMessageFrameBegin(self, length: int) -> None:  # noqa: N802 - autobahn's name
        super().onMessageFrameBegin(length)
        self._fragments += 1
        if self._fragments > MAX_FRAGMENTS and not self.failedByMe:
            self._fail_connection(
                WebSocketServerProtocol.CLOSE_STATUS_CODE_MESSAGE_TOO_BIG,
                f"a message of more than {MAX_FRAGMENTS} fragments",
            )

    def onMessageEnd(self) -> None:  # noqa: N802 - autobahn's name
        self.__dict__.pop("_fragments", None)
        super().onMessageEnd()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:  # noqa: N802,N803 - autobahn's names
        if self._ping_payload is not None:
            self._heard()  # as Autobahn's auto-ping: any message answers a pending ping
        if self._closing:
            return
        if self.requester is None:
            if not self._authenticating:
                self._on_auth_frame(payload)
            elif self._early is None:
                self._early = [payload]
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
            elif kind == "read":
                self._on_read(frame)
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
        self._hs.delivery.acknowledge(
            self.requester.user_id, self.requester.device_id, min(token.events, served)
        )

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

    def _on_read(self, frame: dict[str, Any]) -> None:
        """As `POST /api/messages/{chatId}/read`: answered with `read_ack` once the receipt is stored."""
        chat_id = _optional_str(frame, "chatId")
        if chat_id is None:
            raise MissingParam("Missing 'chatId'")
        message_id = _optional_str(frame, "messageId")
        if self._sends >= MAX_SENDS_IN_FLIGHT:
            raise LimitExceeded(retry_after_ms=100)
        self._sends += 1
        Deferred.fromCoroutine(self._mark_read(chat_id, message_id, frame.get("txn_id")))

    async def _mark_read(self, chat_id: str, message_id: str | None, txn_id: Any) -> None:
        requester = self.requester
        assert requester is not None
        echo = txn_id if isinstance(txn_id, str) else None
        try:
            read = await self._hs.chats.mark_read(requester.user_id, chat_id, message_id)
            ack: dict[str, Any] = {"type": "read_ack", "chatId": chat_id, "messageId": read}
            if echo is not None:
                ack["txn_id"] = echo
            self.send_frame(ack)
        except MatrixError as e:
            self.send_error(e, echo)
        except Exception:
            log.failure("WebSocket read failed")
            self.send_error(MatrixError("Internal server error"), echo)
        finally:
            self._sends -= 1

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
                    # A client's send, as over HTTP: the rate limit, suspension and shadow ban apply.
                    rate_limited=True,
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
        own = self.__dict__.get("maxMessagePayloadSize", _MISSING)
        self.maxMessagePayloadSize = 0
        try:
            self.sendMessage(data)
        finally:
            if own is _MISSING:
                del self.maxMessagePayloadSize  # the class's (the factory's) limit again
            else:
                self.maxMessagePayloadSize = own

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

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802 - twisted's name
        super().connectionLost(reason)
        # Handed over by the HTTP listener, which counted the connection (api/connection_cap.py).
        self._hs.connection_cap.handed_over_lost(self)
        # Autobahn resolves is_closed with the protocol itself: a reference cycle per closed
        # stream, left to the garbage collector (a 200 ms pass when 10,000 streams closed at
        # once). Nothing here waits on it.
        self.__dict__.pop("is_closed", None)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:  # noqa: N802,N803
        self._closing = True
        self.factory.closed(self)
        for timer in (self._auth_timer, self._stall_timer):
            if timer is not None and timer.active():
                timer.cancel()
        requester = self.requester
        if requester is not None:
            self.factory.detach(self, requester)
            if self._presence_started:
                self._presence_started = False
                self._hs.presence.sync_finished(requester.user_id)
                self._hs.delivery.connections.closed(requester.user_id, requester.device_id)
            if self._hs.router.access_log:
                log.info(
                    "{ip} WS {path} closed {user_id} {device_id} {code} after {s:.1f}s",
                    ip=self._peer_host(),
                    path=WS_PATH.decode(),
                    user_id=requester.user_id,
                    device_id=requester.device_id,
                    code=code,
                    s=self._hs.clock.seconds() - self._opened_at,
                )

    def _peer_host(self) -> str:
        return self._client_ip if self._client_ip is not None else self._transport_host()

    def _transport_host(self) -> str:
        transport: Any = self.transport
        peer = transport.getPeer() if transport is not None else None
        return str(getattr(peer, "host", "unknown"))


def _reason(error: MatrixError) -> str:
    """A close reason: the errcode first, so clients can match it (at most 123 bytes are sent)."""
    return f"{error.errcode}: {error.message}"


def stream_factory(hs: "HomeServer") -> StreamFactory:
    """The stream's factory (the HTTP server hands it upgrades of WS_PATH)."""
    return StreamFactory(hs)


for _name, _value in {**_AUTOBAHN_IDLE, **_TRANSIENT}.items():
    setattr(StreamProtocol, _name, _value)
