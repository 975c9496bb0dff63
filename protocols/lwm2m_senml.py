"""SenML (RFC 8428) in CBOR (112) and JSON (110), as LwM2M 1.1 uses it.

Records to SenML packs and back, and the path-only packs of Read-Composite
and Observe-Composite.  ``protocols.lwm2m_formats`` re-exports the public
functions.

Design note:

* Encoding writes a base name per object instance (``"bn":"/3/0/"``,
  ``"n":"0"``); decoding resolves base names, base times and relative
  times (below 2**28 s, against ``now``) into flat :class:`Record` s.
* CBOR and JSON share one path: both are parsed into the same entries
  (CBOR's integer keys mapped to label names), then checked and resolved
  once.  Decoders are strict: a :class:`FormatError` names the entry.
* ``_cbor_item`` (one well-formed CBOR item) is also used by the CBOR
  single-value format (``lwm2m_single``).

Known shortcomings:

* SenML CBOR writes every float as a 64-bit double (cbor2's default), up to
  4 bytes more per value than the shortest exact form.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import re
from collections.abc import Iterable
from typing import Any, Final

import attrs
import cbor2

from protocols.lwm2m_types import (
    INT64_MIN,
    SENML_RELATIVE_TIME_LIMIT,
    SENML_VERSION,
    UINT64_MAX,
    FormatError,
    ObjLink,
    Path,
    Record,
    Value,
)

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
