"""LwM2M object definitions and the device's object store.

The definitions are those of the OMA LwM2M registry for the objects the
asset tracker builds in (``wire.md`` 5.3, 6.4) and the tracker's own
Configuration object 50009 (``wire.md`` 5.6).  The store holds the object
instances and resource values of one device and carries out the server's
operations on them with LwM2M's response codes.

Design note:

* Values live in plain dicts: object -> instance -> resource -> value, a
  multiple resource being a dict of resource instances.  Values are the
  Python types of ``protocols.lwm2m_formats`` (Time is an ``int``).
* Server operations (``read``, ``write``, ``execute``, ``delete``) check
  what the server may do (operations R/W/E, existence, types, ranges) and
  raise :class:`LwM2MError` subclasses that carry the CoAP code.  Local
  updates by the device (``set``, ``create``) check types only.
* A server write is atomic: every record is checked before anything
  changes; then the write is applied, the write hooks of the object run and
  see the new state, and if a hook raises, the whole store returns to its
  state before the write.  Observers hear about a change only once it is
  committed.
* Server writes to 50009 are refused when a value is outside what the
  firmware's configuration handling accepts (the four intervals must be
  greater than 0).  The firmware itself accepts such a write and then
  ignores the value in the data module, so the object shows a value the
  device does not use; refusing it with 4.00 is what that check means.
* Payload-level entry points (``read_payload``, ``write_payload``) map
  content-format problems to 4.06/4.15 and undecodable content to 4.00, so
  a CoAP resource handler only has to turn ``LwM2MError.code`` into a
  response.

Known shortcomings: no server Create (POST to an object) and no Write-
Attributes (pmin/pmax/...): the tracker's server never creates instances,
and observation attributes would live with the client's observe logic.  No
Access Control object (single-server device).  A replacing write of an
instance keeps mandatory resources that the payload leaves out instead of
refusing the write.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, TypeAlias

import attrs

from protocols.config import DeviceConfig, NoData
from protocols.json_codec import INT32_MAX
from protocols.lwm2m_formats import (
    INT64_MAX,
    INT64_MIN,
    UINT64_MAX,
    ContentFormat,
    FormatError,
    ObjLink,
    Path,
    Record,
    ResourceType,
    UnsupportedContentFormat,
    Value,
    decode,
    encode,
    encode_link_format,
)

# --------------------------------------------------------------------------
# Errors with CoAP response codes


class LwM2MError(Exception):
    """An operation the store refuses; ``code`` is the CoAP response code."""

    code: str = "5.00"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class BadRequest(LwM2MError):
    """4.00: the request's content is invalid."""

    code = "4.00"


class NotFound(LwM2MError):
    """4.04: no such object, instance or resource."""

    code = "4.04"


class MethodNotAllowed(LwM2MError):
    """4.05: the operation is not allowed on that target."""

    code = "4.05"


class NotAcceptable(LwM2MError):
    """4.06: the requested content format cannot be produced."""

    code = "4.06"


class UnsupportedFormat(LwM2MError):
    """4.15: the request's content format is not supported."""

    code = "4.15"


class InternalServerError(LwM2MError):
    """5.00: a hook failed in an unexpected way."""

    code = "5.00"


# --------------------------------------------------------------------------
# Definitions


@attrs.frozen
class Range:
    """Allowed values: ``min``/``max`` for numbers, ``max_length`` in bytes."""

    min: float | None = None
    max: float | None = None
    max_length: int | None = None

    def check(self, value: Value) -> str | None:
        """Why ``value`` is outside the range, or None."""
        if isinstance(value, int | float) and not isinstance(value, bool):
            if self.min is not None and value < self.min:
                return f"{value!r} is below the minimum {self.min}"
            if self.max is not None and value > self.max:
                return f"{value!r} is above the maximum {self.max}"
        if self.max_length is not None and isinstance(value, str | bytes):
            size = len(value.encode() if isinstance(value, str) else value)
            if size > self.max_length:
                return f"{size} bytes is longer than {self.max_length}"
        return None


@attrs.frozen
class ResourceDef:
    """One resource of an object definition."""

    id: int
    name: str
    type: ResourceType
    operations: str  # a subset of "RWE"
    multiple: bool = False
    mandatory: bool = False
    range: Range | None = None

    @property
    def readable(self) -> bool:
        """The server may read it."""
        return "R" in self.operations

    @property
    def writable(self) -> bool:
        """The server may write it."""
        return "W" in self.operations

    @property
    def executable(self) -> bool:
        """The server may execute it."""
        return "E" in self.operations


@attrs.frozen
class ObjectDef:
    """An object definition: id, name, version, resources."""

    id: int
    name: str
    version: str
    multiple: bool
    resources: dict[int, ResourceDef]


def _obj(
    object_id: int, name: str, version: str, multiple: bool, *res: ResourceDef
) -> ObjectDef:
    return ObjectDef(object_id, name, version, multiple, {r.id: r for r in res})


# Short names of the resource types and of ResourceDef for the tables below.
_S = ResourceType.STRING
_I = ResourceType.INTEGER
_U = ResourceType.UNSIGNED
_F = ResourceType.FLOAT
_B = ResourceType.BOOLEAN
_O = ResourceType.OPAQUE
_T = ResourceType.TIME
_L = ResourceType.OBJLNK
_N = ResourceType.NONE
_R = ResourceDef

# Short Server IDs are 1..65534 (65535 is reserved).
SHORT_SERVER_ID_RANGE: Final = Range(1, 65534)
# Security Mode (/0/x/2) of an account: pre-shared key, or no security.
SECURITY_MODE_PSK: Final = 0
SECURITY_MODE_NOSEC: Final = 3

# OMA object 0 (LwM2M 1.1): server URIs and credentials; bootstrap only.
SECURITY: Final = _obj(
    0, "LwM2M Security", "1.1", True,
    # Only the bootstrap server may touch the Security object: no operations.
    _R(0, "LwM2M Server URI", _S, "", mandatory=True, range=Range(max_length=255)),
    _R(1, "Bootstrap-Server", _B, "", mandatory=True),
    _R(2, "Security Mode", _I, "", mandatory=True, range=Range(0, 4)),
    _R(3, "Public Key or Identity", _O, "", mandatory=True),
    _R(4, "Server Public Key", _O, "", mandatory=True),
    _R(5, "Secret Key", _O, "", mandatory=True),
    _R(6, "SMS Security Mode", _I, "", range=Range(0, 255)),
    _R(7, "SMS Binding Key Parameters", _O, "", range=Range(max_length=6)),
    _R(8, "SMS Binding Secret Key(s)", _O, "", range=Range(max_length=48)),
    _R(9, "LwM2M Server SMS Number", _S, ""),
    _R(10, "Short Server ID", _I, "", range=SHORT_SERVER_ID_RANGE),
    _R(11, "Client Hold Off Time", _I, ""),
    _R(12, "Bootstrap-Server Account Timeout", _I, ""),
    _R(13, "Matching Type", _U, "", range=Range(0, 3)),
    _R(14, "SNI", _S, ""),
    _R(15, "Certificate Usage", _U, "", range=Range(0, 3)),
    _R(16, "DTLS/TLS Ciphersuite", _U, "", multiple=True),
    _R(17, "OSCORE Security Mode", _L, ""),
)  # fmt: skip

# OMA object 1 (LwM2M 1.1): one instance per LwM2M server.
SERVER: Final = _obj(
    1, "LwM2M Server", "1.1", True,
    _R(0, "Short Server ID", _I, "R", mandatory=True, range=SHORT_SERVER_ID_RANGE),
    _R(1, "Lifetime", _I, "RW", mandatory=True),
    _R(2, "Default Minimum Period", _I, "RW"),
    _R(3, "Default Maximum Period", _I, "RW"),
    _R(4, "Disable", _N, "E"),
    _R(5, "Disable Timeout", _I, "RW"),
    _R(6, "Notification Storing When Disabled or Offline", _B, "RW",
      mandatory=True),
    _R(7, "Binding", _S, "RW", mandatory=True),
    _R(8, "Registration Update Trigger", _N, "E", mandatory=True),
    _R(9, "Bootstrap-Request Trigger", _N, "E"),
    _R(10, "APN Link", _L, "RW"),
    _R(11, "TLS-DTLS Alert Code", _U, "R", range=Range(0, 255)),
    _R(12, "Last Bootstrapped", _T, "R"),
    _R(13, "Registration Priority Order", _U, "R"),
    _R(14, "Initial Registration Delay Timer", _U, "R"),
    _R(15, "Registration Failure Block", _B, "R"),
    _R(16, "Bootstrap on Registration Failure", _B, "R"),
    _R(17, "Communication Retry Count", _U, "R"),
    _R(18, "Communication Retry Timer", _U, "R"),
    _R(19, "Communication Sequence Delay Timer", _U, "R"),
    _R(20, "Communication Sequence Retry Count", _U, "R"),
    _R(21, "Trigger", _B, "RW"),
    _R(22, "Preferred Transport", _S, "RW"),
    _R(23, "Mute Send", _B, "RW"),
)  # fmt: skip

# OMA object 3 1.0: device identity, power, time; /3/0/4 reboots.
DEVICE: Final = _obj(
    3, "Device", "1.0", False,
    _R(0, "Manufacturer", _S, "R"),
    _R(1, "Model Number", _S, "R"),
    _R(2, "Serial Number", _S, "R"),
    _R(3, "Firmware Version", _S, "R"),
    _R(4, "Reboot", _N, "E", mandatory=True),
    _R(5, "Factory Reset", _N, "E"),
    _R(6, "Available Power Sources", _I, "R", multiple=True, range=Range(0, 7)),
    _R(7, "Power Source Voltage", _I, "R", multiple=True),
    _R(8, "Power Source Current", _I, "R", multiple=True),
    _R(9, "Battery Level", _I, "R", range=Range(0, 100)),
    _R(10, "Memory Free", _I, "R"),
    _R(11, "Error Code", _I, "R", multiple=True, mandatory=True, range=Range(0, 8)),
    _R(12, "Reset Error Code", _N, "E"),
    _R(13, "Current Time", _T, "RW"),
    _R(14, "UTC Offset", _S, "RW"),
    _R(15, "Timezone", _S, "RW"),
    _R(16, "Supported Binding and Modes", _S, "R", mandatory=True),
    _R(17, "Device Type", _S, "R"),
    _R(18, "Hardware Version", _S, "R"),
    _R(19, "Software Version", _S, "R"),
    _R(20, "Battery Status", _I, "R", range=Range(0, 6)),
    _R(21, "Memory Total", _I, "R"),
    _R(22, "ExtDevInfo", _L, "R", multiple=True),
)  # fmt: skip

# OMA object 4 1.3: bearer, signal and serving cell (wire.md 5.3).
CONNECTIVITY_MONITORING: Final = _obj(
    4, "Connectivity Monitoring", "1.3", False,
    _R(0, "Network Bearer", _I, "R", mandatory=True),
    _R(1, "Available Network Bearer", _I, "R", multiple=True, mandatory=True),
    _R(2, "Radio Signal Strength", _I, "R", mandatory=True),
    _R(3, "Link Quality", _I, "R"),
    _R(4, "IP Addresses", _S, "R", multiple=True, mandatory=True),
    _R(5, "Router IP Addresses", _S, "R", multiple=True),
    _R(6, "Link Utilization", _I, "R", range=Range(0, 100)),
    _R(7, "APN", _S, "R", multiple=True),
    _R(8, "Cell ID", _I, "R"),
    _R(9, "SMNC", _I, "R"),
    _R(10, "SMCC", _I, "R"),
    _R(11, "SignalSNR", _I, "R"),
    _R(12, "LAC", _I, "R"),
    _R(13, "Coverage Enhancement Level", _I, "R"),
)  # fmt: skip

# OMA object 5 1.0: firmware update by package or URI (wire.md 6.4).
FIRMWARE_UPDATE: Final = _obj(
    5, "Firmware Update", "1.0", False,
    _R(0, "Package", _O, "W", mandatory=True),
    _R(1, "Package URI", _S, "RW", mandatory=True, range=Range(max_length=255)),
    _R(2, "Update", _N, "E", mandatory=True),
    _R(3, "State", _I, "R", mandatory=True, range=Range(0, 3)),
    _R(5, "Update Result", _I, "R", mandatory=True, range=Range(0, 9)),
    _R(6, "PkgName", _S, "R"),
    _R(7, "PkgVersion", _S, "R"),
    _R(8, "Firmware Update Protocol Support", _I, "R", multiple=True,
      range=Range(0, 5)),
    _R(9, "Firmware Update Delivery Method", _I, "R", mandatory=True,
      range=Range(0, 2)),
)  # fmt: skip

# OMA object 6 1.0: the GNSS fix (wire.md 5.3).
LOCATION: Final = _obj(
    6, "Location", "1.0", False,
    _R(0, "Latitude", _F, "R", mandatory=True, range=Range(-90, 90)),
    _R(1, "Longitude", _F, "R", mandatory=True, range=Range(-180, 180)),
    _R(2, "Altitude", _F, "R"),
    _R(3, "Radius", _F, "R"),
    _R(4, "Velocity", _O, "R"),
    _R(5, "Timestamp", _T, "R", mandatory=True),
    _R(6, "Speed", _F, "R"),
)  # fmt: skip


def _ipso_sensor(object_id: int, name: str) -> ObjectDef:
    """An IPSO 1.1 generic sensor object (3303, 3304, 3323)."""
    return _obj(
        object_id, name, "1.1", True,
        _R(5700, "Sensor Value", _F, "R", mandatory=True),
        _R(5701, "Sensor Units", _S, "R"),
        _R(5601, "Min Measured Value", _F, "R"),
        _R(5602, "Max Measured Value", _F, "R"),
        _R(5603, "Min Range Value", _F, "R"),
        _R(5604, "Max Range Value", _F, "R"),
        _R(5605, "Reset Min and Max Measured Values", _N, "E"),
        _R(5750, "Application Type", _S, "RW"),
        _R(5518, "Timestamp", _T, "R"),
        _R(6050, "Fractional Timestamp", _F, "R", range=Range(0, 1)),
        _R(6042, "Measurement Quality Indicator", _I, "R", range=Range(0, 23)),
        _R(6049, "Measurement Quality Level", _I, "R", range=Range(0, 100)),
    )  # fmt: skip


# IPSO 1.1 sensors of the Thingy:91 build (wire.md 5.3).
TEMPERATURE: Final = _ipso_sensor(3303, "Temperature")
HUMIDITY: Final = _ipso_sensor(3304, "Humidity")
PRESSURE: Final = _ipso_sensor(3323, "Pressure")

# IPSO object 3347 1.1: one instance per button.
PUSH_BUTTON: Final = _obj(
    3347, "Push button", "1.1", True,
    _R(5500, "Digital Input State", _B, "R", mandatory=True),
    _R(5501, "Digital Input Counter", _I, "R"),
    _R(5750, "Application Type", _S, "RW"),
    _R(5518, "Timestamp", _T, "R"),
    _R(6050, "Fractional Timestamp", _F, "R", range=Range(0, 1)),
)  # fmt: skip

# OMA object 10256: one instance per neighbour cell.
ECID_SIGNAL_MEASUREMENT: Final = _obj(
    10256, "ECID-Signal Measurement Information", "1.0", True,
    _R(0, "physCellId", _I, "R", mandatory=True),
    _R(1, "ECGI", _I, "R"),
    _R(2, "arfcnEUTRA", _I, "R", mandatory=True),
    _R(3, "rsrp-Result", _I, "R", mandatory=True),
    _R(4, "rsrq-Result", _I, "R"),
    _R(5, "ue-RxTxTimeDiff", _I, "R"),
)  # fmt: skip

# Nordic object 33625: A-GNSS and P-GPS requests and answers (wire.md 5.5).
GNSS_ASSISTANCE: Final = _obj(
    33625, "GNSS Assistance", "1.0", False,
    _R(0, "assistance_type", _I, "R", mandatory=True, range=Range(0, 1)),
    _R(1, "agps_assistance_mask", _I, "R"),
    _R(2, "pgps_predictionCount", _I, "R"),
    _R(3, "pgps_predictionIntervalMinutes", _I, "R"),
    _R(4, "pgps_startGpsDay", _I, "R"),
    _R(5, "pgps_startTime", _I, "R"),
    # Written by the server with the answer.
    _R(6, "assistance_data", _O, "W"),
    _R(7, "result_code", _I, "RW", mandatory=True),
    _R(8, "satellite_elevation_mask", _I, "R"),
)  # fmt: skip

# Nordic object 33626: the cloud location request and answer.
GROUND_FIX: Final = _obj(
    33626, "Ground Fix", "1.0", False,
    _R(0, "report_back", _B, "RW"),
    _R(1, "result_code", _I, "RW", mandatory=True),
    _R(2, "latitude", _F, "RW", range=Range(-90, 90)),
    _R(3, "longitude", _F, "RW", range=Range(-180, 180)),
    _R(4, "accuracy", _F, "RW", range=Range(min=0)),
)  # fmt: skip

# The four intervals of 50009: the firmware's data module accepts them only
# when greater than 0; the object stores them as 32-bit integers.
CONFIG_INTERVAL_RANGE: Final = Range(1, INT32_MAX)

# The tracker's Configuration object 50009 (wire.md 5.6), written by the server.
CONFIGURATION: Final = _obj(
    50009, "Configuration", "1.0", False,
    _R(0, "Passive mode", _B, "RW", mandatory=True),
    _R(1, "Location timeout", _I, "RW", mandatory=True,
      range=CONFIG_INTERVAL_RANGE),
    _R(2, "Active wait time", _I, "RW", mandatory=True,
      range=CONFIG_INTERVAL_RANGE),
    _R(3, "Movement resolution", _I, "RW", mandatory=True,
      range=CONFIG_INTERVAL_RANGE),
    _R(4, "Movement timeout", _I, "RW", mandatory=True,
      range=CONFIG_INTERVAL_RANGE),
    # The accelerometer values are not checked by the firmware.
    _R(5, "Accelerometer activity threshold", _F, "RW", mandatory=True),
    _R(6, "GNSS enable", _B, "RW", mandatory=True),
    _R(7, "Neighbor cell measurements enable", _B, "RW", mandatory=True),
    _R(8, "Accelerometer inactivity threshold", _F, "RW", mandatory=True),
    _R(9, "Accelerometer inactivity timeout", _F, "RW", mandatory=True),
)  # fmt: skip

# Every object definition by id.
OBJECTS: Final[dict[int, ObjectDef]] = {
    d.id: d
    for d in (
        SECURITY, SERVER, DEVICE, CONNECTIVITY_MONITORING, FIRMWARE_UPDATE,
        LOCATION, TEMPERATURE, HUMIDITY, PRESSURE, PUSH_BUTTON,
        ECID_SIGNAL_MEASUREMENT, GNSS_ASSISTANCE, GROUND_FIX, CONFIGURATION,
    )
}  # fmt: skip

# The content format of a Read without Accept: the one registered (ct=112).
DEFAULT_FORMAT: Final = ContentFormat.SENML_CBOR
# The content formats a Read can be answered in (OMA-JSON is disabled).
READ_FORMATS: Final = frozenset(
    {
        ContentFormat.TEXT, ContentFormat.OPAQUE, ContentFormat.CBOR,
        ContentFormat.SENML_JSON, ContentFormat.SENML_CBOR, ContentFormat.TLV,
    }
)  # fmt: skip
# The content formats a Write may carry.
WRITE_FORMATS: Final = READ_FORMATS

# Objects never listed at registration (TS Core 6.2.1: Security, OSCORE).
UNREGISTERED_OBJECTS: Final = frozenset({0, 21})

# 50009 resource -> DeviceConfig field for the plain-valued resources.
CONFIG_FIELDS: Final = {
    1: "location_timeout",
    2: "active_wait_timeout",
    3: "movement_resolution",
    4: "movement_timeout",
    5: "accelerometer_activity_threshold",
    8: "accelerometer_inactivity_threshold",
    9: "accelerometer_inactivity_timeout",
}


def config_values(config: DeviceConfig) -> dict[int, Value]:
    """The 50009 resource values that show ``config`` (``wire.md`` 5.6)."""
    values: dict[int, Value] = {
        0: not config.active_mode,
        6: not config.no_data.gnss,
        7: not config.no_data.neighbor_cell,
    }
    for rid, field in CONFIG_FIELDS.items():
        value = getattr(config, field)
        values[rid] = float(value) if CONFIGURATION.resources[rid].type is _F else value
    return dict(sorted(values.items()))


def config_from_values(
    values: Mapping[int, Value], current: DeviceConfig
) -> DeviceConfig:
    """``current`` with the 50009 resources in ``values`` applied.

    Values must already be valid (the store checks them on write); the
    Wi-Fi flag has no resource and is kept.
    """
    changes: dict[str, Any] = {
        CONFIG_FIELDS[rid]: value
        for rid, value in values.items()
        if rid in CONFIG_FIELDS
    }
    if 0 in values:
        changes["active_mode"] = not values[0]
    no_data = current.no_data
    if 6 in values:
        no_data = attrs.evolve(no_data, gnss=not values[6])
    if 7 in values:
        no_data = attrs.evolve(no_data, neighbor_cell=not values[7])
    if no_data != current.no_data:
        changes["no_data"] = NoData(
            gnss=no_data.gnss, neighbor_cell=no_data.neighbor_cell, wifi=no_data.wifi
        )
    return attrs.evolve(current, **changes)


# --------------------------------------------------------------------------
# Values

# The value a mandatory resource holds until the device sets it.
_DEFAULTS: Final[dict[ResourceType, Value]] = {
    ResourceType.STRING: "",
    ResourceType.CORELNK: "",
    ResourceType.INTEGER: 0,
    ResourceType.UNSIGNED: 0,
    ResourceType.TIME: 0,
    ResourceType.FLOAT: 0.0,
    ResourceType.BOOLEAN: False,
    ResourceType.OPAQUE: b"",
    # TS Core: an objlnk to nothing is 65535:65535.
    ResourceType.OBJLNK: ObjLink(65535, 65535),
}


def coerce_value(rdef: ResourceDef, value: object, where: str) -> Value:
    """``value`` as a value of ``rdef``'s type; BadRequest if it is not one.

    Float resources take integers; Integer resources take integral floats
    (SenML has one number type).
    """
    rtype = rdef.type
    ok: Value | None = None
    if rtype in (ResourceType.STRING, ResourceType.CORELNK):
        ok = value if isinstance(value, str) else None
    elif rtype is ResourceType.BOOLEAN:
        ok = value if isinstance(value, bool) else None
    elif rtype is ResourceType.OPAQUE:
        if isinstance(value, bytes | bytearray | memoryview):
            ok = bytes(value)
    elif rtype is ResourceType.OBJLNK:
        ok = value if isinstance(value, ObjLink) else None
    elif rtype is ResourceType.FLOAT:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise BadRequest(f"{where}: {value!r} is not a finite Float")
            ok = float(value)
    elif rtype in (ResourceType.INTEGER, ResourceType.TIME, ResourceType.UNSIGNED):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            low, high = (
                (0, UINT64_MAX) if rtype is ResourceType.UNSIGNED
                else (INT64_MIN, INT64_MAX)
            )  # fmt: skip
            if not low <= value <= high:
                raise BadRequest(f"{where}: {value!r} is outside {low}..{high}")
            ok = value
    else:
        raise MethodNotAllowed(f"{where}: an executable resource has no value")
    if ok is None:
        raise BadRequest(
            f"{where}: {_short(value)} is not a {rtype.value} ({type(value).__name__})"
        )
    return ok


def _short(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def _as_path(path: Path | str) -> Path:
    if isinstance(path, Path):
        return path
    try:
        return Path.parse(path)
    except FormatError as exc:
        raise BadRequest(str(exc)) from None


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return {"opaque": value[:64].hex(), "length": len(value)}
    if isinstance(value, ObjLink):
        return str(value)
    return value


# Execute arguments (TS Core 5.4.5): digit ['=' "'" text "'"], comma separated.
_ARGUMENT_RE: Final = re.compile(r"([0-9])(?:='([^']*)')?")


def parse_execute_arguments(argument: bytes) -> dict[int, str | None]:
    """The arguments of an Execute (``0='a',1``); BadRequest if malformed."""
    try:
        text = argument.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"execute argument: not UTF-8 at byte {exc.start}") from None
    out: dict[int, str | None] = {}
    if not text:
        return out
    for index, part in enumerate(text.split(",")):
        match = _ARGUMENT_RE.fullmatch(part)
        if not match:
            raise BadRequest(f"execute argument {index}: {part[:40]!r} is malformed")
        out[int(match[1])] = match[2]
    return out


# --------------------------------------------------------------------------
# The store

# instance -> resource -> value or {resource instance: value}
_Instances: TypeAlias = dict[int, dict[int, Any]]
# The callbacks of on_write, on_execute and on_change (results are ignored).
WriteHook: TypeAlias = Callable[[list[Record]], object]
ExecuteHook: TypeAlias = Callable[[bytes], object]
ChangeHook: TypeAlias = Callable[[list[Path]], object]


class ObjectStore:
    """The object instances and resource values of one LwM2M client.

    Args:
      objects: the object definitions this client implements (default: all
        of :data:`OBJECTS`).
    """

    def __init__(self, objects: Mapping[int, ObjectDef] | None = None) -> None:
        self.objects: dict[int, ObjectDef] = dict(
            OBJECTS if objects is None else objects
        )
        self._data: dict[int, _Instances] = {oid: {} for oid in self.objects}
        self._write_hooks: dict[int, list[WriteHook]] = {}
        self._execute_hooks: dict[Path, ExecuteHook] = {}
        self._change_hooks: list[ChangeHook] = []
        # Changed paths held back while a server write is not committed.
        self._pending: list[Path] | None = None

    # -- lookups ------------------------------------------------------------

    def _object(self, path: Path) -> ObjectDef:
        definition = self.objects.get(path.object_id)
        if definition is None:
            raise NotFound(f"{path}: no object {path.object_id}")
        return definition

    def _instance(self, path: Path) -> dict[int, Any]:
        self._object(path)
        assert path.instance is not None
        instance = self._data[path.object_id].get(path.instance)
        if instance is None:
            raise NotFound(f"{path}: no instance /{path.object_id}/{path.instance}")
        return instance

    def _resource_def(self, path: Path) -> ResourceDef:
        definition = self._object(path)
        assert path.resource is not None
        rdef = definition.resources.get(path.resource)
        if rdef is None:
            raise NotFound(
                f"{path}: object {definition.id} has no resource {path.resource}"
            )
        return rdef

    def definition(self, path: Path | str) -> ResourceDef:
        """The definition of the resource at ``path`` (NotFound if none)."""
        path = _as_path(path)
        if path.level < 3:
            raise BadRequest(f"{path}: not a resource path")
        return self._resource_def(path)

    def type_of(self, path: Path) -> ResourceType | None:
        """The type of the resource at ``path``, None if it is not defined.

        Suitable as the ``type_of`` of the decoders of lwm2m_formats.
        """
        definition = self.objects.get(path.object_id)
        if definition is None or path.resource is None:
            return None
        rdef = definition.resources.get(path.resource)
        return None if rdef is None else rdef.type

    def has(self, path: Path | str) -> bool:
        """Whether the object, instance, resource or resource instance exists."""
        path = _as_path(path)
        if path.object_id not in self.objects:
            return False
        node: Any = self._data[path.object_id]
        for ident in path.ids[1:]:
            if not isinstance(node, dict) or ident not in node:
                return False
            node = node[ident]
        return True

    def instances(self, object_id: int) -> list[int]:
        """The instance ids of an object, ascending (NotFound if undefined)."""
        self._object(Path(object_id))
        return sorted(self._data[object_id])

    # -- local (device) updates ------------------------------------------

    def create(
        self,
        object_id: int,
        instance: int,
        values: Mapping[int, Value | Mapping[int, Value]] | None = None,
    ) -> None:
        """Create an object instance with initial values.

        Mandatory resources that are not given hold a default (empty string,
        0, False...) until set.  Raises NotFound for an unknown object or
        resource and BadRequest for an existing instance, a second instance
        of a single-instance object or a value of the wrong type.
        """
        path = Path(object_id, instance)
        definition = self._object(path)
        existing = self._data[object_id]
        if instance in existing:
            raise BadRequest(f"{path}: the instance exists")
        if existing and not definition.multiple:
            raise BadRequest(f"{path}: object {object_id} has a single instance")
        resources: dict[int, Any] = {}
        for rid, value in (values or {}).items():
            resources[rid] = self._local_value(path.child(rid), value)
        for rid, rdef in definition.resources.items():
            if rid in resources or not rdef.mandatory or rdef.type is ResourceType.NONE:
                continue
            default = _DEFAULTS[rdef.type]
            # A mandatory multiple resource starts with instance 0.
            resources[rid] = {0: default} if rdef.multiple else default
        existing[instance] = dict(sorted(resources.items()))
        self._notify([path])

    def _local_value(self, path: Path, value: Any) -> Any:
        rdef = self._resource_def(path)
        if rdef.type is ResourceType.NONE:
            raise MethodNotAllowed(f"{path}: an executable resource has no value")
        if path.level == 4:
            if not rdef.multiple:
                raise BadRequest(f"{path}: resource {rdef.id} is a single resource")
            return coerce_value(rdef, value, str(path))
        if rdef.multiple:
            if not isinstance(value, Mapping):
                raise BadRequest(
                    f"{path}: a multiple resource takes a dict of instances"
                )
            return {
                riid: coerce_value(rdef, v, str(path.child(riid)))
                for riid, v in sorted(value.items())
            }
        return coerce_value(rdef, value, str(path))

    def set(self, path: Path | str, value: Value | Mapping[int, Value]) -> None:
        """Update a resource (instance) as the device; observers hear of it.

        A multiple resource at resource level takes a dict of all its
        instances.  Checks the type, not the operations or the range.
        """
        path = _as_path(path)
        if path.level < 3:
            raise BadRequest(f"{path}: set takes a resource path")
        instance = self._instance(path)
        new = self._local_value(path, value)
        assert path.resource is not None
        if path.level == 4:
            current = instance.get(path.resource)
            if not isinstance(current, dict):
                current = instance[path.resource] = {}
            changed = current.get(path.resource_instance, _MISSING) != new
            current[path.resource_instance] = new
            current_sorted = dict(sorted(current.items()))
            instance[path.resource] = current_sorted
        else:
            changed = instance.get(path.resource, _MISSING) != new
            instance[path.resource] = new
        if changed:
            self._notify([path])

    def get(self, path: Path | str) -> Value | dict[int, Value]:
        """The value at a resource (instance) path (NotFound if not set).

        A multiple resource gives a dict copy of its instances.
        """
        path = _as_path(path)
        if path.level < 3:
            raise BadRequest(f"{path}: get takes a resource path")
        instance = self._instance(path)
        self._resource_def(path)
        assert path.resource is not None
        if path.resource not in instance:
            raise NotFound(f"{path}: resource {path.resource} is not set")
        value = instance[path.resource]
        if path.level == 4:
            if not isinstance(value, dict) or path.resource_instance not in value:
                raise NotFound(f"{path}: no resource instance {path.resource_instance}")
            return value[path.resource_instance]  # type: ignore[no-any-return]
        return dict(value) if isinstance(value, dict) else value

    def delete(self, path: Path | str) -> None:
        """Delete an object instance or a resource instance (server Delete)."""
        path = _as_path(path)
        if path.level not in (2, 4):
            raise MethodNotAllowed(f"{path}: only instances can be deleted")
        instance = self._instance(path)
        if path.level == 2:
            del self._data[path.object_id][path.instance]  # type: ignore[arg-type]
        else:
            assert path.resource is not None
            values = instance.get(path.resource)
            if not isinstance(values, dict) or path.resource_instance not in values:
                raise NotFound(f"{path}: no such resource instance")
            del values[path.resource_instance]
        self._notify([path])

    # -- server operations ------------------------------------------------

    def read(self, path: Path | str) -> list[Record]:
        """The readable values at or below ``path`` (server Read).

        An object or instance gives its readable resources that have a value,
        by id; a resource or resource instance gives itself.
        """
        path = _as_path(path)
        self._object(path)
        if path.level == 1:
            return [
                record
                for iid in sorted(self._data[path.object_id])
                for record in self._read_instance(Path(path.object_id, iid))
            ]
        instance = self._instance(path)
        if path.level == 2:
            return self._read_instance(path)
        rdef = self._resource_def(path)
        if not rdef.readable:
            raise MethodNotAllowed(f"{path}: {rdef.name} is not readable")
        assert path.resource is not None
        if path.resource not in instance:
            raise NotFound(f"{path}: {rdef.name} has no value")
        value = instance[path.resource]
        if path.level == 3:
            return _records(path, value)
        if not rdef.multiple:
            raise NotFound(f"{path}: {rdef.name} has no resource instances")
        if path.resource_instance not in value:
            raise NotFound(f"{path}: no resource instance {path.resource_instance}")
        return [Record(path, value[path.resource_instance])]

    def read_composite(self, paths: Iterable[Path | str]) -> list[Record]:
        """The records of several paths (Read-Composite, Send).

        Paths that do not exist are left out, as Read-Composite does; a
        path that exists but is not readable raises MethodNotAllowed.
        """
        records: list[Record] = []
        for path in paths:
            try:
                records += self.read(path)
            except NotFound:
                continue
        return records

    def read_payload(
        self, path: Path | str, accept: int | None = None
    ) -> tuple[ContentFormat, bytes]:
        """A server Read answered in ``accept`` (default: SenML CBOR).

        Raises NotAcceptable (4.06) for a format this store cannot produce
        or one that cannot hold the result (plain text of an instance).
        """
        path = _as_path(path)
        records = self.read(path)
        fmt = DEFAULT_FORMAT if accept is None else accept
        if fmt not in READ_FORMATS:
            raise NotAcceptable(f"{path}: content format {fmt} is not supported")
        fmt = ContentFormat(fmt)
        single = fmt in (ContentFormat.TEXT, ContentFormat.OPAQUE, ContentFormat.CBOR)
        if single:
            is_single = path.level == 4 or (
                path.level == 3 and not self._resource_def(path).multiple
            )
            if not is_single:
                raise NotAcceptable(
                    f"{path}: {fmt.name} holds a single value, not {len(records)}"
                )
            if fmt is ContentFormat.OPAQUE and not isinstance(records[0].value, bytes):
                raise NotAcceptable(f"{path}: only an Opaque resource is raw bytes")
        try:
            return fmt, encode(records, fmt, path, self.type_of)
        except FormatError as exc:
            raise NotAcceptable(f"{path}: {exc}") from None

    def write_payload(
        self,
        path: Path | str,
        content_format: int | None,
        payload: bytes,
        *,
        replace: bool,
    ) -> None:
        """A server Write with its payload: decode, then :meth:`write`.

        Raises UnsupportedFormat (4.15) for a content format not decoded
        here and BadRequest (4.00) for content that does not decode.
        """
        path = _as_path(path)
        if content_format is None or content_format not in WRITE_FORMATS:
            raise UnsupportedFormat(
                f"{path}: content format {content_format} is not supported"
            )
        if path.level >= 3:
            self._resource_def(path)
        try:
            records = decode(payload, content_format, path, self.type_of)
        except FormatError as exc:
            raise BadRequest(f"{path}: {exc}") from None
        except UnsupportedContentFormat as exc:
            raise UnsupportedFormat(f"{path}: {exc}") from None
        self.write(path, records, replace=replace)

    def _read_instance(self, path: Path) -> list[Record]:
        definition = self._object(path)
        records: list[Record] = []
        for rid, value in sorted(self._instance(path).items()):
            rdef = definition.resources[rid]
            if rdef.readable:
                records += _records(path.child(rid), value)
        return records

    def write(
        self, path: Path | str, records: Iterable[Record], *, replace: bool
    ) -> None:
        """A server Write to an instance, resource or resource instance.

        ``replace`` (CoAP PUT) replaces: at instance level the writable
        optional resources not in ``records`` are removed, at resource
        level a multiple resource keeps only the written instances.
        Otherwise (POST, partial update) only the written values change.
        Every record is checked before anything changes; the write hooks of
        the object then run, and any exception from them undoes the write.
        """
        path = _as_path(path)
        if path.level == 1:
            raise MethodNotAllowed(f"{path}: cannot write a whole object")
        definition = self._object(path)
        instance = self._instance(path)
        checked = self._check_write(path, list(records))
        self._commit(
            str(path),
            lambda: self._apply_write(path, definition, instance, checked, replace),
            {path.object_id: checked},
            [Path(path.object_id, path.instance)],
        )

    def write_composite(self, records: Iterable[Record]) -> None:
        """A server Write-Composite: partial updates of several instances.

        Atomic like :meth:`write`; each object's write hooks see the records
        written to that object.
        """
        records = list(records)
        by_instance: dict[Path, list[Record]] = {}
        seen: set[Path] = set()
        for index, record in enumerate(records):
            if record.path in seen:
                raise BadRequest(f"{record.path} (record {index}): written twice")
            seen.add(record.path)
            instance_path = Path.from_ids(record.path.ids[:2])
            by_instance.setdefault(instance_path, []).append(record)
        plans: list[tuple[Path, ObjectDef, dict[int, Any], list[Record]]] = []
        for instance_path, group in by_instance.items():
            definition = self._object(instance_path)
            instance = self._instance(instance_path)
            plans.append(
                (instance_path, definition, instance,
                 self._check_write(instance_path, group))
            )  # fmt: skip
        hooks: dict[int, list[Record]] = {}
        for instance_path, _, _, checked in plans:
            hooks.setdefault(instance_path.object_id, []).extend(checked)

        def apply() -> None:
            for instance_path, definition, instance, checked in plans:
                self._apply_write(instance_path, definition, instance, checked, False)

        self._commit("write-composite", apply, hooks, list(by_instance))

    def _commit(
        self,
        what: str,
        apply: Callable[[], None],
        hooks: dict[int, list[Record]],
        instances: list[Path],
    ) -> None:
        """Apply, run the write hooks, and undo everything if one fails.

        A hook may itself write (nested transactions): its changes reach the
        observers when the outermost write commits.
        """
        backup = copy.deepcopy(self._data)
        outer = self._pending
        pending: list[Path] = []
        self._pending = pending
        try:
            apply()
            for object_id, checked in hooks.items():
                for hook in list(self._write_hooks.get(object_id, ())):
                    hook(list(checked))
        except BaseException as exc:
            self._data = backup
            self._pending = outer
            if isinstance(exc, LwM2MError) or not isinstance(exc, Exception):
                raise
            raise InternalServerError(f"{what}: write failed: {exc!r}") from exc
        self._pending = outer
        changed = list(pending)
        for instance_path in instances:
            changed += self._diff(backup, instance_path)
        self._notify(_unique(changed))

    def _check_write(self, path: Path, records: list[Record]) -> list[Record]:
        checked: list[Record] = []
        seen: set[Path] = set()
        for index, record in enumerate(records):
            target = record.path
            where = f"{target} (record {index})"
            if not path.contains(target):
                raise BadRequest(f"{where}: not below the write target {path}")
            if target in seen:
                raise BadRequest(f"{where}: written twice")
            seen.add(target)
            rdef = self._resource_def(target)
            if not rdef.writable:
                raise MethodNotAllowed(f"{where}: {rdef.name} is not writable")
            if rdef.multiple and target.level == 3:
                raise BadRequest(f"{where}: {rdef.name} takes resource instances")
            if not rdef.multiple and target.level == 4:
                raise BadRequest(f"{where}: {rdef.name} is a single resource")
            value = coerce_value(rdef, record.value, where)
            if rdef.range is not None:
                problem = rdef.range.check(value)
                if problem:
                    raise BadRequest(f"{where}: {rdef.name} {problem}")
            checked.append(Record(target, value, record.time))
        return checked

    def _apply_write(
        self,
        path: Path,
        definition: ObjectDef,
        instance: dict[int, Any],
        records: list[Record],
        replace: bool,
    ) -> None:
        written: dict[int, Any] = {}
        for record in records:
            rid = record.path.resource
            assert rid is not None
            if record.path.level == 3:
                written[rid] = record.value
            else:
                written.setdefault(rid, {})[record.path.resource_instance] = (
                    record.value
                )
        if replace and path.level == 2:
            for rid, rdef in definition.resources.items():
                if rid in written or not rdef.writable:
                    continue
                # Mandatory resources keep their value: replacing an
                # instance never leaves it without one.
                if not rdef.mandatory and rid in instance:
                    del instance[rid]
        for rid, value in written.items():
            if isinstance(value, dict):
                merge = not replace or path.level == 4
                old = instance.get(rid) if merge else None
                merged = dict(old) if isinstance(old, dict) else {}
                merged.update(value)
                instance[rid] = dict(sorted(merged.items()))
            else:
                instance[rid] = value
        if replace and path.level == 3 and not written:
            # Replacing a multiple resource with no instances empties it.
            assert path.resource is not None
            if self._resource_def(path).multiple:
                instance[path.resource] = {}
        instance_sorted = dict(sorted(instance.items()))
        instance.clear()
        instance.update(instance_sorted)

    def _diff(self, before: dict[int, _Instances], path: Path) -> list[Path]:
        assert path.instance is not None
        old = before[path.object_id].get(path.instance, {})
        new = self._data[path.object_id].get(path.instance, {})
        base = Path(path.object_id, path.instance)
        return [
            base.child(rid)
            for rid in sorted(set(old) | set(new))
            if old.get(rid, _MISSING) != new.get(rid, _MISSING)
        ]

    def execute(self, path: Path | str, argument: bytes = b"") -> None:
        """A server Execute; runs the hook registered for ``path``."""
        path = _as_path(path)
        if path.level != 3:
            raise MethodNotAllowed(f"{path}: only a resource can be executed")
        self._instance(path)
        rdef = self._resource_def(path)
        if not rdef.executable:
            raise MethodNotAllowed(f"{path}: {rdef.name} is not executable")
        hook = self._execute_hooks.get(path)
        if hook is None:
            return
        try:
            hook(bytes(argument))
        except LwM2MError:
            raise
        except Exception as exc:
            raise InternalServerError(f"{path}: execute failed: {exc!r}") from exc

    # -- hooks ------------------------------------------------------------

    def on_write(self, object_id: int, callback: WriteHook) -> Callable[[], None]:
        """Call ``callback(records)`` after each server write to the object.

        The records are the written values (already type-converted); the
        store already holds them, so the callback may ``get`` the result.
        Raising (preferably an LwM2MError) undoes the write.  Returns a
        function that removes the callback.
        """
        hooks = self._write_hooks.setdefault(object_id, [])
        hooks.append(callback)
        return lambda: hooks.remove(callback) if callback in hooks else None

    def on_execute(self, path: Path | str, callback: ExecuteHook) -> Callable[[], None]:
        """Call ``callback(argument)`` when the server executes ``path``."""
        path = _as_path(path)
        self._execute_hooks[path] = callback

        def remove() -> None:
            if self._execute_hooks.get(path) is callback:
                del self._execute_hooks[path]

        return remove

    def on_change(self, callback: ChangeHook) -> Callable[[], None]:
        """Call ``callback(paths)`` with the paths whose values changed.

        Paths are resource (instance) paths for value changes and instance
        paths for created or deleted instances.
        """
        self._change_hooks.append(callback)
        hooks = self._change_hooks
        return lambda: hooks.remove(callback) if callback in hooks else None

    def _notify(self, paths: list[Path]) -> None:
        if not paths:
            return
        if self._pending is not None:
            self._pending.extend(paths)
            return
        for hook in list(self._change_hooks):
            hook(list(paths))

    # -- registration and debugging --------------------------------------

    def links(self) -> list[Path]:
        """The objects and instances to register (instances where any)."""
        out: list[Path] = []
        for oid in sorted(self.objects):
            if oid in UNREGISTERED_OBJECTS:
                continue
            instances = sorted(self._data[oid])
            if instances:
                out += [Path(oid, iid) for iid in instances]
            else:
                out.append(Path(oid))
        return out

    def versions(self) -> dict[int, str]:
        """The object versions other than 1.0 (announced with ``ver``)."""
        return {
            oid: d.version
            for oid, d in sorted(self.objects.items())
            if d.version != "1.0" and oid not in UNREGISTERED_OBJECTS
        }

    def registration_links(
        self, content_formats: Iterable[int] | int | None = ContentFormat.SENML_CBOR
    ) -> str:
        """The registration payload: root link, versions, object links."""
        return encode_link_format(
            self.links(), content_formats=content_formats, versions=self.versions()
        )

    def snapshot(self) -> dict[str, Any]:
        """Every value by path, JSON-friendly (opaque as hex, objlnk as text)."""
        out: dict[str, Any] = {}
        for oid in sorted(self._data):
            for iid, resources in sorted(self._data[oid].items()):
                if not resources:
                    out[f"/{oid}/{iid}"] = {}
                for rid, value in resources.items():
                    out[f"/{oid}/{iid}/{rid}"] = _jsonable(value)
        return out


# Marks an absent value in comparisons (distinct from every value).
_MISSING: Final = object()


def _records(path: Path, value: Any) -> list[Record]:
    if isinstance(value, dict):
        return [Record(path.child(riid), v) for riid, v in sorted(value.items())]
    return [Record(path, value)]


def _unique(paths: list[Path]) -> list[Path]:
    return list(dict.fromkeys(paths))
