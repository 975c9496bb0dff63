"""The Bootstrap-Server role of the local LwM2M server.

``BootstrapAccount`` says what a client is provisioned with (one LwM2M
server account: its Security and Server object instances); ``BootstrapRole``
is the part of ``LocalLwm2mServer`` that answers a Bootstrap-Request and
runs the bootstrap sequence toward the client.

Design note: ``BootstrapRole`` is a mixin of ``LocalLwm2mServer``: its
methods use the server's settings, events, nursery and aiocoap contexts
(declared for the type checker below), so the sequence is moved here as
it was written, one request after the other, and ``LocalLwm2mServer``
routes ``POST /bs`` to it.

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
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import aiocoap
import aiocoap.error
import attrs
import structlog
import trio
from aiocoap.numbers.codes import Code

from protocols.lwm2m_formats import ContentFormat, FormatError, Path, Record
from protocols.lwm2m_objects import (
    SECURITY,
    SECURITY_MODE_NOSEC,
    SECURITY_MODE_PSK,
    SERVER,
    SHORT_SERVER_ID_RANGE,
)
from sandbox.lwm2m_coap import _aio_request, _diagnostic, _dotted, request_errors
from sandbox.lwm2m_events import (
    EventKind,
    Lwm2mEvent,
    Lwm2mRequestError,
    Lwm2mServerError,
    Lwm2mUnreachable,
)
from sandbox.lwm2m_payload import encode_payload
from sandbox.lwm2m_registry import (
    BINDING_LETTERS,
    DEFAULT_BINDING,
    DEFAULT_LIFETIME,
    MAX_LIFETIME,
    Lwm2mRequest,
    Peer,
    Registration,
    Reply,
    _Refused,
    _text_param,
    parse_query,
)

if TYPE_CHECKING:
    from sandbox.lwm2m_server import Lwm2mServerSettings

log = structlog.get_logger(actor="sandbox.lwm2m")


BOOTSTRAP_PATH: Final = "bs"
"""The path of the Bootstrap-Request (client) and Bootstrap-Finish (server)."""

SECURITY_OBJECT: Final = SECURITY.id
"""The LwM2M Security object (server URIs and credentials)."""

SERVER_OBJECT: Final = SERVER.id
"""The LwM2M Server object (short server id, lifetime, binding)."""

SHORT_SERVER_ID_MAX: Final = int(SHORT_SERVER_ID_RANGE.max or 0)
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


# The target of each link in a CoRE link-format payload.
_LINK_TARGET_RE: Final = re.compile(r"<([^>]*)>")


# ---------------------------------------------------------------------------
# The account


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


# ---------------------------------------------------------------------------
# The bootstrap sequence


class BootstrapRole:
    """The Bootstrap-Server role of ``LocalLwm2mServer`` (a mixin).

    Answers a Bootstrap-Request (``_on_bootstrap_request``, called from
    ``LocalLwm2mServer.handle``) and provisions the client from a task of
    its own; see the module docstring.
    """

    __slots__ = ()

    if TYPE_CHECKING:
        # What the role uses of LocalLwm2mServer.
        settings: Lwm2mServerSettings
        _loop: Any
        _contexts: dict[str, aiocoap.Context]
        _nursery: trio.Nursery | None
        _bootstraps: dict[str, trio.CancelScope]

        def _emit(
            self,
            kind: EventKind,
            endpoint: str,
            *,
            registration: Registration | None = None,
            records: Sequence[Record] = (),
            path: Path | None = None,
            detail: str = "",
        ) -> Lwm2mEvent: ...

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
        timeout = self.settings.request_timeout
        with request_errors(endpoint, f"{operation} {where}", timeout):
            with trio.fail_after(timeout):
                response: aiocoap.Message = await aio_as_trio(
                    _aio_request, loop=self._loop
                )(context, message)
        code = _dotted(response.code)
        if code != expect:
            raise Lwm2mRequestError(
                f"{operation} {where} on {endpoint!r} answered {code} "
                f"{_diagnostic(response)}".rstrip(),
                code=code,
            )
        return response
