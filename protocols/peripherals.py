"""Events of the location, sensor, UI and debug modules.

The cloud, data, app and util modules consume these; the modules that emit
them are simulated data sources on the host.
"""

from __future__ import annotations

from typing import ClassVar

import attrs

from protocols.base import ErrorBase, Event, Module, ShutdownReadyBase

# --------------------------------------------------------------------------
# Location module


@attrs.frozen(kw_only=True)
class Pvt:
    """A GNSS fix: degrees, metres, metres per second."""

    latitude: float
    longitude: float
    accuracy: float
    altitude: float
    altitude_accuracy: float
    speed: float
    speed_accuracy: float
    heading: float
    heading_accuracy: float


@attrs.frozen(kw_only=True)
class GnssData:
    """A GNSS sample; ``timestamp`` is the uptime in milliseconds."""

    pvt: Pvt
    satellites_tracked: int
    search_time: int
    timestamp: int


@attrs.frozen(kw_only=True)
class NeighborCell:
    """A neighbouring LTE cell as measured by the modem."""

    earfcn: int
    physical_cell_id: int
    rsrp: int
    rsrq: float


@attrs.frozen(kw_only=True)
class CellMeasurement:
    """The serving cell and its neighbours (``lte_lc_cells_info``)."""

    mcc: int
    mnc: int
    cell_id: int
    tac: int
    earfcn: int
    timing_advance: int
    rsrp: int
    rsrq: float
    neighbors: tuple[NeighborCell, ...] = ()


@attrs.frozen(kw_only=True)
class CloudLocationRequest:
    """What the device sends the cloud to have its position resolved."""

    cells: CellMeasurement | None
    wifi_access_points: tuple[str, ...]
    timestamp: int


@attrs.frozen(kw_only=True)
class AgnssRequest:
    """The assistance data the GNSS receiver is missing.

    Mirrors ``nrf_modem_gnss_agnss_data_frame``: ``data_flags`` are the
    ``NRF_MODEM_GNSS_AGNSS_*_REQUEST`` bits and the masks are per-satellite
    bit masks of the GPS system.
    """

    data_flags: int
    sv_mask_ephe: int
    sv_mask_alm: int


@attrs.frozen(kw_only=True)
class PgpsRequest:
    """A request for predicted GPS ephemerides."""

    prediction_count: int
    prediction_period_min: int
    gps_day: int
    gps_time_of_day: int


@attrs.frozen
class LocationEvent(Event):
    """Base class of the location module's events."""

    source: ClassVar[Module] = Module.LOCATION


@attrs.frozen
class LocationGnssDataReady(LocationEvent):
    """A GNSS fix was obtained."""

    spec_name: ClassVar[str] = "LOCATION_MODULE_EVT_GNSS_DATA_READY"
    data: GnssData


@attrs.frozen
class LocationDataNotReady(LocationEvent):
    """No location method was allowed or every method failed."""

    spec_name: ClassVar[str] = "LOCATION_MODULE_EVT_DATA_NOT_READY"


@attrs.frozen
class LocationCloudLocationDataReady(LocationEvent):
    """Cells and access points are ready for the cloud to resolve."""

    spec_name: ClassVar[str] = "LOCATION_MODULE_EVT_CLOUD_LOCATION_DATA_READY"
    request: CloudLocationRequest


@attrs.frozen(kw_only=True)
class LocationTimeout(LocationEvent):
    """The location request timed out."""

    spec_name: ClassVar[str] = "LOCATION_MODULE_EVT_TIMEOUT"
    search_time: int
    satellites_tracked: int


@attrs.frozen
class LocationActive(LocationEvent):
    """A location search started."""

    spec_name: ClassVar[str] = "LOCATION_MODULE_EVT_ACTIVE"


@attrs.frozen
class LocationInactive(LocationEvent):
    """A location search ended."""

    spec_name: ClassVar[str] = "LOCATION_MODULE_EVT_INACTIVE"


@attrs.frozen
class LocationShutdownReady(ShutdownReadyBase, LocationEvent):
    """The location module acknowledged the shutdown request."""

    spec_name: ClassVar[str] = "LOCATION_MODULE_EVT_SHUTDOWN_READY"


@attrs.frozen
class LocationAgnssNeeded(LocationEvent):
    """The GNSS receiver needs A-GNSS data."""

    spec_name: ClassVar[str] = "LOCATION_MODULE_EVT_AGNSS_NEEDED"
    request: AgnssRequest


@attrs.frozen
class LocationPgpsNeeded(LocationEvent):
    """The P-GPS library needs predictions."""

    spec_name: ClassVar[str] = "LOCATION_MODULE_EVT_PGPS_NEEDED"
    request: PgpsRequest


@attrs.frozen
class LocationErrorCode(ErrorBase, LocationEvent):
    """An irrecoverable location module error."""

    spec_name: ClassVar[str] = "LOCATION_MODULE_EVT_ERROR_CODE"


# --------------------------------------------------------------------------
# Sensor module


@attrs.frozen
class SensorEvent(Event):
    """Base class of the sensor module's events."""

    source: ClassVar[Module] = Module.SENSOR


@attrs.frozen
class SensorMovementActivityDetected(SensorEvent):
    """The accelerometer crossed the activity threshold."""

    spec_name: ClassVar[str] = "SENSOR_EVT_MOVEMENT_ACTIVITY_DETECTED"


@attrs.frozen
class SensorMovementInactivityDetected(SensorEvent):
    """The accelerometer stayed below the inactivity threshold."""

    spec_name: ClassVar[str] = "SENSOR_EVT_MOVEMENT_INACTIVITY_DETECTED"


@attrs.frozen(kw_only=True)
class SensorMovementImpactDetected(SensorEvent):
    """An impact of ``magnitude`` G was detected."""

    spec_name: ClassVar[str] = "SENSOR_EVT_MOVEMENT_IMPACT_DETECTED"
    timestamp: int
    magnitude: float


@attrs.frozen(kw_only=True)
class EnvironmentalData:
    """Temperature °C, humidity %, pressure kPa; air quality -1 when absent."""

    timestamp: int
    temperature: float
    humidity: float
    pressure: float
    bsec_air_quality: int = -1


@attrs.frozen
class SensorEnvironmentalDataReady(SensorEvent):
    """An environmental sample was taken."""

    spec_name: ClassVar[str] = "SENSOR_EVT_ENVIRONMENTAL_DATA_READY"
    data: EnvironmentalData


@attrs.frozen
class SensorEnvironmentalNotSupported(SensorEvent):
    """The device has no environmental sensors."""

    spec_name: ClassVar[str] = "SENSOR_EVT_ENVIRONMENTAL_NOT_SUPPORTED"


@attrs.frozen(kw_only=True)
class SensorFuelGaugeReady(SensorEvent):
    """The battery level, in percent."""

    spec_name: ClassVar[str] = "SENSOR_EVT_FUEL_GAUGE_READY"
    timestamp: int
    battery_level: int


@attrs.frozen
class SensorFuelGaugeNotSupported(SensorEvent):
    """The device has no fuel gauge."""

    spec_name: ClassVar[str] = "SENSOR_EVT_FUEL_GAUGE_NOT_SUPPORTED"


@attrs.frozen
class SensorShutdownReady(ShutdownReadyBase, SensorEvent):
    """The sensor module acknowledged the shutdown request."""

    spec_name: ClassVar[str] = "SENSOR_EVT_SHUTDOWN_READY"


@attrs.frozen
class SensorError(ErrorBase, SensorEvent):
    """An irrecoverable sensor module error."""

    spec_name: ClassVar[str] = "SENSOR_EVT_ERROR"


# --------------------------------------------------------------------------
# UI module


@attrs.frozen
class UiEvent(Event):
    """Base class of the UI module's events."""

    source: ClassVar[Module] = Module.UI


@attrs.frozen(kw_only=True)
class UiButtonDataReady(UiEvent):
    """A button was pressed."""

    spec_name: ClassVar[str] = "UI_EVT_BUTTON_DATA_READY"
    button_number: int
    timestamp: int


@attrs.frozen
class UiShutdownReady(ShutdownReadyBase, UiEvent):
    """The UI module acknowledged the shutdown request."""

    spec_name: ClassVar[str] = "UI_EVT_SHUTDOWN_READY"


@attrs.frozen
class UiError(ErrorBase, UiEvent):
    """An irrecoverable UI module error."""

    spec_name: ClassVar[str] = "UI_EVT_ERROR"


# --------------------------------------------------------------------------
# Debug module


@attrs.frozen
class DebugEvent(Event):
    """Base class of the debug module's events."""

    source: ClassVar[Module] = Module.DEBUG


@attrs.frozen
class DebugMemfaultDataReady(DebugEvent):
    """Memfault chunks are ready to be sent."""

    spec_name: ClassVar[str] = "DEBUG_EVT_MEMFAULT_DATA_READY"
    data: bytes


@attrs.frozen
class DebugEmulatorInitialized(DebugEvent):
    """The emulated modem is initialised (native builds)."""

    spec_name: ClassVar[str] = "DEBUG_EVT_EMULATOR_INITIALIZED"


@attrs.frozen
class DebugEmulatorNetworkConnected(DebugEvent):
    """The emulated network is up (native builds)."""

    spec_name: ClassVar[str] = "DEBUG_EVT_EMULATOR_NETWORK_CONNECTED"


@attrs.frozen
class DebugError(ErrorBase, DebugEvent):
    """An irrecoverable debug module error."""

    spec_name: ClassVar[str] = "DEBUG_EVT_ERROR"
