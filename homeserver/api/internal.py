"""The internal listener: POST /_homeserver/internal/{method} from the other instances of
this server (docs/architecture.md, "Past one process"). Only on that listener, never on the
client one; every request must carry the workers' shared secret."""

from __future__ import annotations

from homeserver.api.http import ApiRequest, Response, Router
from homeserver.workers.rpc import INTERNAL_PREFIX, WorkerRpc, check_secret


def internal_router(rpc: WorkerRpc) -> Router:
    router = Router()
    router.access_log = False  # the client-facing request was logged where it arrived

    async def call(request: ApiRequest, method: str) -> Response:
        check_secret(rpc.secret, request.bearer_token())
        status, body = await rpc.handle(method, request.json_body())
        return Response(body, status)

    router.add("POST", INTERNAL_PREFIX + "{method}", call)
    return router
