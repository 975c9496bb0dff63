"""The JSON codec shared by AWS IoT and Azure IoT Hub (``json_common.c``).

This module holds what every JSON cloud agrees on: the configuration
document (``cfg``), the A-GNSS and P-GPS requests.  Where the two clouds
differ (where ``cfg`` sits in a received document, the duplicate filter) the
codec takes a ``flavour``.

Decoding is strict about types, unlike the firmware: a key with a value of
the wrong type makes the whole document invalid, so a configuration is never
half applied; the error names the key and the value.
"""

from __future__ import annotations

import enum
import json
import math
from typing import Any, Final

import attrs

from protocols.base import Payload
from protocols.codec import (
    CloudCodec,
    ConfigDuplicate,
    ConfigEmpty,
    ConfigInvalid,
    NotAConfigDocument,
    NothingToSend,
)
from protocols.config import DeviceConfig, NoData
from protocols.modem import ModemDynamicData
from protocols.peripherals import AgnssRequest, PgpsRequest

# nrf_modem_gnss.h: bits of nrf_modem_gnss_agnss_data_frame.data_flags.
AGNSS_GPS_UTC_REQUEST: Final = 0x01
AGNSS_KLOBUCHAR_REQUEST: Final = 0x02
AGNSS_NEQUICK_REQUEST: Final = 0x04
AGNSS_SYS_TIME_AND_SV_TOW_REQUEST: Final = 0x08
AGNSS_POSITION_REQUEST: Final = 0x10
AGNSS_INTEGRITY_REQUEST: Final = 0x20

# The type numbers of an A-GNSS request (nRF Cloud A-GNSS schema).
TYPE_GPS_UTC: Final = 1
TYPE_EPHEMERIS: Final = 2
TYPE_ALMANAC: Final = 3
TYPE_KLOBUCHAR: Final = 4
TYPE_NEQUICK: Final = 5
TYPE_GPS_TOW: Final = 6
TYPE_GPS_SYSTEM_CLOCK: Final = 7
TYPE_LOCATION: Final = 8
TYPE_INTEGRITY: Final = 9

INT32_MIN: Final = -(2**31)
INT32_MAX: Final = 2**31 - 1

# The reported cfg's key order (cloud_codec encode order).
_INT_KEYS: Final = {
    "loct": "location_timeout",
    "actwt": "active_wait_timeout",
    "mvres": "movement_resolution",
    "mvt": "movement_timeout",
}
_FLOAT_KEYS: Final = {
    "accath": "accelerometer_activity_threshold",
    "accith": "accelerometer_inactivity_threshold",
    "accito": "accelerometer_inactivity_timeout",
}
_NOD_NAMES: Final = {"gnss": "gnss", "ncell": "neighbor_cell", "wifi": "wifi"}


class Flavour(enum.Enum):
    """Which cloud's document layout the codec reads."""

    AWS = "aws"
    AZURE = "azure"


def _number(value: float) -> int | float:
    """Print integral values as integers, as cJSON does (``4``, not ``4.0``)."""
    if math.isfinite(value) and value == int(value) and abs(value) < 2**31:
        return int(value)
    return value


def encode_config(config: DeviceConfig) -> dict[str, Any]:
    """The complete ``cfg`` object, keys in the firmware's order."""
    return {
        "act": config.active_mode,
        "loct": config.location_timeout,
        "actwt": config.active_wait_timeout,
        "mvres": config.movement_resolution,
        "mvt": config.movement_timeout,
        "accath": _number(config.accelerometer_activity_threshold),
        "accith": _number(config.accelerometer_inactivity_threshold),
        "accito": _number(config.accelerometer_inactivity_timeout),
        "nod": [
            name
            for name, field in _NOD_NAMES.items()
            if getattr(config.no_data, field)
        ],
    }


def dumps(document: object) -> bytes:
    """Serialise like cJSON's ``PrintUnformatted``: no whitespace."""
    return json.dumps(document, separators=(",", ":"), allow_nan=False).encode()


def apply_cfg(cfg: dict[str, Any], current: DeviceConfig) -> DeviceConfig:
    """Apply the keys present in ``cfg`` onto ``current``.

    Raises:
      ConfigInvalid: a key holds a value of the wrong type.
    """
    changes: dict[str, Any] = {}
    if "act" in cfg:
        value = cfg["act"]
        # The firmware reads ``act`` as integer truthiness; JSON booleans
        # and integers are both accepted, nothing else.
        if not isinstance(value, bool | int):
            raise ConfigInvalid(f"cfg.act = {value!r}: must be a boolean")
        changes["active_mode"] = bool(value)
    # Integers are read as integers (JSON numbers truncated), the
    # accelerometer settings as doubles.
    numeric = [(key, field, int) for key, field in _INT_KEYS.items()]
    numeric += [(key, field, float) for key, field in _FLOAT_KEYS.items()]
    for key, field, convert in numeric:
        if key in cfg:
            value = cfg[key]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigInvalid(f"cfg.{key} = {value!r}: must be a number")
            try:
                finite = math.isfinite(value)
            except OverflowError:  # an integer beyond any double
                raise ConfigInvalid(
                    f"cfg.{key} = {_short(value)}: out of range"
                ) from None
            if not finite:
                raise ConfigInvalid(f"cfg.{key} = {_short(value)}: must be finite")
            # The firmware's fields are 32-bit ints (seconds).
            if convert is int and not INT32_MIN <= value <= INT32_MAX:
                raise ConfigInvalid(
                    f"cfg.{key} = {_short(value)}: must fit in a 32-bit integer"
                )
            changes[field] = convert(value)
    if "nod" in cfg:
        nod = cfg["nod"]
        if not isinstance(nod, list) or not all(isinstance(n, str) for n in nod):
            raise ConfigInvalid(f"cfg.nod = {nod!r}: must be an array of strings")
        # nod replaces the whole set; unknown names are ignored.
        changes["no_data"] = NoData(
            **{field: name in nod for name, field in _NOD_NAMES.items()}
        )
    return attrs.evolve(current, **changes)


@attrs.define(eq=False)
class JsonCodec(CloudCodec):
    """Configuration and assistance documents of AWS IoT and Azure IoT Hub."""

    flavour: Flavour = Flavour.AWS
    # The last shadow version applied (AWS duplicate filter).
    last_version: int | None = None

    def decode_config(self, data: bytes, current: DeviceConfig) -> DeviceConfig:
        """Apply a shadow or twin document to ``current`` (see ``CloudCodec``)."""
        try:
            document = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise NotAConfigDocument(f"not JSON: {exc}") from None
        except RecursionError:
            raise NotAConfigDocument("not JSON: nested too deeply") from None
        if not isinstance(document, dict):
            raise NotAConfigDocument(
                f"a JSON {type(document).__name__}, not an object"
            )
        if self.flavour is Flavour.AWS:
            version = document.get("version")
            if isinstance(version, int) and not isinstance(version, bool):
                if self.last_version is not None and version <= self.last_version:
                    raise ConfigDuplicate(
                        f"version {version} <= last seen {self.last_version}"
                    )
                self.last_version = version
            cfg = document.get("cfg", _dig(document, "state", "cfg"))
        else:
            cfg = document.get("cfg", _dig(document, "desired", "cfg"))
        if cfg is None:
            raise ConfigEmpty("no cfg object in the document")
        if not isinstance(cfg, dict):
            raise ConfigInvalid(f"cfg = {cfg!r}: must be an object")
        return apply_cfg(cfg, current)

    def encode_config_report(self, config: DeviceConfig) -> Payload:
        """AWS: ``{"state":{"reported":{"cfg":…}}}``; Azure: ``{"cfg":…}``."""
        cfg = {"cfg": encode_config(config)}
        if self.flavour is Flavour.AWS:
            return Payload(dumps({"state": {"reported": cfg}}))
        return Payload(dumps(cfg))

    def encode_agnss_request(
        self, request: AgnssRequest, network: ModemDynamicData | None
    ) -> Payload:
        """``{"mcc","mnc","area","cell","types":[...]}`` (wire.md §7.1)."""
        flags = request.data_flags
        types = [
            number
            for number, wanted in (
                (TYPE_GPS_UTC, flags & AGNSS_GPS_UTC_REQUEST),
                (TYPE_EPHEMERIS, request.sv_mask_ephe),
                (TYPE_ALMANAC, request.sv_mask_alm),
                (TYPE_KLOBUCHAR, flags & AGNSS_KLOBUCHAR_REQUEST),
                (TYPE_NEQUICK, flags & AGNSS_NEQUICK_REQUEST),
                (TYPE_GPS_TOW, flags & AGNSS_SYS_TIME_AND_SV_TOW_REQUEST),
                (TYPE_GPS_SYSTEM_CLOCK, flags & AGNSS_SYS_TIME_AND_SV_TOW_REQUEST),
                (TYPE_LOCATION, flags & AGNSS_POSITION_REQUEST),
                (TYPE_INTEGRITY, flags & AGNSS_INTEGRITY_REQUEST),
            )
            if wanted
        ]
        if not types:
            raise NothingToSend("the A-GNSS request asks for nothing")
        if network is None:
            raise NothingToSend("no network information for the A-GNSS request")
        return Payload(
            dumps(
                {
                    "mcc": network.mcc,
                    "mnc": network.mnc,
                    "area": network.area_code,
                    "cell": network.cell_id,
                    "types": types,
                }
            )
        )

    def encode_pgps_request(self, request: PgpsRequest) -> Payload:
        """``{"n","int","day","time"}`` (wire.md §7.2)."""
        return Payload(
            dumps(
                {
                    "n": request.prediction_count,
                    "int": request.prediction_period_min,
                    "day": request.gps_day,
                    "time": request.gps_time_of_day,
                }
            )
        )


def _short(value: object, limit: int = 40) -> str:
    """``repr(value)``, cut short: a hostile number can be huge."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def _dig(document: dict[str, Any], *keys: str) -> Any:
    node: Any = document
    for key in keys:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node
