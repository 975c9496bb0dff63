"""The LwM2M content model: content formats, resource types, paths, records.

The types every LwM2M content format shares -- :class:`ContentFormat`,
:class:`ResourceType`, :class:`Path`, :class:`ObjLink`, :class:`Record` and
the ``Value`` alias -- with the errors and value ranges the codecs use.
``protocols.lwm2m_formats`` re-exports all of them.

Design note:

* This is the lowest module of the codecs (``lwm2m_senml``, ``lwm2m_tlv``,
  ``lwm2m_single`` and ``lwm2m_formats`` import it, it imports none of
  them), so the codecs can share the types without an import cycle.
* A :class:`Record` is one resource or resource instance value; its fields
  are checked when it is made, so a codec never meets an invalid path,
  value or time.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Sequence
from typing import Final, TypeAlias

import attrs

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
