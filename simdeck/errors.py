"""Errors the client raises; each message says what is wrong and what to do."""


class SimdeckError(Exception):
    """A request the server refused, or a server that could not be reached."""

    def __init__(
        self, message: str, *, code: str = "error", status: int | None = None, field: str | None = None
    ):
        super().__init__(message)
        self.code = code
        self.status = status
        self.field = field


class NotFound(SimdeckError):
    pass


class AuthenticationFailed(SimdeckError):
    pass


class ServerUnreachable(SimdeckError):
    pass
