"""`homeserver deploy-check`: does an HAProxy config route each room's writes to the room's
event writer, as `workers.event_writers` in the homeserver's config says?

HAProxy computes a room's writer itself (`crc32,mod(N)`, then a `use-server` line per index),
so the two files must agree by hand. A mismatch breaks nothing (a worker that gets a write of
a room it does not write forwards it), which is why nothing else would show it: each such
write then costs an internal request. The servers are matched by name: name HAProxy's
`server` lines after the instances.
"""

from __future__ import annotations

import re

_MOD = re.compile(r"set-var\(txn\.room_writer\).*\bcrc32,mod\((\d+)\)")
_USE = re.compile(r"^use-server\s+(\S+)\s+if\s+\{\s*var\(txn\.room_writer\)\s+-m\s+int\s+(\d+)\s*\}")


def routes(event_writers: list[str]) -> list[str]:
    """The lines deploy/haproxy.cfg needs for these writers (frontend, then backend)."""
    n = len(event_writers)
    frontend = (
        "http-request set-var(txn.room_writer) path,field(6,/),url_dec,crc32,"
        f"mod({n}) if room_write !METH_GET"
    )
    backend = [
        f"use-server {name} if {{ var(txn.room_writer) -m int {i} }}" for i, name in enumerate(event_writers)
    ]
    return [frontend, *backend]


def check(text: str, event_writers: list[str]) -> list[str]:
    """What in the HAProxy config `text` disagrees with `event_writers` (nothing: it agrees)."""
    mods: list[int] = []
    used: dict[int, str] = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if m := _MOD.search(line):
            mods.append(int(m.group(1)))
        elif m := _USE.match(line):
            used[int(m.group(2))] = m.group(1)
    n = len(event_writers)
    if not mods:
        return [f"no room routing (crc32,mod({n}) into txn.room_writer): each write may be forwarded"]
    problems = [f"mod({m}), but workers.event_writers has {n}" for m in mods if m != n]
    want = dict(enumerate(event_writers))
    for index in sorted(want.keys() | used.keys()):
        if used.get(index) != want.get(index):
            have = f"use-server {used[index]}" if index in used else "no use-server line"
            expected = want.get(index, "nothing (no such writer)")
            problems.append(f"room_writer {index}: {have}, but workers.event_writers[{index}] is {expected}")
    return problems
