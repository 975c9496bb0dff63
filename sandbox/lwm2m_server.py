"""A local LwM2M 1.1 server: registration, Send, and device management.

Design
------
This module holds ``LocalLwm2mServer``, its settings, the observations it
makes, and re-exports (``__all__``) what it is built from: the registration
rules (``sandbox.lwm2m_registry``), the bootstrap role
(``sandbox.lwm2m_bootstrap``), the events and errors
(``sandbox.lwm2m_events``), the payload codecs (``sandbox.lwm2m_payload``)
and the aiocoap plumbing (``sandbox.lwm2m_coap``).

Two layers, as in the other sandbox services:

* The registration interface and the Send endpoint are answered by
  ``LocalLwm2mServer.handle()``: a synchronous function of an
  ``Lwm2mRequest`` (method, path, query, payload, Content-Format) and the
  ``Peer`` it came from, returning a ``Reply`` (code, Location-Path,
  diagnostic).  It keeps the registrations in an ``Lwm2mRegistry`` (pure,
  given the time) and records events.  It needs no socket, so its rules,
  the expiry of registrations and the queue-mode hold are tested in virtual
  time (``autojump_clock``).
* ``LocalLwm2mServer.run()`` serves it over CoAP with aiocoap 0.4.17 under
  trio-asyncio: one ``trio_asyncio.open_loop()`` for the server's life
  (STYLE P4), an aiocoap server context for ``coap`` (the ``udp6``
  transport) and another for ``coaps`` (``tinydtls_server``, DTLS 1.2 with
  PSK), both serving the same site.  Each asyncio operation (start, stop, a
  request, an observation) is an ``_aio_*`` helper crossed once with
  ``aio_as_trio`` (P2).  The site's handlers run in the asyncio context and
  only call ``handle()``, whose effects on Trio are ``trio.Event.set()``.

Management requests (``read``, ``write``, ``execute``, ``observe``) go out
through the context that received the registration, to the remote address
aiocoap recorded for it, so toward a DTLS client they travel in the DTLS
session the client opened.  The address is refreshed by every Update.

Registration interface (LwM2M 1.1 TS Transport, 6.2)
----------------------------------------------------
``POST /rd`` (Register), ``POST /rd/<id>`` (Update) and ``DELETE /rd/<id>``
(De-register): the rules, answers and error codes are described in
``sandbox.lwm2m_registry``, which holds them (``Lwm2mRegistry``).  This
module routes the requests there, records the events, ends observations with
their registration and expires registrations: a Trio task sleeps until the
earliest deadline.

Send (``POST /dp``)
-------------------
SenML-CBOR (112) or SenML-JSON (110): 2.04, and the records become the
endpoint's "shadow" in ``sends`` (latest record per path, the later arrival
winning) and a ``send`` event.  A payload that does not decode: 4.00; no
Content-Format: 4.00; another format: 4.15; a peer without a registration
(matched by address over ``coap``, by PSK identity over ``coaps``): 4.04.

Observations end with the registration: a De-register, an expiry or a new
registration of the endpoint forgets their tokens and ends their channels.

Bootstrap (LwM2M 1.1 TS Transport 6.1, client-initiated)
--------------------------------------------------------
Any instance is also a Bootstrap-Server for the endpoints it has an account
for (``Lwm2mServerSettings.bootstrap``, endpoint -> ``BootstrapAccount``,
else ``bootstrap_default``), on the same ports as ``/rd``.  The role
(``POST /bs`` and the bootstrap sequence) is ``BootstrapRole`` of
``sandbox.lwm2m_bootstrap``, a mixin of ``LocalLwm2mServer``; its module
docstring describes it.

Queue mode
----------
A client in queue mode listens only for ``queue_uptime`` (30 s, the
specification's and the firmware's ``CONFIG_LWM2M_QUEUE_MODE_UPTIME``)
after it last sent something.  Every message the server receives from it
(Register, Update, Send, De-register, a response, a notification) restarts
that window.  A management request toward a client outside its window is
held, without limit, until the client is heard from again; the caller
bounds the wait with its own cancel scope.  Held requests go out in the
order they were made, once the client is heard.  The window is judged when
the request is sent: a client that falls asleep during the exchange is
caught by CoAP's retransmissions or the request timeout.

aiocoap 0.4.17
--------------
Its shortcomings, and how the server works around them, are
described in ``sandbox.lwm2m_coap``, which holds the aiocoap site, the
asyncio-side coroutines and the workarounds.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import aiocoap
import aiocoap.error
import attrs
import structlog
import trio
from aiocoap.credentials import DTLS, CredentialsMap
from aiocoap.numbers.codes import Code

from protocols.lwm2m_formats import (
    ContentFormat,
    FormatError,
    Path,
    Record,
    decode_senml_cbor,
    decode_senml_json,
)
from sandbox.lwm2m_bootstrap import (
    BOOTSTRAP_FORMATS,
    BOOTSTRAP_PATH,
    FALLBACK_SECURITY_INSTANCE,
    MAX_INSTANCE_ID,
    SECURITY_MODE_NOSEC,
    SECURITY_MODE_PSK,
    SECURITY_OBJECT,
    SERVER_OBJECT,
    SHORT_SERVER_ID_MAX,
    BootstrapAccount,
    BootstrapRole,
    _bootstrap_map,
)
from sandbox.lwm2m_coap import (
    _aio_cancel_observation,
    _aio_observe,
    _aio_request,
    _close_abandoned_sockets,
    _diagnostic,
    _dotted,
    _log_asyncio_error,
    _Lwm2mSite,
    _recognise_dtls_remotes,
    _segments,
    request_errors,
)
from sandbox.lwm2m_events import (
    EventKind,
    Lwm2mEvent,
    Lwm2mRequestError,
    Lwm2mServerError,
    Lwm2mTimeout,
    Lwm2mUnreachable,
    NotRegistered,
)
from sandbox.lwm2m_payload import (
    TypeOf,
    decode_payload,
    encode_payload,
    type_from_value,
)
from sandbox.lwm2m_registry import (
    BINDING_LETTERS,
    DEFAULT_BINDING,
    DEFAULT_LIFETIME,
    DEFAULT_VERSION,
    LOCATION_PREFIX,
    MAX_LIFETIME,
    SUPPORTED_VERSIONS,
    Links,
    Lwm2mRegistry,
    Lwm2mRequest,
    Peer,
    Registration,
    Reply,
    _Refused,
    parse_query,
)

# The public names, whether defined here or in the modules above.
__all__ = [
    "BINDING_LETTERS",
    "BOOTSTRAP_FORMATS",
    "BOOTSTRAP_PATH",
    "CANCEL_TIMEOUT",
    "DEFAULT_BINDING",
    "DEFAULT_LIFETIME",
    "DEFAULT_VERSION",
    "FALLBACK_SECURITY_INSTANCE",
    "HISTORY",
    "LOCATION_PREFIX",
    "MAX_INSTANCE_ID",
    "MAX_LIFETIME",
    "OBSERVE_BUFFER",
    "QUEUE_UPTIME",
    "REQUEST_TIMEOUT",
    "SECURITY_MODE_NOSEC",
    "SECURITY_MODE_PSK",
    "SECURITY_OBJECT",
    "SEND_PATH",
    "SERVER_OBJECT",
    "SHORT_SERVER_ID_MAX",
    "SHUTDOWN_GRACE",
    "START_TIMEOUT",
    "SUPPORTED_VERSIONS",
    "BootstrapAccount",
    "EventKind",
    "Links",
    "LocalLwm2mServer",
    "Lwm2mEvent",
    "Lwm2mRegistry",
    "Lwm2mRequest",
    "Lwm2mRequestError",
    "Lwm2mServerError",
    "Lwm2mServerSettings",
    "Lwm2mTimeout",
    "Lwm2mUnreachable",
    "NotRegistered",
    "Observation",
    "Peer",
    "Registration",
    "Reply",
    "TypeOf",
    "decode_payload",
    "encode_payload",
    "parse_query",
    "type_from_value",
]


log = structlog.get_logger(actor="sandbox.lwm2m")


QUEUE_UPTIME: Final = 30.0
"""Seconds a queue-mode client listens after its last message."""

REQUEST_TIMEOUT: Final = 100.0
"""Seconds a management request may take: a little over CoAP's
MAX_TRANSMIT_WAIT (93 s), after which aiocoap gives up by itself."""

START_TIMEOUT: Final = 10.0
"""Seconds binding the sockets may take."""

SHUTDOWN_GRACE: Final = 5.0
"""Seconds the shielded ``Context.shutdown()`` may take when leaving."""

HISTORY: Final = 1024
"""Events kept in ``LocalLwm2mServer.history``."""

CANCEL_TIMEOUT: Final = 10.0
"""Seconds ``cancel_observe`` waits for the client to answer its cancel."""

OBSERVE_BUFFER: Final = 64
"""Notifications an observation holds before it drops (and counts) more."""


SEND_PATH: Final = "dp"
"""The path of the Send operation's endpoint."""


# ---------------------------------------------------------------------------
# Settings, values and errors


def _psk_map(value: Mapping[bytes, bytes]) -> dict[bytes, bytes]:
    psk = dict(value)
    for identity, key in psk.items():
        if not isinstance(identity, bytes) or not isinstance(key, bytes):
            raise TypeError("psk maps identity bytes to key bytes")
        if not identity or not key:
            raise ValueError("a PSK identity and its key must not be empty")
    return psk


@attrs.frozen(kw_only=True)
class Lwm2mServerSettings:
    """Where the server listens and how it talks to clients.

    ``coap_port`` / ``coaps_port``: 0 picks a free port, ``None`` turns the
    listener off.  ``psk`` maps each DTLS PSK identity (the endpoint name,
    as bytes) to its key.  ``default_format`` is what ``read`` asks for and
    ``write`` sends unless told otherwise.  ``bootstrap`` maps endpoint
    names to the account a Bootstrap-Request provisions, and
    ``bootstrap_default`` is provisioned for any other endpoint (``None``:
    others are refused).
    """

    host: str = "127.0.0.1"
    coap_port: int | None = 0
    coaps_port: int | None = None
    psk: dict[bytes, bytes] = attrs.field(factory=dict, converter=_psk_map)
    default_format: ContentFormat = ContentFormat.SENML_CBOR
    bootstrap: dict[str, BootstrapAccount] = attrs.field(
        factory=dict, converter=_bootstrap_map
    )
    bootstrap_default: BootstrapAccount | None = None
    queue_uptime: float = QUEUE_UPTIME
    request_timeout: float = REQUEST_TIMEOUT
    expiry_grace: float = 0.0
    history: int = HISTORY


# ---------------------------------------------------------------------------
# Observations


@attrs.define(eq=False)
class Observation:
    """An Observe on a client's path, made by ``LocalLwm2mServer.observe``.

    ``initial`` holds the records of the first response; each notification
    arrives on ``notifications`` as a list of records.  At most
    ``OBSERVE_BUFFER`` wait there; further ones are dropped and counted in
    ``dropped``.  The channel ends when the observation does (cancelled,
    the client ended it, the server stopped).
    """

    endpoint: str
    path: Path
    notifications: trio.MemoryReceiveChannel[list[Record]]
    initial: list[Record] = attrs.field(factory=list)
    dropped: int = 0
    _send: trio.MemorySendChannel[list[Record]] | None = None
    _scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    _first: trio.Event = attrs.field(factory=trio.Event)
    _done: trio.Event = attrs.field(factory=trio.Event)
    _error: Lwm2mServerError | None = None
    # The first response: its token and remote name the observation.
    _response: aiocoap.Message | None = None
    _accept: ContentFormat | None = None

    @property
    def active(self) -> bool:
        """Whether notifications may still arrive."""
        return self._send is not None


# ---------------------------------------------------------------------------
# The server


@attrs.define(eq=False)
class LocalLwm2mServer(BootstrapRole):
    """The LwM2M server; see the module docstring.

    ``registrations`` (endpoint -> ``Registration``), ``sends`` (endpoint ->
    path string -> latest ``Record``) and ``history`` (the latest
    ``settings.history`` events) may be read at any time.  ``coap_port``
    and ``coaps_port`` are the ports bound once ``run()`` has started.
    ``clock`` (epoch seconds) resolves SenML's relative times; every other
    time is ``trio.current_time()``.
    """

    settings: Lwm2mServerSettings = attrs.field(factory=Lwm2mServerSettings)
    clock: Callable[[], float] = attrs.field(default=time.time)
    registry: Lwm2mRegistry = attrs.field(init=False)
    sends: dict[str, dict[str, Record]] = attrs.field(factory=dict, init=False)
    history: deque[Lwm2mEvent] = attrs.field(init=False)
    coap_port: int | None = attrs.field(default=None, init=False)
    coaps_port: int | None = attrs.field(default=None, init=False)
    _seq: int = attrs.field(default=0, init=False)
    _changed: trio.Event = attrs.field(factory=trio.Event, init=False)
    _heard: dict[str, float] = attrs.field(factory=dict, init=False)
    _loop: Any = attrs.field(default=None, init=False)
    _contexts: dict[str, aiocoap.Context] = attrs.field(factory=dict, init=False)
    _nursery: trio.Nursery | None = attrs.field(default=None, init=False)
    # aiocoap's DTLS claims (credentials entry names) -> PSK identity.
    _claims: dict[str, bytes] = attrs.field(factory=dict, init=False)
    # Queue-mode requests wait in this order for their client.
    _held: dict[str, trio.StrictFIFOLock] = attrs.field(factory=dict, init=False)
    # Live observations per endpoint, ended with its registration.
    _observations: dict[str, set[Observation]] = attrs.field(factory=dict, init=False)
    # The bootstrap in progress per endpoint; a new request replaces it.
    _bootstraps: dict[str, trio.CancelScope] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        self.registry = Lwm2mRegistry(expiry_grace=self.settings.expiry_grace)
        self.history = deque(maxlen=self.settings.history)

    @property
    def registrations(self) -> dict[str, Registration]:
        """Endpoint -> registration, as the registry holds them."""
        return self.registry.registrations

    # -- events ------------------------------------------------------------

    def _emit(
        self,
        kind: EventKind,
        endpoint: str,
        *,
        registration: Registration | None = None,
        records: Sequence[Record] = (),
        path: Path | None = None,
        detail: str = "",
    ) -> Lwm2mEvent:
        event = Lwm2mEvent(
            seq=self._seq,
            kind=kind,
            endpoint=endpoint,
            time=trio.current_time(),
            registration=registration,
            records=tuple(records),
            path=path,
            detail=detail,
        )
        self._seq += 1
        self.history.append(event)
        log.info(
            f"lwm2m_{kind}",
            endpoint=endpoint,
            seq=event.seq,
            records=len(records) or None,
            path=None if path is None else str(path),
            detail=detail or None,
        )
        self._wake()
        return event

    def _wake(self) -> None:
        # A broadcast: every waiter re-checks its condition.
        self._changed.set()
        self._changed = trio.Event()

    @property
    def next_seq(self) -> int:
        """The ``seq`` the next event will get: pass it as ``since``."""
        return self._seq

    async def wait_for(
        self,
        kind: EventKind | str,
        endpoint: str | None = None,
        *,
        predicate: Callable[[Lwm2mEvent], bool] | None = None,
        since: int = 0,
    ) -> Lwm2mEvent:
        """The first event of ``kind`` (for ``endpoint``) with ``seq >= since``.

        Events already in ``history`` count, so a caller that starts waiting
        after the fact still sees it; pass ``since=server.next_seq`` (taken
        before the action) to wait only for a new one.  Events that fell out
        of the bounded history are not seen.  Never times out: bound it with
        ``trio.fail_after``.
        """
        kind = EventKind(kind)
        while True:
            for event in self.history:
                if (
                    event.seq >= since
                    and event.kind is kind
                    and (endpoint is None or event.endpoint == endpoint)
                    and (predicate is None or predicate(event))
                ):
                    return event
            since = max(since, self._seq)
            await self._changed.wait()

    # -- the registration interface and Send --------------------------------

    def handle(self, request: Lwm2mRequest, peer: Peer) -> Reply:
        """Answer a request to the server; never raises.

        Logging:
            INFO ``lwm2m_<event>`` for each event; WARNING
            ``lwm2m_refused`` (with code and diagnostic) for 4.xx; ERROR
            ``lwm2m_request_failed`` for a bug, answered with 5.00.
        """
        try:
            return self._handle(request, peer)
        except _Refused as exc:
            log.warning(
                "lwm2m_refused",
                method=request.method,
                path="/" + "/".join(request.path),
                peer=peer.address,
                code=exc.code,
                diagnostic=exc.diagnostic,
            )
            return Reply(code=exc.code, diagnostic=exc.diagnostic)
        except Exception:
            log.error(
                "lwm2m_request_failed",
                method=request.method,
                path="/" + "/".join(request.path),
                exc_info=True,
            )
            return Reply(code="5.00", diagnostic="internal server error")

    def _handle(self, request: Lwm2mRequest, peer: Peer) -> Reply:
        now = trio.current_time()
        match request.method, request.path:
            case "POST", (prefix,) if prefix == LOCATION_PREFIX:
                registration, previous = self.registry.register(request, peer, now)
                self._heard[registration.endpoint] = now
                if previous is not None:
                    self._end_observations(previous.endpoint)
                    log.info(
                        "lwm2m_registration_replaced",
                        endpoint=previous.endpoint,
                        location=previous.location,
                    )
                self._emit(
                    EventKind.REGISTERED,
                    registration.endpoint,
                    registration=registration,
                )
                return Reply(code="2.01", location=registration.location_path)
            case "POST", (prefix, location) if prefix == LOCATION_PREFIX:
                registration = self.registry.update(location, request, peer, now)
                self._heard[registration.endpoint] = now
                self._emit(
                    EventKind.UPDATED, registration.endpoint, registration=registration
                )
                return Reply(code="2.04")
            case "DELETE", (prefix, location) if prefix == LOCATION_PREFIX:
                registration = self.registry.deregister(location, peer)
                self._heard.pop(registration.endpoint, None)
                self._end_observations(registration.endpoint)
                self._emit(
                    EventKind.DEREGISTERED,
                    registration.endpoint,
                    registration=registration,
                )
                return Reply(code="2.02")
            case "POST", (prefix,) if prefix == SEND_PATH:
                return self._on_send(request, peer, now)
            case "POST", (prefix,) if prefix == BOOTSTRAP_PATH:
                return self._on_bootstrap_request(request, peer)
            case _, (prefix, *_) if prefix in (
                LOCATION_PREFIX,
                SEND_PATH,
                BOOTSTRAP_PATH,
            ):
                raise _Refused("4.05", f"{request.method} is not allowed here")
        raise _Refused("4.04", "no such resource")

    def _on_send(self, request: Lwm2mRequest, peer: Peer, now: float) -> Reply:
        registration = self.registry.by_peer(peer)
        if registration is None:
            raise _Refused("4.04", f"no registration for {peer.address}")
        self._heard[registration.endpoint] = now
        decode: Callable[..., list[Record]]
        match request.content_format:
            case None:
                raise _Refused("4.00", "a Send needs a Content-Format")
            case ContentFormat.SENML_CBOR:
                decode = decode_senml_cbor
            case ContentFormat.SENML_JSON:
                decode = decode_senml_json
            case _:
                raise _Refused(
                    "4.15",
                    f"a Send must be SenML-CBOR or SenML-JSON, "
                    f"not {request.content_format}",
                )
        try:
            records = decode(request.payload, now=self.clock())
        except FormatError as exc:
            raise _Refused("4.00", f"the Send payload does not decode: {exc}") from None
        if not records:
            raise _Refused("4.00", "the Send carries no records")
        shadow = self.sends.setdefault(registration.endpoint, {})
        for record in records:
            shadow[str(record.path)] = record
        self._emit(
            EventKind.SEND,
            registration.endpoint,
            registration=registration,
            records=records,
        )
        return Reply(code="2.04")

    async def _expire_registrations(self) -> None:
        """Remove each registration when its lifetime runs out, forever."""
        while True:
            for registration in self.registry.expire(trio.current_time()):
                self._heard.pop(registration.endpoint, None)
                self._end_observations(registration.endpoint)
                self._emit(
                    EventKind.EXPIRED,
                    registration.endpoint,
                    registration=registration,
                )
            changed = self._changed
            with trio.move_on_at(self.registry.next_expiry()):
                await changed.wait()

    def _end_observations(self, endpoint: str) -> None:
        # A new registration starts without observations (TS Core 6.4):
        # the tokens are forgotten, the channels end.
        for observation in self._observations.pop(endpoint, set()):
            observation._scope.cancel()

    # -- queue mode -------------------------------------------------------------

    def is_reachable(self, endpoint: str, now: float | None = None) -> bool:
        """Whether a request to ``endpoint`` would go out now.

        Always for a client not in queue mode; for one in queue mode, within
        ``queue_uptime`` of the last message heard from it.
        """
        registration = self.registrations.get(endpoint)
        if registration is None:
            return False
        if not registration.queue_mode:
            return True
        now = trio.current_time() if now is None else now
        heard = self._heard.get(endpoint, -math.inf)
        return now < heard + self.settings.queue_uptime

    def _mark_heard(self, endpoint: str) -> None:
        if endpoint in self.registrations:
            self._heard[endpoint] = trio.current_time()
            self._wake()

    async def _reachable(self, endpoint: str) -> Registration:
        # Waits, without limit, until the client is registered and awake.
        while True:
            registration = self.registrations.get(endpoint)
            if registration is None:
                raise NotRegistered(f"{endpoint!r} is not registered")
            if self.is_reachable(endpoint):
                return registration
            log.debug("lwm2m_request_held", endpoint=endpoint)
            await self._changed.wait()

    # -- management requests --------------------------------------------------

    async def read(
        self,
        endpoint: str,
        path: Path | str,
        *,
        accept: ContentFormat | None = None,
        type_of: TypeOf | None = None,
    ) -> list[Record]:
        """Read ``path`` of the client (GET with Accept).

        ``accept`` defaults to ``settings.default_format``; ``type_of`` types
        TLV and text values (see ``decode_payload``).

        Raises:
            NotRegistered: no such registration, or it ended while held.
            Lwm2mRequestError: an error code (``.code``), or a payload that
                does not decode in the Content-Format the client named.
            Lwm2mUnreachable, Lwm2mTimeout: see ``_request``.

        Cancellation:
            A held request is simply withdrawn; one in flight is abandoned
            (its response, if any, is ignored).
        """
        path = _as_path(path)
        accept = self.settings.default_format if accept is None else accept
        response = await self._request(
            endpoint, aiocoap.GET, path, accept=accept, observe=None
        )
        code = _dotted(response.code)
        if not response.code.is_successful():
            raise Lwm2mRequestError(
                f"Read {path} on {endpoint!r} failed with {code} "
                f"{_diagnostic(response)}",
                code=code,
            )
        return self._records(response, path, endpoint, type_of)

    async def write(
        self,
        endpoint: str,
        path: Path | str,
        records: Sequence[Record],
        *,
        fmt: ContentFormat | None = None,
        replace: bool = False,
        type_of: TypeOf | None = None,
    ) -> str:
        """Write ``records`` to ``path``; return the response code (``"2.04"``).

        A resource or resource instance is written with PUT; an object
        instance with POST (partial update), or PUT when ``replace``.
        ``fmt`` defaults to ``settings.default_format``; ``type_of`` types
        the values for TLV and text (else their Python types decide).

        Raises:
            ValueError: ``path`` is an object or the root.
            FormatError: ``records`` cannot be put in ``fmt``.
            NotRegistered, Lwm2mUnreachable, Lwm2mTimeout: as ``read``.
        """
        path = _as_path(path)
        depth = len(_segments(path))
        if depth < 2:
            raise ValueError(f"cannot Write {path}: name an instance or resource")
        fmt = self.settings.default_format if fmt is None else fmt
        payload = encode_payload(records, fmt, path, type_of=type_of)
        method = aiocoap.PUT if replace or depth > 2 else aiocoap.POST
        response = await self._request(
            endpoint, method, path, payload=payload, content_format=fmt
        )
        return _dotted(response.code)

    async def execute(
        self, endpoint: str, path: Path | str, argument: bytes = b""
    ) -> str:
        """Execute the resource ``path`` (POST); return the response code.

        Raises:
            ValueError: ``path`` is not a resource.
            NotRegistered, Lwm2mUnreachable, Lwm2mTimeout: as ``read``.
        """
        path = _as_path(path)
        if len(_segments(path)) != 3:
            raise ValueError(f"cannot Execute {path}: name a resource")
        content_format = ContentFormat.TEXT if argument else None
        response = await self._request(
            endpoint,
            aiocoap.POST,
            path,
            payload=argument,
            content_format=content_format,
        )
        return _dotted(response.code)

    async def observe(
        self,
        endpoint: str,
        path: Path | str,
        *,
        accept: ContentFormat | None = None,
        type_of: TypeOf | None = None,
    ) -> Observation:
        """Observe ``path``; return once the first response is in.

        Each notification also becomes a ``notification`` event.

        Raises:
            Lwm2mRequestError: the client refused (error code), or did not
                accept the observation (no Observe option in its response:
                ``initial`` would be the only value ever).
            NotRegistered, Lwm2mUnreachable, Lwm2mTimeout: as ``read``.
        """
        path = _as_path(path)
        accept = self.settings.default_format if accept is None else accept
        nursery = self._running_nursery()
        send, receive = trio.open_memory_channel[list[Record]](OBSERVE_BUFFER)
        observation = Observation(endpoint, path, receive, send=send)
        observation._accept = accept
        self._observations.setdefault(endpoint, set()).add(observation)
        nursery.start_soon(self._run_observation, observation, accept, type_of)
        try:
            with trio.fail_after(self.settings.request_timeout):
                await observation._first.wait()
        except BaseException:
            observation._scope.cancel()
            raise
        if observation._error is not None:
            raise observation._error
        return observation

    async def cancel_observe(self, observation: Observation) -> None:
        """Stop ``observation``; its channel ends.

        While the client is reachable, the cancel is proactive (RFC 7641
        3.6): a GET with Observe = 1 and the observation's token, whose
        answer ends the observation on both sides.  Otherwise, or without
        an answer within ``CANCEL_TIMEOUT``, the token is forgotten and the
        client learns of it reactively: aiocoap still acknowledges the next
        notification and answers the one after with a Reset.
        """
        from trio_asyncio import aio_as_trio

        response = observation._response
        context = self._contexts.get(
            getattr(response.remote, "scheme", "coap") if response else ""
        )
        if (
            response is not None
            and context is not None
            and observation.active
            and self.is_reachable(observation.endpoint)
        ):
            with trio.move_on_after(CANCEL_TIMEOUT):
                try:
                    await aio_as_trio(_aio_cancel_observation, loop=self._loop)(
                        context, response, observation.path, observation._accept
                    )
                except aiocoap.error.Error as exc:
                    log.info("lwm2m_observation_cancel_failed", reason=str(exc))
                else:
                    await observation._done.wait()
        observation._scope.cancel()
        await observation._done.wait()

    async def _run_observation(
        self,
        observation: Observation,
        accept: ContentFormat,
        type_of: TypeOf | None,
    ) -> None:
        endpoint, path = observation.endpoint, observation.path

        def deliver(message: aiocoap.Message) -> None:
            # Called in the asyncio context: decode, record, hand off.
            self._mark_heard(endpoint)
            if not observation._first.is_set():
                if not message.code.is_successful():
                    observation._error = Lwm2mRequestError(
                        f"Observe {path} on {endpoint!r} failed with "
                        f"{_dotted(message.code)} {_diagnostic(message)}",
                        code=_dotted(message.code),
                    )
                elif message.opt.observe is None:
                    observation._error = Lwm2mRequestError(
                        f"{endpoint!r} did not accept an observation of {path}",
                        code=_dotted(message.code),
                    )
                else:
                    observation._response = message
                    try:
                        observation.initial = self._records(
                            message, path, endpoint, type_of
                        )
                    except Lwm2mRequestError as exc:
                        observation._error = exc
                observation._first.set()
                return
            if message.opt.observe is None:
                # The last response: to our cancel, or the client ended it.
                log.info(
                    "lwm2m_observation_closed",
                    endpoint=endpoint,
                    path=str(path),
                    code=_dotted(message.code),
                )
                return
            try:
                records = self._records(message, path, endpoint, type_of)
            except Lwm2mRequestError as exc:
                log.warning("lwm2m_notification_dropped", reason=str(exc))
                observation.dropped += 1
                return
            self._emit(EventKind.NOTIFICATION, endpoint, records=records, path=path)
            assert observation._send is not None
            try:
                observation._send.send_nowait(records)
            except trio.WouldBlock:
                observation.dropped += 1
                log.warning(
                    "lwm2m_notification_dropped",
                    endpoint=endpoint,
                    path=str(path),
                    dropped=observation.dropped,
                )
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                observation.dropped += 1

        try:
            with observation._scope:
                await self._request(
                    endpoint, aiocoap.GET, path, accept=accept, observe=deliver
                )
                log.info("lwm2m_observation_ended", endpoint=endpoint, path=str(path))
        except Lwm2mServerError as exc:
            if not observation._first.is_set():
                observation._error = exc
            else:
                log.warning(
                    "lwm2m_observation_lost",
                    endpoint=endpoint,
                    path=str(path),
                    reason=str(exc),
                )
        finally:
            if not observation._first.is_set():
                if observation._error is None:
                    observation._error = Lwm2mUnreachable(
                        f"the observation of {path} on {endpoint!r} ended"
                    )
                observation._first.set()
            send, observation._send = observation._send, None
            if send is not None:
                send.close()
            self._observations.get(endpoint, set()).discard(observation)
            observation._done.set()

    async def _request(
        self,
        endpoint: str,
        method: Code,
        path: Path,
        *,
        payload: bytes = b"",
        content_format: ContentFormat | None = None,
        accept: ContentFormat | None = None,
        observe: Callable[[aiocoap.Message], None] | None = None,
    ) -> aiocoap.Message:
        """Send one request to ``endpoint`` (held while it sleeps).

        With ``observe``, the request carries Observe = 0, every response
        (the first included) is handed to ``observe``, and this returns
        only when the observation ends; the first response is returned.

        Raises:
            NotRegistered: as ``read``.
            Lwm2mUnreachable: aiocoap could not deliver it (retransmissions
                ran out, the DTLS session is gone, the server is stopping).
            Lwm2mTimeout: no response within ``settings.request_timeout``
                (not for the notifications of an observation).
        """
        from trio_asyncio import aio_as_trio

        lock = self._held.setdefault(endpoint, trio.StrictFIFOLock())
        async with lock:
            registration = await self._reachable(endpoint)
        context = self._contexts.get(registration.scheme)
        remote = registration.peer.remote
        if context is None or remote is None or self._loop is None:
            raise Lwm2mUnreachable(
                f"{endpoint!r} registered over {registration.scheme}, "
                "which is not being served"
            )
        message = aiocoap.Message(code=method, uri_path=_segments(path))
        message.remote = remote
        if payload:
            message.payload = payload
        if content_format is not None:
            message.opt.content_format = int(content_format)
        if accept is not None:
            message.opt.accept = int(accept)
        log.debug(
            "lwm2m_request",
            endpoint=endpoint,
            method=str(method),
            path=str(path),
            size=len(payload),
        )
        timeout = self.settings.request_timeout
        with request_errors(endpoint, f"{method} {path}", timeout):
            if observe is None:
                with trio.fail_after(timeout):
                    response: aiocoap.Message = await aio_as_trio(
                        _aio_request, loop=self._loop
                    )(context, message)
            else:
                message.opt.observe = 0
                response = await aio_as_trio(_aio_observe, loop=self._loop)(
                    context, message, observe
                )
        self._mark_heard(endpoint)
        log.debug(
            "lwm2m_response",
            endpoint=endpoint,
            path=str(path),
            code=_dotted(response.code),
        )
        return response

    # -- serving -----------------------------------------------------------------

    def _running_nursery(self) -> trio.Nursery:
        if self._nursery is None:
            raise Lwm2mServerError("the LwM2M server is not running")
        return self._nursery

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Bind the listeners and serve until cancelled.

        Reports ready through ``task_status`` once bound; ``coap_port`` and
        ``coaps_port`` then hold the ports.  The registrations survive a
        restart of ``run()``; the remote addresses in them do not (a client
        must register again before it can be managed).

        Raises:
            Lwm2mServerError: a listener could not be bound (the message
                names the address), or binding took over ``START_TIMEOUT``.

        Cancellation:
            aiocoap is shut down under a shielded ``SHUTDOWN_GRACE``; pending
            management requests fail with ``Lwm2mUnreachable``, observations
            end.

        Logging:
            INFO ``lwm2m_server_ready`` (ports), ``lwm2m_<event>``; see
            ``handle``; WARNING ``lwm2m_asyncio_error``.
        """
        import trio_asyncio
        from trio_asyncio import aio_as_trio

        error: Exception | None = None
        async with trio_asyncio.open_loop() as loop:
            loop.set_exception_handler(_log_asyncio_error)
            self._loop = loop
            try:
                with trio.fail_after(START_TIMEOUT):
                    await aio_as_trio(self._aio_start, loop=loop)()
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._expire_registrations)
                    log.info(
                        "lwm2m_server_ready",
                        host=self.settings.host,
                        coap_port=self.coap_port,
                        coaps_port=self.coaps_port,
                    )
                    task_status.started()
            except trio.TooSlowError:
                error = Lwm2mServerError(
                    f"binding the LwM2M listeners on {self.settings.host} took "
                    f"over {START_TIMEOUT} s"
                )
            except Exception as exc:  # bare, not in open_loop's group
                error = exc
            finally:
                self._nursery = None
                with trio.move_on_after(SHUTDOWN_GRACE, shield=True):
                    await aio_as_trio(self._aio_shutdown, loop=loop)()
                self._loop = None
        if error is not None:
            raise error

    async def _aio_start(self) -> None:
        """Create the aiocoap contexts (asyncio context)."""
        site = _Lwm2mSite(self)
        host = self.settings.host
        if self.settings.coap_port is not None:
            try:
                context = await aiocoap.Context.create_server_context(
                    site,
                    bind=(host, self.settings.coap_port),
                    transports=["udp6"],
                    loggername="lwm2m-coap",
                )
            except (OSError, aiocoap.error.Error) as exc:
                _close_abandoned_sockets(exc)
                raise Lwm2mServerError(
                    f"cannot serve coap on {host}:{self.settings.coap_port}: {exc}"
                ) from exc
            self._contexts["coap"] = context
            interface = context.request_interfaces[0].token_interface
            sock = interface.message_interface.transport.get_extra_info("socket")
            self.coap_port = sock.getsockname()[1]
        if self.settings.coaps_port is not None:
            credentials = CredentialsMap()
            for identity, key in self.settings.psk.items():
                claim = f":psk-{identity.hex()}"
                credentials[claim] = DTLS(psk=key, client_identity=identity)
                self._claims[claim] = identity
            try:
                context = await aiocoap.Context.create_server_context(
                    site,
                    # tinydtls_server binds to the port given plus one.
                    bind=(host, self.settings.coaps_port - 1),
                    transports=["tinydtls_server"],
                    server_credentials=credentials,
                    loggername="lwm2m-coaps",
                )
            except (OSError, ValueError, aiocoap.error.Error) as exc:
                raise Lwm2mServerError(
                    f"cannot serve coaps on {host}:{self.settings.coaps_port}: {exc}"
                ) from exc
            self._contexts["coaps"] = context
            interface = context.request_interfaces[0].token_interface
            _recognise_dtls_remotes(interface.message_interface)
            pool = interface.message_interface._pool
            self.coaps_port = pool._transport.get_extra_info("sockname")[1]

    async def _aio_shutdown(self) -> None:
        contexts, self._contexts = self._contexts, {}
        for context in contexts.values():
            await context.shutdown()

    def _records(
        self,
        message: aiocoap.Message,
        path: Path,
        endpoint: str,
        type_of: TypeOf | None,
    ) -> list[Record]:
        content_format = message.opt.content_format
        try:
            return decode_payload(
                message.payload,
                None if content_format is None else int(content_format),
                path,
                type_of=type_of,
                now=self.clock(),
            )
        except FormatError as exc:
            raise Lwm2mRequestError(
                f"{endpoint!r} answered {path} with an undecodable payload "
                f"(Content-Format {content_format}): {exc}",
                code=_dotted(message.code),
            ) from exc

    def _peer_of(self, remote: Any) -> Peer:
        scheme = getattr(remote, "scheme", "coap")
        identity = None
        if scheme == "coaps":
            for claim in getattr(remote, "authenticated_claims", None) or ():
                identity = self._claims.get(claim)
        return Peer(
            scheme=scheme, address=remote.hostinfo, identity=identity, remote=remote
        )


def _as_path(path: Path | str) -> Path:
    return Path.parse(path) if isinstance(path, str) else path
