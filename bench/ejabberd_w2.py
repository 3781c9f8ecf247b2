"""W2's shape on ejabberd over XMPP, for a reference on this machine (issue 12's point 6 names
ejabberd's p99 3.3-5.1 ms as the one to beat), and W1's:

    .venv/bin/python -m bench.ejabberd_w2 [--rates 500,1000,0] [--seconds 30] [--pairs 50]
        [--storage pgsql] [--report]

Starts Debian's ejabberd (`apt-get install -y ejabberd`; its service need not run) in the
foreground on a free loopback port with a config of its own: plain c2s, no TLS, no shaper,
in-band registration. Storage: its default Mnesia, where a message to an online user is
not stored at all, or with `--storage pgsql` (`apt-get install -y erlang-p1-pgsql`) every
message archived (mod_mam, `default: always`) in a fresh PostgreSQL database on
127.0.0.1:5432, as ours stores each before it is delivered. Connects 2 x `pairs` clients
(a raw XMPP stream each: register, SASL PLAIN, bind, initial presence), sends one warm-up
message from each, then for each of `rates`: that many messages a second round robin over
the senders, each to its pair, for `seconds`. A rate of 0 is W1's shape instead: every
sender has one message in flight and sends its next as soon as the last arrives (full
throughput). A message's latency runs from just before its stanza is written to its
arrival at the receiver (the time stamp rides in its body). Reports p50, p99 and max in
ms, and the CPU per message delivered of ejabberd (all its threads, /proc) and of the
PostgreSQL backends serving its database, as the bench's W1 and W2 rows count the server
and its database; `--report` writes them to bench/results/DATE-ejabberd.md too (`make
bench` does).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import shutil
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from bench.procstats import cpu_seconds, cpu_speed_probe
from bench.report import cpu_model, write_results
from bench.servers import free_port
from bench.stats import percentile

HOST = "localhost"
STREAM_NS = "{jabber:client}"
CONFIG = """hosts: ["{host}"]
loglevel: warning
auth_method: internal
auth_password_format: plain
listen:
  - port: {port}
    ip: "127.0.0.1"
    module: ejabberd_c2s
    max_stanza_size: 262144
    starttls: false
    access: all
acl:
  local:
    user_regexp: ""
access_rules:
  register:
    allow: all
modules:
  mod_register:
    access: register
    ip_access: all
    welcome_message: {{subject: "", body: ""}}
  mod_roster: {{}}
  mod_disco: {{}}
  mod_ping: {{}}
{mam}registration_timeout: infinity
"""
PGSQL = """sql_type: pgsql
sql_server: "127.0.0.1"
sql_port: 5432
sql_database: "{database}"
sql_username: "postgres"
sql_password: ""
"""


def _beam_pid(spool: Path) -> int:
    """The Erlang VM running this node (its command line names the spool directory)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"beam" in cmd and str(spool).encode() in cmd:
            return int(entry.name)
    raise RuntimeError("ejabberd's VM not found")


def _psql(*args: str, database: str = "postgres") -> str:
    command = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", database, "-v", "ON_ERROR_STOP=1", "-qAt"]
    return subprocess.run([*command, *args], check=True, capture_output=True, text=True).stdout  # noqa: S603 - fixed argv


class Ejabberd:
    def __init__(self, storage: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ejbench-"))
        shutil.chown(self.dir, "ejabberd", "ejabberd")
        self.port = free_port()
        self.database = f"ejbench_{self.port}" if storage == "pgsql" else None
        # Every message archived for its sender and its receiver, as it is sent.
        mam = "  mod_mam: {db_type: sql, default: always}\n" if self.database else ""
        config = CONFIG.format(host=HOST, port=self.port, mam=mam)
        if self.database is not None:
            _psql("-c", f"CREATE DATABASE {self.database}")
            _psql("-f", "/usr/share/ejabberd/sql/pg.sql", database=self.database)
            config = PGSQL.format(database=self.database) + config
        self.config = self.dir / "ejabberd.yml"
        self.config.write_text(config)
        # Debian's ejabberdctl.cfg names /etc/ejabberd/ejabberd.yml, over --config: one of ours.
        self.ctl_config = self.dir / "ejabberdctl.cfg"
        self.ctl_config.write_text('ERL_OPTIONS="-env ERL_CRASH_DUMP_BYTES 0"\n')
        self.node = f"ejbench{self.port}@localhost"
        self.process: subprocess.Popen[bytes] | None = None

    def _ctl(self, *args: str) -> list[str]:
        spool, logs = str(self.dir / "spool"), str(self.dir / "logs")
        return [
            "ejabberdctl",
            *("--ctl-config", str(self.ctl_config), "--config", str(self.config)),
            *("--spool", spool, "--logs", logs, "--node", self.node, *args),
        ]

    async def start(self) -> None:
        for name in ("spool", "logs"):
            (self.dir / name).mkdir()
            shutil.chown(self.dir / name, "ejabberd", "ejabberd")
        for path in (self.config, self.ctl_config):
            shutil.chown(path, "ejabberd", "ejabberd")
        log = open(self.dir / "foreground.log", "wb")  # noqa: SIM115 - the process owns it
        self.process = subprocess.Popen(  # noqa: S603 - fixed argv
            self._ctl("foreground"), stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError((self.dir / "foreground.log").read_text()) from None
                await asyncio.sleep(0.2)
        self.pid = _beam_pid(self.dir / "spool")

    def database_pids(self) -> list[int]:
        if self.database is None:
            return []
        query = f"SELECT pid FROM pg_stat_activity WHERE datname = '{self.database}'"
        return [int(pid) for pid in _psql("-c", query).split()]

    def stop(self) -> None:
        subprocess.run(self._ctl("stop"), capture_output=True, timeout=60)  # noqa: S603 - fixed argv
        if self.process is not None:
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.database is not None:
            _psql("-c", f"DROP DATABASE IF EXISTS {self.database} WITH (FORCE)")


class Client(asyncio.Protocol):
    """One XMPP stream: stanzas of depth one come to `on_stanza` as elements."""

    def __init__(self, user: str) -> None:
        self.user = user
        self.jid = f"{user}@{HOST}"
        self.transport: asyncio.Transport | None = None
        self._parser = ET.XMLPullParser(events=("start", "end"))
        self._depth = 0
        self._waiters: list[tuple[str, asyncio.Future[ET.Element]]] = []
        self.latencies: list[float] = []
        # Closed loop (`--rate 0`): told the sender's bare JID of each message that arrives.
        self.on_message: Callable[[str], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        self._parser.feed(data)
        for event, element in self._parser.read_events():
            assert isinstance(element, ET.Element)
            if event == "start":
                self._depth += 1
                if self._depth == 1:  # the stream's header
                    self._resolve("stream", element)
                continue
            self._depth -= 1
            if self._depth != 1:
                continue
            if element.tag == f"{STREAM_NS}message":
                body = element.find(f"{STREAM_NS}body")
                if body is not None and body.text and body.text.isdigit():
                    self.latencies.append((now - int(body.text)) / 1e6)
                    if self.on_message is not None:
                        self.on_message(element.get("from", "").split("/")[0])
            else:
                self._resolve(element.tag, element)
            element.clear()

    def _resolve(self, tag: str, element: ET.Element) -> None:
        for i, (wanted, future) in enumerate(self._waiters):
            if wanted == tag or tag.endswith("}" + wanted):
                del self._waiters[i]
                future.set_result(element)
                return

    def _expect(self, tag: str) -> asyncio.Future[ET.Element]:
        future: asyncio.Future[ET.Element] = asyncio.get_running_loop().create_future()
        self._waiters.append((tag, future))
        return future

    def send(self, data: str) -> None:
        assert self.transport is not None
        self.transport.write(data.encode())

    async def _open_stream(self) -> None:
        self._parser = ET.XMLPullParser(events=("start", "end"))
        self._depth = 0
        header, features = self._expect("stream"), self._expect("features")
        self.send(
            f"<?xml version='1.0'?><stream:stream to='{HOST}' xmlns='jabber:client'"
            " xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
        )
        await header
        await features

    async def log_in(self, password: str) -> None:
        await self._open_stream()
        iq = self._expect(f"{STREAM_NS}iq")
        self.send(
            "<iq type='set' id='reg'><query xmlns='jabber:iq:register'>"
            f"<username>{self.user}</username><password>{password}</password></query></iq>"
        )
        await iq  # a result, or a conflict when the account exists: either way it exists
        outcome = self._expect("success")
        token = base64.b64encode(f"\0{self.user}\0{password}".encode()).decode()
        self.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>")
        await asyncio.wait_for(outcome, 10)
        await self._open_stream()
        bound = self._expect(f"{STREAM_NS}iq")
        self.send(
            "<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
            "<resource>bench</resource></bind></iq>"
        )
        await bound
        self.send("<presence/>")


async def run(args: argparse.Namespace) -> list[str]:
    """Each of `args.rates` in turn on one ejabberd and one set of clients; a line for each."""
    server = Ejabberd(args.storage)
    lines = []
    try:
        await server.start()
        loop = asyncio.get_running_loop()
        clients = []
        for i in range(2 * args.pairs):
            _, client = await loop.create_connection(lambda i=i: Client(f"u{i}"), "127.0.0.1", server.port)
            await client.log_in("secret")
            clients.append(client)
        pairs = [(clients[2 * i], clients[2 * i + 1]) for i in range(args.pairs)]
        senders = [(a, b) for a, b in pairs] + [(b, a) for a, b in pairs]

        def send(sender: Client, receiver: Client) -> None:
            sender.send(
                f"<message to='{receiver.jid}' type='chat'><body>{time.monotonic_ns()}</body></message>"
            )

        for sender, receiver in senders:  # warm-up, not counted
            send(sender, receiver)
        await asyncio.sleep(2.0)
        for rate in args.rates:
            lines.append(await _measure(args, rate, server, clients, senders, send))
            print(lines[-1], flush=True)
        if server.database is not None:  # the proof that they were stored: two rows a message
            archived = _psql("-c", "SELECT count(*) FROM archive", database=server.database).strip()
            lines.append(f"archived rows: {archived} (warm-up included)")
    finally:
        server.stop()
    return lines


async def _measure(
    args: argparse.Namespace,
    rate: int,
    server: Ejabberd,
    clients: list[Client],
    senders: list[tuple[Client, Client]],
    send: Send,
) -> str:
    for c in clients:
        c.latencies.clear()
        c.on_message = None
    pids = [server.pid, *server.database_pids()]
    cpu_before = sum(cpu_seconds(pid) or 0.0 for pid in pids)
    if rate:
        total = await _open_loop(args.seconds, rate, senders, send)
    else:
        total = await _closed_loop(args.seconds, clients, senders, send)
    deadline = time.monotonic() + 10
    while sum(len(c.latencies) for c in clients) < total and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    cpu = sum(cpu_seconds(pid) or 0.0 for pid in pids) - cpu_before
    values = sorted(v for c in clients for v in c.latencies)
    shape = f"W2@{rate}" if rate else f"closed loop (W1), {len(values) / args.seconds:,.0f} msg/s"
    return (
        f"ejabberd ({args.storage}) {shape}: {len(values)}/{total} delivered,"
        f" p50 {percentile(values, 50):.2f} ms,"
        f" p99 {percentile(values, 99):.2f} ms, max {values[-1]:.1f} ms,"
        f" CPU {cpu * 1000 / max(1, len(values)):.3f} ms a message"
    )


Send = Callable[["Client", "Client"], None]


async def _open_loop(seconds: float, rate: int, senders: list[tuple[Client, Client]], send: Send) -> int:
    """W2: `rate` messages a second round robin over the senders; returns how many were sent."""
    total = int(rate * seconds)
    start = time.monotonic() + 0.05
    for n in range(total):
        pause = start + n / rate - time.monotonic()
        if pause > 0:
            await asyncio.sleep(pause)
        send(*senders[n % len(senders)])
    return total


async def _closed_loop(
    seconds: float, clients: list[Client], senders: list[tuple[Client, Client]], send: Send
) -> int:
    """W1's shape: every sender has one message in flight, and sends its next as soon as the last
    has reached its pair (XMPP has no answer to a message), for `seconds`; returns how many
    were sent."""
    by_jid = {sender.jid: (sender, receiver) for sender, receiver in senders}
    sent = 0
    ending = time.monotonic() + seconds

    def next_from(jid: str) -> None:
        nonlocal sent
        if time.monotonic() < ending:
            send(*by_jid[jid])
            sent += 1

    for client in clients:
        client.on_message = next_from
    for sender, receiver in senders:
        send(sender, receiver)
        sent += 1
    await asyncio.sleep(seconds)
    return sent


def write_report(lines: list[str], args: argparse.Namespace, started: datetime) -> Path:
    """bench/results/DATE-ejabberd.md: the lines, with what ran them and how fast the VM was."""
    version = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", "ejabberd"],  # noqa: S607 - Debian's own tool
        capture_output=True,
        text=True,
    ).stdout
    text = "\n".join(
        [
            f"# ejabberd beside us, {started:%Y-%m-%d %H:%M}",
            "",
            f"`python -m bench.ejabberd_w2 --storage {args.storage} --rates"
            f' {",".join(map(str, args.rates))}` (docs/latency.md, "ejabberd beside us"):',
            f"ejabberd {version or '?'} (Debian), {2 * args.pairs} XMPP clients in {args.pairs} pairs,"
            f" {args.seconds:g} s a row; CPU: ejabberd and the PostgreSQL backends serving it.",
            f"Machine: {cpu_model()}; speed probe {args.probe:.3f} s (lower is faster; the bench's).",
            "",
            *(f"- {line}" for line in lines),
            "",
        ]
    )
    return write_results(text, started, "-ejabberd")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rates",
        type=lambda text: [int(part) for part in text.split(",")],
        default=[500],
        help="comma list of messages a second, one row each; 0: closed loop (W1's shape)",
    )
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--storage", choices=("mnesia", "pgsql"), default="mnesia")
    parser.add_argument("--report", action="store_true", help="also write bench/results/DATE-ejabberd.md")
    args = parser.parse_args()
    started = datetime.now()
    args.probe = cpu_speed_probe()
    lines = asyncio.run(run(args))
    if args.report:
        print(f"results written to {write_report(lines, args, started)}")


if __name__ == "__main__":
    main()
