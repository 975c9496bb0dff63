"""The LwM2M codec: samples into objects, Send path lists, object 50009."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio.testing

from actors.data import DataActor
from actors.runtime import Bus
from protocols.base import Event, Module
from protocols.cloud import CloudConfigReceived, CloudConnected
from protocols.codec import (
    CodecNotSupported,
    ConfigEmpty,
    ConfigInvalid,
    LocationUnresolved,
    NotAConfigDocument,
    NothingToSend,
)
from protocols.config import DeviceConfig, NoData
from protocols.data import (
    DataCloudLocationDataSend,
    DataImpactDataSend,
    DataReady,
    DataSend,
    DataSendBatch,
    DataUiDataSend,
)
from protocols.json_data import Battery, Button, Impact
from protocols.lwm2m_codec import Lwm2mCodec, config_document
from protocols.lwm2m_formats import Path, Record
from protocols.lwm2m_objects import BadRequest, MethodNotAllowed, ObjectStore
from protocols.modem import (
    ModemDynamicData,
    ModemDynamicDataReady,
    ModemStaticData,
    NetworkMode,
)
from protocols.peripherals import (
    AgnssRequest,
    CellMeasurement,
    CloudLocationRequest,
    EnvironmentalData,
    GnssData,
    LocationGnssDataReady,
    NeighborCell,
    PgpsRequest,
    Pvt,
    SensorFuelGaugeReady,
    SensorMovementImpactDetected,
    UiButtonDataReady,
)

# A UNIX time in ms, and the same in s (the LwM2M Time resources).
T_MS = 1_700_000_123_456
T_S = 1_700_000_123

DEV = ModemStaticData(
    timestamp=T_MS,
    iccid="89450421180216216095",
    app_version="1.2.3",
    board_version="nrf9160dk_nrf9160",
    modem_fw="mfw_nrf9160_1.3.5",
    imei="352656100000010",
)
ROAM = ModemDynamicData(
    timestamp=T_MS,
    area_code=40401,
    cell_id=21679716,
    rsrp=-97,
    mcc=242,
    mnc=2,
    ip_address="10.81.183.99",
    apn="telenor.iot",
    mccmnc="24202",
    band=20,
    network_mode=NetworkMode.NB_IOT,
)
ENV = EnvironmentalData(
    timestamp=T_MS, temperature=23.5, humidity=50.25, pressure=100.5
)
GNSS = GnssData(
    pvt=Pvt(
        latitude=63.42, longitude=10.43, accuracy=4.5, altitude=170.5,
        altitude_accuracy=5.0, speed=1.5, speed_accuracy=1.0, heading=90.0,
        heading_accuracy=10.0,
    ),
    satellites_tracked=7,
    search_time=30000,
    timestamp=T_MS,
)  # fmt: skip
CELLS = CellMeasurement(
    mcc=242, mnc=1, cell_id=7, tac=33, earfcn=6400, timing_advance=80,
    rsrp=-90, rsrq=-10.0,
    neighbors=(
        NeighborCell(earfcn=6400, physical_cell_id=101, rsrp=-100, rsrq=-12.0),
        NeighborCell(earfcn=300, physical_cell_id=202, rsrp=-110, rsrq=-15.0),
    ),
)  # fmt: skip


@pytest.fixture
def codec() -> Lwm2mCodec:
    return Lwm2mCodec(ObjectStore())


def value(codec: Lwm2mCodec, path: str) -> Any:
    return codec.store.get(path)


# --------------------------------------------------------------------------
# Send path lists (wire.md §5.4) and the values behind them (§5.3)


def test_gnss_fix_is_object_6(codec: Lwm2mCodec) -> None:
    payload = codec.encode_regular(gnss=GNSS)
    assert payload.paths == ("/6",)
    assert payload.data == b""
    assert value(codec, "/6/0/0") == 63.42
    assert value(codec, "/6/0/1") == 10.43
    assert value(codec, "/6/0/2") == 170.5
    assert value(codec, "/6/0/3") == 4.5  # radius = accuracy, m
    assert value(codec, "/6/0/5") == T_S  # seconds
    assert value(codec, "/6/0/6") == 1.5  # m/s
    paths = {str(r.path) for r in codec.store.read(Path.parse("/6"))}
    assert "/6/0/4" not in paths  # velocity is not set


def test_dynamic_modem_data_is_current_time_and_object_4(codec: Lwm2mCodec) -> None:
    assert codec.encode_regular(roam=ROAM).paths == ("/3/0/13", "/4")
    assert value(codec, "/3/0/13") == T_S
    assert value(codec, "/4/0/0") == 7  # NB-IoT
    assert value(codec, "/4/0/1") == {0: 6, 1: 7}
    assert value(codec, "/4/0/2") == -97
    assert value(codec, "/4/0/4/0") == "10.81.183.99"
    assert value(codec, "/4/0/7/0") == "telenor.iot"
    assert (value(codec, "/4/0/8"), value(codec, "/4/0/9")) == (21679716, 2)
    assert (value(codec, "/4/0/10"), value(codec, "/4/0/12")) == (242, 40401)
    lte_m = Lwm2mCodec(ObjectStore())
    lte_m.encode_regular(roam=attrs_evolve(ROAM, network_mode=NetworkMode.LTE_M))
    assert value(lte_m, "/4/0/0") == 6


def attrs_evolve(item: Any, **changes: Any) -> Any:
    import attrs

    return attrs.evolve(item, **changes)


def test_static_modem_data_paths_in_firmware_order(codec: Lwm2mCodec) -> None:
    payload = codec.encode_regular(dev=DEV)
    assert payload.paths == ("/3/0/0", "/3/0/1", "/3/0/19", "/3/0/3", "/3/0/2")
    assert value(codec, "/3/0/0") == "Nordic Semiconductor ASA"
    assert value(codec, "/3/0/1") == "nrf9160dk_nrf9160"
    assert value(codec, "/3/0/2") == "352656100000010"
    assert value(codec, "/3/0/3") == "1.2.3"
    assert value(codec, "/3/0/19") == "mfw_nrf9160_1.3.5"


def test_battery_is_power_source_voltage(codec: Lwm2mCodec) -> None:
    assert codec.encode_regular(bat=Battery(87, T_MS)).paths == ("/3/0/7",)
    assert value(codec, "/3/0/7") == {0: 87}


def test_environment_values_units_and_ranges(codec: Lwm2mCodec) -> None:
    payload = codec.encode_regular(env=ENV)
    assert payload.paths == (
        "/3303/0/5518", "/3303/0/5700", "/3304/0/5518", "/3304/0/5700",
        "/3323/0/5518", "/3323/0/5700",
    )  # fmt: skip
    assert value(codec, "/3303/0/5700") == 23.5
    assert value(codec, "/3304/0/5700") == 50.25
    assert value(codec, "/3323/0/5700") == 100.5
    assert value(codec, "/3303/0/5518") == T_S
    assert [value(codec, f"/{o}/0/5701") for o in (3303, 3304, 3323)] == [
        "Celsius degrees", "%", "kPa",
    ]  # fmt: skip
    assert (value(codec, "/3323/0/5603"), value(codec, "/3323/0/5604")) == (30, 110)


def test_no_sensor_objects_without_the_sensors() -> None:
    codec = Lwm2mCodec(ObjectStore(), environmental=False)
    links = {str(path) for path in codec.store.links()}
    assert not {"/3303/0", "/3304/0", "/3323/0"} & links
    assert {"/3/0", "/4/0", "/6/0", "/50009/0"} <= links
    assert codec.encode_regular(env=ENV, bat=Battery(87, T_MS)).paths == ("/3/0/7",)


def test_button_press_counts_and_toggles(codec: Lwm2mCodec) -> None:
    assert codec.encode_ui(Button(2, T_MS)).paths == ("/3347",)
    codec.encode_ui(Button(2, T_MS + 5000))
    assert value(codec, "/3347/1/5501") == 2
    assert value(codec, "/3347/1/5500") is False
    assert value(codec, "/3347/1/5518") == T_S + 5
    assert value(codec, "/3347/1/5750") == "Push button 2"
    assert not codec.store.has("/3347/0/5501")
    # A third button gets an instance of its own rather than an error.
    codec.encode_ui(Button(3, T_MS))
    assert value(codec, "/3347/2/5750") == "Push button 3"
    assert value(codec, "/3347/2/5501") == 1
    with pytest.raises(ValueError, match="button 0"):
        codec.encode_ui(Button(0, T_MS))


def test_regular_update_holds_every_kind_in_one_send(codec: Lwm2mCodec) -> None:
    payload = codec.encode_regular(
        gnss=GNSS, roam=ROAM, dev=DEV, bat=Battery(50, T_MS), env=ENV,
        impact=Impact(3.5, T_MS),
    )  # fmt: skip
    assert payload.paths == (
        "/6", "/3/0/13", "/4", "/3/0/0", "/3/0/1", "/3/0/19", "/3/0/3", "/3/0/2",
        "/3/0/7", "/3303/0/5518", "/3303/0/5700", "/3304/0/5518", "/3304/0/5700",
        "/3323/0/5518", "/3323/0/5700",
    )  # fmt: skip
    with pytest.raises(NothingToSend):
        codec.encode_regular(impact=Impact(3.5, T_MS))  # impact: not on LwM2M


def test_agnss_request_paths_and_mask(codec: Lwm2mCodec) -> None:
    request = AgnssRequest(data_flags=0x01 | 0x08 | 0x10, sv_mask_ephe=1, sv_mask_alm=0)
    payload = codec.encode_agnss_request(request, ROAM)
    assert payload.paths == (
        "/33625/0/0", "/33625/0/1", "/4/0/8", "/4/0/9", "/4/0/10", "/4/0/2",
        "/4/0/12",
    )  # fmt: skip
    assert value(codec, "/33625/0/0") == 0
    # UTC (bit 0), ephemerides (1), TOW (5) and clock (6), location (7).
    assert value(codec, "/33625/0/1") == 0b1110_0011
    assert value(codec, "/4/0/8") == ROAM.cell_id
    with pytest.raises(NothingToSend):
        codec.encode_agnss_request(AgnssRequest(data_flags=0, sv_mask_ephe=0,
                                                sv_mask_alm=0), ROAM)  # fmt: skip
    with pytest.raises(NothingToSend):
        codec.encode_agnss_request(request, None)


def test_pgps_request_paths(codec: Lwm2mCodec) -> None:
    request = PgpsRequest(
        prediction_count=42, prediction_period_min=240, gps_day=0, gps_time_of_day=0
    )
    assert codec.encode_pgps_request(request).paths == (
        "/33625/0/0", "/33625/0/2", "/33625/0/3", "/33625/0/5",
    )  # fmt: skip
    assert value(codec, "/33625/0/0") == 1
    known = attrs_evolve(request, gps_day=17000, gps_time_of_day=3600)
    assert codec.encode_pgps_request(known).paths[-1] == "/33625/0/4"
    assert (value(codec, "/33625/0/4"), value(codec, "/33625/0/5")) == (17000, 3600)


def test_ground_fix_request(codec: Lwm2mCodec) -> None:
    request = CloudLocationRequest(cells=CELLS, wifi_access_points=(), timestamp=T_MS)
    payload = codec.encode_cloud_location(request)
    assert payload.paths == (
        "/33626/0/0", "/4/0/8", "/4/0/9", "/4/0/10", "/4/0/2", "/4/0/12", "/10256",
    )  # fmt: skip
    assert value(codec, "/33626/0/0") is True
    assert codec.store.instances(10256) == [0, 1]
    assert value(codec, "/10256/1/0") == 202
    assert value(codec, "/10256/1/2") == 300
    assert value(codec, "/10256/1/3") == -110
    # A later request with fewer neighbours leaves no stale instance.
    fewer = attrs_evolve(CELLS, neighbors=CELLS.neighbors[:1])
    codec.encode_cloud_location(attrs_evolve(request, cells=fewer))
    assert codec.store.instances(10256) == [0]
    with pytest.raises(NothingToSend):
        codec.encode_cloud_location(attrs_evolve(request, cells=None))


def test_ground_fix_answer(codec: Lwm2mCodec) -> None:
    store = codec.store
    with pytest.raises(LocationUnresolved):
        codec.decode_cloud_location(b"")  # result 0 but no location yet
    store.write(
        Path.parse("/33626/0"),
        [
            Record(Path.parse("/33626/0/2"), 63.5),
            Record(Path.parse("/33626/0/3"), 10.5),
            Record(Path.parse("/33626/0/4"), 250.0),
            Record(Path.parse("/33626/0/1"), 0),
        ],
        replace=False,
    )
    location = codec.decode_cloud_location(b"")
    assert (location.latitude, location.longitude, location.accuracy) == (
        63.5, 10.5, 250.0,
    )  # fmt: skip
    store.write(
        Path.parse("/33626/0"), [Record(Path.parse("/33626/0/1"), 1)], replace=False
    )
    with pytest.raises(LocationUnresolved, match="result code 1"):
        codec.decode_cloud_location(b"")


# --------------------------------------------------------------------------
# Object 50009 (wire.md §5.6)


def test_config_seeds_object_50009_both_ways() -> None:
    config = DeviceConfig(
        active_mode=False, location_timeout=60, active_wait_timeout=120,
        movement_resolution=30, movement_timeout=600,
        accelerometer_activity_threshold=2.5,
        accelerometer_inactivity_threshold=1.5,
        accelerometer_inactivity_timeout=30.0,
        no_data=NoData(gnss=True, neighbor_cell=False, wifi=True),
    )  # fmt: skip
    codec = Lwm2mCodec(ObjectStore(), config=config)
    values = {
        r.path.resource: r.value for r in codec.store.read(Path.parse("/50009/0"))
    }
    assert values == {
        0: True, 1: 60, 2: 120, 3: 30, 4: 600, 5: 2.5, 6: False, 7: True,
        8: 1.5, 9: 30.0,
    }  # fmt: skip
    # And back: the document of the object gives the same configuration;
    # the Wi-Fi flag, which has no resource, is kept from the current one.
    decoded = codec.decode_config(config_document(config), DeviceConfig())
    assert decoded == attrs_evolve(config, no_data=NoData(gnss=True))
    assert codec.decode_config(config_document(config), config) == config


def written(codec: Lwm2mCodec) -> list[bytes]:
    documents: list[bytes] = []
    codec.config_written = documents.append
    return documents


def write_50009(codec: Lwm2mCodec, **resources: Any) -> None:
    codec.store.write(
        Path.parse("/50009/0"),
        [Record(Path.parse(f"/50009/0/{rid[1:]}"), v) for rid, v in resources.items()],
        replace=False,
    )


def test_server_write_becomes_a_config_document(codec: Lwm2mCodec) -> None:
    documents = written(codec)
    write_50009(codec, r0=True, r2=60, r6=False)
    assert len(documents) == 1
    config = codec.decode_config(documents[0], DeviceConfig())
    assert config.active_mode is False
    assert config.active_wait_timeout == 60
    assert config.no_data.gnss is True
    assert config.location_timeout == 300  # untouched resources keep theirs


@pytest.mark.parametrize(
    ("resources", "match"),
    [
        ({"r2": 0}, "/50009/0/2"),
        ({"r1": -5, "r2": 60}, "/50009/0/1"),
        ({"r4": 2**31}, "/50009/0/4"),
        ({"r0": 1}, "/50009/0/0"),
        ({"r5": "fast"}, "/50009/0/5"),
    ],
)
def test_invalid_write_is_refused_whole(
    codec: Lwm2mCodec, resources: dict[str, Any], match: str
) -> None:
    documents = written(codec)
    before = codec.store.read(Path.parse("/50009/0"))
    with pytest.raises(BadRequest, match=match) as caught:
        write_50009(codec, **resources)
    assert caught.value.code == "4.00"
    assert codec.store.read(Path.parse("/50009/0")) == before
    assert documents == []


def test_config_report_syncs_the_object_and_sends_nothing(codec: Lwm2mCodec) -> None:
    applied = DeviceConfig(active_wait_timeout=42, active_mode=False)
    with pytest.raises(CodecNotSupported):
        codec.encode_config_report(applied)
    assert value(codec, "/50009/0/2") == 42
    assert value(codec, "/50009/0/0") is True


def test_decode_config_refuses_bad_documents(codec: Lwm2mCodec) -> None:
    with pytest.raises(NotAConfigDocument):
        codec.decode_config(b"\xff", DeviceConfig())
    with pytest.raises(NotAConfigDocument):
        codec.decode_config(b"[1]", DeviceConfig())
    with pytest.raises(ConfigEmpty):
        codec.decode_config(b"{}", DeviceConfig())
    with pytest.raises(ConfigInvalid, match="/50009/0/2"):
        codec.decode_config(json.dumps({"2": 0}).encode(), DeviceConfig())
    with pytest.raises(ConfigInvalid, match="/50009/0/12"):
        codec.decode_config(json.dumps({"12": 1}).encode(), DeviceConfig())


def test_a_read_only_resource_is_not_written(codec: Lwm2mCodec) -> None:
    with pytest.raises(MethodNotAllowed):
        codec.store.write(
            Path.parse("/3/0"),
            [Record(Path.parse("/3/0/0"), "Evil Corp")],
            replace=False,
        )
    assert value(codec, "/3/0/0") == "Nordic Semiconductor ASA"


# --------------------------------------------------------------------------
# The data actor with the LwM2M codec


async def test_data_actor_sends_paths_not_documents(nursery: trio.Nursery) -> None:
    bus = Bus()
    seen: list[Event] = []
    codec = Lwm2mCodec(ObjectStore())
    t0 = trio.current_time()
    data = DataActor(
        bus,
        codec=codec,
        flavour=None,
        clock=lambda: 1_700_000_000 + trio.current_time() - t0,
    )
    bus.taps.append(lambda e: seen.append(e) if e.source is Module.DATA else None)
    await nursery.start(data.run)

    data.deliver(CloudConnected())
    data.deliver(ModemDynamicDataReady(attrs_evolve(ROAM, timestamp=0)))
    data.deliver(LocationGnssDataReady(attrs_evolve(GNSS, timestamp=0)))
    data.deliver(SensorFuelGaugeReady(timestamp=0, battery_level=77))
    data.deliver(SensorMovementImpactDetected(magnitude=5.0, timestamp=0))
    data.deliver(DataReady())
    await trio.testing.wait_all_tasks_blocked()
    data.deliver(UiButtonDataReady(button_number=1, timestamp=0))
    await trio.testing.wait_all_tasks_blocked()
    # Two fixes, one DATA_READY (each late fix raises one too): the older
    # fix stays queued, as there is no batch on LwM2M.
    data.deliver(LocationGnssDataReady(attrs_evolve(GNSS, timestamp=1500)))
    data.deliver(LocationGnssDataReady(attrs_evolve(GNSS, timestamp=2500)))
    await trio.testing.wait_all_tasks_blocked()
    data.deliver(CloudConfigReceived(DeviceConfig(active_wait_timeout=77)))
    await trio.testing.wait_all_tasks_blocked()

    sends = [e for e in seen if isinstance(e, DataSend)]
    assert [s.payload.paths for s in sends] == [
        ("/6", "/3/0/13", "/4", "/3/0/7"),
        ("/6",),
    ]
    assert all(s.payload.data == b"" for s in sends)
    ui = [e for e in seen if isinstance(e, DataUiDataSend)]
    assert [u.payload.paths for u in ui] == [("/3347",)]
    assert not [e for e in seen if isinstance(e, DataSendBatch | DataImpactDataSend)]
    assert not [e for e in seen if isinstance(e, DataCloudLocationDataSend)]
    assert codec.store.get("/3/0/7") == {0: 77}
    assert codec.store.get("/6/0/5") == 1_700_000_002
    assert data.buffers.gnss.queued_count == 1
    # The applied configuration is mirrored into 50009, and no report sent.
    assert codec.store.get("/50009/0/2") == 77
