"""Push rules: the spec's predefined rules, a user's own rules laid over them, and the
Push Rules API's edits (spec: Client-Server API, Push Notifications, "Push Rules").

A user's ruleset lives in their `m.push_rules` account data, in the form clients read it
(`{"global": {"override": [...], ...}}`), so every change reaches their clients through
/sync. It is always read laid over the current defaults: a user's rules first (in their
order), the server-default rules after them (`.m.rule.master` before everything) with the
user's `enabled` and `actions` for each, so a server with newer defaults shows them to
everyone without rewriting anybody's data.

Each user's ruleset is compiled once (core/push_eval.py) and kept; users who never edited
their rules share one compiled program. Programs for many users at once (`programs`: a batch
of unread-count loads) read the stored rulesets of those not kept in one query.

Whichever process stores a ruleset, every process replaces the user's program when it hears
of the write through account data's `on_put` (with several processes, the account-data
stream: in order, and caught up from PostgreSQL after a bus reconnect), and tells
`on_change` so that the unread counts computed with the old rules go too. An edit reads,
changes and stores the whole ruleset: it runs where account data is written (`edit_here`,
forwarded there by the other processes; here while that one runs the version before), one
per user at a time.
"""

from __future__ import annotations

import copy
import json
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import DeferredLock

from homeserver.core.push_eval import (
    KINDS,
    MASTER,
    MAX_PATTERN_LENGTH,
    MEMBER_COUNT,
    Program,
    compile_rules,
    is_plain_value,
)
from homeserver.errors import BadJson, InvalidParam, MatrixError, MissingParam, NotFound, Unrecognized
from homeserver.events.canonical import ints_in_canonical_range

if TYPE_CHECKING:
    from homeserver.core.account_data import AccountDataService

SOUND = {"set_tweak": "sound", "value": "default"}
HIGHLIGHT = {"set_tweak": "highlight"}
KNOWN_ACTIONS = ("notify", "dont_notify", "coalesce")
# Bounds on what one user may store (it is all account data, sent in their initial sync).
MAX_USER_RULES = 500
MAX_CONDITIONS = 20
# The stored ruleset as JSON: every edit reads and rewrites all of it, and it is in every
# initial sync. A user with a rule for each of 500 rooms stores about 90 KB; set_tweak
# values are otherwise unbounded.
MAX_RULESET_BYTES = 1024 * 1024
MAX_PROGRAMS = 200_000
# Compiles the shared program of everyone on the defaults (its user never appears in it).
_PLACEHOLDER = "@\x00placeholder:\x00"


def _rule(
    rule_id: str, conditions: list[dict[str, Any]], actions: list[Any], enabled: bool = True
) -> dict[str, Any]:
    return {
        "rule_id": rule_id,
        "default": True,
        "enabled": enabled,
        "conditions": conditions,
        "actions": actions,
    }


def _match(key: str, pattern: str) -> dict[str, Any]:
    return {"kind": "event_match", "key": key, "pattern": pattern}


def default_push_rules(user_id: str) -> dict[str, Any]:
    """The predefined rules for `user_id`, in the spec's order (v1.19, "Predefined Rules")."""
    localpart = user_id[1:].split(":", 1)[0]
    override = [
        _rule(MASTER, [], [], enabled=False),
        _rule(".m.rule.suppress_notices", [_match("content.msgtype", "m.notice")], []),
        _rule(
            ".m.rule.invite_for_me",
            [
                _match("type", "m.room.member"),
                _match("content.membership", "invite"),
                _match("state_key", user_id),
            ],
            ["notify", SOUND],
        ),
        _rule(".m.rule.member_event", [_match("type", "m.room.member")], []),
        _rule(
            ".m.rule.is_user_mention",
            [{"kind": "event_property_contains", "key": "content.m\\.mentions.user_ids", "value": user_id}],
            ["notify", SOUND, HIGHLIGHT],
        ),
        _rule(
            ".m.rule.contains_display_name", [{"kind": "contains_display_name"}], ["notify", SOUND, HIGHLIGHT]
        ),
        _rule(
            ".m.rule.is_room_mention",
            [
                {"kind": "event_property_is", "key": "content.m\\.mentions.room", "value": True},
                {"kind": "sender_notification_permission", "key": "room"},
            ],
            ["notify", HIGHLIGHT],
        ),
        _rule(
            ".m.rule.roomnotif",
            [_match("content.body", "@room"), {"kind": "sender_notification_permission", "key": "room"}],
            ["notify", HIGHLIGHT],
        ),
        _rule(
            ".m.rule.tombstone",
            [_match("type", "m.room.tombstone"), _match("state_key", "")],
            ["notify", HIGHLIGHT],
        ),
        _rule(".m.rule.reaction", [_match("type", "m.reaction")], []),
        _rule(".m.rule.room.server_acl", [_match("type", "m.room.server_acl"), _match("state_key", "")], []),
        _rule(
            ".m.rule.suppress_edits",
            [{"kind": "event_property_is", "key": "content.m\\.relates_to.rel_type", "value": "m.replace"}],
            [],
        ),
    ]
    content = [
        {
            "rule_id": ".m.rule.contains_user_name",
            "default": True,
            "enabled": True,
            "pattern": localpart,
            "actions": ["notify", SOUND, HIGHLIGHT],
        }
    ]
    one_to_one = {"kind": "room_member_count", "is": "2"}
    underride = [
        _rule(
            ".m.rule.call",
            [_match("type", "m.call.invite")],
            ["notify", {"set_tweak": "sound", "value": "ring"}],
        ),
        _rule(
            ".m.rule.encrypted_room_one_to_one",
            [one_to_one, _match("type", "m.room.encrypted")],
            ["notify", SOUND],
        ),
        _rule(
            ".m.rule.room_one_to_one", [dict(one_to_one), _match("type", "m.room.message")], ["notify", SOUND]
        ),
        _rule(".m.rule.message", [_match("type", "m.room.message")], ["notify"]),
        _rule(".m.rule.encrypted", [_match("type", "m.room.encrypted")], ["notify"]),
    ]
    return {
        "global": {"override": override, "content": content, "room": [], "sender": [], "underride": underride}
    }


def effective_rules(stored: Any, user_id: str) -> dict[str, Any]:
    """The user's stored `m.push_rules` (anything, as old data may be) laid over the defaults."""
    defaults = default_push_rules(user_id)["global"]
    saved = stored.get("global") if isinstance(stored, Mapping) else None
    saved = saved if isinstance(saved, Mapping) else {}
    out: dict[str, list[dict[str, Any]]] = {}
    for kind in KINDS:
        rules = saved.get(kind)
        rules = [r for r in rules if _well_formed(kind, r)] if isinstance(rules, list) else []
        own = [copy.deepcopy(r) for r in rules if not r["rule_id"].startswith(".")]
        for r in own:
            r["default"] = False
        changed = {r["rule_id"]: r for r in rules if r["rule_id"].startswith(".")}
        merged_defaults = []
        for rule in defaults[kind]:
            old = changed.get(rule["rule_id"])
            if old is not None:
                if isinstance(old.get("enabled"), bool):
                    rule["enabled"] = old["enabled"]
                if isinstance(old.get("actions"), list):
                    rule["actions"] = copy.deepcopy(old["actions"])
            merged_defaults.append(rule)
        if kind == "override" and merged_defaults and merged_defaults[0]["rule_id"] == MASTER:
            out[kind] = [merged_defaults[0], *own, *merged_defaults[1:]]
        else:
            out[kind] = [*own, *merged_defaults]
    return {"global": out}


def _well_formed(kind: str, rule: Any) -> bool:
    return (
        isinstance(rule, dict)
        and isinstance(rule.get("rule_id"), str)
        and isinstance(rule.get("actions"), list)
        and (kind != "content" or isinstance(rule.get("pattern"), str) or rule["rule_id"].startswith("."))
    )


# Validation (PUT bodies) ----------------------------------------------------------------------


def check_kind(scope: str, kind: str | None = None) -> None:
    if scope != "global":
        raise InvalidParam(f"Unknown push rule scope {scope!r} (only 'global' exists)")
    if kind is not None and kind not in KINDS:
        raise InvalidParam(f"Unknown push rule kind {kind!r}")


def check_new_rule_id(kind: str, rule_id: str) -> None:
    if rule_id.startswith("."):
        raise InvalidParam("Rule ids starting with '.' are reserved for server-default rules")
    if not rule_id or "/" in rule_id or "\\" in rule_id:
        raise InvalidParam("A rule id must be non-empty and hold no '/' or '\\'")
    if kind == "room" and not rule_id.startswith("!"):
        raise InvalidParam("A room rule's id must be the room's id")
    if kind == "sender" and not (rule_id.startswith("@") and ":" in rule_id):
        raise InvalidParam("A sender rule's id must be the sender's user id")


def check_actions(actions: Any) -> list[Any]:
    """Valid actions, minus the ones the spec says to ignore (`dont_notify`, `coalesce`)."""
    if not isinstance(actions, list):
        raise BadJson("'actions' must be a list")
    kept: list[Any] = []
    for action in actions:
        if isinstance(action, str):
            if action not in KNOWN_ACTIONS:
                raise InvalidParam(f"Unknown action {action!r}")
            if action == "notify":
                kept.append(action)
        elif isinstance(action, dict):
            tweak = action.get("set_tweak")
            if not isinstance(tweak, str) or not tweak:
                raise InvalidParam("An object action must be a 'set_tweak' with a string name")
            if set(action) - {"set_tweak", "value"}:
                raise InvalidParam("A 'set_tweak' action holds only 'set_tweak' and 'value'")
            if tweak == "highlight" and "value" in action and not isinstance(action["value"], bool):
                raise InvalidParam("The highlight tweak's value must be a boolean")
            kept.append(action)
        else:
            raise InvalidParam("An action must be a string or a 'set_tweak' object")
    return kept


def _string(cond: Mapping[str, Any], key: str) -> str:
    value = cond.get(key)
    if value is None:
        raise MissingParam(f"A {cond['kind']} condition needs '{key}'")
    if not isinstance(value, str):
        raise BadJson(f"'{key}' of a {cond['kind']} condition must be a string")
    _check_length(key, value)
    return value


def _check_length(name: str, value: str) -> None:
    if len(value) > MAX_PATTERN_LENGTH:
        raise InvalidParam(f"'{name}' is at most {MAX_PATTERN_LENGTH} characters")


def check_condition(cond: Any) -> dict[str, Any]:
    if not isinstance(cond, dict) or not isinstance(cond.get("kind"), str):
        raise BadJson("Each condition must be an object with a string 'kind'")
    kind = cond["kind"]
    if kind == "event_match":
        return {"kind": kind, "key": _string(cond, "key"), "pattern": _string(cond, "pattern")}
    if kind in ("event_property_is", "event_property_contains"):
        key = _string(cond, "key")
        if "value" not in cond:
            raise MissingParam(f"A {kind} condition needs 'value'")
        if not is_plain_value(cond["value"]):
            raise InvalidParam("'value' must be a string, an integer in range, a boolean or null")
        if isinstance(cond["value"], str):
            _check_length("value", cond["value"])
        return {"kind": kind, "key": key, "value": cond["value"]}
    if kind == "contains_display_name":
        return {"kind": kind}
    if kind == "room_member_count":
        is_ = _string(cond, "is")
        if MEMBER_COUNT.fullmatch(is_) is None:
            raise InvalidParam("'is' must be a number, optionally after ==, <, >, <= or >=")
        return {"kind": kind, "is": is_}
    if kind == "sender_notification_permission":
        return {"kind": kind, "key": _string(cond, "key")}
    # Spec: an unrecognised condition never matches (so the rule never does); kept as sent,
    # within canonical JSON's integer range, as account data.
    if not ints_in_canonical_range(cond):
        raise BadJson("Integers must be within ±(2**53 - 1) (canonical JSON)")
    return cond


def build_rule(kind: str, rule_id: str, body: Any) -> dict[str, Any]:
    """A new user-defined rule from a PUT body."""
    if not isinstance(body, dict):
        raise BadJson("The body must be a JSON object")
    if "actions" not in body:
        raise MissingParam("Missing 'actions'")
    rule: dict[str, Any] = {"rule_id": rule_id, "default": False, "enabled": True}
    if kind == "content":
        pattern = body.get("pattern")
        if pattern is None:
            raise MissingParam("A content rule needs 'pattern'")
        if not isinstance(pattern, str) or not pattern:
            raise BadJson("'pattern' must be a non-empty string")
        _check_length("pattern", pattern)
        rule["pattern"] = pattern
    elif kind in ("override", "underride"):
        conditions = body.get("conditions", [])
        if not isinstance(conditions, list):
            raise BadJson("'conditions' must be a list")
        if len(conditions) > MAX_CONDITIONS:
            raise InvalidParam(f"At most {MAX_CONDITIONS} conditions")
        rule["conditions"] = [check_condition(c) for c in conditions]
    rule["actions"] = check_actions(body["actions"])
    return rule


# Edits of a ruleset (in place) ----------------------------------------------------------------


def find_rule(ruleset: Mapping[str, Any], kind: str, rule_id: str) -> dict[str, Any]:
    for rule in ruleset["global"][kind]:
        if rule["rule_id"] == rule_id:
            return rule  # type: ignore[no-any-return]
    raise NotFound("The push rule was not found")


def put_rule(
    ruleset: dict[str, Any], kind: str, rule_id: str, body: Any, before: str | None, after: str | None
) -> None:
    check_new_rule_id(kind, rule_id)
    new = build_rule(kind, rule_id, body)
    rules: list[dict[str, Any]] = ruleset["global"][kind]
    old = next((i for i, r in enumerate(rules) if r["rule_id"] == rule_id), None)
    if old is not None:
        new["enabled"] = rules[old].get("enabled", True)  # an update keeps the rule's state
    anchor = before if before is not None else after
    if anchor is not None and anchor.startswith("."):
        raise InvalidParam("A rule cannot be placed relative to a server-default rule")
    if anchor == rule_id:
        raise InvalidParam("A rule cannot be placed relative to itself")
    if old is not None and anchor is None:
        rules[old] = new
        return
    others = [r for r in rules if r["rule_id"] != rule_id]
    own = [r for r in others if not r["rule_id"].startswith(".")]
    if old is None and len(own) >= MAX_USER_RULES:
        raise InvalidParam(f"At most {MAX_USER_RULES} rules of each kind")
    if anchor is None:
        # A new rule is the most important of the user's rules of its kind.
        at = next((i for i, r in enumerate(others) if not r["rule_id"].startswith(".")), None)
        if at is None:
            at = 1 if kind == "override" and others and others[0]["rule_id"] == MASTER else 0
    else:
        found = next((i for i, r in enumerate(others) if r["rule_id"] == anchor), None)
        if found is None:
            raise MatrixError(f"before/after rule not found: {anchor}", "M_UNKNOWN")
        at = found if before is not None else found + 1
    others.insert(at, new)
    rules[:] = others


def delete_rule(ruleset: dict[str, Any], kind: str, rule_id: str) -> None:
    rule = find_rule(ruleset, kind, rule_id)
    if rule.get("default"):
        raise InvalidParam("Server-default rules cannot be deleted (disable them instead)")
    ruleset["global"][kind].remove(rule)


# The service --------------------------------------------------------------------------------


class PushRuleService:
    """Reads and edits users' rulesets, and keeps each one's compiled program."""

    def __init__(self, account_data: AccountDataService) -> None:
        self.account_data = account_data
        self.default_program = compile_rules(default_push_rules(_PLACEHOLDER)["global"], _PLACEHOLDER)
        # user id -> compiled rules; the inline pass reads it directly (no await there).
        self.cached_programs: OrderedDict[str, Program] = OrderedDict()
        self._locks: dict[str, DeferredLock] = {}
        # Users with stored rules, read at start-up: everyone else is on the defaults, known
        # without a query (a big room's members all load their counts at once).
        self._stored: set[str] | None = None
        # Told (user_id) after a user's rules changed: counts computed with the old ones are stale.
        self.on_change: list[Any] = []
        self._edits = 0  # rulesets stored so far: a read that overlapped one keeps nothing
        # Every process hears of every stored ruleset, its own edits and the others' (with
        # several, through the account-data stream, in order and caught up after a reconnect).
        account_data.on_put.append(self._on_put)

    async def start(self) -> None:
        self._stored = await self.account_data.storage.user_data.users_with_account_data("m.push_rules")

    async def ruleset(self, user_id: str) -> dict[str, Any]:
        stored = await self.account_data.get(user_id, "", "m.push_rules")
        return effective_rules(stored, user_id)

    async def scope(self, user_id: str, scope: str) -> dict[str, Any]:
        check_kind(scope)
        return (await self.ruleset(user_id))["global"]  # type: ignore[no-any-return]

    def for_client(self, user_id: str, stored: Any) -> dict[str, Any]:
        """The `m.push_rules` content a sync shows for stored (or no) account data."""
        return effective_rules(stored, user_id)

    # Compiled programs ----------------------------------------------------------------------

    async def program(self, user_id: str) -> Program:
        return (await self.programs([user_id]))[user_id]

    async def programs(self, user_ids: Iterable[str]) -> dict[str, Program]:
        """Each user's compiled rules; those not kept are read in one query."""
        out: dict[str, Program] = {}
        to_read: list[str] = []
        for user_id in dict.fromkeys(user_ids):
            found = self.cached_programs.get(user_id)
            if found is not None:
                self.cached_programs.move_to_end(user_id)
                out[user_id] = found
            elif self._stored is not None and user_id not in self._stored:
                out[user_id] = self.default_program
                self._remember(user_id, self.default_program)
            else:
                to_read.append(user_id)
        if not to_read:
            return out
        edits = self._edits
        stored = await self.account_data.get_global_many(to_read, "m.push_rules")
        for user_id in to_read:
            if self._edits != edits:
                # An edit stored meanwhile may be newer than what was read: never keep the
                # older rules over the ones the edit kept.
                found = self.cached_programs.get(user_id)
                out[user_id] = found if found is not None else self._compile(user_id, stored.get(user_id))
                continue
            out[user_id] = self._compile(user_id, stored.get(user_id))
            self._remember(user_id, out[user_id])
        return out

    def _compile(self, user_id: str, stored: Any) -> Program:
        if stored is None:
            return self.default_program
        ruleset = effective_rules(stored, user_id)
        if ruleset == default_push_rules(user_id):
            return self.default_program
        return compile_rules(ruleset["global"], user_id)

    def _on_put(self, user_id: str, room_id: str, data_type: str, content: dict[str, Any]) -> None:
        if data_type == "m.push_rules" and not room_id:
            self._stored_changed(user_id, content)

    def _stored_changed(self, user_id: str, stored: Any) -> None:
        """The user's ruleset as now stored: programs and counts made with the old one go."""
        if self._stored is not None:
            self._stored.add(user_id)
        self._remember(user_id, self._compile(user_id, stored))
        self._edits += 1
        for listener in self.on_change:
            listener(user_id)

    def _remember(self, user_id: str, program: Program) -> None:
        self.cached_programs[user_id] = program
        self.cached_programs.move_to_end(user_id)
        while len(self.cached_programs) > MAX_PROGRAMS:
            self.cached_programs.popitem(last=False)

    # The API's edits -----------------------------------------------------------------------

    async def get_rule(self, user_id: str, scope: str, kind: str, rule_id: str) -> dict[str, Any]:
        check_kind(scope, kind)
        return find_rule(await self.ruleset(user_id), kind, rule_id)

    async def put_rule(
        self,
        user_id: str,
        scope: str,
        kind: str,
        rule_id: str,
        body: Any,
        before: str | None,
        after: str | None,
    ) -> None:
        check_kind(scope, kind)
        check_new_rule_id(kind, rule_id)
        # The rule as kept, not the body, goes to the writer: a field the rule drops (an
        # integer past 64 bits, say) must not fail the request between processes.
        rule = build_rule(kind, rule_id, body)
        args = {"kind": kind, "rule_id": rule_id, "body": rule, "before": before, "after": after}
        await self._edit(user_id, "put", args)

    async def delete_rule(self, user_id: str, scope: str, kind: str, rule_id: str) -> None:
        check_kind(scope, kind)
        await self._edit(user_id, "delete", {"kind": kind, "rule_id": rule_id})

    async def set_enabled(self, user_id: str, scope: str, kind: str, rule_id: str, body: Any) -> None:
        check_kind(scope, kind)
        if not isinstance(body, dict) or "enabled" not in body:
            raise MissingParam("Missing 'enabled'")
        enabled = body["enabled"]
        if not isinstance(enabled, bool):
            raise BadJson("'enabled' must be a boolean")
        await self._edit(user_id, "enabled", {"kind": kind, "rule_id": rule_id, "enabled": enabled})

    async def set_actions(self, user_id: str, scope: str, kind: str, rule_id: str, body: Any) -> None:
        check_kind(scope, kind)
        if not isinstance(body, dict) or "actions" not in body:
            raise MissingParam("Missing 'actions'")
        actions = check_actions(body["actions"])
        await self._edit(user_id, "actions", {"kind": kind, "rule_id": rule_id, "actions": actions})

    async def copy_room_rules(self, user_id: str, old_room_id: str, new_room_id: str) -> None:
        """Carry the user's rules for `old_room_id` (a muted room, a room's own sound) over to
        the room that replaced it, each placed after its original (spec: Room Upgrades, the
        user's notification settings follow them to the new room). A room rule, and an
        override or underride rule matching `room_id` whose id names the room, are copied; one
        the user already has for the new room is left as it is."""
        ruleset = await self.ruleset(user_id)
        for kind in ("override", "room", "underride"):
            rules = ruleset["global"][kind]
            have = {rule["rule_id"] for rule in rules}
            for rule in list(rules):
                remade = _rule_for_room(kind, rule, old_room_id, new_room_id)
                if remade is None or remade["rule_id"] in have:
                    continue
                args = {"kind": kind, "rule_id": remade["rule_id"], "body": remade, "before": None}
                try:
                    await self._edit(user_id, "put", {**args, "after": rule["rule_id"]})
                    if rule.get("enabled") is False:
                        await self._edit(user_id, "enabled", {**args, "enabled": False})
                except MatrixError:
                    pass  # at the most rules a user may have: the join goes on without it

    async def _edit(self, user_id: str, op: str, args: dict[str, Any]) -> None:
        forward = self.account_data.forward
        if forward is None:
            await self.edit_here(user_id, op, args)
            return
        # Another process writes account data: the edit runs there, under its lock, so that
        # two edits of one user through two processes never store over each other.
        try:
            done = await forward("push_rules", {"user_id": user_id, "op": op, "args": args})
        except Unrecognized:
            # The writer runs the version before (a rolling upgrade) and only stores: read and
            # change here as that version did, and hand it the whole ruleset to store.
            done = await self.edit_here(user_id, op, args)
        if self.account_data.stream.current < int(done["position"]):
            # Its row has not come back yet (bus down or slow): the user's next request here
            # sees the edit all the same. The rows still to come end with it or a later one.
            self._stored_changed(user_id, done["ruleset"])

    async def edit_here(self, user_id: str, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """Read, change and store the user's ruleset, one change at a time per user (on the
        process that writes account data); the ruleset stored and its stream position."""
        lock = self._locks.get(user_id)
        if lock is None:
            lock = self._locks[user_id] = DeferredLock()
        await lock.acquire()
        try:
            ruleset = await self.ruleset(user_id)
            _change(ruleset, op, args)
            # Its on_put (here, before put returns) replaces the program and tells on_change.
            position = await self.account_data.put(user_id, "", "m.push_rules", ruleset)
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                self._locks.pop(user_id, None)
        return {"ruleset": ruleset, "position": position}


def _rule_for_room(
    kind: str, rule: dict[str, Any], old_room_id: str, new_room_id: str
) -> dict[str, Any] | None:
    """The user's `rule` for `old_room_id` remade for `new_room_id`, or None if it is not one."""
    if rule.get("default") or old_room_id not in rule["rule_id"]:
        return None
    if kind == "room":
        if rule["rule_id"] != old_room_id:
            return None
        return {"rule_id": new_room_id, "default": False, "enabled": True, "actions": rule["actions"]}
    names_room = {"kind": "event_match", "key": "room_id", "pattern": old_room_id}
    conditions = rule.get("conditions") or []
    if names_room not in conditions:
        return None
    return {
        "rule_id": rule["rule_id"].replace(old_room_id, new_room_id),
        "default": False,
        "enabled": True,
        "conditions": [{**c, "pattern": new_room_id} if c == names_room else c for c in conditions],
        "actions": rule["actions"],
    }


def _change(ruleset: dict[str, Any], op: str, args: dict[str, Any]) -> None:
    """One Push Rules API edit of a ruleset, named so that another process can ask for it."""
    kind, rule_id = args["kind"], args["rule_id"]
    if op == "put":
        put_rule(ruleset, kind, rule_id, args["body"], args["before"], args["after"])
    elif op == "delete":
        delete_rule(ruleset, kind, rule_id)
    elif op == "enabled":
        find_rule(ruleset, kind, rule_id)["enabled"] = args["enabled"]
    elif op == "actions":
        find_rule(ruleset, kind, rule_id)["actions"] = args["actions"]
    else:
        raise ValueError(f"unknown push rule edit {op!r}")
    if op in ("put", "actions") and len(json.dumps(ruleset, ensure_ascii=False).encode()) > MAX_RULESET_BYTES:
        raise InvalidParam(f"The push rules would be larger than {MAX_RULESET_BYTES} bytes as JSON")
