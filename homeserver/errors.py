"""Errors as values of the Matrix spec: each carries its HTTP status and errcode.

The API layer renders any `MatrixError` as `{"errcode": ..., "error": ...}` in one
place (`homeserver.api.router`); core code raises them and never touches HTTP.
"""

from typing import Any


class MatrixError(Exception):
    status = 400
    errcode = "M_UNKNOWN"

    def __init__(
        self, message: str, errcode: str | None = None, *, status: int | None = None, **extra: Any
    ) -> None:
        super().__init__(message)
        self.message = message
        if errcode is not None:
            self.errcode = errcode
        if status is not None:
            self.status = status
        self.extra = extra

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"errcode": self.errcode, "error": self.message}
        body.update(self.extra)
        return body


class BadJson(MatrixError):
    errcode = "M_BAD_JSON"


class NotJson(MatrixError):
    errcode = "M_NOT_JSON"


class MissingParam(MatrixError):
    errcode = "M_MISSING_PARAM"


class InvalidParam(MatrixError):
    errcode = "M_INVALID_PARAM"


class Forbidden(MatrixError):
    status = 403
    errcode = "M_FORBIDDEN"


class NotFound(MatrixError):
    status = 404
    errcode = "M_NOT_FOUND"


class Unrecognized(MatrixError):
    status = 404
    errcode = "M_UNRECOGNIZED"


class MethodNotAllowed(MatrixError):
    status = 405
    errcode = "M_UNRECOGNIZED"


class MissingToken(MatrixError):
    status = 401
    errcode = "M_MISSING_TOKEN"


class UnknownToken(MatrixError):
    """Unknown, revoked, forged or expired token; `soft_logout` only when expired."""

    status = 401
    errcode = "M_UNKNOWN_TOKEN"

    def __init__(self, message: str, soft_logout: bool = False) -> None:
        super().__init__(message, soft_logout=soft_logout)


class UserInUse(MatrixError):
    errcode = "M_USER_IN_USE"


class InvalidUsername(MatrixError):
    errcode = "M_INVALID_USERNAME"


class WeakPassword(MatrixError):
    errcode = "M_WEAK_PASSWORD"


class UserDeactivated(MatrixError):
    status = 403
    errcode = "M_USER_DEACTIVATED"


class ThreepidInUse(MatrixError):
    errcode = "M_THREEPID_IN_USE"


class ThreepidNotFound(MatrixError):
    errcode = "M_THREEPID_NOT_FOUND"


class ThreepidAuthFailed(MatrixError):
    status = 401
    errcode = "M_THREEPID_AUTH_FAILED"


class TooLarge(MatrixError):
    status = 413
    errcode = "M_TOO_LARGE"


class ServiceUnavailable(MatrixError):
    """The server cannot answer now (its database is unreachable); the client should retry."""

    status = 503
    errcode = "M_UNKNOWN"


class StorageFull(MatrixError):
    """The disk under the data dir (or the database's) is full: nothing of the write was
    stored. The spec's errcode for a server out of a resource such as disk space; 507 says
    it is the server's storage and that a retry later may succeed."""

    status = 507
    errcode = "M_RESOURCE_LIMIT_EXCEEDED"

    def __init__(self, message: str = "The server's disk is full; try again later") -> None:
        super().__init__(message, admin_contact="")


class LimitExceeded(MatrixError):
    status = 429
    errcode = "M_LIMIT_EXCEEDED"

    def __init__(self, retry_after_ms: int) -> None:
        super().__init__("Too many requests", retry_after_ms=retry_after_ms)
        self.retry_after_ms = retry_after_ms


class InteractiveAuthRequired(MatrixError):
    """The 401 of user-interactive auth: the body is the flows, not an error."""

    status = 401
    errcode = "M_FORBIDDEN"

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__("Interactive authentication required")
        self.body = body

    def to_json(self) -> dict[str, Any]:
        return self.body


class Unauthorized(MatrixError):
    """A federation request without a valid X-Matrix signature (Server-Server API,
    "Request Authentication")."""

    status = 401
    errcode = "M_UNAUTHORIZED"


class RemoteServerError(MatrixError):
    """Another server could not be reached, or answered something unusable."""

    status = 502
    errcode = "M_UNKNOWN"
