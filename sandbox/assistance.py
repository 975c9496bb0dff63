"""A local GNSS assistance service: A-GNSS and P-GPS on the AWS topics.

Design
------
Two layers, as in ``sandbox.aws_shadow``, so the encoding can be tested
without a broker:

* The pure part decodes the device's requests (``decode_agnss_request``,
  ``decode_pgps_request``) and builds the answers: ``encode_agnss_response``
  returns the binary A-GNSS messages and ``pgps_response`` the P-GPS JSON
  object (wire.md §7).
* ``AssistanceService`` is an MQTT client of the broker (Mosquitto in tests)
  that plays the nRF Asset Tracker backend's relay (asset_tracker_v2.md
  §16.1 step 4): it subscribes to ``+/agnss/get``, ``+/pgps/get`` and the
  legacy ``+/agps/get``, and answers each valid request on the topic without
  ``/get``.  The AWS backend has no error topic, so an invalid request is
  logged, counted and left unanswered, as a device sees a silent cloud.

The A-GNSS response ("schema v1")
---------------------------------
wire.md §7.1: byte 0 is the schema version ``0x01``, then blocks of
``{type: u8, count: u16 little-endian, count × element}``.  When
ephemerides are requested the response is split: every other type in one
message, the ephemerides in a message of their own, each a complete blob
starting with ``0x01``.

XXX: the spec does not give the packed C structs of
``nrf_cloud_agnss_schema_v1.h``, so the element sizes below are this
simulator's own layout.  They follow the field lists of the nRF Cloud
header as far as we know them, but no real GNSS would accept the bytes:
a test may rely on the framing (version, type, count, size) and never on
the content, which is filler derived from the seed.

=====  ======================  =====  ===========================
type   content                 count  element bytes (our layout)
=====  ======================  =====  ===========================
1      GPS UTC parameters      1      14
2      ephemeris, per SV       32     62 (byte 0 is the SV id)
3      almanac, per SV         32     31 (byte 0 is the SV id)
4      Klobuchar ionosphere    1      8
5      NeQuick ionosphere      1      8
6      GPS time of week        32     3
7      GPS system clock        1      12
8      approximate location    1      15
9      integrity               1      4
=====  ======================  =====  ===========================
"""

from __future__ import annotations

import json
import random
import struct
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeAlias

import attrs
import structlog

from backends.mqtt_transport import (
    MqttMessage,
    MqttSession,
)
from sandbox._service import SandboxService

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence



log = structlog.get_logger(actor="sandbox.assistance")

JsonObject: TypeAlias = dict[str, Any]

SCHEMA_VERSION: Final = 0x01
TYPE_EPHEMERIS: Final = 2
GPS_SATELLITES: Final = 32

ELEMENT_LAYOUT: Final[dict[int, tuple[int, int]]] = {
    1: (1, 14),
    2: (GPS_SATELLITES, 62),
    3: (GPS_SATELLITES, 31),
    4: (1, 8),
    5: (1, 8),
    6: (GPS_SATELLITES, 3),
    7: (1, 12),
    8: (1, 15),
    9: (1, 4),
}
"""Type → (element count, element size in bytes); see the module docstring."""

_PER_SATELLITE: Final = frozenset({2, 3})
"""Types whose elements start with the SV id (1…32)."""

_BLOCK_HEADER: Final = struct.Struct("<BH")

DEFAULT_PGPS_HOST: Final = "pgps.nrfcloud.com"
DEFAULT_PGPS_PATH_TEMPLATE: Final = "public/{day}-{time}_{end_day}-{end_time}.bin"
"""Formatted with the request's start (``day``, ``time``), its end
(``end_day``, ``end_time``), ``n`` and ``int``; wire.md §7.2's example path
is ``public/15131-0_15135-72000.bin``."""

SECONDS_PER_DAY: Final = 86_400

REQUEST_QOS: Final = 1
REPLY_QOS: Final = 1
DEFAULT_CLIENT_ID: Final = "sandbox-assistance"

# Request topic suffix → kind; the reply goes to the topic without "/get".
_REQUEST_KINDS: Final = {"agnss/get": "agnss", "agps/get": "agnss", "pgps/get": "pgps"}

REQUEST_SUBSCRIPTIONS: Final = [
    (f"+/{suffix}", REQUEST_QOS) for suffix in _REQUEST_KINDS
]


class InvalidAssistanceRequest(ValueError):
    """A request the service cannot answer; the message says why."""


# ---------------------------------------------------------------------------
# A-GNSS


@attrs.frozen(kw_only=True)
class AgnssServiceRequest:
    """A decoded ``<id>/agnss/get`` request (wire.md §7.1)."""

    mcc: int
    mnc: int
    area: int
    cell: int
    types: tuple[int, ...]
    phycell: int | None = None


def _block(type_: int, seed: int) -> bytes:
    count, size = ELEMENT_LAYOUT[type_]
    # A string seed is hashed with SHA-512: the same on every run and host.
    rng = random.Random(f"agnss/{seed}/{type_}")
    elements = bytearray()
    for index in range(count):
        element = bytearray(rng.randbytes(size))
        if type_ in _PER_SATELLITE:
            element[0] = index + 1
        elements += element
    return _BLOCK_HEADER.pack(type_, count) + bytes(elements)


def encode_agnss_response(types: Iterable[int], *, seed: int) -> list[bytes]:
    """The binary A-GNSS messages answering a request for ``types``.

    Blocks appear in ascending type order, each type once.  Ephemerides,
    when asked for, come last, in a message of their own.

    Args:
        types: the requested type numbers (1…9), duplicates allowed.
        seed: selects the filler bytes; equal seeds give equal messages.

    Returns:
        One message per part, each starting with ``SCHEMA_VERSION``.

    Raises:
        InvalidAssistanceRequest: an unknown type, or no type at all.
    """
    wanted = sorted(set(types))
    unknown = [t for t in wanted if t not in ELEMENT_LAYOUT]
    if unknown:
        raise InvalidAssistanceRequest(f"unknown A-GNSS types {unknown}")
    if not wanted:
        raise InvalidAssistanceRequest("no A-GNSS type requested")

    header = bytes([SCHEMA_VERSION])
    others = [_block(t, seed) for t in wanted if t != TYPE_EPHEMERIS]
    messages = [header + b"".join(others)] if others else []
    if TYPE_EPHEMERIS in wanted:
        messages.append(header + _block(TYPE_EPHEMERIS, seed))
    return messages


def parse_agnss_response(message: bytes) -> list[tuple[int, list[bytes]]]:
    """Split one schema-v1 message into ``(type, elements)`` blocks.

    Only types of ``ELEMENT_LAYOUT`` can be parsed: the element size is not
    on the wire.

    Raises:
        ValueError: a wrong schema version, an unknown type or a truncated
            block.
    """
    if not message or message[0] != SCHEMA_VERSION:
        raise ValueError(f"not an A-GNSS schema v1 message: {message[:1]!r}")
    blocks: list[tuple[int, list[bytes]]] = []
    offset = 1
    while offset < len(message):
        if offset + _BLOCK_HEADER.size > len(message):
            raise ValueError(f"truncated block header at byte {offset}")
        type_, count = _BLOCK_HEADER.unpack_from(message, offset)
        offset += _BLOCK_HEADER.size
        if type_ not in ELEMENT_LAYOUT:
            raise ValueError(f"unknown A-GNSS type {type_} at byte {offset - 3}")
        size = ELEMENT_LAYOUT[type_][1]
        end = offset + count * size
        if end > len(message):
            raise ValueError(f"block of type {type_} truncated")
        blocks.append(
            (type_, [message[i : i + size] for i in range(offset, end, size)])
        )
        offset = end
    return blocks


def _load_object(data: bytes) -> JsonObject:
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise InvalidAssistanceRequest(f"not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidAssistanceRequest(
            f"a JSON {type(document).__name__}, not an object"
        )
    return document


def _integer(document: JsonObject, key: str, low: int, high: int) -> int:
    if key not in document:
        raise InvalidAssistanceRequest(f"missing {key!r}")
    value = document[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidAssistanceRequest(f"{key} = {value!r}: must be an integer")
    if not low <= value <= high:
        raise InvalidAssistanceRequest(f"{key} = {value}: must be in {low}…{high}")
    return value


def decode_agnss_request(data: bytes) -> AgnssServiceRequest:
    """Decode and validate an A-GNSS request of the AWS backend.

    ``mcc`` (0…999), ``mnc`` (0…999), ``area`` (the 16-bit TAC), ``cell``
    (the 28-bit E-UTRAN cell id) and ``types`` (a non-empty array of
    distinct integers 1…9) are required; ``phycell`` (0…503) is optional.
    Other keys are ignored.

    Raises:
        InvalidAssistanceRequest: naming the first offending key.
    """
    document = _load_object(data)
    mcc = _integer(document, "mcc", 0, 999)
    mnc = _integer(document, "mnc", 0, 999)
    area = _integer(document, "area", 0, 0xFFFF)
    cell = _integer(document, "cell", 0, 0x0FFF_FFFF)
    phycell = None
    if document.get("phycell") is not None:
        phycell = _integer(document, "phycell", 0, 503)

    types = document.get("types")
    if not isinstance(types, list) or not types:
        raise InvalidAssistanceRequest(f"types = {types!r}: must be a non-empty array")
    for value in types:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidAssistanceRequest(f"types holds {value!r}: not an integer")
        if value not in ELEMENT_LAYOUT:
            raise InvalidAssistanceRequest(f"types holds {value}: must be in 1…9")
    if len(set(types)) != len(types):
        raise InvalidAssistanceRequest(f"types = {types}: duplicates")
    return AgnssServiceRequest(
        mcc=mcc, mnc=mnc, area=area, cell=cell, types=tuple(types), phycell=phycell
    )


# ---------------------------------------------------------------------------
# P-GPS


@attrs.frozen(kw_only=True)
class PgpsServiceRequest:
    """A decoded ``<id>/pgps/get`` request (wire.md §7.2)."""

    count: int
    interval_min: int
    day: int
    time: int


def decode_pgps_request(data: bytes) -> PgpsServiceRequest:
    """Decode and validate ``{"n","int","day","time"}``.

    The limits are nRF Cloud's (wire.md §7.2): ``n`` 1…84, ``int`` 120…480
    in steps of 60; ``day`` is a GPS day (0…65535) and ``time`` a second of
    that day.

    Raises:
        InvalidAssistanceRequest: naming the first offending key.
    """
    document = _load_object(data)
    count = _integer(document, "n", 1, 84)
    interval = _integer(document, "int", 120, 480)
    if interval % 60:
        raise InvalidAssistanceRequest(f"int = {interval}: must be a multiple of 60")
    day = _integer(document, "day", 0, 0xFFFF)
    time_of_day = _integer(document, "time", 0, SECONDS_PER_DAY - 1)
    return PgpsServiceRequest(
        count=count, interval_min=interval, day=day, time=time_of_day
    )


def pgps_response(
    request: PgpsServiceRequest,
    host: str = DEFAULT_PGPS_HOST,
    path_template: str = DEFAULT_PGPS_PATH_TEMPLATE,
) -> JsonObject:
    """The AWS backend's answer: ``{"path": …, "host": …}`` (wire.md §7.2).

    The end of the prediction set is the start plus ``n × int`` minutes.
    No file is served: the device would download it over HTTP(S) itself.
    """
    end = request.day * SECONDS_PER_DAY + request.time
    end += request.count * request.interval_min * 60
    path = path_template.format(
        day=request.day,
        time=request.time,
        end_day=end // SECONDS_PER_DAY,
        end_time=end % SECONDS_PER_DAY,
        n=request.count,
        int=request.interval_min,
    )
    return {"path": path, "host": host}


# ---------------------------------------------------------------------------
# The MQTT service


def parse_request_topic(topic: str) -> tuple[str, str, str] | None:
    """``(thing, kind, reply topic)`` of a request topic, or ``None``."""
    thing, _, suffix = topic.partition("/")
    kind = _REQUEST_KINDS.get(suffix)
    if not thing or kind is None:
        return None
    return thing, kind, topic.removesuffix("/get")


@attrs.frozen(kw_only=True)
class Served:
    """One answered request: what was asked and what was published."""

    thing: str
    topic: str
    request: AgnssServiceRequest | PgpsServiceRequest
    replies: tuple[bytes, ...]


@attrs.define(eq=False)
class AssistanceService(SandboxService):
    """A-GNSS and P-GPS relay as an MQTT client of a broker.

    ``served`` lists the answered requests in order; ``counters`` has
    ``served`` and ``rejected`` per kind (``agnss``, ``pgps``).  Every
    A-GNSS answer uses ``seed``, so equal requests get equal bytes.
    """

    name: ClassVar[str] = "assistance"
    subscriptions: ClassVar[Sequence[tuple[str, int]]] = REQUEST_SUBSCRIPTIONS

    seed: int = 0
    pgps_host: str = DEFAULT_PGPS_HOST
    pgps_path_template: str = DEFAULT_PGPS_PATH_TEMPLATE
    served: list[Served] = attrs.field(factory=list, init=False)
    counters: dict[str, int] = attrs.field(
        factory=lambda: {
            "agnss_served": 0,
            "agnss_rejected": 0,
            "pgps_served": 0,
            "pgps_rejected": 0,
        },
        init=False,
    )

    def answer(self, kind: str, payload: bytes) -> tuple[Any, list[bytes]]:
        """Decode a request of ``kind`` and build its reply payloads.

        Raises:
            InvalidAssistanceRequest: the request is invalid.
        """
        if kind == "agnss":
            agnss = decode_agnss_request(payload)
            return agnss, encode_agnss_response(agnss.types, seed=self.seed)
        pgps = decode_pgps_request(payload)
        document = pgps_response(pgps, self.pgps_host, self.pgps_path_template)
        return pgps, [json.dumps(document, separators=(",", ":")).encode()]

    async def _on_message(self, session: MqttSession, message: MqttMessage) -> None:
        await self._handle(session, message.topic, message.payload)

    async def _handle(self, session: MqttSession, topic: str, payload: bytes) -> None:
        parsed = parse_request_topic(topic)
        if parsed is None:
            log.warning("assistance_unexpected_topic", topic=topic)
            return
        thing, kind, reply_topic = parsed
        try:
            request, replies = self.answer(kind, payload)
        except InvalidAssistanceRequest as exc:
            self.counters[f"{kind}_rejected"] += 1
            log.warning(
                "assistance_request_rejected", thing=thing, topic=topic, reason=str(exc)
            )
            return

        for reply in replies:
            await session.publish(reply_topic, reply, REPLY_QOS)
        self.counters[f"{kind}_served"] += 1
        self.served.append(
            Served(thing=thing, topic=topic, request=request, replies=tuple(replies))
        )
        log.info(
            "assistance_served",
            thing=thing,
            topic=reply_topic,
            messages=len(replies),
            size=sum(map(len, replies)),
        )
