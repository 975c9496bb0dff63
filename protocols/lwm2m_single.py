"""The single-value content formats: plain text (0), opaque (42), CBOR (60).

Each holds exactly one resource value, whose type the caller supplies.
``protocols.lwm2m_formats`` re-exports these functions and dispatches to
them from ``encode``/``decode``.

Design note:

* Text follows TS Core 7.4.1 (decimal numbers, booleans as ``0``/``1``,
  opaque values in base64, object links as ``object:instance``); opaque is
  the raw bytes; CBOR is one data item, checked against the resource type.
* The CBOR format reuses SenML's strict item reader (``_cbor_item``) and
  the TLV value checks (``encode_value_bytes``), so all formats accept and
  refuse the same values.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from typing import Final

import cbor2

from protocols.lwm2m_senml import _cbor_item
from protocols.lwm2m_tlv import encode_value_bytes
from protocols.lwm2m_types import (
    INT64_MAX,
    INT64_MIN,
    UINT64_MAX,
    FormatError,
    ObjLink,
    ResourceType,
    Value,
)

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
