"""The payloads of the local LwM2M server's management requests.

``decode_payload`` and ``encode_payload`` wrap the codecs of
``protocols.lwm2m_formats`` for Read, Observe and Write: they fill in a
resource type where the caller knows none (from the format, or from the
Python value) and report an unsupported format as a ``FormatError``.

Design note: pure functions of bytes and records, shared by the management
requests (``sandbox.lwm2m_server``) and the Bootstrap-Writes
(``sandbox.lwm2m_bootstrap``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

from protocols.lwm2m_formats import (
    ContentFormat,
    FormatError,
    ObjLink,
    Path,
    Record,
    ResourceType,
    UnsupportedContentFormat,
    decode,
    encode,
)

TypeOf = Callable[[Path], ResourceType | None]
"""A resource's type by path, as the codecs of ``lwm2m_formats`` take it."""

# What a single-value format decodes to when the caller knows no type.
_UNTYPED: Final[dict[int, ResourceType | None]] = {
    ContentFormat.TEXT: ResourceType.STRING,
    ContentFormat.OPAQUE: ResourceType.OPAQUE,
}


def decode_payload(
    payload: bytes,
    content_format: int | None,
    path: Path,
    *,
    type_of: TypeOf | None = None,
    now: float | None = None,
) -> list[Record]:
    """The records of a response to a request on ``path``.

    ``type_of`` gives resource types for TLV, text and CBOR; without one a
    TLV value stays raw bytes, text stays a string and opaque stays bytes.
    A response without a Content-Format is read as text.  ``now`` resolves
    SenML's relative times.

    Raises:
        FormatError: the payload does not decode, or its format is not one
            the codecs know.
    """
    fmt = ContentFormat.TEXT if content_format is None else content_format
    fallback = _UNTYPED.get(fmt)

    def typed(resource: Path) -> ResourceType | None:
        rtype = None if type_of is None else type_of(resource)
        return fallback if rtype is None else rtype

    try:
        return decode(payload, fmt, path, typed, now=now)
    except UnsupportedContentFormat as exc:
        raise FormatError(str(exc)) from None


def type_from_value(value: object) -> ResourceType | None:
    """The resource type a Python value suggests (``int`` is Integer)."""
    for kind, rtype in (
        (bool, ResourceType.BOOLEAN),
        (int, ResourceType.INTEGER),
        (float, ResourceType.FLOAT),
        (str, ResourceType.STRING),
        (bytes, ResourceType.OPAQUE),
        (ObjLink, ResourceType.OBJLNK),
    ):
        if isinstance(value, kind):
            return rtype
    return None


def encode_payload(
    records: Sequence[Record],
    content_format: ContentFormat,
    path: Path,
    *,
    type_of: TypeOf | None = None,
) -> bytes:
    """``records`` for a Write on ``path`` in ``content_format``.

    Without ``type_of`` each record's Python value decides its type.

    Raises:
        FormatError: the records cannot be put in that format (e.g. two
            records as text), or the format is not one the codecs know.
    """
    by_value = {record.path: type_from_value(record.value) for record in records}

    def typed(resource: Path) -> ResourceType | None:
        rtype = None if type_of is None else type_of(resource)
        return by_value.get(resource) if rtype is None else rtype

    try:
        return encode(records, content_format, path, typed)
    except UnsupportedContentFormat as exc:
        raise FormatError(str(exc)) from None
