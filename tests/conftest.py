"""Shared fixtures: databases on both engines, and real `homeserver run` processes.

No reactor import at module level: pytest-twisted installs the reactor after
conftest modules are imported (STACK-NOTES).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import pytest_twisted
import requests
import yaml

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from federation_harness import FederatedServer, TestCA
    from synapse import SynapseServer

    from homeserver.storage import Storage

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
PG_ADMIN_URL = os.environ.get("HOMESERVER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# PostgreSQL: one fresh database per test run, one fresh schema per test --------


def _pg_connect(url: str) -> Any:
    import psycopg2

    conn = psycopg2.connect(url, connect_timeout=5)
    conn.autocommit = True
    return conn


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """The URL of a database created for this test run and dropped after it."""
    try:
        admin = _pg_connect(PG_ADMIN_URL)
    except Exception as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {e}")
    name = f"hs_test_{os.getpid()}_{secrets.token_hex(4)}"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}" LC_COLLATE "C" LC_CTYPE "C" TEMPLATE template0')
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def proxy() -> Iterator[Any]:
    """A PostgreSQL proxy that breaks connections on demand (tests/pg_proxy.py)."""
    from pg_proxy import PgProxy

    p = PgProxy()
    yield p
    p.close()


@pytest.fixture
def pg_url(pg_database: str) -> Iterator[str]:
    """A URL whose connections see only a schema made for this test."""
    schema = f"t_{secrets.token_hex(6)}"
    conn = _pg_connect(pg_database)
    with conn.cursor() as cur:
        cur.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in pg_database else "?"
    try:
        yield f"{pg_database}{sep}options=-csearch_path%3D{schema}"
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP SCHEMA {schema} CASCADE")
        conn.close()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Run the test once per storage engine."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest_twisted.async_yield_fixture
async def storage(database_url: str) -> AsyncIterator[Storage]:
    """A migrated database on each engine, closed after the test."""
    from homeserver.storage import Storage
    from homeserver.storage.migrations import migrate

    s = Storage.from_url(database_url)
    try:
        await migrate(s.db)
        yield s
    finally:
        s.close()


# A real server process ------------------------------------------------------


def stop_process(process: subprocess.Popen[Any], timeout: float, sig: int = signal.SIGTERM) -> int:
    """Stop a process the tests started: `sig`, then SIGKILL if it has not exited within
    `timeout` seconds. Its exit status."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return int(process.returncode)


@dataclass
class ServerProcess:
    base_url: str
    port: int
    data_dir: Path
    config_path: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def server_name(self) -> str:
        return str(self.config["server_name"])

    def url(self, path: str) -> str:
        return self.base_url + path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, *texts: str, timeout: float = 10) -> str:
        """The log once it holds every one of `texts`. A request's access line is written just
        after its response is sent, so a client can read the log before the line is there."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log_text()
            if all(t in log for t in texts) or time.monotonic() > deadline:
                return log
            time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        return stop_process(self.process, timeout, sig)

    # Helpers for tests ------------------------------------------------------

    def register(
        self, username: str, password: str = "correct horse battery", **extra: Any
    ) -> dict[str, Any]:
        body = {"username": username, "password": password, "auth": {"type": "m.login.dummy"}, **extra}
        r = requests.post(self.url("/_matrix/client/v3/register"), json=body, timeout=10)
        assert r.status_code == 200, r.text
        result: dict[str, Any] = r.json()
        return result

    def login(self, username: str, password: str = "correct horse battery", **extra: Any) -> dict[str, Any]:
        body = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": username},
            "password": password,
            **extra,
        }
        r = requests.post(self.url("/_matrix/client/v3/login"), json=body, timeout=10)
        assert r.status_code == 200, r.text
        result: dict[str, Any] = r.json()
        return result


def base_config(tmp_path: Path, port: int, database_url: str = "") -> dict[str, Any]:
    """A test config: fast password hashing, generous rate limits, the example plugin."""
    return {
        "server_name": f"localhost:{port}",
        "public_baseurl": f"http://127.0.0.1:{port}/",
        "data_dir": str(tmp_path / "data"),
        "listen": {"bind": "127.0.0.1", "port": port},
        "database": {"url": database_url},
        "registration": {"enabled": True},
        "auth": {"password_hashing": "fast"},
        # Plain clients (nio without olm, js-sdk without crypto) refuse to send into encrypted
        # rooms: the room tests use unencrypted rooms; E2EE tests set "invite" (the default).
        "encryption": {"enabled_by_default_for_room_type": "off"},
        "rate_limits": {
            "login_per_ip": {"per_second": 100, "burst": 1000},
            "login_failures_per_account": {"per_second": 100, "burst": 1000},
            "register_per_ip": {"per_second": 100, "burst": 1000},
            "password_reset_per_ip": {"per_second": 100, "burst": 1000},
            "password_reset_per_account": {"per_second": 100, "burst": 1000},
            "send_per_user": {"per_second": 1000, "burst": 10000},
            "create_room_per_user": {"per_second": 100, "burst": 1000},
            "join_per_user": {"per_second": 100, "burst": 1000},
            "invite_per_user": {"per_second": 100, "burst": 1000},
            "media_upload_per_user": {"per_second": 100, "burst": 1000},
            "report_per_user": {"per_second": 100, "burst": 1000},
            "profile_update_per_user": {"per_second": 1000, "burst": 100000},
            "create_alias_per_user": {"per_second": 100, "burst": 1000},
            "typing_per_user": {"per_second": 100, "burst": 1000},
            "to_device_per_user": {"per_second": 10000, "burst": 100000},
            "receipt_per_user": {"per_second": 1000, "burst": 10000},
        },
        "plugins": [{"module": "plugins.example.ExamplePlugin", "config": {"greeting": "Hello"}}],
        # Off unless a test turns it on: `/` then answers the same whether web/dist is built.
        "web_client": {"enabled": False},
    }


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def start_server_process(
    tmp_path: Path, overrides: dict[str, Any] | None = None, env: dict[str, str] | None = None
) -> ServerProcess:
    port = free_port()
    config = _merge(base_config(tmp_path, port), overrides or {})
    tmp_path.mkdir(parents=True, exist_ok=True)
    config_path = tmp_path / f"homeserver-{port}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    return _launch(tmp_path, port, config_path, config, env)


def restart_server_process(
    server: ServerProcess, overrides: dict[str, Any] | None = None, env: dict[str, str] | None = None
) -> ServerProcess:
    """The same server (port, data, database) started again, its config changed by `overrides`;
    the old process must have ended."""
    assert server.process.poll() is not None, "stop the old process first"
    config = _merge(server.config, overrides or {})
    server.config_path.write_text(yaml.safe_dump(config))
    return _launch(server.config_path.parent, server.port, server.config_path, config, env)


def start_server_with_config(
    tmp_path: Path, config: dict[str, Any], env: dict[str, str] | None = None
) -> ServerProcess:
    """A server started from a whole config the test wrote (its listen.port must be free)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    port = int(config["listen"]["port"])
    config_path = tmp_path / f"homeserver-{port}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    return _launch(tmp_path, port, config_path, config, env)


def _launch(
    tmp_path: Path, port: int, config_path: Path, config: dict[str, Any], env: dict[str, str] | None
) -> ServerProcess:
    log_path = tmp_path / f"server-{port}.log"
    log_file = open(log_path, "ab")  # noqa: SIM115 - the process owns it
    process = subprocess.Popen(
        [str(VENV_BIN / "homeserver"), "run", "-c", str(config_path)],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    server = ServerProcess(
        f"http://127.0.0.1:{port}", port, Path(config["data_dir"]), config_path, log_path, process, config
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log_text()}")
        try:
            requests.get(server.url("/_matrix/client/versions"), timeout=1)
            return server
        except requests.ConnectionError:
            time.sleep(0.05)
    server.stop(signal.SIGKILL)
    raise RuntimeError(f"server did not start:\n{server.log_text()}")


@pytest.fixture
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., ServerProcess]]:
    """Factory: start_server(overrides) -> a running server, stopped after the test."""
    servers: list[ServerProcess] = []

    def start(overrides: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> ServerProcess:
        server = start_server_process(tmp_path_factory.mktemp("hs"), overrides, env)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server on SQLite shared by the tests of a module."""
    s = start_server_process(tmp_path_factory.mktemp("hs"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def pg_server(tmp_path_factory: pytest.TempPathFactory, pg_database: str) -> Iterator[ServerProcess]:
    """One server on PostgreSQL (its own schema) shared by the tests of a module."""
    schema = f"s_{secrets.token_hex(6)}"
    conn = _pg_connect(pg_database)
    with conn.cursor() as cur:
        cur.execute(f"CREATE SCHEMA {schema}")
    url = f"{pg_database}?options=-csearch_path%3D{schema}"
    s = start_server_process(tmp_path_factory.mktemp("hs"), {"database": {"url": url}})
    yield s
    s.stop()
    with conn.cursor() as cur:
        cur.execute(f"DROP SCHEMA {schema} CASCADE")
    conn.close()


@contextmanager
def server_on_engine(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    engine: str,
    overrides: dict[str, Any],
    name: str = "hs",
) -> Iterator[ServerProcess]:
    """A server process on `engine`: SQLite in its data dir, or PostgreSQL in a schema of
    its own that is dropped afterwards. For module fixtures parametrised by engine."""
    overrides = dict(overrides)
    schema = conn = None
    if engine == "postgres":
        pg_database = request.getfixturevalue("pg_database")
        schema = f"s_{secrets.token_hex(6)}"
        conn = _pg_connect(pg_database)
        with conn.cursor() as cur:
            cur.execute(f"CREATE SCHEMA {schema}")
        overrides["database"] = {"url": f"{pg_database}?options=-csearch_path%3D{schema}"}
    server = start_server_process(tmp_path_factory.mktemp(name), overrides)
    try:
        yield server
    finally:
        server.stop()
        if conn is not None:
            with conn.cursor() as cur:
                cur.execute(f"DROP SCHEMA {schema} CASCADE")
            conn.close()


@pytest.fixture(params=["sqlite", "postgres"])
def any_server(request: pytest.FixtureRequest) -> ServerProcess:
    """The module's server on each engine in turn."""
    name = "server" if request.param == "sqlite" else "pg_server"
    s: ServerProcess = request.getfixturevalue(name)
    return s


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run hypothesis property tests directly: they are synchronous, and pytest-twisted's
    greenlet wrapper cannot drive hypothesis's own repeated calls."""
    if getattr(pyfuncitem.obj, "is_hypothesis_test", False):
        names = pyfuncitem._fixtureinfo.argnames
        pyfuncitem.obj(**{name: pyfuncitem.funcargs[name] for name in names})
        return True
    return None


# The fast tier: tests/fast/, `pytest -m fast` -------------------------------------------

FAST_DIR = Path(__file__).resolve().parent / "fast"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under tests/fast/ carries the `fast` marker."""
    for item in items:
        if FAST_DIR in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.fast)


class _NoSockets(socket.socket):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("a fast test opened a socket: it belongs outside tests/fast/")


@pytest.fixture(autouse=True)
def _fast_tier_promise(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fast test opens no socket and starts no process; one that tries fails."""
    if request.node.get_closest_marker("fast") is None:
        return

    def no_process(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a fast test started a process: it belongs outside tests/fast/")

    monkeypatch.setattr(socket, "socket", _NoSockets)
    monkeypatch.setattr(subprocess.Popen, "__init__", no_process)


# Federation: the set-up the federation test modules share, one of each per module ------
# (imported inside: federation_harness and synapse import this module).


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    """The certificate authority every server of the module (ours, Synapse) trusts."""
    from federation_harness import make_ca

    return make_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory, ca: TestCA) -> Iterator[FederatedServer]:
    from federation_harness import start_federated_server

    server = start_federated_server(tmp_path_factory.mktemp("ours"), ca)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def synapse(tmp_path_factory: pytest.TempPathFactory, ca: TestCA) -> Iterator[SynapseServer]:
    from synapse import start_synapse

    server = start_synapse(tmp_path_factory.mktemp("synapse"), ca)
    yield server
    server.stop()
