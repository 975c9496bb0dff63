"""The data actor's ring buffers, sample-request tracking and encoding."""

from __future__ import annotations

import errno
import json
from typing import Any

import attrs
import pytest
import trio

from actors.data import DataActor
from actors.ringbuffer import BufferSizes, RingBuffer
from actors.runtime import Bus
from protocols.app import AppData, AppDataGet
from protocols.base import Event, Module
from protocols.cloud import CloudConnected, CloudDisconnected
from protocols.data import (
    DataCloudLocationDataSend,
    DataDateTimeObtained,
    DataError,
    DataImpactDataSend,
    DataReady,
    DataSend,
    DataSendBatch,
    DataUiDataSend,
)
from protocols.json_codec import Flavour, JsonCodec
from protocols.modem import (
    ModemDynamicData,
    ModemDynamicDataReady,
    ModemStaticData,
    ModemStaticDataReady,
    NetworkMode,
)
from protocols.peripherals import (
    CellMeasurement,
    CloudLocationRequest,
    EnvironmentalData,
    GnssData,
    LocationCloudLocationDataReady,
    LocationDataNotReady,
    LocationGnssDataReady,
    Pvt,
    SensorEnvironmentalDataReady,
    SensorFuelGaugeNotSupported,
    SensorFuelGaugeReady,
    SensorMovementImpactDetected,
    UiButtonDataReady,
)

# The wall clock at uptime 0, in UNIX seconds and milliseconds.
WALL = 1_700_000_000
WALL_MS = WALL * 1000

ALL_KINDS = (
    AppData.LOCATION,
    AppData.MODEM_STATIC,
    AppData.MODEM_DYNAMIC,
    AppData.ENVIRONMENTAL,
    AppData.BATTERY,
)
BATTERY_AND_LOCATION = (AppData.BATTERY, AppData.LOCATION)


# --------------------------------------------------------------------------
# Helpers


class Rig:
    """A data actor on its own bus, and the time-stamped list of its events."""

    def __init__(self, data: DataActor, seen: list[tuple[float, Event]]) -> None:
        self.data = data
        self.seen = seen

    def uptime(self) -> int:
        """The data actor's uptime now, in ms."""
        return self.data.uptime_ms()

    def events(self, kind: type[Event] | None = None) -> list[Event]:
        """Everything published, or only events of ``kind``."""
        return [e for _, e in self.seen if kind is None or isinstance(e, kind)]

    def times(self, kind: type[Event]) -> list[float]:
        """When each event of ``kind`` was published."""
        return [t for t, e in self.seen if isinstance(e, kind)]

    def documents(self, kind: type[Event]) -> list[Any]:
        """The decoded JSON payload of each event of ``kind``."""
        payloads = [getattr(e, "payload") for e in self.events(kind)]  # noqa: B009
        return [json.loads(payload.data) for payload in payloads]

    def sample_all(self, cycle: int) -> None:
        """Deliver one sample of every buffered kind, stamped now."""
        ts = self.uptime()
        self.data.deliver(LocationGnssDataReady(gnss(ts, cycle)))
        self.data.deliver(ModemStaticDataReady(static(ts)))
        self.data.deliver(ModemDynamicDataReady(dynamic(ts, cycle)))
        self.data.deliver(SensorEnvironmentalDataReady(env(ts, cycle)))
        self.data.deliver(SensorFuelGaugeReady(timestamp=ts, battery_level=cycle))


async def start_data(nursery: trio.Nursery, **kwargs: Any) -> Rig:
    """Start a data actor whose wall clock reads WALL at its uptime 0."""
    bus = Bus()
    seen: list[tuple[float, Event]] = []
    t0 = trio.current_time()
    kwargs.setdefault("clock", lambda: WALL + trio.current_time() - t0)
    data = DataActor(bus, codec=JsonCodec(), **kwargs)
    bus.taps.append(
        lambda e: seen.append((trio.current_time(), e))
        if e.source is Module.DATA
        else None
    )
    await nursery.start(data.run)
    return Rig(data, seen)


def gnss(ts: int, n: int) -> GnssData:
    pvt = Pvt(
        latitude=63.0 + n / 100, longitude=10.25, accuracy=5.0, altitude=20.0,
        altitude_accuracy=1.0, speed=0.5, speed_accuracy=1.0, heading=90.0,
        heading_accuracy=10.0,
    )  # fmt: skip
    return GnssData(pvt=pvt, satellites_tracked=6, search_time=20000, timestamp=ts)


def env(ts: int, n: int) -> EnvironmentalData:
    return EnvironmentalData(
        timestamp=ts, temperature=20 + n, humidity=40.5, pressure=101.25
    )


def dynamic(ts: int, n: int) -> ModemDynamicData:
    return ModemDynamicData(
        timestamp=ts, area_code=2305, cell_id=34237196 + n, rsrp=-97, mcc=242,
        mnc=1, ip_address="10.81.183.99", apn="telenor", mccmnc="24201", band=20,
        network_mode=NetworkMode.LTE_M,
    )  # fmt: skip


def static(ts: int) -> ModemStaticData:
    return ModemStaticData(
        timestamp=ts, iccid="89450421180216216095", app_version="0.0.0-dev",
        board_version="thingy91_nrf9160", modem_fw="mfw_nrf9160_1.3.5",
        imei="352656106111232",
    )  # fmt: skip


def cells(ts: int) -> CloudLocationRequest:
    serving = CellMeasurement(
        mcc=242, mnc=1, cell_id=34237196, tac=2305, earfcn=6400,
        timing_advance=80, rsrp=-97, rsrq=-9.0,
    )  # fmt: skip
    return CloudLocationRequest(cells=serving, wifi_access_points=(), timestamp=ts)


# --------------------------------------------------------------------------
# The ring


class TestRingBuffer:
    def test_head_moves_before_the_write_and_wraps(self) -> None:
        """The first entry lands in slot 1; a fourth of three overwrites the oldest."""
        ring = RingBuffer[int](3, "x")

        lost = [ring.add(n) for n in (1, 2, 3, 4)]

        assert ring.head == 1
        assert ring.latest() == 4
        assert ring.queued() == [2, 3, 4]
        assert lost == [False, False, False, True]
        assert (ring.written, ring.overwritten) == (4, 1)

    def test_take_latest_marks_sent_and_batch_skips_it(self) -> None:
        """The newest taken for a regular update never reappears in the batch."""
        ring = RingBuffer[int](3)
        for n in (1, 2, 3):
            ring.add(n)

        newest = ring.take_latest()
        batch = ring.take_queued()

        assert (newest, batch) == (3, [1, 2])
        assert ring.latest() is None
        assert ring.take_queued() == []
        assert len(ring) == 3

    def test_overwriting_a_sent_entry_is_not_a_loss(self) -> None:
        """Only entries overwritten while still queued are counted."""
        ring = RingBuffer[int](2)
        ring.add(1)
        ring.add(2)
        ring.take_queued()

        lost = [ring.add(n) for n in (3, 4, 5)]

        assert lost == [False, False, True]
        assert ring.overwritten == 1
        assert ring.queued() == [4, 5]

    def test_size_is_checked_against_the_kconfig_range(self) -> None:
        """Sizes 0 and 101 are refused; a cloud-location buffer stays single."""
        with pytest.raises(ValueError, match="outside 1..100"):
            RingBuffer[int](0)
        with pytest.raises(ValueError, match="outside 1..100"):
            RingBuffer[int](101)
        with pytest.raises(ValueError, match="single value"):
            BufferSizes(cloud_location=2)


# --------------------------------------------------------------------------
# Sample requests


class TestSampleRequests:
    async def test_all_reports_in_gives_data_ready_at_once(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """With every requested kind in, DATA_READY does not wait for the deadline."""
        rig = await start_data(nursery)
        await trio.sleep(10)

        rig.data.deliver(AppDataGet(data_list=ALL_KINDS[:3], timeout=2))
        await trio.sleep(0.5)
        ts = rig.uptime()
        rig.data.deliver(LocationGnssDataReady(gnss(ts, 0)))
        rig.data.deliver(ModemStaticDataReady(static(ts)))
        rig.data.deliver(ModemDynamicDataReady(dynamic(ts, 0)))
        await trio.sleep(60)

        assert rig.times(DataReady) == [10.5]
        assert not rig.data.data_send_work.pending

    async def test_deadline_gives_data_ready_at_exactly_the_timeout(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """A kind that never reports holds DATA_READY until t + timeout, not longer."""
        rig = await start_data(nursery)
        await trio.sleep(100)

        rig.data.deliver(AppDataGet(data_list=BATTERY_AND_LOCATION, timeout=2))
        await trio.sleep(0.25)
        rig.data.deliver(SensorFuelGaugeNotSupported())
        await trio.sleep(60)

        assert rig.times(DataReady) == [102.0]

    async def test_late_location_gets_its_own_data_ready(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """A location after the deadline fires again; a late battery does not."""
        rig = await start_data(nursery)
        rig.data.deliver(AppDataGet(data_list=BATTERY_AND_LOCATION, timeout=2))
        await trio.sleep(1)
        rig.data.deliver(SensorFuelGaugeReady(timestamp=rig.uptime(), battery_level=80))
        await trio.sleep(5)

        rig.data.deliver(LocationDataNotReady())
        await trio.sleep(4)
        rig.data.deliver(SensorFuelGaugeReady(timestamp=rig.uptime(), battery_level=79))
        await trio.sleep(10)

        assert rig.times(DataReady) == [2.0, 6.0]
        assert rig.data.counters["late_location"] == 1

    async def test_a_new_request_rearms_the_deadline(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """A second DATA_GET replaces the first list and restarts the timer."""
        rig = await start_data(nursery)

        rig.data.deliver(AppDataGet(data_list=(AppData.LOCATION,), timeout=30))
        await trio.sleep(10)
        rig.data.deliver(AppDataGet(data_list=(AppData.BATTERY,), timeout=30))
        await trio.sleep(60)

        assert rig.times(DataReady) == [40.0]


# --------------------------------------------------------------------------
# Encoding while connected


class TestEncoding:
    async def test_cloud_location_then_newest_then_older(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """DATA_READY sends cells, the newest of each buffer, then the older entries."""
        rig = await start_data(nursery)
        await trio.sleep(300)
        rig.sample_all(1)
        await trio.sleep(300)
        rig.sample_all(2)
        await trio.sleep(300)
        rig.data.deliver(CloudConnected())

        rig.data.deliver(AppDataGet(data_list=ALL_KINDS, timeout=120))
        await trio.sleep(1)
        ts = rig.uptime()
        rig.data.deliver(LocationCloudLocationDataReady(cells(ts)))
        rig.data.deliver(ModemStaticDataReady(static(ts)))
        rig.data.deliver(ModemDynamicDataReady(dynamic(ts, 3)))
        rig.data.deliver(SensorEnvironmentalDataReady(env(ts, 3)))
        rig.data.deliver(SensorFuelGaugeReady(timestamp=ts, battery_level=3))
        await trio.sleep(10)

        sends = [e for e in rig.events() if not isinstance(e, DataReady)]
        assert [type(e) for e in sends] == [
            DataCloudLocationDataSend, DataSend, DataSendBatch,
        ]  # fmt: skip
        [location] = rig.documents(DataCloudLocationDataSend)
        assert location["lte"]["cell"] == 34237196
        assert location["lte"]["ts"] == WALL_MS + 901_000
        reported = rig.documents(DataSend)[-1]["state"]["reported"]
        assert list(reported) == ["dev", "roam", "gnss", "env", "bat"]
        assert reported["roam"]["v"]["cell"] == 34237199
        assert reported["roam"]["ts"] == WALL_MS + 901_000
        assert reported["env"] == {
            "v": {"temp": 23, "hum": 40.5, "atmp": 101.25}, "ts": WALL_MS + 901_000,
        }  # fmt: skip
        assert reported["bat"] == {"v": 3, "ts": WALL_MS + 901_000}
        # The GNSS fix of cycle 2 is the newest fix: this request got cells.
        assert reported["gnss"]["v"]["lat"] == 63.02
        assert reported["gnss"]["ts"] == WALL_MS + 600_000
        [batch] = rig.documents(DataSendBatch)
        assert list(batch) == ["roam", "gnss", "env", "bat"]
        assert [s["v"]["cell"] for s in batch["roam"]] == [34237197, 34237198]
        assert [s["v"]["lat"] for s in batch["gnss"]] == [63.01]
        assert [s["v"]["temp"] for s in batch["env"]] == [21, 22]
        assert batch["bat"] == [
            {"v": 1, "ts": WALL_MS + 300_000}, {"v": 2, "ts": WALL_MS + 600_000},
        ]  # fmt: skip

    async def test_nothing_is_sent_twice(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """A second DATA_READY sends only what arrived since the first."""
        rig = await start_data(nursery)
        rig.data.deliver(CloudConnected())
        rig.sample_all(1)
        rig.data.deliver(DataReady())
        await trio.sleep(300)

        rig.data.deliver(DataReady())
        await trio.sleep(300)
        rig.data.deliver(SensorFuelGaugeReady(timestamp=rig.uptime(), battery_level=55))
        rig.data.deliver(DataReady())
        await trio.sleep(1)

        assert len(rig.events(DataSend)) == 2
        assert rig.events(DataSendBatch) == []
        assert rig.documents(DataSend)[-1] == {
            "state": {"reported": {"bat": {"v": 55, "ts": WALL_MS + 600_000}}}
        }

    async def test_invalid_date_time_defers_until_obtained(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """Without valid time nothing is encoded; everything waits, nothing is lost."""
        rig = await start_data(nursery, date_time_valid=False)
        rig.data.deliver(CloudConnected())
        rig.sample_all(1)
        rig.data.deliver(DataReady())
        await trio.sleep(1)
        before = list(rig.events())

        rig.data.date_time_obtained()
        rig.data.date_time_obtained()
        rig.data.deliver(DataReady())
        await trio.sleep(1)

        assert not any(isinstance(e, DataSend) for e in before)
        # The unrequested GNSS fix raised a DATA_READY of its own (late location).
        assert rig.data.counters["encode_deferred_no_time"] == 2
        assert len(rig.events(DataDateTimeObtained)) == 1
        reported = rig.documents(DataSend)[0]["state"]["reported"]
        assert list(reported) == ["dev", "roam", "gnss", "env", "bat"]

    async def test_azure_is_flat_and_no_flavour_encodes_nothing(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """Azure reports flat properties; a cloud without JSON data keeps all queued."""
        azure = await start_data(nursery, flavour=Flavour.AZURE)
        silent = await start_data(nursery, flavour=None)
        for rig in (azure, silent):
            rig.data.deliver(CloudConnected())
            rig.data.deliver(SensorFuelGaugeReady(timestamp=0, battery_level=9))
            rig.data.deliver(DataReady())

        await trio.sleep(1)

        assert azure.documents(DataSend) == [{"bat": {"v": 9, "ts": WALL_MS}}]
        assert silent.events(DataSend) == []
        assert silent.data.buffers.battery.queued_count == 1


# --------------------------------------------------------------------------
# Offline


class TestOffline:
    async def test_hours_offline_keep_the_newest_and_count_the_rest(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """36 cycles offline fill every ring; reconnecting sends exactly the rest."""
        rig = await start_data(nursery)
        for cycle in range(36):
            rig.data.deliver(AppDataGet(data_list=ALL_KINDS, timeout=120))
            await trio.sleep(5)
            rig.sample_all(cycle)
            await trio.sleep(295)
        buffers = rig.data.buffers

        rig.data.deliver(CloudConnected())
        rig.data.deliver(DataReady())
        await trio.sleep(1)

        assert rig.times(DataReady)[:2] == [5.0, 305.0]
        assert len(rig.times(DataReady)) == 36
        fill = {name: len(ring) for name, ring in buffers.rings().items()}
        assert fill == {
            "gnss": 10, "sensors": 10, "modem_dynamic": 3, "ui": 0, "impact": 0,
            "battery": 3, "modem_static": 1, "cloud_location": 0,
        }  # fmt: skip
        counters = rig.data.counters
        assert counters["gnss_overwritten"] == 26
        assert counters["sensors_overwritten"] == 26
        assert counters["modem_dynamic_overwritten"] == 33
        assert counters["battery_overwritten"] == 33
        assert counters["modem_static_overwritten"] == 35
        reported = rig.documents(DataSend)[0]["state"]["reported"]
        newest = WALL_MS + (35 * 300 + 5) * 1000
        assert {key: sample["ts"] for key, sample in reported.items()} == dict.fromkeys(
            ["dev", "roam", "gnss", "env", "bat"], newest
        )
        batch = rig.documents(DataSendBatch)[0]
        stamps = {k: [(s["ts"] - WALL_MS) // 1000 for s in v] for k, v in batch.items()}
        assert stamps == {
            "roam": [33 * 300 + 5, 34 * 300 + 5],
            "gnss": [c * 300 + 5 for c in range(26, 35)],
            "env": [c * 300 + 5 for c in range(26, 35)],
            "bat": [33 * 300 + 5, 34 * 300 + 5],
        }
        assert all(ring.queued_count == 0 for ring in buffers.rings().values())

    async def test_button_sent_at_once_when_connected_else_with_the_data(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """Online a press is a message; offline the newest goes regular, older batch."""
        rig = await start_data(nursery)
        rig.data.deliver(CloudConnected())
        rig.data.deliver(UiButtonDataReady(button_number=1, timestamp=1000))
        await trio.sleep(10)
        rig.data.deliver(CloudDisconnected())
        rig.data.deliver(UiButtonDataReady(button_number=2, timestamp=20_000))
        rig.data.deliver(UiButtonDataReady(button_number=1, timestamp=30_000))
        await trio.sleep(10)
        sent_offline = list(rig.events(DataUiDataSend))

        rig.data.deliver(CloudConnected())
        rig.data.deliver(DataReady())
        await trio.sleep(1)

        assert rig.documents(DataUiDataSend) == [
            {"btn": {"v": 1, "ts": WALL_MS + 1000}}
        ]
        assert len(sent_offline) == 1
        assert rig.documents(DataSend) == [
            {"state": {"reported": {"btn": {"v": 1, "ts": WALL_MS + 30_000}}}}
        ]
        assert rig.documents(DataSendBatch) == [
            {"btn": [{"v": 2, "ts": WALL_MS + 20_000}]}
        ]

    async def test_impact_sent_at_once_when_connected_else_the_newest_waits(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """Impacts behave as presses; the one-entry ring counts the impact it lost."""
        rig = await start_data(nursery)
        rig.data.deliver(CloudConnected())
        rig.data.deliver(SensorMovementImpactDetected(timestamp=500, magnitude=3.5))
        await trio.sleep(10)
        rig.data.deliver(CloudDisconnected())
        rig.data.deliver(SensorMovementImpactDetected(timestamp=20_000, magnitude=6.0))
        rig.data.deliver(SensorMovementImpactDetected(timestamp=30_000, magnitude=8.25))
        await trio.sleep(10)

        rig.data.deliver(CloudConnected())
        rig.data.deliver(DataReady())
        await trio.sleep(1)

        assert rig.documents(DataImpactDataSend) == [
            {"impact": {"v": 3.5, "ts": WALL_MS + 500}}
        ]
        assert rig.documents(DataSend) == [
            {"state": {"reported": {"impact": {"v": 8.25, "ts": WALL_MS + 30_000}}}}
        ]
        assert rig.events(DataSendBatch) == []
        assert rig.data.counters["impact_overwritten"] == 1

    async def test_unencodable_entry_raises_the_module_error(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """A non-numeric mccmnc aborts the encode with DATA_EVT_ERROR; data stays."""
        rig = await start_data(nursery)
        rig.data.deliver(CloudConnected())
        bad = attrs.evolve(dynamic(0, 0), mccmnc="24x01")

        rig.data.deliver(ModemDynamicDataReady(bad))
        rig.data.deliver(DataReady())
        await trio.sleep(1)

        assert [e.err for e in rig.events(DataError)] == [-errno.EINVAL]
        assert rig.events(DataSend) == []
        assert rig.data.buffers.modem_dynamic.queued_count == 1
        assert rig.data.counters["encode_errors"] == 1
