"""LwM2M 1.1 content formats: SenML CBOR/JSON, OMA TLV, text, CBOR, link format.

Pure functions from records to bytes and back; no networking and no object
model (``protocols.lwm2m_objects`` holds that).  Both the device side (the
LwM2M client backend) and the local LwM2M server use this module.

Design note:

* Every content is a flat list of :class:`Record` -- a resource or resource
  instance path, a value and an optional absolute time.  Object, instance and
  multiple-resource nesting (TLV containers, SenML base names) is rebuilt from
  the paths when encoding and flattened again when decoding, so the object
  store and the server only ever deal with one shape.
* Values carry their kind in their Python type: ``bool``, ``int``, ``float``,
  ``str``, ``bytes`` or :class:`ObjLink`.  SenML says the kind on the wire
  (``v``/``vs``/``vb``/``vd``/``vlo``); TLV and text do not, so their
  decoders take the resource type from the caller (``type_of``).
* Decoders are strict and total: whatever the bytes, they return records or
  raise :class:`FormatError`, whose message names the problem and the byte
  offset or record index.  A FormatError is answered with CoAP 4.00.
* Encoders produce the forms the LwM2M specification shows: SenML with a base
  name per object instance (``"bn":"/3/0/"``, ``"n":"0"``), TLV with the
  shortest id, length and integer fields.

Known shortcomings:

* OMA-JSON (11543) is not implemented (the firmware disables it):
  :func:`encode` and :func:`decode` raise UnsupportedContentFormat.
* Records cannot express an empty multiple resource, so TLV encodes one as
  nothing at all rather than an empty Multiple Resource TLV; a server reading
  such a resource sees an empty payload.
* SenML CBOR writes every float as a 64-bit double (cbor2's default), up to
  4 bytes more per value than the shortest exact form.
"""

from __future__ import annotations

import base64
import binascii
import enum
import io
import json
import math
import re
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, TypeAlias

import attrs
import cbor2

# --------------------------------------------------------------------------
# Content formats and resource types


class ContentFormat(enum.IntEnum):
    """CoAP Content-Format numbers that LwM2M 1.1 uses."""

    TEXT = 0
    LINK_FORMAT = 40
    OPAQUE = 42
    CBOR = 60
    SENML_JSON = 110
    SENML_CBOR = 112
    TLV = 11542
    LWM2M_JSON = 11543


class ResourceType(enum.Enum):
    """The data types of LwM2M resources (TS Core appendix C)."""

    STRING = "String"
    INTEGER = "Integer"
    UNSIGNED = "Unsigned Integer"
    FLOAT = "Float"
    BOOLEAN = "Boolean"
    OPAQUE = "Opaque"
    TIME = "Time"
    OBJLNK = "Objlnk"
    CORELNK = "Corelnk"
    # Execute-only resources carry no value.
    NONE = "none"


class FormatError(ValueError):
    """Content that cannot be encoded or decoded (CoAP 4.00 Bad Request)."""


class UnsupportedContentFormat(Exception):
    """A content format this module does not implement (CoAP 4.15/4.06)."""


# The largest object, instance, resource and resource instance id (16 bits).
ID_MAX: Final = 65535
# The signed 64-bit range of LwM2M Integer and Time values.
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
# The largest LwM2M Unsigned Integer (64 bits).
UINT64_MAX: Final = 2**64 - 1
# RFC 8428 4.5.3: SenML times below 2**28 are relative to "now".
SENML_RELATIVE_TIME_LIMIT: Final = 2**28
# The highest SenML version (bver) this module understands (RFC 8428).
SENML_VERSION: Final = 10


# --------------------------------------------------------------------------
# Paths, values and records


def _check_id(value: object, what: str) -> int:
    if type(value) is not int or not 0 <= value <= ID_MAX:
        raise FormatError(f"{what} {value!r}: must be an integer 0..{ID_MAX}")
    return value


def _check_optional_id(value: object, what: str) -> int | None:
    return None if value is None else _check_id(value, what)


def _object_id(value: object) -> int:
    return _check_id(value, "object id")


def _instance_id(value: object) -> int | None:
    return _check_optional_id(value, "instance id")


def _resource_id(value: object) -> int | None:
    return _check_optional_id(value, "resource id")


def _resource_instance_id(value: object) -> int | None:
    return _check_optional_id(value, "resource instance id")


def _objlnk_object(value: object) -> int:
    return _check_id(value, "objlnk object")


def _objlnk_instance(value: object) -> int:
    return _check_id(value, "objlnk instance")


@attrs.frozen(repr=False)
class Path:
    """An LwM2M path: object, instance, resource, resource instance.

    Only a prefix of the four ids may be set (``/3``, ``/3/0``, ``/3/0/7``,
    ``/3/0/7/1``).  Sort paths with ``key=Path.sort_key`` (numeric, id by
    id, a parent before its children).
    """

    object_id: int = attrs.field(converter=_object_id)
    instance: int | None = attrs.field(default=None, converter=_instance_id)
    resource: int | None = attrs.field(default=None, converter=_resource_id)
    resource_instance: int | None = attrs.field(
        default=None, converter=_resource_instance_id
    )

    def __attrs_post_init__(self) -> None:
        ids = self.ids
        if len(ids) != self._set_count():
            raise FormatError(f"path {ids!r}: ids must be set left to right")

    def _set_count(self) -> int:
        return sum(
            x is not None
            for x in (
                self.object_id,
                self.instance,
                self.resource,
                self.resource_instance,
            )
        )

    @property
    def ids(self) -> tuple[int, ...]:
        """The ids that are set, left to right."""
        out: list[int] = []
        for x in (self.object_id, self.instance, self.resource, self.resource_instance):
            if x is None:
                break
            out.append(x)
        return tuple(out)

    def sort_key(self) -> tuple[int, ...]:
        """The key that sorts paths numerically, parents first."""
        return self.ids

    @property
    def level(self) -> int:
        """1 object, 2 instance, 3 resource, 4 resource instance."""
        return len(self.ids)

    @classmethod
    def from_ids(cls, ids: Sequence[int]) -> Path:
        """The path of 1 to 4 ids."""
        if not 1 <= len(ids) <= 4:
            raise FormatError(f"path {list(ids)!r}: must have 1 to 4 ids")
        return cls(*ids)

    @classmethod
    def parse(cls, text: str) -> Path:
        """Parse ``/3/0/1``; raises FormatError on anything else."""
        if not isinstance(text, str):
            raise FormatError(f"path {text!r}: must be a string")
        if not _PATH_RE.fullmatch(text):
            raise FormatError(
                f"path {text!r}: must be /object[/instance[/resource"
                "[/resource instance]]] with decimal ids"
            )
        try:
            return cls.from_ids([int(part) for part in text[1:].split("/")])
        except FormatError as exc:
            raise FormatError(f"path {text!r}: {exc}") from None

    def contains(self, other: Path) -> bool:
        """Whether ``other`` is this path or lies below it."""
        mine = self.ids
        return other.ids[: len(mine)] == mine

    def parent(self) -> Path:
        """The path one level up (an object path has no parent)."""
        if self.level == 1:
            raise FormatError(f"path {self}: an object path has no parent")
        return Path.from_ids(self.ids[:-1])

    def child(self, child_id: int) -> Path:
        """The path one level down."""
        return Path.from_ids((*self.ids, child_id))

    def __str__(self) -> str:
        return "/" + "/".join(str(x) for x in self.ids)

    def __repr__(self) -> str:
        return f"Path({str(self)!r})"


# One to four decimal ids without leading zeros (other than "0" itself).
_PATH_RE: Final = re.compile(r"(/(0|[1-9][0-9]{0,4})){1,4}")


@attrs.frozen(order=True)
class ObjLink:
    """An object link value (``object_id:instance``)."""

    object_id: int = attrs.field(converter=_objlnk_object)
    instance: int = attrs.field(converter=_objlnk_instance)

    @classmethod
    def parse(cls, text: str) -> ObjLink:
        """Parse ``"3:0"``."""
        match = _OBJLNK_RE.fullmatch(text)
        if not match:
            raise FormatError(f"objlnk {text!r}: must be <object>:<instance>")
        return cls(int(match[1]), int(match[2]))

    def __str__(self) -> str:
        return f"{self.object_id}:{self.instance}"


# Two decimal 16-bit ids separated by a colon.
_OBJLNK_RE: Final = re.compile(r"([0-9]{1,5}):([0-9]{1,5})")

Value: TypeAlias = bool | int | float | str | bytes | ObjLink


def _check_value(value: object) -> Value:
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if type(value) is int and not INT64_MIN <= value <= UINT64_MAX:
        raise FormatError(f"value {value!r}: outside the 64-bit range")
    if not isinstance(value, bool | int | float | str | bytes | ObjLink):
        raise FormatError(f"value {value!r}: not an LwM2M value")
    return value


def _check_record_path(path: Path) -> Path:
    if not isinstance(path, Path) or path.level < 3:
        raise FormatError(f"record path {path}: must be a resource path")
    return path


def _check_time(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FormatError(f"time {value!r}: must be a number")
    if not math.isfinite(value):
        raise FormatError(f"time {value!r}: must be finite")
    return value


@attrs.frozen
class Record:
    """One resource (instance) value, with an optional absolute time in s."""

    path: Path = attrs.field(converter=_check_record_path)
    value: Value = attrs.field(converter=_check_value)
    time: float | None = attrs.field(default=None, converter=_check_time)


# --------------------------------------------------------------------------
# SenML (RFC 8428) in CBOR and JSON

# SenML labels and their CBOR integer keys (RFC 8428 6, LwM2M vlo).
_SENML_LABELS: Final = {
    "bver": -1,
    "bn": -2,
    "bt": -3,
    "bu": -4,
    "bv": -5,
    "bs": -6,
    "n": 0,
    "u": 1,
    "v": 2,
    "vs": 3,
    "vb": 4,
    "s": 5,
    "t": 6,
    "ut": 7,
    "vd": 8,
    "vlo": "vlo",
}
# CBOR key -> SenML label name.
_CBOR_KEYS: Final = {key: name for name, key in _SENML_LABELS.items()}
# The labels that hold a record's value.
_VALUE_LABELS: Final = ("v", "vs", "vb", "vd", "vlo")


def _senml_entries(records: Iterable[Record], *, cbor: bool) -> list[dict[Any, Any]]:
    """Records as SenML entries with a base name per object instance."""
    entries: list[dict[Any, Any]] = []
    base = None
    for index, record in enumerate(records):
        if not isinstance(record, Record):
            raise FormatError(f"record {index}: {record!r} is not a Record")
        entry: dict[str, Any] = {}
        ids = record.path.ids
        this_base = "/" + "/".join(str(x) for x in ids[:2]) + "/"
        if this_base != base:
            entry["bn"] = base = this_base
        entry["n"] = "/".join(str(x) for x in ids[2:])
        value = record.value
        if isinstance(value, bool):
            entry["vb"] = value
        elif isinstance(value, int | float):
            if isinstance(value, float) and not cbor and not math.isfinite(value):
                raise FormatError(
                    f"record {index} ({record.path}): {value!r} has no JSON form"
                )
            entry["v"] = value
        elif isinstance(value, str):
            entry["vs"] = value
        elif isinstance(value, bytes):
            entry["vd"] = value if cbor else _b64url(value)
        else:
            entry["vlo"] = str(value)
        if record.time is not None:
            entry["t"] = record.time
        entries.append(entry)
    if cbor:
        return [{_SENML_LABELS[k]: v for k, v in e.items()} for e in entries]
    return entries


def encode_senml_cbor(records: Iterable[Record]) -> bytes:
    """Records as a SenML CBOR pack (content format 112)."""
    return cbor2.dumps(_senml_entries(records, cbor=True))


def encode_senml_json(records: Iterable[Record]) -> bytes:
    """Records as a SenML JSON pack (content format 110), compact UTF-8."""
    text = json.dumps(
        _senml_entries(records, cbor=False),
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )
    return text.encode()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


# The base64url alphabet (RFC 4648 5), padding optional.
_B64URL_RE: Final = re.compile(r"[A-Za-z0-9_-]*={0,2}")


def _unb64url(text: str, where: str) -> bytes:
    if not _B64URL_RE.fullmatch(text):
        raise FormatError(f"{where}: vd {text[:40]!r} is not base64url")
    stripped = text.rstrip("=")
    if len(stripped) % 4 == 1:
        raise FormatError(f"{where}: vd {text[:40]!r} has an impossible length")
    try:
        return base64.urlsafe_b64decode(stripped + "=" * (-len(stripped) % 4))
    except (binascii.Error, ValueError) as exc:
        raise FormatError(f"{where}: vd {text[:40]!r}: {exc}") from None


@attrs.frozen
class _Entry:
    """A SenML entry, labels resolved to names, values type checked."""

    name: str | None
    labels: dict[str, Any]


def decode_senml_cbor(data: bytes, *, now: float | None = None) -> list[Record]:
    """Decode a SenML CBOR pack (content format 112) into records.

    Args:
      data: the payload.
      now: the current time; resolved times below 2**28 are relative to it
        (RFC 8428 4.5.3).  Without it they are returned as they are.
    """
    pack = _cbor_item(data, "SenML CBOR")
    entries = _senml_pack(pack, cbor=True)
    return _senml_records(entries, cbor=True, now=now)


def decode_senml_json(data: bytes, *, now: float | None = None) -> list[Record]:
    """Decode a SenML JSON pack (content format 110) into records."""
    pack = _json_item(data, "SenML JSON")
    entries = _senml_pack(pack, cbor=False)
    return _senml_records(entries, cbor=False, now=now)


def decode_senml_cbor_paths(data: bytes) -> list[Path]:
    """The paths of a SenML CBOR pack without values (composite requests)."""
    return _senml_paths(_senml_pack(_cbor_item(data, "SenML CBOR"), cbor=True))


def decode_senml_json_paths(data: bytes) -> list[Path]:
    """The paths of a SenML JSON pack without values (composite requests)."""
    return _senml_paths(_senml_pack(_json_item(data, "SenML JSON"), cbor=False))


def encode_senml_cbor_paths(paths: Iterable[Path]) -> bytes:
    """A SenML CBOR pack of names only (Read-Composite / Observe-Composite)."""
    return cbor2.dumps([{_SENML_LABELS["n"]: str(p)} for p in paths])


def encode_senml_json_paths(paths: Iterable[Path]) -> bytes:
    """A SenML JSON pack of names only."""
    return json.dumps([{"n": str(p)} for p in paths], separators=(",", ":")).encode()


def _cbor_item(data: bytes, what: str) -> Any:
    """Exactly one CBOR data item; FormatError on anything else."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise FormatError(f"{what}: payload must be bytes")
    data = bytes(data)
    stream = io.BytesIO(data)
    try:
        item = cbor2.CBORDecoder(stream).decode()
    except Exception as exc:  # cbor2 raises several kinds on bad input.
        raise FormatError(
            f"{what}: not CBOR (at byte {stream.tell()} of {len(data)}): {exc}"
        ) from None
    if stream.tell() != len(data):
        raise FormatError(
            f"{what}: {len(data) - stream.tell()} trailing bytes after the "
            f"CBOR item at byte {stream.tell()}"
        )
    return item


def _json_item(data: bytes, what: str) -> Any:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise FormatError(f"{what}: payload must be bytes")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(f"{what}: not UTF-8 at byte {exc.start}") from None

    def no_constant(name: str) -> None:
        raise FormatError(f"{what}: {name} is not JSON")

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise FormatError(f"{what}: label {key!r} appears twice")
            out[key] = value
        return out

    try:
        return json.loads(
            text, parse_constant=no_constant, object_pairs_hook=no_duplicates
        )
    except FormatError:
        raise
    except json.JSONDecodeError as exc:
        raise FormatError(
            f"{what}: not JSON at character {exc.pos}: {exc.msg}"
        ) from None
    except (ValueError, RecursionError) as exc:
        raise FormatError(f"{what}: not JSON: {exc}") from None


def _senml_pack(pack: Any, *, cbor: bool) -> list[_Entry]:
    """Check the shape of a pack; labels by name, per-label types checked."""
    what = "SenML CBOR" if cbor else "SenML JSON"
    if not isinstance(pack, list):
        raise FormatError(f"{what}: the pack must be an array")
    entries: list[_Entry] = []
    for index, raw in enumerate(pack):
        where = f"{what} record {index}"
        if not isinstance(raw, dict):
            raise FormatError(f"{where}: must be a map")
        labels: dict[str, Any] = {}
        for key, value in raw.items():
            if cbor:
                if type(key) not in (int, str):
                    raise FormatError(f"{where}: label {key!r} is not valid")
                if key not in _CBOR_KEYS:
                    if isinstance(key, str) and key.endswith("_"):
                        raise FormatError(f"{where}: unknown label {key!r}")
                    continue  # RFC 8428 4.4: unknown labels are ignored.
                name = _CBOR_KEYS[key]
            else:
                if key not in _SENML_LABELS:
                    if key.endswith("_"):
                        raise FormatError(f"{where}: unknown label {key!r}")
                    continue  # RFC 8428 4.4: unknown labels are ignored.
                name = key
            labels[name] = _senml_label(name, value, where, cbor=cbor)
        present = [label for label in _VALUE_LABELS if label in labels]
        if len(present) > 1:
            raise FormatError(f"{where}: more than one value ({', '.join(present)})")
        entries.append(_Entry(name=labels.get("n"), labels=labels))
    return entries


def _senml_label(name: str, value: Any, where: str, *, cbor: bool) -> Any:
    """One label's value, type checked."""
    if name in ("bn", "n", "bu", "u", "vs", "vlo"):
        if not isinstance(value, str):
            raise FormatError(f"{where}: {name} must be a text string")
        return value
    if name == "vb":
        if not isinstance(value, bool):
            raise FormatError(f"{where}: vb must be a boolean")
        return value
    if name == "vd":
        if cbor:
            if not isinstance(value, bytes):
                raise FormatError(f"{where}: vd must be a byte string")
            return value
        if not isinstance(value, str):
            raise FormatError(f"{where}: vd must be a base64url string")
        return _unb64url(value, where)
    if name == "bver":
        if type(value) is not int or not 0 <= value <= SENML_VERSION:
            raise FormatError(
                f"{where}: bver {value!r} is not a SenML version up to {SENML_VERSION}"
            )
        return value
    # v, bv, s, bs, t, bt, ut: numbers.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FormatError(f"{where}: {name} must be a number, not {value!r}")
    if isinstance(value, int) and not INT64_MIN <= value <= UINT64_MAX:
        raise FormatError(f"{where}: {name} {value!r} is outside the 64-bit range")
    if name in ("t", "bt") and not math.isfinite(value):
        raise FormatError(f"{where}: {name} must be finite")
    return value


def _resolve_names(entries: list[_Entry]) -> list[tuple[str, dict[str, Any]]]:
    """(full name, labels) per entry with base values applied."""
    base_name = ""
    out: list[tuple[str, dict[str, Any]]] = []
    for entry in entries:
        labels = entry.labels
        if "bn" in labels:
            base_name = labels["bn"]
        out.append((base_name + (entry.name or ""), labels))
    return out


def _senml_paths(entries: list[_Entry]) -> list[Path]:
    paths = []
    for index, (name, labels) in enumerate(_resolve_names(entries)):
        try:
            paths.append(Path.parse(name))
        except FormatError as exc:
            raise FormatError(f"SenML record {index}: name {name!r}: {exc}") from None
        present = [label for label in _VALUE_LABELS if label in labels]
        if present:
            raise FormatError(f"SenML record {index} ({name}): has a value")
    return paths


def _senml_records(
    entries: list[_Entry], *, cbor: bool, now: float | None
) -> list[Record]:
    what = "SenML CBOR" if cbor else "SenML JSON"
    records: list[Record] = []
    base_time: float | None = None
    base_value: float = 0
    for index, (name, labels) in enumerate(_resolve_names(entries)):
        where = f"{what} record {index}"
        base_time = labels.get("bt", base_time)
        base_value = labels.get("bv", base_value)
        if not name:
            raise FormatError(f"{where}: no name (neither bn nor n)")
        try:
            path = Path.parse(name)
        except FormatError as exc:
            raise FormatError(f"{where}: name {name!r}: {exc}") from None
        if path.level < 3:
            raise FormatError(f"{where}: {name} is not a resource path")
        value: Value
        if "v" in labels:
            value = labels["v"] + base_value if base_value else labels["v"]
            if isinstance(value, float) and not math.isfinite(value) and not cbor:
                raise FormatError(f"{where}: v must be finite")
        elif "vs" in labels:
            value = labels["vs"]
        elif "vb" in labels:
            value = labels["vb"]
        elif "vd" in labels:
            value = labels["vd"]
        elif "vlo" in labels:
            try:
                value = ObjLink.parse(labels["vlo"])
            except FormatError as exc:
                raise FormatError(f"{where}: {exc}") from None
        else:
            raise FormatError(f"{where} ({name}): no value")
        time: float | None = None
        if "t" in labels or base_time is not None:
            time = (base_time or 0) + labels.get("t", 0)
            if now is not None and time < SENML_RELATIVE_TIME_LIMIT:
                time = now + time
            if not math.isfinite(time):
                raise FormatError(f"{where}: time out of range")
        records.append(Record(path, value, time))
    return records


# --------------------------------------------------------------------------
# OMA TLV (TS Core 7.4.3)


class TlvKind(enum.IntEnum):
    """Bits 7-6 of a TLV type byte."""

    OBJECT_INSTANCE = 0
    RESOURCE_INSTANCE = 1
    MULTIPLE_RESOURCE = 2
    RESOURCE = 3


# Bit 5 of the type byte: the identifier is 16 bits long.
_TLV_ID16: Final = 0x20
# Bits 4-3 of the type byte: how many length bytes follow the id.
_TLV_LENGTH_SHIFT: Final = 3
# Bits 2-0 of the type byte: the length itself when no length field follows.
_TLV_SHORT_LENGTH_MAX: Final = 7
# The largest length a 24-bit length field can hold.
_TLV_LENGTH_MAX: Final = 2**24 - 1


def _tlv_header(kind: TlvKind, ident: int, length: int) -> bytes:
    if length > _TLV_LENGTH_MAX:
        raise FormatError(f"TLV: {length} bytes do not fit a 24-bit length")
    type_byte = kind << 6
    id_bytes = ident.to_bytes(1 if ident < 256 else 2, "big")
    if ident >= 256:
        type_byte |= _TLV_ID16
    if length <= _TLV_SHORT_LENGTH_MAX:
        return bytes([type_byte | length]) + id_bytes
    size = 1 if length < 2**8 else 2 if length < 2**16 else 3
    type_byte |= size << _TLV_LENGTH_SHIFT
    return bytes([type_byte]) + id_bytes + length.to_bytes(size, "big")


def _tlv(kind: TlvKind, ident: int, content: bytes) -> bytes:
    return _tlv_header(kind, ident, len(content)) + content


def _int_bytes(value: int, *, signed: bool) -> bytes:
    for size in (1, 2, 4, 8):
        try:
            return value.to_bytes(size, "big", signed=signed)
        except OverflowError:
            continue
    raise FormatError(f"integer {value!r} does not fit 64 bits")


def _float_bytes(value: float) -> bytes:
    single = struct.pack(">f", value) if _fits_float32(value) else None
    return single if single is not None else struct.pack(">d", value)


def _fits_float32(value: float) -> bool:
    try:
        return bool(struct.unpack(">f", struct.pack(">f", value))[0] == value)
    except OverflowError:
        return False


def encode_value_bytes(value: Value, rtype: ResourceType | None = None) -> bytes:
    """The binary (TLV) form of one value.

    Without ``rtype`` the kind is taken from the Python type; integers
    above the signed 64-bit range are written unsigned.
    """
    if isinstance(value, bool):
        if rtype not in (None, ResourceType.BOOLEAN):
            raise FormatError(f"value {value!r}: not a {rtype.value}")
        return b"\x01" if value else b"\x00"
    if isinstance(value, int):
        if rtype is ResourceType.FLOAT:
            return _float_bytes(float(value))
        if rtype not in (
            None,
            ResourceType.INTEGER,
            ResourceType.TIME,
            ResourceType.UNSIGNED,
        ):
            raise FormatError(f"value {value!r}: not a {rtype.value}")
        unsigned = rtype is ResourceType.UNSIGNED or value > INT64_MAX
        if unsigned and value < 0:
            raise FormatError(f"value {value!r}: unsigned must not be negative")
        return _int_bytes(value, signed=not unsigned)
    if isinstance(value, float):
        if rtype not in (None, ResourceType.FLOAT):
            raise FormatError(f"value {value!r}: not a {rtype.value}")
        return _float_bytes(value)
    if isinstance(value, str):
        if rtype not in (None, ResourceType.STRING, ResourceType.CORELNK):
            raise FormatError(f"value {value[:40]!r}: not a {rtype.value}")
        return value.encode()
    if isinstance(value, bytes):
        if rtype not in (None, ResourceType.OPAQUE):
            raise FormatError(f"value {value[:40]!r}: not a {rtype.value}")
        return value
    if isinstance(value, ObjLink):
        if rtype not in (None, ResourceType.OBJLNK):
            raise FormatError(f"value {value}: not a {rtype.value}")
        return struct.pack(">HH", value.object_id, value.instance)
    raise FormatError(f"value {value!r}: not an LwM2M value")


def decode_value_bytes(data: bytes, rtype: ResourceType | None, where: str) -> Value:
    """One binary (TLV) value of type ``rtype``; None keeps the raw bytes."""
    size = len(data)
    if rtype is None or rtype is ResourceType.OPAQUE:
        return bytes(data)
    if rtype in (ResourceType.STRING, ResourceType.CORELNK):
        try:
            return bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FormatError(
                f"{where}: string is not UTF-8 at byte {exc.start}"
            ) from None
    if rtype in (ResourceType.INTEGER, ResourceType.TIME, ResourceType.UNSIGNED):
        if size not in (1, 2, 4, 8):
            raise FormatError(f"{where}: integer of {size} bytes (1, 2, 4 or 8)")
        return int.from_bytes(data, "big", signed=rtype is not ResourceType.UNSIGNED)
    if rtype is ResourceType.FLOAT:
        if size == 4:
            return float(struct.unpack(">f", data)[0])
        if size == 8:
            return float(struct.unpack(">d", data)[0])
        raise FormatError(f"{where}: float of {size} bytes (4 or 8)")
    if rtype is ResourceType.BOOLEAN:
        if size != 1 or data[0] > 1:
            raise FormatError(f"{where}: boolean must be one byte 0 or 1")
        return data[0] == 1
    if rtype is ResourceType.OBJLNK:
        if size != 4:
            raise FormatError(f"{where}: objlnk of {size} bytes (4)")
        object_id, instance = struct.unpack(">HH", data)
        return ObjLink(object_id, instance)
    raise FormatError(f"{where}: a {rtype.value} resource has no value")


def encode_tlv(
    records: Iterable[Record],
    base: Path,
    type_of: Callable[[Path], ResourceType | None] | None = None,
) -> bytes:
    """Records below ``base`` as OMA TLV (content format 11542).

    The outermost TLVs follow the level of ``base``: object instances for an
    object, resources for an instance, the resource itself for a resource
    (a Multiple Resource TLV when its records have resource instance ids),
    a resource instance for a resource instance.  Resources and instances
    keep the order in which they first appear.

    ``type_of`` gives a resource's type for the integer width of Unsigned
    values and for floats written as Float; without it the Python type
    decides.  An empty multiple resource cannot be expressed by records.
    """
    # instance -> resource -> (value or {resource instance: value})
    tree: dict[int, dict[int, Any]] = {}
    for index, record in enumerate(records):
        if not isinstance(record, Record):
            raise FormatError(f"record {index}: {record!r} is not a Record")
        if not base.contains(record.path):
            raise FormatError(f"record {index}: {record.path} is not below {base}")
        path = record.path
        assert path.instance is not None and path.resource is not None
        resources = tree.setdefault(path.instance, {})
        rtype = type_of(path) if type_of is not None else None
        data = encode_value_bytes(record.value, rtype)
        current = resources.get(path.resource)
        if path.resource_instance is None:
            if current is not None:
                raise FormatError(f"record {index}: {path} appears twice")
            resources[path.resource] = data
        else:
            if isinstance(current, bytes):
                raise FormatError(f"record {index}: {path} mixes single and multiple")
            instances = resources.setdefault(path.resource, {})
            if path.resource_instance in instances:
                raise FormatError(f"record {index}: {path} appears twice")
            instances[path.resource_instance] = data

    def resource_tlv(rid: int, content: Any) -> bytes:
        if isinstance(content, bytes):
            return _tlv(TlvKind.RESOURCE, rid, content)
        inner = b"".join(
            _tlv(TlvKind.RESOURCE_INSTANCE, riid, data)
            for riid, data in content.items()
        )
        return _tlv(TlvKind.MULTIPLE_RESOURCE, rid, inner)

    def instance_content(resources: dict[int, Any]) -> bytes:
        return b"".join(resource_tlv(rid, c) for rid, c in resources.items())

    if base.level == 1:
        return b"".join(
            _tlv(TlvKind.OBJECT_INSTANCE, iid, instance_content(resources))
            for iid, resources in tree.items()
        )
    resources = tree.get(base.ids[1], {})
    if base.level == 2:
        return instance_content(resources)
    if base.level == 3:
        if not resources:
            return b""
        return resource_tlv(base.ids[2], resources[base.ids[2]])
    content = resources.get(base.ids[2])
    if not content:
        return b""
    if isinstance(content, bytes):
        raise FormatError(f"TLV: {base} names an instance of a single resource")
    return _tlv(TlvKind.RESOURCE_INSTANCE, base.ids[3], content[base.ids[3]])


@attrs.frozen
class _Tlv:
    kind: TlvKind
    ident: int
    offset: int  # where the value starts in the payload
    value: bytes


def _split_tlvs(data: bytes, start: int) -> list[_Tlv]:
    """The TLVs that make up ``data`` exactly (``start``: its offset)."""
    out: list[_Tlv] = []
    pos = 0
    end = len(data)
    while pos < end:
        at = start + pos
        type_byte = data[pos]
        id_size = 2 if type_byte & _TLV_ID16 else 1
        length_size = (type_byte >> _TLV_LENGTH_SHIFT) & 0x03
        header = 1 + id_size + length_size
        if pos + header > end:
            raise FormatError(
                f"TLV at byte {at}: truncated header ({end - pos} of {header} bytes)"
            )
        ident = int.from_bytes(data[pos + 1 : pos + 1 + id_size], "big")
        if length_size:
            if type_byte & 0x07:
                raise FormatError(
                    f"TLV at byte {at}: length bits set with a length field"
                )
            length = int.from_bytes(data[pos + 1 + id_size : pos + header], "big")
        else:
            length = type_byte & 0x07
        value_start = pos + header
        if value_start + length > end:
            raise FormatError(
                f"TLV at byte {at}: length {length} runs past the end of its "
                f"container ({end - value_start} bytes left)"
            )
        out.append(
            _Tlv(
                kind=TlvKind(type_byte >> 6),
                ident=ident,
                offset=start + value_start,
                value=data[value_start : value_start + length],
            )
        )
        pos = value_start + length
    return out


def decode_tlv(
    data: bytes,
    base: Path,
    type_of: Callable[[Path], ResourceType | None],
) -> list[Record]:
    """Decode OMA TLV addressed to ``base`` into records.

    ``type_of`` gives each resource's type; None (an unknown resource) keeps
    the raw bytes.  Accepted shapes: object instances for an object; resources
    (or the one object instance) for an instance; the resource or Multiple
    Resource TLV with the resource's id for a resource; the resource
    instance for a resource instance.  Any id that disagrees with ``base``,
    a container holding the wrong kind of TLV, a truncated or overrunning
    TLV and a value of the wrong size raise FormatError.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise FormatError("TLV: payload must be bytes")
    data = bytes(data)
    records: list[Record] = []

    def value_of(tlv: _Tlv, path: Path) -> Record:
        where = f"TLV at byte {tlv.offset} ({path})"
        return Record(path, decode_value_bytes(tlv.value, type_of(path), where))

    def resource(tlv: _Tlv, instance_path: Path) -> None:
        path = instance_path.child(tlv.ident)
        if tlv.kind is TlvKind.RESOURCE:
            records.append(value_of(tlv, path))
        elif tlv.kind is TlvKind.MULTIPLE_RESOURCE:
            multiple(tlv, path)
        else:
            raise FormatError(
                f"TLV at byte {tlv.offset - 1}: {tlv.kind.name} where a "
                f"resource of {instance_path} was expected"
            )

    def multiple(tlv: _Tlv, path: Path) -> None:
        for inner in _split_tlvs(tlv.value, tlv.offset):
            if inner.kind is not TlvKind.RESOURCE_INSTANCE:
                raise FormatError(
                    f"TLV at byte {inner.offset}: {inner.kind.name} inside the "
                    f"multiple resource {path}"
                )
            records.append(value_of(inner, path.child(inner.ident)))

    def instance(tlv: _Tlv) -> None:
        instance_path = Path(base.object_id, tlv.ident)
        for inner in _split_tlvs(tlv.value, tlv.offset):
            resource(inner, instance_path)

    def mismatch(tlv: _Tlv) -> FormatError:
        return FormatError(
            f"TLV at byte {tlv.offset}: {tlv.kind.name} {tlv.ident} does not "
            f"match the request path {base}"
        )

    tlvs = _split_tlvs(data, 0)
    if base.level == 1:
        for tlv in tlvs:
            if tlv.kind is not TlvKind.OBJECT_INSTANCE:
                raise FormatError(
                    f"TLV at byte {tlv.offset}: {tlv.kind.name} where an object "
                    f"instance of {base} was expected"
                )
            instance(tlv)
    elif base.level == 2:
        if len(tlvs) == 1 and tlvs[0].kind is TlvKind.OBJECT_INSTANCE:
            if tlvs[0].ident != base.instance:
                raise mismatch(tlvs[0])
            instance(tlvs[0])
        else:
            for tlv in tlvs:
                resource(tlv, base)
    elif base.level == 3:
        for tlv in tlvs:
            if tlv.ident != base.resource and tlv.kind in (
                TlvKind.RESOURCE,
                TlvKind.MULTIPLE_RESOURCE,
            ):
                raise mismatch(tlv)
            resource(tlv, base.parent())
        if len(tlvs) > 1:
            raise FormatError(f"TLV: {len(tlvs)} TLVs for the one resource {base}")
    else:
        if len(tlvs) != 1:
            raise FormatError(f"TLV: {len(tlvs)} TLVs for the resource instance {base}")
        tlv = tlvs[0]
        if tlv.kind is not TlvKind.RESOURCE_INSTANCE or tlv.ident != (
            base.resource_instance
        ):
            raise mismatch(tlv)
        records.append(value_of(tlv, base))
    seen: set[Path] = set()
    for record in records:
        if record.path in seen:
            raise FormatError(f"TLV: {record.path} appears twice")
        seen.add(record.path)
    return records


# --------------------------------------------------------------------------
# Plain text, opaque and CBOR single values

# Decimal integers as LwM2M text shows them.
_INT_TEXT_RE: Final = re.compile(r"[+-]?[0-9]{1,20}")
# Decimal floats: digits, optional fraction, optional exponent.
_FLOAT_TEXT_RE: Final = re.compile(
    r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]{1,4})?"
)


def encode_text(value: Value, rtype: ResourceType) -> bytes:
    """A single value as plain text (content format 0).

    Opaque values are base64 encoded (TS Core 7.4.1); for raw opaque use
    content format 42 (:func:`encode_opaque`).
    """
    if rtype is ResourceType.BOOLEAN and isinstance(value, bool):
        return b"1" if value else b"0"
    if rtype in (ResourceType.INTEGER, ResourceType.TIME, ResourceType.UNSIGNED):
        if type(value) is int and (rtype is not ResourceType.UNSIGNED or value >= 0):
            return str(value).encode()
    elif rtype is ResourceType.FLOAT:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if math.isfinite(value):
                return repr(float(value)).encode()
    elif rtype in (ResourceType.STRING, ResourceType.CORELNK):
        if isinstance(value, str):
            return value.encode()
    elif rtype is ResourceType.OPAQUE:
        if isinstance(value, bytes):
            return base64.b64encode(value)
    elif rtype is ResourceType.OBJLNK and isinstance(value, ObjLink):
        return str(value).encode()
    raise FormatError(f"value {value!r}: cannot be written as {rtype.value} text")


def decode_text(data: bytes, rtype: ResourceType) -> Value:
    """A single value from plain text (content format 0)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise FormatError("text: payload must be bytes")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(f"text: not UTF-8 at byte {exc.start}") from None
    shown = text[:40]
    if rtype in (ResourceType.STRING, ResourceType.CORELNK):
        return text
    if rtype in (ResourceType.INTEGER, ResourceType.TIME, ResourceType.UNSIGNED):
        if not _INT_TEXT_RE.fullmatch(text):
            raise FormatError(f"text {shown!r}: not a decimal integer")
        number = int(text)
        low = 0 if rtype is ResourceType.UNSIGNED else INT64_MIN
        high = UINT64_MAX if rtype is ResourceType.UNSIGNED else INT64_MAX
        if not low <= number <= high:
            raise FormatError(f"text {shown!r}: outside {low}..{high}")
        return number
    if rtype is ResourceType.FLOAT:
        if not _FLOAT_TEXT_RE.fullmatch(text):
            raise FormatError(f"text {shown!r}: not a decimal number")
        real = float(text)
        if not math.isfinite(real):
            raise FormatError(f"text {shown!r}: out of the float range")
        return real
    if rtype is ResourceType.BOOLEAN:
        if text not in ("0", "1"):
            raise FormatError(f"text {shown!r}: a boolean is 0 or 1")
        return text == "1"
    if rtype is ResourceType.OPAQUE:
        if not re.fullmatch(r"[A-Za-z0-9+/]*={0,2}", text) or len(text) % 4:
            raise FormatError(f"text {shown!r}: opaque text must be base64")
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise FormatError(f"text {shown!r}: {exc}") from None
    if rtype is ResourceType.OBJLNK:
        return ObjLink.parse(text)
    raise FormatError(f"text: a {rtype.value} resource has no value")


def encode_opaque(value: Value) -> bytes:
    """A single opaque value as raw bytes (content format 42)."""
    if not isinstance(value, bytes):
        raise FormatError(f"value {value!r}: only opaque values are raw bytes")
    return value


def decode_opaque(data: bytes, rtype: ResourceType) -> Value:
    """A single opaque value from raw bytes (content format 42)."""
    if rtype is not ResourceType.OPAQUE:
        raise FormatError(f"opaque: a {rtype.value} resource is not opaque")
    return bytes(data)


def encode_cbor(value: Value, rtype: ResourceType) -> bytes:
    """A single value as a CBOR data item (content format 60)."""
    if isinstance(value, ObjLink):
        return cbor2.dumps(str(value))
    if rtype is ResourceType.FLOAT and type(value) is int:
        value = float(value)
    encode_value_bytes(value, rtype)  # type check only
    return cbor2.dumps(value)


def decode_cbor(data: bytes, rtype: ResourceType) -> Value:
    """A single value from a CBOR data item (content format 60)."""
    item = _cbor_item(data, "CBOR")
    kinds: dict[ResourceType, tuple[type, ...]] = {
        ResourceType.STRING: (str,),
        ResourceType.CORELNK: (str,),
        ResourceType.INTEGER: (int,),
        ResourceType.UNSIGNED: (int,),
        ResourceType.TIME: (int,),
        ResourceType.FLOAT: (float, int),
        ResourceType.BOOLEAN: (bool,),
        ResourceType.OPAQUE: (bytes,),
        ResourceType.OBJLNK: (str,),
    }
    expected = kinds.get(rtype)
    if expected is None:
        raise FormatError(f"CBOR: a {rtype.value} resource has no value")
    is_bool = isinstance(item, bool)
    wrong_bool = is_bool and rtype is not ResourceType.BOOLEAN
    if not isinstance(item, expected) or wrong_bool:
        raise FormatError(f"CBOR: {type(item).__name__} is not a {rtype.value}")
    if isinstance(item, str) and rtype is ResourceType.OBJLNK:
        return ObjLink.parse(item)
    if isinstance(item, int | float) and rtype is ResourceType.FLOAT:
        return float(item)
    if isinstance(item, int) and not is_bool:
        low = 0 if rtype is ResourceType.UNSIGNED else INT64_MIN
        high = UINT64_MAX if rtype is ResourceType.UNSIGNED else INT64_MAX
        if not low <= item <= high:
            raise FormatError(f"CBOR: {item} outside {low}..{high}")
    return item  # type: ignore[no-any-return]


# --------------------------------------------------------------------------
# One entry point per direction


def encode(
    records: Sequence[Record],
    fmt: ContentFormat,
    base: Path,
    type_of: Callable[[Path], ResourceType | None] | None = None,
) -> bytes:
    """Records as a payload of ``fmt`` for a response about ``base``.

    TEXT, OPAQUE and CBOR hold exactly one record and need ``type_of``.
    """
    if fmt is ContentFormat.SENML_CBOR:
        return encode_senml_cbor(records)
    if fmt is ContentFormat.SENML_JSON:
        return encode_senml_json(records)
    if fmt is ContentFormat.TLV:
        return encode_tlv(records, base, type_of)
    if fmt in (ContentFormat.TEXT, ContentFormat.OPAQUE, ContentFormat.CBOR):
        if len(records) != 1 or base.level < 3:
            raise FormatError(
                f"{fmt.name}: holds one resource value, not {len(records)} "
                f"records for {base}"
            )
        rtype = type_of(records[0].path) if type_of is not None else None
        if rtype is None:
            raise FormatError(f"{fmt.name}: the type of {records[0].path} is unknown")
        value = records[0].value
        if fmt is ContentFormat.TEXT:
            return encode_text(value, rtype)
        if fmt is ContentFormat.OPAQUE:
            return encode_opaque(value)
        return encode_cbor(value, rtype)
    raise UnsupportedContentFormat(f"content format {int(fmt)} is not supported")


def decode(
    data: bytes,
    fmt: int,
    base: Path,
    type_of: Callable[[Path], ResourceType | None],
    *,
    now: float | None = None,
) -> list[Record]:
    """Records from a payload of content format ``fmt`` addressed to ``base``.

    Raises UnsupportedContentFormat for a format this module does not
    decode and FormatError for bad content.
    """
    if fmt == ContentFormat.SENML_CBOR:
        return decode_senml_cbor(data, now=now)
    if fmt == ContentFormat.SENML_JSON:
        return decode_senml_json(data, now=now)
    if fmt == ContentFormat.TLV:
        return decode_tlv(data, base, type_of)
    if fmt in (ContentFormat.TEXT, ContentFormat.OPAQUE, ContentFormat.CBOR):
        if base.level < 3:
            raise FormatError(f"content format {fmt}: {base} is not a resource")
        rtype = type_of(base)
        if rtype is None:
            raise FormatError(f"content format {fmt}: the type of {base} is unknown")
        if fmt == ContentFormat.TEXT:
            return [Record(base, decode_text(data, rtype))]
        if fmt == ContentFormat.OPAQUE:
            return [Record(base, decode_opaque(data, rtype))]
        return [Record(base, decode_cbor(data, rtype))]
    raise UnsupportedContentFormat(f"content format {fmt} is not supported")


# --------------------------------------------------------------------------
# CoRE link format (RFC 6690) as LwM2M registration uses it

# The resource type of the LwM2M root link (TS Transport 6.2.1).
LWM2M_ROOT_RT: Final = "oma.lwm2m"


def _link_attr(name: str, value: str | None) -> str:
    if value is None:
        return f";{name}"
    if re.fullmatch(r"[0-9A-Za-z.:-]+", value) and name != "rt":
        return f";{name}={value}"
    return f';{name}="{value}"'


def encode_link_format(
    paths: Iterable[Path],
    *,
    content_formats: Iterable[int] | int | None = ContentFormat.SENML_CBOR,
    versions: Mapping[int, str] | None = None,
    root: str | None = "/",
    attributes: Mapping[Path, Mapping[str, str | None]] | None = None,
) -> str:
    """The CoRE link list of a registration (LwM2M 1.1 style).

    ``</>;rt="oma.lwm2m";ct=112,</1/0>,</3/0>,</6/0>``: the root link with
    the preferred content format(s), then the given object and instance
    paths.  An object whose version is in ``versions`` gets its own
    ``</4>;ver=1.3`` link ahead of its instances.  ``root=None`` leaves the
    root link out; ``attributes`` adds attributes to chosen links.
    """
    links: list[str] = []
    if root is not None:
        root_link = f"<{root}>" + _link_attr("rt", LWM2M_ROOT_RT)
        if content_formats is not None:
            if isinstance(content_formats, int):
                root_link += f";ct={int(content_formats)}"
            else:
                numbers = " ".join(str(int(c)) for c in content_formats)
                root_link += _link_attr("ct", numbers) if numbers else ""
        links.append(root_link)
    prefix = "" if root in (None, "/") else root
    versions = versions or {}
    attributes = attributes or {}
    announced: set[int] = set()
    for path in paths:
        if path.level > 2:
            raise FormatError(f"link {path}: registration lists objects and instances")
        text = f"<{prefix}{path}>"
        version = versions.get(path.object_id)
        if version is not None and path.object_id not in announced:
            announced.add(path.object_id)
            if path.level == 1:
                text += _link_attr("ver", version)
            else:
                object_link = f"<{prefix}/{path.object_id}>"
                links.append(object_link + _link_attr("ver", version))
        for name, value in attributes.get(path, {}).items():
            text += _link_attr(name, value)
        links.append(text)
    return ",".join(links)


# A link-format attribute: name, then an optional quoted or bare value.
_LINK_ATTR_RE: Final = re.compile(r';([A-Za-z0-9!#$&+.^_`|~-]+)(?:=("[^"]*"|[^;,"]*))?')


def parse_registration_links(
    text: str,
) -> tuple[dict[str, str], list[tuple[Path, dict[str, str]]]]:
    """Split a registration link list into root attributes and object links.

    The root link is the one with ``rt="oma.lwm2m"`` (or ``</>``); when it is
    an alternate path (``</lwm2m>``) the other links are read below it.
    Attribute values lose their quotes; an attribute without a value maps to
    the empty string.
    """
    if isinstance(text, bytes | bytearray):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FormatError(f"link format: not UTF-8 at byte {exc.start}") from None
    if not isinstance(text, str):
        raise FormatError("link format: must be text")
    raw: list[tuple[str, dict[str, str], int]] = []
    pos = 0
    length = len(text)
    while pos < length:
        if text[pos] != "<":
            raise FormatError(f"link format: '<' expected at character {pos}")
        close = text.find(">", pos)
        if close < 0:
            raise FormatError(f"link format: '>' missing after character {pos}")
        target = text[pos + 1 : close]
        start = pos
        pos = close + 1
        attrs_: dict[str, str] = {}
        while pos < length and text[pos] == ";":
            match = _LINK_ATTR_RE.match(text, pos)
            if not match:
                raise FormatError(f"link format: bad attribute at character {pos}")
            value = match[2] or ""
            if value.startswith('"'):
                value = value[1:-1]
            attrs_[match[1]] = value
            pos = match.end()
        raw.append((target, attrs_, start))
        if pos < length:
            if text[pos] != ",":
                raise FormatError(f"link format: ',' expected at character {pos}")
            pos += 1
            if pos == length:
                raise FormatError("link format: a link list must not end with ','")
    root_attrs: dict[str, str] = {}
    prefix = ""
    links: list[tuple[Path, dict[str, str]]] = []
    for target, link_attrs, start in raw:
        if link_attrs.get("rt") == LWM2M_ROOT_RT or target == "/":
            root_attrs = link_attrs
            prefix = "" if target == "/" else target.rstrip("/")
            continue
        local = target
        if prefix:
            if not target.startswith(prefix + "/"):
                raise FormatError(
                    f"link format: {target!r} at character {start} is not below "
                    f"the root {prefix!r}"
                )
            local = target[len(prefix) :]
        try:
            path = Path.parse(local)
        except FormatError as exc:
            raise FormatError(f"link format at character {start}: {exc}") from None
        if path.level > 2:
            raise FormatError(
                f"link format at character {start}: {path} is below an instance"
            )
        links.append((path, link_attrs))
    return root_attrs, links


def parse_link_format(text: str) -> list[tuple[Path, dict[str, str]]]:
    """The object and instance links of a registration link list.

    The root link is left out (see :func:`parse_registration_links`).
    """
    return parse_registration_links(text)[1]
