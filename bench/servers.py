"""The homeservers under test: ours on SQLite and on PostgreSQL, Synapse from PyPI.

Each is a `Target`: started as its own process on a free loopback port with a
config written here, measured through /proc by pid, registered into by its own
means (open registration for ours, the shared-secret admin API for Synapse),
stopped with SIGTERM.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.httpclient import HttpClient, HttpError
from bench.matrix import CLIENT, PASSWORD, Matrix, MatrixCallError, User

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
WORK_DIR = BENCH_DIR / ".work"
SYNAPSE_VENV = BENCH_DIR / ".synapse-venv"
SYNAPSE_REQUIREMENTS = BENCH_DIR / "synapse-requirements.txt"
PG_ADMIN_URL = os.environ.get("BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _raise_nofile() -> None:
    """preexec_fn: the server may hold thousands of connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# PostgreSQL -----------------------------------------------------------------------------------


def _pg_connect(url: str) -> Any:
    import psycopg2

    conn = psycopg2.connect(url, connect_timeout=5)
    conn.autocommit = True
    return conn


def pg_url_for(database: str) -> str:
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    return f"{base}/{database}"


def recreate_database(name: str) -> None:
    """A fresh, empty database with C collation (Synapse refuses any other)."""
    conn = _pg_connect(PG_ADMIN_URL)
    try:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            cur.execute(f"CREATE DATABASE \"{name}\" LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
    finally:
        conn.close()


def drop_database(name: str) -> None:
    conn = _pg_connect(PG_ADMIN_URL)
    try:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        conn.close()


class BackendPids:
    """The pids of the PostgreSQL backends connected to one database (for their CPU time)."""

    def __init__(self, database: str) -> None:
        self.database = database
        self._conn: Any = None

    def __call__(self) -> list[int]:
        try:
            if self._conn is None:
                self._conn = _pg_connect(PG_ADMIN_URL)
            with self._conn.cursor() as cur:
                cur.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                    (self.database,),
                )
                return [int(row[0]) for row in cur.fetchall()]
        except Exception:
            self._conn = None
            return []

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def checkpoint_counters() -> tuple[int, int] | None:
    """(checkpoints completed, buffers the checkpointer wrote) of the PostgreSQL cluster so
    far, or None when it cannot be asked: a checkpoint during a latency row slows its commits
    (full-page images in the WAL, the checkpointer's writes), so the rows report them."""
    try:
        conn = _pg_connect(PG_ADMIN_URL)
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT checkpoints_timed + checkpoints_req, buffers_checkpoint FROM pg_stat_bgwriter"
                )
                done, written = cur.fetchone()
        finally:
            conn.close()
        return int(done), int(written)
    except Exception:
        return None


# WAL segments a latency row wants ready ahead: W1 and both W2 rows write 18 between them here.
WAL_READY_SEGMENTS = 32


def _wal_files(cur: Any) -> tuple[str, set[str]]:
    """The segment being written and the names of every segment file in pg_wal."""
    cur.execute("SELECT pg_walfile_name(pg_current_wal_lsn())")
    current = str(cur.fetchone()[0])
    cur.execute("SELECT name FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}$'")
    return current, {str(row[0]) for row in cur.fetchall()}


def prepare_wal(ready: int = WAL_READY_SEGMENTS, url: str = PG_ADMIN_URL) -> dict[str, int] | None:
    """Checkpoint the cluster with `ready` WAL segments recycled ahead of the one being written,
    as on a PostgreSQL that has run a while, and return what it took (None when it cannot be asked).

    A fresh cluster (initdb, or a new VM) has one segment: each next 16 MB one is created and
    zero-filled while every commit waits, 30-110 ms on this VM (docs/latency.md), a stall no
    server's code can avoid. Once checkpoints have passed, PostgreSQL renames old segments ahead
    instead. Segments made by switching are recycled by the checkpoint that follows; that
    checkpoint also keeps the row clear of a timed one (checkpoint_timeout is 5 minutes)."""
    try:
        conn = _pg_connect(url)
        try:
            with conn.cursor() as cur:
                current, names = _wal_files(cur)
                ready_before = sum(1 for name in names if name > current)
                switched = 0
                if ready_before < ready:
                    # A switch needs WAL written since the last one: a logical message is a record.
                    for _ in range(ready):
                        cur.execute("SELECT pg_logical_emit_message(false, 'bench', 'wal')")
                        cur.execute("SELECT pg_switch_wal()")
                        switched += 1
                cur.execute("CHECKPOINT")
                current, names = _wal_files(cur)
        finally:
            conn.close()
        return {
            "ready_before": ready_before,
            "switched": switched,
            "ready": sum(1 for name in names if name > current),
        }
    except Exception:
        return None


def wal_file_names(url: str = PG_ADMIN_URL) -> set[str] | None:
    """The WAL segment files now in pg_wal, or None when it cannot be asked."""
    try:
        conn = _pg_connect(url)
        try:
            with conn.cursor() as cur:
                return _wal_files(cur)[1]
        finally:
            conn.close()
    except Exception:
        return None


def postgres_version() -> str:
    try:
        conn = _pg_connect(PG_ADMIN_URL)
        with conn.cursor() as cur:
            cur.execute("SHOW server_version")
            version = str(cur.fetchone()[0])
        conn.close()
        return version
    except Exception as e:
        return f"unknown ({e})"


# Targets -------------------------------------------------------------------------------------


@dataclass
class Target:
    """A running homeserver the workloads talk to."""

    key: str  # "ours-sqlite", "ours-pg", "synapse"
    label: str
    host: str
    port: int
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    db_pids: BackendPids | None = None
    is_ours: bool = False
    version: str = ""
    # Several processes (workers, Redis, the balancer): `process` is the first worker; the
    # others' CPU counts as the server's.
    more_processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    # Ports the load generator spreads users over (default: `port` alone).
    ports: list[int] = field(default_factory=list)
    # The name of each process by pid ("w1", "redis", "haproxy"), for per-process CPU.
    process_names: dict[int, str] = field(default_factory=dict)
    # The pids of homeserver processes (py-spy profiles each).
    worker_pids: list[int] = field(default_factory=list)
    # What the workloads built on this server, for the ones that reuse it.
    state: dict[str, Any] = field(default_factory=dict)
    # Ours: the bearer secret of /_homeserver/metrics (bench/server_stages.py).
    metrics_secret: str = ""

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def more_pids(self) -> list[int]:
        return [p.pid for p in self.more_processes]

    @property
    def client_ports(self) -> list[int]:
        return self.ports or [self.port]

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def alive(self) -> bool:
        processes = [self.process, *self.more_processes] if self.process is not None else []
        return all(p.poll() is None for p in processes)

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    async def register(self, mx: Matrix, localpart: str, index: int) -> User:
        body = {"username": localpart, "password": PASSWORD, "auth": {"type": "m.login.dummy"}}
        result = await mx.call("POST", f"{CLIENT}/register", body, what="register")
        return User(index, localpart, result["user_id"], result["access_token"], result["device_id"])

    def stop(self) -> None:
        if self.db_pids is not None:
            self.db_pids.close()
        processes = [self.process, *self.more_processes] if self.process is not None else []
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class SynapseTarget(Target):
    shared_secret: str = ""

    async def register(self, mx: Matrix, localpart: str, index: int) -> User:
        path = "/_synapse/admin/v1/register"
        nonce = (await mx.call("GET", path, what="register nonce"))["nonce"]
        mac = hmac.new(self.shared_secret.encode(), digestmod=hashlib.sha1)
        mac.update(f"{nonce}\x00{localpart}\x00{PASSWORD}\x00notadmin".encode())
        body = {
            "nonce": nonce,
            "username": localpart,
            "password": PASSWORD,
            "admin": False,
            "mac": mac.hexdigest(),
        }
        result = await mx.call("POST", path, body, what="register (shared secret)")
        return User(index, localpart, result["user_id"], result["access_token"], result["device_id"])


async def wait_until_up(target: Target, timeout_s: float) -> None:
    http = HttpClient(target.host, target.port)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if not target.alive():
                raise RuntimeError(f"{target.label} exited at start:\n{target.log_tail()}")
            try:
                response = await http.request("GET", "/_matrix/client/versions", timeout=2)
                if response.status == 200:
                    return
            except (TimeoutError, HttpError):
                pass
            await asyncio.sleep(0.2)
    finally:
        http.close()
    raise RuntimeError(f"{target.label} did not start within {timeout_s:.0f}s:\n{target.log_tail()}")


def _homeserver_binary() -> str:
    for candidate in (ROOT / ".venv" / "bin" / "homeserver", Path(sys.executable).parent / "homeserver"):
        if candidate.exists():
            return str(candidate)
    raise RuntimeError("the homeserver command is not installed: run `make bench` (or `make run`) first")


def _our_version() -> str:
    version = "?"
    setup = ROOT / "setup.cfg"
    if setup.exists():
        for line in setup.read_text().splitlines():
            if line.startswith("version"):
                version = line.split("=", 1)[1].strip()
                break
    head = ROOT / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            ref_file = ROOT / ".git" / ref[5:]
            commit = ref_file.read_text().strip() if ref_file.exists() else ""
        else:
            commit = ref
        if commit:
            version += f" (commit {commit[:10]}, with uncommitted changes if any)"
    except OSError:
        pass
    return version


def _bench_config(
    port: int, workdir: Path, database_url: str, plugins: list[dict[str, Any]] | None
) -> dict[str, Any]:
    return {
        "server_name": f"localhost:{port}",
        "public_baseurl": f"http://127.0.0.1:{port}/",
        "data_dir": str(workdir / "data"),
        # Every simulated client connects from 127.0.0.1: thousands of connections from one
        # address, which listen.max_connections_per_ip exists to refuse.
        "listen": {"bind": "127.0.0.1", "port": port, "max_connections_per_ip": 1_000_000},
        "database": {"url": database_url},
        "registration": {"enabled": True},
        "auth": {"password_hashing": "fast"},
        "rate_limits": {"enabled": False},
        "logging": {"level": "INFO", "access_log": False},
        # Served (on the main port, for the secret), so every row pays what metrics cost on the
        # hot paths; no second port to pick.
        "metrics": {"bearer_secret": secrets.token_urlsafe(24)},
        "plugins": plugins or [],
        # W3P's push gateway listens on loopback.
        "pushers": {"allow_private_addresses": True},
    }


def _spawn(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log_file:
        return subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            argv,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            preexec_fn=_raise_nofile,  # noqa: PLW1509 - only sets an rlimit
        )


async def start_ours(engine: str, plugins: list[dict[str, Any]] | None = None) -> Target:
    """Our server on `engine` ("sqlite" or "postgres"), with the bench config (and `plugins`)."""
    key = "ours-sqlite" if engine == "sqlite" else "ours-pg"
    workdir = WORK_DIR / key
    shutil.rmtree(workdir, ignore_errors=True)
    (workdir / "data").mkdir(parents=True)
    port = free_port()
    db_pids = None
    if engine == "sqlite":
        url = f"sqlite:///{workdir / 'data' / 'homeserver.db'}"
    else:
        recreate_database("bench_homeserver")
        url = pg_url_for("bench_homeserver")
        db_pids = BackendPids("bench_homeserver")
    config = _bench_config(port, workdir, url, plugins)
    config_path = workdir / "homeserver.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = workdir / "server.log"
    process = _spawn([_homeserver_binary(), "run", "-c", str(config_path)], log_path)
    label = "ours (SQLite)" if engine == "sqlite" else "ours (PostgreSQL)"
    target = Target(key, label, "127.0.0.1", port, process, log_path, db_pids, True, _our_version())
    target.metrics_secret = config["metrics"]["bearer_secret"]
    try:
        await wait_until_up(target, 60)
    except BaseException:
        target.stop()
        raise
    return target


# Ours as several worker processes (docs/scaling.md) ------------------------------------------


DEPLOY_HAPROXY = ROOT / "deploy" / "haproxy.cfg"


def haproxy_from_deploy(template: str, port: int, backends: dict[str, int], socket_path: Path) -> str:
    """deploy/haproxy.cfg as an operator would run it, for the bench: its frontend on `port`,
    its admin socket at `socket_path`, every backend's `server` lines replaced by all the
    workers (each instance here is an event writer and serves syncs too), no request log
    (thousands of lines a second to a file would be the balancer's main cost), and one
    thread: on two cores shared with the workers, a second HAProxy thread only adds
    cross-thread wake-ups (80 against 110 µs of HAProxy CPU per request, measured)."""
    servers = [f"    server {name} 127.0.0.1:{p} check" for name, p in sorted(backends.items())]
    out: list[str] = []
    in_backend = False
    for line in template.splitlines():
        stripped = line.strip()
        if line and not line[0].isspace() and not line.startswith("#"):
            in_backend = stripped.startswith("backend ")
            out.append(line)
            if stripped == "global":
                out.append("    nbthread 1")
            if in_backend:
                out += servers
                # Which worker answered: the bench's details name a stalled receiver's worker.
                out.append("    http-response set-header X-Served-By %s")
            continue
        if stripped.startswith("bind "):
            line = f"    bind 127.0.0.1:{port}"
        elif stripped.startswith("stats socket "):
            line = f"    stats socket {socket_path} mode 600 level admin"
        elif (
            stripped.startswith("log ")
            or stripped == "option httplog"
            or (in_backend and stripped.startswith("server "))
        ):
            continue
        out.append(line)
    return "\n".join(out) + "\n"


def haproxy_config(port: int, backends: dict[str, int]) -> str:
    """A minimal HAProxy in front of the workers: /sync, sliding sync and the WebSocket stream
    stick to one worker per access token (its wake-ups and caches stay there); every other
    request goes to the next worker in turn."""
    servers = "\n".join(
        f"    server {name} 127.0.0.1:{p} check inter 2s" for name, p in sorted(backends.items())
    )
    return f"""global
    maxconn 8000  # two sockets each: within the usual 20,000 open files
    nbthread 1

defaults
    mode http
    timeout connect 5s
    timeout client 400s
    timeout server 400s
    timeout http-keep-alive 60s
    option httpchk GET /_matrix/client/versions

frontend matrix
    bind 127.0.0.1:{port}
    acl sync_like path_beg /_matrix/client/v3/sync /_matrix/client/r0/sync
    acl sync_like path_beg /_matrix/client/unstable/org.matrix.simplified_msc3575/sync
    acl sync_like path_beg /_homeserver/ws
    use_backend sticky if sync_like
    default_backend any

backend sticky
    balance hdr(Authorization)
    hash-type consistent
{servers}

backend any
    balance roundrobin
{servers}
"""


def workers_supported() -> bool:
    """Whether this checkout runs several event writers: `homeserver run --worker` (issue 19's
    worker mode) and the event stream carried between them (homeserver/workers/event_replication.py;
    without it two writers hand out the same stream positions)."""
    if not (ROOT / "homeserver" / "workers" / "event_replication.py").exists():
        return False
    out = subprocess.run(  # noqa: S603 - fixed argv, no shell
        [_homeserver_binary(), "run", "--help"], capture_output=True, text=True, check=False
    )
    return "--worker" in out.stdout


async def start_ours_workers(
    instances: int,
    *,
    key: str = "ours-pg-workers",
    workdir: Path | None = None,
    database: str = "bench_homeserver_workers",
    balancer: bool = True,
) -> Target:
    """Ours on PostgreSQL as `instances` processes, each an event writer, sharing a Redis of
    their own, behind HAProxy (`balancer`; otherwise the generator spreads users over the
    workers' ports itself). One instance: today's single process (no `workers:` section, no
    Redis), still behind the balancer."""
    if instances > 1 and not workers_supported():
        raise RuntimeError("this checkout has no several event writers (`--worker`, event replication)")
    workdir = workdir or WORK_DIR / key
    shutil.rmtree(workdir, ignore_errors=True)
    (workdir / "data").mkdir(parents=True)
    recreate_database(database)
    front = free_port()
    names = [f"w{i + 1}" for i in range(instances)]
    ports = {name: free_port() for name in names}
    config = _bench_config(front, workdir, pg_url_for(database), [])
    processes: list[subprocess.Popen[bytes]] = []
    target = Target(
        key,
        f"ours (PostgreSQL, {instances} process{'es' if instances > 1 else ''})",
        "127.0.0.1",
        front if balancer else ports[names[0]],
        None,
        workdir / "w1.log",
        BackendPids(database),
        True,
        _our_version(),
    )
    try:
        if instances > 1:
            redis_port = free_port()
            processes.append(
                _spawn(
                    ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1"]
                    + ["--save", "", "--appendonly", "no"],
                    workdir / "redis.log",
                )
            )
            config["workers"] = {
                "redis_url": f"redis://127.0.0.1:{redis_port}/0",
                "secret": secrets.token_urlsafe(24),
                "instances": {
                    name: {"listen": f"127.0.0.1:{ports[name]}", "internal": f"127.0.0.1:{free_port()}"}
                    for name in names
                },
                "event_writers": names,
            }
        else:
            config["listen"]["port"] = ports[names[0]]
        config_path = workdir / "homeserver.yaml"
        config_path.write_text(yaml.safe_dump(config))
        binary = _homeserver_binary()
        subprocess.run(  # noqa: S603 - fixed argv, no shell
            [binary, "migrate", "-c", str(config_path)], check=True, cwd=ROOT, capture_output=True
        )
        workers = {}
        for name in names:
            worker = ["--worker", name] if instances > 1 else []
            log_path = workdir / f"{name}.log"
            process = _spawn([binary, "run", "-c", str(config_path), *worker], log_path)
            processes.append(process)
            workers[name] = Target(name, f"worker {name}", "127.0.0.1", ports[name], process, log_path)
        target.process = workers[names[0]].process
        target.more_processes = [p for p in processes if p is not target.process]
        target.worker_pids = [w.process.pid for w in workers.values() if w.process is not None]
        target.process_names = {w.process.pid: name for name, w in workers.items() if w.process is not None}
        if instances > 1:
            target.process_names[processes[0].pid] = "redis"
        for worker_target in workers.values():
            await wait_until_up(worker_target, 60)
        # The balancer once the workers answer: its first health checks would mark them down.
        if balancer:
            haproxy_path = workdir / "haproxy.cfg"
            haproxy_path.write_text(
                haproxy_from_deploy(DEPLOY_HAPROXY.read_text(), front, ports, workdir / "haproxy.sock")
                if DEPLOY_HAPROXY.exists()
                else haproxy_config(front, ports)
            )
            haproxy = _spawn(["haproxy", "-db", "-f", str(haproxy_path)], workdir / "haproxy.log")
            target.more_processes.append(haproxy)
            target.process_names[haproxy.pid] = "haproxy"
        else:
            target.ports = [ports[name] for name in names]
        await wait_until_up(target, 30)
    except BaseException:
        if target.process is None and processes:
            target.process, target.more_processes = processes[0], processes[1:]
        target.stop()
        raise
    return target


# Synapse ------------------------------------------------------------------------------------


def synapse_python() -> Path:
    return SYNAPSE_VENV / "bin" / "python"


def ensure_synapse(log: Any = print) -> str:
    """Install the pinned Synapse into its own venv (once); its version."""
    python = synapse_python()
    marker = SYNAPSE_VENV / ".installed"
    wanted = SYNAPSE_REQUIREMENTS.read_text()
    if not (python.exists() and marker.exists() and marker.read_text() == wanted):
        log(f"installing Synapse into {SYNAPSE_VENV.relative_to(ROOT)} (a few minutes the first time)")
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(SYNAPSE_VENV)], check=True)  # noqa: S603
        subprocess.run(  # noqa: S603 - fixed argv, no shell
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
            + ["-r", str(SYNAPSE_REQUIREMENTS)],
            check=True,
        )
        marker.write_text(wanted)
    out = subprocess.run(  # noqa: S603 - fixed argv, no shell
        [str(python), "-c", "import importlib.metadata as m; print(m.version('matrix-synapse'))"],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


RATE_UNLIMITED = {"per_second": 1_000_000, "burst_count": 1_000_000}


def synapse_config(port: int, workdir: Path, secret: str) -> dict[str, Any]:
    """A monolith Synapse: client API on loopback, PostgreSQL, no federation listener, no limits."""
    return {
        "server_name": f"localhost:{port}",
        "public_baseurl": f"http://127.0.0.1:{port}/",
        "pid_file": str(workdir / "homeserver.pid"),
        "listeners": [
            {
                "port": port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": False,
                "x_forwarded": False,
                "resources": [{"names": ["client"], "compress": False}],
            }
        ],
        "database": {
            "name": "psycopg2",
            "args": {
                "user": "postgres",
                "host": "127.0.0.1",
                "port": 5432,
                "database": "bench_synapse",
                "cp_min": 5,
                "cp_max": 10,
            },
        },
        "log_config": str(workdir / "log.yaml"),
        "media_store_path": str(workdir / "media"),
        "signing_key_path": str(workdir / "signing.key"),
        "registration_shared_secret": secret,
        "enable_registration": False,
        "report_stats": False,
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        # W3P's push gateway runs on loopback, which Synapse blocks by default.
        "ip_range_whitelist": ["127.0.0.1/32"],
        "macaroon_secret_key": secrets.token_hex(32),
        "form_secret": secrets.token_hex(32),
        "enable_metrics": False,
        # Federation off: no federation listener, and no instance sends federation traffic.
        "federation_sender_instances": [],
        # Registration cost is not what we measure (ours uses its "fast" hashing too).
        "bcrypt_rounds": 4,
        # The workloads' sync filter asks for up to 500 timeline events (default cap 100).
        "filter_timeline_limit": 1000,
        # As Complement does: no replaying of cached sync responses (W5 repeats one).
        "caches": {"sync_response_cache_duration": 0},
        "rc_message": RATE_UNLIMITED,
        "rc_registration": RATE_UNLIMITED,
        "rc_registration_token_validity": RATE_UNLIMITED,
        "rc_login": {
            "address": RATE_UNLIMITED,
            "account": RATE_UNLIMITED,
            "failed_attempts": RATE_UNLIMITED,
        },
        "rc_joins": {"local": RATE_UNLIMITED, "remote": RATE_UNLIMITED},
        "rc_joins_per_room": RATE_UNLIMITED,
        "rc_invites": {
            "per_room": RATE_UNLIMITED,
            "per_user": RATE_UNLIMITED,
            "per_issuer": RATE_UNLIMITED,
        },
        "rc_3pid_validation": RATE_UNLIMITED,
        "rc_admin_redaction": RATE_UNLIMITED,
        "rc_room_creation": RATE_UNLIMITED,
        "rc_presence": {"per_user": RATE_UNLIMITED},
        "rc_key_requests": RATE_UNLIMITED,
        "rc_profile": RATE_UNLIMITED,
        "rc_user_directory": RATE_UNLIMITED,
        "rc_delayed_event_mgmt": RATE_UNLIMITED,
        "rc_reports": RATE_UNLIMITED,
        "rc_media_create": RATE_UNLIMITED,
        "rc_third_party_invite": RATE_UNLIMITED,
    }


def synapse_log_config(workdir: Path) -> dict[str, Any]:
    """INFO like ours, with the per-request access log off like ours (logging.access_log: false)."""
    return {
        "version": 1,
        "formatters": {"precise": {"format": "%(asctime)s - %(name)s - %(levelname)s - %(message)s"}},
        "handlers": {
            "file": {
                "class": "logging.FileHandler",
                "formatter": "precise",
                "filename": str(workdir / "homeserver.log"),
            }
        },
        "loggers": {
            "synapse.access": {"level": "WARNING"},
            "synapse.storage.SQL": {"level": "WARNING"},
            "twisted": {"level": "WARNING"},
        },
        "root": {"level": "INFO", "handlers": ["file"]},
        "disable_existing_loggers": False,
    }


async def start_synapse(version: str) -> Target:
    workdir = WORK_DIR / "synapse"
    shutil.rmtree(workdir, ignore_errors=True)
    (workdir / "media").mkdir(parents=True)
    recreate_database("bench_synapse")
    port = free_port()
    secret = secrets.token_hex(24)
    config_path = workdir / "homeserver.yaml"
    config_path.write_text(yaml.safe_dump(synapse_config(port, workdir, secret)))
    (workdir / "log.yaml").write_text(yaml.safe_dump(synapse_log_config(workdir)))
    python = str(synapse_python())
    subprocess.run(  # noqa: S603 - fixed argv, no shell
        [python, "-m", "synapse.app.homeserver", "-c", str(config_path), "--generate-keys"],
        check=True,
        capture_output=True,
        cwd=workdir,
    )
    log_path = workdir / "stdout.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            [python, "-m", "synapse.app.homeserver", "-c", str(config_path)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            preexec_fn=_raise_nofile,  # noqa: PLW1509 - only sets an rlimit
        )
    target = SynapseTarget(
        "synapse",
        "Synapse",
        "127.0.0.1",
        port,
        process,
        workdir / "homeserver.log",
        BackendPids("bench_synapse"),
        False,
        version,
    )
    target.shared_secret = secret
    try:
        await wait_until_up(target, 300)
    except BaseException:
        target.stop()
        raise
    return target


__all__ = [
    "MatrixCallError",
    "SynapseTarget",
    "Target",
    "drop_database",
    "ensure_synapse",
    "postgres_version",
    "start_ours",
    "start_synapse",
]
