"""Local stand-ins for the services the push gateway talks to, each checking what the real
service checks. No FCM, Google OAuth or browser push service can be reached from here, so
the tests run the real client code (firebase-admin, google-auth, our Web Push sender)
against these, on free loopback ports, in threads of the test process:

- `GoogleOAuth`: the service account's `token_uri`. Verifies the JWT bearer assertion as
  Google does (RFC 7523): RS256 signature with the service account's public key, `aud`
  Google's token URI (google-auth signs for it whatever `token_uri` says), `iss` the client email, a scope that allows FCM, `exp` at most an hour after
  `iat`; issues a bearer token.
- `FcmV1`: `POST /v1/projects/{project}/messages:send`. Checks the bearer token, validates
  the body as FCM does (one `message`, exactly one target, only known fields, data values
  strings, no reserved data keys, data at most 4096 bytes, the Android priority enum) and
  answers like FCM: `{"name": ...}`, 404 UNREGISTERED for a token marked gone, 400
  INVALID_ARGUMENT for one marked invalid, 503 UNAVAILABLE while told to fail.
- `WebPushService`: a push service (RFC 8030) that verifies the VAPID JWT (RFC 8292: ES256
  signature against the `k=` key, `aud` the endpoint's origin, `exp` in the future and
  within 24 h, `sub` a mailto: or https: URI), checks TTL, Urgency and Content-Encoding,
  and decrypts the aes128gcm payload with the subscription's private key (RFC 8291,
  implemented here with `cryptography`, independently of the sender's http_ece).
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

FCM_SCOPES = {
    "https://www.googleapis.com/auth/firebase.messaging",
    "https://www.googleapis.com/auth/cloud-platform",
}
# google-auth signs for Google's token endpoint whatever the service account's token_uri
# says; Google checks `aud` against it, and so does this stand-in.
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
RESERVED_DATA_KEYS = {"from", "notification", "message_type"}
MESSAGE_FIELDS = {
    "name",
    "data",
    "notification",
    "android",
    "webpush",
    "apns",
    "fcm_options",
    "token",
    "topic",
    "condition",
}
ANDROID_FIELDS = {
    "collapse_key",
    "priority",
    "ttl",
    "restricted_package_name",
    "data",
    "notification",
    "fcm_options",
    "direct_boot_ok",
}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


class _Server:
    """A ThreadingHTTPServer on a free loopback port; `handle(handler)` answers each request."""

    def __init__(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                status, headers, answer = owner.handle(self.path, dict(self.headers.items()), body)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.lock = threading.Lock()
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        raise NotImplementedError

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _json(status: int, value: Any) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(value).encode()


# Google OAuth + FCM ---------------------------------------------------------------------


class GoogleOAuth(_Server):
    def __init__(self, project_id: str = "push-test-project") -> None:
        super().__init__()
        self.token_uri = f"{self.base_url}/token"
        self.project_id = project_id
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.client_email = f"gateway@{project_id}.iam.gserviceaccount.com"
        self.issued: set[str] = set()
        self.refused: list[str] = []

    def service_account_file(self, directory: Path) -> Path:
        """A service-account JSON as the Firebase console makes it, pointing here."""
        pem = self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        info = {
            "type": "service_account",
            "project_id": self.project_id,
            "private_key_id": secrets.token_hex(20),
            "private_key": pem,
            "client_email": self.client_email,
            "client_id": "1234567890",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_uri,
        }
        path = directory / "service-account.json"
        path.write_text(json.dumps(info))
        return path

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        if path != "/token" or form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return self._refuse("unsupported_grant_type")
        try:
            claims = jwt.decode(
                form.get("assertion", ""),
                self.key.public_key(),
                algorithms=["RS256"],
                audience=GOOGLE_TOKEN_AUDIENCE,
                issuer=self.client_email,
                options={"require": ["exp", "iat", "aud", "iss"]},
            )
        except jwt.PyJWTError as e:
            return self._refuse(f"invalid_grant: {e}")
        if not FCM_SCOPES & set(str(claims.get("scope", "")).split()):
            return self._refuse("invalid_scope")
        if claims["exp"] - claims["iat"] > 3600:
            return self._refuse("invalid_grant: assertion lives over an hour")
        token = "ya29." + secrets.token_urlsafe(24)
        with self.lock:
            self.issued.add(token)
        return _json(200, {"access_token": token, "expires_in": 3599, "token_type": "Bearer"})

    def _refuse(self, why: str) -> tuple[int, dict[str, str], bytes]:
        with self.lock:
            self.refused.append(why)
        return _json(400, {"error": why.split(":")[0], "error_description": why})


def _fcm_error(
    status: int, name: str, message: str, code: str | None = None, extra: Any = ()
) -> tuple[int, dict[str, str], bytes]:
    details = list(extra)
    if code:
        details.insert(0, {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code})
    return _json(status, {"error": {"code": status, "message": message, "status": name, "details": details}})


class FcmV1(_Server):
    def __init__(self, oauth: GoogleOAuth) -> None:
        super().__init__()
        self.oauth = oauth
        self.gone: set[str] = set()
        self.invalid: set[str] = set()
        self.fail_next = 0  # answer this many sends with 503 UNAVAILABLE
        self.messages: list[dict[str, Any]] = []  # accepted messages
        self.requests = 0

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        with self.lock:
            self.requests += 1
        m = re.fullmatch(r"/v1/projects/([^/]+)/messages:send", path)
        if m is None:
            return _fcm_error(404, "NOT_FOUND", "Not found")
        auth = {k.lower(): v for k, v in headers.items()}.get("authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self.oauth.issued:
            return _fcm_error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
        if m.group(1) != self.oauth.project_id:
            return _fcm_error(403, "PERMISSION_DENIED", "Permission denied on project", "SENDER_ID_MISMATCH")
        try:
            request = json.loads(body)
        except ValueError:
            return _fcm_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        problem = _check_send_request(request)
        if problem:
            return _fcm_error(400, "INVALID_ARGUMENT", problem)
        message = request["message"]
        token = message.get("token")
        with self.lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                return _fcm_error(503, "UNAVAILABLE", "The service is currently unavailable.", "UNAVAILABLE")
        if token in self.gone:
            return _fcm_error(404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED")
        if token in self.invalid:
            violation = {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": "message.token", "description": "Invalid registration token"}],
            }
            return _fcm_error(
                400,
                "INVALID_ARGUMENT",
                "The registration token is not a valid FCM registration token",
                "INVALID_ARGUMENT",
                [violation],
            )
        with self.lock:
            self.messages.append(message)
            n = len(self.messages)
        return _json(200, {"name": f"projects/{self.oauth.project_id}/messages/0:{n}"})


def _check_send_request(request: Any) -> str | None:
    """FCM's checks of a send request, as the error message it would give (None: valid)."""
    if not isinstance(request, dict) or not isinstance(request.get("message"), dict):
        return "Invalid value at 'message'"
    unknown = set(request) - {"message", "validate_only"}
    if unknown:
        return f"Invalid JSON payload received. Unknown name {sorted(unknown)[0]!r}"
    message = request["message"]
    unknown = set(message) - MESSAGE_FIELDS
    if unknown:
        return f"Invalid JSON payload received. Unknown name {sorted(unknown)[0]!r} at 'message'"
    targets = [t for t in ("token", "topic", "condition") if t in message]
    if len(targets) != 1:
        return "Exactly one of token, topic or condition must be specified"
    if not isinstance(message[targets[0]], str) or not message[targets[0]]:
        return f"Invalid value at 'message.{targets[0]}'"
    data = message.get("data", {})
    if not isinstance(data, dict):
        return "Invalid value at 'message.data'"
    for key, value in data.items():
        if not isinstance(value, str):
            return f"Invalid value at 'message.data[{key}].value' (TYPE_STRING)"
        if key in RESERVED_DATA_KEYS or key.startswith(("google.", "gcm.")):
            return f"Invalid data payload key: {key}"
    if sum(len(k.encode()) + len(v.encode()) for k, v in data.items()) > 4096:
        return "Android message is too big"
    android = message.get("android", {})
    if not isinstance(android, dict) or set(android) - ANDROID_FIELDS:
        return "Invalid JSON payload received. Unknown name at 'message.android'"
    priority = android.get("priority")
    if priority is not None and str(priority).upper() not in ("NORMAL", "HIGH"):
        return f"Invalid value at 'message.android.priority' ({priority})"
    return None


def start_fcm(directory: Path) -> tuple[GoogleOAuth, FcmV1, Path]:
    oauth = GoogleOAuth()
    fcm = FcmV1(oauth=oauth)
    return oauth, fcm, oauth.service_account_file(directory)


# Web Push ---------------------------------------------------------------------------------


@dataclass
class Subscription:
    """A browser's push subscription: the keys it keeps and what it gives the app server."""

    endpoint: str
    private_key: ec.EllipticCurvePrivateKey
    auth: bytes

    @property
    def p256dh(self) -> str:
        raw = self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return b64url(raw)

    def pusher_data(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "auth": b64url(self.auth)}


@dataclass
class Delivery:
    subscription_id: str
    payload: dict[str, Any]
    ttl: int
    urgency: str
    vapid_claims: dict[str, Any]
    vapid_key: str


def rfc8291_decrypt(body: bytes, ua_private: ec.EllipticCurvePrivateKey, auth_secret: bytes) -> bytes:
    """RFC 8291 section 3 and RFC 8188: the plaintext of a one-record aes128gcm message."""
    salt, rs, idlen = body[:16], int.from_bytes(body[16:20], "big"), body[20]
    as_public_raw = body[21 : 21 + idlen]
    ciphertext = body[21 + idlen :]
    if idlen != 65 or rs < 18 or len(ciphertext) > rs:
        raise ValueError("not a single-record aes128gcm message with a P-256 key id")
    as_public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), as_public_raw)
    ua_public_raw = ua_private.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    ecdh_secret = ua_private.exchange(ec.ECDH(), as_public)
    key_info = b"WebPush: info\x00" + ua_public_raw + as_public_raw
    ikm = HKDF(hashes.SHA256(), 32, auth_secret, key_info).derive(ecdh_secret)
    cek = HKDF(hashes.SHA256(), 16, salt, b"Content-Encoding: aes128gcm\x00").derive(ikm)
    nonce = HKDF(hashes.SHA256(), 12, salt, b"Content-Encoding: nonce\x00").derive(ikm)
    padded = AESGCM(cek).decrypt(nonce, ciphertext, None)
    stripped = padded.rstrip(b"\x00")
    if not stripped.endswith(b"\x02"):
        raise ValueError("the last record lacks its 0x02 delimiter")
    return stripped[:-1]


class WebPushService(_Server):
    def __init__(self) -> None:
        super().__init__()
        self.subscriptions: dict[str, Subscription] = {}
        self.gone: set[str] = set()
        self.deliveries: list[Delivery] = []
        self.refused: list[str] = []

    def subscribe(self) -> Subscription:
        sub_id = secrets.token_urlsafe(12)
        sub = Subscription(
            f"{self.base_url}/push/{sub_id}", ec.generate_private_key(ec.SECP256R1()), os.urandom(16)
        )
        self.subscriptions[sub_id] = sub
        return sub

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        h = {k.lower(): v for k, v in headers.items()}
        m = re.fullmatch(r"/push/([A-Za-z0-9_-]+)", path)
        if m is None or m.group(1) not in self.subscriptions:
            return self._refuse(404, "no such subscription")
        sub_id = m.group(1)
        if sub_id in self.gone:
            return self._refuse(410, "subscription expired")
        # RFC 8292 section 3.1: Authorization: vapid t=<JWT>, k=<public key>
        auth = re.fullmatch(r"vapid t=([A-Za-z0-9_.-]+),\s*k=([A-Za-z0-9_-]+)", h.get("authorization", ""))
        if auth is None:
            return self._refuse(401, "no VAPID authorization")
        token, k = auth.groups()
        try:
            public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b64url_decode(k))
            claims = jwt.decode(
                token,
                public,
                algorithms=["ES256"],
                audience=self.base_url,
                options={"require": ["exp", "aud", "sub"]},
            )
        except (ValueError, jwt.PyJWTError) as e:
            return self._refuse(403, f"VAPID: {e}")
        if claims["exp"] > time.time() + 24 * 3600:
            return self._refuse(403, "VAPID: exp more than 24 hours ahead")
        if not str(claims["sub"]).startswith(("mailto:", "https:")):
            return self._refuse(403, "VAPID: sub is not a mailto: or https: URI")
        # RFC 8030 section 5.2 and 5.3.
        if not h.get("ttl", "").isdigit():
            return self._refuse(400, "TTL header missing")
        urgency = h.get("urgency", "normal")
        if urgency not in ("very-low", "low", "normal", "high"):
            return self._refuse(400, "bad Urgency")
        if h.get("content-encoding") != "aes128gcm":
            return self._refuse(415, "Content-Encoding must be aes128gcm")
        if len(body) > 4096:
            return self._refuse(413, "payload over 4096 bytes")
        sub = self.subscriptions[sub_id]
        try:
            plaintext = rfc8291_decrypt(body, sub.private_key, sub.auth)
            payload = json.loads(plaintext)
        except Exception as e:
            return self._refuse(400, f"cannot decrypt: {e!r}")
        with self.lock:
            self.deliveries.append(Delivery(sub_id, payload, int(h["ttl"]), urgency, claims, k))
        return 201, {"Location": f"{self.base_url}/message/{secrets.token_urlsafe(8)}"}, b""

    def _refuse(self, status: int, why: str) -> tuple[int, dict[str, str], bytes]:
        with self.lock:
            self.refused.append(why)
        return status, {}, why.encode()


def vapid_key_file(directory: Path) -> tuple[Path, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    path = directory / "vapid.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return path, key
