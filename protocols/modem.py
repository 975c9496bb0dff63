"""Events of the modem module (``modem_module_event.h``) and modem data."""

from __future__ import annotations

import enum
from typing import ClassVar

import attrs

from protocols.base import ErrorBase, Event, Module, ShutdownReadyBase


class NetworkMode(enum.Enum):
    """The radio access technology the modem is attached with."""

    LTE_M = "LTE-M"
    NB_IOT = "NB-IoT"
    UNKNOWN = "Unknown"


@attrs.frozen(kw_only=True)
class ModemStaticData:
    """Data that does not change while the device runs.

    ``timestamp`` is the uptime in milliseconds when the data was read.
    """

    timestamp: int
    iccid: str
    app_version: str
    board_version: str
    modem_fw: str
    imei: str


@attrs.frozen(kw_only=True)
class ModemDynamicData:
    """Network data that changes as the device moves.

    ``rsrp`` is in dBm; ``mccmnc`` is the operator code as a string of five
    or six digits, as the modem reports it.
    """

    timestamp: int
    area_code: int
    cell_id: int
    rsrp: int
    mcc: int
    mnc: int
    ip_address: str
    apn: str
    mccmnc: str
    band: int
    network_mode: NetworkMode


@attrs.frozen
class ModemEvent(Event):
    """Base class of the modem module's events."""

    source: ClassVar[Module] = Module.MODEM


@attrs.frozen
class ModemInitialized(ModemEvent):
    """The modem library is initialised."""

    spec_name: ClassVar[str] = "MODEM_EVT_INITIALIZED"


@attrs.frozen
class ModemLteConnected(ModemEvent):
    """The default PDN context is active: the device has an IP link."""

    spec_name: ClassVar[str] = "MODEM_EVT_LTE_CONNECTED"


@attrs.frozen
class ModemLteDisconnected(ModemEvent):
    """The default PDN context was deactivated."""

    spec_name: ClassVar[str] = "MODEM_EVT_LTE_DISCONNECTED"


@attrs.frozen
class ModemLteConnecting(ModemEvent):
    """The modem has started searching for a network."""

    spec_name: ClassVar[str] = "MODEM_EVT_LTE_CONNECTING"


@attrs.frozen(kw_only=True)
class ModemLteCellUpdate(ModemEvent):
    """The serving cell changed."""

    spec_name: ClassVar[str] = "MODEM_EVT_LTE_CELL_UPDATE"
    cell_id: int
    tac: int


@attrs.frozen(kw_only=True)
class ModemLtePsmUpdate(ModemEvent):
    """The network granted new PSM timers; ``tau`` is -1 when PSM is off."""

    spec_name: ClassVar[str] = "MODEM_EVT_LTE_PSM_UPDATE"
    tau: int
    active_time: int


@attrs.frozen(kw_only=True)
class ModemLteEdrxUpdate(ModemEvent):
    """The network granted new eDRX parameters, in seconds."""

    spec_name: ClassVar[str] = "MODEM_EVT_LTE_EDRX_UPDATE"
    edrx: float
    ptw: float


@attrs.frozen
class ModemStaticDataReady(ModemEvent):
    """Static modem data was sampled."""

    spec_name: ClassVar[str] = "MODEM_EVT_MODEM_STATIC_DATA_READY"
    data: ModemStaticData


@attrs.frozen
class ModemDynamicDataReady(ModemEvent):
    """Dynamic modem data was sampled."""

    spec_name: ClassVar[str] = "MODEM_EVT_MODEM_DYNAMIC_DATA_READY"
    data: ModemDynamicData


@attrs.frozen
class ModemStaticDataNotReady(ModemEvent):
    """Static modem data could not be read."""

    spec_name: ClassVar[str] = "MODEM_EVT_MODEM_STATIC_DATA_NOT_READY"


@attrs.frozen
class ModemDynamicDataNotReady(ModemEvent):
    """Dynamic modem data could not be read."""

    spec_name: ClassVar[str] = "MODEM_EVT_MODEM_DYNAMIC_DATA_NOT_READY"


@attrs.frozen
class ModemBatteryDataNotReady(ModemEvent):
    """The battery level could not be read through the modem."""

    spec_name: ClassVar[str] = "MODEM_EVT_BATTERY_DATA_NOT_READY"


@attrs.frozen
class ModemShutdownReady(ShutdownReadyBase, ModemEvent):
    """The modem module acknowledged the shutdown request."""

    spec_name: ClassVar[str] = "MODEM_EVT_SHUTDOWN_READY"


@attrs.frozen
class ModemError(ErrorBase, ModemEvent):
    """An irrecoverable modem error."""

    spec_name: ClassVar[str] = "MODEM_EVT_ERROR"


@attrs.frozen
class ModemCarrierFotaPending(ModemEvent):
    """The carrier library starts a modem update: other sessions must close."""

    spec_name: ClassVar[str] = "MODEM_EVT_CARRIER_FOTA_PENDING"


@attrs.frozen
class ModemCarrierFotaStopped(ModemEvent):
    """The carrier library's update ended without a reboot."""

    spec_name: ClassVar[str] = "MODEM_EVT_CARRIER_FOTA_STOPPED"


@attrs.frozen
class ModemCarrierRebootRequest(ModemEvent):
    """The carrier library asks for a reboot."""

    spec_name: ClassVar[str] = "MODEM_EVT_CARRIER_REBOOT_REQUEST"


@attrs.frozen
class ModemCarrierLteLinkUpRequest(ModemEvent):
    """The carrier library asks for the LTE link to be brought up."""

    spec_name: ClassVar[str] = "MODEM_EVT_CARRIER_EVENT_LTE_LINK_UP_REQUEST"


@attrs.frozen
class ModemCarrierLteLinkDownRequest(ModemEvent):
    """The carrier library asks for the LTE link to be taken down."""

    spec_name: ClassVar[str] = "MODEM_EVT_CARRIER_EVENT_LTE_LINK_DOWN_REQUEST"


@attrs.frozen
class ModemCarrierLtePowerOffRequest(ModemEvent):
    """The carrier library asks for the modem to be powered off."""

    spec_name: ClassVar[str] = "MODEM_EVT_CARRIER_EVENT_LTE_POWER_OFF_REQUEST"
