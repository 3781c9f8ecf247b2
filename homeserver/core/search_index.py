"""Fills the full-text index (storage/search.py) from the committed-event stream.

A durable subscribed consumer, not the send path: a commit only appends its events to
this consumer's queue, and the index is written in its own transactions just after,
so sending never waits for indexing, and a crash loses nothing (the consumer resumes
at its saved position; a repeat replaces a row with the same row). A search waits,
up to `search.index_wait`, for the consumer to reach the events committed before it
(`caught_up`), so a client finds what it has just sent.

Indexed: the `body` of m.room.message, the `name` of m.room.name and the `topic` of
m.room.topic (the spec's keys content.body, content.name, content.topic). Messages
of encrypted rooms are m.room.encrypted ciphertext and never indexed: clients search
those themselves. A redaction removes its target from the index.
"""

from __future__ import annotations

from homeserver.core.event_stream import ConsumedOnOneProcess, EventStream, StreamBatch
from homeserver.storage.events import StoredEvent
from homeserver.storage.search import SearchRow, SearchStore

CONSUMER = "search_index"
# (event type, content field): what is indexed, under the spec's key name.
INDEXED = {
    "m.room.message": ("body", "content.body"),
    "m.room.name": ("name", "content.name"),
    "m.room.topic": ("topic", "content.topic"),
}


def search_row(ev: StoredEvent) -> SearchRow | None:
    indexed = INDEXED.get(ev.type)
    if indexed is None or ev.redacted_by is not None:
        return None
    text = ev.content.get(indexed[0])
    if not isinstance(text, str) or not text.strip():
        return None
    return SearchRow(
        ev.event_id, ev.room_id, ev.sender, ev.type, indexed[1], ev.stream_ordering, ev.origin_server_ts, text
    )


def redacted_target(ev: StoredEvent) -> str | None:
    if ev.type != "m.room.redaction":
        return None
    target = ev.pdu.get("redacts", ev.content.get("redacts"))  # v11 moved it into content
    return target if isinstance(target, str) else None


def _indexed(ev: StoredEvent) -> bool:
    return ev.type in INDEXED or ev.type == "m.room.redaction"


# After writing a batch, the indexer waits this long before taking the next, so that at a
# steady rate the messages of that time are indexed in one transaction instead of one each
# (batches queued meanwhile are handed over merged). A search ends the wait (it waits for
# the index to catch up: `caught_up` through `reached`), so searches do not pay for it.
# 100 ms, not 20: at a steady 500 messages/s the indexer's ~37 transactions a second were in
# flight 23 % of the time, beside 69 % of the group commits slower than 5 ms (22 % of the
# others); at 100 ms about 10 a second (docs/architecture.md).
GATHER_S = 0.1


class SearchIndexer(ConsumedOnOneProcess):
    def __init__(self, store: SearchStore, stream: EventStream) -> None:
        super().__init__(stream)
        self.store = store

    async def start(self) -> None:
        # From the start of the stream: a server that had messages before the index had them too.
        # Idempotent: a repeated batch writes the same rows again.
        self._consumer = await self.stream.subscribe_durable(
            CONSUMER, self._on_events, from_start=True, wants=_indexed, idempotent=True
        )

    async def _on_events(self, batch: StreamBatch) -> None:
        rows = []
        removed = []
        for item in batch.items:
            row = search_row(item.event)
            if row is not None:
                rows.append(row)
            target = redacted_target(item.event)
            if target is not None:
                removed.append(target)
        await self.store.index(rows, removed)
        if self._consumer is not None:
            await self._consumer.pause(GATHER_S)
