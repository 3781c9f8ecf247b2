"""The internal listener: POST /_homeserver/internal/{method} from the other instances of
this server (docs/architecture.md, "Past one process"). Only on that listener, never on the
client one; every request must carry the workers' shared secret."""

from __future__ import annotations

from homeserver.api.http import ApiRequest, Response, Router
from homeserver.errors import BadJson, NotJson
from homeserver.json_encoding import dumps_internal, loads_internal
from homeserver.workers.rpc import INTERNAL_PREFIX, WorkerRpc, check_secret


def internal_router(rpc: WorkerRpc) -> Router:
    router = Router()
    router.access_log = False  # the client-facing request was logged where it arrived

    async def call(request: ApiRequest, method: str) -> Response:
        check_secret(rpc.secret, request.bearer_token())
        assert request.content is not None
        request.content.seek(0)
        try:
            # Read as WorkerRpc.call wrote it, answered likewise: not a client's JSON rules.
            args = loads_internal(request.content.read())
        except (ValueError, RecursionError):
            raise NotJson("Content not JSON.") from None
        if not isinstance(args, dict):
            raise BadJson("The body must be a JSON object")
        status, body = await rpc.handle(method, args)
        return Response(dumps_internal(body), status)

    router.add("POST", INTERNAL_PREFIX + "{method}", call)
    return router
