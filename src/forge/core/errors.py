"""Every error Forge reports to a caller. The API maps each to its HTTP status in one place."""

from __future__ import annotations


class ForgeError(Exception):
    """Base class: a machine-readable `code`, a `message` that says what to fix, an HTTP status."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidRequest(ForgeError):
    """Raised when a request is well-formed but its values cannot be used (unknown profile, ...)."""

    status_code = 422
    code = "invalid_request"


class TooLarge(ForgeError):
    """Something in the request is over a configured size limit (the message names it)."""

    status_code = 413


class Forbidden(ForgeError):
    """Raised when the caller's key may not do this: an admin route, or another owner named."""

    status_code = 403
    code = "forbidden"


class NotFound(ForgeError):
    """Raised when an object does not exist or belongs to another owner."""

    status_code = 404
    code = "not_found"


class Conflict(ForgeError):
    """Raised when a request clashes with the current state (reused request_id, agent busy, ...)."""

    status_code = 409
    code = "conflict"


class Unavailable(ForgeError):
    """Raised when a dependency (database, runner) cannot serve the request right now."""

    status_code = 503
    code = "unavailable"


class ProvisioningFailed(ForgeError):
    """Raised when a workspace or sandbox cannot be created."""

    status_code = 500
    code = "provisioning_failed"
