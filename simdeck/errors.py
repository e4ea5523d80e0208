"""Errors the client raises; each message says what is wrong and what to do.

Every error of a request is a :class:`SimdeckError` carrying the server's
code, HTTP status and the field at fault; the subclasses say what kind of
problem it is, and the CLI turns each into its own exit code.
"""

from __future__ import annotations


class SimdeckError(Exception):
    """A request the server refused, or a server that could not be reached."""

    exit_code = 1

    def __init__(
        self, message: str, *, code: str = "error", status: int | None = None, field: str | None = None
    ):
        super().__init__(message)
        self.code = code
        self.status = status
        self.field = field


class InvalidInput(SimdeckError, ValueError):
    """The request itself is wrong (400, 413): a bad value, a missing parameter."""

    exit_code = 2


class NotFound(SimdeckError):
    """No such task, group or file, or it belongs to someone else (404)."""

    exit_code = 3


class InvalidTaskId(NotFound, ValueError):
    """Not even shaped like a task id; no request was sent."""


class AuthenticationFailed(SimdeckError):
    """No API key, or one the server does not accept (401)."""

    exit_code = 4


class PermissionDenied(SimdeckError):
    """The key is valid but may not do this (403)."""

    exit_code = 4


class Refused(SimdeckError):
    """The request is fine but cannot be carried out now (409), e.g. the task is not running."""

    exit_code = 6


class ServerError(SimdeckError):
    """The server failed (5xx) or its machine did not answer."""

    exit_code = 7


class ServerUnreachable(SimdeckError):
    """No answer at all: the server is down, restarting, or the address is wrong."""

    exit_code = 5


def for_status(status: int) -> type[SimdeckError]:
    """The error class for an HTTP status code."""
    if status in (400, 413, 422):
        return InvalidInput
    if status == 401:
        return AuthenticationFailed
    if status == 403:
        return PermissionDenied
    if status == 404:
        return NotFound
    if status == 409:
        return Refused
    if status >= 500:
        return ServerError
    return SimdeckError
