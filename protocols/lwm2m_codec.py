"""The LwM2M cloud codec (``cloud_codec/lwm2m/lwm2m_codec.c``).

Design note
-----------
On LwM2M the device's data lives in objects, not in documents: encoding a
sample means writing it into the resources of ``wire.md`` §5.3 and naming
the paths that the LwM2M Send operation must carry (``Payload.paths``, the
lists of ``wire.md`` §5.4).  The backend reads those paths from the same
``ObjectStore`` when it sends, as the firmware's engine does.  Units are
the firmware's: timestamps in UNIX seconds, altitude and accuracy in metres,
speed in m/s, RSRP in dBm, the battery level (a percentage in v2.9.0) in the
Device object's power-source-voltage resource.

Configuration is the Configuration object 50009 (``wire.md`` §5.6), written
by the server.  The store checks a write as a whole before it is committed
(types, and the four intervals greater than 0 and 32-bit, as the data module
requires); an invalid one is refused with 4.00 Bad Request and the object
keeps its old values, so a configuration is never half applied (the
firmware would apply the valid resources and ignore the others).  An
accepted write makes the codec re-read the whole object, as the firmware
does, into a configuration document for the cloud actor (``config_document``,
``config_written``), which ``decode_config`` turns back into a
``DeviceConfig``.  Nothing is reported back (the object *is* the reported
state): ``encode_config_report`` keeps object 50009 in step with the
configuration the data actor applied and raises ``CodecNotSupported``.

The data actor reaches the sample encoders through
``actors.data.ObjectPathEncoder`` (``encode_regular``, ``encode_ui``,
``encode_cloud_location``); the cloud actor calls the assistance encoders.
Impact data and the batch are not supported on LwM2M (``wire.md`` §5.4):
``encode_regular`` ignores impacts and there is no batch encoder.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final

import attrs
import structlog

from protocols import lwm2m_objects as defs
from protocols.base import Payload
from protocols.cloud import CloudLocation
from protocols.codec import (
    CloudCodec,
    CodecNotSupported,
    ConfigEmpty,
    ConfigInvalid,
    LocationUnresolved,
    NotAConfigDocument,
    NothingToSend,
)
from protocols.config import DeviceConfig
from protocols.json_codec import (
    AGNSS_GPS_UTC_REQUEST,
    AGNSS_INTEGRITY_REQUEST,
    AGNSS_KLOBUCHAR_REQUEST,
    AGNSS_NEQUICK_REQUEST,
    AGNSS_POSITION_REQUEST,
    AGNSS_SYS_TIME_AND_SV_TOW_REQUEST,
)
from protocols.json_data import Battery, Button, Impact
from protocols.lwm2m_formats import Record
from protocols.lwm2m_objects import CONFIGURATION as CONFIGURATION_DEF
from protocols.lwm2m_objects import (
    LwM2MError,
    ObjectStore,
    coerce_value,
    config_from_values,
    config_values,
)
from protocols.modem import ModemDynamicData, ModemStaticData, NetworkMode
from protocols.peripherals import (
    AgnssRequest,
    CloudLocationRequest,
    EnvironmentalData,
    GnssData,
    PgpsRequest,
)

log = structlog.get_logger(actor="lwm2m_codec")

# Object ids (lwm2m_codec_defines.h), from their definitions.
SECURITY: Final = defs.SECURITY.id
SERVER: Final = defs.SERVER.id
DEVICE: Final = defs.DEVICE.id
CONNMON: Final = defs.CONNECTIVITY_MONITORING.id
FIRMWARE: Final = defs.FIRMWARE_UPDATE.id
LOCATION: Final = defs.LOCATION.id
TEMPERATURE: Final = defs.TEMPERATURE.id
HUMIDITY: Final = defs.HUMIDITY.id
PRESSURE: Final = defs.PRESSURE.id
PUSH_BUTTON: Final = defs.PUSH_BUTTON.id
ECID: Final = defs.ECID_SIGNAL_MEASUREMENT.id
GNSS_ASSISTANCE: Final = defs.GNSS_ASSISTANCE.id
GROUND_FIX: Final = defs.GROUND_FIX.id
CONFIGURATION: Final = defs.CONFIGURATION.id

# CONFIG_CLOUD_CODEC_MANUFACTURER.
MANUFACTURER: Final = "Nordic Semiconductor ASA"
# /4/0/0 network bearer values (LwM2M Connectivity Monitoring).
BEARER_LTE_FDD: Final = 6
BEARER_NB_IOT: Final = 7
# CONFIG_LWM2M_IPSO_PUSH_BUTTON_INSTANCE_COUNT on the nRF9160/9161 DK.
PUSH_BUTTON_INSTANCES: Final = 2
# CONFIG_LWM2M_COMPOSITE_PATH_LIST_SIZE in overlay-lwm2m.conf: the most
# paths one Send may carry.
PATH_LIST_MAX: Final = 15

# 33625 resource 0, the assistance type.
ASSISTANCE_AGNSS: Final = 0
ASSISTANCE_PGPS: Final = 1
# 33625 resource 1 bits (wire.md §5.3).
MASK_UTC: Final = 1 << 0
MASK_EPHEMERIS: Final = 1 << 1
MASK_ALMANAC: Final = 1 << 2
MASK_KLOBUCHAR: Final = 1 << 3
MASK_NEQUICK: Final = 1 << 4
MASK_TOW: Final = 1 << 5
MASK_CLOCK: Final = 1 << 6
MASK_LOCATION: Final = 1 << 7
MASK_INTEGRITY: Final = 1 << 8
# 33625/0/8 satellite elevation mask: ATv2 sets -1 (no filtering), so the
# resource is not sent.
ELEVATION_MASK_OFF: Final = -1

# (object id, units, range min, range max) of the Thingy:91 sensors.
_ENVIRONMENT: Final = (
    (TEMPERATURE, "Celsius degrees", -40.0, 85.0),
    (HUMIDITY, "%", 0.0, 100.0),
    (PRESSURE, "kPa", 30.0, 110.0),
)
# IPSO common resources.
SENSOR_VALUE: Final = 5700
SENSOR_UNITS: Final = 5701
MIN_RANGE: Final = 5603
MAX_RANGE: Final = 5604
TIMESTAMP: Final = 5518
DIGITAL_STATE: Final = 5500
DIGITAL_COUNTER: Final = 5501
APPLICATION_TYPE: Final = 5750

# The topic a configuration document travels under (for the log).
CONFIG_TOPIC: Final = "/50009/0"

# The A-GNSS / P-GPS request paths and the ground-fix request paths.
_CELL_PATHS: Final = ("/4/0/8", "/4/0/9", "/4/0/10", "/4/0/2", "/4/0/12")


def _seconds(milliseconds: int) -> int:
    """A UNIX timestamp in ms as the LwM2M Time resources hold it (s)."""
    return milliseconds // 1000


@attrs.define(eq=False)
class Lwm2mCodec(CloudCodec):
    """Samples into objects, Send path lists, and object 50009 (docstring).

    Args:
      store: the device's objects; the codec creates the instances it uses.
      config: the configuration object 50009 starts with (the device's
        boot configuration).
      push_buttons: instances of object 3347 (one per button).
      environmental: whether the device has the environmental sensors, so
        serves objects 3303, 3304 and 3323 (the firmware's Thingy:91 build).
      ground_fix_report_back: 33626/0/0, ask the server to write the
        resolved location back (the cloud actor waits for it).
    """

    store: ObjectStore
    config: DeviceConfig = attrs.field(factory=DeviceConfig)
    push_buttons: int = PUSH_BUTTON_INSTANCES
    environmental: bool = True
    ground_fix_report_back: bool = True
    # Called with every configuration document a server write produced;
    # the backend turns it into a WrapperDataReceived.
    config_written: Callable[[bytes], None] | None = None
    _button_counts: dict[int, int] = attrs.field(init=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        self._create_objects()
        self.sync_config(self.config)
        self.store.on_write(CONFIGURATION, self._on_config_write)

    # -- objects ------------------------------------------------------------

    def _create_objects(self) -> None:
        for object_id in (
            DEVICE, CONNMON, LOCATION, GNSS_ASSISTANCE, GROUND_FIX, CONFIGURATION,
        ):  # fmt: skip
            self._ensure(object_id, 0)
        sensors = _ENVIRONMENT if self.environmental else ()
        for object_id, *_ in sensors:
            self._ensure(object_id, 0)
        for instance in range(1, self.push_buttons):
            self._ensure(PUSH_BUTTON, instance)
        self._ensure(PUSH_BUTTON, 0)
        self._set("/3/0/0", MANUFACTURER)
        # Available network bearers: LTE-FDD (LTE-M) and NB-IoT.
        self._set("/4/0/1/0", BEARER_LTE_FDD)
        self._set("/4/0/1/1", BEARER_NB_IOT)
        for object_id, units, low, high in sensors:
            self._set(f"/{object_id}/0/{SENSOR_UNITS}", units)
            self._set(f"/{object_id}/0/{MIN_RANGE}", low)
            self._set(f"/{object_id}/0/{MAX_RANGE}", high)
        for instance in range(self.push_buttons):
            self._set(
                f"/{PUSH_BUTTON}/{instance}/{APPLICATION_TYPE}",
                f"Push button {instance + 1}",
            )

    def _ensure(self, object_id: int, instance: int) -> None:
        if not self.store.has(f"/{object_id}/{instance}"):
            self.store.create(object_id, instance)

    def _set(self, path: str, value: Any) -> None:
        self.store.set(path, value)

    # -- samples (the data actor calls these) ------------------------------

    def encode_regular(
        self,
        *,
        btn: Button | None = None,
        impact: Impact | None = None,
        dev: ModemStaticData | None = None,
        roam: ModemDynamicData | None = None,
        gnss: GnssData | None = None,
        env: EnvironmentalData | None = None,
        bat: Battery | None = None,
    ) -> Payload:
        """Write the newest samples and return one Send's path list.

        Timestamps are UNIX milliseconds.  ``impact`` is ignored (not
        supported on LwM2M).

        Raises:
          NothingToSend: no sample was given.
        """
        del impact  # wire.md §5.4: impact data is not supported on LwM2M.
        paths: list[str] = []
        if gnss is not None:
            paths += self._write_gnss(gnss)
        if roam is not None:
            paths += self._write_modem_dynamic(roam)
        if dev is not None:
            paths += self._write_modem_static(dev)
        if bat is not None:
            paths += self._write_battery(bat)
        if env is not None:
            paths += self._write_environment(env)
        if btn is not None:
            paths += self._write_button(btn)
        if not paths:
            raise NothingToSend("no sample for the regular update")
        return Payload(paths=tuple(paths[:PATH_LIST_MAX]))

    def encode_ui(self, button: Button) -> Payload:
        """A button press: object 3347 (``encode_ui_data``)."""
        return Payload(paths=tuple(self._write_button(button)))

    def encode_cloud_location(self, request: CloudLocationRequest) -> Payload:
        """The ground-fix request: 33626, the serving cell and 10256.

        Raises:
          NothingToSend: the request has no cell measurement (the Wi-Fi
            access point object is not built, as in the default overlay).
        """
        cells = request.cells
        if cells is None:
            raise NothingToSend("no cell measurement for the ground-fix request")
        self._set(f"/{GROUND_FIX}/0/0", self.ground_fix_report_back)
        self._write_cell(cells.mcc, cells.mnc, cells.cell_id, cells.tac, cells.rsrp)
        for instance in list(self.store.instances(ECID)):
            self.store.delete(f"/{ECID}/{instance}")
        for instance, neighbor in enumerate(cells.neighbors):
            self.store.create(ECID, instance)
            base = f"/{ECID}/{instance}"
            self._set(f"{base}/0", neighbor.physical_cell_id)
            self._set(f"{base}/2", neighbor.earfcn)
            self._set(f"{base}/3", neighbor.rsrp)
            self._set(f"{base}/4", round(neighbor.rsrq))
            # ue-RxTxTimeDiff is only known for the serving cell.
            self._set(f"{base}/5", 0)
        paths = [f"/{GROUND_FIX}/0/0", *_CELL_PATHS]
        if cells.neighbors:
            paths.append(f"/{ECID}")
        return Payload(paths=tuple(paths))

    def _write_gnss(self, gnss: GnssData) -> list[str]:
        pvt = gnss.pvt
        self._set("/6/0/0", pvt.latitude)
        self._set("/6/0/1", pvt.longitude)
        self._set("/6/0/2", pvt.altitude)
        self._set("/6/0/3", pvt.accuracy)
        self._set("/6/0/5", _seconds(gnss.timestamp))
        self._set("/6/0/6", pvt.speed)
        return ["/6"]

    def _write_modem_dynamic(self, roam: ModemDynamicData) -> list[str]:
        self._set("/3/0/13", _seconds(roam.timestamp))
        bearer = (
            BEARER_NB_IOT
            if roam.network_mode is NetworkMode.NB_IOT
            else BEARER_LTE_FDD
        )
        self._set("/4/0/0", bearer)
        self._set("/4/0/4/0", roam.ip_address)
        self._set("/4/0/7/0", roam.apn)
        self._write_cell(roam.mcc, roam.mnc, roam.cell_id, roam.area_code, roam.rsrp)
        return ["/3/0/13", "/4"]

    def _write_cell(self, mcc: int, mnc: int, cell: int, tac: int, rsrp: int) -> None:
        self._set("/4/0/2", rsrp)
        self._set("/4/0/8", cell)
        self._set("/4/0/9", mnc)
        self._set("/4/0/10", mcc)
        self._set("/4/0/12", tac)

    def _write_modem_static(self, dev: ModemStaticData) -> list[str]:
        self._set("/3/0/1", dev.board_version)
        self._set("/3/0/2", dev.imei)
        self._set("/3/0/3", dev.app_version)
        self._set("/3/0/19", dev.modem_fw)
        return ["/3/0/0", "/3/0/1", "/3/0/19", "/3/0/3", "/3/0/2"]

    def _write_battery(self, bat: Battery) -> list[str]:
        # The firmware puts the fuel gauge's value (a percentage in v2.9.0)
        # in "Power Source Voltage", instance 0.
        self._set("/3/0/7/0", bat.level)
        return ["/3/0/7"]

    def _write_environment(self, env: EnvironmentalData) -> list[str]:
        if not self.environmental:
            return []
        paths = []
        for (object_id, *_), value in zip(
            _ENVIRONMENT, (env.temperature, env.humidity, env.pressure), strict=True
        ):
            self._set(f"/{object_id}/0/{SENSOR_VALUE}", float(value))
            self._set(f"/{object_id}/0/{TIMESTAMP}", _seconds(env.timestamp))
            paths += [f"/{object_id}/0/{TIMESTAMP}", f"/{object_id}/0/{SENSOR_VALUE}"]
        return paths

    def _write_button(self, button: Button) -> list[str]:
        instance = button.number - 1
        if instance < 0:
            raise ValueError(f"button {button.number}: buttons are numbered from 1")
        base = f"/{PUSH_BUTTON}/{instance}"
        if not self.store.has(base):
            # A button beyond the built instances: the firmware's codec would
            # fail (and reboot the device); the host adds the instance.
            self.store.create(PUSH_BUTTON, instance)
            self._set(f"{base}/{APPLICATION_TYPE}", f"Push button {button.number}")
        # Pressed then released, so that the counter counts the press.
        self._set(f"{base}/{DIGITAL_STATE}", True)
        self._set(f"{base}/{DIGITAL_STATE}", False)
        count = self._button_counts.get(instance, 0) + 1
        self._button_counts[instance] = count
        self._set(f"{base}/{DIGITAL_COUNTER}", count)
        self._set(f"{base}/{TIMESTAMP}", _seconds(button.timestamp))
        return [f"/{PUSH_BUTTON}"]

    # -- assistance -----------------------------------------------------------

    def encode_agnss_request(
        self, request: AgnssRequest, network: ModemDynamicData | None
    ) -> Payload:
        """Write 33625 and the serving cell; the A-GNSS request paths.

        Raises:
          NothingToSend: nothing is asked for, or no network information.
        """
        flags = request.data_flags
        mask = 0
        for bit, wanted in (
            (MASK_UTC, flags & AGNSS_GPS_UTC_REQUEST),
            (MASK_EPHEMERIS, request.sv_mask_ephe),
            (MASK_ALMANAC, request.sv_mask_alm),
            (MASK_KLOBUCHAR, flags & AGNSS_KLOBUCHAR_REQUEST),
            (MASK_NEQUICK, flags & AGNSS_NEQUICK_REQUEST),
            (MASK_TOW, flags & AGNSS_SYS_TIME_AND_SV_TOW_REQUEST),
            (MASK_CLOCK, flags & AGNSS_SYS_TIME_AND_SV_TOW_REQUEST),
            (MASK_LOCATION, flags & AGNSS_POSITION_REQUEST),
            (MASK_INTEGRITY, flags & AGNSS_INTEGRITY_REQUEST),
        ):
            if wanted:
                mask |= bit
        if not mask:
            raise NothingToSend("the A-GNSS request asks for nothing")
        if network is None:
            raise NothingToSend("no network information for the A-GNSS request")
        self._set(f"/{GNSS_ASSISTANCE}/0/0", ASSISTANCE_AGNSS)
        self._set(f"/{GNSS_ASSISTANCE}/0/1", mask)
        self._write_cell(
            network.mcc, network.mnc, network.cell_id, network.area_code, network.rsrp
        )
        return Payload(paths=(f"/{GNSS_ASSISTANCE}/0/0", f"/{GNSS_ASSISTANCE}/0/1",
                              *_CELL_PATHS))  # fmt: skip

    def encode_pgps_request(self, request: PgpsRequest) -> Payload:
        """Write 33625 for a P-GPS request; its paths (day only when known)."""
        base = f"/{GNSS_ASSISTANCE}/0"
        self._set(f"{base}/0", ASSISTANCE_PGPS)
        self._set(f"{base}/2", request.prediction_count)
        self._set(f"{base}/3", request.prediction_period_min)
        self._set(f"{base}/5", request.gps_time_of_day)
        paths = [f"{base}/0", f"{base}/2", f"{base}/3", f"{base}/5"]
        if request.gps_day > 0:
            self._set(f"{base}/4", request.gps_day)
            paths.append(f"{base}/4")
        return Payload(paths=tuple(paths))

    def decode_cloud_location(self, data: bytes) -> CloudLocation:
        """The ground-fix answer the server wrote into 33626 (``data`` unused).

        Raises:
          LocationUnresolved: the result code is not 0 or a value is missing.
        """
        del data  # The object is the answer.
        base = f"/{GROUND_FIX}/0"
        result = self.store.get(f"{base}/1")
        if result != 0:
            raise LocationUnresolved(f"ground fix result code {result!r}")
        numbers: list[float] = []
        for rid in (2, 3, 4):
            path = f"{base}/{rid}"
            value = self.store.get(path) if self.store.has(path) else None
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise LocationUnresolved(f"ground fix without a location: {path}")
            numbers.append(float(value))
        lat, lon, acc = numbers
        return CloudLocation(latitude=lat, longitude=lon, accuracy=acc)

    # -- configuration (object 50009) ---------------------------------------

    def sync_config(self, config: DeviceConfig) -> None:
        """Make object 50009 hold ``config`` (no server write involved)."""
        self.config = config
        for rid, value in config_values(config).items():
            self._set(f"/{CONFIGURATION}/0/{rid}", value)

    def encode_config_report(self, config: DeviceConfig) -> Payload:
        """Keep 50009 in step; nothing is sent (the object is the state)."""
        self.sync_config(config)
        raise CodecNotSupported("LwM2M reports the configuration as object 50009")

    def decode_config(self, data: bytes, current: DeviceConfig) -> DeviceConfig:
        """Apply a configuration document (``config_document``) to ``current``.

        Every value is checked against object 50009's definition (types
        and ranges), so a document is applied whole or not at all.

        Raises:
          NotAConfigDocument, ConfigEmpty, ConfigInvalid.
        """
        try:
            document = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise NotAConfigDocument(f"not an object 50009 document: {exc}") from None
        if not isinstance(document, dict):
            raise NotAConfigDocument("not an object 50009 document")
        if not document:
            raise ConfigEmpty("no object 50009 resource in the document")
        values: dict[int, Any] = {}
        for key, value in document.items():
            where = f"{CONFIG_TOPIC}/{key}"
            rdef = CONFIGURATION_DEF.resources.get(int(key)) if key.isdigit() else None
            if rdef is None:
                raise ConfigInvalid(f"{where}: no such resource")
            try:
                checked = coerce_value(rdef, value, where)
            except LwM2MError as exc:
                raise ConfigInvalid(str(exc)) from None
            problem = None if rdef.range is None else rdef.range.check(checked)
            if problem:
                raise ConfigInvalid(f"{where}: {rdef.name} {problem}")
            values[rdef.id] = checked
        return config_from_values(values, current)

    def _on_config_write(self, records: list[Record]) -> None:
        """A server write to 50009, already checked and held by the store.

        The firmware re-reads the whole object and applies it: the
        configuration document is built from all of instance 0.
        """
        values = {
            rid: self.store.get(f"/{CONFIGURATION}/0/{rid}")
            for rid in CONFIGURATION_DEF.resources
            if self.store.has(f"/{CONFIGURATION}/0/{rid}")
        }
        config = config_from_values(values, self.config)  # type: ignore[arg-type]
        log.info(
            "lwm2m_config_written",
            paths=[str(record.path) for record in records],
        )
        if self.config_written is not None:
            self.config_written(config_document(config))


def config_document(config: DeviceConfig) -> bytes:
    """The configuration document handed to the cloud actor: 50009/0 as JSON.

    Keys are resource ids; it stays inside the device (the server only
    ever sees the object).
    """
    return json.dumps(
        {str(rid): value for rid, value in config_values(config).items()},
        separators=(",", ":"),
    ).encode()
