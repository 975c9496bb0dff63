"""A local LwM2M 1.1 server: registration, Send, and device management.

Design
------
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
* ``POST /rd?ep=..&lt=..&lwm2m=..&b=..&Q`` with a CoRE link-format payload:
  2.01 Created with Location-Path ``rd/<id>``.  ``ep`` is required; ``lt``
  defaults to 86400 s, ``lwm2m`` to 1.0, ``b`` to ``U``.  Queue mode is the
  ``Q`` parameter (1.1) or a ``Q`` in the binding (1.0's ``UQ``).  A second
  registration of an endpoint replaces the first (its location is gone).
* ``POST /rd/<id>`` (optional ``lt``, ``b``, ``sms``, links): 2.04.
  ``DELETE /rd/<id>``: 2.02.  An unknown ``<id>``: 4.04.
* 4.00 for a missing or empty ``ep``, a malformed or repeated parameter, a
  ``Q`` with a value, and a link payload that does not parse or is empty at
  registration; 4.15 for a payload that is not link-format (40); 4.12 for a
  well-formed ``lwm2m`` version other than 1.0, 1.1 and 1.2 (what the
  specification prescribes for an unsupported version).  Unknown parameters
  are ignored, so a newer client is not refused for an extension.
* Over ``coaps`` the PSK identity of the DTLS session must be the endpoint
  name, and an Update or De-register must come over a session of that same
  identity: 4.03 otherwise.  aiocoap reports the identity only indirectly:
  its ``authenticated_claims`` name the credentials entry whose key the
  handshake used, and each entry here holds one identity.  Over ``coap``
  (NoSec) anyone who knows a location may update or delete it, as in the
  specification.
* A registration expires ``lifetime`` seconds after its registration or
  last Update (``Lwm2mServerSettings.expiry_grace`` adds a margin); a Trio
  task sleeps until the earliest deadline.

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
else ``bootstrap_default``), on the same ports as ``/rd``:

* ``POST /bs?ep=<name>[&pct=<format>]``: 2.04, then a task of its own
  provisions the client through the context and remote the request came
  in on (inside its DTLS session over ``coaps``): Bootstrap-Delete of
  ``/0`` and of ``/1`` (the client keeps its bootstrap server's Security
  instance, as 1.1 requires), Bootstrap-Discover of ``/0`` to find a free
  Security instance id (unless the account names one; a client answering
  4.xx gets ``FALLBACK_SECURITY_INSTANCE``), Bootstrap-Write (PUT) of
  ``/0/<i>`` and ``/1/<j>`` in SenML-CBOR, SenML-JSON or TLV (the account's
  format, else the client's ``pct`` when it is one of those, else
  SenML-CBOR), then Bootstrap-Finish (``POST /bs``).  Each must be
  answered with its success code (2.02, 2.05, 2.04); the first that is not
  ends the bootstrap.  Events: ``bootstrap_requested``, then
  ``bootstrapped`` (with the records written) or ``bootstrap_failed``
  (``detail`` says which step and what the client answered).  A new
  Bootstrap-Request of the endpoint replaces one in progress.
* 4.00 for a missing ``ep``, a malformed or repeated parameter, and an
  endpoint without an account (the specification's answer to an unknown
  Endpoint Client Name); nothing is sent then.  Over ``coaps`` the PSK
  identity must be the endpoint name: 4.03 otherwise.
* The client registers with whatever server the account names (this
  instance or another); the server's ``psk`` must hold the identity and
  key the account writes.  One instance has one key per identity, so a
  bootstrap key that differs from the server key needs two instances.
* XXX: only one LwM2M server account is provisioned, and only the
  Security and Server objects (no OSCORE, no Access Control, no
  Bootstrap-Read or Bootstrap-Pack); no server-initiated bootstrap.  The
  bootstrap exchange ignores queue mode (the client is awake while it
  bootstraps).

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
import logging
import math
import re
import secrets
import socket
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from enum import StrEnum
from typing import Any, Final

import aiocoap
import aiocoap.error
import aiocoap.resource
import attrs
import structlog
import trio
from aiocoap.credentials import DTLS, CredentialsMap
from aiocoap.numbers.codes import Code

from backends.aio import asyncio_error_logger
from protocols.lwm2m_formats import (
    ContentFormat,
    FormatError,
    ObjLink,
    Path,
    Record,
    ResourceType,
    UnsupportedContentFormat,
    decode,
    decode_senml_cbor,
    decode_senml_json,
    encode,
    parse_registration_links,
)

log = structlog.get_logger(actor="sandbox.lwm2m")

DEFAULT_LIFETIME: Final = 86400
"""Seconds a registration lives when the client sends no ``lt``."""

DEFAULT_VERSION: Final = "1.0"
"""The LwM2M version of a registration without ``lwm2m``."""

DEFAULT_BINDING: Final = "U"
"""The binding of a registration without ``b``."""

SUPPORTED_VERSIONS: Final = frozenset({"1.0", "1.1", "1.2"})
"""``lwm2m`` values accepted; another well-formed one gets 4.12."""

BINDING_LETTERS: Final = frozenset("UMHTSNQ")
"""Letters a binding may hold (1.0's ``U``/``S``/``Q``, 1.1's ``T``/``N``,
1.2's ``M``/``H``)."""

MAX_LIFETIME: Final = 2**32 - 1
"""The largest ``lt`` (an unsigned 32-bit resource in the Server object)."""

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

LOCATION_PREFIX: Final = "rd"
"""The first Location-Path segment of every registration."""

SEND_PATH: Final = "dp"
"""The path of the Send operation's endpoint."""

BOOTSTRAP_PATH: Final = "bs"
"""The path of the Bootstrap-Request (client) and Bootstrap-Finish (server)."""

SECURITY_OBJECT: Final = 0
"""The LwM2M Security object (server URIs and credentials)."""

SERVER_OBJECT: Final = 1
"""The LwM2M Server object (short server id, lifetime, binding)."""

SECURITY_MODE_PSK: Final = 0
"""Security Mode (``/0/x/2``) of a ``coaps`` account: pre-shared key."""

SECURITY_MODE_NOSEC: Final = 3
"""Security Mode (``/0/x/2``) of a ``coap`` account: no security."""

SHORT_SERVER_ID_MAX: Final = 65534
"""The largest Short Server ID (1 to 65534; 0 and 65535 are reserved)."""

MAX_INSTANCE_ID: Final = 65534
"""The largest object instance id (65535 is reserved)."""

FALLBACK_SECURITY_INSTANCE: Final = 1
"""The Security instance written when the client cannot say which are taken
(its bootstrap server's account is conventionally ``/0/0``)."""

BOOTSTRAP_FORMATS: Final = frozenset(
    {ContentFormat.SENML_CBOR, ContentFormat.SENML_JSON, ContentFormat.TLV}
)
"""Formats a Bootstrap-Write can go out in; a ``pct`` among them is used."""

# A well-formed ``lwm2m`` version: major.minor.
_VERSION_RE: Final = re.compile(r"[0-9]+\.[0-9]+")

# The target of each link in a CoRE link-format payload.
_LINK_TARGET_RE: Final = re.compile(r"<([^>]*)>")


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


def _check_account_uri(_: object, attribute: attrs.Attribute[str], uri: str) -> None:
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme not in ("coap", "coaps") or not rest.strip("/"):
        raise ValueError(
            f"{attribute.name} {uri!r} is not a coap:// or coaps:// URI with a host"
        )


def _check_short_id(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 1 <= value <= SHORT_SERVER_ID_MAX:
        raise ValueError(f"{attribute.name}={value} is not in 1..{SHORT_SERVER_ID_MAX}")


def _check_instance(
    _: object, attribute: attrs.Attribute[Any], value: int | None
) -> None:
    if value is not None and not 0 <= value <= MAX_INSTANCE_ID:
        raise ValueError(f"{attribute.name}={value} is not in 0..{MAX_INSTANCE_ID}")


@attrs.frozen(kw_only=True)
class BootstrapAccount:
    """What the Bootstrap-Server role provisions on a client.

    One LwM2M server account: the Security instance (``/0/<i>``: the
    ``server_uri``, its Security Mode, PSK identity and key, Short Server
    ID) and the Server instance (``/1/<server_instance>``: Short Server ID,
    ``lifetime``, ``binding``).  The Security Mode follows the scheme:
    PSK (0) for ``coaps``, NoSec (3) for ``coap``.  ``psk_identity``
    ``None`` writes the endpoint name (what this server's registration
    interface requires over ``coaps``); ``psk_key`` is required for
    ``coaps``.  The server named must know that identity and key
    (``Lwm2mServerSettings.psk``).

    ``security_instance`` ``None`` asks the client (Bootstrap-Discover on
    ``/0``, after the Bootstrap-Delete) and takes the lowest id its
    remaining instances (the bootstrap server's own account) leave free.
    ``content_format`` is the format of the Bootstrap-Writes; ``None``
    takes the client's preferred one (``pct``) when it is one of
    ``BOOTSTRAP_FORMATS``, else SenML-CBOR.
    """

    server_uri: str = attrs.field(validator=_check_account_uri)
    psk_identity: bytes | None = None
    psk_key: bytes = b""
    short_server_id: int = attrs.field(default=1, validator=_check_short_id)
    lifetime: int = DEFAULT_LIFETIME
    binding: str = DEFAULT_BINDING
    security_instance: int | None = attrs.field(default=None, validator=_check_instance)
    server_instance: int = attrs.field(default=0, validator=_check_instance)
    content_format: ContentFormat | None = None

    def __attrs_post_init__(self) -> None:
        if not 0 < self.lifetime <= MAX_LIFETIME:
            raise ValueError(f"lifetime={self.lifetime} is not in 1..{MAX_LIFETIME}")
        if not self.binding or not set(self.binding) <= BINDING_LETTERS:
            raise ValueError(f"binding={self.binding!r} is not a binding mode")
        if (
            self.content_format is not None
            and self.content_format not in BOOTSTRAP_FORMATS
        ):
            raise ValueError(
                f"content_format={self.content_format} is not one of "
                f"{sorted(int(f) for f in BOOTSTRAP_FORMATS)}"
            )
        if self.secure and not self.psk_key:
            raise ValueError(f"a coaps account ({self.server_uri}) needs a psk_key")
        if self.psk_identity == b"":
            raise ValueError("psk_identity must not be empty (None: the endpoint)")

    @property
    def secure(self) -> bool:
        """Whether the account's server is reached over DTLS."""
        return self.server_uri.startswith("coaps:")

    @property
    def security_mode(self) -> int:
        """The Security Mode resource ``/0/x/2`` the scheme calls for."""
        return SECURITY_MODE_PSK if self.secure else SECURITY_MODE_NOSEC

    def security_records(self, endpoint: str, instance: int) -> list[Record]:
        """The resources of ``/0/<instance>`` for ``endpoint``."""
        base = (SECURITY_OBJECT, instance)
        identity = self.psk_identity or endpoint.encode("utf-8")
        values: tuple[tuple[int, Any], ...] = (
            (0, self.server_uri),
            (1, False),  # Bootstrap-Server: this is an LwM2M server
            (2, self.security_mode),
            # NoSec carries no credentials; the resources are mandatory.
            (3, identity if self.secure else b""),
            (4, b""),  # Server Public Key: unused with PSK
            (5, self.psk_key if self.secure else b""),
            (10, self.short_server_id),
        )
        return [Record(Path.from_ids((*base, rid)), value) for rid, value in values]

    def server_records(self) -> list[Record]:
        """The resources of ``/1/<server_instance>``."""
        base = (SERVER_OBJECT, self.server_instance)
        values: tuple[tuple[int, Any], ...] = (
            (0, self.short_server_id),
            (1, self.lifetime),
            (6, True),  # Notification Storing When Disabled or Offline
            (7, self.binding),
        )
        return [Record(Path.from_ids((*base, rid)), value) for rid, value in values]


def _bootstrap_map(
    value: Mapping[str, BootstrapAccount],
) -> dict[str, BootstrapAccount]:
    accounts = dict(value)
    for endpoint, account in accounts.items():
        if not isinstance(endpoint, str) or not endpoint:
            raise ValueError(f"bootstrap endpoint name {endpoint!r} must be a string")
        if not isinstance(account, BootstrapAccount):
            raise TypeError(f"bootstrap[{endpoint!r}] is not a BootstrapAccount")
    return accounts


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


@attrs.frozen(kw_only=True)
class Peer:
    """Who sent a request: scheme, address, and the proven PSK identity.

    ``remote`` is aiocoap's endpoint address, to answer through; ``None``
    when a test calls ``handle()`` directly.
    """

    scheme: str
    address: str
    identity: bytes | None = None
    remote: Any = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class Lwm2mRequest:
    """A request to the server, independent of the CoAP library."""

    method: str
    path: tuple[str, ...]
    query: tuple[str, ...] = ()
    payload: bytes = b""
    content_format: int | None = None


@attrs.frozen(kw_only=True)
class Reply:
    """The answer to an ``Lwm2mRequest``: a dotted code such as ``"2.01"``."""

    code: str
    location: tuple[str, ...] = ()
    diagnostic: str = ""


@attrs.frozen(kw_only=True)
class Registration:
    """One client's registration; times are ``trio.current_time()``.

    ``links`` are the object links of the payload as parsed, ``(Path,
    attributes)``; ``root_attributes`` those of the ``</>`` link (``ct``:
    the content formats the client prefers).  ``remote`` is the client's
    address (``host:port``) and ``scheme`` ``coap`` or ``coaps``;
    ``identity`` is the PSK identity of a DTLS client.
    """

    endpoint: str
    location: str
    lifetime: int
    binding: str
    queue_mode: bool
    lwm2m_version: str
    links: Links
    root_attributes: dict[str, str]
    remote: str
    scheme: str
    identity: bytes | None
    sms: str | None
    registered_at: float
    updated_at: float
    expires_at: float
    peer: Peer = attrs.field(eq=False, repr=False)

    @property
    def location_path(self) -> tuple[str, str]:
        """The Location-Path segments: ``("rd", "<id>")``."""
        return (LOCATION_PREFIX, self.location)


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


class _Refused(Exception):
    """A request answered with an error code."""

    def __init__(self, code: str, diagnostic: str) -> None:
        super().__init__(f"{code} {diagnostic}")
        self.code = code
        self.diagnostic = diagnostic


# ---------------------------------------------------------------------------
# Request parsing


def parse_query(query: Sequence[str]) -> dict[str, str | None]:
    """The Uri-Query options as ``{name: value}``; ``None`` for a flag.

    Raises ``_Refused`` (4.00) for an empty name or a repeated one.
    """
    params: dict[str, str | None] = {}
    for item in query:
        name, sep, value = item.partition("=")
        if not name:
            raise _Refused("4.00", f"malformed query parameter {item!r}")
        if name in params:
            raise _Refused("4.00", f"query parameter {name!r} is repeated")
        params[name] = value if sep else None
    return params


def _text_param(params: Mapping[str, str | None], name: str) -> str | None:
    if name not in params:
        return None
    value = params[name]
    if not value:
        raise _Refused("4.00", f"query parameter {name!r} needs a value")
    return value


def _lifetime(params: Mapping[str, str | None]) -> int | None:
    value = _text_param(params, "lt")
    if value is None:
        return None
    if not value.isdigit() or not 0 < int(value) <= MAX_LIFETIME:
        raise _Refused("4.00", f"lifetime lt={value!r} is not a positive integer")
    return int(value)


def _binding(params: Mapping[str, str | None]) -> str | None:
    value = _text_param(params, "b")
    if value is None:
        return None
    if not set(value) <= BINDING_LETTERS or len(set(value)) != len(value):
        raise _Refused("4.00", f"binding b={value!r} is not a binding mode")
    return value


def _queue_flag(params: Mapping[str, str | None]) -> bool:
    if "Q" not in params:
        return False
    if params["Q"] is not None:
        raise _Refused("4.00", "queue mode Q takes no value")
    return True


def _version(params: Mapping[str, str | None]) -> str:
    value = _text_param(params, "lwm2m")
    if value is None:
        return DEFAULT_VERSION
    if not _VERSION_RE.fullmatch(value):
        raise _Refused("4.00", f"LwM2M version lwm2m={value!r} is malformed")
    if value not in SUPPORTED_VERSIONS:
        raise _Refused("4.12", f"LwM2M version {value} is not supported")
    return value


Links = tuple[tuple[Path, dict[str, str]], ...]
"""Object links as parsed: ``(path, attributes)`` pairs."""


def _links(
    request: Lwm2mRequest, *, required: bool
) -> tuple[dict[str, str], Links] | None:
    """Root attributes and object links of the payload, or ``None``."""
    if request.content_format not in (None, ContentFormat.LINK_FORMAT):
        raise _Refused(
            "4.15",
            f"object links must be link-format (40), not {request.content_format}",
        )
    if not request.payload.strip():
        if required:
            raise _Refused("4.00", "the registration carries no object links")
        return None
    try:
        root, links = parse_registration_links(request.payload.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _Refused(
            "4.00", f"object links are not UTF-8 (byte {exc.start})"
        ) from None
    except FormatError as exc:
        raise _Refused("4.00", f"object links do not parse: {exc}") from None
    if not links:
        raise _Refused("4.00", "the registration carries no object links")
    return dict(root), tuple((path, dict(attributes)) for path, attributes in links)


# ---------------------------------------------------------------------------
# The registry


@attrs.define(eq=False)
class Lwm2mRegistry:
    """Every registration, with the LwM2M rules; no I/O, time is given.

    ``registrations`` maps each endpoint to its registration.  Operations
    raise ``_Refused`` for requests to answer with an error.
    """

    expiry_grace: float = 0.0
    registrations: dict[str, Registration] = attrs.field(factory=dict)
    _by_location: dict[str, str] = attrs.field(factory=dict, init=False)

    def by_location(self, location: str) -> Registration | None:
        """The registration at ``rd/<location>``, if any."""
        endpoint = self._by_location.get(location)
        return None if endpoint is None else self.registrations.get(endpoint)

    def by_peer(self, peer: Peer) -> Registration | None:
        """The registration of the client that sent a request.

        Over ``coaps`` the PSK identity names it; over ``coap`` its address.
        """
        if peer.scheme == "coaps":
            if peer.identity is None:
                return None
            try:
                endpoint = peer.identity.decode("utf-8")
            except UnicodeDecodeError:
                return None
            registration = self.registrations.get(endpoint)
            if registration is not None and registration.scheme == "coaps":
                return registration
            return None
        for registration in self.registrations.values():
            if (registration.scheme, registration.remote) == (
                peer.scheme,
                peer.address,
            ):
                return registration
        return None

    def register(
        self, request: Lwm2mRequest, peer: Peer, now: float
    ) -> tuple[Registration, Registration | None]:
        """Register; return the registration and the one it replaced."""
        params = parse_query(request.query)
        endpoint = _text_param(params, "ep")
        if endpoint is None:
            raise _Refused("4.00", "the registration has no endpoint name ep")
        lifetime = _lifetime(params) or DEFAULT_LIFETIME
        binding = _binding(params) or DEFAULT_BINDING
        queue = _queue_flag(params) or "Q" in binding
        version = _version(params)
        sms = _text_param(params, "sms")
        parsed = _links(request, required=True)
        assert parsed is not None
        root_attributes, links = parsed
        if peer.scheme == "coaps" and peer.identity != endpoint.encode("utf-8"):
            raise _Refused(
                "4.03",
                f"PSK identity {peer.identity!r} may not register endpoint "
                f"{endpoint!r}",
            )
        previous = self.registrations.pop(endpoint, None)
        if previous is not None:
            self._by_location.pop(previous.location, None)
        location = secrets.token_hex(4)
        while location in self._by_location:  # pragma: no cover - 2**-32
            location = secrets.token_hex(4)
        registration = Registration(
            endpoint=endpoint,
            location=location,
            lifetime=lifetime,
            binding=binding,
            queue_mode=queue,
            lwm2m_version=version,
            links=links,
            root_attributes=root_attributes,
            remote=peer.address,
            scheme=peer.scheme,
            identity=peer.identity,
            sms=sms,
            registered_at=now,
            updated_at=now,
            expires_at=now + lifetime + self.expiry_grace,
            peer=peer,
        )
        self.registrations[endpoint] = registration
        self._by_location[location] = endpoint
        return registration, previous

    def update(
        self, location: str, request: Lwm2mRequest, peer: Peer, now: float
    ) -> Registration:
        """Apply a registration Update to ``rd/<location>``."""
        registration = self._owned(location, peer)
        params = parse_query(request.query)
        if "ep" in params:
            raise _Refused("4.00", "an Update cannot change the endpoint name")
        lifetime = _lifetime(params) or registration.lifetime
        binding = _binding(params) or registration.binding
        # 1.1 sets queue mode at registration (Q); a 1.0 binding carries it
        # (UQ), so a 1.0 Update with a new binding may change it.
        queue = registration.queue_mode or _queue_flag(params)
        if "b" in params and registration.lwm2m_version == "1.0":
            queue = "Q" in binding
        parsed = _links(request, required=False)
        if parsed is not None:
            registration = attrs.evolve(
                registration, root_attributes=parsed[0], links=parsed[1]
            )
        updated = attrs.evolve(
            registration,
            lifetime=lifetime,
            binding=binding,
            queue_mode=queue,
            sms=_text_param(params, "sms") or registration.sms,
            remote=peer.address,
            updated_at=now,
            expires_at=now + lifetime + self.expiry_grace,
            peer=peer,
        )
        self.registrations[updated.endpoint] = updated
        return updated

    def deregister(self, location: str, peer: Peer) -> Registration:
        """Remove ``rd/<location>``."""
        registration = self._owned(location, peer)
        del self.registrations[registration.endpoint]
        del self._by_location[location]
        return registration

    def expire(self, now: float) -> list[Registration]:
        """Remove and return the registrations whose lifetime ran out."""
        expired = [r for r in self.registrations.values() if r.expires_at <= now]
        for registration in expired:
            del self.registrations[registration.endpoint]
            self._by_location.pop(registration.location, None)
        return expired

    def next_expiry(self) -> float:
        """The earliest ``expires_at``, or ``inf`` without registrations."""
        return min(
            (r.expires_at for r in self.registrations.values()), default=math.inf
        )

    def _owned(self, location: str, peer: Peer) -> Registration:
        registration = self.by_location(location)
        if registration is None:
            raise _Refused("4.04", f"no registration at {LOCATION_PREFIX}/{location}")
        if registration.scheme == "coaps" and (
            peer.scheme != "coaps" or peer.identity != registration.identity
        ):
            raise _Refused(
                "4.03",
                f"{LOCATION_PREFIX}/{location} belongs to another DTLS identity",
            )
        return registration


# ---------------------------------------------------------------------------
# Payload codecs


def _code(dotted: str) -> Code:
    major, _, minor = dotted.partition(".")
    return Code((int(major) << 5) | int(minor))


def _dotted(code: Code) -> str:
    return str(code.dotted)


TypeOf = Callable[[Path], ResourceType | None]
"""A resource's type by path, as the codecs of ``lwm2m_formats`` take it."""

# What a single-value format decodes to when the caller knows no type.
_UNTYPED: Final[dict[int, ResourceType | None]] = {
    ContentFormat.TEXT: ResourceType.STRING,
    ContentFormat.OPAQUE: ResourceType.OPAQUE,
}


def decode_payload(
    payload: bytes,
    content_format: int | None,
    path: Path,
    *,
    type_of: TypeOf | None = None,
    now: float | None = None,
) -> list[Record]:
    """The records of a response to a request on ``path``.

    ``type_of`` gives resource types for TLV, text and CBOR; without one a
    TLV value stays raw bytes, text stays a string and opaque stays bytes.
    A response without a Content-Format is read as text.  ``now`` resolves
    SenML's relative times.

    Raises:
        FormatError: the payload does not decode, or its format is not one
            the codecs know.
    """
    fmt = ContentFormat.TEXT if content_format is None else content_format
    fallback = _UNTYPED.get(fmt)

    def typed(resource: Path) -> ResourceType | None:
        rtype = None if type_of is None else type_of(resource)
        return fallback if rtype is None else rtype

    try:
        return decode(payload, fmt, path, typed, now=now)
    except UnsupportedContentFormat as exc:
        raise FormatError(str(exc)) from None


def type_from_value(value: object) -> ResourceType | None:
    """The resource type a Python value suggests (``int`` is Integer)."""
    for kind, rtype in (
        (bool, ResourceType.BOOLEAN),
        (int, ResourceType.INTEGER),
        (float, ResourceType.FLOAT),
        (str, ResourceType.STRING),
        (bytes, ResourceType.OPAQUE),
        (ObjLink, ResourceType.OBJLNK),
    ):
        if isinstance(value, kind):
            return rtype
    return None


def encode_payload(
    records: Sequence[Record],
    content_format: ContentFormat,
    path: Path,
    *,
    type_of: TypeOf | None = None,
) -> bytes:
    """``records`` for a Write on ``path`` in ``content_format``.

    Without ``type_of`` each record's Python value decides its type.

    Raises:
        FormatError: the records cannot be put in that format (e.g. two
            records as text), or the format is not one the codecs know.
    """
    by_value = {record.path: type_from_value(record.value) for record in records}

    def typed(resource: Path) -> ResourceType | None:
        rtype = None if type_of is None else type_of(resource)
        return by_value.get(resource) if rtype is None else rtype

    try:
        return encode(records, content_format, path, typed)
    except UnsupportedContentFormat as exc:
        raise FormatError(str(exc)) from None


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


@attrs.define(eq=False)
class LocalLwm2mServer:
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

    # -- the bootstrap interface --------------------------------------------

    def _on_bootstrap_request(self, request: Lwm2mRequest, peer: Peer) -> Reply:
        """Bootstrap-Request ``POST /bs?ep=..[&pct=..]``: 2.04, then provision.

        The provisioning runs as its own task (``_bootstrap_client``) toward
        the remote the request came from, after this reply has gone out.
        """
        params = parse_query(request.query)
        endpoint = _text_param(params, "ep")
        if endpoint is None:
            raise _Refused("4.00", "the Bootstrap-Request has no endpoint name ep")
        pct = _text_param(params, "pct")
        if pct is not None and not pct.isdigit():
            raise _Refused("4.00", f"preferred content format pct={pct!r} is malformed")
        account = self.settings.bootstrap.get(endpoint, self.settings.bootstrap_default)
        if account is None:
            # TS Transport (Bootstrap-Request): 4.00 Bad Request is the
            # answer to an unknown Endpoint Client Name.  (4.04 would say the
            # /bs resource itself is missing, which it is not.)
            diagnostic = f"no bootstrap account for endpoint {endpoint!r}"
            self._emit(EventKind.BOOTSTRAP_FAILED, endpoint, detail=diagnostic)
            raise _Refused("4.00", diagnostic)
        if peer.scheme == "coaps" and peer.identity != endpoint.encode("utf-8"):
            # As for registrations: a DTLS identity bootstraps only itself.
            diagnostic = (
                f"PSK identity {peer.identity!r} may not bootstrap endpoint "
                f"{endpoint!r}"
            )
            self._emit(EventKind.BOOTSTRAP_FAILED, endpoint, detail=diagnostic)
            raise _Refused("4.03", diagnostic)
        fmt = account.content_format
        if fmt is None:
            preferred = None if pct is None else int(pct)
            fmt = (
                ContentFormat(preferred)
                if preferred in BOOTSTRAP_FORMATS
                else ContentFormat.SENML_CBOR
            )
        nursery = self._nursery
        if nursery is None:
            raise _Refused("5.03", "the bootstrap server is not running")
        previous = self._bootstraps.pop(endpoint, None)
        if previous is not None:
            previous.cancel()
        scope = trio.CancelScope()
        self._bootstraps[endpoint] = scope
        self._emit(
            EventKind.BOOTSTRAP_REQUESTED, endpoint, detail=f"content format {fmt}"
        )
        nursery.start_soon(self._bootstrap_client, scope, endpoint, account, fmt, peer)
        return Reply(code="2.04")

    async def _bootstrap_client(
        self,
        scope: trio.CancelScope,
        endpoint: str,
        account: BootstrapAccount,
        fmt: ContentFormat,
        peer: Peer,
    ) -> None:
        """Provision ``account`` on the client; a BOOTSTRAPPED or
        BOOTSTRAP_FAILED event says how it went."""
        try:
            with scope:
                try:
                    written = await self._provision(endpoint, account, fmt, peer)
                except (Lwm2mServerError, FormatError) as exc:
                    log.warning(
                        "lwm2m_bootstrap_failed", endpoint=endpoint, reason=str(exc)
                    )
                    self._emit(EventKind.BOOTSTRAP_FAILED, endpoint, detail=str(exc))
                else:
                    self._emit(EventKind.BOOTSTRAPPED, endpoint, records=written)
            if scope.cancelled_caught:
                self._emit(
                    EventKind.BOOTSTRAP_FAILED,
                    endpoint,
                    detail="replaced by a newer Bootstrap-Request",
                )
        finally:
            if self._bootstraps.get(endpoint) is scope:
                del self._bootstraps[endpoint]

    async def _provision(
        self,
        endpoint: str,
        account: BootstrapAccount,
        fmt: ContentFormat,
        peer: Peer,
    ) -> list[Record]:
        """Bootstrap-Delete, (Discover,) Bootstrap-Write, Bootstrap-Finish.

        Returns the records written.  Raises ``Lwm2mRequestError`` for an
        unexpected answer, ``Lwm2mUnreachable``/``Lwm2mTimeout`` as
        ``_request``.
        """
        for object_id in (SECURITY_OBJECT, SERVER_OBJECT):
            # The client keeps its bootstrap server's Security instance.
            await self._bootstrap_request(
                endpoint, peer, "Bootstrap-Delete", aiocoap.DELETE, (object_id,),
                expect="2.02",
            )  # fmt: skip
        security = account.security_instance
        if security is None:
            security = await self._free_security_instance(endpoint, peer)
        security_records = account.security_records(endpoint, security)
        server_records = account.server_records()
        for instance, records in (
            ((SECURITY_OBJECT, security), security_records),
            ((SERVER_OBJECT, account.server_instance), server_records),
        ):
            path = Path.from_ids(instance)
            await self._bootstrap_request(
                endpoint, peer, "Bootstrap-Write", aiocoap.PUT, instance,
                payload=encode_payload(records, fmt, path), content_format=fmt,
                expect="2.04",
            )  # fmt: skip
        await self._bootstrap_request(
            endpoint, peer, "Bootstrap-Finish", aiocoap.POST, (BOOTSTRAP_PATH,),
            expect="2.04",
        )  # fmt: skip
        return security_records + server_records

    async def _free_security_instance(self, endpoint: str, peer: Peer) -> int:
        """Bootstrap-Discover ``/0``: the lowest Security instance id free.

        A client that does not do Discover (a 4.xx: LwM2M 1.0 has no
        Bootstrap-Discover) gets ``FALLBACK_SECURITY_INSTANCE``; a 5.xx is
        the client failing, and fails the bootstrap.
        """
        try:
            response = await self._bootstrap_request(
                endpoint, peer, "Bootstrap-Discover", aiocoap.GET,
                (SECURITY_OBJECT,), accept=ContentFormat.LINK_FORMAT, expect="2.05",
            )  # fmt: skip
        except Lwm2mRequestError as exc:
            if exc.code is None or not exc.code.startswith("4."):
                raise
            log.info(
                "lwm2m_bootstrap_discover_unsupported",
                endpoint=endpoint,
                code=exc.code,
                instance=FALLBACK_SECURITY_INSTANCE,
            )
            return FALLBACK_SECURITY_INSTANCE
        taken: set[int] = set()
        for target in _LINK_TARGET_RE.findall(response.payload.decode("latin-1")):
            try:
                path = Path.parse(target)
            except FormatError:
                raise Lwm2mRequestError(
                    f"Bootstrap-Discover of {endpoint!r} named {target!r}, "
                    "not an LwM2M path",
                    code=_dotted(response.code),
                ) from None
            if path.object_id == SECURITY_OBJECT and path.instance is not None:
                taken.add(path.instance)
        return min(set(range(len(taken) + 1)) - taken)

    async def _bootstrap_request(
        self,
        endpoint: str,
        peer: Peer,
        operation: str,
        method: Code,
        ids: tuple[int | str, ...],
        *,
        payload: bytes = b"",
        content_format: ContentFormat | None = None,
        accept: ContentFormat | None = None,
        expect: str,
    ) -> aiocoap.Message:
        """One bootstrap request to the client at ``peer``, answered ``expect``.

        It goes through the context that received the Bootstrap-Request,
        to the remote aiocoap recorded (inside the DTLS session over
        ``coaps``).
        """
        from trio_asyncio import aio_as_trio

        context = self._contexts.get(peer.scheme)
        if context is None or peer.remote is None or self._loop is None:
            raise Lwm2mUnreachable(
                f"{operation} to {endpoint!r}: {peer.scheme} is not being served"
            )
        segments = tuple(str(i) for i in ids)
        where = "/" + "/".join(segments)
        message = aiocoap.Message(code=method, uri_path=segments)
        message.remote = peer.remote
        if payload:
            message.payload = payload
        if content_format is not None:
            message.opt.content_format = int(content_format)
        if accept is not None:
            message.opt.accept = int(accept)
        log.debug(
            "lwm2m_bootstrap_request", endpoint=endpoint, op=operation, path=where
        )
        try:
            with trio.fail_after(self.settings.request_timeout):
                response: aiocoap.Message = await aio_as_trio(
                    _aio_request, loop=self._loop
                )(context, message)
        except trio.TooSlowError:
            raise Lwm2mTimeout(
                f"no answer from {endpoint!r} to {operation} {where} within "
                f"{self.settings.request_timeout} s"
            ) from None
        except aiocoap.error.Error as exc:
            reason = str(exc) or type(exc).__name__
            raise Lwm2mUnreachable(
                f"{operation} {where} to {endpoint!r} failed: {reason}"
            ) from exc
        except asyncio.CancelledError:
            # aiocoap cancelled it (shutdown), not Trio (STYLE P3).
            raise Lwm2mUnreachable(
                f"{operation} {where} to {endpoint!r} was cancelled: the server is "
                "stopping"
            ) from None
        code = _dotted(response.code)
        if code != expect:
            raise Lwm2mRequestError(
                f"{operation} {where} on {endpoint!r} answered {code} "
                f"{_diagnostic(response)}".rstrip(),
                code=code,
            )
        return response

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
        try:
            if observe is None:
                with trio.fail_after(self.settings.request_timeout):
                    response: aiocoap.Message = await aio_as_trio(
                        _aio_request, loop=self._loop
                    )(context, message)
            else:
                message.opt.observe = 0
                response = await aio_as_trio(_aio_observe, loop=self._loop)(
                    context, message, observe
                )
        except trio.TooSlowError:
            raise Lwm2mTimeout(
                f"no response from {endpoint!r} to {method} {path} within "
                f"{self.settings.request_timeout} s"
            ) from None
        except aiocoap.error.Error as exc:
            reason = str(exc) or type(exc).__name__
            raise Lwm2mUnreachable(
                f"{method} {path} to {endpoint!r} failed: {reason}"
            ) from exc
        except asyncio.CancelledError:
            # aiocoap cancelled it (shutdown), not Trio (STYLE P3).
            raise Lwm2mUnreachable(
                f"{method} {path} to {endpoint!r} was cancelled: the server is stopping"
            ) from None
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
