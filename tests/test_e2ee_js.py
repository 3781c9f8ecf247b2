"""End-to-end encryption with a real client: matrix-js-sdk and its Rust crypto (the
`@matrix-org/matrix-sdk-crypto-wasm` package from npm, in-memory stores) under Node,
against a real server process.

`tests/js/e2ee.mjs`: an encrypted DM and a three-member group, each message decrypted
by every other member; a second device of Alice's reads what is sent after it
appeared; once deleted, it gets nothing new. `tests/js/e2ee_verify_backup.mjs`:
cross-signing, SAS (emoji) verification between two of Alice's devices with the
signatures checked here as a third user sees them, and a key backup restored on a new
device that then decrypts the older messages.

Then the plaintext of every message sent is searched for in the server's files (the
SQLite database, its WAL, everything in the data dir) and its log, and - on
PostgreSQL - in a dump of every table of the test's schema: the server only ever saw
ciphertext.

Without `node` (or tests/js/node_modules) the tests skip, except in CI (`CI` set),
where they fail; `make test` installs the npm packages (`npm ci` in tests/js).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ServerProcess, start_server_process
from js_runner import node_or_skip, run_script
from signedjson.key import decode_verify_key_base64
from signedjson.sign import verify_signed_json

PASSWORD = "correct horse battery"
MEGOLM = "m.megolm.v1.aes-sha2"
# The E2EE tests need the server default: private and direct chats start encrypted.
ENCRYPTED_BY_DEFAULT = {"encryption": {"enabled_by_default_for_room_type": "invite"}}


def register(server: ServerProcess, *names: str) -> list[str]:
    for name in names:
        server.register(name, PASSWORD)
    return list(names)


class Run:
    """One server and the results of the scripts run against it."""

    def __init__(self, server: ServerProcess, node: str) -> None:
        self.server = server
        self.node = node
        self.results: dict[str, dict[str, Any]] = {}

    def script(self, script: str, *users: str, mode: str | None = None) -> dict[str, Any]:
        key = f"{script}:{mode}"
        if key not in self.results:
            names = register(self.server, *users)
            args = [self.server.base_url, *names] + ([mode] if mode else [])
            self.results[key] = run_script(self.node, script, *args)
        return self.results[key]

    def plaintexts(self) -> list[str]:
        return [p for result in self.results.values() for p in result["plaintexts"]]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    node = node_or_skip("@matrix-org/matrix-sdk-crypto-wasm")
    server = start_server_process(tmp_path_factory.mktemp("hs-e2ee"), ENCRYPTED_BY_DEFAULT)
    try:
        yield Run(server, node)
    finally:
        server.stop()


def messages_run(run: Run) -> dict[str, Any]:
    return run.script("e2ee.mjs", "e2alice", "e2bob", "e2carol")


def verify_backup_run(run: Run) -> dict[str, Any]:
    return run.script("e2ee_verify_backup.mjs", "vbalice", "vbbob", "vbcarol")


# Messages -------------------------------------------------------------------------------------


def test_encrypted_dm_and_group(run: Run) -> None:
    steps = messages_run(run)["steps"]
    dm = steps["dm"]
    # The DM was created with the server's default encryption (trusted_private_chat).
    assert dm["encryption"] == {"algorithm": MEGOLM}
    assert dm["encrypted_for_alice"] is True
    assert dm["wire_algorithm"] == MEGOLM and dm["wire_has_ciphertext"] and not dm["wire_has_body"]
    assert len(dm["seen"]) == 2 and all(dm["seen"].values()), dm["seen"]

    group = steps["group"]
    assert group["encryption"] is True
    # Three senders, each message decrypted by the two others.
    assert len(group["seen"]) == 6 and all(group["seen"].values()), group["seen"]


def test_second_device_reads_new_messages_and_deleted_device_gets_nothing(run: Run) -> None:
    result = messages_run(run)
    steps = result["steps"]
    alice_device = result["devices"]["alice"]
    second, deleted = steps["second_device"], steps["deleted_device"]
    assert sorted(second["bob_sees_devices"]) == sorted([alice_device, second["device_id"]])
    # Bob's message after the new device appeared, read on both of Alice's devices; and
    # the new device's own message, read by Bob and by Alice's first device.
    assert len(second["seen"]) == 3 and all(second["seen"].values()), second["seen"]

    assert deleted["device_id"] == second["device_id"]
    assert deleted["delete_status"] == 200
    assert (deleted["old_token_status"], deleted["old_token_errcode"]) == (401, "M_UNKNOWN_TOKEN")
    assert deleted["bob_sees_devices"] == [alice_device]
    assert all(deleted["seen"].values()) and len(deleted["seen"]) == 1
    # Bob's client rotated its room key when the device went; the deleted device could
    # read the message from before its deletion, but not the one after.
    assert deleted["session_id"] != second["session_id"]
    assert deleted["deleted_can_read_old"] is True
    assert deleted["deleted_can_read_new"] is False
    assert steps["query_after_deletion"]["devices"] == [alice_device]


# Verification and cross-signing -----------------------------------------------------------------


def _verify(obj: dict[str, Any], user_id: str, key_id: str, public: str) -> None:
    """Check with signedjson that `obj` carries a valid signature by ed25519:key_id."""
    verify_signed_json(obj, user_id, decode_verify_key_base64("ed25519", key_id, public))


def test_sas_verification_and_cross_signing_seen_by_third_user(run: Run) -> None:
    result = verify_backup_run(run)
    steps = result["steps"]
    boot = steps["bootstrap"]
    assert boot["cross_signing_ready"] and boot["secret_storage_ready"]
    assert boot["private_keys_cached"] == {"masterKey": True, "userSigningKey": True, "selfSigningKey": True}

    sas = steps["sas"]
    assert sas["emoji_alice1"] and len(sas["emoji_alice1"]) == 7
    assert sas["emoji_alice1"] == sas["emoji_alice2"]
    assert sas["phases"] == [6, 6]  # VerificationPhase.Done on both sides
    assert sas["alice1_sees_alice2_verified"] and sas["alice2_sees_alice1_verified"]
    assert sas["alice2_cross_signing_ready"]
    assert sas["bob_signed_by_owner_before"] is False and sas["bob_signed_by_owner_after"] is True

    # Carol's /keys/query answer, checked signature by signature.
    query = steps["third_user_query"]["response"]
    alice = result["users"]["alice"]
    master = query["master_keys"][alice]
    ssk = query["self_signing_keys"][alice]
    assert master["usage"] == ["master"] and ssk["usage"] == ["self_signing"]
    [(master_key_id, master_public)] = master["keys"].items()
    [(ssk_key_id, ssk_public)] = ssk["keys"].items()
    master_id, ssk_id = master_key_id.split(":", 1)[1], ssk_key_id.split(":", 1)[1]
    assert master_id == boot["master_key_id"]
    # A user-signing key is for its owner's eyes only.
    assert query["user_signing_keys"] == {}

    _verify(ssk, alice, master_id, master_public)
    devices = query["device_keys"][alice]
    assert set(devices) == {sas["alice1_device"], sas["alice2_device"]}
    for device_id, device in devices.items():
        _verify(device, alice, device_id, device["keys"][f"ed25519:{device_id}"])
        # Both devices cross-signed: the first at bootstrap, the second after SAS.
        _verify(device, alice, ssk_id, ssk_public)
    first = devices[sas["alice1_device"]]
    _verify(master, alice, sas["alice1_device"], first["keys"][f"ed25519:{sas['alice1_device']}"])


# Key backup ---------------------------------------------------------------------------------------


def test_key_backup_restored_on_new_device(run: Run) -> None:
    steps = verify_backup_run(run)["steps"]
    backup = steps["messages"]["backup"]
    assert backup["algorithm"] == "m.megolm_backup.v1.curve25519-aes-sha2"
    assert backup["version"] == steps["bootstrap"]["backup_version"]
    assert backup["count"] >= 2 and isinstance(backup["etag"], str)
    restore = steps["restore"]
    assert restore["undecryptable_before"] == [True, True]
    assert restore["restored"]["imported"] >= 2
    assert restore["decrypted_after"] == [True, True]
    assert all(restore["fresh_seen"].values())


# The plaintext is never stored ---------------------------------------------------------------------


def _files_containing(paths: list[Path], needles: list[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in paths:
        data = path.read_bytes()
        for needle in needles:
            if needle.encode() in data:
                found.setdefault(needle, []).append(path.name)
    return found


def test_plaintext_never_stored_sqlite(run: Run) -> None:
    messages_run(run)
    verify_backup_run(run)
    plaintexts = run.plaintexts()
    assert len(plaintexts) == 11
    server = run.server
    files = [p for p in server.data_dir.rglob("*") if p.is_file()]
    assert any(p.name.endswith("-wal") for p in files), [p.name for p in files]
    # The search does see what is stored: the group's name (room state is not encrypted).
    assert _files_containing(files, ["E2EE group"]), "the search found not even the room name"
    assert _files_containing([*files, server.log_path], plaintexts) == {}
    # After a clean stop (WAL checkpointed into the database) too.
    server.stop()
    files = [p for p in server.data_dir.rglob("*") if p.is_file()]
    assert _files_containing([*files, server.log_path], plaintexts) == {}
    assert "Traceback" not in server.log_text()


def test_plaintext_never_stored_postgres(tmp_path_factory: pytest.TempPathFactory, pg_url: str) -> None:
    node = node_or_skip("@matrix-org/matrix-sdk-crypto-wasm")
    import psycopg2

    server = start_server_process(
        tmp_path_factory.mktemp("hs-e2ee-pg"), {**ENCRYPTED_BY_DEFAULT, "database": {"url": pg_url}}
    )
    try:
        run = Run(server, node)
        result = run.script("e2ee.mjs", "pgalice", "pgbob", "pgcarol", mode="dm-only")
        assert all(result["steps"]["dm"]["seen"].values())
    finally:
        server.stop()
    plaintexts = run.plaintexts()
    assert len(plaintexts) == 2
    conn = psycopg2.connect(pg_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
            tables = [row[0] for row in cur.fetchall()]
            assert "events" in tables and "to_device_messages" in tables
            dump = []
            for table in tables:
                cur.execute(f'SELECT t::text FROM "{table}" t')
                dump.extend(row[0] for row in cur.fetchall())
    finally:
        conn.close()
    text = "\n".join(dump)
    assert "m.room.encrypted" in text  # the search sees the stored events
    assert [p for p in plaintexts if p in text] == []
    assert [p for p in plaintexts if p in server.log_text()] == []
