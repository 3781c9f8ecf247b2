"""The complete, commented config that `homeserver generate-config` prints.

`config/homeserver.yaml` is this template rendered with the `make run` defaults;
a test keeps the two (and the settings in `config.py`) in step.
"""

from __future__ import annotations

import json
from string import Template

TEMPLATE = Template(
    """\
# Homeserver configuration. Every key is listed with its default; durations are
# written as 500ms, 30s, 5m, 1h or 30d, sizes as 512K, 1M or 2G.
# Secrets can also come from the environment (they win over this file):
#   HOMESERVER_DATABASE_URL, HOMESERVER_JWT_SECRET, HOMESERVER_SMTP_HOST,
#   HOMESERVER_SMTP_USERNAME, HOMESERVER_SMTP_PASSWORD, HOMESERVER_METRICS_BEARER_SECRET,
#   HOMESERVER_WORKERS_SECRET

# The domain part of user ids (@alice:SERVER_NAME). Required; cannot change later.
server_name: "$server_name"

# The URL clients reach this server at (used in links in mails and in
# /.well-known/matrix/client). Empty: http://BIND:PORT/.
public_baseurl: "$public_baseurl"

# Where the server keeps its files: the SQLite database, the signing key,
# the token secret, plugin data and (without SMTP) outgoing mail.
data_dir: "$data_dir"

# The server's ed25519 signing key. Empty: DATA_DIR/signing.key (created if missing).
signing_key_path: null

listen:
  # Address and port of the HTTP and WebSocket listener.
  bind: "$bind"
  port: $port
  # Load balancers in front (CIDR ranges, e.g. ["127.0.0.1/32", "10.0.0.0/8"]): a request
  # from one of them counts as coming from the address it appends to X-Forwarded-For
  # (HAProxy `option forwardfor`, nginx `proxy_add_x_forwarded_for`), for per-address
  # rate limits, the access log (HTTP and WebSocket) and devices' last-seen address.
  # Empty: every request is its TCP peer's, headers ignored.
  # Never list addresses clients can connect from directly: they could name any address.
  trusted_proxies: []
  # Connections open at once from one client address (an IPv6 client by its /64): past
  # it a new one is closed as it is accepted, unanswered, and the log warns once a minute
  # for that address. A browser opens about 6 to a host; an office or a mobile carrier's
  # NAT puts hundreds of users behind one address, and so does a TLS proxy left out of
  # trusted_proxies, so this is generous: it stops one machine holding tens of thousands
  # to use up the server's file descriptors. Connections from trusted_proxies are not
  # counted per address (every client comes through them): the balancer must cap each
  # client, as deploy/haproxy.cfg and deploy/nginx.conf do (docs/limits.md, "Connections").
  max_connections_per_ip: 2048
  # Connections open at once on the client and federation listeners (the workers'
  # internal listener is not capped); past it new ones are closed as accepted, with a
  # warning once a minute. Empty: derived from the open-files limit, which the server
  # raises at start from its soft to its hard value (`ulimit -Hn`, systemd's LimitNOFILE):
  # 256 kept back for the database, Redis, logs and outgoing connections, and three
  # quarters of the rest, the last quarter for the files requests open (media, large
  # bodies): 576 of 1,024, 48,960 of 65,536.
  max_connections: null

database:
  # sqlite:///PATH (a file; WAL mode) or postgresql://USER@HOST:PORT/DB.
  # Empty: sqlite:///DATA_DIR/homeserver.db.
  url: "$database_url"
  # Connection pool bounds (PostgreSQL only; SQLite uses one connection).
  pool_min: 2
  pool_max: 10

registration:
  # Whether anyone may create an account (POST /register, /api/auth/register).
  enabled: $open_registration
  # New accounts must prove their email address (a mail with a link and a code);
  # an unverified account cannot log in.
  require_email_verification: $require_email_verification
  # If not empty, registering needs one of these tokens (m.login.registration_token).
  tokens: []
  # Registering needs a token: one of 'tokens' or one an admin made with the admin
  # plugin's /_synapse/admin/v1/registration_tokens (uses and expiry; docs/admin.md).
  requires_token: false
  # Shortest password accepted.
  password_min_length: 8

auth:
  # Secret that signs access tokens (JWT, HS256). Empty: a random one is made
  # once in DATA_DIR/jwt.secret. Changing it logs everyone out.
  jwt_secret: null
  # Lifetime of an access token issued with a refresh token.
  access_token_lifetime: 1h
  # Lifetime of an access token for clients that cannot refresh.
  non_refreshable_token_lifetime: 365d
  # Lifetime of a refresh token (each is used once and replaced).
  refresh_token_lifetime: 30d
  # argon2id cost: interactive (default), moderate (slower, stronger) or
  # fast (test suites only: trivially cheap to brute-force).
  password_hashing: interactive

email:
  # The From: of verification and password-reset mails.
  sender: "Homeserver <noreply@localhost>"
  # How long a mailed link or code stays valid.
  token_lifetime: 1h
  smtp:
    # SMTP server. Empty: mails are written to DATA_DIR/mail/ and the log says where.
    host: null
    port: 587
    # starttls, tls (implicit TLS, usually port 465) or none.
    security: starttls
    username: null
    password: null
    # Give up on an SMTP conversation after this long.
    timeout: 10s

rate_limits:
  # Turn every limit below off (load tests only).
  enabled: true
  # Each limit is a token bucket: 'burst' requests at once, refilled at 'per_second'.
  # "One IP address" below: an IPv6 client's whole /64 (a host is often given one), and
  # behind a balancer the address it forwards (listen.trusted_proxies).
  # Login attempts from one IP address.
  login_per_ip: {per_second: 0.2, burst: 10}
  # Failed logins to one account, from anywhere.
  login_failures_per_account: {per_second: 0.05, burst: 5}
  # Registrations from one IP address.
  register_per_ip: {per_second: 0.1, burst: 5}
  # Verification and password-reset mails (and code attempts) from one IP address.
  password_reset_per_ip: {per_second: 0.05, burst: 3}
  # Password-reset mails to one address.
  password_reset_per_account: {per_second: 0.01, burst: 3}
  # What one account does; over the limit: 429 M_LIMIT_EXCEEDED with retry_after_ms
  # and a Retry-After header (whole seconds, rounded up).
  # Events sent: messages (PUT .../send/...), redactions, the simple API's sends.
  send_per_user: {per_second: 10, burst: 100}
  # Rooms created (POST /createRoom, new direct chats and groups of the simple API).
  create_room_per_user: {per_second: 0.05, burst: 10}
  # Rooms joined (POST /join/{room}, /rooms/{id}/join) and knocked on (POST /knock/{room}).
  join_per_user: {per_second: 0.1, burst: 20}
  # Invitations sent (POST /rooms/{id}/invite, and each user of createRoom's 'invite'
  # list, of the simple API's new direct chats and groups: a list longer than 'burst'
  # answers 400 M_INVALID_PARAM).
  invite_per_user: {per_second: 0.2, burst: 20}
  # Media uploads (the media plugin's upload endpoints).
  media_upload_per_user: {per_second: 1, burst: 20}
  # Reports of events, rooms and users (POST .../report...).
  report_per_user: {per_second: 1, burst: 5}
  # Display name and avatar changes (PUT and DELETE /profile/{userId}/...): each makes a
  # member event in every room the user is joined to, and costs that many (at least 1). One
  # token is enough for a change, the bucket may then go below zero: a user in more rooms
  # than 'burst' changes once, then waits for it to refill.
  profile_update_per_user: {per_second: 2, burst: 1000}
  # Room aliases made (PUT /directory/room/{alias}; not createRoom's room_alias_name,
  # which comes with its room).
  create_alias_per_user: {per_second: 0.05, burst: 10}
  # Typing notices (PUT /rooms/{id}/typing/{userId}, true or false): a change wakes the
  # syncs of every member of the room. Clients send one every few seconds while typing.
  # Other servers' m.typing for their users count the same (past it they are dropped).
  typing_per_user: {per_second: 2, burst: 30}
  # To-device messages (PUT /sendToDevice): one per device messaged, `*` counted as
  # each device of its user. A request past the burst goes through once when the bucket
  # holds anything, then waits for it to refill (a room key shared in a large room).
  to_device_per_user: {per_second: 100, burst: 10000}
  # Read receipts and fully-read markers (POST /rooms/{id}/receipt/..., each marker of
  # POST /rooms/{id}/read_markers): each is a write, and a public receipt wakes every
  # member's sync. Clients send one or two each time a chat is read. A read_markers call
  # takes its markers at once (stored all or none; one token lets it through). Other
  # servers' receipts for their users count the same (past it they are dropped).
  receipt_per_user: {per_second: 10, burst: 200}

user_directory:
  # POST /user_directory/search finds users who share a room with the searcher or
  # are in a room anyone may join. true: every local user is found by everyone.
  search_all_users: false

search:
  # POST /search and /user_directory/search read indexes filled just after each
  # commit (off the send path); they wait up to this long for the indexes to hold
  # everything committed before the request.
  # Encrypted rooms are not searchable on the server (it only sees ciphertext).
  index_wait: 2s

encryption:
  # Which new rooms are end-to-end encrypted from the start (m.room.encryption,
  # m.megolm.v1.aes-sha2): "invite" = private and direct chats (presets
  # private_chat and trusted_private_chat), "all" = every room, "off" = none.
  # Clients do the cryptography; the server only routes keys and ciphertext.
  enabled_by_default_for_room_type: invite

limits:
  # Largest request body accepted (413 M_TOO_LARGE above it). Media uploads have their own limit.
  max_request_body_size: 1M
  # All of one user's account data (global and per room, room tags included) as stored
  # JSON; a write past it answers 413 M_TOO_LARGE. Clients store kilobytes (a bot with
  # thousands of direct chats: a few hundred K of m.direct).
  max_account_data_per_user: 16M
  # What one device's queue of to-device messages (room keys, verification) may hold
  # until the device syncs. A device that never syncs again (a lost phone never logged
  # out) keeps all it is sent; past this, a message is not queued for it (the request's
  # other recipients still get theirs) and the server logs a warning. Room keys are ~2 K.
  max_to_device_queued_per_device: 64M

pushers:
  # The most pushers (POST /pushers/set) one user may have; past it, 403 M_FORBIDDEN.
  max_per_user: 10
  # Let pusher URLs point at loopback, private, link-local and other non-public
  # addresses (checked when a pusher is set and again at each delivery, on the
  # address its host resolves to). Only for a push gateway on your own network.
  allow_private_addresses: false

retention:
  # Delete expired history (MSC1763): a room's m.room.retention state event
  # (max_lifetime, min_lifetime in ms) or the default below says how long its
  # messages are kept. State events, the newest event and media still shared
  # elsewhere are kept (docs/retention.md).
  enabled: false
  default_policy:
    # For rooms without m.room.retention: e.g. 30d. null: kept forever.
    max_lifetime: null
  # A room's own max_lifetime is clamped into [min, max]; null: no bound.
  allowed_lifetime_min: null
  allowed_lifetime_max: null
  # How often the purge job runs, and how many events it deletes per transaction.
  purge_interval: 1h
  purge_batch_size: 100

logging:
  # DEBUG, INFO, WARNING or ERROR.
  level: INFO
  # One line per request: client IP, method, path (never the query), status, time.
  access_log: true

metrics:
  # Prometheus metrics (text format): requests and latency per route, long-polls and
  # WebSocket streams, commits, pool waits, collector pauses, stream-consumer lag,
  # plugins' metrics, active users and messages per day (docs/operations.md, "Metrics").
  # Not served unless enabled here or a bearer_secret is set.
  # A listener of its own serving GET /metrics.
  enabled: false
  bind_address: 127.0.0.1
  port: 9092
  # A bind_address that is not loopback is refused unless this is true (metrics name
  # routes and show load and user counts: keep them off the public interface).
  allow_public_bind: false
  # Also serve GET /_homeserver/metrics on the main listener to a scraper that sends
  # "Authorization: Bearer <this secret>" (at least 16 characters; the environment
  # variable HOMESERVER_METRICS_BEARER_SECRET overrides it). Empty: that path is 404.
  bearer_secret: ""
  # How often daily and monthly active users and messages per day are recounted
  # (a query off the request path; the gauges appear after the first count).
  activity_refresh: 5m

web_client:
  # The web client (docs/web-client.md), served at / from the files `make run` builds
  # into web/dist. The API paths (/_matrix, /_homeserver, /_synapse, /_plugins, /_admin,
  # /api, /.well-known) keep precedence; a page load of a path that names no file gets
  # index.html (the client's own routes).
  # A relative path is relative to the working directory.
  enabled: true
  path: web/dist

federation:
  # Talking to other Matrix servers (the Server-Server API; docs/federation.md).
  # The TLS listener other servers connect to; null: none (other servers then reach
  # this one only through a reverse proxy to the main listener, which serves the
  # same /_matrix/federation and /_matrix/key paths).
  port: $federation_port
  bind_address: 0.0.0.0
  # The listener's certificate (PEM, leaf first, then its chain) and private key
  # (PEM). Required with port. The certificate must name the server name's host
  # (or the host that /.well-known/matrix/server delegates to).
  tls_certificate: $tls_certificate
  tls_private_key: $tls_private_key
  # Extra CA certificates (PEM) trusted when this server connects to others, on top of
  # the system's CAs: for a private CA (tests, closed federations). null: system CAs only.
  ca_file: $federation_ca
  # How long other servers may cache our signing key (valid_until_ts = now + this).
  key_validity: 7d
  # Keys this server used to sign with, still published so that old events verify:
  #   "ed25519:a_OLD1": {key: "<unpadded base64 public key>", expired_ts: 1700000000000}
  old_verify_keys: {}
  # Notary servers asked for another server's keys when it cannot be reached itself
  # (e.g. ["matrix.org"]). Empty: keys are fetched from each server only.
  trusted_key_servers: []
  # When set, GET /.well-known/matrix/server answers {"m.server": this} (e.g.
  # "matrix.example.org:443"): delegation of the server name to another host and port.
  well_known_server: ""
  # One request to another server gives up after this long.
  request_timeout: 30s
  # Requests to other servers never connect to loopback, private, link-local, shared,
  # multicast or reserved addresses (a server name or its .well-known could point at
  # this host's own network), nor to these (CIDR list)...
  ip_range_blacklist: []
  # ...except to these (CIDR list), e.g. ["127.0.0.0/8", "::1/128"] for servers that
  # all run on one host, or a private network of servers federating among themselves.
  ip_range_whitelist: []
  # Limits per origin server on inbound requests, applied once the request's X-Matrix
  # signature names the origin (forged requests spend nothing of a server's allowance);
  # off with rate_limits.enabled: false. A token bucket of requests (429
  # M_LIMIT_EXCEEDED with retry_after_ms when empty)...
  rc_requests: {per_second: 50, burst: 250}
  # ...at most this many of one origin's requests handled at once; the next ones wait
  # their turn...
  rc_concurrent: 5
  # ...and at most this many waiting; past that, 429 M_LIMIT_EXCEEDED.
  rc_queued: 100
  # The unsigned key routes (/_matrix/key/v2/server and the notary's /query) name no
  # origin: a token bucket per client address instead (an IPv6 client's per /64; 429
  # M_LIMIT_EXCEEDED when empty).
  rc_key_requests_per_ip: {per_second: 10, burst: 50}
  # Largest inbound transaction body (PUT /_matrix/federation/v1/send/{txnId}: up to 50
  # PDUs of 64 KiB each and 100 EDUs), checked as it arrives (413 M_TOO_LARGE)...
  max_transaction_size: 4M
  # ...and of any other inbound federation request (/_matrix/key bodies: 64K).
  max_request_body_size: 512K

workers:
  # Several processes of this server (docs/architecture.md, "Past one process";
  # docs/scaling.md). Each runs `homeserver run -c CONFIG --worker NAME` with this same
  # file. No instances (the default): one process that does everything.
  # Instance name -> its listeners: `listen` (HOST:PORT) replaces listen.bind/port for
  # its clients; `internal` (HOST:PORT) takes requests from the other instances (keep
  # it on loopback or a private network). Example:
  #   w1: {listen: "127.0.0.1:8101", internal: "127.0.0.1:9101"}
  #   w2: {listen: "127.0.0.1:8102", internal: "127.0.0.1:9102"}
  instances: {}
  # Redis between the instances (redis://HOST:PORT/DB); required with several.
  redis_url: ""
  # Prepended to every Redis channel (several servers may share one Redis).
  redis_prefix: "hs:"
  # The shared secret of internal requests and of Redis messages (each signed with it;
  # others are dropped), at least 16 characters (the environment
  # variable HOMESERVER_WORKERS_SECRET overrides it), or a file holding it, made with
  # a random one if missing. Required with several instances.
  secret: ""
  secret_file: ""
  # The instances that write events: each room's events are written by one of them,
  # chosen by the CRC-32 of the room id modulo their number, in this order (HAProxy routes
  # a room's writes the same way: keep deploy/haproxy.cfg's mod(N) and use-server lines in
  # step, `homeserver deploy-check -c CONFIG --haproxy FILE` says whether they are); the
  # others forward to it. At least one.
  event_writers: []
  # The one instance writing each other stream (receipts, typing, presence,
  # account_data, to_device, device_lists); a stream not named: the first event writer.
  stream_writers: {}
  # The instance that runs the pushers, the one sending to other servers, and the one
  # running the periodic jobs (retention, stats...) and filling the search index and the
  # user directory (searches elsewhere wait for it). Empty: the first event writer.
  pusher: ""
  federation_sender: ""
  background: ""
  # A request to another instance gives up after this long (503: the client retries).
  rpc_timeout: 30s
  # On SIGTERM, GET /health answers 503 for this long while requests are still taken,
  # then the listener closes and requests in flight finish: a load balancer checking
  # /health moves new requests elsewhere first. null: 2s with several instances, else 0.
  drain_delay: null

# Plugins: each entry names a plugin class and its own config block.
# See docs/plugins.md. Example:
#   - module: plugins.example.ExamplePlugin
#     config: {greeting: "Hello"}
plugins:$plugins
"""
)

DEFAULT_PLUGINS = """
  # A small demonstration plugin: GET /_plugins/example/hello, an event counter.
  - module: plugins.example.ExamplePlugin
    config:
      greeting: "Hello"
  # Media: uploads, downloads, thumbnails and URL previews (the Matrix content
  # repository) and POST /api/media/upload. See docs/media.md.
  - module: plugins.media.MediaPlugin
    config:
      # Largest upload accepted (413 M_TOO_LARGE above it, checked while it arrives);
      # clients read it from /_matrix/client/v1/media/config (m.upload.size).
      max_upload_size: 50M
      # Total size of the media one user may keep (0: no quota).
      user_quota: 1G
      # Who may download: the uploader, members of a room where the media was
      # shared, and admins (true); or any logged-in user (false).
      restrict_to_rooms: true
      # Also serve the deprecated unauthenticated /_matrix/media/v3/download and
      # /thumbnail paths (anyone with the URL can fetch the media).
      legacy_unauthenticated_download: false
      storage:
        # local (files under 'path') or s3 (any S3-compatible server).
        provider: local
        # Directory of the local provider. Empty: DATA_DIR/plugins/media/store.
        path: ""
        # The s3 provider. Each value can also come from the environment (which
        # wins): HOMESERVER_MEDIA_S3_ENDPOINT_URL, _BUCKET, _REGION,
        # _ACCESS_KEY_ID, _SECRET_ACCESS_KEY. Without keys, boto3's usual
        # credential chain (AWS_* variables, instance roles) is used.
        s3:
          # Empty: AWS itself; else e.g. http://127.0.0.1:8333 (path-style addressing).
          endpoint_url: ""
          # The bucket (it must exist); required with provider s3.
          bucket: ""
          # The signing region.
          region: us-east-1
          # Credentials (better from the environment than from this file).
          access_key_id: null
          secret_access_key: null
          # Prepended to every object key (e.g. "media").
          prefix: ""
      thumbnails:
        # The sizes made (on first request, then kept); a request gets the
        # smallest of its method at least as large as asked.
        sizes:
          - {width: 32, height: 32, method: crop}
          - {width: 96, height: 96, method: crop}
          - {width: 320, height: 240, method: scale}
          - {width: 640, height: 480, method: scale}
          - {width: 800, height: 600, method: scale}
        # Images with more pixels are never decoded (decompression-bomb guard).
        max_image_pixels: 32000000
        # A poster frame (and dimensions) for videos, if ffmpeg is installed.
        video_posters: true
      async_uploads:
        # How long a media id from POST /_matrix/media/v1/create waits for its content.
        unused_expiry: 24h
        # Ids one user may have waiting at once (429 M_LIMIT_EXCEEDED above).
        max_pending: 10
      retention:
        # Delete uploads never shared in any event after this long (0: keep them);
        # opaque ones (encrypted attachments, shared only inside encrypted events) stay.
        unreferenced_max_age: 0
        # How often the cleanup job runs (it also drops lapsed async-upload ids).
        interval: 1h
      url_preview:
        # Serve /_matrix/client/v1/media/preview_url (the server fetches the URL).
        enabled: false
        # Bytes of a page read at most.
        max_size: 1M
        # The whole fetch, redirects included, gives up after this long.
        timeout: 10s
        # Redirects followed at most (each new address is checked again).
        max_redirects: 5
        # Never fetched, besides the built-in loopback, private, link-local,
        # shared, multicast and reserved ranges (CIDR list).
        ip_range_blacklist: []
        # Allowed even inside a blocked range (CIDR list).
        ip_range_whitelist: []
        # How long a preview is reused.
        cache: 1h
  # Push gateway: POST /_matrix/push/v1/notify (the Matrix Push Gateway API, no
  # Matrix auth: homeservers call it), so no separate Sygnal is needed. Routes each
  # device by its pusher's app_id to FCM, Web Push or another gateway; unknown app
  # ids are answered as rejected pushkeys. See docs/push-gateway.md.
  - module: plugins.push.gateway.PushGatewayPlugin
    config:
      # Largest notify request accepted (413 M_TOO_LARGE above it).
      max_body_size: 256K
      # Each request to FCM, a push service or another gateway gives up after this long.
      timeout: 10s
      retry:
        # Tries per device for failures that may pass (5xx, 429, no answer); then
        # the notify request is answered 502 and the homeserver sends it again.
        attempts: 3
        # Pause before the second try, doubled before each further one.
        initial_delay: 1s
      outbound:
        # Web Push endpoints and forward URLs never reach loopback, private,
        # link-local, shared, multicast or reserved addresses, nor these (CIDR list).
        ip_range_blacklist: []
        # Allowed even inside a blocked range (CIDR list), e.g. a gateway on this host.
        ip_range_whitelist: []
      # App ids (as pushers register them) and where their pushes go. Examples:
      #   im.example.android:            # FCM HTTP v1 through firebase-admin
      #     kind: fcm
      #     # The service account JSON from the Firebase console (its project is used).
      #     service_account_file: /etc/homeserver/firebase-service-account.json
      #     # Optional: another FCM v1 base URL than Google's (a relay; the tests').
      #     endpoint: ""
      #   im.example.web:                # Web Push (RFC 8030, 8291, 8292)
      #     kind: webpush
      #     # P-256 private key (PEM); make one with
      #     # python -m plugins.push.gateway.vapid /etc/homeserver/vapid.pem
      #     vapid_private_key: /etc/homeserver/vapid.pem
      #     # The VAPID contact (JWT "sub"): a mailto: or https: URI.
      #     vapid_contact: "mailto:ops@example.org"
      #     # How long the push service keeps a push for an offline browser,
      #     # for prio "high" (Urgency: high) and "low" (Urgency: normal).
      #     ttl: 1d
      #     low_priority_ttl: 1h
      #     # Host patterns subscription endpoints must match (empty: any host).
      #     allowed_endpoints: ["*.push.services.mozilla.com", "fcm.googleapis.com"]
      #   im.example.ios:                # on to another Matrix push gateway
      #     kind: forward
      #     url: "https://push.example.org/_matrix/push/v1/notify"
      apps: {}
  # Push notifications: delivery to each http pusher's push gateway (POST
  # {data.url}), suppressed for devices that show they received the event by
  # sync. See docs/push.md.
  - module: plugins.push.PushPlugin
    config:
      # A pusher whose device has a sync long-poll or WebSocket open (or closed one
      # less than this long ago) is pushed only if the device has not proven
      # receipt of the event (a later sync token, a WebSocket ack) within this long.
      ack_wait: 2s
      # One request to a push gateway gives up after this long (and is retried).
      request_timeout: 10s
      # Requests in flight to push gateways at once, over all pushers.
      max_concurrent_requests: 100
      # A notification that failed is parked and retried after retry_min, the wait
      # doubling per failure up to retry_max, per pusher...
      retry_min: 1s
      retry_max: 10m
      # ...and dropped (logged and counted) once it has waited this long.
      give_up_after: 24h
      # After a read receipt lowers a user's unread count, each of their http pushers
      # gets a counts-only push (the app's badge) this long after the first receipt:
      # the receipts of a burst send one, with the last count.
      badge_delay: 1s
      # Email pushers: notifying messages still unread this long after they came
      # are mailed, all of a user's unread rooms in one mail (through email: above).
      email_delay: 10m
      # At most one such mail per user per this long (later messages wait for it).
      email_throttle: 1h
      # The client the mail links to (e.g. https://app.example.org); none: no link.
      email_client_url: null
  # Calls: TURN credentials for GET /_matrix/client/v3/voip/turnServer in coturn's
  # REST-API scheme (coturn runs with use-auth-secret and the same secret).
  # See docs/calls.md.
  - module: plugins.calls.CallsPlugin
    config:
      turn:
        # turn:/turns: URIs handed to clients; empty: /voip/turnServer answers {}
        # (no TURN). Give UDP, TCP and TLS, e.g.
        #   ["turn:turn.example.org:3478?transport=udp",
        #    "turn:turn.example.org:3478?transport=tcp",
        #    "turns:turn.example.org:5349?transport=tcp"]
        uris: []
        # coturn's static-auth-secret. Required with uris; the environment variable
        # HOMESERVER_CALLS_TURN_SHARED_SECRET wins over this.
        shared_secret: ""
        # How long a set of credentials stays valid (clients ask again before then).
        ttl: 24h
        # (No setting for guests: the server has no guest accounts, register?kind=guest
        # answers 403 M_GUEST_ACCESS_FORBIDDEN, so every signed-in user gets credentials.)
      group_calls:
        # MatrixRTC group calls (Element Call) need an SFU: the URL of LiveKit's JWT
        # service (lk-jwt-service) next to it, advertised to clients in
        # /.well-known/matrix/client as org.matrix.msc4143.rtc_foci. Empty: none.
        livekit_service_url: ""
  # Scheduled backups: a consistent set (database snapshot, signing key, media)
  # as `homeserver backup` takes it, every `every`, keeping the newest `keep`.
  # Restore one with `homeserver restore`. See docs/operations.md.
  - module: plugins.backup.BackupPlugin
    config:
      # A directory or s3://BUCKET/PREFIX. Empty: DATA_DIR/plugins/backup, on the
      # same disk as the data: point it at another disk or a bucket for real use.
      to: ""
      # How old the newest set may get before a new one is taken.
      every: 24h
      # Sets kept at `to` (older ones are deleted after each new one).
      keep: 7
      # How often the plugin looks at the newest set's age.
      check_interval: 10m
      # For an s3:// target. Each value can also come from the environment (which
      # wins): HOMESERVER_BACKUP_S3_ENDPOINT_URL, _REGION, _ACCESS_KEY_ID,
      # _SECRET_ACCESS_KEY. Without keys, boto3's usual credential chain is used.
      s3:
        # Empty: AWS itself; else e.g. http://127.0.0.1:8333 (path-style addressing).
        endpoint_url: ""
        # The signing region.
        region: us-east-1
        # Credentials (better from the environment than from this file).
        access_key_id: null
        secret_access_key: null
  # Admin API (off by default: uncomment to serve it): the parts of Synapse's admin
  # API that admin tools such as synapse-admin use, under /_synapse/admin/, for server
  # admins only (homeserver admin create-user --admin); every call is written to an
  # audit log, GET /_plugins/admin/audit_log. See docs/admin.md.
  # - module: plugins.admin.AdminPlugin
  #   config:
  #     # Audit log rows older than this are deleted (an hourly job); 0: kept for ever.
  #     audit_retention: 365d
"""


def render_config(
    server_name: str,
    *,
    port: int = 8008,
    bind: str = "127.0.0.1",
    data_dir: str = "./data",
    database_url: str = "",
    public_baseurl: str = "",
    open_registration: bool = False,
    require_email_verification: bool = False,
    plugins: str = DEFAULT_PLUGINS,
    federation_port: int | None = None,
    tls_certificate: str | None = None,
    tls_private_key: str | None = None,
    federation_ca: str | None = None,
) -> str:
    return TEMPLATE.substitute(
        server_name=server_name,
        port=port,
        bind=bind,
        data_dir=data_dir,
        database_url=database_url,
        public_baseurl=public_baseurl,
        open_registration=str(open_registration).lower(),
        require_email_verification=str(require_email_verification).lower(),
        plugins=plugins.rstrip("\n") if plugins.strip() else " []",
        federation_port="null" if federation_port is None else federation_port,
        tls_certificate=_yaml_path(tls_certificate),
        tls_private_key=_yaml_path(tls_private_key),
        federation_ca=_yaml_path(federation_ca),
    )


def _yaml_path(path: str | None) -> str:
    return "null" if path is None else json.dumps(path)  # a JSON string is a YAML string
