"""The aiocoap plumbing of the local LwM2M server.

The aiocoap site that hands every request to ``LocalLwm2mServer.handle``,
the asyncio-side coroutines that ``LocalLwm2mServer`` crosses with
``aio_as_trio`` (a request, an observation, the proactive cancel of an
observation), CoAP code conversions, and the workarounds for aiocoap 0.4.17.

Design note: everything here runs in (or talks to) the asyncio loop that
trio-asyncio opens for the server; nothing here touches Trio, so the
server's Trio side crosses into asyncio only through these functions
(STYLE P2).

What aiocoap 0.4.17 does that we work around
--------------------------------------------
* ``tinydtls_server`` binds to the given port plus one (5683 + 1 = 5684),
  so the port asked for is passed minus one; it cannot bind to the any
  address (``0.0.0.0``, ``::``).
* The DTLS server transport does not recognise the remotes it creates, so a request
  addressed to a DTLS client fails with ``NoRequestInterface``; the
  transport's ``recognize_remote`` is replaced on the instance.
* The ``udp6`` transport leaves its socket open when ``bind()`` fails; the
  server closes it.
* XXX: ``tinydtls_server`` never purges its DTLS sessions (its purge
  method is never called) and has no handshake timeout: each peer address
  keeps a session and a timer task until the server stops.  Fine for tests
  and a local cloud of a few devices; a long-running server with many
  clients would grow.
* trio-asyncio re-raises whatever asyncio would only log (a done-callback
  failing, e.g. the DTLS retransmission tasks at shutdown) into the loop's
  nursery; a handler that logs is installed instead.
* aiocoap gives every request a fresh token and cancels observations only
  reactively (the notification after the cancel is still acknowledged, the
  next one gets a Reset).  ``cancel_observe`` sends the proactive cancel, a
  GET with Observe = 1 and the observation's token, through aiocoap's
  message layer itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final

import aiocoap
import aiocoap.error
import aiocoap.resource
import trio
from aiocoap.numbers.codes import Code

from backends.aio import asyncio_error_logger
from protocols.lwm2m_formats import ContentFormat, Path
from sandbox.lwm2m_events import Lwm2mTimeout, Lwm2mUnreachable
from sandbox.lwm2m_registry import Lwm2mRequest

if TYPE_CHECKING:
    from sandbox.lwm2m_server import LocalLwm2mServer


# ---------------------------------------------------------------------------
# CoAP codes


def _code(dotted: str) -> Code:
    major, _, minor = dotted.partition(".")
    return Code((int(major) << 5) | int(minor))


def _dotted(code: Code) -> str:
    return str(code.dotted)


# ---------------------------------------------------------------------------
# Logging


_log_asyncio_error = asyncio_error_logger(
    "lwm2m", actor="sandbox.lwm2m", level="warning"
)

#: What aiocoap logs as a warning for an ordinary end of a DTLS session:
#: a client's close_notify (a warning-level alert, code 0) and its own
#: teardown racing the message layer at shutdown.
_ROUTINE_DTLS_WARNINGS: Final = (
    "Unhandled alert level 1 code 0",
    "Internal shutdown sequence mismatch",
)


def _not_routine(record: logging.LogRecord) -> bool:
    """Filter for the server's aiocoap loggers: drop routine session ends."""
    message = record.getMessage()
    return not any(message.startswith(text) for text in _ROUTINE_DTLS_WARNINGS)


for _name in ("lwm2m-coap", "lwm2m-coaps"):
    logging.getLogger(_name).addFilter(_not_routine)


# ---------------------------------------------------------------------------
# Workarounds and helpers


def _segments(path: Path) -> tuple[str, ...]:
    return tuple(segment for segment in str(path).split("/") if segment)


def _diagnostic(message: aiocoap.Message) -> str:
    return str(message.payload.decode("utf-8", errors="replace"))[:200]


def _close_abandoned_sockets(exc: BaseException) -> None:
    # XXX: aiocoap 0.4.17's udp6 transport creates its socket, then binds it,
    # and leaves it open when bind() fails (a port in use); its
    # ResourceWarning would surface later, wherever the GC runs.
    traceback = exc.__traceback__
    while traceback is not None:
        sock = traceback.tb_frame.f_locals.get("sock")
        if isinstance(sock, socket.socket):
            sock.close()
        traceback = traceback.tb_next


def _recognise_dtls_remotes(interface: Any) -> None:
    # XXX: aiocoap 0.4.17's DTLS server transport answers recognize_remote()
    # only for plain simplesocketserver addresses, never for the DTLS ones it
    # makes, so Context.request() toward a DTLS client finds no interface.
    from aiocoap.transports.tinydtls_server import _AddressDTLS

    pool = interface._pool

    async def recognize_remote(remote: object) -> bool:
        return isinstance(remote, _AddressDTLS) and remote._protocol is pool

    interface.recognize_remote = recognize_remote


# ---------------------------------------------------------------------------
# asyncio side


async def _aio_request(
    context: aiocoap.Context, message: aiocoap.Message
) -> aiocoap.Message:
    response: aiocoap.Message = await context.request(message).response
    return response


async def _aio_observe(
    context: aiocoap.Context,
    message: aiocoap.Message,
    deliver: Callable[[aiocoap.Message], None],
) -> aiocoap.Message:
    request = context.request(message)
    observation = request.observation
    try:
        first: aiocoap.Message = await request.response
        deliver(first)
        if first.code.is_successful() and first.opt.observe is not None:
            async for notification in observation:
                deliver(notification)
        return first
    finally:
        if observation is not None and not observation.cancelled:
            observation.cancel()


async def _aio_cancel_observation(
    context: aiocoap.Context,
    response: aiocoap.Message,
    path: Path,
    accept: ContentFormat | None,
) -> None:
    """Send the GET with Observe = 1 that cancels an observation.

    Its answer carries the observation's token, so it reaches the original
    request and ends its observation there.
    """
    # XXX: aiocoap 0.4.17 gives every request a fresh token and cancels
    # observations only reactively, so the GET goes to the message layer
    # directly, with the token of the observation's responses.
    message = aiocoap.Message(code=aiocoap.GET, uri_path=_segments(path), observe=1)
    message.token = response.token
    message.remote = response.remote
    if accept is not None:
        message.opt.accept = int(accept)
    interface = await context.find_remote_and_interface(message)
    interface.token_interface.send_message(message, lambda: None)


class _Lwm2mSite(aiocoap.resource.Resource, aiocoap.resource.PathCapable):
    """The whole server as one aiocoap resource: every path ends here."""

    def __init__(self, server: LocalLwm2mServer) -> None:
        super().__init__()
        self._server = server

    async def render(self, request: aiocoap.Message) -> aiocoap.Message:
        content_format = request.opt.content_format
        lwm2m_request = Lwm2mRequest(
            method=str(request.code.name),
            path=tuple(request.opt.uri_path),
            query=tuple(request.opt.uri_query),
            payload=bytes(request.payload),
            content_format=None if content_format is None else int(content_format),
        )
        reply = self._server.handle(
            lwm2m_request, self._server._peer_of(request.remote)
        )
        response = aiocoap.Message(code=_code(reply.code))
        if reply.location:
            response.opt.location_path = reply.location
        if reply.diagnostic and not response.code.is_successful():
            response.payload = reply.diagnostic.encode("utf-8")
        return response


@contextlib.contextmanager
def request_errors(endpoint: str, what: str, timeout: float) -> Iterator[None]:
    """Turn the failure of a request toward a device into the server's errors.

    ``what`` names the request ("GET /3/0/1"); ``timeout`` is the bound the
    caller put on it with ``trio.fail_after``.
    """
    try:
        yield
    except trio.TooSlowError:
        raise Lwm2mTimeout(
            f"no answer from {endpoint!r} to {what} within {timeout} s"
        ) from None
    except aiocoap.error.Error as exc:
        reason = str(exc) or type(exc).__name__
        raise Lwm2mUnreachable(f"{what} to {endpoint!r} failed: {reason}") from exc
    except asyncio.CancelledError:
        # aiocoap cancelled it (shutdown), not Trio (STYLE P3).
        raise Lwm2mUnreachable(
            f"{what} to {endpoint!r} was cancelled: the server is stopping"
        ) from None
