"""Micro-benchmark: remote PDUs ingested per second, 50 to a transaction.

    .venv/bin/python -m bench.federation_ingest_micro [--batches 10] [--database URL]

An in-process server (SQLite in a temporary directory unless --database names another,
e.g. postgresql://127.0.0.1/bench) holds a public room; a remote server's key is in its
key ring. A remote user joins, then each transaction brings 50 chained messages from it,
handed to the transaction receiver as the /send route does (no HTTP, no TLS): each PDU's
format, signature, hashes, auth against its auth events, the state before it and the
room's current state are checked, and it is written by the group commit and published.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

from signedjson.key import generate_signing_key
from twisted.internet import defer, task

from homeserver.config import parse_config
from homeserver.events.hashing import add_content_hash, compute_event_id
from homeserver.events.signing import sign_event
from homeserver.server import HomeServer
from homeserver.signing_key import verify_key_base64
from homeserver.storage.server_keys import StoredKey

THEM = "them.example"
VERSION = "10"


def _pdu(
    key: Any,
    room_id: str,
    sender: str,
    kind: str,
    content: dict[str, Any],
    prev: list[str],
    auth: list[str],
    depth: int,
    state_key: str | None = None,
) -> tuple[str, dict[str, Any]]:
    pdu: dict[str, Any] = {
        "room_id": room_id,
        "sender": sender,
        "type": kind,
        "content": content,
        "depth": depth,
        "origin_server_ts": int(time.time() * 1000),
        "prev_events": prev,
        "auth_events": auth,
    }
    if state_key is not None:
        pdu["state_key"] = state_key
    pdu = sign_event(add_content_hash(pdu), THEM, key, VERSION)
    return compute_event_id(pdu, VERSION), pdu


async def run(reactor: Any, batches: int, database: str | None) -> None:
    directory = tempfile.mkdtemp(prefix="ingest-bench-")
    raw = {
        "server_name": "us.example",
        "data_dir": directory,
        "database": {"url": database or f"sqlite:///{directory}/hs.db"},
        "rate_limits": {"enabled": False},
        "plugins": [],
    }
    hs = HomeServer(parse_config(raw, "bench.yaml", env={}), reactor)
    await hs.start()
    key = generate_signing_key("t1")
    far = int(time.time() * 1000) + 86_400_000
    await hs.federation.key_ring._remember(
        [StoredKey(THEM, "ed25519:t1", verify_key_base64(key), far, None, "{}")]
    )
    room_id = await hs.rooms.create_room(
        "@alice:us.example", {"preset": "public_chat", "room_version": VERSION}
    )
    head = await hs.room_heads.get(room_id)
    assert head is not None
    ids = {k: ev.event_id for k, ev in head.state.items()}
    user = f"@x:{THEM}"
    join_id, join = _pdu(
        key,
        room_id,
        user,
        "m.room.member",
        {"membership": "join"},
        list(head.extremities),
        [ids[("m.room.create", "")], ids[("m.room.join_rules", "")], ids[("m.room.power_levels", "")]],
        head.depth + 1,
        state_key=user,
    )
    answer = await hs.federation_transactions.receive(
        THEM, "join", {"origin": THEM, "origin_server_ts": 0, "pdus": [join]}
    )
    assert answer["pdus"][join_id] == {}, answer
    auth = [ids[("m.room.create", "")], ids[("m.room.power_levels", "")], join_id]
    prev, depth, rates = join_id, head.depth + 1, []
    for batch in range(batches):
        pdus = []
        for i in range(50):
            depth += 1
            prev, pdu = _pdu(
                key,
                room_id,
                user,
                "m.room.message",
                {"msgtype": "m.text", "body": f"{batch}/{i}"},
                [prev],
                auth,
                depth,
            )
            pdus.append(pdu)
        started = time.perf_counter()
        answer = await hs.federation_transactions.receive(
            THEM, f"b{batch}", {"origin": THEM, "origin_server_ts": 0, "pdus": pdus}
        )
        rates.append(50 / (time.perf_counter() - started))
        assert all(v == {} for v in answer["pdus"].values()), answer
    rates.sort()
    engine = "PostgreSQL" if database else "SQLite"
    print(
        f"PDUs/s ingested, 50 a transaction, {batches} transactions ({engine}):"
        f" median {rates[len(rates) // 2]:.0f}, best {rates[-1]:.0f}, worst {rates[0]:.0f}"
    )
    await hs.stop(None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--database", default=None)
    args = parser.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(run(reactor, args.batches, args.database)))


if __name__ == "__main__":
    main()
