"""Several worker processes behind a real HAProxy, with their own Redis and PostgreSQL.

What an operator runs (docs/scaling.md), made small enough for a test:
- a PostgreSQL cluster of its own (initdb + pg_ctl on a free port), so that a test can
  restart it: the machine's PostgreSQL is shared with other tests;
- a redis-server of its own on a free port, restartable the same way (PostgreSQL's server
  programs and redis-server are installed with apt-get when missing, as HAProxy is);
- one config with a `workers:` section naming 3 (or more) instances: w1 and w2 write
  events, w1 also the other streams and the jobs, w3 (and on) serves clients;
- `homeserver migrate` once, then `homeserver run --worker NAME` per instance;
- HAProxy from deploy/haproxy.cfg, its frontend, stats socket and `server` lines changed,
  nothing else (it is installed with apt-get when missing; outside CI a machine that
  cannot install it skips the test).

Faults: `kill9(name)` / `restart(name)` a worker, `redis.restart()`, `postgres.stop()` /
`postgres.start()`. Everything is stopped by `close()` (the `cluster()` context manager).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from conftest import ROOT, base_config, free_port, stop_process

HAPROXY_TEMPLATE = ROOT / "deploy" / "haproxy.cfg"
START_TIMEOUT_S = 60.0


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


# PostgreSQL ---------------------------------------------------------------------------------


def _pg_bin(name: str) -> str:
    """initdb / pg_ctl: Debian keeps them in /usr/lib/postgresql/NN/bin, off PATH."""
    return system_binary(
        name, "postgresql", lambda: sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True)
    )


class PrivatePostgres:
    """A PostgreSQL cluster in a temporary directory, on a free loopback port.

    initdb refuses to run as root: as root, the cluster belongs to the `postgres` user."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="hs-workers-pg-"))
        self.data = self.directory / "data"
        self.log = self.directory / "postgres.log"
        self.port = free_port()
        initdb = _pg_bin("initdb")  # first: installing the package creates the postgres user
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.directory, "postgres")
        self._run(initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self._as_postgres else []
        done = subprocess.run([*prefix, *argv], capture_output=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {done.stdout.decode()} {done.stderr.decode()}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c max_connections=200"
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "start")

    def stop(self) -> None:
        """A fast shutdown, as `systemctl restart postgresql` does: every session is ended."""
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def close(self) -> None:
        try:
            self.stop()
        except RuntimeError:
            pass  # not running
        shutil.rmtree(self.directory, ignore_errors=True)


# Redis ------------------------------------------------------------------------------------------


class PrivateRedis:
    """A redis-server on a free loopback port that keeps nothing on disk."""

    def __init__(self, directory: Path) -> None:
        self.binary = system_binary("redis-server", "redis-server")
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = open(self.directory / "redis.log", "ab")  # noqa: SIM115 - the process owns it
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory)],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_for(lambda: _port_open(self.port), "redis-server to listen")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def restart(self) -> None:
        """Stopped and started again: every client is disconnected, every message in flight lost."""
        self.stop()
        self.start()


# Workers ------------------------------------------------------------------------------------


@dataclass
class Worker:
    name: str
    port: int
    internal_port: int
    config_path: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def launch(self) -> None:
        assert not self.alive(), f"{self.name} is running"
        log = open(self.log_path, "ab")  # noqa: SIM115 - the process owns it
        log.write(f"---- start {self.starts + 1} ----\n".encode())
        log.flush()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "homeserver", "run", "-c", str(self.config_path), "--worker", self.name],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip
        self.starts += 1

    def healthy(self) -> bool:
        try:
            return requests.get(self.url + "/health", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def wait_healthy(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}:\n{self.log_text()[-4000:]}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.name} not healthy after {timeout:.0f}s:\n{self.log_text()[-4000:]}"
                )
            time.sleep(0.1)

    def signal(self, sig: int, timeout: float = 30) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


# HAProxy ------------------------------------------------------------------------------------


_install_tried: set[str] = set()


def system_binary(name: str, package: str, candidates: Callable[[], list[Path]] = list) -> str:
    """A program from a Debian package, installed with apt-get when missing (once per package
    per test run). In CI a missing program fails the test; elsewhere it skips it."""

    def find() -> str | None:
        listed = [str(path) for path in candidates() if path.exists()]
        return listed[0] if listed else shutil.which(name) or shutil.which(name, path="/usr/sbin")

    found = find()
    if found is None and package not in _install_tried and os.geteuid() == 0 and shutil.which("apt-get"):
        _install_tried.add(package)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env, timeout=300)
        subprocess.run(
            ["apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y", "-qq", package],
            capture_output=True, env=env, timeout=900,
        )  # fmt: skip
        found = find()
    if found is not None:
        return found
    if os.environ.get("CI"):
        raise RuntimeError(f"{name} is missing and `apt-get install -y {package}` did not install it")
    pytest.skip(f"{name} is missing and could not be installed (Debian package {package})")


def haproxy_binary() -> str:
    return system_binary("haproxy", "haproxy")


def render_haproxy(
    template: str, frontend_port: int, stats_socket: Path, backends: dict[str, list[tuple[str, int, bool]]]
) -> str:
    """deploy/haproxy.cfg with its frontend address, stats socket and each backend's
    `server` lines replaced: `backends` maps a backend to (name, port, backup) triples."""
    text = template.replace("bind 127.0.0.1:8008", f"bind 127.0.0.1:{frontend_port}", 1)
    text = text.replace("stats socket /run/haproxy/admin.sock", f"stats socket {stats_socket}", 1)
    out: list[str] = []
    backend: str | None = None
    for line in text.splitlines():
        header = re.match(r"backend\s+(\S+)", line)
        if header:
            backend = header.group(1)
        elif re.match(r"\S", line):
            backend = None
        if re.match(r"\s+server\s", line) and backend is not None:
            servers = backends.pop(backend, None)
            if servers is not None:  # the backend's first server line: all of ours go here
                for name, port, backup in servers:
                    out.append(f"    server {name} 127.0.0.1:{port} check" + (" backup" if backup else ""))
            continue
        out.append(line)
    assert not backends, f"backends not in the template: {sorted(backends)}"
    return "\n".join(out) + "\n"


class HAProxy:
    def __init__(self, directory: Path, backends: dict[str, list[tuple[str, int, bool]]], port: int) -> None:
        self.binary = haproxy_binary()
        self.port = port
        self.socket_path = directory / "haproxy.sock"
        self.config_path = directory / "haproxy.cfg"
        self.log_path = directory / "haproxy.log"
        config = render_haproxy(HAPROXY_TEMPLATE.read_text(), self.port, self.socket_path, dict(backends))
        self.config_path.write_text(config)
        check = subprocess.run([self.binary, "-c", "-f", str(self.config_path)], capture_output=True)
        assert check.returncode == 0, check.stderr.decode() + check.stdout.decode()
        log = open(self.log_path, "ab")  # noqa: SIM115 - the process owns it
        self.process = subprocess.Popen(
            [self.binary, "-db", "-f", str(self.config_path)], stdout=log, stderr=subprocess.STDOUT
        )
        wait_for(lambda: _port_open(self.port), "HAProxy to listen")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.socket_path))
            s.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def server_states(self) -> dict[tuple[str, str], str]:
        """(backend, server) -> its status as HAProxy sees it ("UP", "DOWN", "UP 1/2"...)."""
        lines = self.command("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        states: dict[tuple[str, str], str] = {}
        for line in lines[1:]:
            if not line:
                continue
            row = dict(zip(header, line.split(","), strict=False))
            if row["svname"] not in ("FRONTEND", "BACKEND"):
                states[(row["pxname"], row["svname"])] = row["status"]
        return states

    def wait_server(self, name: str, up: bool, timeout: float = 30) -> None:
        def seen() -> bool:
            states = [s for (_, server), s in self.server_states().items() if server == name]
            # "UP 1/2" is going down and "DOWN 1/2" coming up: neither counts yet.
            return bool(states) and all(s == "UP" if up else s in ("DOWN", "MAINT") for s in states)

        wait_for(seen, f"HAProxy to see {name} {'UP' if up else 'DOWN'}", timeout)

    def close(self) -> None:
        stop_process(self.process, 10)


# The whole set-up ---------------------------------------------------------------------------


@dataclass
class Cluster:
    directory: Path
    postgres: PrivatePostgres
    redis: PrivateRedis
    workers: dict[str, Worker]
    haproxy: HAProxy
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return self.haproxy.url

    @property
    def server_name(self) -> str:
        return str(self.config["server_name"])

    def url(self, path: str) -> str:
        return self.haproxy.url + path

    def kill9(self, name: str) -> None:
        """The worker killed at once: no drain, nothing flushed."""
        self.workers[name].signal(signal.SIGKILL)

    def restart(self, name: str) -> None:
        """Started again (as systemd's Restart=always does) and back in HAProxy's rotation."""
        worker = self.workers[name]
        worker.launch()
        worker.wait_healthy()
        self.haproxy.wait_server(name, up=True)

    def heal(self) -> None:
        """Whatever a failed test left down started again: the next test starts whole."""
        if not _port_open(self.postgres.port):
            self.postgres.start()
        if self.redis.process is None or self.redis.process.poll() is not None:
            self.redis.stop()
            self.redis.start()
        for name, worker in self.workers.items():
            if not worker.alive():
                self.restart(name)

    def register(self, username: str, password: str = "correct horse battery") -> dict[str, Any]:
        body = {"username": username, "password": password, "auth": {"type": "m.login.dummy"}}
        r = requests.post(self.url("/_matrix/client/v3/register"), json=body, timeout=30)
        assert r.status_code == 200, r.text
        result: dict[str, Any] = r.json()
        return result

    def logs(self) -> str:
        """Every worker's log, for an assertion message."""
        return "\n".join(f"==== {w.name}\n{w.log_text()[-3000:]}" for w in self.workers.values())

    def close(self) -> None:
        for worker in self.workers.values():
            worker.signal(signal.SIGTERM, timeout=15)
        self.haproxy.close()
        self.redis.stop()
        self.postgres.close()


def workers_config(
    directory: Path, frontend_port: int, db_url: str, redis_url: str, workers: dict[str, Worker]
) -> dict[str, Any]:
    config = base_config(directory, frontend_port, db_url)
    secret_file = directory / "worker_secret"
    secret_file.write_text(secrets.token_urlsafe(32) + "\n")
    secret_file.chmod(0o600)
    names = list(workers)
    config["public_baseurl"] = f"http://127.0.0.1:{frontend_port}/"
    config["workers"] = {
        "redis_url": redis_url,
        "secret_file": str(secret_file),
        "instances": {
            w.name: {"listen": f"127.0.0.1:{w.port}", "internal": f"127.0.0.1:{w.internal_port}"}
            for w in workers.values()
        },
        "event_writers": names[:2],
        "stream_writers": {
            stream: names[0]
            for stream in ("receipts", "typing", "presence", "account_data", "to_device", "device_lists")
        },
        "pusher": names[0],
        "federation_sender": names[0],
        "background": names[0],
    }
    return config


def start_cluster(directory: Path, instances: int = 3, overrides: dict[str, Any] | None = None) -> Cluster:
    """PostgreSQL, Redis, `instances` workers and HAProxy, all started and healthy."""
    assert instances >= 3, "two event writers and at least one client worker"
    directory.mkdir(parents=True, exist_ok=True)
    haproxy_binary()  # skip (or install) before starting anything
    postgres = PrivatePostgres()
    redis: PrivateRedis | None = None
    workers: dict[str, Worker] = {}
    haproxy: HAProxy | None = None
    try:
        redis = PrivateRedis(directory)
        config_path = directory / "homeserver.yaml"
        for i in range(1, instances + 1):
            name = f"w{i}"
            workers[name] = Worker(name, free_port(), free_port(), config_path, directory / f"{name}.log")
        frontend_port = free_port()
        config = workers_config(directory, frontend_port, postgres.url, redis.url, workers)
        for key, value in (overrides or {}).items():
            config[key] = {**config[key], **value} if isinstance(value, dict) and key in config else value
        config_path.write_text(yaml.safe_dump(config))
        migrate = subprocess.run(
            [sys.executable, "-m", "homeserver", "migrate", "-c", str(config_path)],
            capture_output=True, cwd=ROOT, timeout=120,
        )  # fmt: skip
        assert migrate.returncode == 0, migrate.stdout.decode() + migrate.stderr.decode()
        for worker in workers.values():
            worker.launch()
        for worker in workers.values():
            worker.wait_healthy()
        writers = {"w1", "w2"}
        backends = {
            "client_workers": [(w.name, w.port, w.name in writers) for w in workers.values()],
            "any_worker": [(w.name, w.port, False) for w in workers.values()],
        }
        # On the port that the config's server_name and public_baseurl name.
        haproxy = HAProxy(directory, backends, frontend_port)
        cluster = Cluster(directory, postgres, redis, workers, haproxy, config)
        for name in workers:
            haproxy.wait_server(name, up=True)
        return cluster
    except BaseException:
        for worker in workers.values():
            worker.signal(signal.SIGKILL)
        if haproxy is not None:
            haproxy.close()
        if redis is not None:
            redis.stop()
        postgres.close()
        raise


@contextmanager
def cluster(
    directory: Path, instances: int = 3, overrides: dict[str, Any] | None = None
) -> Iterator[Cluster]:
    c = start_cluster(directory, instances, overrides)
    try:
        yield c
    finally:
        c.close()
