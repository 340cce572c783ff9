"""Every error the client raises: one family under `ForgeClientError`, each with the `code` and
`message` of the server's error body (`{"error": ..., "message": ...}`) or, when no answer came,
a code of the client's own."""

from __future__ import annotations

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AuthenticationError",
    "ConflictError",
    "ForgeClientError",
    "InvalidRequestError",
    "InvalidResponseError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServerError",
    "StreamLostError",
]


class ForgeClientError(Exception):
    """Base of every client error. `code` is the server's error code (`agent_not_found`,
    `invalid_request`...) or the client's own (`unreachable`, `timeout`, `stream_lost`,
    `bad_response`); `status_code` is the HTTP status, None when there was no answer."""

    def __init__(self, code: str, message: str, status_code: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status_code = status_code


class APIError(ForgeClientError):
    """The server answered with an error status (one without a class of its own below)."""


class InvalidRequestError(APIError):
    """400, 413 or 422: the request is not one the route takes; `message` says what to fix.
    Also raised before sending when a request model refuses the values given (no status)."""


class AuthenticationError(APIError):
    """401: no API key, or not a valid one (revoked, mistyped)."""


class PermissionDeniedError(APIError):
    """403: the key may not do this (another owner's agent, an admin route)."""


class NotFoundError(APIError):
    """404: no such agent, session, task, delivery, neuron or key (for this key)."""


class ConflictError(APIError):
    """409: the request cannot be done in the current state (a stopped agent, a merge that
    conflicts)."""


class RateLimitError(APIError):
    """429: over the key's rate limit; `retry_after` is the server's Retry-After, in seconds."""

    def __init__(
        self, code: str, message: str, status_code: int | None = 429, retry_after: float = 0.0
    ) -> None:
        super().__init__(code, message, status_code)
        self.retry_after = retry_after


class ServerError(APIError):
    """5xx: the server failed; its log says why."""


class InvalidResponseError(ForgeClientError):
    """The answer is not what the route documents (a proxy's page, another service)."""


class APIConnectionError(ForgeClientError):
    """No answer: the server could not be reached, or the connection broke."""


class APITimeoutError(APIConnectionError):
    """No answer within the client's timeout."""


class StreamLostError(APIConnectionError):
    """A stream could not reconnect within its `reconnect_for` seconds."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: InvalidRequestError,
    422: InvalidRequestError,
}


def error_for_status(
    status_code: int, code: str, message: str, retry_after: float = 0.0
) -> APIError:
    """The exception for an error answer."""
    if status_code == 429:
        return RateLimitError(code, message, status_code, retry_after)
    if status_code >= 500:
        return ServerError(code, message, status_code)
    return _BY_STATUS.get(status_code, APIError)(code, message, status_code)
