"""The exception tree every backend maps its client library's failures into.

The cloud actor decides what to do with a failure from its type alone, so a
backend never lets a foreign exception (``ssl.SSLError``, ``OSError``, a gmqtt
or aiocoap error) escape: it raises one of these ``from`` the original.
"""

from __future__ import annotations

import errno


class BackendError(Exception):
    """A cloud backend operation failed.

    ``errno`` is the negative errno value the firmware's cloud wrapper would
    have returned for the same failure; it is what ends up in a
    ``CLOUD_EVT_ERROR`` when the failure is irrecoverable.
    """

    errno: int = -errno.EIO


class BackendNotSupported(BackendError):
    """The operation does not exist for this cloud (the wrapper's -ENOTSUP)."""

    errno = -errno.ENOTSUP


class BackendBusy(BackendError):
    """A connection attempt is already in progress (the wrapper's -EINPROGRESS)."""

    errno = -errno.EINPROGRESS


class BackendNotConnected(BackendError):
    """The operation needs a connection and there is none (-ENOTCONN)."""

    errno = -errno.ENOTCONN


class BackendConnectError(BackendError):
    """A connection attempt failed before the session was established."""

    errno = -errno.ECONNREFUSED


class BackendTimeout(BackendConnectError):
    """A connection attempt did not complete within its deadline."""

    errno = -errno.ETIMEDOUT


class BackendRefused(BackendConnectError):
    """The peer refused the session (a CONNACK code, a TLS alert, a DTLS alert).

    ``permanent`` is true when retrying with the same credentials cannot help
    (bad certificate, not authorised); the backoff still owns the retry, but
    the log names the cause as permanent on every attempt.
    """

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


class BackendClosed(BackendError):
    """The connection was closed by us (the Trio sense of *Closed*)."""

    errno = -errno.ESHUTDOWN


class BackendBroken(BackendError):
    """The connection was broken by the peer or the network (*Broken*)."""

    errno = -errno.ECONNRESET
