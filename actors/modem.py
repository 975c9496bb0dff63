"""The modem actor: the LTE link and the modem's data, over a modem driver.

LTE up and down
---------------
The firmware's modem module does not take LTE up/down from the registration
status, as its documentation says, but from the **default PDN context**:
activation publishes ``MODEM_EVT_LTE_CONNECTED`` and deactivation
``MODEM_EVT_LTE_DISCONNECTED``.  ``MODEM_EVT_LTE_CONNECTING`` is published
when the module asks the modem to connect, which then searches forever.

On the host the link is simulated by the actor's timers: a connect request
is answered ``attach_delay`` seconds later by an activated PDN context, and
scripted outages (``at``, ``duration``: seconds after the actor first
started) deactivate it for a while, after which the modem attaches again
(CONNECTING, then CONNECTED ``attach_delay`` later).  The network can only
be lost and regained; whether the modem *wants* a link (``APP_EVT_START``,
the LTE connect and disconnect requests) is decided by the state machine.
A real driver would report the PDN context itself (``+CGEV: ME PDN ACT 0``
and ``DEACT 0``), and its reports would replace these timers.

State machine
-------------
As in ``modem_module.c``::

    STATE_DISCONNECTED --APP_EVT_START, LTE connect request--> STATE_CONNECTING
    STATE_CONNECTING --PDN context activated--> STATE_CONNECTED
    STATE_CONNECTING --LTE disconnect request--> STATE_DISCONNECTED
    STATE_CONNECTED --PDN context deactivated--> STATE_DISCONNECTED
    STATE_CONNECTED --LTE disconnect request--> STATE_DISCONNECTED
    any state --UTIL_EVT_SHUTDOWN_REQUEST--> STATE_SHUTDOWN

Sampling (``APP_EVT_DATA_GET``), the PSM switch around nRF Cloud user
association and the shutdown request are handled in every state but
``STATE_SHUTDOWN``, where everything is ignored.

Timer callbacks and the debug hooks (``inject_lte_loss``,
``inject_lte_regain``) never await: they change the state and publish, as
the firmware's PDN callback does.  Only mailbox handlers call the driver.
"""

from __future__ import annotations

import abc
import enum
import errno
import random
from collections.abc import Sequence
from typing import Any, ClassVar, Final

import attrs
import trio

from actors.runtime import Actor, Priority
from actors.timer import Timer
from protocols.app import (
    AppData,
    AppDataGet,
    AppLteConnect,
    AppLteDisconnect,
    AppStart,
    UtilShutdownRequest,
)
from protocols.base import Module
from protocols.cloud import (
    CloudLteConnect,
    CloudLteDisconnect,
    CloudUserAssociated,
    CloudUserAssociationRequest,
)
from protocols.modem import (
    ModemDynamicData,
    ModemDynamicDataNotReady,
    ModemDynamicDataReady,
    ModemError,
    ModemInitialized,
    ModemLteConnected,
    ModemLteConnecting,
    ModemLteDisconnected,
    ModemShutdownReady,
    ModemStaticData,
    ModemStaticDataNotReady,
    ModemStaticDataReady,
    NetworkMode,
)

# The firmware's default for ASSET_TRACKER_V2_APP_VERSION.
DEFAULT_APP_VERSION: Final = "0.0.0-development"
# Seconds from a connect request to an active PDN context, as in
# tracker.toml's [modem] attach_delay.
DEFAULT_ATTACH_DELAY: Final = 2.0

# What the simulated modem reports: an nRF9160 DK with modem firmware 1.3.5,
# camping on one LTE-M cell in band 20 of MCC 242, MNC 2.
SIM_MODEM_FW: Final = "mfw_nrf9160_1.3.5"
SIM_BOARD: Final = "nrf9160dk_nrf9160"
SIM_BAND: Final = 20
SIM_MCC: Final = 242
SIM_MNC: Final = 2
SIM_APN: Final = "telenor.smart"
# A 28-bit E-UTRAN cell id is the 20-bit eNodeB id followed by an 8-bit
# sector (cell) id.
SIM_ENB_ID: Final = 0x0C1A3
SIM_SECTOR: Final = 0x0B
SIM_TAC: Final = 0x1F41
# The ICCID: "89" (telecom), "47" (the country code), "01" (the issuer).
SIM_ICCID_PREFIX: Final = "894701"
# The RSRP index (3GPP 36.133: 0 is below -140 dBm, 97 is -44 dBm and above;
# 255 means unknown).  The firmware converts it to dBm by subtracting 140
# (MODEM_DYNAMIC_DATA_CONVERT_RSRP_TO_DBM) and ignores indices above 97.  The
# simulated index scatters around 43 (-97 dBm), a fair LTE-M signal.
RSRP_OFFSET: Final = 140
SIM_RSRP_INDEX: Final = 43
SIM_RSRP_SPREAD: Final = 6


def luhn_check_digit(digits: str) -> str:
    """The Luhn check digit to append to ``digits`` (ICCIDs, IMEIs)."""
    total = 0
    # Double every second digit, starting with the rightmost one: it is the
    # one next to the check digit.
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 0:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return str((10 - total % 10) % 10)


def luhn_valid(number: str) -> bool:
    """Whether the last digit of ``number`` is its Luhn check digit."""
    if len(number) < 2 or not number.isdigit():
        return False
    return luhn_check_digit(number[:-1]) == number[-1]


class ModemDriverError(Exception):
    """A modem operation failed; ``err`` is a negative errno value."""

    def __init__(self, operation: str, err: int) -> None:
        super().__init__(f"{operation} failed: {errno.errorcode.get(-err, err)}")
        self.operation = operation
        self.err = err


class ModemDriver(abc.ABC):
    """What the modem actor needs from a modem.

    Every method may raise ``ModemDriverError``; anything else is a bug and
    crashes the actor.  The methods are coroutines because a real modem is
    driven by AT commands over a serial link.  Such a driver would implement
    them as follows:

    * ``imei``: ``AT+CGSN`` (15 digits).
    * ``static_data``: ``AT%XICCID`` (ICCID), ``AT+CGMR`` (modem firmware);
      board and application version come from the build.
    * ``dynamic_data``: ``AT%XMONITOR`` (registration status, operator,
      TAC, cell id, band, RSRP index), ``AT+CGDCONT?`` (APN and IP address
      of the default PDN context), ``AT%XSYSTEMMODE?`` (LTE-M or NB-IoT).
    * ``connect``: ``AT+CEREG=5`` and ``AT+CGEREP=1`` to subscribe to
      registration and PDN notifications, then ``AT+CFUN=1``.
    * ``go_offline``: ``AT+CFUN=4``; ``power_off``: ``AT+CFUN=0``.
    * ``set_psm``: ``AT+CPSMS=1,,,"<tau>","<active time>"`` or ``AT+CPSMS=0``.
    """

    @abc.abstractmethod
    async def imei(self) -> str:
        """The modem's IMEI, 15 digits."""

    @abc.abstractmethod
    async def static_data(self, uptime_ms: int) -> ModemStaticData:
        """Data fixed while the device runs, stamped ``uptime_ms``."""

    @abc.abstractmethod
    async def dynamic_data(self, uptime_ms: int) -> ModemDynamicData:
        """The current network data, stamped ``uptime_ms``."""

    @abc.abstractmethod
    async def connect(self) -> None:
        """Start searching for a network; return without waiting for it."""

    @abc.abstractmethod
    async def go_offline(self) -> None:
        """Leave the network but keep the modem powered (flight mode)."""

    @abc.abstractmethod
    async def power_off(self) -> None:
        """Leave the network and power the radio off."""

    @abc.abstractmethod
    async def set_psm(self, enabled: bool) -> None:
        """Request (or stop requesting) power saving mode from the network."""


def _check_imei(
    instance: object, attribute: attrs.Attribute[str], value: str
) -> None:
    if len(value) != 15 or not value.isdigit():
        raise ValueError(f"the IMEI must be 15 digits, got {value!r}")


@attrs.define(eq=False)
class SimulatedModem(ModemDriver):
    """A modem with plausible, deterministic answers.

    Every value derives from the IMEI and ``seed``: two modems built alike
    give the same samples in the same order.  ``dynamic_data`` fails with
    ``-ENOTCONN`` unless the modem was asked to connect (``AT+CFUN=1``), as
    ``AT%XMONITOR`` has nothing to report then.

    Args:
      imei: the IMEI, 15 digits.
      app_version: the application version reported in the static data.
      seed: seeds the RSRP scatter.
      failing: names of methods that fail with ``-EIO`` (for tests).
    """

    _imei: str = attrs.field(validator=_check_imei)
    app_version: str = DEFAULT_APP_VERSION
    seed: int = 0
    failing: set[str] = attrs.field(factory=set)
    # The functional mode (AT+CFUN): 0 off, 1 normal, 4 offline.
    functional_mode: int = attrs.field(init=False, default=0)
    psm_requested: bool = attrs.field(init=False, default=True)
    samples: int = attrs.field(init=False, default=0)
    _rng: random.Random = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    @property
    def iccid(self) -> str:
        """A 19-digit ICCID, Luhn-valid, derived from the IMEI."""
        body = SIM_ICCID_PREFIX + self._imei[2:14]
        return body + luhn_check_digit(body)

    @property
    def ip_address(self) -> str:
        """A private address in 10.160.0.0/16, derived from the IMEI."""
        x = int(self._imei[8:11]) % 256
        y = int(self._imei[11:14]) % 254 + 1
        return f"10.160.{x}.{y}"

    def _check(self, operation: str) -> None:
        if operation in self.failing:
            raise ModemDriverError(operation, -errno.EIO)

    async def imei(self) -> str:
        """The IMEI given to the constructor."""
        self._check("imei")
        return self._imei

    async def static_data(self, uptime_ms: int) -> ModemStaticData:
        """ICCID, versions and IMEI."""
        self._check("static_data")
        return ModemStaticData(
            timestamp=uptime_ms,
            iccid=self.iccid,
            app_version=self.app_version,
            board_version=SIM_BOARD,
            modem_fw=SIM_MODEM_FW,
            imei=self._imei,
        )

    async def dynamic_data(self, uptime_ms: int) -> ModemDynamicData:
        """The serving cell, with an RSRP that varies a little per sample."""
        self._check("dynamic_data")
        if self.functional_mode != 1:
            raise ModemDriverError("dynamic_data", -errno.ENOTCONN)
        rsrp_index = SIM_RSRP_INDEX + self._rng.randint(
            -SIM_RSRP_SPREAD, SIM_RSRP_SPREAD
        )
        self.samples += 1
        return ModemDynamicData(
            timestamp=uptime_ms,
            area_code=SIM_TAC,
            cell_id=(SIM_ENB_ID << 8) | SIM_SECTOR,
            rsrp=rsrp_index - RSRP_OFFSET,
            mcc=SIM_MCC,
            mnc=SIM_MNC,
            ip_address=self.ip_address,
            apn=SIM_APN,
            mccmnc=f"{SIM_MCC:03d}{SIM_MNC:02d}",
            band=SIM_BAND,
            network_mode=NetworkMode.LTE_M,
        )

    async def connect(self) -> None:
        """Go to normal mode."""
        self._check("connect")
        self.functional_mode = 1

    async def go_offline(self) -> None:
        """Go to offline mode."""
        self._check("go_offline")
        self.functional_mode = 4

    async def power_off(self) -> None:
        """Power the radio off."""
        self._check("power_off")
        self.functional_mode = 0

    async def set_psm(self, enabled: bool) -> None:
        """Record whether PSM is requested."""
        self._check("set_psm")
        self.psm_requested = enabled


class ModemState(enum.Enum):
    """The modem module's states, and the host's ``STATE_INIT``."""

    INIT = "STATE_INIT"
    DISCONNECTED = "STATE_DISCONNECTED"
    CONNECTING = "STATE_CONNECTING"
    CONNECTED = "STATE_CONNECTED"
    SHUTDOWN = "STATE_SHUTDOWN"


@attrs.define(eq=False)
class AssistanceRecord:
    """What the modem received of one kind of assistance data."""

    count: int = 0
    total_bytes: int = 0
    last: bytes = b""


def _to_outages(
    outages: Sequence[tuple[float, float]],
) -> tuple[tuple[float, float], ...]:
    return tuple((float(at), float(duration)) for at, duration in outages)


def _check_outages(
    instance: object,
    attribute: attrs.Attribute[tuple[tuple[float, float], ...]],
    value: tuple[tuple[float, float], ...],
) -> None:
    end = -1.0
    for index, (at, duration) in enumerate(value):
        if at < 0 or duration <= 0:
            raise ValueError(f"outage {index}: at >= 0 and duration > 0 required")
        if at <= end:
            raise ValueError(f"outage {index} starts before outage {index - 1} ended")
        end = at + duration


@attrs.define(eq=False)
class ModemActor(Actor):
    """The modem module.

    Args:
      driver: the modem.
      attach_delay: seconds from a connect request (or from the end of an
        outage) to LTE connected.
      outages: ``(at, duration)`` pairs, in seconds; the network is lost
        ``at`` seconds after the actor first started, for ``duration``
        seconds.  In order, and not overlapping.
    """

    name: ClassVar[str] = "modem"
    module: ClassVar[Module] = Module.MODEM
    capacity: ClassVar[int] = 10  # MODEM_QUEUE_ENTRY_COUNT
    routes: ClassVar[dict[Module, Priority]] = {
        Module.MODEM: Priority.EARLY,
        Module.APP: Priority.NORMAL,
        Module.CLOUD: Priority.NORMAL,
        Module.UTIL: Priority.FINAL,
    }
    error_event = ModemError

    driver: ModemDriver = attrs.field(kw_only=True)
    attach_delay: float = attrs.field(
        kw_only=True, default=DEFAULT_ATTACH_DELAY, validator=attrs.validators.ge(0)
    )
    outages: tuple[tuple[float, float], ...] = attrs.field(
        kw_only=True, default=(), converter=_to_outages, validator=_check_outages
    )

    imei: str | None = attrs.field(init=False, default=None)
    psm_enabled: bool = attrs.field(init=False, default=True)
    assistance: dict[str, AssistanceRecord] = attrs.field(init=False, factory=dict)
    attach_timer: Timer = attrs.field(init=False)
    outage_timer: Timer = attrs.field(init=False)
    regain_timer: Timer = attrs.field(init=False)
    _modem_state: ModemState = attrs.field(init=False, default=ModemState.INIT)
    _started_at: float | None = attrs.field(init=False, default=None)
    # Whether the modem was asked to be online (and not since to go offline).
    _wants_lte: bool = attrs.field(init=False, default=False)
    # Whether the network would let the modem attach (false during outages).
    _network_available: bool = attrs.field(init=False, default=True)
    _next_outage: int = attrs.field(init=False, default=0)
    _network: ModemDynamicData | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.attach_timer = self.timers.add("lte_attach", self._on_attach)
        self.outage_timer = self.timers.add("lte_outage", self._on_outage)
        self.regain_timer = self.timers.add("lte_regain", self._on_regain)
        self._set_state(ModemState.INIT)

    # -- state -------------------------------------------------------------

    @property
    def modem_state(self) -> ModemState:
        """The current state."""
        return self._modem_state

    def _set_state(self, state: ModemState) -> None:
        if state is not self._modem_state:
            self.log.info("state", old=self._modem_state.value, new=state.value)
            self._modem_state = state
        self.state = state.value

    def uptime_ms(self) -> int:
        """Milliseconds since the actor first started (0 before that)."""
        if self._started_at is None:
            return 0
        return round((trio.current_time() - self._started_at) * 1000)

    def current_network(self) -> ModemDynamicData | None:
        """The latest dynamic data read, or None before the first read."""
        return self._network

    def next_outage_at(self) -> float | None:
        """When the next scripted outage starts (Trio clock), if any."""
        return self.outage_timer.deadline

    def snapshot_extra(self) -> dict[str, Any]:
        """IMEI, link, PSM, assistance data and outages for the debug view."""
        return {
            "imei": self.imei,
            "lte_connected": self._modem_state is ModemState.CONNECTED,
            "network_available": self._network_available,
            "psm_enabled": self.psm_enabled,
            "assistance": {
                kind: {"count": record.count, "bytes": record.total_bytes}
                for kind, record in self.assistance.items()
            },
            "next_outage_at": self.outage_timer.deadline,
            "lte_regain_at": self.regain_timer.deadline,
        }

    # -- start -------------------------------------------------------------

    async def on_start(self) -> None:
        """Initialise the modem on the first start only (not on restarts).

        The uptime and the outage schedule count from this first start.
        """
        if self._started_at is not None:
            self.log.info("restarted", state=self.state)
            return
        self._started_at = trio.current_time()
        self._set_state(ModemState.DISCONNECTED)
        self.emit(ModemInitialized())
        self._schedule_next_outage()
        try:
            self.imei = await self.driver.imei()
        except ModemDriverError as exc:
            self._fail(exc)
            return
        self.log.info("modem_initialized", imei=self.imei)

    # -- dispatch ------------------------------------------------------------

    async def handle(self, message: Any) -> None:
        """Run one message through the state's handler, then the common one."""
        match self._modem_state:
            case ModemState.SHUTDOWN | ModemState.INIT:
                return
            case ModemState.DISCONNECTED:
                await self._on_disconnected(message)
            case ModemState.CONNECTING:
                await self._on_connecting(message)
            case ModemState.CONNECTED:
                await self._on_connected(message)
        await self._on_all_states(message)

    async def _on_disconnected(self, message: Any) -> None:
        match message:
            # The firmware connects on APP_EVT_LTE_DISCONNECT here, a slip
            # for APP_EVT_LTE_CONNECT (spec §18.3, harmless there because the
            # app emits neither).  The host does what was meant.
            case AppStart() | AppLteConnect() | CloudLteConnect():
                await self._connect(message.spec_name)

    async def _on_connecting(self, message: Any) -> None:
        match message:
            case AppLteDisconnect() | CloudLteDisconnect():
                await self._go_offline(message.spec_name)

    async def _on_connected(self, message: Any) -> None:
        match message:
            case AppLteDisconnect() | CloudLteDisconnect():
                await self._go_offline(message.spec_name)
            case ModemLteConnected():
                # Our own event: refresh the network data that the cloud
                # actor reads for A-GNSS requests, as the firmware's
                # modem_info subscription keeps it current.
                await self._refresh_network()

    async def _on_all_states(self, message: Any) -> None:
        match message:
            case AppDataGet(data_list=data_list):
                await self._sample(data_list)
            case CloudUserAssociationRequest():
                # nRF Cloud waits for the user; a sleeping modem would miss
                # the association.
                await self._set_psm(False)
            case CloudUserAssociated():
                await self._set_psm(True)
            case UtilShutdownRequest(reason=reason):
                await self._shutdown(reason.value)

    # -- link ----------------------------------------------------------------

    async def _connect(self, cause: str) -> None:
        try:
            await self.driver.connect()
        except ModemDriverError as exc:
            self._fail(exc)
            return
        self._wants_lte = True
        self.log.info("lte_connect", cause=cause, network=self._network_available)
        self._enter_connecting()

    async def _go_offline(self, cause: str) -> None:
        # Decide before awaiting, so that a regained network cannot start an
        # attach while the modem is going offline.
        self._wants_lte = False
        self.attach_timer.cancel()
        try:
            await self.driver.go_offline()
        except ModemDriverError as exc:
            self._fail(exc)
        self.log.info("lte_offline", cause=cause)
        # Read the state only now: an outage may have taken the link down
        # (and said so) while the driver was busy.
        was_connected = self._modem_state is ModemState.CONNECTED
        self._set_state(ModemState.DISCONNECTED)
        if was_connected:
            self.emit(ModemLteDisconnected())

    def _enter_connecting(self) -> None:
        if self._modem_state is not ModemState.CONNECTING:
            self._set_state(ModemState.CONNECTING)
            self.emit(ModemLteConnecting())
        # The modem searches forever: without a network the attach waits
        # for the network to come back.
        if self._network_available:
            self.attach_timer.reschedule(self.attach_delay)

    def _on_attach(self) -> None:
        if self._modem_state is not ModemState.CONNECTING:
            return
        self._set_state(ModemState.CONNECTED)
        self.emit(ModemLteConnected())

    def _lose_lte(self, cause: str) -> None:
        self.log.warning("lte_lost", cause=cause, state=self.state)
        self._network_available = False
        self.attach_timer.cancel()
        # A modem still searching (STATE_CONNECTING) goes on searching; only
        # an active PDN context is deactivated.
        if self._modem_state is ModemState.CONNECTED:
            self._set_state(ModemState.DISCONNECTED)
            self.emit(ModemLteDisconnected())

    def _regain_lte(self, cause: str) -> None:
        self.log.info("lte_regained", cause=cause, reattach=self._wants_lte)
        self._network_available = True
        self.regain_timer.cancel()
        if self._wants_lte and self._modem_state is not ModemState.CONNECTED:
            self._enter_connecting()

    # -- outages -------------------------------------------------------------

    def _schedule_next_outage(self) -> None:
        assert self._started_at is not None
        if self._next_outage >= len(self.outages):
            return
        at, _ = self.outages[self._next_outage]
        self.outage_timer.reschedule(self._started_at + at - trio.current_time())

    def _on_outage(self) -> None:
        assert self._started_at is not None
        at, duration = self.outages[self._next_outage]
        self._next_outage += 1
        self._lose_lte("outage")
        self.regain_timer.reschedule(
            self._started_at + at + duration - trio.current_time()
        )
        self._schedule_next_outage()

    def _on_regain(self) -> None:
        self._regain_lte("outage_over")

    def inject_lte_loss(self) -> None:
        """Lose the network now, until ``inject_lte_regain``.

        The loss replaces the end of a scripted outage in progress; later
        outages still happen.  Ignored before start and after shutdown.
        """
        if self._modem_state in (ModemState.INIT, ModemState.SHUTDOWN):
            self.log.info("lte_loss_ignored", state=self.state)
            return
        self.regain_timer.cancel()
        self._lose_lte("injected")

    def inject_lte_regain(self) -> None:
        """Give the network back now; the modem reattaches if it wants LTE.

        Ends a scripted outage early.  Ignored when the network is there,
        before start and after shutdown.
        """
        if self._modem_state in (ModemState.INIT, ModemState.SHUTDOWN):
            self.log.info("lte_regain_ignored", state=self.state)
            return
        if self._network_available:
            return
        self._regain_lte("injected")

    # -- data --------------------------------------------------------------

    async def _sample(self, data_list: tuple[AppData, ...]) -> None:
        for kind in data_list:
            if kind is AppData.MODEM_STATIC:
                await self._sample_static()
            elif kind is AppData.MODEM_DYNAMIC:
                await self._sample_dynamic()

    async def _sample_static(self) -> None:
        try:
            data = await self.driver.static_data(self.uptime_ms())
        except ModemDriverError as exc:
            self.counters["static_data_failed"] += 1
            self.log.warning("static_data_not_ready", error=str(exc))
            self.emit(ModemStaticDataNotReady())
            return
        self.emit(ModemStaticDataReady(data))

    async def _sample_dynamic(self) -> None:
        try:
            data = await self.driver.dynamic_data(self.uptime_ms())
        except ModemDriverError as exc:
            self.counters["dynamic_data_failed"] += 1
            self.log.warning("dynamic_data_not_ready", error=str(exc))
            self.emit(ModemDynamicDataNotReady())
            return
        self._network = data
        self.emit(ModemDynamicDataReady(data))

    async def _refresh_network(self) -> None:
        try:
            self._network = await self.driver.dynamic_data(self.uptime_ms())
        except ModemDriverError as exc:
            self.log.debug("network_refresh_failed", error=str(exc))

    def receive_assistance(self, kind: str, data: bytes) -> None:
        """Take assistance data (``"agnss"``, ``"pgps"``) from the cloud.

        The firmware hands it to the GNSS through the location library; the
        host only keeps the count, the total size and the last blob.
        Ignored after shutdown.
        """
        if self._modem_state is ModemState.SHUTDOWN:
            self.log.debug("assistance_ignored", kind=kind, size=len(data))
            return
        record = self.assistance.setdefault(kind, AssistanceRecord())
        record.count += 1
        record.total_bytes += len(data)
        record.last = data
        self.log.info(
            "assistance_received", kind=kind, size=len(data), count=record.count
        )

    # -- PSM, errors and shutdown ------------------------------------------

    async def _set_psm(self, enabled: bool) -> None:
        try:
            await self.driver.set_psm(enabled)
        except ModemDriverError as exc:
            # The firmware logs the failure and carries on.
            self.log.warning("psm_request_failed", enabled=enabled, error=str(exc))
            return
        self.psm_enabled = enabled
        self.log.info("psm", enabled=enabled)

    def _fail(self, exc: ModemDriverError) -> None:
        self.counters["driver_errors"] += 1
        self.last_error = str(exc)
        self.log.error("modem_error", operation=exc.operation, err=exc.err)
        self.emit(ModemError(exc.err))

    async def _shutdown(self, reason: str) -> None:
        self.log.info("shutdown_requested", reason=reason)
        # Nothing may happen to the link from here on: no attach, no outage.
        self._set_state(ModemState.SHUTDOWN)
        self._wants_lte = False
        for timer in (self.attach_timer, self.outage_timer, self.regain_timer):
            timer.cancel()
        try:
            await self.driver.power_off()
        except ModemDriverError as exc:
            # The acknowledgement matters more: util reboots either way.
            self.log.warning("power_off_failed", error=str(exc))
        # The firmware's PDN callback may still report the deactivation
        # after the acknowledgement; the host publishes nothing after it.
        self.emit(ModemShutdownReady(self.id))
