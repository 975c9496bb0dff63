"""OMA TLV (content format 11542, TS Core 7.4.3).

Records to TLV and back, and the binary form of one value that TLV uses
(``encode_value_bytes``/``decode_value_bytes``).  ``protocols.lwm2m_formats``
re-exports the public names.

Design note:

* Encoding rebuilds the object instance, resource and resource instance
  nesting from the record paths relative to the request's base path, with
  the shortest id, length and integer fields.
* TLV carries no value kinds, so decoding takes each resource's type from
  the caller (``type_of``); without a type a value stays raw bytes.
* Decoding is strict and total: a :class:`FormatError` names the byte
  offset of what was wrong.

Known shortcomings:

* Records cannot express an empty multiple resource, so TLV encodes one as
  nothing at all rather than an empty Multiple Resource TLV; a server reading
  such a resource sees an empty payload.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Iterable
from typing import Any, Final

import attrs

from protocols.lwm2m_types import (
    INT64_MAX,
    FormatError,
    ObjLink,
    Path,
    Record,
    ResourceType,
    Value,
)

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
