"""LwM2M 1.1, as the firmware's ``lwm2m_integration.c`` and client utils use it.

Design note
-----------
One ``CoapSession`` (``backends.coap_transport``) per connection attempt,
``coaps://`` with DTLS PSK (identity = the endpoint name) or plain
``coap://``.  On it the backend plays Zephyr's RD client (``wire.md`` §5.1):

* Register: ``POST /rd?ep=<endpoint>&lt=<lifetime>&lwm2m=1.1&b=U&Q`` with
  the CoRE link list of the objects; 2.01 gives the location ``/rd/<id>``.
* Update: ``POST /rd/<id>`` every ``update_period`` (3600 s) capped by the
  lifetime, ``update_early`` (60 s) early, as a Trio deadline.  A failed
  update (an error code, no answer) is the RD client's REG_TIMEOUT: the
  internal state goes back to CONNECTING and the client registers again.
* De-register: ``DELETE /rd/<id>`` on ``disconnect()``.

The internal state and the RD client's events map to wrapper events as
``asset_tracker_v2.md`` §8.6 says: registration complete ->
``WrapperConnected`` (and ``/1/0/1`` forced back to the configured
lifetime); registration failure -> the session is stopped, then
``WrapperDisconnected``; a de-registration failure or a lost network session
-> ``WrapperError`` (the cloud actor's error path, hence a reboot, as in the
firmware).  The backend never retries on its own beyond what the RD client
does (re-registering after a failed update); the cloud actor's backoff owns
new attempts.

Data goes out with the LwM2M Send operation (confirmable ``POST /dp``,
SenML-CBOR) of the records under the payload's paths, read from the
``ObjectStore`` the codec writes into.  A Send runs in the background so the
cloud actor is never held for CoAP's retransmissions; its result is logged
and counted (the cloud actor takes a Send as delivered once the backend took
it).  Server requests (Read, Write, Execute, Observe, Discover, Create,
Delete) are answered from the store with the LwM2M response codes; a change
of any value re-renders the server's observations of it.

Queue mode (``b=U&Q``): after ``queue_uptime`` (30 s) without traffic in
either direction the client is *sleeping*.  On the device that is the radio
going idle (RX off): the server holds its requests until the device is next
heard from, which the registration update or the next Send brings about.
A host keeps its UDP socket, so here *sleeping* changes no behaviour on our
side: it is reported (``snapshot()``, a log line at each transition) and a
server request that arrives while sleeping is still answered and wakes the
client.  A server that honours queue mode (the sandbox server does) sends
nothing in that window.

Assistance (``wire.md`` §5.5): only one GNSS assistance request is in
flight.  A second one (A-GNSS while P-GPS is pending, or the reverse) is
kept, one per kind, and sent when the server writes the result code
``/33625/0/7``.  The object 33625 is shared by both kinds, so a kept request
carries the records it was encoded with and writes them back when it goes
out.  The server's ``/33625/0/6`` write (the assistance data) becomes
``WrapperAgnssDataReceived`` or ``WrapperPgpsDataReceived`` by the kind in
flight; the ground-fix answer (``/33626/0/1`` with the location in
``/0/2..4``) becomes ``WrapperCloudLocationResultReceived``.

The Device object's Reboot (``/3/0/4``) becomes ``WrapperRebootRequest``,
or ``WrapperFotaDone`` when its argument says the reboot comes from the
Firmware Update object (``REBOOT_FROM_FOTA``).  FOTA itself is object 5,
handled by ``backends.lwm2m_fota`` when the backend has a firmware store.

Credentials: with ``provision_credentials`` the PSK and identity are
written into the Security object at start.  The firmware takes the modem
offline to store the key (LTE_DISCONNECT_REQUEST, then LTE_CONNECT_REQUEST);
a host keeps the key in memory, so neither request is raised.

Bootstrap (``bootstrap = true``): ``server_uri`` is then the bootstrap
server (Security ``/0/0``, Bootstrap-Server true).  While the Security
object holds no other server account, an attempt first bootstraps: a session
to the bootstrap server, ``POST /bs?ep=<endpoint>&pct=112``, Bootstrap-Write
and Bootstrap-Delete of the Security and Server objects (other objects hold
the device's state and are refused), Bootstrap-Discover, and
Bootstrap-Finish (``POST /bs``, 4.06 while no usable server account and
Server instance exist).  Then it registers with the account written.  A
failed bootstrap is BOOTSTRAP_REG_FAILURE (``WrapperDisconnected``); a
registration that fails forgets the written accounts, so that the next
attempt bootstraps again, as the RD client falls back to bootstrap.
"""

from __future__ import annotations

import enum
import errno
import math
import pathlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Final, Protocol

import attrs
import structlog
import trio

from backends.base import CloudBackend, Emit
from backends.coap_transport import CoapRequest, CoapResponse, CoapSettings
from backends.errors import (
    BackendBusy,
    BackendError,
    BackendNotConnected,
)
from backends.lwm2m_fota import FirmwareUpdateObject
from protocols import lwm2m_codec as objs
from protocols import wrapper as wrap
from protocols.base import Payload
from protocols.codec import CloudCodec
from protocols.config import DeviceConfig
from protocols.lwm2m_codec import Lwm2mCodec
from protocols.lwm2m_formats import (
    ContentFormat,
    FormatError,
    Path,
    Record,
    ResourceType,
    UnsupportedContentFormat,
    decode,
    decode_senml_cbor,
    encode,
    encode_senml_cbor,
)
from protocols.lwm2m_objects import (
    SECURITY_MODE_NOSEC,
    SECURITY_MODE_PSK,
    LwM2MError,
    ObjectStore,
)
from state.firmware import FirmwareStore

if TYPE_CHECKING:
    from tracker.config import Lwm2mConfig

log = structlog.get_logger(actor="lwm2m")

# CONFIG_LWM2M_ENGINE_DEFAULT_LIFETIME (overlay-lwm2m.conf), seconds.
DEFAULT_LIFETIME: Final = 43200
# CONFIG_LWM2M_UPDATE_PERIOD (overlay-lwm2m.conf), seconds.
UPDATE_PERIOD: Final = 3600
# The registration update is sent this many seconds before it is due.
UPDATE_EARLY: Final = 60
# CONFIG_LWM2M_QUEUE_MODE_UPTIME: seconds the client listens after traffic.
QUEUE_UPTIME: Final = 30.0
# The shortest wait between two registration updates (a tiny lifetime).
UPDATE_MIN_DELAY: Final = 1.0
# Seconds the bootstrap server gets, after our Bootstrap-Request, to finish.
BOOTSTRAP_TIMEOUT: Final = 120.0
# Seconds a de-registration may take on disconnect before it counts as failed.
DEREGISTER_TIMEOUT: Final = 10.0
# Seconds a stopping backend may spend de-registering in all (the DELETE
# and the attempt task's end), so a stop never hangs on the server.
STOP_GRACE: Final = DEREGISTER_TIMEOUT + 5.0
# The LwM2M version and binding the client registers with.
LWM2M_VERSION: Final = "1.1"
BINDING: Final = "U"
# Short server id of the one LwM2M server (/0/0/10, /1/0/0).
SHORT_SERVER_ID: Final = 1
# The Reboot execute argument the Firmware Update object passes (its own
# reboot after an update): the firmware's lwm2m_client_utils signals it as
# the reboot source; here it is this execute argument.
REBOOT_FROM_FOTA: Final = b"fota"
# 33625/0/7 result codes (wire.md §5.3).
ASSIST_RESULT_OK: Final = 0
ASSIST_RESULT_TEMPORARY: Final = 1
ASSIST_RESULT_PERMANENT: Final = -1
# Content formats the client answers Reads in, and the default one.
_READ_FORMATS: Final = frozenset(
    {
        ContentFormat.TEXT, ContentFormat.OPAQUE, ContentFormat.CBOR,
        ContentFormat.SENML_JSON, ContentFormat.SENML_CBOR, ContentFormat.TLV,
    }
)  # fmt: skip
_DEFAULT_READ_FORMAT: Final = ContentFormat.TLV


class Lwm2mState(enum.Enum):
    """The integration's internal state (``lwm2m_integration.c``)."""

    DISCONNECTED = "DISCONNECTED"
    CONNECTING = "CONNECTING"
    CONNECTED = "CONNECTED"


class SessionLike(Protocol):
    """What the backend needs of ``backends.coap_transport.CoapSession``."""

    async def run(self, *, task_status: Any = ...) -> None: ...

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
    ) -> CoapResponse: ...

    def notify(self, path_prefix: str, *, include_ancestors: bool = False) -> None: ...

    async def aclose(self) -> None: ...


SessionFactory = Callable[..., SessionLike]


@attrs.frozen(kw_only=True)
class Lwm2mSettings:
    """How the client reaches its server (``[cloud.lwm2m]`` plus the device).

    ``psk`` is the raw key (the configuration holds it as hex).
    """

    server_uri: str
    endpoint: str
    psk: bytes
    lifetime: int = DEFAULT_LIFETIME
    update_period: int = UPDATE_PERIOD
    update_early: int = UPDATE_EARLY
    queue_uptime: float = QUEUE_UPTIME
    bootstrap: bool = False
    provision_credentials: bool = True
    uses_default_psk: bool = False
    request_timeout: float = 93.0
    ack_timeout: float = 4.0
    # Seconds a DTLS handshake may take.  A server that silently drops a
    # handshake made with a wrong key is only detected by this timeout, and
    # a new attempt cannot start while one runs (the firmware's
    # -EINPROGRESS), so it must be shorter than the shortest backoff delay.
    handshake_timeout: float = 30.0

    @property
    def secure(self) -> bool:
        """Whether the server is reached over DTLS."""
        return self.server_uri.startswith("coaps:")

    def update_delay(self, lifetime: int) -> float:
        """Seconds from a registration (or update) to the next update."""
        period = min(self.update_period, lifetime)
        return max(UPDATE_MIN_DELAY, float(period - self.update_early))


@attrs.frozen
class _Account:
    """A server account of the Security object: where and with what key."""

    uri: str
    identity: bytes
    key: bytes
    short_id: int | None

    def __str__(self) -> str:
        return self.uri


class _BootstrapFailed(Exception):
    """The bootstrap server refused, was silent, or never finished."""


class _RegistrationFailed(Exception):
    """The server refused or never answered a registration."""


@attrs.define(eq=False)
class _Started:
    """A task status that remembers whether ``started`` was called."""

    status: Any
    done: bool = False

    def started(self, value: Any = None) -> None:
        self.done = True
        self.status.started(value)


@attrs.define(eq=False)
class _Attempt:
    """One connection attempt and, once registered, its session."""

    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    done: trio.Event = attrs.field(factory=trio.Event)
    session: SessionLike | None = None
    location: str | None = None
    # The lifetime the server was last told (registration or update).
    lifetime: int = 0
    lost: BackendError | None = None
    # Set by disconnect(): de-register, then stop.
    stopping: bool = False


@attrs.define(eq=False)
class _Assistance:
    """The GNSS assistance request in flight and the ones kept for later."""

    in_flight: str | None = None
    # kind ("agnss" / "pgps") -> (paths, records at encode time)
    kept: dict[str, tuple[Payload, list[Record]]] = attrs.field(factory=dict)


class Lwm2mBackend(CloudBackend):
    """An LwM2M 1.1 client (module docstring)."""

    sends_object_paths: ClassVar[bool] = True
    config_before_connected: ClassVar[bool] = False
    handles_agnss_itself: ClassVar[bool] = False

    def __init__(
        self,
        settings: Lwm2mSettings,
        codec: Lwm2mCodec,
        *,
        session_factory: SessionFactory | None = None,
        firmware: FirmwareStore | None = None,
        http_ca_file: pathlib.Path | None = None,
    ) -> None:
        self.settings = settings
        self.lwm2m_codec = codec
        self.codec: CloudCodec = codec
        self.store: ObjectStore = codec.store
        self.state = Lwm2mState.DISCONNECTED
        self.last_failure: str | None = None
        self.counters: dict[str, int] = {}
        if session_factory is None:
            from backends.coap_transport import CoapSession

            session_factory = CoapSession
        self._session_factory = session_factory
        self._emit: Emit | None = None
        self._early: list[wrap.WrapperEvent] = []
        self._bootstrap_finished: trio.Event | None = None
        self._update_now = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._attempt: _Attempt | None = None
        self._assist = _Assistance()
        self._last_traffic = -math.inf
        self._sleeping = False
        self._wake = trio.Event()
        codec.config_written = self._config_written
        self._prepare_objects()
        self.fota = self._fota_object(firmware, http_ca_file)
        if settings.uses_default_psk:
            log.warning(
                "lwm2m_default_psk",
                message=(
                    "the LwM2M PSK is the public default key of the firmware "
                    "(CONFIG_LWM2M_INTEGRATION_PSK); anyone can impersonate this "
                    "device with it: never use it in production"
                ),
                endpoint=settings.endpoint,
            )

    # -- objects --------------------------------------------------------------

    def _prepare_objects(self) -> None:
        store, s = self.store, self.settings
        # /0/0: the configured server, or the bootstrap server, which then
        # writes the server's account (another /0 instance) and /1.
        if not store.has("/0/0"):
            store.create(objs.SECURITY, 0)
        store.set("/0/0/0", s.server_uri)
        store.set("/0/0/1", s.bootstrap)
        store.set("/0/0/2", SECURITY_MODE_PSK if s.secure else SECURITY_MODE_NOSEC)
        if s.provision_credentials:
            # LWM2M_INTEGRATION_PROVISION_CREDENTIALS: the key goes into the
            # Security object at start (the modem's sec tag on the device).
            store.set("/0/0/3", s.endpoint.encode())
            store.set("/0/0/5", s.psk)
        if not s.bootstrap:
            store.set("/0/0/10", SHORT_SERVER_ID)
            if not store.has("/1/0"):
                store.create(objs.SERVER, 0)
            store.set("/1/0/0", SHORT_SERVER_ID)
            store.set("/1/0/1", s.lifetime)
            store.set("/1/0/7", BINDING)
        store.on_execute("/3/0/4", self._on_reboot)
        store.on_write(objs.SERVER, self._on_server_write)
        for iid in store.instances(objs.SERVER):
            store.on_execute(f"/{objs.SERVER}/{iid}/8", self._on_update_trigger)
        store.on_write(objs.GNSS_ASSISTANCE, self._on_assistance_write)
        store.on_write(objs.GROUND_FIX, self._on_ground_fix_write)
        store.on_change(self._on_change)

    def _fota_object(
        self, firmware: FirmwareStore | None, ca_file: pathlib.Path | None
    ) -> FirmwareUpdateObject | None:
        """Object 5, when there is a firmware store to update."""
        if firmware is None:
            return None
        # It creates /5/0 itself and hooks its writes and the Update execute.
        return FirmwareUpdateObject(
            self.store, firmware, emit=self._send_event_later, ca_file=ca_file
        )

    # -- the wrapper API ----------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Own the connection tasks and the queue-mode watch until cancelled.

        Cancellation: a registered client de-registers first (bounded by
        ``DEREGISTER_TIMEOUT``), so a stopped service leaves no registration
        behind for the server to expire.  The firmware never gets the
        chance (it reboots); the host stops, and says so.  The connection
        tasks run under a shield until then, so the session is still up
        for the ``DELETE``.
        """
        try:
            async with trio.open_nursery() as outer:
                connections = await outer.start(self._connections)
                outer.start_soon(self._queue_watch)
                if self.fota is not None:
                    await outer.start(self.fota.run)
                task_status.started()
                try:
                    await trio.sleep_forever()
                finally:
                    with trio.CancelScope(shield=True):
                        try:
                            with trio.move_on_after(STOP_GRACE):
                                await self.disconnect()
                        finally:
                            connections.cancel()
        finally:
            self._nursery = None
            self._attempt = None
            self.state = Lwm2mState.DISCONNECTED

    async def _connections(
        self, *, task_status: trio.TaskStatus[trio.CancelScope]
    ) -> None:
        """The nursery of the registration and send tasks, shielded (run)."""
        with trio.CancelScope(shield=True) as scope:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started(scope)
                await trio.sleep_forever()

    def init(self, emit: Emit) -> None:
        """Remember where events go (the endpoint is fixed at construction).

        Events raised before (object 5's report of the last boot) go now.
        """
        self._emit = emit
        early, self._early = self._early, []
        for event in early:
            emit(event)

    async def connect(self) -> None:
        """Start a registration; its outcome arrives as an event.

        Raises:
          BackendBusy: not DISCONNECTED (the firmware's -EINPROGRESS).
        """
        if self.state is not Lwm2mState.DISCONNECTED or self._attempt is not None:
            raise BackendBusy(f"the LwM2M client is {self.state.value}")
        if self._nursery is None:
            raise RuntimeError("the backend is not running (run not started)")
        attempt = _Attempt()
        self._attempt = attempt
        self.state = Lwm2mState.CONNECTING
        self._send_event(wrap.WrapperConnecting())
        self._nursery.start_soon(self._attempt_task, attempt)

    async def disconnect(self) -> None:
        """De-register and stop the session.

        The firmware refuses (-ENOTSUP) unless CONNECTED and leaves a
        running registration attempt alone; the host also abandons an
        attempt in progress, which is what the caller (LTE lost) means.
        Emits ``WrapperDisconnected`` if the client was registered; a
        failed de-registration is then reported as ``WrapperError``.
        """
        attempt = self._attempt
        if attempt is None:
            return
        was_connected = self.state is Lwm2mState.CONNECTED
        self._attempt = None
        self.state = Lwm2mState.DISCONNECTED
        if not was_connected or attempt.location is None:
            attempt.scope.cancel()
            await attempt.done.wait()
            return
        attempt.stopping = True
        failure = await self._deregister(attempt)
        attempt.scope.cancel()
        await attempt.done.wait()
        log.info("lwm2m_disconnected", reason="disconnect requested")
        self._send_event(wrap.WrapperDisconnected("disconnect requested"))
        if failure is not None:
            # DEREGISTER_FAILURE -> CLOUD_WRAP_EVT_ERROR, as in the firmware.
            self.last_failure = failure
            self._send_event(wrap.WrapperError(-errno.EIO))

    def cloud_location_response_wait(self) -> bool:
        """The server writes the ground fix back (33626/0/0 report-back)."""
        return self.lwm2m_codec.ground_fix_report_back

    async def data_send(self, payload: Payload, ack: bool, message_id: int) -> None:
        """Send the regular update's paths (LwM2M Send)."""
        self._send_paths("data", payload)

    async def ui_send(self, payload: Payload, ack: bool, message_id: int) -> None:
        """Send a button press (object 3347)."""
        self._send_paths("ui", payload)

    async def cloud_location_send(
        self, payload: Payload, ack: bool, message_id: int
    ) -> None:
        """Send the ground-fix request (object 33626, cells)."""
        self._send_paths("ground_fix", payload)

    async def agnss_request_send(
        self, payload: Payload, ack: bool, message_id: int
    ) -> None:
        """Send the A-GNSS request, or keep it while another is in flight."""
        self._assistance_send("agnss", payload)

    async def pgps_request_send(
        self, payload: Payload, ack: bool, message_id: int
    ) -> None:
        """Send the P-GPS request, or keep it while another is in flight."""
        self._assistance_send("pgps", payload)

    def snapshot(self) -> dict[str, object]:
        """Registration details for the debug view."""
        attempt = self._attempt
        return {
            "kind": "lwm2m",
            "state": self.state.value,
            "connected": self.state is Lwm2mState.CONNECTED,
            "connecting": self.state is Lwm2mState.CONNECTING,
            "endpoint": self.settings.endpoint,
            "server": self.settings.server_uri,
            "location": None if attempt is None else attempt.location,
            "sleeping": self.sleeping,
            "assistance_in_flight": self._assist.in_flight,
            "assistance_kept": sorted(self._assist.kept),
            "last_failure": self.last_failure,
            "counters": dict(self.counters),
        }

    # -- queue mode -----------------------------------------------------------

    @property
    def sleeping(self) -> bool:
        """Whether the queue-mode window has closed (module docstring)."""
        return self._sleeping

    def _traffic(self) -> None:
        self._last_traffic = trio.current_time()
        if self._sleeping:
            self._sleeping = False
            log.debug("lwm2m_awake")
        self._wake.set()

    async def _queue_watch(self) -> None:
        while True:
            self._wake = trio.Event()
            if self.state is Lwm2mState.CONNECTED and not self._sleeping:
                deadline = self._last_traffic + self.settings.queue_uptime
                with trio.move_on_at(deadline):
                    await self._wake.wait()
                    continue
                if self.state is Lwm2mState.CONNECTED:
                    self._sleeping = True
                    log.debug("lwm2m_sleeping", idle=self.settings.queue_uptime)
                continue
            await self._wake.wait()

    # -- the attempt task -------------------------------------------------------

    def _coap_settings(self, account: _Account) -> CoapSettings:
        secure = account.uri.startswith("coaps:")
        return CoapSettings(
            uri=account.uri,
            psk_identity=account.identity if secure else b"",
            psk=account.key if secure else b"",
            request_timeout=self.settings.request_timeout,
            ack_timeout=self.settings.ack_timeout,
            handshake_timeout=self.settings.handshake_timeout,
        )

    def _account(self, *, bootstrap: bool) -> _Account | None:
        """The (bootstrap) server's account from the Security object."""
        store, s = self.store, self.settings
        for iid in store.instances(objs.SECURITY):
            base = f"/{objs.SECURITY}/{iid}"
            uri = store.get(f"{base}/0")
            if store.get(f"{base}/1") is not bootstrap or not uri:
                continue
            identity = store.get(f"{base}/3")
            key = store.get(f"{base}/5")
            short_id = store.get(f"{base}/10") if store.has(f"{base}/10") else None
            return _Account(
                uri=str(uri),
                # Without provisioned credentials the configured ones stand
                # for the modem's security tag.
                identity=identity if isinstance(identity, bytes) and identity
                else s.endpoint.encode(),
                key=key if isinstance(key, bytes) and key else s.psk,
                short_id=short_id if isinstance(short_id, int) else None,
            )  # fmt: skip
        return None

    def _server_instance(self) -> str | None:
        """The Server object instance of the account in use ("/1/0")."""
        account = self._account(bootstrap=False)
        instances = self.store.instances(objs.SERVER)
        for iid in instances:
            if account is not None and account.short_id is not None:
                if self.store.get(f"/{objs.SERVER}/{iid}/0") != account.short_id:
                    continue
            return f"/{objs.SERVER}/{iid}"
        return None

    async def _attempt_task(self, attempt: _Attempt) -> None:
        reason: str | None = None
        error = False
        try:
            with attempt.scope:
                account = self._account(bootstrap=False)
                if account is None and self.settings.bootstrap:
                    try:
                        await self._bootstrap(attempt)
                    except _BootstrapFailed as exc:
                        # BOOTSTRAP_REG_FAILURE -> DISCONNECTED.
                        reason = f"bootstrap failed: {exc}"
                        log.warning("lwm2m_bootstrap_failed", reason=str(exc))
                        return
                    account = self._account(bootstrap=False)
                if account is None:
                    reason = "no LwM2M server account in the Security object"
                    return
                async with trio.open_nursery() as nursery:
                    session = self._session_factory(
                        self._coap_settings(account), self._handle_request
                    )
                    try:
                        await nursery.start(self._run_session, session, attempt)
                    except BackendError as exc:
                        reason = self._start_failed(exc)
                    else:
                        attempt.session = session
                        reason, error = await self._serve(session, attempt)
                    nursery.cancel_scope.cancel()
                if reason is not None and self.settings.bootstrap:
                    # As the RD client: a server that cannot be reached or
                    # refuses us sends the next attempt to the bootstrap
                    # server again.
                    self._forget_server_accounts()
            if attempt.lost is not None:
                # The session died under a registration (or its attempt).
                reason = f"network error: {attempt.lost}"
                error = self.state is Lwm2mState.CONNECTED
        finally:
            attempt.done.set()
            current = self._attempt is attempt
            if current:
                self._attempt = None
                self.state = Lwm2mState.DISCONNECTED
                self._assist = _Assistance()
            if current and reason is not None:
                self.last_failure = reason
                if error:
                    # NETWORK_ERROR -> CLOUD_WRAP_EVT_ERROR (a reboot).
                    log.error("lwm2m_network_error", reason=reason)
                    self._send_event(wrap.WrapperError(-errno.ENETDOWN))
                else:
                    log.info("lwm2m_disconnected", reason=reason)
                    self._send_event(wrap.WrapperDisconnected(reason))

    async def _run_session(
        self,
        session: SessionLike,
        attempt: _Attempt,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        status = _Started(task_status)
        try:
            await session.run(task_status=status)
        except BackendError as exc:
            if not status.done:
                raise
            log.warning("lwm2m_session_lost", error=str(exc))
            attempt.lost = exc
            attempt.scope.cancel()
        else:
            if status.done and not attempt.stopping:
                attempt.lost = BackendError("the CoAP session ended")
                attempt.scope.cancel()

    def _start_failed(self, exc: BackendError) -> str:
        reason = f"CoAP session failed: {exc}"
        log.warning(
            "lwm2m_connect_failed", server=self.settings.server_uri, reason=str(exc)
        )
        return reason

    async def _serve(self, session: SessionLike, attempt: _Attempt) -> tuple[str, bool]:
        """Register, then keep the registration; return why it ended."""
        try:
            await self._register(session, attempt)
        except _RegistrationFailed as exc:
            # REGISTRATION_FAILURE: stop the engine, then DISCONNECTED.
            return f"registration failed: {exc}", False
        while True:
            # The server expires us by the lifetime it was told; a changed
            # one goes out with the next update.
            lifetime = min(attempt.lifetime, self._lifetime())
            self._update_now = trio.Event()
            with trio.move_on_after(self.settings.update_delay(lifetime)):
                # A new lifetime or the Registration Update Trigger.
                await self._update_now.wait()
            try:
                await self._update(session, attempt)
                continue
            except _RegistrationFailed as exc:
                # REG_TIMEOUT: back to CONNECTING, register again.
                self.counters["update_failures"] = (
                    self.counters.get("update_failures", 0) + 1
                )
                log.warning("lwm2m_update_failed", reason=str(exc))
                self.state = Lwm2mState.CONNECTING
            try:
                await self._register(session, attempt)
            except _RegistrationFailed as exc:
                return f"re-registration failed: {exc}", False

    async def _register(self, session: SessionLike, attempt: _Attempt) -> None:
        s = self.settings
        lifetime = self._lifetime()
        query = (
            f"ep={s.endpoint}",
            f"lt={lifetime}",
            f"lwm2m={LWM2M_VERSION}",
            f"b={BINDING}",
            "Q",
        )
        response = await self._rd_request(
            session,
            "POST",
            "/rd",
            query=query,
            payload=self._links(),
            content_format=ContentFormat.LINK_FORMAT,
        )
        if response.code != "2.01" or not response.location_path:
            raise _RegistrationFailed(f"the server answered {response.code}")
        attempt.location = "/" + "/".join(response.location_path)
        attempt.lifetime = lifetime
        self.state = Lwm2mState.CONNECTED
        self.last_failure = None
        self._count("registrations")
        log.info(
            "lwm2m_registered",
            endpoint=s.endpoint,
            location=attempt.location,
            lifetime=lifetime,
        )
        server = self._server_instance()
        if server is not None and self.store.get(f"{server}/1") != s.lifetime:
            # The firmware forces the server's lifetime back after every
            # REGISTRATION_COMPLETE.
            self.store.set(f"{server}/1", s.lifetime)
        self._send_event(wrap.WrapperConnected())

    async def _update(self, session: SessionLike, attempt: _Attempt) -> None:
        assert attempt.location is not None
        query: tuple[str, ...] = ()
        current = self._lifetime()
        if current != attempt.lifetime:
            query = (f"lt={current}",)
        response = await self._rd_request(
            session, "POST", attempt.location, query=query
        )
        if response.code != "2.04":
            raise _RegistrationFailed(f"update answered {response.code}")
        attempt.lifetime = current
        self._count("updates")
        log.debug("lwm2m_updated", location=attempt.location)
        if self.state is Lwm2mState.CONNECTING:
            # REG_UPDATE_COMPLETE while CONNECTING -> CONNECTED.
            self.state = Lwm2mState.CONNECTED
            self._send_event(wrap.WrapperConnected())

    async def _deregister(self, attempt: _Attempt) -> str | None:
        """``DELETE /rd/<id>``; the failure's description, or None."""
        session = attempt.session
        if session is None or attempt.location is None:
            return None
        try:
            with trio.fail_after(DEREGISTER_TIMEOUT):
                response = await self._rd_request(session, "DELETE", attempt.location)
        except (_RegistrationFailed, trio.TooSlowError) as exc:
            reason = f"de-registration failed: {exc or 'no answer'}"
            log.warning("lwm2m_deregister_failed", reason=reason)
            return reason
        if response.code != "2.02":
            reason = f"de-registration answered {response.code}"
            log.warning("lwm2m_deregister_failed", reason=reason)
            return reason
        log.info("lwm2m_deregistered", location=attempt.location)
        return None

    async def _rd_request(
        self, session: SessionLike, method: str, path: str, **kwargs: Any
    ) -> CoapResponse:
        self._traffic()
        try:
            response = await session.request(method, path, **kwargs)
        except BackendError as exc:
            raise _RegistrationFailed(str(exc)) from exc
        self._traffic()
        return response

    def _lifetime(self) -> int:
        server = self._server_instance()
        if server is None or not self.store.has(f"{server}/1"):
            return self.settings.lifetime
        value = self.store.get(f"{server}/1")
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
        return self.settings.lifetime

    def _links(self) -> bytes:
        return self.store.registration_links().encode()

    # -- bootstrap ----------------------------------------------------------------

    async def _bootstrap(self, attempt: _Attempt) -> None:
        """Client-initiated bootstrap: ``POST /bs``, writes, Bootstrap-Finish.

        Raises:
          _BootstrapFailed: no session, a refused request, or no finish in
            ``BOOTSTRAP_TIMEOUT``.
        """
        account = self._account(bootstrap=True)
        if account is None:
            raise _BootstrapFailed("no bootstrap server in the Security object")
        finished = trio.Event()
        self._bootstrap_finished = finished
        failure: str | None = None
        try:
            async with trio.open_nursery() as nursery:
                session = self._session_factory(
                    self._coap_settings(account), self._handle_bootstrap
                )
                failure = await self._bootstrap_exchange(
                    nursery, session, attempt, finished
                )
                nursery.cancel_scope.cancel()
        finally:
            self._bootstrap_finished = None
        if failure is not None:
            raise _BootstrapFailed(failure)
        # BOOTSTRAP_REG_COMPLETE: still CONNECTING, now registering.
        self._count("bootstraps")
        log.info("lwm2m_bootstrapped", server=str(self._account(bootstrap=False)))

    async def _bootstrap_exchange(
        self,
        nursery: trio.Nursery,
        session: SessionLike,
        attempt: _Attempt,
        finished: trio.Event,
    ) -> str | None:
        """Start the session and ask; the failure's description, or None."""
        try:
            await nursery.start(self._run_session, session, attempt)
        except BackendError as exc:
            return str(exc)
        query = (
            f"ep={self.settings.endpoint}",
            f"pct={int(ContentFormat.SENML_CBOR)}",
        )
        try:
            response = await self._rd_request(session, "POST", "/bs", query=query)
        except _RegistrationFailed as exc:
            return str(exc)
        if response.code != "2.04":
            return f"Bootstrap-Request answered {response.code}"
        with trio.move_on_after(BOOTSTRAP_TIMEOUT):
            await finished.wait()
        if not finished.is_set():
            return f"no Bootstrap-Finish within {BOOTSTRAP_TIMEOUT:g} s"
        return None

    async def _handle_bootstrap(self, request: CoapRequest) -> CoapResponse:
        """Answer the bootstrap server (never raises)."""
        self._traffic()
        try:
            return self._dispatch_bootstrap(request)
        except LwM2MError as exc:
            return self._refuse(request, exc.code, str(exc))
        except UnsupportedContentFormat as exc:
            return self._refuse(request, "4.15", str(exc))
        except FormatError as exc:
            return self._refuse(request, "4.00", str(exc))

    def _dispatch_bootstrap(self, request: CoapRequest) -> CoapResponse:
        if request.method == "POST" and request.path == ("bs",):
            problem = self._bootstrap_problem()
            if problem is not None:
                # TS Transport 5.2.7.2: 4.06 when the configuration is unusable.
                raise LwM2MError(f"Bootstrap-Finish: {problem}", "4.06")
            if self._bootstrap_finished is not None:
                self._bootstrap_finished.set()
            return CoapResponse("2.04")
        path = _parse_path(request.path)
        if request.method == "DELETE":
            self._bootstrap_delete(path)
            return CoapResponse("2.02")
        if request.method == "PUT" and path is not None:
            self._bootstrap_write(path, request)
            return CoapResponse("2.04")
        if request.method == "GET" and request.accept == ContentFormat.LINK_FORMAT:
            # Bootstrap-Discover of one object, or of the two bootstrap
            # writes (Security and Server) for "/".
            objects = (
                (objs.SECURITY, objs.SERVER) if path is None else (path.object_id,)
            )
            links = [Path(o) for o in objects] + [
                Path(o, i) for o in objects for i in self.store.instances(o)
            ]
            ordered = sorted(links, key=Path.sort_key)
            body = ",".join(f"<{link}>" for link in ordered).encode()
            return CoapResponse("2.05", body, int(ContentFormat.LINK_FORMAT))
        raise LwM2MError(f"{request.method} is not a bootstrap operation here", "4.05")

    def _bootstrap_write(self, path: Path, request: CoapRequest) -> None:
        """Bootstrap-Write: the device's own update, creating instances."""
        if path.instance is None:
            raise LwM2MError(f"{path}: Bootstrap-Write names an instance", "4.00")
        if path.object_id not in (objs.SECURITY, objs.SERVER):
            raise LwM2MError(
                f"{path}: only the Security and Server objects are bootstrapped",
                "4.05",
            )
        if request.content_format is None:
            raise LwM2MError("a Bootstrap-Write needs a Content-Format", "4.00")
        records = decode(
            request.payload, request.content_format, path, self.store.type_of,
            now=_now(),
        )  # fmt: skip
        instance = Path(path.object_id, path.instance)
        if not self.store.has(instance):
            self.store.create(path.object_id, path.instance)
        for record in records:
            if not path.contains(record.path):
                raise LwM2MError(f"{record.path}: not below {path}", "4.00")
            self.store.set(record.path, record.value)

    def _bootstrap_delete(self, path: Path | None) -> None:
        """Bootstrap-Delete of Security/Server instances (never the bootstrap
        server's own account; other objects keep the device's state)."""
        objects = (objs.SECURITY, objs.SERVER) if path is None else (path.object_id,)
        for object_id in objects:
            if object_id not in (objs.SECURITY, objs.SERVER):
                raise LwM2MError(f"/{object_id}: not deleted by bootstrap", "4.05")
            instances = self.store.instances(object_id)
            if path is not None and path.instance is not None:
                instances = [path.instance] if path.instance in instances else []
            for iid in instances:
                base = f"/{object_id}/{iid}"
                if object_id == objs.SECURITY and self.store.get(f"{base}/1") is True:
                    continue
                self.store.delete(base)

    def _bootstrap_problem(self) -> str | None:
        account = self._account(bootstrap=False)
        if account is None:
            return "no LwM2M server account was written to /0"
        if self._server_instance() is None:
            return "no Server object instance was written to /1"
        return None

    def _forget_server_accounts(self) -> None:
        """Drop what the bootstrap server wrote, so it is asked again."""
        self._bootstrap_delete(None)

    # -- sending ------------------------------------------------------------------

    def _session(self) -> SessionLike:
        attempt = self._attempt
        if (
            attempt is None
            or attempt.session is None
            or self.state is not Lwm2mState.CONNECTED
        ):
            raise BackendNotConnected(f"LwM2M Send while {self.state.value}")
        return attempt.session

    def _records(self, paths: tuple[str, ...]) -> list[Record]:
        records: list[Record] = []
        for text in paths:
            try:
                records += self.store.read(Path.parse(text))
            except LwM2MError as exc:
                # A path whose object has no value yet: sent without it.
                log.debug("lwm2m_send_path_skipped", path=text, reason=str(exc))
        return records

    def _send_paths(self, what: str, payload: Payload) -> None:
        session = self._session()
        records = self._records(payload.paths)
        if not records:
            log.info("lwm2m_send_empty", what=what, paths=list(payload.paths))
            return
        self._start_send(session, what, payload, records)

    def _start_send(
        self,
        session: SessionLike,
        what: str,
        payload: Payload,
        records: list[Record],
    ) -> None:
        body = encode_senml_cbor(records)
        assert self._nursery is not None
        self._nursery.start_soon(self._send_task, session, what, payload, body)

    async def _send_task(
        self, session: SessionLike, what: str, payload: Payload, body: bytes
    ) -> None:
        self._traffic()
        try:
            response = await session.request(
                "POST",
                "/dp",
                payload=body,
                content_format=ContentFormat.SENML_CBOR,
                confirmable=True,
            )
        except BackendError as exc:
            self._count("send_failures")
            log.warning("lwm2m_send_failed", what=what, error=str(exc))
            self._send_event(wrap.WrapperSendResult(payload.sample_ids, False))
            return
        self._traffic()
        delivered = response.code == "2.04"
        # The samples' fate: delivered, or kept for the next connection.
        self._send_event(wrap.WrapperSendResult(payload.sample_ids, delivered))
        if delivered:
            self._count("sends")
            log.debug("lwm2m_sent", what=what, paths=list(payload.paths))
        else:
            self._count("send_failures")
            log.warning(
                "lwm2m_send_refused",
                what=what,
                code=response.code,
                diagnostic=response.payload[:200].decode(errors="replace"),
            )

    # -- assistance ------------------------------------------------------------

    def _assistance_send(self, kind: str, payload: Payload) -> None:
        session = self._session()
        records = self._records(payload.paths)
        if self._assist.in_flight is not None:
            # -EAGAIN in the firmware: pending until the result arrives.
            self._assist.kept[kind] = (payload, records)
            log.info(
                "lwm2m_assistance_deferred", kind=kind, in_flight=self._assist.in_flight
            )
            return
        self._assist.in_flight = kind
        self._start_send(session, kind, payload, records)

    def _on_assistance_write(self, records: list[Record]) -> None:
        """A server write to 33625/0: assistance data and/or the result."""
        values = _by_resource(records)
        kind = self._assist.in_flight
        data = values.get(6)
        if isinstance(data, bytes) and data:
            if kind == "pgps":
                self._send_event_later(wrap.WrapperPgpsDataReceived(data))
            else:
                self._send_event_later(wrap.WrapperAgnssDataReceived(data))
        if 7 in values and kind is not None:
            result = values[7]
            log.info("lwm2m_assistance_result", kind=kind, result=result)
            self._assist.in_flight = None
            if self._assist.kept:
                next_kind = next(iter(self._assist.kept))
                payload, records = self._assist.kept.pop(next_kind)
                self._resend_kept(next_kind, payload, records)

    def _resend_kept(self, kind: str, payload: Payload, records: list[Record]) -> None:
        attempt = self._attempt
        if attempt is None or attempt.session is None:
            return
        for record in records:
            self.store.set(str(record.path), record.value)
        self._assist.in_flight = kind
        self._start_send(attempt.session, kind, payload, records)

    def _on_ground_fix_write(self, records: list[Record]) -> None:
        """A server write to 33626/0; the result code completes the answer."""
        if 1 in _by_resource(records):
            self._send_event_later(wrap.WrapperCloudLocationResultReceived(b""))

    # -- configuration ----------------------------------------------------------

    def _config_written(self, document: bytes) -> None:
        self._send_event_later(wrap.WrapperDataReceived(document, objs.CONFIG_TOPIC))

    # -- requests from the server -------------------------------------------------

    def _on_server_write(self, records: list[Record]) -> None:
        """A new lifetime is announced at once (Zephyr's RD client does)."""
        if 1 in _by_resource(records):
            self._update_now.set()

    def _on_update_trigger(self, argument: bytes) -> None:
        """/1/x/8 Registration Update Trigger: update now."""
        self._update_now.set()

    def _on_reboot(self, argument: bytes) -> None:
        if argument == REBOOT_FROM_FOTA:
            self._send_event_later(wrap.WrapperFotaDone())
        else:
            self._send_event_later(wrap.WrapperRebootRequest())

    def _on_change(self, paths: list[Path]) -> None:
        attempt = self._attempt
        if attempt is None or attempt.session is None:
            return
        for path in paths:
            attempt.session.notify(str(path), include_ancestors=True)

    async def _handle_request(self, request: CoapRequest) -> CoapResponse:
        """Answer one request from the server (never raises)."""
        self._traffic()
        self._count("server_requests")
        try:
            return self._dispatch(request)
        except LwM2MError as exc:
            return self._refuse(request, exc.code, str(exc))
        except UnsupportedContentFormat as exc:
            code = "4.06" if request.method == "GET" else "4.15"
            return self._refuse(request, code, str(exc))
        except FormatError as exc:
            return self._refuse(request, "4.00", str(exc))

    def _refuse(self, request: CoapRequest, code: str, reason: str) -> CoapResponse:
        self._count(f"refused_{code}")
        log.warning(
            "lwm2m_request_refused",
            method=request.method,
            path="/" + "/".join(request.path),
            code=code,
            reason=reason,
        )
        return CoapResponse(code, reason.encode()[:200])

    def _dispatch(self, request: CoapRequest) -> CoapResponse:
        path = _parse_path(request.path)
        method = request.method
        if method == "GET":
            if request.accept == ContentFormat.LINK_FORMAT:
                if path is None:
                    raise LwM2MError("Discover needs an object", "4.05")
                return self._discover(path)
            if path is None:
                raise LwM2MError("Read needs an object", "4.05")
            return self._read(path, request.accept)
        if path is None:
            raise LwM2MError(f"{method} on the root", "4.05")
        if method == "PUT":
            self._write(path, request, replace=True)
            return CoapResponse("2.04")
        if method == "POST":
            if path.resource is not None:
                self.store.execute(path, request.payload)
                return CoapResponse("2.04")
            if path.instance is None:
                # Every object the tracker uses is created by the device.
                raise LwM2MError(f"{path}: Create is not supported", "4.05")
            self._write(path, request, replace=False)
            return CoapResponse("2.04")
        if method == "DELETE":
            if path.instance is None or path.resource is not None:
                raise LwM2MError(f"{path}: Delete takes an object instance", "4.05")
            definition = self.store.objects.get(path.object_id)
            if definition is None or not definition.multiple:
                # The device's single instances (Device, Configuration...)
                # are not the server's to remove.
                raise LwM2MError(f"{path}: this instance cannot be deleted", "4.05")
            self.store.delete(path)
            return CoapResponse("2.02")
        raise LwM2MError(f"method {method} is not allowed", "4.05")

    def _read(self, path: Path, accept: int | None) -> CoapResponse:
        records = self.store.read(path)
        if accept is None:
            fmt = self._default_format(path, records)
        else:
            try:
                fmt = ContentFormat(accept)
            except ValueError:
                raise UnsupportedContentFormat(f"accept {accept}") from None
            if fmt not in _READ_FORMATS:
                raise UnsupportedContentFormat(f"accept {accept}")
        try:
            payload = encode(records, fmt, path, self.store.type_of)
        except FormatError as exc:
            # The value exists but cannot take the asked-for shape.
            raise LwM2MError(str(exc), "4.06") from None
        return CoapResponse("2.05", payload, int(fmt))

    def _default_format(self, path: Path, records: list[Record]) -> ContentFormat:
        """Plain text (opaque) for one value, TLV for anything larger."""
        if len(records) == 1 and records[0].path == path:
            if self.store.type_of(path) is ResourceType.OPAQUE:
                return ContentFormat.OPAQUE
            return ContentFormat.TEXT
        return _DEFAULT_READ_FORMAT

    def _discover(self, path: Path) -> CoapResponse:
        """The object, its instances and their resources as links."""
        self.store.read(path)  # NotFound / 4.05 as for a Read
        links = [path]
        instances = (
            [path.instance]
            if path.instance is not None
            else self.store.instances(path.object_id)
        )
        for iid in instances:
            assert iid is not None
            base = Path(path.object_id, iid)
            if path.instance is None:
                links.append(base)
            definition = self.store.objects[path.object_id]
            for rid in definition.resources:
                child = base.child(rid)
                if path.resource is not None and rid != path.resource:
                    continue
                if self.store.has(child) and child != path:
                    links.append(child)
        # Discover lists resources too, which a registration never does.
        payload = ",".join(f"<{link}>" for link in links)
        return CoapResponse("2.05", payload.encode(), int(ContentFormat.LINK_FORMAT))

    def _write(self, path: Path, request: CoapRequest, *, replace: bool) -> None:
        if request.content_format is None:
            raise LwM2MError("a Write needs a Content-Format", "4.00")
        records = decode(
            request.payload,
            request.content_format,
            path,
            self.store.type_of,
            now=_now(),
        )
        self.store.write(path, records, replace=replace)

    # -- helpers ------------------------------------------------------------------

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def _send_event(self, event: wrap.WrapperEvent) -> None:
        if self._emit is None:
            raise RuntimeError("the backend was not initialised (init not called)")
        self._emit(event)

    def _send_event_later(self, event: wrap.WrapperEvent) -> None:
        """Emit, or keep the event until ``init`` (object 5 at boot)."""
        if self._emit is None:
            self._early.append(event)
            return
        self._emit(event)


def _by_resource(records: list[Record]) -> dict[int, Any]:
    """Written values by resource id (single resources of one instance)."""
    return {
        r.path.resource: r.value
        for r in records
        if r.path.resource is not None and r.path.resource_instance is None
    }


def _parse_path(segments: tuple[str, ...]) -> Path | None:
    """The request's Uri-Path as an LwM2M path; None for the root.

    Raises:
      LwM2MError: 4.04 for a path that names no LwM2M object.
    """
    if not segments:
        return None
    try:
        return Path.from_ids([int(s) for s in segments if s != ""])
    except (ValueError, FormatError):
        raise LwM2MError(f"no such path /{'/'.join(segments)}", "4.04") from None


def _now() -> float:
    """The wall clock, for SenML's relative times."""
    return time.time()


def decode_send(body: bytes) -> list[Record]:
    """The records of a Send body (for tests and tools)."""
    return decode_senml_cbor(body)


def lwm2m_backend(
    config: Lwm2mConfig,
    *,
    endpoint: str,
    firmware: FirmwareStore | None = None,
    device_config: DeviceConfig | None = None,
    http_ca_file: pathlib.Path | None = None,
    session_factory: SessionFactory | None = None,
    environmental: bool = True,
) -> Lwm2mBackend:
    """Build the backend from ``[cloud.lwm2m]``.

    Args:
      config: the ``[cloud.lwm2m]`` section.
      endpoint: the endpoint name (``Config.lwm2m_endpoint``), which is
        also the DTLS PSK identity.
      firmware: the ``FirmwareStore`` for FOTA through object 5, or None.
      device_config: the configuration the device boots with (object
        50009 starts with it).
      http_ca_file: CA bundle for HTTPS firmware downloads (object 5).
      session_factory: a ``CoapSession`` stand-in (tests).
      environmental: whether the device has environmental sensors (objects
        3303, 3304 and 3323 exist only then).
    """
    settings = Lwm2mSettings(
        server_uri=config.server_uri,
        endpoint=endpoint,
        psk=bytes.fromhex(config.psk),
        lifetime=config.lifetime,
        handshake_timeout=config.handshake_timeout,
        bootstrap=config.bootstrap,
        provision_credentials=config.provision_credentials,
        uses_default_psk=config.uses_default_psk,
    )
    codec = Lwm2mCodec(
        ObjectStore(),
        config=device_config or DeviceConfig(),
        environmental=environmental,
    )
    return Lwm2mBackend(
        settings,
        codec,
        session_factory=session_factory,
        firmware=firmware,
        http_ca_file=http_ca_file,
    )
