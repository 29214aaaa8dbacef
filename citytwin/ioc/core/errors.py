"""Errors the core raises; the server maps each to one HTTP status (see the comments)."""

from __future__ import annotations


class IocError(Exception):
    """A problem the caller can fix or must be told about: a message, and the field it is about."""

    def __init__(self, message: str, field: str | None = None):
        self.message = message
        self.field = field
        super().__init__(message)


class Invalid(IocError):
    """Bad input: 400 (bad coordinates, missing field, bad q, …)."""


class NotFound(IocError):
    """404."""


class UnknownService(Invalid):
    """An unknown Open311 service_code: the GeoReport v2 spec says 400."""


class Conflict(IocError):
    """409: an entity that exists on create, an illegal workflow transition, an alert already cleared."""


class Forbidden(IocError):
    """403: a device writing an entity that is not its own."""
