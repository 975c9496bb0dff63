"""CoAP over UDP and CoAP over DTLS 1.2 (PSK) for Trio, built on aiocoap.

Design
------
A ``CoapSession`` talks to one server and is single-use, like
``MqttSession``: ``run()`` opens its own ``trio_asyncio.open_loop()`` (STYLE
P4), creates one aiocoap context with a pinned transport (``udp6`` for
``coap://``, ``tinydtls`` for ``coaps://``; P8), serves until it is cancelled
or ``aclose()`` is called, and always shuts the context down, bounded and
shielded.  Every operation crosses into asyncio once, through a small
asyncio-flavoured helper called with ``aio_as_trio(helper, loop=...)`` (P2).

The server is a peer: the LwM2M server sends Read/Write/Execute/Observe
requests to the client over the same socket (and the same DTLS session).
They reach the context's ``serversite``, a catch-all ``_Site`` that hands
each one to the Trio ``handler`` with ``loop.trio_as_future`` and turns the
returned ``CoapResponse`` into a CoAP message.  A GET with Observe: 0
registers an observation in aiocoap; ``notify()`` re-renders the matching
observations, and the handler renders each notification as a normal GET.

``coaps://``: the DTLS handshake is done eagerly in ``run()`` (before
``task_status.started()``), so a refused key is a failure to start, bounded
by ``handshake_timeout``; the session then holds the one DTLS connection for
its whole life.  aiocoap keeps connections in a weak pool, and without our
reference an idle session would be garbage-collected, which resets the DTLS
session under the server's feet.  Requests from the server arrive on that
connection and are answered on it (aiocoap's tinydtls client transport feeds
every decrypted datagram, request or response, to its message manager).

What aiocoap 0.4.17 does that we undo or work around:

* The tinydtls transport would quietly open a new DTLS connection (another
  handshake from another port) when the first one failed.  Our subclass
  opens exactly one; once it is lost the session is broken.
* A DTLS server that does not accept our PSK (OpenSSL, for one) discards
  the Finished message it cannot decrypt, as RFC 6347 allows, and sends no
  alert, so tinydtls never reports anything.  We count the datagrams the
  server sent during the handshake: an answering server that does not
  finish the handshake in ``handshake_timeout`` refused the PSK identity or
  key; a silent one is a timeout.
* Errors reach requests as ``NetworkError`` wrapping the cause (an
  ``OSError`` from ICMP, tinydtls' ``FatalDTLSError``); a proxy in front of
  the message manager records them per remote to classify them.
* tinydtls reports a server's close_notify as a warning-level alert, which
  aiocoap ignores, leaving a dead session in use (and crashing a callback on
  the re-handshake tinydtls then attempts).  We treat it as the end of the
  session.
* ``ObservableResource`` fails in its ``finally`` when an observation is not
  accepted, so every Observe registration is accepted; a non-GET one is
  deregistered before its first response.
* trio-asyncio re-raises into the loop what asyncio would only log; the
  tinydtls transport leaves such noise at shutdown, so the session installs
  a handler that logs instead.

Errors map to ``backends.errors``: a refused handshake is ``BackendRefused``
(``permanent``), no handshake answer ``BackendTimeout``, an unreachable port
``BackendConnectError``, a lost DTLS session ``BackendBroken``, a request
without a response in ``request_timeout`` ``BackendTimeout``, a closed
session ``BackendClosed`` (also for an asyncio cancellation Trio did not
cause, P3).

XXX: tinydtls (through DTLSSocket) has neither DTLS Connection ID nor
session resumption, which the firmware uses: a new session always costs a
full handshake, and a NAT rebinding of our address loses the session.  Its
only cipher suite is TLS_PSK_WITH_AES_128_CCM_8 (LwM2M's mandatory one).

XXX: aiocoap renders an observation's notifications with ``render()``
directly, without its block-wise machinery, so a notification larger than
one datagram is sent whole (and may be dropped by the network).
"""

from __future__ import annotations

import asyncio
import errno
import re
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, TypeAlias
from urllib.parse import urlsplit

import aiocoap  # type: ignore[import-untyped]
import aiocoap.error  # type: ignore[import-untyped]
import aiocoap.resource  # type: ignore[import-untyped]
import attrs
import structlog
import trio
from aiocoap.credentials import (  # type: ignore[import-untyped]
    DTLS as DtlsCredentials,
)
from aiocoap.numbers import COAP_PORT, COAPS_PORT  # type: ignore[import-untyped]
from aiocoap.numbers.codes import Code  # type: ignore[import-untyped]
from aiocoap.numbers.constants import (  # type: ignore[import-untyped]
    TransportTuning,
)
from aiocoap.transports import (  # type: ignore[import-untyped]
    tinydtls as aiocoap_tinydtls,
)

from backends.aio import asyncio_error_logger, run_aio
from backends.errors import (
    BackendBroken,
    BackendClosed,
    BackendConnectError,
    BackendError,
    BackendRefused,
    BackendTimeout,
)

if TYPE_CHECKING:
    from aiocoap.protocol import (  # type: ignore[import-untyped]
        ServerObservation,
    )

# Not get_logger().bind(): see backends/mqtt_transport.py.
log = structlog.get_logger(actor="coap")

SHUTDOWN_GRACE: Final = 5.0
"""Seconds the shielded context shutdown may take; aiocoap's own bound
(``SHUTDOWN_TIMEOUT``) is 3 s."""

HANDLER_ERROR_PAYLOAD: Final = b"internal error"
"""Payload of the 5.00 sent when the handler raises or answers nonsense."""

METHODS: Final = ("GET", "POST", "PUT", "DELETE", "FETCH", "iPATCH", "PATCH")
"""Request methods ``CoapSession.request`` accepts, as CoAP names them."""

_CODE_PATTERN: Final = re.compile(r"^([2-5])\.(\d\d)$")
"""A response code the handler may return: class 2 to 5, dotted."""

# TLS/DTLS alert descriptions (RFC 5246 7.2, RFC 4279 2) worth naming.
_ALERTS: Final = {
    0: "close_notify",
    10: "unexpected_message",
    20: "bad_record_mac",
    40: "handshake_failure",
    47: "illegal_parameter",
    50: "decode_error",
    51: "decrypt_error",
    70: "protocol_version",
    80: "internal_error",
    115: "unknown_psk_identity",
}

MAX_PSK_LEN: Final = 16
"""Longest key we give tinydtls: its DTLS_PSK_MAX_KEY_LEN in a default
build, and the firmware's key length.  With DTLSSocket 0.2.3, keys of 19
bytes and more make tinydtls abandon the handshake without any error we can
see (17 and 18 happened to work); a longer key is refused up front."""

MAX_PSK_IDENTITY_LEN: Final = 32
"""Longest PSK identity tinydtls sends (DTLS_PSK_MAX_CLIENT_IDENTITY_LEN);
``urn:imei:`` and 15 digits is 24."""

# Alerts by which a server says our PSK identity or key is wrong.
_CREDENTIAL_ALERTS: Final = frozenset({20, 51, 115})


# ---------------------------------------------------------------------------
# Settings and messages


def _check_uri(instance: CoapSettings, attribute: object, uri: str) -> None:
    parts = urlsplit(uri)
    if parts.scheme not in ("coap", "coaps") or not parts.hostname:
        raise ValueError(
            f"CoAP server URI {uri!r}: expected coap://host[:port] or "
            "coaps://host[:port]"
        )
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise ValueError(f"CoAP server URI {uri!r}: {exc}") from None
    if parts.path not in ("", "/") or parts.query:
        raise ValueError(f"CoAP server URI {uri!r}: must not have a path or query")


def _positive(instance: CoapSettings, attribute: Any, value: float) -> None:
    if not value > 0:
        raise ValueError(f"CoAP setting {attribute.name} must be > 0, not {value!r}")


@attrs.frozen
class CoapSettings:
    """Where to connect and how.

    ``psk_identity`` and ``psk`` are required for ``coaps://`` (the LwM2M
    identity is the endpoint name).  ``ack_timeout`` is CoAP's ACK_TIMEOUT
    for our confirmable messages, the firmware's 4 s by default.
    ``handshake_timeout`` bounds the DTLS handshake in ``run()``.
    """

    uri: str = attrs.field(validator=_check_uri)
    psk_identity: bytes = b""
    psk: bytes = b""
    request_timeout: float = attrs.field(default=93.0, validator=_positive)
    ack_timeout: float = attrs.field(default=4.0, validator=_positive)
    handshake_timeout: float = attrs.field(default=30.0, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if self.secure and not (self.psk_identity and self.psk):
            raise ValueError(
                f"CoAP server URI {self.uri!r}: coaps:// needs a PSK identity and a key"
            )
        if len(self.psk) > MAX_PSK_LEN:
            raise ValueError(
                f"CoAP server URI {self.uri!r}: the DTLS PSK is {len(self.psk)} "
                f"bytes; tinydtls takes at most {MAX_PSK_LEN}"
            )
        if len(self.psk_identity) > MAX_PSK_IDENTITY_LEN:
            raise ValueError(
                f"CoAP server URI {self.uri!r}: the PSK identity is "
                f"{len(self.psk_identity)} bytes; tinydtls takes at most "
                f"{MAX_PSK_IDENTITY_LEN}"
            )

    @property
    def secure(self) -> bool:
        """Whether this is CoAP over DTLS."""
        return urlsplit(self.uri).scheme == "coaps"

    @property
    def host(self) -> str:
        """The server's host name or address."""
        host = urlsplit(self.uri).hostname
        assert host is not None  # checked by the validator
        return host

    @property
    def port(self) -> int:
        """The server's UDP port (5683 or 5684 when the URI has none)."""
        port: int | None = urlsplit(self.uri).port
        if port is not None:
            return port
        default: int = COAPS_PORT if self.secure else COAP_PORT
        return default


@attrs.frozen
class CoapRequest:
    """A request from the server, as the handler sees it.

    ``observe`` is 0 on an Observe registration and ``None`` on a plain
    request and on the re-rendering of a notification.  ``remote`` is the
    sender as a URI base (``coap://127.0.0.1:5683``).
    """

    method: str
    path: tuple[str, ...]
    query: tuple[str, ...]
    payload: bytes
    content_format: int | None
    accept: int | None
    observe: int | None
    remote: str


@attrs.frozen
class CoapResponse:
    """A response: ours to the server's requests, or the server's to ours.

    ``code`` is dotted (``"2.05"``); ``location_path`` is the Location-Path
    of a 2.01 Created (the LwM2M registration's ``/rd/<id>``).
    """

    code: str
    payload: bytes = b""
    content_format: int | None = None
    location_path: tuple[str, ...] = ()

    @property
    def successful(self) -> bool:
        """Whether the code is 2.xx."""
        return self.code.startswith("2.")


Handler: TypeAlias = Callable[[CoapRequest], Awaitable[CoapResponse]]
"""A Trio coroutine function answering the server's requests."""


def split_path(path: str) -> tuple[str, ...]:
    """``"/3/0/1"`` -> ``("3", "0", "1")``; ``""`` and ``"/"`` -> ``()``."""
    stripped = path.strip("/")
    return tuple(stripped.split("/")) if stripped else ()


# ---------------------------------------------------------------------------
# aiocoap adaptation (asyncio context)


class _Tuning(TransportTuning):  # type: ignore[misc]
    """CoAP transmission parameters with the firmware's ACK_TIMEOUT."""

    def __init__(self, ack_timeout: float, reliability: bool | None) -> None:
        self.ACK_TIMEOUT = ack_timeout
        self.reliability = reliability


class _SessionLost(aiocoap.error.NetworkError):  # type: ignore[misc]
    """The session's DTLS connection is gone and no other is opened."""


class _ErrorRecorder:
    """Stands between a DTLS transport and its message manager.

    Forwards everything and remembers the first error dispatched for each
    remote, so the session can tell a refused handshake, an ICMP error and a
    lost session apart.
    """

    def __init__(self, manager: Any, on_error: Callable[[Any, Exception], None]):
        self._manager = manager
        self._on_error = on_error

    def dispatch_error(self, exc: Exception, remote: Any) -> None:
        self._on_error(remote, exc)
        self._manager.dispatch_error(exc, remote)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._manager, name)


class _DtlsConnection(aiocoap_tinydtls.DTLSClientConnection):  # type: ignore[misc]
    """tinydtls' client connection, counting the datagrams it receives."""

    datagrams_received = 0

    class SingleConnection(
        aiocoap_tinydtls.DTLSClientConnection.SingleConnection  # type: ignore[misc]
    ):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            parent = self.parent()
            if parent is not None:
                parent.datagrams_received += 1
            super().datagram_received(data, addr)

    def _event(self, level: int, code: int) -> None:
        # tinydtls reports a peer's close_notify at the warning level, which
        # aiocoap only logs: the session stays in the pool, dead, and the
        # next write makes tinydtls handshake again on it, whose CONNECTED
        # event then fails on aiocoap's already resolved future.  A closed
        # session is a lost session.
        if (level, code) == (
            aiocoap_tinydtls.LEVEL_WARNING,
            aiocoap_tinydtls.CODE_CLOSE_NOTIFY,
        ):
            self._inject_error(aiocoap_tinydtls.CloseNotifyReceived())
            return
        connecting = getattr(self, "_connecting", None)
        if (
            (level, code)
            == (aiocoap_tinydtls.LEVEL_NOALERT, aiocoap_tinydtls.DTLS_EVENT_CONNECTED)
            and connecting is not None
            and connecting.done()
        ):
            return
        super()._event(level, code)

    @property
    def connected(self) -> bool:
        """Whether the handshake completed (aiocoap drops its send queue)."""
        return self._queue is None

    def local_port(self) -> int | None:
        """Our UDP port, once the socket exists."""
        transport = getattr(self, "_transport", None)
        if transport is None:
            return None
        sockname = transport.get_extra_info("sockname")
        return None if sockname is None else int(sockname[1])


class _DtlsInterface(aiocoap_tinydtls.MessageInterfaceTinyDTLS):  # type: ignore[misc]
    """The tinydtls client transport, limited to one connection."""

    connection: _DtlsConnection | None = None

    def _connection_for_address(
        self, host: str, port: int, psk_id: bytes, psk: bytes
    ) -> _DtlsConnection:
        existing: _DtlsConnection | None = self._pool.get((host, port, psk_id))
        if existing is not None:
            return existing
        if self.connection is not None:
            raise _SessionLost(
                "the DTLS session is closed, and a CoAP session opens only one"
            )
        self.connection = _DtlsConnection(host, port, psk_id, psk, self)
        self._pool[(host, port, psk_id)] = self.connection
        return self.connection


@attrs.define(eq=False)
class _Observation:
    path: tuple[str, ...]
    request: Any
    server_observation: ServerObservation
    rendered: bool = False


class _Site(
    aiocoap.resource.ObservableResource,  # type: ignore[misc]
    aiocoap.resource.PathCapable,  # type: ignore[misc]
):
    """The catch-all server site: every request goes to the session."""

    def __init__(self, session: CoapSession) -> None:
        super().__init__()
        self._session = weakref.ref(session)
        self.observations: dict[int, _Observation] = {}

    async def add_observation(self, request: Any, observation: Any) -> None:
        entry = _Observation(tuple(request.opt.uri_path), request, observation)
        key = id(request)
        self.observations[key] = entry

        def cancelled() -> None:
            if self.observations.get(key) is entry:
                del self.observations[key]
            log.debug("coap_observation_ended", path=_join(entry.path))

        observation.accept(cancelled)
        if request.code not in (Code.GET, Code.FETCH):
            # Only GET and FETCH observe; answered once, then forgotten.
            observation.deregister()

    async def render(self, request: Any) -> aiocoap.Message:
        session = self._session()
        if session is None:  # pragma: no cover - the context outlived us
            return aiocoap.Message(code=Code.SERVICE_UNAVAILABLE)
        entry = self.observations.get(id(request))
        observe = request.opt.observe
        if entry is not None and entry.request is request:
            if entry.rendered:
                observe = None
            entry.rendered = True
        return await session._render(request, observe)

    def trigger(self, prefix: tuple[str, ...], include_ancestors: bool) -> int:
        """Re-render the observations under ``prefix``; return how many."""
        count = 0
        for entry in list(self.observations.values()):
            path = entry.path
            below = path[: len(prefix)] == prefix
            above = include_ancestors and prefix[: len(path)] == path
            if below or above:
                entry.server_observation.trigger()
                count += 1
        return count


def _join(path: tuple[str, ...]) -> str:
    return "/" + "/".join(path)


_log_asyncio_error = asyncio_error_logger("coap", actor="coap")


def _describe_alert(code: int) -> str:
    name = _ALERTS.get(code)
    return f"alert {code}" if name is None else f"alert {code} ({name})"


def _response_from(message: aiocoap.Message) -> CoapResponse:
    content_format = message.opt.content_format
    return CoapResponse(
        code=message.code.dotted,
        payload=bytes(message.payload),
        content_format=None if content_format is None else int(content_format),
        location_path=tuple(message.opt.location_path),
    )


# ---------------------------------------------------------------------------
# The session


class CoapSession:
    """One CoAP (or CoAP over DTLS) association with one server.

    Start ``run()`` in a nursery (``await nursery.start(session.run)``);
    ``request()`` and ``notify()`` work once it has started.  The session is
    single-use: once ``run()`` has returned it cannot be started again.
    """

    def __init__(self, settings: CoapSettings, handler: Handler | None = None):
        self.settings = settings
        self._handler = handler
        self._loop: Any = None
        self._context: aiocoap.Context | None = None
        self._site: _Site | None = None
        self._dtls: _DtlsInterface | None = None
        self._connection: _DtlsConnection | None = None
        self._errors: dict[Any, Exception] = {}
        self._started = False
        self._running = False
        self._closing = False
        self._broken_reason: str | None = None
        self._stop = trio.Event()
        self._finished = trio.Event()
        self._con = _Tuning(settings.ack_timeout, None)
        self._non = _Tuning(settings.ack_timeout, False)

    # -- Trio-facing API ----------------------------------------------------

    @property
    def broken(self) -> bool:
        """Whether the DTLS session was lost (``run()`` then raises)."""
        return self._broken_reason is not None

    @property
    def local_port(self) -> int | None:
        """Our UDP port, once ``run()`` has started (``None`` before)."""
        if self._connection is not None:
            return self._connection.local_port()
        if self._context is None or self.settings.secure:
            return None
        interface = self._context.request_interfaces[0].token_interface
        sock = interface.message_interface.transport.get_extra_info("socket")
        return int(sock.getsockname()[1])

    @property
    def observation_count(self) -> int:
        """How many observations the server holds on our resources."""
        return 0 if self._site is None else len(self._site.observations)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Open the context (and the DTLS session), serve until stopped.

        Returns after ``aclose()``; cancelling it is the other way to stop.
        The context is shut down in every case, shielded, within
        ``SHUTDOWN_GRACE``.  Errors are raised bare, not in a group.

        Raises:
            BackendRefused: the DTLS handshake failed: the server sent a
                fatal alert or answered without accepting our PSK identity
                or key (``permanent``).
            BackendTimeout: no answer to the DTLS handshake.
            BackendConnectError: the server's address cannot be resolved
                or its port is unreachable (ICMP).
            BackendBroken: after start, the DTLS session was lost (a fatal
                alert, close_notify, ICMP).
            BackendClosed: ``aclose()`` was called before ``run()``.
            RuntimeError: ``run()`` was called a second time.

        Logging:
            INFO ``coap_started`` (``uri``, ``local_port``), ``coap_stopped``;
            WARNING ``coap_start_failed``, ``coap_session_lost``,
            ``coap_shutdown_timeout``; ERROR ``coap_asyncio_error``,
            ``coap_handler_failed``.
        """
        if self._started:
            raise RuntimeError("a CoapSession runs only once")
        self._started = True
        if self._closing:
            self._finished.set()
            raise BackendClosed(
                f"{self.settings.uri}: the session was closed before it ran"
            )
        import trio_asyncio

        error: Exception | None = None
        try:
            async with trio_asyncio.open_loop() as loop:
                loop.set_exception_handler(_log_asyncio_error)
                self._loop = loop
                # Exceptions are caught inside the loop and re-raised outside
                # it; open_loop's nurseries would wrap them in a group.
                try:
                    await self._open()
                    self._running = True
                    log.info(
                        "coap_started",
                        uri=self.settings.uri,
                        local_port=self.local_port,
                    )
                    task_status.started()
                    await self._stop.wait()
                    if self._broken_reason is not None:
                        raise BackendBroken(
                            f"{self.settings.uri}: {self._broken_reason}"
                        )
                except asyncio.CancelledError as exc:
                    error = BackendClosed(
                        f"{self.settings.uri}: the asyncio side cancelled the session"
                    )
                    error.__cause__ = exc
                except Exception as exc:
                    error = exc
                finally:
                    self._running = False
                    self._closing = True
                    await self._shutdown()
        finally:
            self._closing = True
            self._loop = None
            self._finished.set()
        if error is not None:
            if not isinstance(error, BackendBroken):
                log.warning(
                    "coap_start_failed", uri=self.settings.uri, error=str(error)
                )
            raise error
        log.info("coap_stopped", uri=self.settings.uri)

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: tuple[str, ...] | list[str] = (),
        payload: bytes = b"",
        content_format: int | None = None,
        accept: int | None = None,
        confirmable: bool = True,
    ) -> CoapResponse:
        """Send a request to the server and return its response.

        Any response code is returned, 4.xx and 5.xx included; only a
        transport failure raises.  ``path`` is ``"/rd"`` style; ``query``
        holds one ``key=value`` string per Uri-Query option.

        Raises:
            ValueError: unknown ``method``.
            BackendTimeout: no response within ``request_timeout`` (or
                aiocoap gave up retransmitting).
            BackendConnectError: the port is unreachable (ICMP).
            BackendBroken: the DTLS session was lost.
            BackendClosed: the session is not running (not started yet,
                closing or closed).

        Cancellation:
            The request's retransmissions stop; a response arriving later
            is ignored.
        """
        if method not in METHODS:
            raise ValueError(f"unknown CoAP method {method!r}; use one of {METHODS}")
        self._check_usable()
        message = aiocoap.Message(
            code=getattr(Code, method),
            uri=self.settings.uri,
            payload=payload,
            transport_tuning=self._con if confirmable else self._non,
        )
        message.opt.uri_path = split_path(path)
        message.opt.uri_query = tuple(query)
        if content_format is not None:
            message.opt.content_format = content_format
        if accept is not None:
            message.opt.accept = accept
        what = f"{method} {_join(split_path(path))} to {self.settings.uri}"
        try:
            with trio.fail_after(self.settings.request_timeout):
                response: CoapResponse = await run_aio(
                    self._loop, self._aio_request, message, what
                )
        except trio.TooSlowError:
            raise BackendTimeout(
                f"{what}: no response within {self.settings.request_timeout} s"
            ) from None
        except asyncio.CancelledError as exc:
            # Not caused by Trio (P3): the loop closed under the request.
            raise BackendClosed(f"{what}: the CoAP session closed") from exc
        log.debug("coap_response", request=what, code=response.code)
        return response

    def notify(self, path_prefix: str, *, include_ancestors: bool = False) -> None:
        """Send a notification to every observation at or under the path.

        Each matching observation is re-rendered by the handler as a GET.
        With ``include_ancestors`` observations of the path's parents (an
        LwM2M object or instance above a changed resource) are notified too.
        Does nothing when the session is not running.
        """
        loop, site = self._loop, self._site
        if not self._running or loop is None or site is None:
            return
        # Scheduled on the loop: ServerObservation needs the asyncio context.
        loop.call_soon(site.trigger, split_path(path_prefix), include_ancestors)

    async def aclose(self) -> None:
        """Stop ``run()`` and wait until it has shut the context down.

        Idempotent; before ``run()`` it just makes the session unusable.
        """
        self._closing = True
        self._stop.set()
        if self._started:
            await self._finished.wait()
        else:
            await trio.lowlevel.checkpoint()

    # -- internals (Trio) ---------------------------------------------------

    def _check_usable(self) -> None:
        if self._broken_reason is not None:
            raise BackendBroken(f"{self.settings.uri}: {self._broken_reason}")
        if not self._running or self._closing:
            raise BackendClosed(f"{self.settings.uri}: the CoAP session is not open")

    async def _open(self) -> None:
        if not self.settings.secure:
            await run_aio(self._loop, self._aio_open_plain)
            return
        # The asyncio side bounds the handshake; this is a backstop.
        with trio.move_on_after(self.settings.handshake_timeout + SHUTDOWN_GRACE):
            await run_aio(self._loop, self._aio_open_dtls)
            return
        raise BackendTimeout(  # pragma: no cover - the asyncio bound fired
            f"DTLS handshake with {self.settings.uri}: no result"
        )

    async def _shutdown(self) -> None:
        context = self._context
        if context is None:
            return
        with trio.move_on_after(SHUTDOWN_GRACE, shield=True) as scope:
            try:
                await run_aio(self._loop, self._aio_shutdown, context)
            except (Exception, asyncio.CancelledError) as exc:
                log.debug("coap_shutdown_error", error=repr(exc))
        if scope.cancelled_caught:
            log.warning("coap_shutdown_timeout", uri=self.settings.uri)
        self._context = None

    async def _call_handler(self, request: CoapRequest) -> CoapResponse:
        """Run the handler (Trio); never raises."""
        if self._handler is None:
            return CoapResponse("4.04")
        try:
            response = await self._handler(request)
        except Exception:
            log.exception(
                "coap_handler_failed", method=request.method, path=_join(request.path)
            )
            return CoapResponse("5.00", HANDLER_ERROR_PAYLOAD)
        if not isinstance(response, CoapResponse) or not _CODE_PATTERN.match(
            response.code
        ):
            log.error(
                "coap_handler_failed",
                method=request.method,
                path=_join(request.path),
                error=f"not a CoapResponse with a 2.xx-5.xx code: {response!r}",
            )
            return CoapResponse("5.00", HANDLER_ERROR_PAYLOAD)
        return response

    # -- internals (asyncio) ------------------------------------------------

    async def _aio_open_plain(self) -> None:
        site = _Site(self)
        self._site = site
        # A server context binds its udp6 socket now (any address, a free
        # port), so ``local_port`` is known before the first request.
        self._context = await aiocoap.Context.create_server_context(
            site, bind=("::", 0), loggername="coap", transports=["udp6"]
        )

    async def _aio_open_dtls(self) -> None:
        settings = self.settings
        context = await aiocoap.Context.create_client_context(
            loggername="coap", transports=["tinydtls"]
        )
        self._context = context
        manager = context.request_interfaces[0].token_interface
        stock = manager.message_interface
        if type(stock) is not aiocoap_tinydtls.MessageInterfaceTinyDTLS:
            raise RuntimeError(  # pragma: no cover - an aiocoap upgrade did it
                f"unexpected aiocoap DTLS transport {stock!r}"
            )
        # The stock interface holds nothing but an empty pool yet.
        interface = _DtlsInterface(
            _ErrorRecorder(manager, self._record_error), stock.log, stock.loop
        )
        manager.message_interface = interface
        self._dtls = interface
        site = _Site(self)
        self._site = site
        context.serversite = site
        context.client_credentials["coaps://*"] = DtlsCredentials(
            psk=settings.psk, client_identity=settings.psk_identity
        )
        connection = interface._connection_for_address(
            settings.host, settings.port, settings.psk_identity, settings.psk
        )
        self._connection = connection
        await asyncio.wait([connection._startup], timeout=settings.handshake_timeout)
        if connection.connected and connection not in self._errors:
            return
        raise self._handshake_error(connection)

    def _handshake_error(self, connection: _DtlsConnection) -> BackendError:
        settings = self.settings
        where = f"DTLS handshake with {settings.uri}"
        identity = settings.psk_identity.decode("utf-8", "replace")
        failure = self._errors.get(connection)
        connection.shutdown()
        if isinstance(failure, aiocoap_tinydtls.FatalDTLSError):
            code = int(failure.args[0]) if failure.args else -1
            if code in _CREDENTIAL_ALERTS:
                reason = f"the PSK identity {identity!r} or its key was refused"
            else:
                reason = "the handshake was aborted"
            return BackendRefused(
                f"{where} failed: {_describe_alert(code)}: {reason}", permanent=True
            )
        if isinstance(failure, aiocoap_tinydtls.CloseNotifyReceived):
            return BackendRefused(
                f"{where} failed: the server closed the session (close_notify)",
                permanent=True,
            )
        if isinstance(failure, OSError):
            return BackendConnectError(f"{where} failed: {_describe_os_error(failure)}")
        if failure is not None:
            return BackendConnectError(f"{where} failed: {failure!r}")
        if connection.datagrams_received:
            # Typical of a wrong key: OpenSSL drops the Finished it cannot
            # decrypt, RFC 6347 4.1.2.7, and sends no alert.
            return BackendRefused(
                f"{where} failed: the server answered ({connection.datagrams_received}"
                f" datagrams) but did not complete the handshake within "
                f"{settings.handshake_timeout} s; it refused the PSK identity "
                f"{identity!r} or its key",
                permanent=True,
            )
        return BackendTimeout(
            f"{where}: no answer within {settings.handshake_timeout} s"
        )

    def _record_error(self, remote: Any, exc: Exception) -> None:
        self._errors.setdefault(remote, exc)
        connection = self._connection
        if remote is not connection or connection is None or not connection.connected:
            return
        if self._broken_reason is None and not self._closing:
            self._broken_reason = f"the DTLS session was lost: {_describe_loss(exc)}"
            log.warning(
                "coap_session_lost", uri=self.settings.uri, reason=self._broken_reason
            )
            # Called in the asyncio context; Event.set() only reschedules.
            self._stop.set()

    async def _aio_request(self, message: aiocoap.Message, what: str) -> CoapResponse:
        context = self._context
        if context is None or self._closing:
            raise BackendClosed(f"{what}: the CoAP session is not open")
        try:
            response = await context.request(message).response
        except aiocoap.error.LibraryShutdown as exc:
            raise BackendClosed(f"{what}: the CoAP session closed") from exc
        except aiocoap.error.TimeoutError as exc:
            raise BackendTimeout(
                f"{what}: no acknowledgement after all retransmissions"
            ) from exc
        except aiocoap.error.NetworkError as exc:
            raise self._request_error(exc, what) from exc
        except aiocoap.error.Error as exc:
            raise BackendError(f"{what} failed: {exc!r}") from exc
        return _response_from(response)

    def _request_error(self, exc: BaseException, what: str) -> BackendError:
        if self._broken_reason is not None:
            return BackendBroken(f"{what} failed: {self._broken_reason}")
        cause = exc.__cause__ or exc
        if isinstance(cause, _SessionLost):
            return BackendBroken(f"{what} failed: {cause}")
        if isinstance(cause, OSError):
            return BackendConnectError(f"{what} failed: {_describe_os_error(cause)}")
        if isinstance(
            cause,
            (aiocoap_tinydtls.FatalDTLSError, aiocoap_tinydtls.CloseNotifyReceived),
        ):
            return BackendBroken(f"{what} failed: {_describe_loss(cause)}")
        return BackendConnectError(f"{what} failed: {cause!r}")

    async def _aio_shutdown(self, context: aiocoap.Context) -> None:
        try:
            await context.shutdown()
        finally:
            # Dropped only now: aiocoap's shutdown resets the DTLS peer.
            self._connection = None
            if self._dtls is not None:
                self._dtls.connection = None
            if self._site is not None:
                self._site.observations.clear()

    async def _render(self, request: Any, observe: int | None) -> aiocoap.Message:
        """Answer one request from the server through the Trio handler."""
        content_format = request.opt.content_format
        accept = request.opt.accept
        coap_request = CoapRequest(
            method=str(request.code),
            path=tuple(request.opt.uri_path),
            query=tuple(request.opt.uri_query),
            payload=bytes(request.payload),
            content_format=None if content_format is None else int(content_format),
            accept=None if accept is None else int(accept),
            observe=observe,
            remote=str(request.remote.uri_base),
        )
        response: CoapResponse = await self._loop.trio_as_future(
            self._call_handler, coap_request
        )
        match = _CODE_PATTERN.match(response.code)
        assert match is not None  # checked by _call_handler
        message = aiocoap.Message(
            code=Code(int(match[1]) * 32 + int(match[2])),
            payload=response.payload,
            transport_tuning=self._con,
        )
        if response.content_format is not None:
            message.opt.content_format = response.content_format
        if response.location_path:
            message.opt.location_path = response.location_path
        if message.opt.no_response is None:
            message.opt.no_response = request.opt.no_response
        return message


def _describe_os_error(exc: OSError) -> str:
    if exc.errno == errno.ECONNREFUSED:
        return "the port is unreachable (ICMP port unreachable)"
    if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return f"the host is unreachable ({exc.strerror})"
    return f"{type(exc).__name__}: {exc}"


def _describe_loss(exc: BaseException) -> str:
    if isinstance(exc, aiocoap_tinydtls.CloseNotifyReceived):
        return "the server closed it (close_notify)"
    if isinstance(exc, aiocoap_tinydtls.FatalDTLSError):
        code = int(exc.args[0]) if exc.args else -1
        return f"fatal DTLS {_describe_alert(code)}"
    if isinstance(exc, OSError):
        return _describe_os_error(exc)
    return repr(exc)
