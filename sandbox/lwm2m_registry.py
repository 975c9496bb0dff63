"""The registration interface of the local LwM2M server, without I/O.

``Lwm2mRegistry`` keeps every ``Registration`` and applies the LwM2M rules
to Register, Update and De-register requests (``Lwm2mRequest`` from a
``Peer``); the query and link-format parsing they need is here too.  It is
pure given the time: ``sandbox.lwm2m_server`` feeds it requests and
``trio.current_time()``, and turns its ``_Refused`` into error replies.

Design note: nothing here knows CoAP or Trio, so the registration rules are
tested with plain calls; the types a request and its answer travel in
(``Peer``, ``Lwm2mRequest``, ``Reply``) live here, the lowest module of the
server, so every other module can share them without an import cycle.

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
  task of ``LocalLwm2mServer`` sleeps until the earliest deadline.
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs

from protocols.lwm2m_formats import (
    ContentFormat,
    FormatError,
    Path,
    parse_registration_links,
)

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


LOCATION_PREFIX: Final = "rd"
"""The first Location-Path segment of every registration."""


# A well-formed ``lwm2m`` version: major.minor.
_VERSION_RE: Final = re.compile(r"[0-9]+\.[0-9]+")


# ---------------------------------------------------------------------------
# Requests, replies and registrations


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
