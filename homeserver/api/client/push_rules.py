"""Push rules (`/pushrules/...`) and the notifications list (`/notifications`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeserver.api.auth import require_user
from homeserver.api.client.login import CLIENT
from homeserver.api.http import ApiRequest, Router

if TYPE_CHECKING:
    from homeserver.server import HomeServer


def register(router: Router, hs: "HomeServer") -> None:
    rules = hs.push_rules

    async def get_all(request: ApiRequest, version: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        return await rules.ruleset(requester.user_id)

    async def get_scope(request: ApiRequest, version: str, scope: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        return await rules.scope(requester.user_id, scope)

    async def get_rule(
        request: ApiRequest, version: str, scope: str, kind: str, rule_id: str
    ) -> dict[str, Any]:
        requester = await require_user(hs, request)
        return await rules.get_rule(requester.user_id, scope, kind, rule_id)

    async def put_rule(
        request: ApiRequest, version: str, scope: str, kind: str, rule_id: str
    ) -> dict[str, Any]:
        requester = await require_user(hs, request)
        await rules.put_rule(
            requester.user_id,
            scope,
            kind,
            rule_id,
            request.json_body(),
            request.query_param("before"),
            request.query_param("after"),
        )
        return {}

    async def delete_rule(
        request: ApiRequest, version: str, scope: str, kind: str, rule_id: str
    ) -> dict[str, Any]:
        requester = await require_user(hs, request)
        await rules.delete_rule(requester.user_id, scope, kind, rule_id)
        return {}

    async def get_enabled(
        request: ApiRequest, version: str, scope: str, kind: str, rule_id: str
    ) -> dict[str, Any]:
        requester = await require_user(hs, request)
        rule = await rules.get_rule(requester.user_id, scope, kind, rule_id)
        return {"enabled": rule["enabled"]}

    async def put_enabled(
        request: ApiRequest, version: str, scope: str, kind: str, rule_id: str
    ) -> dict[str, Any]:
        requester = await require_user(hs, request)
        await rules.set_enabled(requester.user_id, scope, kind, rule_id, request.json_body())
        return {}

    async def get_actions(
        request: ApiRequest, version: str, scope: str, kind: str, rule_id: str
    ) -> dict[str, Any]:
        requester = await require_user(hs, request)
        rule = await rules.get_rule(requester.user_id, scope, kind, rule_id)
        return {"actions": rule["actions"]}

    async def put_actions(
        request: ApiRequest, version: str, scope: str, kind: str, rule_id: str
    ) -> dict[str, Any]:
        requester = await require_user(hs, request)
        await rules.set_actions(requester.user_id, scope, kind, rule_id, request.json_body())
        return {}

    async def notifications(request: ApiRequest, version: str) -> dict[str, Any]:
        requester = await require_user(hs, request)
        return await hs.notifications.page(
            requester.user_id,
            request.query_param("from"),
            request.query_param("limit"),
            request.query_param("only"),
        )

    router.add("GET", f"{CLIENT}/pushrules/", get_all)
    router.add("GET", f"{CLIENT}/pushrules", get_all)
    router.add("GET", f"{CLIENT}/pushrules/{{scope}}/", get_scope)
    router.add("GET", f"{CLIENT}/pushrules/{{scope}}", get_scope)
    rule = f"{CLIENT}/pushrules/{{scope}}/{{kind}}/{{rule_id}}"
    router.add("GET", rule, get_rule)
    router.add("PUT", rule, put_rule)
    router.add("DELETE", rule, delete_rule)
    router.add("GET", f"{rule}/enabled", get_enabled)
    router.add("PUT", f"{rule}/enabled", put_enabled)
    router.add("GET", f"{rule}/actions", get_actions)
    router.add("PUT", f"{rule}/actions", put_actions)
    router.add("GET", f"{CLIENT}/notifications", notifications)
