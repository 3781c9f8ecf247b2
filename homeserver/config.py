"""YAML -> typed, validated settings.

Every section is a frozen dataclass; `load_config` walks the YAML against the
dataclass fields and stops at the first problem with one line that names the
file and the dotted key (`ConfigError`). Durations ("30s", "1h", "30d") and
sizes ("512K", "1M") are parsed here so the rest of the code sees numbers.
Secrets may come from environment variables (see `ENV_OVERRIDES`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(Exception):
    """A bad config: the message is one line naming the file and the key."""


class Duration(int):
    """Milliseconds, written in YAML as an int of seconds or "500ms", "30s", "5m", "1h", "30d"."""


class Size(int):
    """Bytes, written in YAML as an int or "512K", "1M", "2G"."""


_DURATION_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def _parse_duration(value: Any) -> Duration:
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 1h or 30d")
    if isinstance(value, int):
        return Duration(value * 1000)
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d)", str(value).strip())
    if not m:
        raise ValueError("expected a duration such as 30s, 1h or 30d")
    return Duration(int(m.group(1)) * _DURATION_UNITS[m.group(2)])


def _parse_size(value: Any) -> Size:
    if isinstance(value, bool):
        raise ValueError("expected a size such as 512K or 1M")
    if isinstance(value, int):
        return Size(value)
    m = re.fullmatch(r"(\d+)\s*([KMG]?)B?", str(value).strip().upper())
    if not m:
        raise ValueError("expected a size such as 512K or 1M")
    return Size(int(m.group(1)) * _SIZE_UNITS[m.group(2)])


@dataclass(frozen=True)
class ListenConfig:
    bind: str = "127.0.0.1"
    port: int = 8008
    # Load balancers (CIDR ranges) whose X-Forwarded-For names the client (api/forwarded.py).
    trusted_proxies: list[str] = field(default_factory=list)
    # Connections open at once from one client address, and in all (api/connection_cap.py);
    # max_connections None: derived from RLIMIT_NOFILE.
    max_connections_per_ip: int = 2048
    max_connections: int | None = None


@dataclass(frozen=True)
class DatabaseConfig:
    # sqlite:///relative/or/absolute/path.db or postgresql://user@host:port/db
    url: str = ""
    pool_min: int = 2
    pool_max: int = 10


@dataclass(frozen=True)
class RegistrationConfig:
    enabled: bool = False
    require_email_verification: bool = False
    tokens: list[str] = field(default_factory=list)
    # Registering needs a token: one of `tokens` or one an admin made (the admin API).
    requires_token: bool = False
    password_min_length: int = 8


@dataclass(frozen=True)
class AuthConfig:
    jwt_secret: str | None = None
    access_token_lifetime: Duration = Duration(3_600_000)
    non_refreshable_token_lifetime: Duration = Duration(365 * 86_400_000)
    refresh_token_lifetime: Duration = Duration(30 * 86_400_000)
    password_hashing: str = "interactive"


@dataclass(frozen=True)
class SmtpConfig:
    host: str | None = None
    port: int = 587
    security: str = "starttls"
    username: str | None = None
    password: str | None = None
    timeout: Duration = Duration(10_000)


@dataclass(frozen=True)
class EmailConfig:
    sender: str = "Homeserver <noreply@localhost>"
    token_lifetime: Duration = Duration(3_600_000)
    smtp: SmtpConfig = field(default_factory=SmtpConfig)


@dataclass(frozen=True)
class RateLimit:
    per_second: float = 1.0
    burst: int = 5


@dataclass(frozen=True)
class RateLimitsConfig:
    enabled: bool = True
    login_per_ip: RateLimit = RateLimit(0.2, 10)
    login_failures_per_account: RateLimit = RateLimit(0.05, 5)
    register_per_ip: RateLimit = RateLimit(0.1, 5)
    password_reset_per_ip: RateLimit = RateLimit(0.05, 3)
    password_reset_per_account: RateLimit = RateLimit(0.01, 3)
    # Per account, on what a client does (core/ratelimit.py USER_ACTIONS).
    send_per_user: RateLimit = RateLimit(10.0, 100)
    create_room_per_user: RateLimit = RateLimit(0.05, 10)
    join_per_user: RateLimit = RateLimit(0.1, 20)
    invite_per_user: RateLimit = RateLimit(0.2, 20)
    media_upload_per_user: RateLimit = RateLimit(1.0, 20)
    report_per_user: RateLimit = RateLimit(1.0, 5)
    # Member events of profile changes: each change costs the user's joined rooms (at least 1).
    profile_update_per_user: RateLimit = RateLimit(2.0, 1000)
    # New room aliases (PUT /directory/room/{alias}).
    create_alias_per_user: RateLimit = RateLimit(0.05, 10)
    # Typing notices set (PUT /rooms/{id}/typing/{userId}): each change wakes every member.
    typing_per_user: RateLimit = RateLimit(2.0, 30)
    # sendToDevice: one token a device messaged (`*` read as each device of its user).
    to_device_per_user: RateLimit = RateLimit(100.0, 10_000)
    # Read receipts and the fully-read marker (a read_markers call counts each it sets).
    receipt_per_user: RateLimit = RateLimit(10.0, 200)


@dataclass(frozen=True)
class UserDirectoryConfig:
    # Everyone finds every local user (else: those sharing a room, or in a public room).
    search_all_users: bool = False


@dataclass(frozen=True)
class SearchConfig:
    # How long POST /search waits for the index to reach messages sent before it.
    index_wait: Duration = Duration(2_000)


@dataclass(frozen=True)
class EncryptionConfig:
    # Which new rooms get m.room.encryption: all, invite (private and direct chats) or off.
    enabled_by_default_for_room_type: str = "invite"


@dataclass(frozen=True)
class LimitsConfig:
    max_request_body_size: Size = Size(1024 * 1024)
    # All of one user's account data (global and per room, tags included), as stored JSON.
    max_account_data_per_user: Size = Size(16 * 1024 * 1024)
    # What one device's queue of to-device messages may hold, as stored JSON.
    max_to_device_queued_per_device: Size = Size(64 * 1024 * 1024)


@dataclass(frozen=True)
class PushersConfig:
    # The most pushers one user may have (POST /pushers/set answers 403 past it).
    max_per_user: int = 10
    # Let pusher URLs reach loopback, private, link-local and other non-public addresses.
    allow_private_addresses: bool = False


@dataclass(frozen=True)
class RetentionPolicyConfig:
    # How long events are kept (MSC1763 max_lifetime); None: forever.
    max_lifetime: Duration | None = None


@dataclass(frozen=True)
class RetentionConfig:
    # Purge expired history (core/retention.py, docs/retention.md).
    enabled: bool = False
    # The policy of rooms without an m.room.retention state event.
    default_policy: RetentionPolicyConfig = field(default_factory=RetentionPolicyConfig)
    # A room's own max_lifetime is clamped into this range (None: no bound).
    allowed_lifetime_min: Duration | None = None
    allowed_lifetime_max: Duration | None = None
    purge_interval: Duration = Duration(3_600_000)
    # Events deleted per transaction.
    purge_batch_size: int = 100


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "INFO"
    access_log: bool = True


@dataclass(frozen=True)
class MetricsConfig:
    # A listener of its own that serves GET /metrics (Prometheus text format).
    enabled: bool = False
    bind_address: str = "127.0.0.1"
    port: int = 9092
    # Only loopback unless this says otherwise: metrics name routes, users and load.
    allow_public_bind: bool = False
    # When set: GET /_homeserver/metrics on the main listener with "Authorization: Bearer <secret>".
    bearer_secret: str = ""
    # How often daily/monthly active users and messages per day are recounted.
    activity_refresh: Duration = Duration(300_000)

    @property
    def served(self) -> bool:
        return self.enabled or bool(self.bearer_secret)


@dataclass(frozen=True)
class WebClientConfig:
    # Serve the web client's built files (web/dist, docs/web-client.md) at `/`.
    enabled: bool = True
    path: str = "web/dist"


@dataclass(frozen=True)
class OldVerifyKey:
    # A key this server signed with before (unpadded base64 of the ed25519 public key).
    key: str = ""
    # When it stopped being used (ms since the epoch).
    expired_ts: int = 0


@dataclass(frozen=True)
class FederationConfig:
    # The TLS listener other servers reach (/_matrix/federation/*, /_matrix/key/*); None: none.
    port: int | None = None
    bind_address: str = "0.0.0.0"  # noqa: S104 - other servers must reach it
    # PEM files of the listener's certificate (with its chain) and private key.
    tls_certificate: str | None = None
    tls_private_key: str | None = None
    # Extra CA certificates (PEM) trusted for outbound federation, besides the system's.
    ca_file: str | None = None
    # valid_until_ts of our published keys: now plus this.
    key_validity: Duration = Duration(7 * 86_400_000)
    # Keys we signed with before, published as old_verify_keys ({"ed25519:ID": {key, expired_ts}}).
    old_verify_keys: dict[str, OldVerifyKey] = field(default_factory=dict)
    # Notaries asked for a server's keys when the server itself does not answer.
    trusted_key_servers: list[str] = field(default_factory=list)
    # Served as {"m.server": ...} at /.well-known/matrix/server; empty: that path is 404.
    well_known_server: str = ""
    # One outbound request gives up after this long.
    request_timeout: Duration = Duration(30_000)
    # Outbound federation never connects to loopback, private, link-local, shared, multicast
    # or reserved addresses, nor to these (CIDR list)...
    ip_range_blacklist: list[str] = field(default_factory=list)
    # ...except to these (CIDR list), e.g. 127.0.0.0/8 for servers on one host in tests.
    ip_range_whitelist: list[str] = field(default_factory=list)
    # Per origin server, on inbound requests once their signature is checked (off with
    # rate_limits.enabled): a token bucket of requests...
    rc_requests: RateLimit = RateLimit(50.0, 250)
    # ...at most this many handled at once; the next ones wait their turn...
    rc_concurrent: int = 5
    # ...up to this many waiting; past that, 429 M_LIMIT_EXCEEDED.
    rc_queued: int = 100
    # Per client address on the unsigned /_matrix/key/v2 routes (our keys, the notary),
    # which name no origin to limit by; off with rate_limits.enabled.
    rc_key_requests_per_ip: RateLimit = RateLimit(10.0, 50)
    # Largest body of an inbound transaction (PUT /send/{txnId}: up to 50 PDUs of 64 KiB
    # and 100 EDUs) and of any other inbound federation request; 413 M_TOO_LARGE past it.
    max_transaction_size: Size = Size(4 * 1024 * 1024)
    max_request_body_size: Size = Size(512 * 1024)

    def networks(self, which: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """`ip_range_blacklist` or `ip_range_whitelist` as networks (checked at load)."""
        return [ipaddress.ip_network(cidr, strict=False) for cidr in getattr(self, f"ip_range_{which}")]


# The streams besides events that each have one writing instance (workers.stream_writers).
STREAMS = ("receipts", "typing", "presence", "account_data", "to_device", "device_lists")
# The jobs that run on one instance only (workers.pusher, .federation_sender, .background).
JOBS = ("pusher", "federation_sender", "background")


@dataclass(frozen=True)
class WorkerInstance:
    # "HOST:PORT" of this instance's client listener; empty: listen.bind and listen.port.
    listen: str = ""
    # "HOST:PORT" of its internal listener (requests between instances; keep it private).
    internal: str = ""


@dataclass(frozen=True)
class WorkersConfig:
    # Redis between the instances (pub/sub); required with more than one instance.
    redis_url: str = ""
    # Prepended to every Redis channel name (several deployments on one Redis).
    redis_prefix: str = "hs:"
    # The shared secret of internal requests, or a file holding it (made if missing).
    secret: str = ""
    secret_file: str = ""
    # Instance name -> its listeners. Empty: one process, as without this section.
    instances: dict[str, WorkerInstance] = field(default_factory=dict)
    # The instances that write events; each room belongs to one of them (by a hash of its id).
    event_writers: list[str] = field(default_factory=list)
    # Stream name -> the one instance writing it; a stream not named: the first event writer.
    stream_writers: dict[str, str] = field(default_factory=dict)
    # The instance running pushers, the federation sender and the periodic jobs (empty: the
    # first event writer).
    pusher: str = ""
    federation_sender: str = ""
    background: str = ""
    # A request to another instance gives up after this long (503, the client retries).
    rpc_timeout: Duration = Duration(30_000)
    # On SIGTERM, GET /health answers 503 this long before the listener closes, so a load
    # balancer stops sending new requests first. None: 2s with several instances, else 0.
    drain_delay: Duration | None = None

    @property
    def drain_delay_ms(self) -> int:
        if self.drain_delay is not None:
            return int(self.drain_delay)
        return 2000 if self.multi else 0

    @property
    def multi(self) -> bool:
        return len(self.instances) > 1


@dataclass(frozen=True)
class PluginConfig:
    module: str = ""
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    server_name: str = ""
    public_baseurl: str = ""
    data_dir: str = "./data"
    signing_key_path: str | None = None
    listen: ListenConfig = field(default_factory=ListenConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    registration: RegistrationConfig = field(default_factory=RegistrationConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    email: EmailConfig = field(default_factory=EmailConfig)
    rate_limits: RateLimitsConfig = field(default_factory=RateLimitsConfig)
    encryption: EncryptionConfig = field(default_factory=EncryptionConfig)
    user_directory: UserDirectoryConfig = field(default_factory=UserDirectoryConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    pushers: PushersConfig = field(default_factory=PushersConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    web_client: WebClientConfig = field(default_factory=WebClientConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    plugins: list[PluginConfig] = field(default_factory=list)
    # Where the YAML came from; relative paths in it are relative to the working directory.
    source: str = "<defaults>"

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def signing_key_file(self) -> Path:
        return Path(self.signing_key_path) if self.signing_key_path else self.data_path / "signing.key"

    @property
    def base_url(self) -> str:
        return self.public_baseurl.rstrip("/")


# Keys that must be present and non-empty in the file.
REQUIRED = ("server_name",)

# Environment variables that override a key (secrets stay out of the file).
ENV_OVERRIDES = {
    "HOMESERVER_DATABASE_URL": ("database", "url"),
    "HOMESERVER_JWT_SECRET": ("auth", "jwt_secret"),
    "HOMESERVER_SMTP_HOST": ("email", "smtp", "host"),
    "HOMESERVER_SMTP_USERNAME": ("email", "smtp", "username"),
    "HOMESERVER_SMTP_PASSWORD": ("email", "smtp", "password"),
    "HOMESERVER_METRICS_BEARER_SECRET": ("metrics", "bearer_secret"),
    "HOMESERVER_WORKERS_SECRET": ("workers", "secret"),
}

_CHOICES = {
    "auth.password_hashing": ("interactive", "moderate", "fast"),
    "email.smtp.security": ("starttls", "tls", "none"),
    "logging.level": ("DEBUG", "INFO", "WARNING", "ERROR"),
    "encryption.enabled_by_default_for_room_type": ("all", "invite", "off"),
}


# libyaml's safe loader when PyYAML was built with it: the same documents, parsed in a fifth
# of the time (~5 ms less at every start).
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_config(path: str | os.PathLike[str], env: typing.Mapping[str, str] | None = None) -> Config:
    """Read, validate and return the config at `path`; raise ConfigError on any problem."""
    source = str(path)
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.load(f, Loader=_YAML_LOADER)  # noqa: S506 - a safe loader
    except OSError as e:
        raise ConfigError(f"{source}: cannot read config: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {str(e).splitlines()[0]}") from None
    return parse_config(raw if raw is not None else {}, source, os.environ if env is None else env)


def parse_config(raw: Any, source: str = "<config>", env: typing.Mapping[str, str] | None = None) -> Config:
    """Validate an already-parsed YAML document into a Config."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the config must be a mapping of keys")
    raw = dict(raw)
    for var, keys in ENV_OVERRIDES.items() if env else ():
        if env is not None and env.get(var):
            _set_nested(raw, keys, env[var])
    for key in REQUIRED:
        if not raw.get(key):
            raise ConfigError(f"{source}: missing required key '{key}'")
    config = _build(Config, raw, "", source)
    config = dataclasses.replace(config, source=source)
    _check_values(config, source)
    return effective(config)


def _set_nested(raw: dict[str, Any], keys: tuple[str, ...], value: str) -> None:
    node = raw
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
        node[key] = child = dict(child)
        node = child
    node[keys[-1]] = value


def _build(cls: type, raw: Any, prefix: str, source: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: '{prefix.rstrip('.') or '<root>'}' must be a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.name != "source"}
    for key in raw:
        if key not in names:
            raise ConfigError(f"{source}: unknown key '{prefix}{key}'")
    values = {}
    for name in names:
        if name in raw:
            values[name] = _convert(hints[name], raw[name], f"{prefix}{name}", source)
    return cls(**values)


def _convert(hint: Any, value: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, key, source)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value if value is not None else {}, key + ".", source)  # type: ignore[arg-type]
    try:
        if hint is Duration:
            return _parse_duration(value)
        if hint is Size:
            return _parse_size(value)
    except ValueError as e:
        raise ConfigError(f"{source}: '{key}': {e}, got {value!r}") from None
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: '{key}' must be a list, got {type(value).__name__}")
        return [_convert(args[0], v, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{key}' must be a mapping, got {type(value).__name__}")
        if any(not isinstance(k, str) for k in value):
            raise ConfigError(f"{source}: '{key}' must be a mapping with string keys")
        if dataclasses.is_dataclass(args[1]):
            return {k: _convert(args[1], v, f"{key}.{k}", source) for k, v in value.items()}
        return dict(value)
    expected = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}[hint]
    if isinstance(value, bool) and hint is not bool or not isinstance(value, expected):
        raise ConfigError(f"{source}: '{key}' must be of type {hint.__name__}, got {type(value).__name__}")
    return float(value) if hint is float else value  # type: ignore[arg-type]


# Spec appendix "Server Name": a DNS name, IPv4 literal or bracketed IPv6 literal, optional port.
_SERVER_NAME = re.compile(r"[A-Za-z0-9.\-]+(:\d{1,5})?|\[[0-9a-fA-F:.]+\](:\d{1,5})?")


def _check_values(config: Config, source: str) -> None:
    for key, allowed in _CHOICES.items():
        value: Any = config
        for part in key.split("."):
            value = getattr(value, part)
        if value not in allowed:
            raise ConfigError(f"{source}: '{key}' must be one of {', '.join(allowed)}, got {value!r}")
    if not _SERVER_NAME.fullmatch(config.server_name):
        raise ConfigError(f"{source}: 'server_name' is not a valid server name: {config.server_name!r}")
    if not (1 <= config.listen.port <= 65535):
        raise ConfigError(f"{source}: 'listen.port' must be between 1 and 65535")
    if config.listen.max_connections_per_ip < 1:
        raise ConfigError(f"{source}: 'listen.max_connections_per_ip' must be at least 1")
    if config.listen.max_connections is not None and config.listen.max_connections < 1:
        raise ConfigError(f"{source}: 'listen.max_connections' must be at least 1, or empty")
    for cidr in config.listen.trusted_proxies:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except (ValueError, TypeError):
            raise ConfigError(f"{source}: 'listen.trusted_proxies': {cidr!r} is not a CIDR range") from None
    _check_metrics(config.metrics, source)
    url = config.database.url
    if url and not (url.startswith("sqlite:///") or url.startswith(("postgresql://", "postgres://"))):
        raise ConfigError(f"{source}: 'database.url' must start with sqlite:/// or postgresql://")
    if config.public_baseurl and not config.public_baseurl.startswith(("http://", "https://")):
        raise ConfigError(f"{source}: 'public_baseurl' must be an http(s) URL")
    for i, plugin in enumerate(config.plugins):
        if not plugin.module:
            raise ConfigError(f"{source}: missing required key 'plugins[{i}].module'")
    _check_retention(config.retention, source)
    _check_federation(config.federation, source)
    _check_workers(config, source)
    if config.registration.password_min_length < 1:
        raise ConfigError(f"{source}: 'registration.password_min_length' must be at least 1")


def _check_metrics(metrics: MetricsConfig, source: str) -> None:
    if not (1 <= metrics.port <= 65535):
        raise ConfigError(f"{source}: 'metrics.port' must be between 1 and 65535")
    try:
        address = ipaddress.ip_address(metrics.bind_address)
    except ValueError:
        raise ConfigError(f"{source}: 'metrics.bind_address' must be an IP address") from None
    if metrics.enabled and not address.is_loopback and not metrics.allow_public_bind:
        raise ConfigError(
            f"{source}: 'metrics.bind_address' {metrics.bind_address} is not a loopback address;"
            " set 'metrics.allow_public_bind: true' to serve metrics there"
        )
    if metrics.bearer_secret and len(metrics.bearer_secret) < 16:
        raise ConfigError(f"{source}: 'metrics.bearer_secret' must be at least 16 characters")
    if metrics.activity_refresh < 1000:
        raise ConfigError(f"{source}: 'metrics.activity_refresh' must be at least 1s")


def _check_federation(federation: FederationConfig, source: str) -> None:
    if federation.port is not None:
        if not (1 <= federation.port <= 65535):
            raise ConfigError(f"{source}: 'federation.port' must be between 1 and 65535")
        if not federation.tls_certificate or not federation.tls_private_key:
            raise ConfigError(
                f"{source}: 'federation.port' needs 'federation.tls_certificate' and"
                " 'federation.tls_private_key' (the listener speaks TLS only)"
            )
    try:
        ipaddress.ip_address(federation.bind_address)
    except ValueError:
        raise ConfigError(f"{source}: 'federation.bind_address' must be an IP address") from None
    if federation.key_validity < 3_600_000:
        raise ConfigError(f"{source}: 'federation.key_validity' must be at least 1h")
    if federation.rc_concurrent < 1 or federation.rc_queued < 0:
        raise ConfigError(
            f"{source}: 'federation.rc_concurrent' must be at least 1 and 'federation.rc_queued' at least 0"
        )
    for name in ("rc_requests", "rc_key_requests_per_ip"):
        limit = getattr(federation, name)
        if limit.per_second <= 0 or limit.burst < 1:
            raise ConfigError(f"{source}: 'federation.{name}' needs per_second > 0 and burst >= 1")
    for which in ("max_transaction_size", "max_request_body_size"):
        if getattr(federation, which) < 65536:
            raise ConfigError(f"{source}: 'federation.{which}' must be at least 64K (one PDU)")
    if federation.request_timeout < 1000:
        raise ConfigError(f"{source}: 'federation.request_timeout' must be at least 1s")
    for key_id, old in federation.old_verify_keys.items():
        if not re.fullmatch(r"ed25519:[A-Za-z0-9_]+", key_id) or not old.key:
            raise ConfigError(
                f"{source}: 'federation.old_verify_keys.{key_id}' must be named ed25519:VERSION"
                " and give its base64 'key'"
            )
    for which in ("blacklist", "whitelist"):
        for cidr in getattr(federation, f"ip_range_{which}"):
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ConfigError(
                    f"{source}: 'federation.ip_range_{which}': {cidr!r} is not a CIDR range"
                ) from None
    for name in (*federation.trusted_key_servers, *filter(None, [federation.well_known_server])):
        if not _SERVER_NAME.fullmatch(name):
            raise ConfigError(f"{source}: federation: {name!r} is not a valid server name")


_HOST_PORT = re.compile(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-]+):(\d{1,5})")


def split_host_port(value: str) -> tuple[str, int]:
    """ "HOST:PORT" (HOST may be a bracketed IPv6 literal) -> (host, port); ValueError if not."""
    m = _HOST_PORT.fullmatch(value)
    if not m or not 1 <= int(m.group(2)) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return m.group(1).strip("[]"), int(m.group(2))


def _check_workers(config: Config, source: str) -> None:
    workers = config.workers
    names = set(workers.instances)
    for name, instance in workers.instances.items():
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
            raise ConfigError(f"{source}: 'workers.instances': {name!r} is not a valid instance name")
        for which in ("listen", "internal"):
            value = getattr(instance, which)
            if value or (which == "internal" and workers.multi):
                try:
                    split_host_port(value)
                except ValueError as e:
                    raise ConfigError(f"{source}: 'workers.instances.{name}.{which}': {e}") from None
    if not names:
        if workers.event_writers or workers.stream_writers or workers.pusher or workers.federation_sender:
            raise ConfigError(f"{source}: 'workers' names writers but no 'workers.instances'")
        return
    if not workers.event_writers:
        raise ConfigError(f"{source}: 'workers.event_writers' must name at least one instance")
    if len(set(workers.event_writers)) != len(workers.event_writers):
        raise ConfigError(f"{source}: 'workers.event_writers' names an instance twice")
    named = [(f"event_writers[{i}]", n) for i, n in enumerate(workers.event_writers)]
    for stream, writer in workers.stream_writers.items():
        if stream not in STREAMS:
            raise ConfigError(
                f"{source}: 'workers.stream_writers.{stream}': not a stream (one of {', '.join(STREAMS)})"
            )
        if not isinstance(writer, str):
            raise ConfigError(f"{source}: 'workers.stream_writers.{stream}' must name an instance")
        named.append((f"stream_writers.{stream}", writer))
    named += [(job, getattr(workers, job)) for job in JOBS if getattr(workers, job)]
    for key, name in named:
        if name not in names:
            raise ConfigError(f"{source}: 'workers.{key}': {name!r} is not in 'workers.instances'")
    if workers.multi:
        if not config.database.url.startswith(("postgresql://", "postgres://")):
            raise ConfigError(
                f"{source}: several 'workers.instances' need PostgreSQL in 'database.url' (one database)"
            )
        if not workers.redis_url.startswith("redis://"):
            raise ConfigError(
                f"{source}: several 'workers.instances' need 'workers.redis_url' (redis://HOST:PORT/DB)"
            )
        if not workers.secret and not workers.secret_file:
            raise ConfigError(
                f"{source}: several 'workers.instances' need 'workers.secret' or 'workers.secret_file'"
            )
    if workers.secret and len(workers.secret) < 16:
        raise ConfigError(f"{source}: 'workers.secret' must be at least 16 characters")
    if workers.rpc_timeout < 100:
        raise ConfigError(f"{source}: 'workers.rpc_timeout' must be at least 100ms")


def _check_retention(retention: RetentionConfig, source: str) -> None:
    low, high = retention.allowed_lifetime_min, retention.allowed_lifetime_max
    if low is not None and high is not None and low > high:
        raise ConfigError(
            f"{source}: 'retention.allowed_lifetime_min' is above 'retention.allowed_lifetime_max'"
        )
    if retention.purge_interval <= 0:
        raise ConfigError(f"{source}: 'retention.purge_interval' must be above 0")
    if retention.purge_batch_size < 1:
        raise ConfigError(f"{source}: 'retention.purge_batch_size' must be at least 1")
    if retention.default_policy.max_lifetime == 0:
        raise ConfigError(f"{source}: 'retention.default_policy.max_lifetime' must be above 0 (or null)")


def effective(config: Config) -> Config:
    """Fill defaults that depend on other keys (database file, public URL)."""
    updates: dict[str, Any] = {}
    if not config.database.url:
        db_file = (config.data_path / "homeserver.db").as_posix()
        updates["database"] = dataclasses.replace(config.database, url=f"sqlite:///{db_file}")
    if not config.public_baseurl:
        updates["public_baseurl"] = f"http://{config.listen.bind}:{config.listen.port}/"
    return dataclasses.replace(config, **updates) if updates else config
