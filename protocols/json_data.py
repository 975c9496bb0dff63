"""Data payloads of the JSON clouds (AWS IoT and Azure IoT Hub).

Both clouds share the firmware's ``json_common.c`` encoders; this module
builds the same documents, byte for byte where wire.md says it matters.

Serialisation (wire.md §1.4), as cJSON's ``PrintUnformatted``:

* No whitespace; object keys in insertion order; strings escaped as JSON,
  non-ASCII text left as raw UTF-8 (cJSON escapes only ``"``, ``\\`` and
  control characters).
* A double equal to its saturating int32 value prints as an integer
  (``4.0`` -> ``4``, ``-0.0`` -> ``0``).  Any other double prints with
  ``%1.15g``, or ``%1.17g`` when the 15-digit text does not read back
  within a relative DBL_EPSILON (cJSON's ``compare_double``).
* Python ``int`` values print as plain decimal integers.  The firmware
  passes its ``int64`` millisecond timestamps through a double and
  ``%1.15g``, which gives the same digits for every integer below 10**15
  (ms timestamps until the year 33658); beyond that cJSON would switch to
  exponent notation and we deliberately do not.
* NaN and infinities print as ``null``, as cJSON does.
* GNSS ``acc``, ``alt``, ``spd`` and ``hdg`` come from ``float`` fields of
  the modem's PVT frame and are rounded to float32 before printing
  (``24.798573`` goes out as ``24.7985725402832``).  ``lat``/``lng`` and
  every other value are doubles in the firmware and print unrounded.

XXX: wire.md §1.4 gives float32 0.1 as ``0.100000001490116``, but under
the rule it states (cJSON's relative DBL_EPSILON check) that text reads
back about 9 ulp away, so cJSON prints ``0.10000000149011612``.  We follow
the rule, which is what cJSON's source does; the example is marked [inf].

Documents:

* A sample is ``{"v": <value>, "ts": <UNIX ms>}``; the inner key orders
  are those of wire.md §1.7.  Timestamps must already be UNIX time: the
  data module converts uptime before encoding (wire.md §1.3).
* Regular update (wire.md §2.3, §3.2): keys ``btn, impact, dev, roam,
  gnss, env, bat``, each present only when there is a sample; wrapped in
  ``{"state":{"reported":...}}`` for AWS, flat for Azure.
* Batch (wire.md §2.4): an object of arrays in the order ``dev, roam,
  gnss, env, btn, impact, bat`` -- not the regular update's order, the
  firmware's batch encoder adds the buffers in this order; empty arrays
  are left out.  Identical for both clouds.
* Messages (wire.md §2.2): ``{"btn":{...}}`` or ``{"impact":{...}}``.
* Cloud location (wire.md §2.5): ``{"lte":{...,"nmr":[...]},"wifi":{...}}``
  with only the parts that are present.
"""

from __future__ import annotations

import json
import math
import re
import struct
import sys
from collections.abc import Iterable, Sequence
from typing import Any, Final

import attrs

from protocols.codec import NothingToSend
from protocols.json_codec import Flavour
from protocols.modem import ModemDynamicData, ModemStaticData
from protocols.peripherals import (
    CellMeasurement,
    CloudLocationRequest,
    EnvironmentalData,
    GnssData,
)

INT32_MIN: Final = -(2**31)
INT32_MAX: Final = 2**31 - 1

# The firmware leaves out the heading when the receiver's heading accuracy
# is this many degrees or worse (wire.md §1.7).
HEADING_ACCURACY_LIMIT: Final = 60.0

# NRF_CLOUD_LOCATION_WIFI_AP_CNT_MIN: fewer access points than this are
# useless to the location service, so the firmware sends no "wifi" part
# (wire.md §2.5 gives the value 2).
WIFI_AP_COUNT_MIN: Final = 2

_MAC_SEPARATORS: Final = re.compile(r"[:\-]")
_MAC: Final = re.compile(r"[0-9a-f]{12}")
_DIGITS: Final = re.compile(r"[0-9]+")


@attrs.frozen
class Battery:
    """A battery sample: state of charge in percent, UNIX ms."""

    level: int
    timestamp: int


@attrs.frozen
class Button:
    """A button press: the button's number (1 or 2), UNIX ms."""

    number: int
    timestamp: int


@attrs.frozen
class Impact:
    """An impact of ``magnitude`` G, UNIX ms."""

    magnitude: float
    timestamp: int


# --------------------------------------------------------------------------
# Serialisation


def to_float32(value: float) -> float:
    """Round ``value`` to the nearest float32, as a C ``float`` field holds it.

    Raises:
      OverflowError: ``value`` is finite but beyond the float32 range.
    """
    result: float = struct.unpack("<f", struct.pack("<f", value))[0]
    return result


def _reads_back(text: str, value: float) -> bool:
    """cJSON's ``compare_double``: equal within a relative DBL_EPSILON."""
    parsed = float(text)
    largest = max(abs(parsed), abs(value))
    return abs(parsed - value) <= largest * sys.float_info.epsilon


def cjson_number(value: float) -> str:
    """Print a number as cJSON's ``print_number`` does (wire.md §1.4)."""
    if isinstance(value, int):
        # Covers bool too: cJSON stores true as the number 1.
        return str(int(value))
    if math.isnan(value) or math.isinf(value):
        return "null"
    # valueint saturates at the int32 limits, so only doubles inside the
    # int32 range can compare equal to it.
    if value.is_integer() and INT32_MIN <= value <= INT32_MAX:
        return str(int(value))
    # printf formats, as cJSON writes them (print_number).
    text = "%1.15g" % value  # noqa: UP031
    if not _reads_back(text, value):
        text = "%1.17g" % value  # noqa: UP031
    return text


def _print(node: object, out: list[str]) -> None:
    if node is None:
        out.append("null")
    elif node is True:
        out.append("true")
    elif node is False:
        out.append("false")
    elif isinstance(node, int | float):
        out.append(cjson_number(node))
    elif isinstance(node, str):
        out.append(json.dumps(node, ensure_ascii=False))
    elif isinstance(node, dict):
        out.append("{")
        for index, (key, child) in enumerate(node.items()):
            if not isinstance(key, str):
                raise TypeError(f"object key {key!r} is not a string")
            if index:
                out.append(",")
            out.append(json.dumps(key, ensure_ascii=False))
            out.append(":")
            _print(child, out)
        out.append("}")
    elif isinstance(node, list | tuple):
        out.append("[")
        for index, child in enumerate(node):
            if index:
                out.append(",")
            _print(child, out)
        out.append("]")
    else:
        raise TypeError(f"{type(node).__name__} is not JSON serialisable")


def dumps_cjson(document: object) -> bytes:
    """Serialise like cJSON's ``PrintUnformatted`` (wire.md §1.4).

    Raises:
      TypeError: the document holds something JSON cannot express.
    """
    out: list[str] = []
    _print(document, out)
    return "".join(out).encode("utf-8")


# --------------------------------------------------------------------------
# Samples


def _sample(value: Any, timestamp: int) -> dict[str, Any]:
    return {"v": value, "ts": timestamp}


def _parse_mccmnc(mccmnc: str) -> int:
    """The operator code as a number, as the firmware's ``strtoul`` check."""
    if not _DIGITS.fullmatch(mccmnc):
        raise ValueError(f"mccmnc {mccmnc!r} is not a decimal number")
    return int(mccmnc)


def encode_dev(data: ModemStaticData) -> dict[str, Any]:
    """The ``dev`` sample: static modem and device information."""
    value = {
        "imei": data.imei,
        "iccid": data.iccid,
        "modV": data.modem_fw,
        "brdV": data.board_version,
        "appV": data.app_version,
    }
    return _sample(value, data.timestamp)


def encode_roam(data: ModemDynamicData) -> dict[str, Any]:
    """The ``roam`` sample: the network the device is attached to.

    Raises:
      ValueError: ``mccmnc`` is not a decimal number (firmware: -ENOTEMPTY).
    """
    value = {
        "band": data.band,
        "nw": data.network_mode.value,
        "rsrp": data.rsrp,
        "area": data.area_code,
        "mccmnc": _parse_mccmnc(data.mccmnc),
        "cell": data.cell_id,
        "ip": data.ip_address,
    }
    return _sample(value, data.timestamp)


def encode_gnss(data: GnssData, *, float32: bool = True) -> dict[str, Any]:
    """The ``gnss`` sample; ``hdg`` only when the heading is accurate.

    Args:
      data: the fix.
      float32: round acc/alt/spd/hdg to float32 first, as the firmware's
        ``float`` fields do.  ``False`` prints the values as given, which
        only hand-written documentation examples need.
    """
    pvt = data.pvt
    narrow = to_float32 if float32 else float
    value = {
        "lat": pvt.latitude,
        "lng": pvt.longitude,
        "acc": narrow(pvt.accuracy),
        "alt": narrow(pvt.altitude),
        "spd": narrow(pvt.speed),
    }
    if pvt.heading_accuracy < HEADING_ACCURACY_LIMIT:
        value["hdg"] = narrow(pvt.heading)
    return _sample(value, data.timestamp)


def encode_env(data: EnvironmentalData) -> dict[str, Any]:
    """The ``env`` sample; ``bsec_iaq`` only when the sensor provides it."""
    value: dict[str, Any] = {
        "temp": data.temperature,
        "hum": data.humidity,
        "atmp": data.pressure,
    }
    if data.bsec_air_quality >= 0:
        value["bsec_iaq"] = data.bsec_air_quality
    return _sample(value, data.timestamp)


def encode_bat(data: Battery) -> dict[str, Any]:
    """The ``bat`` sample: state of charge in percent."""
    return _sample(data.level, data.timestamp)


def encode_btn(data: Button) -> dict[str, Any]:
    """The ``btn`` sample: the number of the button pressed."""
    return _sample(data.number, data.timestamp)


def encode_impact(data: Impact) -> dict[str, Any]:
    """The ``impact`` sample: the magnitude in G."""
    return _sample(data.magnitude, data.timestamp)


# --------------------------------------------------------------------------
# Documents


def encode_regular(
    flavour: Flavour,
    *,
    btn: Button | None = None,
    impact: Impact | None = None,
    dev: ModemStaticData | None = None,
    roam: ModemDynamicData | None = None,
    gnss: GnssData | None = None,
    env: EnvironmentalData | None = None,
    bat: Battery | None = None,
    float32: bool = True,
) -> bytes:
    """The regular update: the newest sample of each buffer.

    AWS wraps it in ``{"state":{"reported":...}}`` for the shadow; Azure
    sends the reported properties flat (wire.md §2.3, §3.2).

    Raises:
      NothingToSend: every sample is ``None``.
      ValueError: the ``roam`` sample's mccmnc is not a number.
    """
    reported: dict[str, Any] = {}
    if btn is not None:
        reported["btn"] = encode_btn(btn)
    if impact is not None:
        reported["impact"] = encode_impact(impact)
    if dev is not None:
        reported["dev"] = encode_dev(dev)
    if roam is not None:
        reported["roam"] = encode_roam(roam)
    if gnss is not None:
        reported["gnss"] = encode_gnss(gnss, float32=float32)
    if env is not None:
        reported["env"] = encode_env(env)
    if bat is not None:
        reported["bat"] = encode_bat(bat)
    if not reported:
        raise NothingToSend("no sample for the regular update")

    if flavour is Flavour.AWS:
        return dumps_cjson({"state": {"reported": reported}})
    return dumps_cjson(reported)


def encode_batch(
    *,
    dev: Iterable[ModemStaticData] = (),
    roam: Iterable[ModemDynamicData] = (),
    gnss: Iterable[GnssData] = (),
    env: Iterable[EnvironmentalData] = (),
    btn: Iterable[Button] = (),
    impact: Iterable[Impact] = (),
    bat: Iterable[Battery] = (),
    float32: bool = True,
) -> bytes:
    """The batch: every older sample still queued, the same for both clouds.

    The key order is the firmware's batch order (wire.md §2.4), which is
    not the regular update's; empty arrays are left out.

    Raises:
      NothingToSend: every list is empty.
      ValueError: a ``roam`` sample's mccmnc is not a number.
    """
    arrays: dict[str, list[dict[str, Any]]] = {
        "dev": [encode_dev(sample) for sample in dev],
        "roam": [encode_roam(sample) for sample in roam],
        "gnss": [encode_gnss(sample, float32=float32) for sample in gnss],
        "env": [encode_env(sample) for sample in env],
        "btn": [encode_btn(sample) for sample in btn],
        "impact": [encode_impact(sample) for sample in impact],
        "bat": [encode_bat(sample) for sample in bat],
    }
    document = {key: samples for key, samples in arrays.items() if samples}
    if not document:
        raise NothingToSend("no sample for the batch")
    return dumps_cjson(document)


def encode_ui_message(
    button: Button | None = None, impact: Impact | None = None
) -> bytes:
    """A button or impact message for ``<id>/messages`` (wire.md §2.2).

    Raises:
      NothingToSend: neither is given.
      ValueError: both are given; the firmware sends one per message.
    """
    if button is not None and impact is not None:
        raise ValueError("a message carries a button press or an impact, not both")
    if button is not None:
        return dumps_cjson({"btn": encode_btn(button)})
    if impact is not None:
        return dumps_cjson({"impact": encode_impact(impact)})
    raise NothingToSend("no button press or impact for the message")


def encode_lte(cells: CellMeasurement, timestamp: int) -> dict[str, Any]:
    """The ``lte`` part of a cloud location request.

    ``cell`` is the serving cell's E-CI, a neighbour's ``cell`` its
    physical cell id; ``nmr`` only when neighbours were measured.
    """
    lte: dict[str, Any] = {
        "mcc": cells.mcc,
        "mnc": cells.mnc,
        "cell": cells.cell_id,
        "area": cells.tac,
        "earfcn": cells.earfcn,
        "adv": cells.timing_advance,
        "rsrp": cells.rsrp,
        "rsrq": cells.rsrq,
        "ts": timestamp,
    }
    if cells.neighbors:
        lte["nmr"] = [
            {
                "earfcn": neighbor.earfcn,
                "cell": neighbor.physical_cell_id,
                "rsrp": neighbor.rsrp,
                "rsrq": neighbor.rsrq,
            }
            for neighbor in cells.neighbors
        ]
    return lte


def _normalise_mac(mac: str) -> str:
    text = _MAC_SEPARATORS.sub("", mac).lower()
    if not _MAC.fullmatch(text):
        raise ValueError(f"access point {mac!r} is not a 48-bit MAC address")
    return text


def encode_wifi(access_points: Sequence[str], timestamp: int) -> dict[str, Any]:
    """The ``wifi`` part of a cloud location request.

    MACs go out as 12 lower-case hex digits; ``aa:BB:cc:...`` is accepted.

    Raises:
      ValueError: an access point is not a MAC address.
    """
    aps = [_normalise_mac(mac) for mac in access_points]
    return {"ts": timestamp, "aps": aps}


def encode_cloud_location(request: CloudLocationRequest) -> bytes:
    """The ground-fix request: cells and Wi-Fi APs (wire.md §2.5).

    Both parts carry the request's timestamp, as the firmware keeps one
    timestamp per request.  ``wifi`` is left out with fewer than
    ``WIFI_AP_COUNT_MIN`` access points.

    Raises:
      NothingToSend: no cells and too few access points.
      ValueError: an access point is not a MAC address.
    """
    document: dict[str, Any] = {}
    if request.cells is not None:
        document["lte"] = encode_lte(request.cells, request.timestamp)
    if len(request.wifi_access_points) >= WIFI_AP_COUNT_MIN:
        document["wifi"] = encode_wifi(request.wifi_access_points, request.timestamp)
    if not document:
        raise NothingToSend("no cells and too few Wi-Fi access points")
    return dumps_cjson(document)
