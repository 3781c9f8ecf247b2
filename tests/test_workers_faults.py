"""Faults under load with several workers behind HAProxy (issue 19's "done when").

tests/workers_harness.py starts three workers (w1 and w2 write events, w3 serves clients)
from one config, with their own PostgreSQL and Redis, behind HAProxy run from
deploy/haproxy.cfg. Pairs of users chat through HAProxy the way a client does: a sender
PUTs each message with its own transaction id and, on any failure (a 5xx, a dropped
connection, a timeout), sends it again with the same id until it is acknowledged; a
receiver long-polls /sync and, on any failure, asks again from its last token.

Then, while they chat: each worker in turn is killed with SIGKILL and started again (as
systemd's Restart=always does); each event writer in turn is stopped with SIGTERM and
started again (a rolling restart: it hands its promise over, and the other writer's
messages keep arriving while it is down); Redis restarts; PostgreSQL restarts (neither
fences a writer); an event writer killed and not restarted is fenced by the other, after
which the other's messages reach receivers on every worker; an event writer stopped
(SIGSTOP) past its lease is fenced and, continued, stores nothing more and exits to be
restarted. How soon a silent writer is fenced, and that the stream waits for no retired
writer, are timed on a test clock in tests/fast/test_event_replication.py; here each
wait is generous (a loaded machine's processes), and delays are printed, not bounded.
What must hold:
every acknowledged message reaches its receiver exactly once and is stored exactly once;
a message's every acknowledgement names the same event; the clients only ever see
200 or a retryable 502/503/504, never another error; the chat goes on after each fault.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import psycopg2
import pytest
import requests
from workers_harness import Cluster, start_cluster, wait_for

from homeserver.storage import writer_lock
from homeserver.workers import writer_fence
from homeserver.workers.topology import room_shard

CLIENT = "/_matrix/client/v3"
PAIRS_PER_WRITER = 2
RETRYABLE = {502, 503, 504}
# A send may wait for PostgreSQL for 30 s (core/persist.py) before answering 503.
SEND_TIMEOUT_S = 40.0
SYNC_TIMEOUT_MS = 5000
# How long every receiver may take to see every acknowledged message once the faults end.
CATCH_UP_S = 90.0
# How long the other writer's messages may take to reach their receivers while one writer
# is down (they arrive in well under a second: the stream waits for no retired writer).
DELIVERED_WITHIN_S = 60.0
# A writer killed is fenced once silent for SILENT_S (its lock went with its process): the
# other writer's heartbeat checks every second, and the fence is one transaction. The waits
# leave a loaded machine 30 s more.
FENCED_WITHIN_S = writer_fence.SILENT_S + 3.0 + 30
# A writer stopped (SIGSTOP) keeps its lock until PostgreSQL ends the idle session.
LEASE_FENCED_WITHIN_S = writer_lock.LEASE_S + writer_fence.SILENT_S + 5.0 + 30
# What a writer logs as it hands its promise over, and what one logs fencing another.
HANDED_OVER = "the others carry its promise"
FENCED = "silent, its lock free"
# Only the timeline matters here, and all of it: a gap would hide a lost message.
SYNC_FILTER = json.dumps(
    {
        "room": {
            "timeline": {"limit": 1000, "types": ["m.room.message"]},
            "state": {"lazy_load_members": True},
        },
        "presence": {"not_types": ["*"]},
        "account_data": {"not_types": ["*"]},
    }
)


def writer_of(room_id: str, writers: list[str]) -> str:
    """The event writer of a room (the sharding HAProxy's routing repeats)."""
    return writers[room_shard(room_id, len(writers))]


@dataclass
class Pair:
    name: str
    room: str
    writer: str
    sender_token: str
    receiver_token: str
    acked: dict[str, str] = field(default_factory=dict)  # body -> event id
    acked_at: dict[str, float] = field(default_factory=dict)  # body -> time.monotonic()
    received_at: dict[str, float] = field(default_factory=dict)
    conflicting_acks: list[tuple[str, str, str]] = field(default_factory=list)
    received: list[tuple[str, str]] = field(default_factory=list)  # (body, event id), in order
    limited_after_start: int = 0
    since: str | None = None


class Load:
    """Senders and receivers through HAProxy; every answer's status is counted."""

    def __init__(self, cluster: Cluster, pairs: list[Pair]) -> None:
        self.cluster = cluster
        self.pairs = pairs
        self.stop = threading.Event()
        # Set once every sender returned: a send in flight when `stop` is set may still be
        # acknowledged after its receiver last looked, so receivers wait for this.
        self.senders_done = threading.Event()
        self.lock = threading.Lock()
        self.statuses: Counter[tuple[str, int | str]] = Counter()
        self.bad_answers: list[str] = []
        self.threads: list[threading.Thread] = []
        self.senders: list[threading.Thread] = []
        # A thread that died of an exception is not "still running", yet stopped early: its
        # receiver's messages would look lost.
        self.crashed: list[str] = []

    def _request(
        self, what: str, method: str, path: str, token: str, timeout: float, body: Any = None
    ) -> Any:
        """The answer's JSON on 200, else None after counting why."""
        try:
            r = requests.request(
                method, self.cluster.url(path), json=body, timeout=timeout,
                headers={"Authorization": f"Bearer {token}"},
            )  # fmt: skip
        except requests.RequestException as e:
            with self.lock:
                self.statuses[(what, type(e).__name__)] += 1
            return None
        with self.lock:
            self.statuses[(what, r.status_code)] += 1
            if r.status_code not in RETRYABLE and r.status_code != 200:
                self.bad_answers.append(f"{what} {method} {path}: {r.status_code} {r.text[:300]}")
        return r.json() if r.status_code == 200 else None

    def _sender(self, pair: Pair) -> None:
        n = 0
        while not self.stop.is_set():
            body = f"{pair.name} message {n}"
            path = f"{CLIENT}/rooms/{quote(pair.room)}/send/m.room.message/{pair.name}-{n}"
            content = {"msgtype": "m.text", "body": body}
            while True:  # the same transaction id until it is acknowledged
                answer = self._request("send", "PUT", path, pair.sender_token, SEND_TIMEOUT_S, content)
                if answer is not None:
                    event_id = answer["event_id"]
                    with self.lock:
                        first = pair.acked.setdefault(body, event_id)
                        pair.acked_at.setdefault(body, time.monotonic())
                        if first != event_id:
                            pair.conflicting_acks.append((body, first, event_id))
                    break
                if self.stop.is_set():
                    return  # never acknowledged: it may or may not arrive, and is not counted
                time.sleep(0.1)
            n += 1
            time.sleep(0.05)

    def _receiver(self, pair: Pair) -> None:
        while not self.senders_done.is_set() or self._behind(pair):
            self.sync_once(pair, SYNC_TIMEOUT_MS)

    def sync_once(self, pair: Pair, timeout_ms: int) -> None:
        query = f"timeout={timeout_ms}&filter={quote(SYNC_FILTER)}"
        if pair.since is not None:
            query += f"&since={quote(pair.since)}"
        answer = self._request(
            "sync", "GET", f"{CLIENT}/sync?{query}", pair.receiver_token, timeout_ms / 1000 + 40
        )
        if answer is None:
            time.sleep(0.1)
            return
        timeline = answer.get("rooms", {}).get("join", {}).get(pair.room, {}).get("timeline", {})
        with self.lock:
            if timeline.get("limited") and pair.since is not None:
                pair.limited_after_start += 1
            now = time.monotonic()
            for event in timeline.get("events", []):
                pair.received.append((event["content"].get("body", ""), event["event_id"]))
                pair.received_at.setdefault(event["content"].get("body", ""), now)
            pair.since = answer["next_batch"]

    def _behind(self, pair: Pair) -> bool:
        """Still missing an acknowledged message (the receiver keeps syncing until CATCH_UP_S)."""
        with self.lock:
            return not set(pair.acked) <= {body for body, _ in pair.received}

    def start(self) -> None:
        for pair in self.pairs:
            for role, target in (("send", self._sender), ("receive", self._receiver)):
                t = threading.Thread(
                    target=self._guarded, args=(target, pair), name=f"{role}-{pair.name}", daemon=True
                )
                t.start()
                self.threads.append(t)
        self.senders = [t for t in self.threads if t.name.startswith("send-")]

    def _guarded(self, target: Callable[[Pair], None], pair: Pair) -> None:
        try:
            target(pair)
        except Exception as e:
            with self.lock:
                self.crashed.append(f"{threading.current_thread().name}: {e!r}")
            raise

    def delivery_delays(self, pairs: list[Pair], start: float, end: float) -> list[float]:
        """Seconds from acknowledgement to a receiver's sync, for the messages of `pairs`
        acknowledged between `start` and `end` (time.monotonic()); infinite if never."""
        with self.lock:
            return [
                pair.received_at.get(body, float("inf")) - at
                for pair in pairs
                for body, at in pair.acked_at.items()
                if start <= at <= end
            ]

    def wait_delivered(self, what: str, pairs: list[Pair], start: float, end: float) -> list[float]:
        """Until every message of `pairs` acknowledged between `start` and `end` has reached
        its receiver (at most DELIVERED_WITHIN_S); their delays, to print."""
        wait_for(
            lambda: max(self.delivery_delays(pairs, start, end), default=0) < float("inf"),
            what,
            timeout=DELIVERED_WITHIN_S,
        )
        delays = self.delivery_delays(pairs, start, end)
        assert delays, f"no message acknowledged {what}"
        return delays

    def acked_count(self, pairs: list[Pair] | None = None) -> int:
        with self.lock:
            return sum(len(p.acked) for p in pairs or self.pairs)

    def wait_progress(
        self, what: str, each: int = 5, pairs: list[Pair] | None = None, timeout: float = 60
    ) -> None:
        """Until each of `pairs` (default: all) has `each` more messages acknowledged."""
        pairs = pairs or self.pairs
        with self.lock:
            start = {p.name: len(p.acked) for p in pairs}
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                behind = [p.name for p in pairs if len(p.acked) < start[p.name] + each]
            if not behind:
                return
            assert time.monotonic() < deadline, (
                f"no progress {what} for {behind}: {dict(self.statuses)}\n{self.cluster.logs()}"
            )
            time.sleep(0.1)

    def finish(self) -> None:
        """Senders stop; receivers go on until they hold every acknowledged message."""
        self.stop.set()
        # A sender finishes its send in flight first (at most SEND_TIMEOUT_S), and only then
        # is its last acknowledgement known; until then a receiver that holds every message
        # acknowledged so far must keep syncing (it once stopped just before the last ack).
        senders_deadline = time.monotonic() + SEND_TIMEOUT_S + 5
        for t in self.senders:
            t.join(max(0.1, senders_deadline - time.monotonic()))
        self.senders_done.set()
        deadline = time.monotonic() + CATCH_UP_S
        for t in self.threads:
            t.join(max(0.1, deadline - time.monotonic()))
        stuck = [t.name for t in self.threads if t.is_alive()]
        missing = {
            p.name: sorted(set(p.acked) - {b for b, _ in p.received})[:5]
            for p in self.pairs
            if self._behind(p)
        }
        assert not stuck, (
            f"still running after {CATCH_UP_S:.0f}s: {stuck}; missing {missing}\n{self.cluster.logs()}"
        )
        assert not self.crashed, self.crashed


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = start_cluster(tmp_path_factory.mktemp("workers"), instances=3)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(autouse=True)
def _whole(workers: Cluster) -> None:
    workers.heal()


def make_pairs(cluster: Cluster, prefix: str) -> list[Pair]:
    """PAIRS_PER_WRITER chatting pairs in rooms of each event writer."""
    writers = cluster.config["workers"]["event_writers"]
    per_writer: dict[str, list[Pair]] = {w: [] for w in writers}
    n = 0
    while any(len(p) < PAIRS_PER_WRITER for p in per_writer.values()):
        assert n < 40, "room creation never reached every writer"
        sender = cluster.register(f"{prefix}s{n}")
        receiver = cluster.register(f"{prefix}r{n}")
        headers = {"Authorization": f"Bearer {sender['access_token']}"}
        r = requests.post(cluster.url(f"{CLIENT}/createRoom"), headers=headers, timeout=30,
                          json={"preset": "private_chat", "invite": [receiver["user_id"]]})  # fmt: skip
        assert r.status_code == 200, r.text
        room = r.json()["room_id"]
        r = requests.post(cluster.url(f"{CLIENT}/join/{quote(room)}"), json={}, timeout=30,
                          headers={"Authorization": f"Bearer {receiver['access_token']}"})  # fmt: skip
        assert r.status_code == 200, r.text
        writer = writer_of(room, writers)
        if len(per_writer[writer]) < PAIRS_PER_WRITER:
            name = f"{prefix}{n}"
            per_writer[writer].append(
                Pair(name, room, writer, sender["access_token"], receiver["access_token"])
            )
        n += 1
    return [p for pairs in per_writer.values() for p in pairs]


def start_load(cluster: Cluster, prefix: str) -> Load:
    pairs = make_pairs(cluster, prefix)
    load = Load(cluster, pairs)
    for pair in pairs:  # a first token from before any message
        load.sync_once(pair, 0)
        assert pair.since is not None, dict(load.statuses)
    load.start()
    load.wait_progress("before any fault")
    return load


def check_exactly_once(cluster: Cluster, load: Load) -> None:
    """Every acknowledged message stored once and received once; nothing else received."""
    assert not load.bad_answers, load.bad_answers[:10]
    for pair in load.pairs:
        assert not pair.conflicting_acks, pair.conflicting_acks[:5]
        received = Counter(body for body, _ in pair.received)
        duplicated = [b for b, c in received.items() if c > 1]
        assert not duplicated, f"{pair.name} received twice: {duplicated[:5]}"
        assert set(pair.acked) <= set(received), sorted(set(pair.acked) - set(received))[:5]
        # What arrived and was never acknowledged: only a last send cut short by the stop.
        unacked = set(received) - set(pair.acked)
        assert len(unacked) <= 1, sorted(unacked)
        ids = {body: event_id for body, event_id in pair.received}
        assert all(ids[body] == event_id for body, event_id in pair.acked.items())
        assert pair.limited_after_start == 0, f"{pair.name}: a sync skipped part of the timeline"
    conn = psycopg2.connect(cluster.postgres.url)
    try:
        with conn.cursor() as cur:
            for pair in load.pairs:
                cur.execute(
                    "SELECT json FROM events WHERE room_id = %s AND type = 'm.room.message'", (pair.room,)
                )
                stored = Counter(json.loads(j)["content"]["body"] for (j,) in cur.fetchall())
                assert all(c == 1 for c in stored.values()), [b for b, c in stored.items() if c > 1][:5]
                assert set(pair.acked) <= set(stored)
    finally:
        conn.close()


def summary(load: Load) -> str:
    return f"{load.acked_count()} messages acknowledged, answers {dict(load.statuses)}"


def test_kill9_of_any_worker_under_load_loses_and_repeats_nothing(workers: Cluster) -> None:
    load = start_load(workers, "k")
    try:
        for name in workers.workers:
            workers.kill9(name)
            others = [p for p in load.pairs if p.writer != name]
            # The rooms of the other writer go on while this one is down (a dead writer's
            # rooms wait for it; a dead client worker's users move to another worker).
            load.wait_progress(f"with {name} killed", pairs=others)
            workers.restart(name)
            load.wait_progress(f"after {name} restarted")
    finally:
        load.finish()
    check_exactly_once(workers, load)
    assert all(w.starts == 2 for w in workers.workers.values())
    print(summary(load))


def test_a_redis_restart_under_load_loses_and_repeats_nothing(workers: Cluster) -> None:
    load = start_load(workers, "r")
    try:
        for _ in range(2):
            workers.redis.restart()
            load.wait_progress("after Redis restarted", each=15)
    finally:
        load.finish()
    check_exactly_once(workers, load)
    assert retired(workers) == {}, "a Redis restart fenced a writer"
    assert all(w.alive() for w in workers.workers.values())
    print(summary(load))


def test_a_postgres_restart_under_load_answers_retryable_errors_and_loses_nothing(workers: Cluster) -> None:
    load = start_load(workers, "p")
    try:
        before = load.acked_count()
        workers.postgres.stop()
        time.sleep(3)  # the outage's length, not an ordering: sends wait for the database
        assert load.acked_count() <= before + len(load.pairs), "sends acknowledged without a database"
        workers.postgres.start()
        load.wait_progress("after PostgreSQL restarted", each=15, timeout=90)
    finally:
        load.finish()
    check_exactly_once(workers, load)
    assert retired(workers) == {}, "a PostgreSQL restart fenced a writer"
    assert all(w.alive() for w in workers.workers.values()), workers.logs()
    print(summary(load))


def test_a_client_worker_stopped_with_sigterm_drains_without_a_failed_request(workers: Cluster) -> None:
    """systemctl stop/restart of a client worker: its requests finish, new ones go elsewhere,
    and no client sees an error (only GETs and PUTs here: HAProxy replays those)."""
    load = start_load(workers, "d")
    try:
        with load.lock:
            load.statuses.clear()
        w3 = workers.workers["w3"]
        assert w3.signal(signal.SIGTERM) == 0, w3.log_text()[-3000:]
        load.wait_progress("with w3 stopped")
        workers.restart("w3")
        load.wait_progress("after w3 restarted")
    finally:
        load.finish()
    check_exactly_once(workers, load)
    failed = {k: n for k, n in load.statuses.items() if k[1] != 200}
    assert not failed, failed
    print(summary(load))


def test_a_rolling_restart_of_the_event_writers_stalls_no_one(workers: Cluster) -> None:
    """systemctl restart of each event writer in turn under load: the stopped writer hands
    its promise over, so the other writer's messages keep reaching every receiver while it
    is down; its own rooms answer 503 (retried) until it is back; nothing lost or doubled."""
    load = start_load(workers, "g")
    delays: dict[str, list[float]] = {}
    try:
        for name in ("w2", "w1"):
            worker = workers.workers[name]
            handed_over, fenced = worker.log_text().count(HANDED_OVER), fences(workers)
            assert worker.signal(signal.SIGTERM) == 0, worker.log_text()[-3000:]
            stopped_at = time.monotonic()
            assert worker.log_text().count(HANDED_OVER) == handed_over + 1, worker.log_text()[-3000:]
            others = [p for p in load.pairs if p.writer != name]
            load.wait_progress(f"with {name} stopped", each=10, pairs=others)
            sent_until = time.monotonic()
            # Still stopped: what the other writer acknowledged meanwhile reaches its receivers
            # (a stream waiting for the stopped writer would hold it until the restart)...
            delays[name] = load.wait_delivered(f"with {name} stopped", others, stopped_at, sent_until)
            # ...carried by the handover, not by a fence after SILENT_S of silence.
            assert fences(workers) == fenced, workers.logs()
            workers.restart(name)
            load.wait_progress(f"after {name} restarted")
    finally:
        load.finish()
    check_exactly_once(workers, load)
    assert all(w.alive() for w in workers.workers.values())
    print(summary(load), {n: f"max {max(d):.2f}s over {len(d)}" for n, d in delays.items()})


def fences(cluster: Cluster) -> int:
    """How many times, in all, a writer has fenced another (their whole logs)."""
    return sum(w.log_text().count(FENCED) for w in cluster.workers.values())


def retired(cluster: Cluster) -> dict[str, int]:
    conn = psycopg2.connect(cluster.postgres.url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT name, retired_at FROM stream_writers WHERE retired_at IS NOT NULL")
            return {str(name): int(at) for name, at in cur.fetchall()}
    finally:
        conn.close()


def messages_on(cluster: Cluster, worker: str, pair: Pair, since: str) -> set[str]:
    """The bodies a sync straight to `worker` returns for the pair's room after `since`."""
    query = f"timeout=0&since={quote(since)}&filter={quote(SYNC_FILTER)}"
    r = requests.get(
        f"{cluster.workers[worker].url}{CLIENT}/sync?{query}", timeout=30,
        headers={"Authorization": f"Bearer {pair.receiver_token}"},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    timeline = r.json().get("rooms", {}).get("join", {}).get(pair.room, {}).get("timeline", {})
    return {e["content"].get("body", "") for e in timeline.get("events", [])}


def check_the_others_go_on(cluster: Cluster, load: Load, dead: str, since: float) -> None:
    """With `dead` fenced: the other writer's messages acknowledged from `since` on reach their
    receivers, and a sync straight to each live worker has them."""
    others = [p for p in load.pairs if p.writer != dead]
    with load.lock:
        # What each receiver's token covers: a message acknowledged later may be in it.
        tokens = {p.name: p.since for p in others}
        seen = {p.name: {body for body, _ in p.received} for p in others}
    load.wait_progress(f"with {dead} fenced", each=10, pairs=others)
    sent_until = time.monotonic()
    delays = load.wait_delivered(f"with {dead} fenced", others, since, sent_until)
    print(f"with {dead} fenced: {len(delays)} messages of the other writer, slowest {max(delays):.2f}s")
    with load.lock:
        acked = {p.name: {b for b, at in p.acked_at.items() if since <= at <= sent_until} for p in others}
    for name in cluster.workers:
        if name == dead:
            continue
        for pair in others:
            token = tokens[pair.name]
            assert token is not None
            missing = acked[pair.name] - seen[pair.name] - messages_on(cluster, name, pair, token)
            assert not missing, f"{name} has not {sorted(missing)[:5]} of {pair.name}"


def test_an_event_writer_killed_and_not_restarted_is_fenced_and_the_others_go_on(workers: Cluster) -> None:
    """kill -9 of w2, left dead: w1 fences it (silent, its lock gone with its process) and
    carries it, so w1's rooms reach every receiver on every worker; w2's rooms answer
    retryable errors until it is restarted; nothing lost or doubled."""
    load = start_load(workers, "x")
    try:
        workers.kill9("w2")
        killed_at = time.monotonic()
        wait_for(lambda: "w2" in retired(workers), "w1 fenced w2", timeout=FENCED_WITHIN_S)
        fenced_after = time.monotonic() - killed_at
        with load.lock:
            refused_before = sum(
                n for (what, code), n in load.statuses.items() if what == "send" and code != 200
            )
        check_the_others_go_on(workers, load, "w2", time.monotonic())
        with load.lock:
            refused = sum(n for (what, code), n in load.statuses.items() if what == "send" and code != 200)
        assert refused > refused_before, "w2's rooms were not refused while it was dead"
        workers.restart("w2")
        load.wait_progress("after w2 restarted")
        assert "w2" not in retired(workers)
    finally:
        load.finish()
    check_exactly_once(workers, load)
    assert all(w.alive() for w in workers.workers.values())
    print(summary(load), f"fenced after {fenced_after:.1f}s")


def test_an_event_writer_stopped_past_its_lease_is_fenced_and_stores_nothing_more(workers: Cluster) -> None:
    """SIGSTOP of w2 (a long pause): once PostgreSQL ends its lock's idle session, w1 fences
    it and w1's rooms go on; SIGCONT: w2 finds out, stores nothing more, and exits failing
    (for systemd's Restart=); restarted it rejoins; nothing lost or doubled."""
    load = start_load(workers, "y")
    w2 = workers.workers["w2"]
    assert w2.process is not None
    try:
        w2.process.send_signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        wait_for(lambda: "w2" in retired(workers), "w1 fenced w2", timeout=LEASE_FENCED_WITHIN_S)
        fenced_after = time.monotonic() - stopped_at
        at = retired(workers)["w2"]
        check_the_others_go_on(workers, load, "w2", time.monotonic())
        w2.process.send_signal(signal.SIGCONT)
        assert w2.process.wait(60) == 75, w2.log_text()[-3000:]
        assert "was fenced by another writer" in w2.log_text()
        # Nothing of w2's is stored above where it was retired.
        conn = psycopg2.connect(workers.postgres.url)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT max(stream_ordering) FROM events WHERE stream_ordering % 2 = 1")
                (highest,) = cur.fetchone() or (None,)
        finally:
            conn.close()
        assert highest is None or highest <= at, (highest, at)
        workers.restart("w2")
        load.wait_progress("after w2 restarted")
        assert "w2" not in retired(workers)
    finally:
        if w2.process is not None and w2.process.poll() is None:
            w2.process.send_signal(signal.SIGCONT)
        load.finish()
    check_exactly_once(workers, load)
    assert all(w.alive() for w in workers.workers.values())
    print(summary(load), f"fenced after {fenced_after:.1f}s")
