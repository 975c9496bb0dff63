"""LwM2M object definitions and the object store's server operations."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.config import DeviceConfig, NoData
from protocols.json_codec import INT32_MAX
from protocols.lwm2m_formats import (
    ContentFormat,
    ObjLink,
    Path,
    Record,
    ResourceType,
    decode,
    decode_senml_cbor,
    encode,
    encode_senml_cbor,
    encode_tlv,
)
from protocols.lwm2m_objects import (
    CONFIG_INTERVAL_RANGE,
    CONFIGURATION,
    OBJECTS,
    BadRequest,
    InternalServerError,
    LwM2MError,
    MethodNotAllowed,
    NotAcceptable,
    NotFound,
    ObjectStore,
    UnsupportedFormat,
    config_from_values,
    config_values,
    parse_execute_arguments,
)

P = Path.parse


def rec(path: str, value: Any) -> Record:
    return Record(P(path), value)


@pytest.fixture
def store() -> ObjectStore:
    """A store laid out like the tracker's: server, device, config, sensors."""
    s = ObjectStore()
    s.create(0, 0, {0: "coaps://127.0.0.1:5684", 2: 0, 3: b"urn:imei:1", 5: b"k"})
    s.create(1, 0, {0: 101, 1: 43200, 7: "U"})
    s.create(3, 0, {0: "Nordic Semiconductor ASA", 6: {0: 1}, 11: {0: 0}})
    s.create(4, 0)
    s.create(5, 0)
    s.create(6, 0)
    s.create(3347, 0, {5750: "Push button 1"})
    s.create(3347, 1, {5750: "Push button 2"})
    s.create(50009, 0, config_values(DeviceConfig()))
    return s


class TestDefinitions:
    def test_registry_holds_every_object_of_the_tracker(self) -> None:
        assert sorted(OBJECTS) == [
            0, 1, 3, 4, 5, 6, 3303, 3304, 3323, 3347, 10256, 33625, 33626, 50009,
        ]  # fmt: skip
        for object_id, definition in OBJECTS.items():
            assert definition.id == object_id
            for rid, rdef in definition.resources.items():
                assert rdef.id == rid
                assert set(rdef.operations) <= set("RWE")
                assert (rdef.type is ResourceType.NONE) == ("E" in rdef.operations)

    def test_configuration_object_matches_the_wire_spec(self) -> None:
        resources = CONFIGURATION.resources
        b, i, f = ResourceType.BOOLEAN, ResourceType.INTEGER, ResourceType.FLOAT

        assert [(r.id, r.type) for r in resources.values()] == [
            (0, b), (1, i), (2, i), (3, i), (4, i), (5, f), (6, b), (7, b),
            (8, f), (9, f),
        ]  # fmt: skip
        assert all(r.operations == "RW" and r.mandatory for r in resources.values())
        assert not CONFIGURATION.multiple
        for rid in (1, 2, 3, 4):
            assert resources[rid].range == CONFIG_INTERVAL_RANGE
        assert CONFIG_INTERVAL_RANGE.min == 1
        assert CONFIG_INTERVAL_RANGE.max == INT32_MAX

    def test_resources_the_tracker_uses(self) -> None:
        device = OBJECTS[3].resources
        assert device[4].operations == "E"
        assert device[7].multiple and device[7].type is ResourceType.INTEGER
        assert device[13].type is ResourceType.TIME
        assert OBJECTS[4].version == "1.3"
        assert OBJECTS[4].resources[12].name == "LAC"
        firmware = OBJECTS[5].resources
        assert [firmware[r].operations for r in (0, 1, 2, 3, 5)] == [
            "W", "RW", "E", "R", "R",
        ]  # fmt: skip
        assert OBJECTS[3347].resources[5500].type is ResourceType.BOOLEAN
        assert OBJECTS[33625].resources[6].type is ResourceType.OPAQUE
        assert OBJECTS[33626].resources[2].operations == "RW"
        assert OBJECTS[10256].multiple

    def test_config_values_round_trip(self) -> None:
        config = DeviceConfig(
            active_mode=False,
            location_timeout=60,
            accelerometer_inactivity_timeout=2.5,
            no_data=NoData(gnss=True, wifi=True),
        )

        values = config_values(config)

        assert values == {
            0: True, 1: 60, 2: 300, 3: 120, 4: 3600, 5: 4.0, 6: False, 7: True,
            8: 4.0, 9: 2.5,
        }  # fmt: skip
        assert config_from_values(values, DeviceConfig(no_data=NoData(wifi=True))) == (
            config
        )


class TestLocal:
    def test_create_fills_mandatory_resources(self, store: ObjectStore) -> None:
        assert store.get("/4/0/0") == 0
        # A mandatory multiple resource starts with instance 0.
        assert store.get("/4/0/1") == {0: 0}
        assert store.get("/4/0/4") == {0: ""}
        assert store.get("/5/0/1") == ""
        assert not store.has("/4/0/8")
        assert store.has("/3/0/6/0") and not store.has("/3/0/6/1")
        assert store.instances(3347) == [0, 1]

    def test_create_refuses_duplicates_and_unknowns(self, store: ObjectStore) -> None:
        with pytest.raises(BadRequest, match="/3347/0: the instance exists"):
            store.create(3347, 0)
        with pytest.raises(BadRequest, match="single instance"):
            store.create(3, 1)
        with pytest.raises(NotFound, match="no object 9"):
            store.create(9, 0)
        with pytest.raises(NotFound, match="no resource 77"):
            store.create(3303, 0, {77: 1.0})
        with pytest.raises(BadRequest, match="not a Float"):
            store.create(3303, 0, {5700: "hot"})
        assert not store.has("/3303/0")

    def test_set_checks_types_and_converts(self, store: ObjectStore) -> None:
        store.set("/6/0/0", 63)
        assert store.get("/6/0/0") == 63.0 and isinstance(store.get("/6/0/0"), float)
        store.set(P("/3/0/13"), 1700000000.0)
        assert store.get("/3/0/13") == 1700000000
        store.set("/3/0/7/1", 80)
        assert store.get("/3/0/7") == {1: 80}
        store.set("/3/0/7", {0: 4000, 1: 80})
        assert store.get("/3/0/7/0") == 4000
        for path, value, message in [
            ("/3/0/0", 5, "is not a String"),
            ("/3/0/9", True, "is not a Integer"),
            ("/3/0/9", 2.5, "is not a Integer"),
            ("/6/0/0", float("nan"), "not a finite Float"),
            ("/3/0/7", 5, "takes a dict"),
            ("/3/0/9/0", 5, "single resource"),
            ("/3/0", 5, "resource path"),
        ]:
            with pytest.raises(BadRequest, match=message):
                store.set(path, value)
        with pytest.raises(MethodNotAllowed):
            store.set("/3/0/4", 1)
        with pytest.raises(NotFound, match="no instance /3303/0"):
            store.set("/3303/0/5700", 1.0)

    def test_set_reports_changes_only(self, store: ObjectStore) -> None:
        seen: list[list[Path]] = []
        store.on_change(seen.append)

        store.set("/3/0/9", 80)
        store.set("/3/0/9", 80)
        store.set("/3/0/7/0", 3)

        assert seen == [[P("/3/0/9")], [P("/3/0/7/0")]]

    def test_get_of_missing_values(self, store: ObjectStore) -> None:
        with pytest.raises(NotFound, match="not set"):
            store.get("/3/0/9")
        with pytest.raises(NotFound, match="no resource instance 4"):
            store.get("/3/0/6/4")
        with pytest.raises(BadRequest, match="path '/3/x'"):
            store.get("/3/x")

    def test_delete(self, store: ObjectStore) -> None:
        seen: list[list[Path]] = []
        store.on_change(seen.append)

        store.delete("/3347/1")
        store.delete(P("/3/0/6/0"))

        assert store.instances(3347) == [0]
        assert store.get("/3/0/6") == {}
        assert seen == [[P("/3347/1")], [P("/3/0/6/0")]]
        with pytest.raises(NotFound):
            store.delete("/3347/1")
        with pytest.raises(MethodNotAllowed):
            store.delete("/3347")
        with pytest.raises(MethodNotAllowed):
            store.delete("/3/0/6")


class TestRead:
    def test_levels(self, store: ObjectStore) -> None:
        store.set("/3/0/9", 80)

        assert store.read("/3/0/9") == [rec("/3/0/9", 80)]
        assert store.read("/3/0/6") == [rec("/3/0/6/0", 1)]
        assert store.read("/3/0/6/0") == [rec("/3/0/6/0", 1)]
        assert [str(r.path) for r in store.read("/3/0")] == [
            "/3/0/0", "/3/0/6/0", "/3/0/9", "/3/0/11/0", "/3/0/16",
        ]  # fmt: skip
        assert [str(r.path) for r in store.read("/3347")] == [
            "/3347/0/5500", "/3347/0/5750", "/3347/1/5500", "/3347/1/5750",
        ]  # fmt: skip
        assert store.read("/3303") == []

    def test_write_only_resources_are_left_out_of_instance_reads(
        self, store: ObjectStore
    ) -> None:
        store.set("/5/0/0", b"image")

        assert P("/5/0/0") not in [r.path for r in store.read("/5/0")]
        with pytest.raises(MethodNotAllowed, match="4.05|Package is not readable"):
            store.read("/5/0/0")

    @pytest.mark.parametrize(
        ("path", "error", "code"),
        [
            ("/9", NotFound, "4.04"),
            ("/3/1", NotFound, "4.04"),
            ("/3/0/99", NotFound, "4.04"),
            ("/3/0/9", NotFound, "4.04"),  # defined but not set
            ("/3/0/6/7", NotFound, "4.04"),
            ("/3/0/4", MethodNotAllowed, "4.05"),
            ("/0/0/0", MethodNotAllowed, "4.05"),
        ],
    )
    def test_errors(
        self, store: ObjectStore, path: str, error: type[LwM2MError], code: str
    ) -> None:
        with pytest.raises(error) as info:
            store.read(path)

        assert info.value.code == code
        assert path in str(info.value)


class TestWrite:
    def test_partial_update(self, store: ObjectStore) -> None:
        store.write("/50009/0", [rec("/50009/0/1", 60), rec("/50009/0/0", True)],
                    replace=False)  # fmt: skip

        assert store.get("/50009/0/1") == 60
        assert store.get("/50009/0/0") is True
        assert store.get("/50009/0/2") == 300

    def test_integral_float_and_int_conversions(self, store: ObjectStore) -> None:
        store.write("/50009/0", [rec("/50009/0/1", 60.0), rec("/50009/0/5", 2)],
                    replace=False)  # fmt: skip

        assert store.read("/50009/0/1") == [rec("/50009/0/1", 60)]
        assert isinstance(store.get("/50009/0/5"), float)

    @pytest.mark.parametrize("rid", [1, 2, 3, 4])
    def test_config_interval_ranges(self, store: ObjectStore, rid: int) -> None:
        path = f"/50009/0/{rid}"
        for bad in (0, -1, INT32_MAX + 1):
            with pytest.raises(BadRequest, match="below the minimum 1|above the max"):
                store.write(path, [rec(path, bad)], replace=True)
        for good in (1, INT32_MAX):
            store.write(path, [rec(path, good)], replace=True)
            assert store.get(path) == good

    def test_config_types(self, store: ObjectStore) -> None:
        for path, value in [
            ("/50009/0/0", 1), ("/50009/0/1", 1.5), ("/50009/0/5", "4"),
            ("/50009/0/6", b"\x01"), ("/50009/0/8", True),
        ]:  # fmt: skip
            with pytest.raises(BadRequest, match="is not a") as info:
                store.write("/50009/0", [rec(path, value)], replace=False)
            assert info.value.code == "4.00"
            assert path in str(info.value)

    def test_errors_name_the_path(self, store: ObjectStore) -> None:
        cases = [
            ("/3/0", [rec("/3/0/0", "x")], MethodNotAllowed, "4.05"),
            ("/3/0", [rec("/3/0/99", "x")], NotFound, "4.04"),
            ("/3/1", [rec("/3/1/13", 5)], NotFound, "4.04"),
            ("/3", [rec("/3/0/13", 5)], MethodNotAllowed, "4.05"),
            ("/3/0/13", [rec("/3/0/14", "x")], BadRequest, "4.00"),
            ("/3/0", [rec("/3/0/13", 1), rec("/3/0/13", 2)], BadRequest, "4.00"),
            ("/1/0", [rec("/1/0/1/0", 5)], BadRequest, "4.00"),
            ("/0/0", [rec("/0/0/0", "coap://x")], MethodNotAllowed, "4.05"),
            ("/5/0", [rec("/5/0/1", "u" * 256)], BadRequest, "4.00"),
        ]
        for path, records, error, code in cases:
            with pytest.raises(error) as info:
                store.write(path, records, replace=False)
            assert info.value.code == code, path

    def test_write_is_all_or_nothing(self, store: ObjectStore) -> None:
        before = store.snapshot()
        seen: list[list[Path]] = []
        store.on_change(seen.append)

        with pytest.raises(BadRequest, match="/50009/0/4"):
            store.write(
                "/50009/0",
                [rec("/50009/0/1", 60), rec("/50009/0/2", 30), rec("/50009/0/4", 0)],
                replace=False,
            )

        assert store.snapshot() == before
        assert seen == []

    def test_a_failing_hook_rolls_everything_back(self, store: ObjectStore) -> None:
        before = store.snapshot()
        seen: list[list[Path]] = []
        store.on_change(seen.append)
        calls: list[tuple[list[Record], Any]] = []

        def hook(records: list[Record]) -> None:
            calls.append((records, store.get("/50009/0/1")))
            store.set("/3/0/9", 1)  # a side effect of the hook, undone too
            raise BadRequest("/50009/0: the configuration is refused")

        store.on_write(50009, hook)
        with pytest.raises(BadRequest, match="refused") as info:
            store.write("/50009/0", [rec("/50009/0/1", 60)], replace=False)

        assert info.value.code == "4.00"
        assert calls == [([rec("/50009/0/1", 60)], 60)]
        assert store.snapshot() == before
        assert seen == []

    def test_an_unexpected_hook_failure_is_a_5_00(self, store: ObjectStore) -> None:
        before = store.snapshot()
        store.on_write(50009, lambda records: [][0])

        with pytest.raises(InternalServerError, match="IndexError") as info:
            store.write("/50009/0", [rec("/50009/0/1", 60)], replace=False)

        assert info.value.code == "5.00"
        assert store.snapshot() == before

    def test_observers_hear_committed_changes_once(self, store: ObjectStore) -> None:
        seen: list[list[Path]] = []
        store.on_change(seen.append)
        store.on_write(50009, lambda records: store.set("/3/0/9", 5))

        store.write("/50009/0", [rec("/50009/0/1", 60), rec("/50009/0/2", 300)],
                    replace=False)  # fmt: skip

        # /50009/0/2 already held 300: unchanged, not reported.
        assert seen == [[P("/3/0/9"), P("/50009/0/1")]]

    def test_a_hook_may_write_and_fail_after_it(self, store: ObjectStore) -> None:
        seen: list[list[Path]] = []
        store.on_change(seen.append)

        def nested(records: list[Record]) -> None:
            store.write("/1/0/1", [rec("/1/0/1", 99)], replace=True)

        store.on_write(50009, nested)
        store.write("/50009/0/1", [rec("/50009/0/1", 10)], replace=True)
        assert seen == [[P("/1/0/1"), P("/50009/0/1")]]
        assert store.get("/1/0/1") == 99

        before = store.snapshot()
        store.on_write(50009, lambda records: store.get("/3/0/9"))  # NotFound
        with pytest.raises(NotFound):
            store.write("/50009/0/1", [rec("/50009/0/1", 11)], replace=True)
        assert store.snapshot() == before
        assert len(seen) == 1

    def test_hooks_can_be_removed(self, store: ObjectStore) -> None:
        calls: list[list[Record]] = []
        remove = store.on_write(50009, calls.append)

        store.write("/50009/0/1", [rec("/50009/0/1", 61)], replace=True)
        remove()
        store.write("/50009/0/1", [rec("/50009/0/1", 62)], replace=True)

        assert calls == [[rec("/50009/0/1", 61)]]

    def test_replace_and_update_of_a_multiple_resource(self) -> None:
        # /3/0/7 made writable: no object of the tracker has a writable
        # multiple resource.
        writable = attrs.evolve(OBJECTS[3].resources[7], operations="RW")
        resources = dict(OBJECTS[3].resources) | {7: writable}
        store = ObjectStore({3: attrs.evolve(OBJECTS[3], resources=resources)})
        store.create(3, 0, {7: {0: 1, 1: 2}})
        path = "/3/0/7"

        store.write(path, [rec("/3/0/7/2", 3)], replace=False)
        assert store.get(path) == {0: 1, 1: 2, 2: 3}
        store.write(path, [rec("/3/0/7/5", 9)], replace=True)
        assert store.get(path) == {5: 9}
        store.write("/3/0/7/5", [rec("/3/0/7/5", 8)], replace=True)
        assert store.get(path) == {5: 8}
        store.write(path, [], replace=True)
        assert store.get(path) == {}

    def test_replace_of_an_instance_drops_optional_writable_resources(
        self, store: ObjectStore
    ) -> None:
        store.set("/1/0/2", 10)
        store.set("/1/0/3", 20)

        store.write("/1/0", [rec("/1/0/1", 600), rec("/1/0/3", 30)], replace=True)

        assert store.get("/1/0/1") == 600
        assert store.get("/1/0/3") == 30
        assert not store.has("/1/0/2")
        # Mandatory and read-only resources stay.
        assert store.get("/1/0/7") == "U"
        assert store.get("/1/0/0") == 101

    def test_server_write_from_the_wire(self, store: ObjectStore) -> None:
        """A SenML CBOR and a TLV write as the server sends them."""
        cbor = encode_senml_cbor([rec("/50009/0/1", 90), rec("/50009/0/5", 2.5)])
        store.write("/50009/0", decode_senml_cbor(cbor), replace=False)
        tlv = encode_tlv([rec("/50009/0/2", 120), rec("/50009/0/6", False)],
                         P("/50009/0"))  # fmt: skip
        records = decode(tlv, ContentFormat.TLV, P("/50009/0"), store.type_of)
        store.write("/50009/0", records, replace=False)

        assert [store.get(f"/50009/0/{rid}") for rid in (1, 2, 5, 6)] == [
            90, 120, 2.5, False,
        ]  # fmt: skip
        values = {rid: store.get(f"/50009/0/{rid}") for rid in range(10)}
        config = config_from_values(values, DeviceConfig())  # type: ignore[arg-type]
        assert config.active_wait_timeout == 120

    def test_read_back_in_tlv(self, store: ObjectStore) -> None:
        records = store.read("/3/0")

        data = encode(records, ContentFormat.TLV, P("/3/0"), store.type_of)

        assert decode(data, ContentFormat.TLV, P("/3/0"), store.type_of) == records
        assert data.startswith(b"\xc8\x00\x18Nordic Semiconductor ASA")


class TestComposite:
    def test_read_composite_skips_missing_paths(self, store: ObjectStore) -> None:
        store.set("/3/0/13", 1700000000)

        records = store.read_composite(["/3/0/13", "/6", "/3303", "/3/0/9"])

        assert [str(r.path) for r in records] == [
            "/3/0/13", "/6/0/0", "/6/0/1", "/6/0/5",
        ]  # fmt: skip
        with pytest.raises(MethodNotAllowed):
            store.read_composite(["/3/0/4"])

    def test_write_composite_is_atomic_across_objects(self, store: ObjectStore) -> None:
        seen: dict[int, list[Record]] = {}
        store.on_write(50009, lambda records: seen.setdefault(50009, records))
        store.on_write(1, lambda records: seen.setdefault(1, records))

        store.write_composite([rec("/50009/0/1", 30), rec("/1/0/1", 600)])

        assert store.get("/50009/0/1") == 30 and store.get("/1/0/1") == 600
        assert seen == {50009: [rec("/50009/0/1", 30)], 1: [rec("/1/0/1", 600)]}
        before = store.snapshot()
        with pytest.raises(MethodNotAllowed, match="/3/0/0"):
            store.write_composite([rec("/50009/0/1", 31), rec("/3/0/0", "x")])
        with pytest.raises(NotFound, match="/3303/0"):
            store.write_composite([rec("/1/0/1", 601), rec("/3303/0/5750", "x")])
        with pytest.raises(BadRequest, match="twice"):
            store.write_composite([rec("/1/0/1", 601), rec("/1/0/1", 602)])
        assert store.snapshot() == before


class TestPayloads:
    def test_read_in_each_format(self, store: ObjectStore) -> None:
        store.set("/3/0/9", 80)
        expected = store.read("/3/0")

        for fmt in (ContentFormat.SENML_CBOR, ContentFormat.SENML_JSON,
                    ContentFormat.TLV):  # fmt: skip
            got, data = store.read_payload("/3/0", fmt)
            assert got is fmt
            assert decode(data, fmt, P("/3/0"), store.type_of) == expected
        assert store.read_payload("/3/0/9") == (
            ContentFormat.SENML_CBOR, encode_senml_cbor([rec("/3/0/9", 80)]),
        )  # fmt: skip
        assert store.read_payload("/3/0/9", 0) == (ContentFormat.TEXT, b"80")
        assert store.read_payload("/3/0/6/0", 60) == (ContentFormat.CBOR, b"\x01")

    @pytest.mark.parametrize(
        ("path", "accept", "message"),
        [
            ("/3/0", 0, "TEXT holds a single value"),
            ("/3/0/6", 0, "TEXT holds a single value"),
            ("/3/0/0", 42, "only an Opaque resource"),
            ("/3/0/0", 11543, "content format 11543"),
            ("/3/0/0", 50, "content format 50"),
        ],
    )
    def test_read_not_acceptable(
        self, store: ObjectStore, path: str, accept: int, message: str
    ) -> None:
        with pytest.raises(NotAcceptable, match=message) as info:
            store.read_payload(path, accept)

        assert info.value.code == "4.06"

    def test_write_in_each_format(self, store: ObjectStore) -> None:
        store.write_payload("/50009/0/1", 0, b"45", replace=True)
        store.write_payload("/50009/0/2", 60, b"\x18\x2d", replace=True)
        store.write_payload(
            "/50009/0",
            ContentFormat.SENML_JSON,
            b'[{"bn":"/50009/0/","n":"3","v":46},{"n":"0","vb":true}]',
            replace=False,
        )
        tlv = encode_tlv([rec("/50009/0/4", 47)], P("/50009/0"))
        store.write_payload("/50009/0", ContentFormat.TLV, tlv, replace=False)
        store.write_payload("/5/0/0", 42, b"\x00image", replace=True)

        assert [store.get(f"/50009/0/{rid}") for rid in range(5)] == [
            True, 45, 45, 46, 47,
        ]  # fmt: skip
        assert store.get("/5/0/0") == b"\x00image"

    @pytest.mark.parametrize(
        ("path", "fmt", "payload", "error", "code"),
        [
            ("/50009/0/1", 0, b"forty", BadRequest, "4.00"),
            ("/50009/0/1", 0, b"0", BadRequest, "4.00"),
            ("/50009/0", 112, b"\x81", BadRequest, "4.00"),
            ("/50009/0", 11542, b"\xc1\x01", BadRequest, "4.00"),
            ("/50009/0", 11543, b"{}", UnsupportedFormat, "4.15"),
            ("/50009/0", None, b"", UnsupportedFormat, "4.15"),
            ("/50009/0/77", 0, b"1", NotFound, "4.04"),
            ("/3/0/0", 0, b"x", MethodNotAllowed, "4.05"),
        ],
    )
    def test_write_errors(
        self,
        store: ObjectStore,
        path: str,
        fmt: int | None,
        payload: bytes,
        error: type[LwM2MError],
        code: str,
    ) -> None:
        before = store.snapshot()

        with pytest.raises(error) as info:
            store.write_payload(path, fmt, payload, replace=False)

        assert info.value.code == code
        assert path in str(info.value)
        assert store.snapshot() == before


class TestExecute:
    def test_hook_gets_the_argument(self, store: ObjectStore) -> None:
        calls: list[bytes] = []
        store.on_execute("/3/0/4", calls.append)

        store.execute("/3/0/4", b"0='x'")
        store.execute(P("/3/0/4"))

        assert calls == [b"0='x'", b""]

    @pytest.mark.parametrize(
        ("path", "error"),
        [
            ("/3/0/0", MethodNotAllowed), ("/3/0", MethodNotAllowed),
            ("/3/1/4", NotFound), ("/9/0/4", NotFound), ("/3/0/99", NotFound),
        ],
    )  # fmt: skip
    def test_errors(
        self, store: ObjectStore, path: str, error: type[LwM2MError]
    ) -> None:
        with pytest.raises(error):
            store.execute(path, b"")

    def test_hook_errors(self, store: ObjectStore) -> None:
        def refuse(argument: bytes) -> None:
            raise BadRequest("/5/0/2: no package")

        store.on_execute("/5/0/2", refuse)
        with pytest.raises(BadRequest, match="no package"):
            store.execute("/5/0/2")
        store.on_execute("/5/0/2", lambda argument: int("x"))
        with pytest.raises(InternalServerError, match="ValueError"):
            store.execute("/5/0/2")

    def test_argument_syntax(self) -> None:
        assert parse_execute_arguments(b"") == {}
        assert parse_execute_arguments(b"0='a b',1,5=''") == {0: "a b", 1: None, 5: ""}
        for bad in (b"10", b"0=a", b"0='a", b",", b"\xff"):
            with pytest.raises(BadRequest):
                parse_execute_arguments(bad)


class TestRegistration:
    def test_links_and_registration_payload(self, store: ObjectStore) -> None:
        assert store.links()[:4] == [P("/1/0"), P("/3/0"), P("/4/0"), P("/5/0")]
        assert P("/0/0") not in store.links()

        text = store.registration_links()

        assert text == (
            '</>;rt="oma.lwm2m";ct=112,</1>;ver=1.1,</1/0>,</3/0>,</4>;ver=1.3,'
            "</4/0>,</5/0>,</6/0>,</3303>;ver=1.1,</3304>;ver=1.1,"
            "</3323>;ver=1.1,</3347>;ver=1.1,</3347/0>,</3347/1>,</10256>,"
            "</33625>,</33626>,</50009/0>"
        )

    def test_a_store_of_chosen_objects(self) -> None:
        store = ObjectStore({oid: OBJECTS[oid] for oid in (1, 3, 50009)})
        store.create(3, 0)

        assert store.registration_links(None) == (
            '</>;rt="oma.lwm2m",</1>;ver=1.1,</3/0>,</50009>'
        )
        with pytest.raises(NotFound):
            store.read("/6")

    def test_snapshot_is_json(self, store: ObjectStore) -> None:
        store.set("/5/0/0", b"\x01\x02")
        store.set("/1/0/10", ObjLink(11, 0))

        snapshot = json.loads(json.dumps(store.snapshot()))

        assert snapshot["/3/0/0"] == "Nordic Semiconductor ASA"
        assert snapshot["/5/0/0"] == {"opaque": "0102", "length": 2}
        assert snapshot["/1/0/10"] == "11:0"
        assert snapshot["/3/0/6"] == {"0": 1}

    def test_error_classes_carry_codes(self) -> None:
        assert NotAcceptable("x").code == "4.06"
        assert UnsupportedFormat("x").code == "4.15"
        assert LwM2MError("x", "4.13").code == "4.13"


# --------------------------------------------------------------------------
# Properties

config_writes = st.lists(
    st.tuples(
        st.integers(0, 11),
        st.one_of(
            st.booleans(), st.integers(-5, 2**31 + 5), st.floats(allow_nan=True),
            st.text(max_size=3),
        ),
    ),
    max_size=6,
)  # fmt: skip


class TestProperties:
    @settings(max_examples=150, deadline=None)
    @given(writes=config_writes, replace=st.booleans())
    def test_a_write_applies_whole_or_not_at_all(
        self, writes: list[tuple[int, Any]], replace: bool
    ) -> None:
        store = ObjectStore()
        store.create(50009, 0, config_values(DeviceConfig()))
        before = store.snapshot()
        records = [rec(f"/50009/0/{rid}", value) for rid, value in writes]

        try:
            store.write("/50009/0", records, replace=replace)
        except LwM2MError as exc:
            assert exc.code in ("4.00", "4.04")
            assert store.snapshot() == before
        else:
            latest = dict(writes)
            for rid, value in latest.items():
                assert store.get(f"/50009/0/{rid}") == value
            assert len(latest) == len(writes)
