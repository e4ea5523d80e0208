"""The refusal every layer raises for a request that cannot be carried out."""

from __future__ import annotations


class Refused(Exception):
    """A request that cannot be carried out; the message tells the user why and what to do."""

    def __init__(self, message: str, *, code: str = "invalid", field: str | None = None, status: int = 400):
        super().__init__(message)
        self.code = code
        self.field = field
        self.status = status
