"""What the local LwM2M server tells its callers: events and errors.

``Lwm2mEvent`` (of an ``EventKind``) records what happened (registrations,
Sends, notifications, bootstraps); the ``Lwm2mServerError`` family is what
its Trio methods raise.  ``sandbox.lwm2m_server`` re-exports them all.

Design note: they sit below the server and its bootstrap role, which both
emit events and raise these errors, so neither imports the other.
"""

from __future__ import annotations

from enum import StrEnum

import attrs

from protocols.lwm2m_formats import Path, Record
from sandbox.lwm2m_registry import Registration


class EventKind(StrEnum):
    """What an ``Lwm2mEvent`` reports."""

    REGISTERED = "registered"
    UPDATED = "updated"
    DEREGISTERED = "deregistered"
    EXPIRED = "expired"
    SEND = "send"
    NOTIFICATION = "notification"
    BOOTSTRAP_REQUESTED = "bootstrap_requested"
    BOOTSTRAPPED = "bootstrapped"
    BOOTSTRAP_FAILED = "bootstrap_failed"


@attrs.frozen(kw_only=True)
class Lwm2mEvent:
    """Something that happened, numbered from 0 in order (``seq``).

    ``records`` are a Send's, a notification's, or what a bootstrap wrote;
    ``detail`` says why a bootstrap failed.
    """

    seq: int
    kind: EventKind
    endpoint: str
    time: float
    registration: Registration | None = None
    records: tuple[Record, ...] = ()
    path: Path | None = None
    detail: str = ""


class Lwm2mServerError(Exception):
    """Base class of the errors the server raises toward its Trio callers."""


class NotRegistered(Lwm2mServerError):
    """The endpoint has no registration (or lost it while a request waited)."""


class Lwm2mRequestError(Lwm2mServerError):
    """The client answered with an error code, or with an unusable payload."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class Lwm2mUnreachable(Lwm2mServerError):
    """The request could not be delivered (retransmissions ran out, no
    DTLS session, the server stopped)."""


class Lwm2mTimeout(Lwm2mServerError):
    """No response within ``request_timeout``."""
