"""Routes and the simulated location, sensor and UI actors, in virtual time.

Each actor runs on a bare bus; a tap records every published event with the
virtual time it was published at, and the tests publish the other modules'
events themselves.  Times are relative to the actor's first start.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Generic, TypeVar

import attrs
import pytest
import trio

from actors.route import (
    DEFAULT_SPEED,
    Route,
    RouteError,
    RoutePoint,
    default_route,
    distance,
    parse_gpx,
    parse_nmea,
    parse_route,
)
from actors.runtime import Actor, Bus
from actors.sources import (
    AGNSS_COLD_START,
    CELL_SEARCH_TIME,
    GNSS_TIMEOUT,
    LocationActor,
    Movement,
    SensorActor,
    SimulatedGnss,
    SimulatedSensors,
    UiActor,
)
from protocols.app import AppData, AppDataGet, ShutdownReason, UtilShutdownRequest
from protocols.base import Event
from protocols.config import DeviceConfig, NoData
from protocols.data import DataConfigInit, DataConfigReady
from protocols.peripherals import (
    LocationAgnssNeeded,
    LocationCloudLocationDataReady,
    LocationGnssDataReady,
    LocationTimeout,
    SensorEnvironmentalDataReady,
    SensorFuelGaugeReady,
    SensorMovementImpactDetected,
    UiButtonDataReady,
)

SHUTDOWN: Final = UtilShutdownRequest(ShutdownReason.GENERIC)
LOCATION: Final = AppDataGet(data_list=(AppData.LOCATION,), timeout=60)
SENSORS: Final = AppDataGet(
    data_list=(AppData.ENVIRONMENTAL, AppData.BATTERY), timeout=2
)
SEED: Final = 11

GPX: Final = """<?xml version="1.0" encoding="UTF-8"?>
<gpx version="1.1" creator="test" xmlns="http://www.topografix.com/GPX/1/1">
  <trk><name>walk</name><trkseg>
    <trkpt lat="63.4300" lon="10.3900"><ele>10</ele>
      <time>2024-05-01T12:00:00Z</time></trkpt>
    <trkpt lat="63.4310" lon="10.3900"><ele>20</ele>
      <time>2024-05-01T12:00:10Z</time></trkpt>
    <trkpt lat="63.4310" lon="10.3920"><ele>30</ele>
      <time>2024-05-01T12:00:30Z</time></trkpt>
  </trkseg></trk>
</gpx>
"""

NMEA: Final = """\
$GPGSV,3,1,11,03,03,111,00,04,15,270,00,06,01,010,00,13,06,292,00*74
$GPRMC,120000.00,A,6325.800,N,01023.400,E,0.0,0.0,010524,,,A*51
$GPGGA,120000.00,6325.800,N,01023.400,E,1,08,0.9,12.5,M,39.0,M,,*5C
$GPRMC,120005.00,V,,,,,,,010524,,,N*79
$GPRMC,120010.00,A,6325.860,N,01023.400,E,11.1,0.0,010524,,,A*67
"""

E = TypeVar("E", bound=Event)
A = TypeVar("A", bound=Actor)


def _nmea(body: str) -> str:
    checksum = 0
    for char in body:
        checksum ^= ord(char)
    return f"${body}*{checksum:02X}"


@attrs.define(eq=False)
class Harness(Generic[A]):
    """An actor on a bus, with every published event and its time recorded."""

    bus: Bus
    actor: A
    seen: list[tuple[float, Event]]
    t0: float = 0.0
    run_scope: trio.CancelScope | None = None

    def events(self) -> list[tuple[float, str]]:
        """The actor's events, with the virtual time since start of each."""
        return [
            (round(t - self.t0, 6), event.spec_name)
            for t, event in self.seen
            if event.source is self.actor.module  # type: ignore[attr-defined]
        ]

    def of_type(self, kind: type[E]) -> list[E]:
        """Every published event of class ``kind``."""
        return [event for _, event in self.seen if isinstance(event, kind)]

    async def publish_at(self, when: float, event: Event) -> None:
        """Publish ``event`` ``when`` seconds after the actor started."""
        await trio.sleep_until(self.t0 + when)
        self.bus.publish(event)

    async def start(self, nursery: trio.Nursery) -> trio.CancelScope:
        """Run the actor; the scope returned stops that run."""
        run_scope = trio.CancelScope()

        async def run_until_cancelled(
            *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
        ) -> None:
            with run_scope:
                actor: Actor = self.actor  # type: ignore[assignment]
                await actor.run(task_status=task_status)

        await nursery.start(run_until_cancelled)
        self.run_scope = run_scope
        return run_scope


async def start(nursery: trio.Nursery, make: Callable[[Bus], A]) -> Harness[A]:
    """Build an actor with ``make`` on a fresh bus and start it."""
    bus = Bus()
    seen: list[tuple[float, Event]] = []
    bus.taps.append(lambda event: seen.append((trio.current_time(), event)))
    harness = Harness(bus, make(bus), seen, trio.current_time())
    await harness.start(nursery)
    return harness


def first_search_time(seed: int = SEED) -> float:
    """The search time the first GNSS search draws with ``seed``."""
    return SimulatedGnss(seed=seed).start_search().search_time


def config(**no_data: bool) -> DataConfigInit:
    """A configuration whose ``nod`` list removes the methods given."""
    return DataConfigInit(DeviceConfig(no_data=NoData(**no_data)))


# -- routes ------------------------------------------------------------------


class TestGpx:
    def test_points_and_times(self) -> None:
        """Track points keep their order, altitude and relative times."""
        route = parse_gpx(GPX)

        times = [p.time for p in route.points]

        assert [(p.latitude, p.longitude, p.altitude) for p in route.points] == [
            (63.43, 10.39, 10.0),
            (63.431, 10.39, 20.0),
            (63.431, 10.392, 30.0),
        ]
        assert [t - times[0] for t in times] == [0, 10, 30]  # type: ignore[operator]

    def test_interpolates_at_the_timestamps(self) -> None:
        """Between two points the position, altitude and speed follow the clock."""
        route = parse_gpx(GPX)
        leg = distance(route.points[0], route.points[1])

        halfway = route.position_at(5)
        second = route.position_at(10)

        assert halfway.latitude == pytest.approx(63.4305)
        assert halfway.altitude == pytest.approx(15.0)
        assert halfway.speed == pytest.approx(leg / 10)
        assert halfway.heading == pytest.approx(0.0, abs=1e-6)
        assert (second.latitude, second.longitude) == pytest.approx((63.431, 10.39))
        assert 85 < route.position_at(20).heading < 95

    def test_missing_attribute_names_line_and_point(self) -> None:
        """A ``trkpt`` without ``lon`` is reported with its line and number."""
        text = GPX.replace('<trkpt lat="63.4310" lon="10.3920">', '<trkpt lat="1">')

        with pytest.raises(RouteError) as info:
            parse_gpx(text)

        assert str(info.value) == "line 8, <trkpt> #3: missing attribute 'lon'"

    def test_bad_time_names_line(self) -> None:
        """An unreadable ``<time>`` is reported with the point's line."""
        text = GPX.replace("2024-05-01T12:00:10Z", "noon")

        with pytest.raises(RouteError, match=r"line 6, <trkpt> #2: bad <time> 'noon'"):
            parse_gpx(text)

    def test_bad_number_and_malformed_xml(self) -> None:
        """Bad numbers and broken XML name the line (and the column)."""
        bad_ele = GPX.replace("<ele>20</ele>", "<ele>high</ele>")
        broken = GPX.replace("</trkseg>", "</trksegment>")

        with pytest.raises(RouteError, match=r"line 6, <trkpt> #2: bad <ele> 'high'"):
            parse_gpx(bad_ele)
        with pytest.raises(RouteError, match=r"line 10, column \d+: malformed GPX"):
            parse_gpx(broken)

    def test_no_points_and_backwards_time(self) -> None:
        """An empty track and a clock going backwards are refused."""
        backwards = GPX.replace("12:00:30Z", "11:59:00Z")

        with pytest.raises(RouteError, match="no <trkpt>"):
            parse_gpx('<gpx version="1.1"><trk/></gpx>')
        with pytest.raises(RouteError, match="GPX: point 2: time goes backwards"):
            parse_gpx(backwards)


class TestNmea:
    def test_rmc_and_gga_make_points(self) -> None:
        """RMC and GGA of one time merge; void fixes and GSV are skipped."""
        route = parse_nmea(NMEA)

        points = route.points

        assert len(points) == 2
        assert points[0].latitude == pytest.approx(63 + 25.8 / 60)
        assert points[0].longitude == pytest.approx(10 + 23.4 / 60)
        assert points[0].altitude == 12.5
        assert points[1].time - points[0].time == 10  # type: ignore[operator]
        assert parse_route(NMEA) == route

    def test_southern_and_western_hemispheres(self) -> None:
        """S and W give negative coordinates; the talker may be GN."""
        text = _nmea("GNGGA,000001,3352.000,S,15112.000,W,1,08,0.9,5.0,M,,M,,")

        point = parse_nmea(text).points[0]

        assert point.latitude == pytest.approx(-(33 + 52 / 60))
        assert point.longitude == pytest.approx(-(151 + 12 / 60))

    def test_midnight_rollover(self) -> None:
        """A time of day smaller than the previous one is the next day."""
        text = "\n".join(
            [
                _nmea("GPRMC,235955,A,6325.800,N,01023.400,E,0,0,010524,,"),
                _nmea("GPRMC,000005,A,6325.900,N,01023.400,E,0,0,020524,,"),
            ]
        )

        points = parse_nmea(text).points

        assert points[1].time - points[0].time == 10  # type: ignore[operator]

    def test_bad_checksum_names_line(self) -> None:
        """A checksum mismatch names the line and both sums."""
        text = NMEA.replace("*5C\n", "*5D\n")

        with pytest.raises(RouteError, match=r"line 3: checksum 5D does not match 5C"):
            parse_nmea(text)

    def test_bad_field_names_line_and_sentence(self) -> None:
        """An unreadable latitude names the line and the sentence."""
        text = "\n" + _nmea("GPRMC,120000,A,63x5.800,N,01023.400,E,0,0,010524,,")

        with pytest.raises(RouteError, match=r"line 2 \(\$GPRMC\): bad latitude"):
            parse_nmea(text)

    def test_garbage_and_empty_input(self) -> None:
        """A line that is no sentence, and text without fixes, are refused."""
        with pytest.raises(RouteError, match="line 3: not an NMEA sentence"):
            parse_nmea(NMEA.replace("$GPGGA", "GPGGA"))
        with pytest.raises(RouteError, match="no RMC or GGA fixes"):
            parse_nmea(_nmea("GPRMC,120005.00,V,,,,,,,010524,,,N"))
        with pytest.raises(RouteError, match=r"line 1 \(\$GPGGA\): bad time"):
            parse_nmea(_nmea("GPGGA,99,6325.800,N,01023.400,E,1,08,0.9,1,M,,M,,"))


class TestRoute:
    def test_untimed_route_at_constant_speed_loops(self) -> None:
        """Untimed legs, the return leg included, are driven at 10 m/s."""
        route = Route([RoutePoint(63.0, 10.0), RoutePoint(63.001, 10.0)])
        leg = distance(*route.points)

        later = route.position_at(route.period + leg / 20)

        assert route.period == pytest.approx(2 * leg / DEFAULT_SPEED)
        assert later.latitude == pytest.approx(63.0005)
        assert later.speed == pytest.approx(DEFAULT_SPEED)
        assert route.position_at(leg / DEFAULT_SPEED * 1.5).heading == pytest.approx(
            180.0
        )

    def test_timed_route_returns_at_speed_then_repeats(self) -> None:
        """After the last timestamp the device drives back, then starts over."""
        route = parse_gpx(GPX)
        back = distance(route.points[2], route.points[0])

        returning = route.position_at(30 + back / 20)

        assert route.period == pytest.approx(30 + back / DEFAULT_SPEED)
        assert returning.speed == pytest.approx(DEFAULT_SPEED)
        assert returning.altitude == pytest.approx(20.0)
        assert route.position_at(route.period + 5) == pytest.approx(
            route.position_at(5)
        )

    def test_default_route_is_a_trondheim_loop(self) -> None:
        """About 20 points in Trondheim, a lap of minutes at city speed."""
        route = default_route()

        positions = [route.position_at(t) for t in range(0, 3000, 7)]

        assert 18 <= len(route.points) <= 22
        assert all(63.40 < p.latitude < 63.44 for p in positions)
        assert all(10.36 < p.longitude < 10.44 for p in positions)
        assert all(0 <= p.altitude <= 100 and 0 <= p.heading < 360 for p in positions)
        assert 5_000 < route.length < 20_000
        assert route.period == pytest.approx(route.length / DEFAULT_SPEED)

    def test_invalid_routes(self) -> None:
        """Mixed times and out-of-range coordinates are refused."""
        with pytest.raises(RouteError, match="point 1: every point or none"):
            Route([RoutePoint(0, 0, 0, 1.0), RoutePoint(1, 1)])
        with pytest.raises(RouteError, match="point 0: latitude 91"):
            Route([RoutePoint(91, 0)])
        with pytest.raises(RouteError, match="at least one point"):
            Route([])


# -- location ------------------------------------------------------------------


class TestLocation:
    async def test_gnss_fix_at_the_drawn_search_time(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """ACTIVE, A-GNSS, then the fix of the route at the seeded time."""
        harness = await start(nursery, lambda bus: LocationActor(
            bus, gnss=SimulatedGnss(seed=SEED)
        ))
        search_time = first_search_time()

        await harness.publish_at(100.0, LOCATION)
        await trio.sleep(GNSS_TIMEOUT + 10)

        done = round(100.0 + search_time, 6)
        assert 5.0 <= search_time <= 40.0
        assert harness.events() == [
            (100.0, "LOCATION_MODULE_EVT_ACTIVE"),
            (100.0, "LOCATION_MODULE_EVT_AGNSS_NEEDED"),
            (done, "LOCATION_MODULE_EVT_GNSS_DATA_READY"),
            (done, "LOCATION_MODULE_EVT_INACTIVE"),
        ]
        [agnss] = harness.of_type(LocationAgnssNeeded)
        assert agnss.request == AGNSS_COLD_START
        [fix] = harness.of_type(LocationGnssDataReady)
        expected = default_route().position_at(done)
        assert fix.data.timestamp == round(done * 1000)
        assert fix.data.search_time == round(search_time * 1000)
        assert (fix.data.pvt.latitude, fix.data.pvt.longitude) == pytest.approx(
            (expected.latitude, expected.longitude)
        )
        assert fix.data.pvt.speed == pytest.approx(expected.speed)
        assert 1.0 < fix.data.pvt.accuracy < 15.0
        assert 5 <= fix.data.satellites_tracked <= 12

    async def test_agnss_is_needed_once_per_boot(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """A second search finds the receiver warm: no second request."""
        harness = await start(nursery, lambda bus: LocationActor(bus))

        await harness.publish_at(0.0, LOCATION)
        await harness.publish_at(100.0, LOCATION)
        await harness.publish_at(200.0, LOCATION)
        await trio.sleep(100)

        assert len(harness.of_type(LocationGnssDataReady)) == 3
        assert len(harness.of_type(LocationAgnssNeeded)) == 1

    async def test_cloud_location_when_gnss_is_in_nod(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """Without GNSS the neighbour cells of 242/02 come after the scan."""
        harness = await start(nursery, lambda bus: LocationActor(bus))

        await harness.publish_at(1.0, config(gnss=True))
        await harness.publish_at(10.0, LOCATION)
        await trio.sleep(60)

        done = 10.0 + CELL_SEARCH_TIME
        assert harness.events() == [
            (10.0, "LOCATION_MODULE_EVT_ACTIVE"),
            (done, "LOCATION_MODULE_EVT_CLOUD_LOCATION_DATA_READY"),
            (done, "LOCATION_MODULE_EVT_INACTIVE"),
        ]
        [ready] = harness.of_type(LocationCloudLocationDataReady)
        cells = ready.request.cells
        assert cells is not None
        assert (cells.mcc, cells.mnc) == (242, 2)
        assert 2 <= len(cells.neighbors) <= 4
        assert all(-140 <= n.rsrp < cells.rsrp for n in cells.neighbors)
        assert ready.request.timestamp == round(done * 1000)

    async def test_not_ready_when_every_method_is_in_nod(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """No method left: DATA_NOT_READY at once, no search at all."""
        harness = await start(nursery, lambda bus: LocationActor(bus))

        await harness.publish_at(1.0, config(gnss=True, neighbor_cell=True))
        await harness.publish_at(5.0, LOCATION)
        await harness.publish_at(6.0, DataConfigReady(DeviceConfig()))
        battery = AppDataGet(data_list=(AppData.BATTERY,), timeout=2)
        await harness.publish_at(7.0, battery)
        await trio.sleep(100)

        assert harness.events() == [(5.0, "LOCATION_MODULE_EVT_DATA_NOT_READY")]

    async def test_scripted_gnss_timeout_without_fallback(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """A search that finds nothing ends at the 90 s GNSS timeout."""
        harness = await start(nursery, lambda bus: LocationActor(
            bus, gnss=SimulatedGnss(timeouts={1}), agnss=False
        ))

        await harness.publish_at(1.0, config(neighbor_cell=True))
        await harness.publish_at(10.0, LOCATION)
        await trio.sleep(200)

        assert harness.events() == [
            (10.0, "LOCATION_MODULE_EVT_ACTIVE"),
            (100.0, "LOCATION_MODULE_EVT_TIMEOUT"),
            (100.0, "LOCATION_MODULE_EVT_INACTIVE"),
        ]
        [timeout] = harness.of_type(LocationTimeout)
        assert timeout.search_time == 90_000

    async def test_gnss_timeout_falls_back_to_cells(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """GNSS first, then cellular, as in prj.conf; only search 1 fails."""
        harness = await start(nursery, lambda bus: LocationActor(
            bus, gnss=SimulatedGnss(timeouts={1}), agnss=False
        ))

        await harness.publish_at(0.0, LOCATION)
        await harness.publish_at(200.0, LOCATION)
        await trio.sleep(100)

        assert [e for e in harness.events() if e[0] < 200] == [
            (0.0, "LOCATION_MODULE_EVT_ACTIVE"),
            (92.0, "LOCATION_MODULE_EVT_CLOUD_LOCATION_DATA_READY"),
            (92.0, "LOCATION_MODULE_EVT_INACTIVE"),
        ]
        assert len(harness.of_type(LocationGnssDataReady)) == 1

    async def test_location_timeout_bounds_the_search(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """A 30 s location_timeout ends a slow search, with no time for cells."""
        harness = await start(nursery, lambda bus: LocationActor(
            bus, gnss=SimulatedGnss(search_time=(50.0, 60.0)), agnss=False
        ))

        await harness.publish_at(1.0, DataConfigInit(DeviceConfig(location_timeout=30)))
        await harness.publish_at(10.0, LOCATION)
        await trio.sleep(200)

        assert harness.events() == [
            (10.0, "LOCATION_MODULE_EVT_ACTIVE"),
            (40.0, "LOCATION_MODULE_EVT_TIMEOUT"),
            (40.0, "LOCATION_MODULE_EVT_INACTIVE"),
        ]

    async def test_probabilistic_timeouts_are_reproducible(self) -> None:
        """One seed, one sequence of search times and failures."""
        twins = [SimulatedGnss(seed=3, timeout_probability=0.3) for _ in range(2)]
        other = SimulatedGnss(seed=4, timeout_probability=0.3)

        runs = [[g.start_search() for _ in range(50)] for g in (*twins, other)]

        assert runs[0] == runs[1]
        assert runs[0] != runs[2]
        assert 5 < sum(s.timed_out for s in runs[0]) < 30

    async def test_shutdown_drops_the_search(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """The acknowledgement ends the module: no fix, no answers after it."""
        harness = await start(nursery, lambda bus: LocationActor(bus, agnss=False))

        await harness.publish_at(0.0, LOCATION)
        await harness.publish_at(1.0, SHUTDOWN)
        await harness.publish_at(2.0, LOCATION)
        await trio.sleep(200)

        assert harness.events() == [
            (0.0, "LOCATION_MODULE_EVT_ACTIVE"),
            (1.0, "LOCATION_MODULE_EVT_SHUTDOWN_READY"),
        ]

    async def test_restart_keeps_the_search(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """A supervisor restart mid-search still delivers the fix on time."""
        harness = await start(nursery, lambda bus: LocationActor(bus, agnss=False))
        search_time = first_search_time(0)

        await harness.publish_at(0.0, LOCATION)
        await trio.sleep(1.0)
        assert harness.run_scope is not None
        harness.run_scope.cancel()
        await trio.sleep(0)
        await harness.start(nursery)
        await trio.sleep(100)

        assert (
            round(search_time, 6),
            "LOCATION_MODULE_EVT_GNSS_DATA_READY",
        ) in harness.events()
        assert len(harness.of_type(LocationGnssDataReady)) == 1


# -- sensor ------------------------------------------------------------------


class TestSensor:
    def test_values_are_plausible_and_smooth(self) -> None:
        """A day of samples every 10 min stays in range and changes slowly."""
        sensors = SimulatedSensors(seed=SEED)

        samples = [sensors.sample(t * 600_000) for t in range(145)]

        assert all(15 <= s.temperature <= 27 for s in samples)
        assert all(25 <= s.humidity <= 75 for s in samples)
        assert all(99.5 <= s.pressure <= 103.2 for s in samples)
        assert all(s.bsec_air_quality == -1 for s in samples)
        steps = [
            abs(b.temperature - a.temperature) for a, b in zip(samples, samples[1:])
        ]
        assert max(steps) < 1.5
        assert max(s.temperature for s in samples) - min(
            s.temperature for s in samples
        ) > 5

    def test_values_are_reproducible_by_seed(self) -> None:
        """One seed, one weather; another seed, another."""
        first, second, other = (SimulatedSensors(seed=s) for s in (5, 5, 6))

        runs = [[s.sample(t * 1000) for t in range(10)] for s in (first, second, other)]

        assert runs[0] == runs[1]
        assert runs[0] != runs[2]

    def test_battery_drains_from_full(self) -> None:
        """100 % at boot, then down by the drain rate, never below 0."""
        sensors = SimulatedSensors(drain_per_hour=2.0)

        levels = [sensors.battery_level(h * 3_600_000) for h in (0, 1, 10, 49, 60)]

        assert levels == [100, 98, 80, 2, 0]

    async def test_answers_a_data_get(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """Environmental data and the battery level, stamped with the uptime."""
        harness = await start(nursery, lambda bus: SensorActor(bus))

        await harness.publish_at(7200.0, SENSORS)
        await trio.sleep(1)

        assert harness.events() == [
            (7200.0, "SENSOR_EVT_ENVIRONMENTAL_DATA_READY"),
            (7200.0, "SENSOR_EVT_FUEL_GAUGE_READY"),
        ]
        [env] = harness.of_type(SensorEnvironmentalDataReady)
        [battery] = harness.of_type(SensorFuelGaugeReady)
        assert env.data.timestamp == battery.timestamp == 7_200_000
        assert battery.battery_level == 98

    async def test_not_supported_variants(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """Without sensors or fuel gauge the module says so."""
        sensors = SimulatedSensors(environmental=False, fuel_gauge=False)
        harness = await start(nursery, lambda bus: SensorActor(bus, sensors=sensors))

        await harness.publish_at(3.0, SENSORS)
        await harness.publish_at(4.0, LOCATION)
        await trio.sleep(1)

        assert harness.events() == [
            (3.0, "SENSOR_EVT_ENVIRONMENTAL_NOT_SUPPORTED"),
            (3.0, "SENSOR_EVT_FUEL_GAUGE_NOT_SUPPORTED"),
        ]

    async def test_scripted_movement_at_exact_times(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """The script plays in time order, an impact with its magnitude."""
        script = [(30.0, "inactivity"), (5.0, "activity"), (12.5, "impact", 6.5)]
        harness = await start(nursery, lambda bus: SensorActor(bus, movement=script))

        await trio.sleep(100)

        assert harness.events() == [
            (5.0, "SENSOR_EVT_MOVEMENT_ACTIVITY_DETECTED"),
            (12.5, "SENSOR_EVT_MOVEMENT_IMPACT_DETECTED"),
            (30.0, "SENSOR_EVT_MOVEMENT_INACTIVITY_DETECTED"),
        ]
        [impact] = harness.of_type(SensorMovementImpactDetected)
        assert (impact.timestamp, impact.magnitude) == (12_500, 6.5)

    def test_bad_scripts_are_refused(self) -> None:
        """Unknown kinds, impacts without magnitude and negative times."""
        bus = Bus()

        with pytest.raises(ValueError, match="shake"):
            SensorActor(bus, movement=[(1.0, "shake")])
        with pytest.raises(ValueError, match="magnitude"):
            SensorActor(bus, movement=[(1.0, "impact")])
        with pytest.raises(ValueError, match="at >= 0"):
            Movement(-1.0, "activity")

    async def test_shutdown_ack_then_silence(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """After the acknowledgement the script and the requests are ignored."""
        script = [(5.0, "activity"), (20.0, "inactivity")]
        harness = await start(nursery, lambda bus: SensorActor(bus, movement=script))

        await harness.publish_at(10.0, SHUTDOWN)
        await harness.publish_at(11.0, SENSORS)
        await trio.sleep(100)

        assert harness.events() == [
            (5.0, "SENSOR_EVT_MOVEMENT_ACTIVITY_DETECTED"),
            (10.0, "SENSOR_EVT_SHUTDOWN_READY"),
        ]

    async def test_script_survives_a_restart(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """Restarted mid-script, the actor keeps the original schedule."""
        script = [(5.0, "activity"), (20.0, "inactivity")]
        harness = await start(nursery, lambda bus: SensorActor(bus, movement=script))

        await trio.sleep(3.0)
        assert harness.run_scope is not None
        harness.run_scope.cancel()
        await trio.sleep(8.0)
        await harness.start(nursery)
        await trio.sleep(30.0)

        assert harness.events() == [
            (11.0, "SENSOR_EVT_MOVEMENT_ACTIVITY_DETECTED"),
            (20.0, "SENSOR_EVT_MOVEMENT_INACTIVITY_DETECTED"),
        ]


# -- UI ------------------------------------------------------------------------


class TestUi:
    async def test_scripted_presses_at_exact_times(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """Each press is reported at its time, stamped with the uptime."""
        harness = await start(
            nursery, lambda bus: UiActor(bus, presses=[(42.0, 2), (7.25, 1)])
        )

        await trio.sleep(100)

        assert harness.events() == [
            (7.25, "UI_EVT_BUTTON_DATA_READY"),
            (42.0, "UI_EVT_BUTTON_DATA_READY"),
        ]
        assert [(p.button_number, p.timestamp) for p in harness.of_type(
            UiButtonDataReady
        )] == [(1, 7250), (2, 42000)]

    async def test_shutdown_ack_then_silence(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """Presses after the acknowledgement, scripted or not, are dropped."""
        harness = await start(nursery, lambda bus: UiActor(bus, presses=[(20.0, 1)]))

        await harness.publish_at(10.0, SHUTDOWN)
        await trio.sleep(20)
        harness.actor.press(1)

        assert harness.events() == [(10.0, "UI_EVT_SHUTDOWN_READY")]

    def test_bad_presses_are_refused(self) -> None:
        """Button numbers start at 1; times are not negative."""
        with pytest.raises(ValueError, match="button_number >= 1"):
            UiActor(Bus(), presses=[(1.0, 0)])
