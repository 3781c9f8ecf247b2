"""Which instance does what: the room's event writer, each stream's writer, each job's host.

Without a `workers` section the server is one instance ("main") that does everything:
every check here is true and nothing is forwarded.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

from homeserver.config import JOBS, STREAMS, Config, ConfigError, split_host_port

SINGLE = "main"


def room_shard(room_id: str, writers: int) -> int:
    """The index of a room's event writer among `writers`: stable across processes and
    restarts (not Python's salted hash()). CRC-32 of the id's UTF-8 bytes, because HAProxy
    computes the same (`path,field(6,/),url_dec,crc32,mod(N)` in deploy/haproxy.cfg) and so
    sends a room's writes straight to its writer instead of to a worker that forwards them."""
    return zlib.crc32(room_id.encode("utf-8")) % writers


@dataclass
class Topology:
    me: str = SINGLE
    multi: bool = False
    event_writers: list[str] = field(default_factory=lambda: [SINGLE])
    stream_writers: dict[str, str] = field(default_factory=dict)
    jobs: dict[str, str] = field(default_factory=dict)
    internal: dict[str, tuple[str, int]] = field(default_factory=dict)

    @classmethod
    def single(cls) -> Topology:
        return cls()

    @classmethod
    def from_config(cls, config: Config, worker: str | None) -> Topology:
        """This instance's view of `config.workers`; ConfigError if `worker` names none."""
        workers = config.workers
        if not workers.instances:
            if worker is not None:
                raise ConfigError(
                    f"{config.source}: --worker {worker}: the config has no 'workers.instances'"
                )
            return cls.single()
        if worker is None:
            if workers.multi:
                raise ConfigError(
                    f"{config.source}: several 'workers.instances': say which this is with --worker NAME"
                )
            worker = next(iter(workers.instances))
        if worker not in workers.instances:
            raise ConfigError(
                f"{config.source}: --worker {worker}: not one of 'workers.instances'"
                f" ({', '.join(workers.instances)})"
            )
        first = workers.event_writers[0]
        return cls(
            me=worker,
            multi=workers.multi,
            event_writers=list(workers.event_writers),
            stream_writers={s: workers.stream_writers.get(s, first) for s in STREAMS},
            jobs={job: getattr(workers, job) or first for job in JOBS},
            internal={
                name: split_host_port(instance.internal)
                for name, instance in workers.instances.items()
                if instance.internal
            },
        )

    def event_writer_for(self, room_id: str) -> str:
        writers = self.event_writers
        return writers[0] if len(writers) == 1 else writers[room_shard(room_id, len(writers))]

    def writes_room(self, room_id: str) -> bool:
        return not self.multi or self.event_writer_for(room_id) == self.me

    def writer_of(self, stream: str) -> str:
        if stream not in STREAMS:
            raise KeyError(stream)
        return self.stream_writers.get(stream, self.event_writers[0])

    def writes(self, stream: str) -> bool:
        return not self.multi or self.writer_of(stream) == self.me

    def runs(self, job: str) -> bool:
        if job not in JOBS:
            raise KeyError(job)
        return not self.multi or self.jobs.get(job, self.event_writers[0]) == self.me

    def internal_address(self, instance: str) -> tuple[str, int]:
        try:
            return self.internal[instance]
        except KeyError:
            raise KeyError(f"instance {instance!r} has no internal listener") from None

    def writer_index(self) -> int | None:
        return self.event_writers.index(self.me) if self.me in self.event_writers else None
