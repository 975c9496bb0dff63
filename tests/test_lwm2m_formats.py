"""LwM2M content formats: exact bytes, strict decoding, round trips."""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.lwm2m_formats import (
    INT64_MAX,
    INT64_MIN,
    ContentFormat,
    FormatError,
    ObjLink,
    Path,
    Record,
    ResourceType,
    UnsupportedContentFormat,
    decode,
    decode_cbor,
    decode_senml_cbor,
    decode_senml_cbor_paths,
    decode_senml_json,
    decode_senml_json_paths,
    decode_text,
    decode_tlv,
    encode,
    encode_cbor,
    encode_link_format,
    encode_senml_cbor,
    encode_senml_cbor_paths,
    encode_senml_json,
    encode_text,
    encode_tlv,
    parse_link_format,
    parse_registration_links,
)

P = Path.parse
S = ResourceType.STRING
I = ResourceType.INTEGER  # noqa: E741
F = ResourceType.FLOAT
B = ResourceType.BOOLEAN
O = ResourceType.OPAQUE  # noqa: E741
T = ResourceType.TIME
L = ResourceType.OBJLNK
U = ResourceType.UNSIGNED


def types(mapping: dict[str, ResourceType]) -> Callable[[Path], ResourceType | None]:
    """A ``type_of`` from resource paths (resource instances share the type)."""

    def type_of(path: Path) -> ResourceType | None:
        key = Path.from_ids(path.ids[:3])
        return mapping.get(str(key))

    return type_of


# --------------------------------------------------------------------------
# The Device object example of the LwM2M specification (TS Core, TLV)

DEVICE_RECORDS = [
    Record(P("/3/0/0"), "Open Mobile Alliance"),
    Record(P("/3/0/1"), "Lightweight M2M Client"),
    Record(P("/3/0/2"), "345000123"),
    Record(P("/3/0/3"), "1.0"),
    Record(P("/3/0/6/0"), 1),
    Record(P("/3/0/6/1"), 5),
    Record(P("/3/0/7/0"), 3800),
    Record(P("/3/0/7/1"), 5000),
    Record(P("/3/0/8/0"), 125),
    Record(P("/3/0/8/1"), 900),
    Record(P("/3/0/9"), 100),
    Record(P("/3/0/10"), 15),
    Record(P("/3/0/11/0"), 0),
    Record(P("/3/0/13"), 1367491215),
    Record(P("/3/0/14"), "+02:00"),
    Record(P("/3/0/16"), "U"),
]
DEVICE_TYPES = types(
    {
        "/3/0/0": S, "/3/0/1": S, "/3/0/2": S, "/3/0/3": S, "/3/0/6": I,
        "/3/0/7": I, "/3/0/8": I, "/3/0/9": I, "/3/0/10": I, "/3/0/11": I,
        "/3/0/13": T, "/3/0/14": S, "/3/0/16": S,
    }
)  # fmt: skip
DEVICE_TLV = bytes.fromhex(
    "C8 00 14 4F 70 65 6E 20 4D 6F 62 69 6C 65 20 41 6C 6C 69 61 6E 63 65"
    " C8 01 16 4C 69 67 68 74 77 65 69 67 68 74 20 4D 32 4D 20 43 6C 69 65 6E 74"
    " C8 02 09 33 34 35 30 30 30 31 32 33"
    " C3 03 31 2E 30"
    " 86 06 41 00 01 41 01 05"
    " 88 07 08 42 00 0E D8 42 01 13 88"
    " 87 08 41 00 7D 42 01 03 84"
    " C1 09 64"
    " C1 0A 0F"
    " 83 0B 41 00 00"
    " C4 0D 51 82 42 8F"
    " C6 0E 2B 30 32 3A 30 30"
    " C1 10 55"
)


class TestPath:
    def test_parse_and_print(self) -> None:
        path = P("/3/0/7/1")

        assert (path.object_id, path.instance, path.resource) == (3, 0, 7)
        assert path.resource_instance == 1
        assert str(path) == "/3/0/7/1"
        assert path.level == 4
        assert P("/50009").level == 1
        assert str(P("/65535/65535")) == "/65535/65535"

    @pytest.mark.parametrize(
        "text",
        ["", "/", "3/0", "/3/", "/3//0", "/03", "/65536", "/1/2/3/4/5", "/a",
         "/3/0 ", "/-1", "/3/0/1/", "//3", "/٣"],
    )  # fmt: skip
    def test_bad_text_is_a_format_error(self, text: str) -> None:
        with pytest.raises(FormatError, match="path"):
            P(text)

    def test_ids_must_be_set_left_to_right_and_16_bit(self) -> None:
        with pytest.raises(FormatError, match="left to right"):
            Path(3, None, 1)
        with pytest.raises(FormatError, match="0..65535"):
            Path(3, 70000)
        with pytest.raises(FormatError, match="0..65535"):
            Path(True)

    def test_contains_is_a_prefix_test(self) -> None:
        assert P("/3").contains(P("/3/0/1"))
        assert P("/3/0").contains(P("/3/0"))
        assert not P("/3/0").contains(P("/3/1/0"))
        assert not P("/3/0/1").contains(P("/3/0"))
        assert not P("/3").contains(P("/33"))

    def test_sort_key_orders_numerically_parents_first(self) -> None:
        paths = [P("/10/0"), P("/3/0/1"), P("/3"), P("/3/0/10"), P("/3/0/2")]

        ordered = sorted(paths, key=Path.sort_key)

        assert [str(p) for p in ordered] == [
            "/3", "/3/0/1", "/3/0/2", "/3/0/10", "/10/0",
        ]  # fmt: skip

    def test_record_needs_a_resource_path_and_a_value(self) -> None:
        with pytest.raises(FormatError, match="resource path"):
            Record(P("/3/0"), 1)
        with pytest.raises(FormatError, match="not an LwM2M value"):
            Record(P("/3/0/1"), None)
        with pytest.raises(FormatError, match="64-bit"):
            Record(P("/3/0/1"), 2**64)
        with pytest.raises(FormatError, match="finite"):
            Record(P("/3/0/1"), 1, math.inf)

    def test_objlink_text(self) -> None:
        assert ObjLink.parse("3:0") == ObjLink(3, 0)
        assert str(ObjLink(65535, 65535)) == "65535:65535"
        for bad in ("3", "3:", ":0", "3:0:1", "3:70000", " 3:0"):
            with pytest.raises(FormatError):
                ObjLink.parse(bad)


# --------------------------------------------------------------------------
# OMA TLV


class TestTlvEncode:
    def test_device_object_example_from_the_specification(self) -> None:
        assert encode_tlv(DEVICE_RECORDS, P("/3/0")) == DEVICE_TLV

    def test_object_level_wraps_instances(self) -> None:
        records = [Record(P("/3/0/0"), "A"), Record(P("/3/1/0"), "B")]

        data = encode_tlv(records, P("/3"))

        assert data == bytes.fromhex("03 00 C1 00 41 03 01 C1 00 42")

    def test_resource_level_single_and_multiple(self) -> None:
        assert encode_tlv([Record(P("/3/0/9"), 100)], P("/3/0/9")) == b"\xc1\x09\x64"
        multiple = [Record(P("/3/0/6/0"), 1), Record(P("/3/0/6/1"), 5)]
        assert encode_tlv(multiple, P("/3/0/6")) == bytes.fromhex(
            "86 06 41 00 01 41 01 05"
        )
        assert encode_tlv(multiple[1:], P("/3/0/6/1")) == bytes.fromhex("41 01 05")

    def test_sixteen_bit_ids_and_float32(self) -> None:
        data = encode_tlv([Record(P("/3303/0/5700"), 21.5)], P("/3303/0"))

        assert data == bytes.fromhex("E4 16 44 41 AC 00 00")

    def test_float_needing_double_precision_takes_8_bytes(self) -> None:
        data = encode_tlv([Record(P("/6/0/0"), 63.4305)], P("/6/0"))

        assert data == b"\xc8\x00\x08" + struct.pack(">d", 63.4305)

    @pytest.mark.parametrize(
        ("value", "encoded"),
        [
            (0, "00"), (-1, "FF"), (127, "7F"), (128, "0080"), (-129, "FF7F"),
            (32767, "7FFF"), (32768, "00008000"), (2**31 - 1, "7FFFFFFF"),
            (2**31, "0000000080000000"), (INT64_MIN, "8000000000000000"),
        ],
    )  # fmt: skip
    def test_integers_take_the_shortest_width(self, value: int, encoded: str) -> None:
        data = encode_tlv([Record(P("/3/0/9"), value)], P("/3/0/9"))

        assert data[2 if len(encoded) <= 14 else 3 :] == bytes.fromhex(encoded)
        decoded = decode_tlv(data, P("/3/0/9"), lambda _: I)
        assert decoded == [Record(P("/3/0/9"), value)]

    @pytest.mark.parametrize(
        ("size", "header"),
        [(7, "C7 00"), (8, "C8 00 08"), (255, "C8 00 FF"), (256, "D0 00 01 00"),
         (70000, "D8 00 01 11 70")],
    )  # fmt: skip
    def test_length_fields(self, size: int, header: str) -> None:
        payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))

        data = encode_tlv([Record(P("/5/0/0"), payload)], P("/5/0"))

        assert data == bytes.fromhex(header) + payload
        assert decode_tlv(data, P("/5/0"), lambda _: O) == [
            Record(P("/5/0/0"), payload)
        ]

    def test_values_by_type(self) -> None:
        records = [
            Record(P("/1/0/6"), True),
            Record(P("/1/0/10"), ObjLink(11, 1)),
            Record(P("/1/0/22"), ""),
        ]

        data = encode_tlv(records, P("/1/0"))

        assert data == bytes.fromhex("C1 06 01 C4 0A 00 0B 00 01 C0 16")

    def test_unsigned_beyond_int64_and_by_declared_type(self) -> None:
        data = encode_tlv([Record(P("/1/0/17"), 2**64 - 1)], P("/1/0/17"))
        assert data == bytes.fromhex("C8 11 08 FF FF FF FF FF FF FF FF")
        data = encode_tlv([Record(P("/1/0/17"), 200)], P("/1/0/17"), lambda _: U)
        assert data == bytes.fromhex("C1 11 C8")
        assert decode_tlv(data, P("/1/0/17"), lambda _: U)[0].value == 200

    def test_records_outside_the_base_or_twice_are_refused(self) -> None:
        with pytest.raises(FormatError, match="not below /3/0"):
            encode_tlv([Record(P("/4/0/1/0"), 1)], P("/3/0"))
        with pytest.raises(FormatError, match="twice"):
            encode_tlv([Record(P("/3/0/1"), "a"), Record(P("/3/0/1"), "b")], P("/3"))
        with pytest.raises(FormatError, match="mixes"):
            encode_tlv([Record(P("/3/0/1"), "a"), Record(P("/3/0/1/0"), "b")], P("/3"))
        with pytest.raises(FormatError, match="not a String"):
            encode_tlv([Record(P("/3/0/1"), 5)], P("/3/0"), lambda _: S)


class TestTlvDecode:
    def test_device_object_example(self) -> None:
        assert decode_tlv(DEVICE_TLV, P("/3/0"), DEVICE_TYPES) == DEVICE_RECORDS

    def test_object_level_and_instance_wrapper(self) -> None:
        data = encode_tlv(DEVICE_RECORDS, P("/3"))

        assert data[:2] == b"\x08\x00"
        assert decode_tlv(data, P("/3"), DEVICE_TYPES) == DEVICE_RECORDS
        # A write to an instance may wrap its resources in the instance TLV.
        assert decode_tlv(data, P("/3/0"), DEVICE_TYPES) == DEVICE_RECORDS
        with pytest.raises(FormatError, match="does not match the request path /3/1"):
            decode_tlv(data, P("/3/1"), DEVICE_TYPES)

    def test_unknown_resources_keep_their_bytes(self) -> None:
        records = decode_tlv(b"\xc2\x63\x01\x02", P("/3/0"), lambda _: None)

        assert records == [Record(P("/3/0/99"), b"\x01\x02")]

    def test_empty_payload_is_no_records(self) -> None:
        assert decode_tlv(b"", P("/3/0"), DEVICE_TYPES) == []

    @pytest.mark.parametrize(
        ("data", "base", "message"),
        [
            # Truncated: header, 8-bit length field, value.
            ("C8", "/3/0", "truncated header"),
            ("C8 00", "/3/0", "truncated header"),
            ("C3 03 31 2E", "/3/0", "runs past the end"),
            ("C8 00 14 4F 70", "/3/0", "runs past the end"),
            # A trailing byte after a whole TLV.
            ("C1 09 64 C1", "/3/0", "truncated header"),
            # The multiple resource's content overruns its length.
            ("86 06 41 00 01 41 01 05 06", "/3/0", "truncated header"),
            ("84 06 41 00 01 42 01 05", "/3/0", "runs past the end"),
            # Values of the wrong size for their type.
            ("C3 09 00 00 01", "/3/0", "integer of 3 bytes"),
            ("C5 09 00 00 01 00 01", "/3/0", "integer of 5 bytes"),
            ("C1 06 02", "/1/0", "boolean must be one byte 0 or 1"),
            ("C2 06 00 01", "/1/0", "boolean must be one byte 0 or 1"),
            ("C3 0A 00 0B 00", "/1/0", "objlnk of 3 bytes"),
            ("C5 00 00 00 00 00 00", "/6/0", "float of 5 bytes"),
            ("C2 00 C3 28", "/3/0", "not UTF-8"),
            # The length bits must be 0 when a length field is used.
            ("C9 00 01 41", "/3/0", "length bits set"),
            # Containers holding the wrong kind of TLV.
            ("86 06 C1 00 01 C1 01 05", "/3/0", "inside the multiple resource"),
            ("41 00 01", "/3/0", "RESOURCE_INSTANCE where a resource"),
            ("C1 09 64", "/3", "where an object instance"),
            ("02 00 00 00", "/3", "OBJECT_INSTANCE where a resource"),
            # Ids that disagree with the request path.
            ("C1 0A 64", "/3/0/9", "does not match"),
            ("41 01 05", "/3/0/6/0", "does not match"),
            ("C1 09 64 C1 09 65", "/3/0/9", "2 TLVs"),
            ("C1 09 64 C1 09 65", "/3/0", "appears twice"),
            # Resources of an execute-only type carry no value.
            ("C1 04 00", "/3/0", "has no value"),
        ],
    )
    def test_malformed(self, data: str, base: str, message: str) -> None:
        type_of = types(
            {"/3/0/4": ResourceType.NONE, "/6/0/0": F, "/1/0/6": B, "/1/0/10": L}
            | {f"/3/0/{rid}": S for rid in (0, 1, 2, 3)}
            | {f"/3/0/{rid}": I for rid in (6, 9, 10)}
        )

        with pytest.raises(FormatError, match=message):
            decode_tlv(bytes.fromhex(data), P(base), type_of)

    def test_error_names_the_byte_offset(self) -> None:
        with pytest.raises(FormatError, match="at byte 3"):
            decode_tlv(bytes.fromhex("C1 09 64 C3 0A 00"), P("/3/0"), lambda _: I)

    def test_float_and_boolean_values(self) -> None:
        data = bytes.fromhex("C4 00 41 AC 00 00 C1 01 01 C1 02 00")
        type_of = types({"/9/0/0": F, "/9/0/1": B, "/9/0/2": B})

        records = decode_tlv(data, P("/9/0"), type_of)

        assert [r.value for r in records] == [21.5, True, False]


# --------------------------------------------------------------------------
# SenML


class TestSenmlEncode:
    def test_cbor_of_one_record_exact_bytes(self) -> None:
        data = encode_senml_cbor([Record(P("/3/0/0"), "Nordic")])

        # [{-2: "/3/0/", 0: "0", 3: "Nordic"}]
        assert data == bytes.fromhex(
            "81 A3 21 65 2F332F302F 00 61 30 03 66 4E6F72646963"
        )

    def test_cbor_labels_per_value_kind(self) -> None:
        records = [
            Record(P("/6/0/0"), 63.5, 1700000000),
            Record(P("/6/0/5"), 1700000000),
            Record(P("/33626/0/0"), True),
            Record(P("/33625/0/6"), b"\x01\x02"),
            Record(P("/1/0/10"), ObjLink(11, 0)),
        ]

        pack = cbor2.loads(encode_senml_cbor(records))

        assert pack == [
            {-2: "/6/0/", 0: "0", 2: 63.5, 6: 1700000000},
            {0: "5", 2: 1700000000},
            {-2: "/33626/0/", 0: "0", 4: True},
            {-2: "/33625/0/", 0: "6", 8: b"\x01\x02"},
            {-2: "/1/0/", 0: "10", "vlo": "11:0"},
        ]

    def test_json_device_example(self) -> None:
        text = encode_senml_json(DEVICE_RECORDS[:6]).decode()

        assert text == (
            '[{"bn":"/3/0/","n":"0","vs":"Open Mobile Alliance"},'
            '{"n":"1","vs":"Lightweight M2M Client"},'
            '{"n":"2","vs":"345000123"},{"n":"3","vs":"1.0"},'
            '{"n":"6/0","v":1},{"n":"6/1","v":5}]'
        )

    def test_json_opaque_is_base64url_without_padding(self) -> None:
        text = encode_senml_json([Record(P("/5/0/0"), b"\xfb\xff")]).decode()

        assert json.loads(text) == [{"bn": "/5/0/", "n": "0", "vd": "-_8"}]

    def test_json_has_no_form_for_nan(self) -> None:
        with pytest.raises(FormatError, match="no JSON form"):
            encode_senml_json([Record(P("/6/0/0"), math.nan)])

    def test_composite_path_lists(self) -> None:
        paths = [P("/3/0/13"), P("/4"), P("/3347/1")]

        data = encode_senml_cbor_paths(paths)

        assert cbor2.loads(data) == [{0: "/3/0/13"}, {0: "/4"}, {0: "/3347/1"}]
        assert decode_senml_cbor_paths(data) == paths
        assert decode_senml_json_paths(b'[{"bn":"/3/0/","n":"1"},{"n":"2"}]') == [
            P("/3/0/1"), P("/3/0/2"),
        ]  # fmt: skip


def cbor_pack(*entries: dict[object, object]) -> bytes:
    return cbor2.dumps(list(entries))


class TestSenmlDecode:
    def test_base_name_applies_until_replaced(self) -> None:
        data = cbor_pack(
            {-2: "/3/0/", 0: "0", 3: "a"},
            {0: "1", 3: "b"},
            {-2: "/4/0/", 0: "1/0", 2: 6},
            {0: "2", 2: -90},
            {0: "/3303/0/5700", -2: "", 2: 21.5},
        )

        records = decode_senml_cbor(data)

        assert [str(r.path) for r in records] == [
            "/3/0/0", "/3/0/1", "/4/0/1/0", "/4/0/2", "/3303/0/5700",
        ]  # fmt: skip
        assert [r.value for r in records] == ["a", "b", 6, -90, 21.5]

    def test_base_name_may_hold_the_whole_path(self) -> None:
        assert decode_senml_json(b'[{"bn":"/3/0/1","vs":"x"}]') == [
            Record(P("/3/0/1"), "x")
        ]

    def test_times_are_base_plus_relative(self) -> None:
        data = cbor_pack(
            {-3: 1700000000, -2: "/3303/0/", 0: "5700", 2: 1.5, 6: 10},
            {0: "5701", 3: "C"},
            {-3: 1700000100, 0: "5518", 2: 5, 6: -5},
            {-2: "/6/0/", 0: "5", 2: 1},
        )

        times = [r.time for r in decode_senml_cbor(data)]

        assert times == [1700000010, 1700000000, 1700000095, 1700000100]

    def test_time_without_base_is_none_and_relative_times_use_now(self) -> None:
        data = cbor_pack({-2: "/6/0/", 0: "0", 2: 1.0}, {0: "1", 2: 2.0, 6: -30})

        assert [r.time for r in decode_senml_cbor(data)] == [None, -30]
        assert [r.time for r in decode_senml_cbor(data, now=1000.0)] == [None, 970.0]

    def test_base_value_is_added(self) -> None:
        data = cbor_pack({-5: 100, -2: "/3/0/", 0: "9", 2: -1})

        assert decode_senml_cbor(data)[0].value == 99

    def test_unknown_labels_are_ignored_unless_must_understand(self) -> None:
        assert decode_senml_cbor(cbor_pack({0: "/3/0/0", 3: "a", 99: 1, "x": 2}))
        assert decode_senml_json(b'[{"n":"/3/0/0","vs":"a","foo":1}]')
        with pytest.raises(FormatError, match="unknown label 'foo_'"):
            decode_senml_cbor(cbor_pack({0: "/3/0/0", 3: "a", "foo_": 1}))
        with pytest.raises(FormatError, match="record 1: unknown label 'x_'"):
            decode_senml_json(
                b'[{"n":"/3/0/0","vs":"a"},{"n":"/3/0/1","vs":"a","x_":1}]'
            )

    def test_vd_and_vlo(self) -> None:
        records = decode_senml_json(
            b'[{"n":"/5/0/0","vd":"-_8"},{"n":"/5/0/1","vd":"AQI="},'
            b'{"n":"/1/0/10","vlo":"11:0"}]'
        )

        assert [r.value for r in records] == [b"\xfb\xff", b"\x01\x02", ObjLink(11, 0)]

    @pytest.mark.parametrize(
        ("pack", "message"),
        [
            ({"x": 1}, "the pack must be an array"),
            ([1], "record 0: must be a map"),
            ([{3: "a"}], "record 0: no name"),
            ([{-2: "/3/0/", 0: "0", 3: "a"}, {3: "b"}], "record 1: name '/3/0/'"),
            ([{-2: "/3/x/", 0: "0", 3: "a"}], "name '/3/x/0'"),
            ([{-2: "3/0/", 0: "0", 3: "a"}], "name '3/0/0'"),
            ([{0: "/3/0", 3: "a"}], "not a resource path"),
            ([{0: "/3/0/0"}], "no value"),
            ([{0: "/3/0/0", 3: "a", 2: 1}], "more than one value"),
            ([{0: 5, 3: "a"}], "n must be a text string"),
            ([{-2: b"/3/0/", 0: "0", 3: "a"}], "bn must be a text string"),
            ([{0: "/3/0/0", 2: "5"}], "v must be a number"),
            ([{0: "/3/0/0", 2: True}], "v must be a number"),
            ([{0: "/3/0/0", 4: 1}], "vb must be a boolean"),
            ([{0: "/3/0/0", 8: "AQI"}], "vd must be a byte string"),
            ([{0: "/3/0/0", 3: b"a"}], "vs must be a text string"),
            ([{0: "/3/0/0", "vlo": "3"}], "objlnk '3'"),
            ([{0: "/3/0/0", 3: "a", 6: "now"}], "t must be a number"),
            ([{0: "/3/0/0", 3: "a", 6: math.inf}], "t must be finite"),
            ([{-1: 11, 0: "/3/0/0", 3: "a"}], "bver 11"),
            ([{0: "/3/0/0", 2: 2**64}], "64-bit"),
            ([{0.0: "/3/0/0", 3: "a"}], "label 0.0 is not valid"),
            ([{0: "/3/0/0", 3: "a", 6: cbor2.CBORTag(1, 5)}], "t must be a number"),
        ],
    )
    def test_malformed_cbor(self, pack: object, message: str) -> None:
        with pytest.raises(FormatError, match=message):
            decode_senml_cbor(cbor2.dumps(pack))

    def test_not_cbor_and_trailing_bytes(self) -> None:
        good = cbor_pack({0: "/3/0/0", 3: "a"})
        with pytest.raises(FormatError, match="not CBOR"):
            decode_senml_cbor(good[:-1])
        with pytest.raises(FormatError, match="1 trailing bytes"):
            decode_senml_cbor(good + b"\x00")
        with pytest.raises(FormatError, match="not CBOR"):
            decode_senml_cbor(b"")

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            (b"[", "not JSON at character 1"),
            (b'[{"n":"/3/0/0","v":NaN}]', "NaN is not JSON"),
            (b'[{"n":"/3/0/0","v":1e999}]', "v must be finite"),
            (b'[{"n":"/3/0/0","v":1,"v":2}]', "'v' appears twice"),
            (b'[{"n":"/3/0/0","vd":"AQ*"}]', "not base64url"),
            (b'[{"n":"/3/0/0","vd":"A"}]', "impossible length"),
            (b'[{"n":"/3/0/0","vs":"\xff"}]', "not UTF-8 at byte 21"),
            (b'[{"n":"/3/0/0","vb":"true"}]', "vb must be a boolean"),
            (b"{}", "must be an array"),
            (b"[" * 100000, "not JSON"),
        ],
    )
    def test_malformed_json(self, text: bytes, message: str) -> None:
        with pytest.raises(FormatError, match=message):
            decode_senml_json(text)

    def test_composite_paths_must_not_carry_values(self) -> None:
        with pytest.raises(FormatError, match="has a value"):
            decode_senml_cbor_paths(cbor_pack({0: "/3/0/0", 3: "a"}))
        with pytest.raises(FormatError, match="name '/3/'"):
            decode_senml_cbor_paths(cbor_pack({0: "/3/"}))


# --------------------------------------------------------------------------
# Text, opaque, CBOR single values and the dispatcher


class TestSingleValues:
    @pytest.mark.parametrize(
        ("value", "rtype", "text"),
        [
            ("Nordic", S, b"Nordic"), (-40, I, b"-40"), (1367491215, T, b"1367491215"),
            (2**64 - 1, U, b"18446744073709551615"), (21.5, F, b"21.5"),
            (True, B, b"1"), (False, B, b"0"), (b"\x00\xff", O, b"AP8="),
            (ObjLink(3, 0), L, b"3:0"),
        ],
    )  # fmt: skip
    def test_text_round_trip(
        self, value: object, rtype: ResourceType, text: bytes
    ) -> None:
        assert encode_text(value, rtype) == text  # type: ignore[arg-type]
        assert decode_text(text, rtype) == value

    @pytest.mark.parametrize(
        ("text", "rtype"),
        [
            (b"1.5", I), (b" 1", I), (b"1_000", I), (b"0x10", I), (b"", I),
            (b"9223372036854775808", I), (b"-1", U), (b"true", B), (b"2", B),
            (b"nan", F), (b"inf", F), (b"1e999", F), (b"1,5", F), (b"AP8", O),
            (b"A*==", O), (b"3", L), (b"\xff", S), (b"", ResourceType.NONE),
        ],
    )  # fmt: skip
    def test_text_malformed(self, text: bytes, rtype: ResourceType) -> None:
        with pytest.raises(FormatError):
            decode_text(text, rtype)

    def test_text_refuses_a_value_of_another_type(self) -> None:
        with pytest.raises(FormatError, match="cannot be written as Integer"):
            encode_text("5", I)
        with pytest.raises(FormatError, match="cannot be written as Boolean"):
            encode_text(1, B)

    def test_cbor_single_values(self) -> None:
        assert encode_cbor(5, I) == b"\x05"
        assert decode_cbor(b"\xf5", B) is True
        assert decode_cbor(b"\x05", F) == 5.0
        assert decode_cbor(encode_cbor(ObjLink(3, 1), L), L) == ObjLink(3, 1)
        with pytest.raises(FormatError, match="bool is not a Integer"):
            decode_cbor(b"\xf5", I)
        with pytest.raises(FormatError, match="int is not a Boolean"):
            decode_cbor(b"\x01", B)
        with pytest.raises(FormatError, match="outside 0.."):
            decode_cbor(b"\x20", U)

    def test_dispatcher(self) -> None:
        type_of = DEVICE_TYPES
        for fmt in (ContentFormat.SENML_CBOR, ContentFormat.SENML_JSON,
                    ContentFormat.TLV):  # fmt: skip
            data = encode(DEVICE_RECORDS, fmt, P("/3/0"), type_of)
            assert decode(data, fmt, P("/3/0"), type_of) == DEVICE_RECORDS
        one = [Record(P("/3/0/9"), 100)]
        for fmt in (ContentFormat.TEXT, ContentFormat.CBOR):
            data = encode(one, fmt, P("/3/0/9"), type_of)
            assert decode(data, fmt, P("/3/0/9"), type_of) == one
        opaque = [Record(P("/5/0/0"), b"\x01")]
        data = encode(opaque, ContentFormat.OPAQUE, P("/5/0/0"), lambda _: O)
        assert data == b"\x01"
        with pytest.raises(FormatError, match="holds one resource value"):
            encode(DEVICE_RECORDS, ContentFormat.TEXT, P("/3/0"), type_of)
        with pytest.raises(FormatError, match="is not a resource"):
            decode(b"1", ContentFormat.TEXT, P("/3/0"), type_of)
        with pytest.raises(UnsupportedContentFormat, match="11543"):
            decode(b"{}", ContentFormat.LWM2M_JSON, P("/3/0"), type_of)
        with pytest.raises(UnsupportedContentFormat, match="11543"):
            encode(one, ContentFormat.LWM2M_JSON, P("/3/0"), type_of)


# --------------------------------------------------------------------------
# CoRE link format


class TestLinkFormat:
    def test_registration_payload_lwm2m_1_1(self) -> None:
        text = encode_link_format([P("/1/0"), P("/3/0"), P("/6/0")])

        assert text == '</>;rt="oma.lwm2m";ct=112,</1/0>,</3/0>,</6/0>'

    def test_versions_objects_without_instances_and_formats(self) -> None:
        text = encode_link_format(
            [P("/1/0"), P("/3/0"), P("/4/0"), P("/4/1"), P("/33625")],
            content_formats=[ContentFormat.SENML_CBOR, ContentFormat.TLV],
            versions={4: "1.3", 1: "1.1", 33625: "1.0"},
        )

        assert text == (
            '</>;rt="oma.lwm2m";ct="112 11542",</1>;ver=1.1,</1/0>,</3/0>,'
            "</4>;ver=1.3,</4/0>,</4/1>,</33625>;ver=1.0"
        )

    def test_without_root_and_with_attributes(self) -> None:
        text = encode_link_format(
            [P("/3/0")], root=None, attributes={P("/3/0"): {"pmin": "10", "obs": None}}
        )

        assert text == "</3/0>;pmin=10;obs"

    def test_parse_round_trip(self) -> None:
        text = '</>;rt="oma.lwm2m";ct=112,</1>;ver=1.1,</1/0>,</3/0>,</33625>'

        root, links = parse_registration_links(text)

        assert root == {"rt": "oma.lwm2m", "ct": "112"}
        assert links == [
            (P("/1"), {"ver": "1.1"}), (P("/1/0"), {}), (P("/3/0"), {}),
            (P("/33625"), {}),
        ]  # fmt: skip
        assert parse_link_format(text) == links

    def test_parse_lwm2m_1_0_and_alternate_root(self) -> None:
        assert parse_link_format("</1/0>,</3/0>;obs") == [
            (P("/1/0"), {}), (P("/3/0"), {"obs": ""}),
        ]  # fmt: skip
        root, links = parse_registration_links(
            b'</lwm2m>;rt="oma.lwm2m",</lwm2m/1/0>,</lwm2m/3/0>'  # type: ignore
        )
        assert root == {"rt": "oma.lwm2m"}
        assert [p for p, _ in links] == [P("/1/0"), P("/3/0")]

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("</1/0", "'>' missing"),
            ("/1/0", "'<' expected at character 0"),
            ("</1/0>,", "must not end with ','"),
            ("</1/0> </3/0>", "',' expected at character 6"),
            ("</1/0>;", "bad attribute at character 6"),
            ("</a/0>", "at character 0"),
            ("</3/0/1>", "below an instance"),
            ('</lwm2m>;rt="oma.lwm2m",</3/0>', "not below the root"),
        ],
    )
    def test_parse_malformed(self, text: str, message: str) -> None:
        with pytest.raises(FormatError, match=message):
            parse_link_format(text)


# --------------------------------------------------------------------------
# Properties

ids = st.integers(0, 65535)
values = st.one_of(
    st.booleans(),
    st.integers(INT64_MIN, INT64_MAX),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.binary(max_size=40),
    st.builds(ObjLink, ids, ids),
)
times = st.none() | st.floats(0, 2e9, allow_nan=False) | st.integers(0, 2**40)
resource_paths = st.builds(Path, ids, ids, ids) | st.builds(Path, ids, ids, ids, ids)
records = st.lists(st.builds(Record, resource_paths, values, times), max_size=8)


def type_of_value(value: object) -> ResourceType:
    kinds = {bool: B, int: I, float: F, str: S, bytes: O, ObjLink: L}
    return kinds[type(value)]


@st.composite
def tlv_tree(draw: st.DrawFn) -> tuple[Path, list[Record]]:
    """An object's records grouped as TLV groups them, and the object path."""
    object_id = draw(ids)
    out: list[Record] = []
    for iid in draw(st.lists(ids, unique=True, max_size=3)):
        for rid in draw(st.lists(ids, unique=True, max_size=4)):
            base = Path(object_id, iid, rid)
            if draw(st.booleans()):
                out.append(Record(base, draw(values)))
            else:
                for riid in draw(st.lists(ids, unique=True, min_size=1, max_size=3)):
                    out.append(Record(base.child(riid), draw(values)))
    return Path(object_id), out


def type_of_number(path: Path) -> ResourceType:
    """A resource type picked by the last id (every type occurs)."""
    return [B, I, F, S, O, L, U, T][path.ids[-1] % 8]


DECODERS: list[Callable[[bytes], object]] = [
    decode_senml_cbor,
    decode_senml_json,
    decode_senml_cbor_paths,
    lambda d: decode_tlv(d, P("/3"), type_of_number),
    lambda d: decode_tlv(d, P("/3/0"), type_of_number),
    lambda d: decode_tlv(d, P("/3/0/1"), type_of_number),
    lambda d: decode_tlv(d, P("/3/0/1/2"), type_of_number),
    lambda d: decode_text(d, F),
    lambda d: decode_text(d, O),
    lambda d: decode_text(d, I),
    lambda d: decode_cbor(d, I),
    lambda d: decode_cbor(d, L),
    lambda d: parse_link_format(d.decode("latin-1")),
]


class TestProperties:
    @settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.binary(max_size=64), which=st.integers(0, len(DECODERS) - 1))
    def test_decoders_raise_only_format_error(self, data: bytes, which: int) -> None:
        try:
            result = DECODERS[which](data)
        except FormatError as exc:
            assert str(exc)
        else:
            assert isinstance(result, list | bool | int | float | str | bytes | ObjLink)

    @settings(max_examples=400)
    @given(
        which=st.integers(0, 2),
        edits=st.lists(st.tuples(st.integers(0, 2**16), st.integers(0, 255)),
                       max_size=4),
        cut=st.integers(0, 2**16),
    )  # fmt: skip
    def test_mutated_payloads_raise_only_format_error(
        self, which: int, edits: list[tuple[int, int]], cut: int
    ) -> None:
        """Valid payloads with bytes changed and the tail cut off."""
        cases: list[tuple[bytes, Callable[[bytes], list[Record]]]] = [
            (DEVICE_TLV, lambda d: decode_tlv(d, P("/3/0"), DEVICE_TYPES)),
            (encode_senml_cbor(DEVICE_RECORDS), decode_senml_cbor),
            (encode_senml_json(DEVICE_RECORDS), decode_senml_json),
        ]
        payload, decoder = cases[which]
        data = bytearray(payload)
        for position, byte in edits:
            data[position % len(data)] = byte
        data = data[: len(data) - cut % 8]

        try:
            result = decoder(bytes(data))
        except FormatError as exc:
            assert str(exc)
        else:
            assert all(isinstance(r, Record) for r in result)

    @settings(max_examples=200)
    @given(pack=st.recursive(
        st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats()
        | st.text(max_size=8) | st.binary(max_size=8),
        lambda c: st.lists(c, max_size=4)
        | st.dictionaries(st.integers(-10, 10) | st.sampled_from(["n", "vlo"]), c,
                          max_size=5),
        max_leaves=16,
    ))  # fmt: skip
    def test_structured_cbor_raises_only_format_error(self, pack: object) -> None:
        try:
            decode_senml_cbor(cbor2.dumps(pack))
        except FormatError:
            pass

    @given(records)
    def test_senml_cbor_round_trip(self, recs: list[Record]) -> None:
        assert decode_senml_cbor(encode_senml_cbor(recs)) == recs

    @given(records)
    def test_senml_json_round_trip(self, recs: list[Record]) -> None:
        decoded = decode_senml_json(encode_senml_json(recs))

        assert decoded == recs
        assert [type(r.value) for r in decoded] == [type(r.value) for r in recs]

    @given(tlv_tree())
    def test_tlv_round_trip(self, tree: tuple[Path, list[Record]]) -> None:
        base, recs = tree
        by_path = {r.path: type_of_value(r.value) for r in recs}

        data = encode_tlv(recs, base)

        decoded = decode_tlv(data, base, by_path.__getitem__)
        assert decoded == recs
        assert [type(r.value) for r in decoded] == [type(r.value) for r in recs]

    @given(st.builds(Record, resource_paths, values))
    def test_text_round_trip(self, record: Record) -> None:
        rtype = type_of_value(record.value)

        assert decode_text(encode_text(record.value, rtype), rtype) == record.value

    @given(st.lists(st.builds(Path, ids) | st.builds(Path, ids, ids), max_size=6))
    def test_link_format_round_trip(self, paths: list[Path]) -> None:
        assert [p for p, _ in parse_link_format(encode_link_format(paths))] == paths
