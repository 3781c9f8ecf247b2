"""Push-rule evaluation (spec: Client-Server API, Push Notifications, "Push Rules").

A user's ruleset is compiled once into a `Program`: the enabled rules in the spec's
kind order (override, content, room, sender, underride; `.m.rule.master` first), each
with its conditions compiled (globs to regexes, dotted keys split) and its actions
reduced to an `Outcome`. Compiled conditions and outcomes are interned, so every user
with the default ruleset shares one program, and identical conditions of different
users are one object.

An event is evaluated for many recipients (a message into a 500-member room, 499
times), so the work is split:

- `EventFacts` holds what every recipient reads of the event, each computed at most
  once: property lookups, the lowercased body, the member count, the sender's power,
  and the result of every condition that does not depend on the recipient.
- `Program.plan(facts)` walks the rules once per (event, program): rules whose
  recipient-independent conditions fail drop out, and the first rule with no
  recipient-dependent condition ends the walk. What is left is a short list of
  candidates (the mention and display-name rules, mostly).
- `Plan.outcome(facts, user_id)` is the per-recipient step: the first candidate whose
  recipient-dependent conditions hold (a set lookup or a substring test), else the
  plan's final outcome.
"""

from __future__ import annotations

import functools
import json
import operator
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from homeserver.core.globs import glob_fullmatch, glob_search_words
from homeserver.events.power_levels import user_power_level

KINDS = ("override", "content", "room", "sender", "underride")
MASTER = ".m.rule.master"
# Deprecated by intentional mentions (spec v1.7): they apply only to events without `m.mentions`.
LEGACY_MENTION_RULES = frozenset(
    {".m.rule.contains_display_name", ".m.rule.contains_user_name", ".m.rule.roomnotif"}
)
# Actions the spec now says to ignore ("Historical Actions").
IGNORED_ACTIONS = frozenset({"dont_notify", "coalesce"})
_MISSING = object()
# The spec's word characters for the content.body boundary rule: [A-Za-z0-9_] only.
_NOT_WORD_AFTER = r"(?![0-9A-Za-z_])"
_SAFE_INT = 2**53 - 1
# A condition's strings (`key`, `pattern`, `is`, a string `value`) and a content rule's
# pattern, as the Push Rules API takes them (core/push_rules.py): room and user ids, event
# types and keywords are all far shorter. A pattern with `?` may cost its length at each
# place of the text it is matched against (core/globs.py). A longer pattern stored before
# this bound never matches.
MAX_PATTERN_LENGTH = 1000


# Patterns and paths ------------------------------------------------------------------------


def _has_glob(pattern: str) -> bool:
    return "*" in pattern or "?" in pattern


@functools.lru_cache(maxsize=4096)
def split_path(key: str) -> tuple[str, ...]:
    """`content.m\\.relates_to.rel_type` -> ("content", "m.relates_to", "rel_type").

    Spec (Appendices, dot-separated property paths): `\\.` is a literal dot and `\\\\` a
    literal backslash; any other backslash stands for itself."""
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(key):
        ch = key[i]
        if ch == "\\" and i + 1 < len(key) and key[i + 1] in ".\\":
            current.append(key[i + 1])
            i += 2
            continue
        if ch == ".":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return tuple(parts)


def is_plain_value(value: Any) -> bool:
    """A non-compound canonical JSON value: string, integer in range, boolean or null."""
    if value is None or isinstance(value, (str, bool)):
        return True
    return isinstance(value, int) and -_SAFE_INT <= value <= _SAFE_INT


def _same(a: Any, b: Any) -> bool:
    """JSON equality of plain values: true is not 1, "1" is not 1."""
    return type(a) is type(b) and a == b


def _contains_words(lowered_body: str, needle: str) -> bool:
    """Whether `needle` (lowercased, taken literally) occurs in the body between word boundaries."""
    if not needle or needle not in lowered_body:  # the common case, without a regex
        return False
    return _literal_words(needle).search(lowered_body) is not None


_WORD = re.compile(r"[0-9A-Za-z_]+")


@functools.lru_cache(maxsize=65536)
def _needle(text: str) -> tuple[str, bool]:
    """`text` lowercased, and whether it is one word: then it is in the body between word
    boundaries exactly when it is one of the body's words (a set lookup per recipient)."""
    lowered = text.lower()
    return lowered, _WORD.fullmatch(lowered) is not None


_WORD_CHARS = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")


@functools.lru_cache(maxsize=65536)
def _needle_words(needle: str) -> tuple[tuple[str, int], ...]:
    """The words of a needle (runs of [0-9a-z_]) with their offsets in it."""
    return tuple((m.group(), m.start()) for m in _WORD.finditer(needle))


def _in_body(facts: EventFacts, text: str) -> bool:
    """Whether `text` (a recipient's display name or localpart) is in the body between word
    boundaries. Asked once per recipient of the event: for a 5,000-member room, scanning a
    64 KiB body for each multi-word name took 140 ms a message, on the send path. So a name
    is looked up in the body's words instead: in a match each word of the name is a whole
    word of the body, so only the places of its rarest word are tried."""
    body = facts.body
    if not body:
        return False
    needle, one_word = _needle(text)
    if one_word:
        return needle in facts.words
    found = facts.found.get(needle)
    if found is None:
        found = facts.found[needle] = _words_in_body(facts, body, needle)
    return found


def _words_in_body(facts: EventFacts, body: str, needle: str) -> bool:
    words = _needle_words(needle)
    if not words:  # no word at all ("!!!"): one scan, once per event and name
        return _contains_words(body, needle)
    if any(word not in facts.words for word, _ in words):
        return False
    places = facts.word_places()
    word, offset = min(words, key=lambda w: len(places[w[0]]))
    end = len(needle) - offset
    for place in places[word]:
        start = place - offset
        if (
            start >= 0
            and body.startswith(needle, start)
            and (start == 0 or body[start - 1] not in _WORD_CHARS)
            and (place + end == len(body) or body[place + end] not in _WORD_CHARS)
        ):
            return True
    return False


@functools.lru_cache(maxsize=65536)
def _literal_words(needle: str) -> re.Pattern[str]:
    # The boundary before is checked after the needle (looking back across it): a regex
    # that starts with the needle is searched by the engine's fast literal scan, one that
    # starts with a lookbehind tries each place of the body (20 times slower).
    before = rf"(?<![0-9A-Za-z_].{{{len(needle)}}})"
    return re.compile(re.escape(needle) + before + _NOT_WORD_AFTER, re.DOTALL)


# The event and its room, as the rules read them ---------------------------------------------


class EventFacts:
    """One event as every recipient's rules see it; each fact is computed at most once."""

    __slots__ = (
        "pdu",
        "state",
        "room_version",
        "_props",
        "_conds",
        "_plans",
        "_body",
        "_words",
        "_places",
        "found",
        "_members",
        "_sender_pl",
    )

    def __init__(
        self,
        pdu: Mapping[str, Any],
        state: Mapping[tuple[str, str], Any],
        room_version: str | None = None,
        member_count: int | None = None,
    ) -> None:
        """`state`: the room's current state, (type, state key) -> an event with `.content`
        and `.pdu` (a RoomHead's). `member_count`: the joined members, if the caller knows."""
        self.pdu = pdu
        self.state = state
        self.room_version = room_version
        self._props: dict[tuple[str, ...], Any] = {}
        self._conds: dict[Condition, bool] = {}
        self._plans: dict[Program, Plan] = {}
        self._body: str | None | object = _MISSING
        self._words: frozenset[str] | None = None
        self._places: dict[str, list[int]] | None = None
        # needle -> whether it is in the body between word boundaries (names shared by
        # several recipients are looked for once)
        self.found: dict[str, bool] = {}
        self._members = member_count
        self._sender_pl: int | None = None

    def prop(self, path: tuple[str, ...]) -> Any:
        """The value at a dotted path, or `_MISSING` (only objects are walked into)."""
        found = self._props.get(path, _MISSING)
        if found is _MISSING:
            value: Any = self.pdu
            for part in path:
                if not isinstance(value, Mapping):
                    value = _MISSING
                    break
                value = value.get(part, _MISSING)
                if value is _MISSING:
                    break
            found = self._props[path] = value
        return found

    @property
    def body(self) -> str | None:
        """`content.body` lowercased, or None if it is not a string."""
        body = self._body
        if body is _MISSING:
            raw = self.prop(("content", "body"))
            body = self._body = raw.lower() if isinstance(raw, str) else None
        return body  # type: ignore[return-value]

    @property
    def words(self) -> frozenset[str]:
        """The lowercased body's words (runs of [0-9a-z_]), for one-word needles."""
        if self._words is None:
            self._words = frozenset(_WORD.findall(self.body or ""))
        return self._words

    def word_places(self) -> dict[str, list[int]]:
        """Where each of the lowercased body's words starts (built on first use)."""
        if self._places is None:
            places: dict[str, list[int]] = {}
            for m in _WORD.finditer(self.body or ""):
                places.setdefault(m.group(), []).append(m.start())
            self._places = places
        return self._places

    @property
    def has_mentions(self) -> bool:
        return self.prop(("content", "m.mentions")) is not _MISSING

    @property
    def member_count(self) -> int:
        if self._members is None:
            self._members = sum(
                1
                for (kind, _), ev in self.state.items()
                if kind == "m.room.member" and ev.content.get("membership") == "join"
            )
        return self._members

    def sender_level(self) -> int:
        if self._sender_pl is None:
            sender = self.pdu.get("sender")
            pdus = {key: self.state[key].pdu for key in _PL_KEYS if key in self.state}
            self._sender_pl = (
                user_power_level(sender, pdus, self.room_version) if isinstance(sender, str) else 0
            )
        return self._sender_pl

    def notification_level(self, key: str) -> int:
        ev = self.state.get(("m.room.power_levels", ""))
        levels = ev.content.get("notifications") if ev is not None else None
        level = levels.get(key) if isinstance(levels, Mapping) else None
        if isinstance(level, str) and level.lstrip("-").isdigit():
            return int(level)
        return level if isinstance(level, int) and not isinstance(level, bool) else 50

    def display_name(self, user_id: str) -> str | None:
        ev = self.state.get(("m.room.member", user_id))
        name = ev.content.get("displayname") if ev is not None else None
        return name if isinstance(name, str) and name else None

    def holds(self, cond: Condition) -> bool:
        """A recipient-independent condition's result, memoised for this event."""
        found = self._conds.get(cond)
        if found is None:
            found = self._conds[cond] = cond.test(self)
        return found

    def holds_within(self, cond: Condition, budget: list[int]) -> bool:
        """`holds(cond)`, its cost taken from `budget[0]` unless this event knows it already
        (another user's rules asked); False, and nothing taken, when the budget cannot pay."""
        if cond not in self._conds:
            cost = cond.cost(self)
            if cost > budget[0]:
                return False
            budget[0] -= cost
        return self.holds(cond)


_PL_KEYS = (("m.room.power_levels", ""), ("m.room.create", ""))


# Conditions ------------------------------------------------------------------------------------


class Condition:
    """A compiled condition. `per_user` ones are asked with the recipient; the rest once per event."""

    per_user = False

    def test(self, facts: EventFacts) -> bool:
        raise NotImplementedError

    def test_user(self, facts: EventFacts, user_id: str) -> bool:
        return self.test(facts)

    def possible(self, facts: EventFacts) -> bool:
        """Whether a per-user condition could hold for anyone (asked once per event)."""
        return True

    def cost(self, facts: EventFacts) -> int:
        """About how many characters testing this reads: what a ruleset's plan may spend
        of its budget (PLAN_BUDGET)."""
        return 1


@dataclass(frozen=True, eq=False)
class EventMatch(Condition):
    path: tuple[str, ...]
    pattern: str  # lowercased
    is_body: bool

    def test(self, facts: EventFacts) -> bool:
        if self.is_body:
            body = facts.body
            return body is not None and _glob_search(self.pattern, body)
        value = facts.prop(self.path)
        if not isinstance(value, str):
            return False
        if not _has_glob(self.pattern):
            return value.lower() == self.pattern
        return glob_fullmatch(self.pattern, value.lower())

    def cost(self, facts: EventFacts) -> int:
        value = facts.body if self.is_body else facts.prop(self.path)
        if not isinstance(value, str):
            return 1
        # A `?` between literals makes the search try the pattern at each place of the text,
        # a few times slower a step than a literal scan (measured with `re`).
        return len(value) * (4 * len(self.pattern) if "?" in self.pattern else 1) + 1


def _glob_search(pattern: str, body: str) -> bool:
    if not _has_glob(pattern):
        return _contains_words(body, pattern)
    return glob_search_words(pattern, body)


@dataclass(frozen=True, eq=False)
class PropertyIs(Condition):
    path: tuple[str, ...]
    value: Any

    def test(self, facts: EventFacts) -> bool:
        found = facts.prop(self.path)
        return found is not _MISSING and is_plain_value(found) and _same(found, self.value)


@dataclass(frozen=True, eq=False)
class PropertyContains(Condition):
    path: tuple[str, ...]
    value: Any

    def test(self, facts: EventFacts) -> bool:
        found = facts.prop(self.path)
        return isinstance(found, list) and any(is_plain_value(v) and _same(v, self.value) for v in found)

    def cost(self, facts: EventFacts) -> int:
        found = facts.prop(self.path)
        return len(found) + 1 if isinstance(found, list) else 1


@dataclass(frozen=True, eq=False)
class MemberCount(Condition):
    op: str
    number: int

    def test(self, facts: EventFacts) -> bool:
        return bool(_OPS[self.op](facts.member_count, self.number))


@dataclass(frozen=True, eq=False)
class SenderPermission(Condition):
    key: str

    def test(self, facts: EventFacts) -> bool:
        return facts.sender_level() >= facts.notification_level(self.key)


@dataclass(frozen=True, eq=False)
class NoMentions(Condition):
    """The legacy mention rules' implicit condition: the event has no `m.mentions`."""

    def test(self, facts: EventFacts) -> bool:
        return not facts.has_mentions


@dataclass(frozen=True, eq=False)
class Never(Condition):
    """An unrecognised condition kind: spec, it matches no event."""

    def test(self, facts: EventFacts) -> bool:
        return False


@dataclass(frozen=True, eq=False)
class DisplayNameInBody(Condition):
    """`contains_display_name`: the recipient's display name in this room, in the body."""

    per_user = True

    def test(self, facts: EventFacts) -> bool:
        return False

    def test_user(self, facts: EventFacts, user_id: str) -> bool:
        name = facts.display_name(user_id)
        return name is not None and _in_body(facts, name)

    def possible(self, facts: EventFacts) -> bool:
        return bool(facts.body)


@dataclass(frozen=True, eq=False)
class UserIdMatch(Condition):
    """The default `invite_for_me` condition `state_key` == the recipient (shared by all users)."""

    path: tuple[str, ...]
    per_user = True

    def test(self, facts: EventFacts) -> bool:
        return False

    def test_user(self, facts: EventFacts, user_id: str) -> bool:
        value = facts.prop(self.path)
        return isinstance(value, str) and value.lower() == user_id.lower()

    def possible(self, facts: EventFacts) -> bool:
        return isinstance(facts.prop(self.path), str)


@dataclass(frozen=True, eq=False)
class UserIdListed(Condition):
    """The default `is_user_mention` condition: the recipient's id in an array property."""

    path: tuple[str, ...]
    per_user = True

    def test(self, facts: EventFacts) -> bool:
        return False

    def test_user(self, facts: EventFacts, user_id: str) -> bool:
        found = facts.prop(self.path)
        return isinstance(found, list) and user_id in found

    def possible(self, facts: EventFacts) -> bool:
        found = facts.prop(self.path)
        return isinstance(found, list) and bool(found)


@dataclass(frozen=True, eq=False)
class LocalpartInBody(Condition):
    """The default `contains_user_name` content rule: the recipient's localpart in the body."""

    per_user = True

    def test(self, facts: EventFacts) -> bool:
        return False

    def test_user(self, facts: EventFacts, user_id: str) -> bool:
        return _in_body(facts, _localpart(user_id))

    def possible(self, facts: EventFacts) -> bool:
        return bool(facts.body)


@functools.lru_cache(maxsize=65536)
def _localpart(user_id: str) -> str:
    return user_id[1:].split(":", 1)[0]


_OPS = {"==": operator.eq, "<": operator.lt, ">": operator.gt, "<=": operator.le, ">=": operator.ge}
MEMBER_COUNT = re.compile(r"(==|<=|>=|<|>)?([0-9]+)")


@functools.lru_cache(maxsize=8192)
def _compile_condition(kind: str, key: Any, pattern: Any, value_type: str, value: Any, is_: Any) -> Condition:
    """Interned: one object per distinct condition, shared by every user that has it (so
    its result is computed once per event). `value_type` keeps true and 1 apart."""
    if kind == "event_match" and isinstance(key, str) and isinstance(pattern, str):
        if len(pattern) > MAX_PATTERN_LENGTH:
            return Never()
        return EventMatch(split_path(key), pattern.lower(), key == "content.body")
    if kind == "event_property_is" and isinstance(key, str) and is_plain_value(value):
        return PropertyIs(split_path(key), value)
    if kind == "event_property_contains" and isinstance(key, str) and is_plain_value(value):
        return PropertyContains(split_path(key), value)
    if kind == "contains_display_name":
        return DisplayNameInBody()
    if kind == "room_member_count" and isinstance(is_, str):
        m = MEMBER_COUNT.fullmatch(is_)
        if m is not None:
            return MemberCount(m.group(1) or "==", int(m.group(2)))
    if kind == "sender_notification_permission" and isinstance(key, str):
        return SenderPermission(key)
    return Never()


def compile_condition(cond: Any) -> Condition:
    if not isinstance(cond, Mapping):
        return Never()
    value = cond.get("value")
    try:
        return _compile_condition(
            str(cond.get("kind")),
            cond.get("key"),
            cond.get("pattern"),
            type(value).__name__,
            value,
            cond.get("is"),
        )
    except TypeError:  # unhashable parameters: not a condition the spec defines
        return Never()


_NO_MENTIONS = NoMentions()
_DISPLAY_NAME = DisplayNameInBody()
_LOCALPART = LocalpartInBody()


# Actions -------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Outcome:
    """What a matched rule does: notify or not, highlight, its tweaks, its actions as given."""

    notify: bool
    highlight: bool
    tweaks: Mapping[str, Any]
    actions: tuple[Any, ...]


NO_MATCH = Outcome(False, False, {}, ())


def outcome_of(actions: Sequence[Any]) -> Outcome:
    notify = False
    tweaks: dict[str, Any] = {}
    kept: list[Any] = []
    for action in actions:
        if action == "notify":
            notify = True
        elif isinstance(action, Mapping) and isinstance(action.get("set_tweak"), str):
            name = action["set_tweak"]
            # highlight without a value means true (spec: "set_tweak" actions).
            tweaks[name] = action.get("value", True) if name == "highlight" else action.get("value")
        elif action in IGNORED_ACTIONS:
            continue
        kept.append(action)
    return Outcome(notify, notify and tweaks.get("highlight") is True, tweaks, tuple(kept))


# Programs ------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class CompiledRule:
    rule_id: str
    kind: str
    shared: tuple[Condition, ...]  # recipient-independent: once per event
    per_user: tuple[Condition, ...]
    outcome: Outcome
    # A server-default rule (".m.rule..."): the spec's, always evaluated (PLAN_BUDGET)
    server_default: bool = False


@dataclass(frozen=True, eq=False)
class Plan:
    """A program's rules left for one event once the recipient-independent conditions ran."""

    candidates: tuple[CompiledRule, ...]
    final: Outcome
    final_rule: str | None

    def outcome(self, facts: EventFacts, user_id: str) -> Outcome:
        return self.match(facts, user_id)[1]

    def match(self, facts: EventFacts, user_id: str) -> tuple[str | None, Outcome]:
        # Called for each recipient of each event: no per-call state. A recipient condition
        # repeated across rules is cheap again: `_in_body` keeps each name's answer per event.
        for rule in self.candidates:
            for cond in rule.per_user:
                if not cond.test_user(facts, user_id):
                    break
            else:
                return rule.rule_id, rule.outcome
        return self.final_rule, self.final


@dataclass(eq=False)
class Program:
    """A user's enabled rules in evaluation order."""

    rules: tuple[CompiledRule, ...]

    @functools.cached_property
    def silent_types(self) -> frozenset[str]:
        """Event types these rules never notify of, unless the event's state key is the user
        (an invite for them): loading counts skips them (a big room's joins, with the
        defaults). A type is silent when a rule matching exactly that type does not notify
        and no earlier notifying rule could match it."""
        silent: set[str] = set()
        for i, rule in enumerate(self.rules):
            match = rule.shared[0] if len(rule.shared) == 1 else None
            if (
                rule.outcome.notify
                or rule.per_user
                or not isinstance(match, EventMatch)
                or match.path != ("type",)
                or _has_glob(match.pattern)
            ):
                continue
            if not any(_may_match_type(earlier, match.pattern) for earlier in self.rules[:i]):
                silent.add(match.pattern)
        return frozenset(silent)

    def plan(self, facts: EventFacts) -> Plan:
        found = facts._plans.get(self)
        if found is None:
            found = facts._plans[self] = self._plan(facts)
        return found

    @functools.cached_property
    def _by_type(self) -> tuple[dict[str, tuple[CompiledRule, ...]], tuple[CompiledRule, ...]]:
        """The rules an event can match, by its lowercased type: a rule requiring one exact
        type (most defaults) is left out for the others. Second: for a type no rule names."""
        required = [(rule, _required_type(rule)) for rule in self.rules]
        by_type = {
            t: tuple(rule for rule, need in required if need is None or need == t)
            for _, t in required
            if t is not None
        }
        return by_type, tuple(rule for rule, need in required if need is None)

    def _plan(self, facts: EventFacts) -> Plan:
        candidates: list[CompiledRule] = []
        by_type, untyped = self._by_type
        event_type = facts.prop(_TYPE)
        # Same result as walking every rule: a skipped rule's type condition fails.
        rules = by_type.get(event_type.lower(), untyped) if isinstance(event_type, str) else untyped
        budget = [PLAN_BUDGET]
        for rule in rules:
            if rule.server_default:
                held = all(facts.holds(c) for c in rule.shared)
            else:
                held = all(facts.holds_within(c, budget) for c in rule.shared)
            if held:
                if not rule.per_user:
                    return Plan(tuple(candidates), rule.outcome, rule.rule_id)
                if all(c.possible(facts) for c in rule.per_user):
                    candidates.append(rule)
        return Plan(tuple(candidates), NO_MATCH, None)

    def evaluate(self, facts: EventFacts, user_id: str) -> Outcome:
        return self.plan(facts).outcome(facts, user_id)


_TYPE = ("type",)

# What one user's own rules may read of one event, in characters (5-10 ms of scanning). A
# user chooses both their rules and, in their own room, the messages: 500 keyword rules
# against 64 KiB bodies would scan 32 MB a message, on the send path of everyone there.
# Ordinary rules against ordinary messages read a few thousand; past the budget, the
# conditions left of the user's rules (in the spec's order, so overrides such as mutes
# come first) count as not holding for this event. The server-default rules (a fixed,
# small set, one body scan) are always evaluated, so a message still notifies as usual.
PLAN_BUDGET = 2_000_000


def _required_type(rule: CompiledRule) -> str | None:
    """The one (lowercased) event type `rule` can match, if a shared condition names it."""
    for cond in rule.shared:
        if isinstance(cond, EventMatch) and cond.path == _TYPE and not _has_glob(cond.pattern):
            return cond.pattern
    return None


def _may_match_type(rule: CompiledRule, event_type: str) -> bool:
    """Whether a notifying `rule` could match an event of `event_type` not about its user."""
    if not rule.outcome.notify:
        return False
    for cond in (*rule.shared, *rule.per_user):
        if isinstance(cond, UserIdMatch) and cond.path == ("state_key",):
            return False
        if isinstance(cond, (EventMatch, PropertyIs)) and cond.path == ("type",):
            pattern = cond.pattern if isinstance(cond, EventMatch) else cond.value
            if isinstance(pattern, str) and not _has_glob(pattern) and pattern.lower() != event_type:
                return False
    return True


def _rule_conditions(kind: str, rule: Mapping[str, Any], user_id: str) -> list[Condition]:
    rule_id = str(rule.get("rule_id"))
    conds: list[Condition] = []
    if rule_id in LEGACY_MENTION_RULES:
        conds.append(_NO_MENTIONS)
    if kind in ("override", "underride"):
        raw = rule.get("conditions")
        for cond in raw if isinstance(raw, list) else []:
            conds.append(_default_condition(rule_id, cond, user_id) or compile_condition(cond))
    elif kind == "content":
        if rule_id == ".m.rule.contains_user_name" and rule.get("pattern") == _localpart_raw(user_id):
            conds.append(_LOCALPART)
        else:
            pattern = rule.get("pattern")
            conds.append(
                compile_condition({"kind": "event_match", "key": "content.body", "pattern": pattern})
            )
    elif kind == "room":
        conds.append(
            compile_condition({"kind": "event_match", "key": "room_id", "pattern": _literal(rule_id)})
        )
    elif kind == "sender":
        conds.append(
            compile_condition({"kind": "event_match", "key": "sender", "pattern": _literal(rule_id)})
        )
    return conds


def _literal(value: str) -> str:
    # Room and user ids hold no glob characters; one that did could only match itself.
    return value if not _has_glob(value) else "\x00never"


def _localpart_raw(user_id: str) -> str:
    return user_id[1:].split(":", 1)[0]


def _default_condition(rule_id: str, cond: Any, user_id: str) -> Condition | None:
    """The defaults' conditions that name the user, as recipient-dependent conditions, so the
    default ruleset compiles to one program whoever it belongs to."""
    if not rule_id.startswith(".") or not isinstance(cond, Mapping):
        return None
    kind, key = cond.get("kind"), cond.get("key")
    if kind == "event_match" and key == "state_key" and cond.get("pattern") == user_id:
        return UserIdMatch(("state_key",))
    if (
        kind == "event_property_contains"
        and key == "content.m\\.mentions.user_ids"
        and cond.get("value") == user_id
    ):
        return _USER_LISTED
    return None


_USER_LISTED = UserIdListed(("content", "m.mentions", "user_ids"))
_STATE_KEY_IS_USER = UserIdMatch(("state_key",))


def _intern(cond: Condition) -> Condition:
    if isinstance(cond, UserIdMatch):
        return _STATE_KEY_IS_USER
    if isinstance(cond, DisplayNameInBody):
        return _DISPLAY_NAME
    return cond


@functools.lru_cache(maxsize=1024)
def _outcome_cached(key: str) -> Outcome:
    return outcome_of(json.loads(key))


def _outcome(actions: Any) -> Outcome:
    """Interned like conditions: users with the same actions share one Outcome."""
    if not isinstance(actions, list):
        return NO_MATCH
    try:
        return _outcome_cached(json.dumps(actions, sort_keys=True))
    except (TypeError, ValueError):
        return outcome_of(actions)


def compile_rules(ruleset: Mapping[str, Any], user_id: str) -> Program:
    """Compile a user's `global` ruleset (`{"override": [...], ...}`), in evaluation order."""
    compiled: list[CompiledRule] = []
    for kind in KINDS:
        rules = ruleset.get(kind)
        for rule in rules if isinstance(rules, list) else []:
            if not isinstance(rule, Mapping) or rule.get("enabled") is False:
                continue
            rule_id = rule.get("rule_id")
            if not isinstance(rule_id, str):
                continue
            conds = [_intern(c) for c in _rule_conditions(kind, rule, user_id)]
            compiled.append(
                CompiledRule(
                    rule_id,
                    kind,
                    tuple(c for c in conds if not c.per_user),
                    tuple(c for c in conds if c.per_user),
                    _outcome(rule.get("actions")),
                    rule_id.startswith("."),
                )
            )
    return Program(tuple(compiled))
