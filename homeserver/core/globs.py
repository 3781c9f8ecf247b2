"""Glob matching (`*` any run of characters, `?` exactly one, everything else literal) in
time bounded by the text's length times the glob's, whatever the glob.

Globs come from other people: a server ACL event from any server in a room, a push rule
pattern from any user. Turned into a backtracking regex, `*a*a*a*a*a*a*a*b` takes
minutes on a 60-character name (Synapse's advisories CVE-2021-29471 and CVE-2023-45129
are this class), and one such match stalls the whole reactor. So no regex here: a glob is
split at its stars into fixed-length segments, and the leftmost place for each segment is
always the best one (anything later could only leave the segments after it less room), so
one forward pass decides.
"""

from __future__ import annotations

from functools import lru_cache

# The spec's word characters for the `content.body` boundary rule: [A-Za-z0-9_] only.
_WORD_CHARS = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")


# Globs up to this long are kept split (server ACL entries and push patterns repeat);
# longer ones are split each time, so the cache holds at most 4,096 x 256 characters
# however long the globs others send.
_CACHED_GLOB_LENGTH = 256


@lru_cache(maxsize=4096)
def _cached_segments(glob: str) -> tuple[str, ...]:
    return tuple(glob.split("*"))


def _segments(glob: str) -> tuple[str, ...]:
    """`a*b??*c` -> ("a", "b??", "c"): the glob split at its stars."""
    return _cached_segments(glob) if len(glob) <= _CACHED_GLOB_LENGTH else tuple(glob.split("*"))


def _matches_at(segment: str, text: str, pos: int) -> bool:
    if pos + len(segment) > len(text):
        return False
    if "?" not in segment:
        return text.startswith(segment, pos)
    return all(ch == "?" or ch == text[pos + i] for i, ch in enumerate(segment))


def _find(segment: str, text: str, start: int, end: int) -> int:
    """The leftmost position >= start where `segment` fits wholly before `end`, or -1."""
    if "?" not in segment:
        return text.find(segment, start, end)
    for pos in range(start, end - len(segment) + 1):
        if _matches_at(segment, text, pos):
            return pos
    return -1


def _middle_end(segments: tuple[str, ...], text: str, pos: int, end: int) -> int:
    """Where the middle segments (all but the first and last) end when each is put at its
    leftmost place from `pos` on, before `end`; -1 when one does not fit."""
    for segment in segments[1:-1]:
        found = _find(segment, text, pos, end)
        if found == -1:
            return -1
        pos = found + len(segment)
    return pos


def glob_fullmatch(glob: str, text: str) -> bool:
    """Whether `glob` matches the whole of `text` (case as given: lowercase both first to
    ignore it)."""
    segments = _segments(glob)
    if len(segments) == 1:
        return len(glob) == len(text) and _matches_at(glob, text, 0)
    first, last = segments[0], segments[-1]
    if len(first) + len(last) > len(text) or not _matches_at(first, text, 0):
        return False
    tail = len(text) - len(last)
    if not _matches_at(last, text, tail):
        return False
    return _middle_end(segments, text, len(first), tail) != -1


def glob_search_words(glob: str, text: str) -> bool:
    """Whether `glob` matches some part of `text` that starts and ends on word boundaries
    (the spec's rule for push conditions on `content.body`)."""
    segments = _segments(glob)
    n = len(text)

    def boundary_before(pos: int) -> bool:
        return pos == 0 or text[pos - 1] not in _WORD_CHARS

    def boundary_after(pos: int) -> bool:
        return pos == n or text[pos] not in _WORD_CHARS

    if len(segments) == 1:
        size = len(glob)
        return any(
            boundary_before(s) and boundary_after(s + size) and _matches_at(glob, text, s)
            for s in range(n - size + 1)
        )
    first, last = segments[0], segments[-1]
    # The earliest start is the best one: every later segment's leftmost place can only
    # move right as the start does.
    start = next(
        (s for s in range(n - len(first) + 1) if boundary_before(s) and _matches_at(first, text, s)), -1
    )
    if start == -1:
        return False
    pos = _middle_end(segments, text, start + len(first), n)
    if pos == -1:
        return False
    # The last segment may sit anywhere from `pos` on, so long as it ends on a boundary.
    ends = range(n - len(last), pos - 1, -1)
    return any(boundary_after(q + len(last)) and _matches_at(last, text, q) for q in ends)
