"""LwM2M 1.1 content formats: SenML CBOR/JSON, OMA TLV, text, CBOR, link format.

Pure functions from records to bytes and back; no networking and no object
model (``protocols.lwm2m_objects`` holds that).  Both the device side (the
LwM2M client backend) and the local LwM2M server use this module.

This module is the one entry point: it holds the :func:`encode` and
:func:`decode` dispatchers and the CoRE link format, and re-exports (see
``__all__``) the rest, which lives in one module per concern:

* ``protocols.lwm2m_types``: content formats, resource types, errors,
  :class:`Path`, :class:`ObjLink`, :class:`Record` (the lowest module);
* ``protocols.lwm2m_senml``: SenML CBOR and JSON;
* ``protocols.lwm2m_tlv``: OMA TLV and the binary form of one value;
* ``protocols.lwm2m_single``: text, opaque and CBOR single values.

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
* The TLV and SenML codecs have shortcomings of their own, listed in
  ``protocols.lwm2m_tlv`` and ``protocols.lwm2m_senml``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final

from protocols.lwm2m_senml import (
    decode_senml_cbor,
    decode_senml_cbor_paths,
    decode_senml_json,
    decode_senml_json_paths,
    encode_senml_cbor,
    encode_senml_cbor_paths,
    encode_senml_json,
    encode_senml_json_paths,
)
from protocols.lwm2m_single import (
    decode_cbor,
    decode_opaque,
    decode_text,
    encode_cbor,
    encode_opaque,
    encode_text,
)
from protocols.lwm2m_tlv import (
    TlvKind,
    decode_tlv,
    decode_value_bytes,
    encode_tlv,
    encode_value_bytes,
)
from protocols.lwm2m_types import (
    ID_MAX,
    INT64_MAX,
    INT64_MIN,
    SENML_RELATIVE_TIME_LIMIT,
    SENML_VERSION,
    UINT64_MAX,
    ContentFormat,
    FormatError,
    ObjLink,
    Path,
    Record,
    ResourceType,
    UnsupportedContentFormat,
    Value,
)

# The public names, whether defined here or in the modules above.
__all__ = [
    "ID_MAX",
    "INT64_MAX",
    "INT64_MIN",
    "LWM2M_ROOT_RT",
    "SENML_RELATIVE_TIME_LIMIT",
    "SENML_VERSION",
    "UINT64_MAX",
    "ContentFormat",
    "FormatError",
    "ObjLink",
    "Path",
    "Record",
    "ResourceType",
    "TlvKind",
    "UnsupportedContentFormat",
    "Value",
    "decode",
    "decode_cbor",
    "decode_opaque",
    "decode_senml_cbor",
    "decode_senml_cbor_paths",
    "decode_senml_json",
    "decode_senml_json_paths",
    "decode_text",
    "decode_tlv",
    "decode_value_bytes",
    "encode",
    "encode_cbor",
    "encode_link_format",
    "encode_opaque",
    "encode_senml_cbor",
    "encode_senml_cbor_paths",
    "encode_senml_json",
    "encode_senml_json_paths",
    "encode_text",
    "encode_tlv",
    "encode_value_bytes",
    "parse_link_format",
    "parse_registration_links",
]


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
