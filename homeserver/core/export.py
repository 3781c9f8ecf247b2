"""A user's data export (GDPR Art. 15 and 20): a job that writes one zip file.

The zip (layout in docs/gdpr.md) holds `profile.json`, `account_data.json`,
`devices.json`, `rooms.json` (every membership change), `events.json` (every event the
user sent, in the client format, oldest first) and what plugins add under their own name
(the media plugin: `media/index.json` and the files they uploaded).

The job runs beside the reactor: events are read in pages, and every write to the zip
runs on a worker thread, one at a time (zipfile is not thread-safe, but each call is
finished before the next is made). The zip is written to `DATA_DIR/exports/ID.zip.part`
and renamed once complete, so a download only ever finds a whole file. The job's state
and progress are rows (`user_exports`); a job that was running when the process stopped
starts over at the next start-up.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import IO, Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from homeserver.core.clock import Clock
from homeserver.core.event_format import client_event
from homeserver.errors import MatrixError, NotFound, ServiceUnavailable
from homeserver.events.redaction import redact
from homeserver.storage import Storage
from homeserver.storage.events import StoredEvent
from homeserver.storage.gdpr import ExportRow
from homeserver.threads import ChunksOnThreads, WorkerThreads

__all__ = ["ExportPart", "ExportRow", "ExportService", "ExportSink"]

log = Logger()

# Events per page read from the database and written to the zip.
PAGE = 500
# Bytes per read when copying files into the zip and streaming the zip out.
CHUNK = 256 * 1024
# Finished exports kept per user: a new one replaces the oldest (bounds the disk a user can fill).
KEEP_PER_USER = 3
# Pauses before a job cut by a database outage starts over (doubling).
RETRY_MIN_S = 1.0
RETRY_MAX_S = 30.0
# Steps that are not events: profile, account data, devices, rooms.
_FIXED_STEPS = 4

ExportPart = Callable[[str, "ExportSink"], Awaitable[None]]


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, indent=1, ensure_ascii=False).encode()


class ExportSink:
    """What a plugin's export part writes into: JSON documents and files, under its own
    folder of the zip (`NAME/...`)."""

    def __init__(self, writer: _ZipWriter, folder: str) -> None:
        self._writer = writer
        self._folder = folder

    def _name(self, name: str) -> str:
        parts = name.split("/")
        if not name or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"bad name in export: {name!r}")
        return f"{self._folder}/{name}"

    async def add_json(self, name: str, obj: Any) -> None:
        """Write `obj` as the JSON file `name` (e.g. "index.json")."""
        await self._writer.write_bytes(self._name(name), _dump(obj))

    async def add_file(self, name: str, open_file: Callable[[], Any]) -> None:
        """Copy a file into the zip as `name`. `open_file` is called on a worker thread and
        returns an object with `read(size)` and `close()` (closed afterwards), read a chunk
        at a time."""
        await self._writer.write_file(self._name(name), open_file)


class _ZipWriter:
    """A zip file on disk, each operation on a worker thread, one at a time."""

    def __init__(self, threads: WorkerThreads, path: Path) -> None:
        self._threads = threads
        self._path = path
        self._zip: zipfile.ZipFile | None = None
        self._entry: IO[bytes] | None = None

    def _run(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return self._threads.run(fn, *args)

    async def open(self) -> None:
        def open_zip() -> None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._zip = zipfile.ZipFile(self._path, "w", zipfile.ZIP_DEFLATED)

        await self._run(open_zip)

    async def write_bytes(self, name: str, data: bytes) -> None:
        def write() -> None:
            assert self._zip is not None
            self._zip.writestr(name, data)

        await self._run(write)

    async def write_file(self, name: str, open_file: Callable[[], Any]) -> None:
        def copy() -> None:
            assert self._zip is not None
            src = open_file()
            try:
                with self._zip.open(name, "w", force_zip64=True) as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
            finally:
                src.close()

        await self._run(copy)

    async def begin_entry(self, name: str) -> None:
        """Start an entry written in pieces (`append`), ended by `end_entry`."""

        def begin() -> None:
            assert self._zip is not None
            self._entry = self._zip.open(name, "w", force_zip64=True)

        await self._run(begin)

    async def append(self, data: bytes) -> None:
        def write() -> None:
            assert self._entry is not None
            self._entry.write(data)

        await self._run(write)

    async def end_entry(self) -> None:
        def end() -> None:
            assert self._entry is not None
            self._entry.close()
            self._entry = None

        await self._run(end)

    async def close(self) -> None:
        def close() -> None:
            if self._entry is not None:
                self._entry.close()
                self._entry = None
            if self._zip is not None:
                self._zip.close()
                self._zip = None

        await self._run(close)


class _Cancelled(Exception):
    """The job's account is being erased: stop, leave nothing behind."""


class ExportService:
    def __init__(self, storage: Storage, clock: Clock, data_path: Path, threads: WorkerThreads) -> None:
        self.storage = storage
        self.clock = clock
        self.directory = data_path / "exports"
        self.threads = threads
        # (folder, part): plugins' contributions (PluginApi.add_export_part).
        self.parts: list[tuple[str, ExportPart]] = []
        self._running: dict[str, list[Deferred[None]]] = {}  # job -> waiters for its end
        self._cancelled: set[str] = set()
        self._stopping = False
        self._pauses: set[Deferred[None]] = set()  # jobs waiting to start over after an outage

    # Jobs --------------------------------------------------------------------------------

    async def start(self) -> None:
        """At start-up: jobs that were running when the process stopped start over."""
        for row in await self.storage.gdpr.running_exports():
            self._launch(row.export_id, row.user_id)

    async def export_user_data(self, user_id: str) -> ExportRow:
        """Start an export of `user_id`'s data (or return the one already running): the
        caller has authorised it (the user themselves, or an admin)."""
        existing = await self.storage.gdpr.exports_of(user_id)
        for row in existing:
            if row.state == "running":
                return row
        for old in existing[: max(0, len(existing) - KEEP_PER_USER + 1)]:
            await self.storage.gdpr.delete_export(old.export_id)
            await self._remove_files(old.export_id)
        export_id = secrets.token_urlsafe(12)
        await self.storage.gdpr.create_export(export_id, user_id, self.clock.time_ms())
        self._launch(export_id, user_id)
        created = await self.storage.gdpr.get_export(export_id)
        assert created is not None
        return created

    async def access_export(self, user_id: str, export_id: str) -> ExportRow:
        """The export if `user_id` owns it; NotFound otherwise (another user's export and a
        missing one look the same)."""
        row = await self.storage.gdpr.get_export(export_id)
        if row is None or row.user_id != user_id:
            raise NotFound("No such export")
        return row

    async def exports_of(self, user_id: str) -> list[ExportRow]:
        return await self.storage.gdpr.exports_of(user_id)

    async def any_export(self, export_id: str) -> ExportRow:
        """The export whoever owns it, for a server admin (the caller checked that)."""
        row = await self.storage.gdpr.get_export(export_id)
        if row is None:
            raise NotFound("No such export")
        return row

    async def open_download(self, user_id: str, export_id: str) -> tuple[AsyncIterator[bytes], int]:
        """The finished zip of the user's export as chunks read on worker threads, and its size."""
        return await self.open_zip(await self.access_export(user_id, export_id))

    async def open_zip(self, row: ExportRow) -> tuple[AsyncIterator[bytes], int]:
        export_id = row.export_id
        if row.state != "done":
            raise MatrixError(f"The export is {row.state}, not ready", "M_NOT_YET_UPLOADED", status=409)
        path = self.zip_path(export_id)
        try:
            handle: IO[bytes] = await self.threads.run(open, path, "rb")
        except FileNotFoundError:
            raise NotFound("No such export") from None
        return ChunksOnThreads(self.threads.run, handle, CHUNK), int(row.size or 0)

    async def delete_exports_of(self, user_id: str) -> None:
        """Forget the user's exports and remove their files (an erased account). A job still
        running is stopped first, so no file is finished after this."""
        for row in await self.storage.gdpr.exports_of(user_id):
            if row.export_id in self._running:
                self._cancelled.add(row.export_id)
                await self._ended(row.export_id)
        for export_id in await self.storage.gdpr.delete_exports_of(user_id):
            await self._remove_files(export_id)

    async def _remove_files(self, export_id: str) -> None:
        for path in (self.zip_path(export_id), self._part_path(export_id)):
            await self.threads.run(_remove, path)

    def zip_path(self, export_id: str) -> Path:
        return self.directory / f"{export_id}.zip"

    def _part_path(self, export_id: str) -> Path:
        return self.directory / f"{export_id}.zip.part"

    def _launch(self, export_id: str, user_id: str) -> None:
        self._running[export_id] = []

        def ended(_: object) -> None:
            self._cancelled.discard(export_id)
            for waiter in self._running.pop(export_id, []):
                waiter.callback(None)

        Deferred.fromCoroutine(self._run(export_id, user_id)).addBoth(ended)

    def _ended(self, export_id: str) -> Deferred[None]:
        """Fires once the job has ended (at once if it is not running)."""
        waiter: Deferred[None] = Deferred()
        waiters = self._running.get(export_id)
        if waiters is None:
            waiter.callback(None)
        else:
            waiters.append(waiter)
        return waiter

    def _check(self, export_id: str) -> None:
        if export_id in self._cancelled:
            raise _Cancelled(export_id)

    def stop(self) -> None:
        """At shutdown: a job cut short stays `running`, to start over at the next start-up."""
        self._stopping = True
        for waiter in list(self._pauses):
            waiter.callback(None)

    async def wait_idle(self) -> None:
        """Until every running job has ended (shutdown, tests)."""
        for export_id in list(self._running):
            await self._ended(export_id)

    async def _run(self, export_id: str, user_id: str) -> None:
        # A database outage does not fail the job: it starts over once the database answers
        # again, as after a restart (the user asked once; a failed export would make them ask again).
        delay = RETRY_MIN_S
        while not await self._attempt(export_id, user_id):
            await self._pause(delay)
            delay = min(delay * 2, RETRY_MAX_S)
            if self._stopping:
                return

    async def _pause(self, seconds: float) -> None:
        """Wait `seconds`, or until shutdown."""
        waiter: Deferred[None] = Deferred()
        self._pauses.add(waiter)
        call = self.clock.callLater(seconds, waiter.callback, None)
        try:
            await waiter
        finally:
            self._pauses.discard(waiter)
            if call.active():
                call.cancel()

    async def _attempt(self, export_id: str, user_id: str) -> bool:
        """Run the job once; False if the database was unavailable (the job is to start over)."""
        part = self._part_path(export_id)
        writer = _ZipWriter(self.threads, part)
        try:
            await self._write(export_id, user_id, writer)
            await writer.close()
            self._check(export_id)
            size: int = await self.threads.run(_finish_file, part, self.zip_path(export_id))
            await self.storage.gdpr.finish_export(export_id, "done", self.clock.time_ms(), size, None)
            log.info(
                "export {export_id} of {user_id} done ({size} bytes)",
                export_id=export_id,
                user_id=user_id,
                size=size,
            )
        except _Cancelled:
            await writer.close()
            await self.threads.run(_remove, part)
            log.info("export {export_id} cancelled: its account is being erased", export_id=export_id)
        except Exception as e:
            if self._stopping:
                log.info(
                    "export {export_id} interrupted by shutdown: it restarts at start-up", export_id=export_id
                )
                return True
            if isinstance(e, ServiceUnavailable):
                log.warn("export {export_id} starts over: {error}", export_id=export_id, error=str(e))
                try:
                    await writer.close()
                    await self.threads.run(_remove, part)
                except Exception:
                    log.failure("export {export_id}: removing the partial zip failed", export_id=export_id)
                return False
            log.failure("export {export_id} of {user_id} failed", export_id=export_id, user_id=user_id)
            try:
                await writer.close()
            except Exception:
                log.failure("export {export_id}: closing the partial zip failed", export_id=export_id)
            await self.threads.run(_remove, part)
            await self.storage.gdpr.finish_export(
                export_id, "failed", self.clock.time_ms(), None, type(e).__name__
            )
        return True

    async def _write(self, export_id: str, user_id: str, writer: _ZipWriter) -> None:
        gdpr = self.storage.gdpr
        total = _FIXED_STEPS + await gdpr.count_events_sent_by(user_id) + len(self.parts)
        done = 0
        await gdpr.set_export_progress(export_id, done, total)
        await writer.open()
        for name, build in (
            ("profile.json", self._profile),
            ("account_data.json", self._account_data),
            ("devices.json", self._devices),
            ("rooms.json", self._rooms),
        ):
            self._check(export_id)
            await writer.write_bytes(name, _dump(await build(user_id)))
            done += 1
        await gdpr.set_export_progress(export_id, done, total)

        # events.json: one JSON array written a page at a time, never whole in memory.
        await writer.begin_entry("events.json")
        await writer.append(b"[")
        first, after = True, -1
        while True:
            self._check(export_id)
            page = await gdpr.events_sent_by(user_id, after, PAGE)
            if not page:
                break
            after = page[-1][0].stream_ordering
            pieces = [json.dumps(_exported_event(ev, version), ensure_ascii=False) for ev, version in page]
            text = ("\n" if first else ",\n") + ",\n".join(pieces)
            first = False
            await writer.append(text.encode())
            done += len(page)
            await gdpr.set_export_progress(export_id, done, max(total, done))
        await writer.append(b"\n]\n")
        await writer.end_entry()

        for folder, build_part in self.parts:
            self._check(export_id)
            await build_part(user_id, ExportSink(writer, folder))
            done += 1
            await gdpr.set_export_progress(export_id, done, max(total, done))

    # Sections --------------------------------------------------------------------------

    async def _profile(self, user_id: str) -> dict[str, Any]:
        accounts = self.storage.accounts
        user = await accounts.get_user(user_id)
        profile = await accounts.get_profile(user_id) or (None, None)
        return {
            "user_id": user_id,
            "created_ts": user.created_ts if user else None,
            "displayname": profile[0],
            "avatar_url": profile[1],
            "threepids": [
                {"medium": m, "address": a, "added_at": added, "validated_at": validated}
                for m, a, added, validated in await accounts.get_threepids(user_id)
            ],
        }

    async def _account_data(self, user_id: str) -> dict[str, Any]:
        out: dict[str, Any] = {"global": {}, "rooms": {}}
        for room_id, data_type, content in await self.storage.gdpr.account_data_of(user_id):
            if room_id:
                out["rooms"].setdefault(room_id, {})[data_type] = content
            else:
                out["global"][data_type] = content
        return out

    async def _devices(self, user_id: str) -> list[dict[str, Any]]:
        return [
            {
                "device_id": d.device_id,
                "display_name": d.display_name,
                "last_seen_ts": d.last_seen_ts,
                "last_seen_ip": d.last_seen_ip,
            }
            for d in await self.storage.devices.get_devices(user_id)
        ]

    async def _rooms(self, user_id: str) -> list[dict[str, Any]]:
        rooms: dict[str, dict[str, Any]] = {}
        for room_id, membership, position in await self.storage.gdpr.memberships_of(user_id):
            entry = rooms.setdefault(room_id, {"room_id": room_id, "membership": None, "history": []})
            entry["membership"] = membership
            entry["history"].append({"membership": membership, "stream_position": position})
        return list(rooms.values())


def _exported_event(ev: StoredEvent, room_version: str) -> dict[str, Any]:
    """The client format; a redacted event as clients see it (the server keeps no more for them)."""
    out = client_event(ev, room_version)
    if ev.redacted_by is not None:
        out["content"] = redact(ev.pdu, room_version).get("content", {})
        out.setdefault("unsigned", {})["redacted_by"] = ev.redacted_by
    return out


def _finish_file(part: Path, final: Path) -> int:
    os.replace(part, final)
    return final.stat().st_size


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)
