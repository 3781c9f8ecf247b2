"""Glob matching (`*` any run of characters, `?` exactly one, everything else literal)
without backtracking, and with the scanning done by the `re` engine in C.

Globs come from other people: a server ACL event from any server in a room, a push rule
pattern from any user. Turned into one backtracking regex, `*a*a*a*a*a*a*a*b` takes
minutes on a 60-character name (Synapse's advisories CVE-2021-29471 and CVE-2023-45129
are this class), and one such match stalls the whole reactor. So a glob is split at its
stars into fixed-length segments, and the leftmost place for each segment is always the
best one (anything later could only leave the segments after it less room): one forward
pass of searches decides.

Each segment is searched in C: with str methods when it is literal, else with a small
regex of its own (literals, and `.` for each `?`, compiled only when a search needs it),
and a regex without repetition cannot backtrack past one segment's length. A whole-value
match compares its first and last segments in place, which decides most globs at once.
It matters that the scan runs in C: a push rule is tested against every message of its
owner's rooms, and a Python loop over a 64 KiB body costs milliseconds a rule (seconds
for a user's few hundred rules, on the send path of everyone in the room). The
word-boundary checks of the `content.body` rule come after the segment in the regex (a
lookbehind across it), so a segment that starts with a literal is found by the engine's
fast literal scan.

A segment that mixes `?` and literals can still cost its length at each place of the
text: push rule patterns are bounded (core/push_eval.py MAX_PATTERN_LENGTH), and so is
what one user's rules may read of one event (PLAN_BUDGET).
"""

from __future__ import annotations

import re
from functools import lru_cache

# The spec's word characters for the `content.body` boundary rule: [A-Za-z0-9_] only.
_WORD = "[0-9A-Za-z_]"


# Globs up to this long are kept compiled (server ACL entries and push patterns repeat);
# longer ones are compiled each time, so the cache holds at most 4,096 x 256 characters
# however long the globs others send.
_CACHED_GLOB_LENGTH = 256


def _segment_source(segment: str) -> str:
    """A star-free segment as a regex: literals escaped, each run of `?` one `.{n}`."""
    parts = re.split(r"(\?+)", segment)
    return "".join(
        (f".{{{len(part)}}}" if part.startswith("?") else re.escape(part)) for part in parts if part
    )


def _split(glob: str) -> list[str]:
    # A run of stars is one star (and `a**b` would otherwise be an empty segment a search).
    return (re.sub(r"\*+", "*", glob) if "**" in glob else glob).split("*")


@lru_cache(maxsize=4096)
def _segment_regex_cached(segment: str) -> re.Pattern[str]:
    return re.compile(_segment_source(segment), re.DOTALL)


def _segment_regex(segment: str) -> re.Pattern[str]:
    """A segment with `?` as a regex, compiled only when it must be searched for: a filter
    may list thousands of globs, most decided by their first segment."""
    if len(segment) <= _CACHED_GLOB_LENGTH:
        return _segment_regex_cached(segment)
    return re.compile(_segment_source(segment), re.DOTALL)


def _word_segments(glob: str) -> tuple[re.Pattern[str], ...]:
    """One regex a segment, the first asserting a word boundary before it and the last one
    after it (the spec's `content.body` rule). The boundary before is checked after the
    segment, looking back across it (a fixed-width lookbehind), so the engine can still
    start from the segment's literal prefix."""
    segments = _split(glob)
    sources = [_segment_source(s) for s in segments]
    sources[0] = f"{sources[0]}(?<!{_WORD}.{{{len(segments[0])}}})"
    sources[-1] = f"{sources[-1]}(?!{_WORD})"
    return tuple(re.compile(source, re.DOTALL) for source in sources)


@lru_cache(maxsize=4096)
def _plain_cached(glob: str) -> tuple[str, ...]:
    return tuple(_split(glob))


@lru_cache(maxsize=4096)
def _words_cached(glob: str) -> tuple[re.Pattern[str], ...]:
    return _word_segments(glob)


def _least_length(glob: str) -> int:
    """The length of the shortest text `glob` can match."""
    return len(glob) - glob.count("*")


def _at(segment: str, text: str, pos: int) -> bool:
    """Whether `segment` matches `text` at `pos` (and fits in it): one comparison a
    character of the segment, never a search."""
    if "?" not in segment:
        return text.startswith(segment, pos)
    if pos + len(segment) > len(text):
        return False
    return all(ch == "?" or ch == text[pos + i] for i, ch in enumerate(segment))


def _find_end(segment: str, text: str, pos: int, end: int) -> int:
    """Where `segment` ends at its leftmost place from `pos` on, wholly before `end`; -1
    when it does not fit."""
    if "?" not in segment:
        found = text.find(segment, pos, end)
        return found + len(segment) if found != -1 else -1
    match = _segment_regex(segment).search(text, pos, end)
    return match.end() if match is not None else -1


def glob_fullmatch(glob: str, text: str) -> bool:
    """Whether `glob` matches the whole of `text` (case as given: lowercase both first to
    ignore it)."""
    if _least_length(glob) > len(text):
        return False  # before any work: a glob longer than every text it meets costs nothing
    segments = _plain_cached(glob) if len(glob) <= _CACHED_GLOB_LENGTH else tuple(_split(glob))
    if len(segments) == 1:
        return len(glob) == len(text) and _at(glob, text, 0)
    first, last = segments[0], segments[-1]
    first_end = len(first)
    tail = len(text) - len(last)  # where the fixed-length last segment starts
    if tail < first_end or not _at(first, text, 0) or not _at(last, text, tail):
        return False
    pos = first_end
    for segment in segments[1:-1]:
        pos = _find_end(segment, text, pos, tail)
        if pos == -1:
            return False
    return True


def glob_search_words(glob: str, text: str) -> bool:
    """Whether `glob` matches some part of `text` that starts and ends on word boundaries
    (the spec's rule for push conditions on `content.body`)."""
    if _least_length(glob) > len(text):
        return False
    segments = _words_cached(glob) if len(glob) <= _CACHED_GLOB_LENGTH else _word_segments(glob)
    if len(segments) == 1:
        # One regex holds both boundaries: the leftmost place that fits need not end on a
        # boundary, so the engine tries each place (in C).
        return segments[0].search(text) is not None
    # The earliest start is the best one: every later segment's leftmost place can only
    # move right as the start does.
    head = segments[0].search(text)
    if head is None:
        return False
    pos = head.end()
    for segment in segments[1:-1]:
        found = segment.search(text, pos)
        if found is None:
            return False
        pos = found.end()
    # The last segment may sit anywhere from `pos` on, so long as it ends on a boundary.
    return segments[-1].search(text, pos) is not None
