"""The simulated data sources: the location, sensor and UI modules.

These modules feed the data module with samples; on the host they are
simulated, deterministically.  Every random value comes from a
``random.Random`` seeded at construction, and every time is a Trio deadline
kept in the actor's ``TimerGroup``, so that a supervisor restart keeps the
pending searches and scripted events, and the autojump clock drives them
in tests.  The uptime is counted from the actor's first start.

Location
--------
As ``location_module.c`` with the ``prj.conf`` method list (GNSS first,
with the library's 90 s GNSS timeout, then cellular), on
``APP_EVT_DATA_GET`` containing ``APP_DATA_LOCATION``:

* the methods left after the ``nod`` list of the latest configuration
  (``DATA_EVT_CONFIG_INIT`` / ``_READY``) are tried in order; none left
  gives ``LOCATION_MODULE_EVT_DATA_NOT_READY`` at once (spec §11.3);
* otherwise ``ACTIVE``, then, the first time GNSS runs after boot,
  ``AGNSS_NEEDED`` (the receiver starts cold);
* GNSS finds a fix after a seeded search time; the fix is the route's
  position at that uptime (``GNSS_DATA_READY``, then ``INACTIVE``);
* a search that is scripted or drawn to time out, or whose search time is
  over the GNSS timeout, ends at ``min(90 s, location_timeout)``; then the
  cellular method, when allowed and time is left before
  ``location_timeout``, measures the neighbour cells for
  ``CELL_SEARCH_TIME`` (``CLOUD_LOCATION_DATA_READY``), else the request
  ends with ``TIMEOUT``; ``INACTIVE`` follows either.

The location module of the firmware has no message queue: it handles events
in the event manager's context.  The host gives it a mailbox of 10, the
depth of the other modules' queues.

Sensor and UI
-------------
The sensor module answers ``APP_DATA_ENVIRONMENTAL`` and ``APP_DATA_BATTERY``
(or says they are not supported) and replays a movement script; the UI
module replays button presses.  Scripts are ``at`` seconds after the
actor's first start.

Every module acknowledges ``UTIL_EVT_SHUTDOWN_REQUEST`` and is silent
afterwards: pending searches and scripted events are dropped.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Iterable
from typing import Any, ClassVar, Final

import attrs
import trio

from actors.modem import SIM_ENB_ID, SIM_MCC, SIM_MNC, SIM_SECTOR, SIM_TAC
from actors.route import Route, default_route
from actors.runtime import Actor, Priority
from actors.timer import Timer
from protocols.app import AppData, AppDataGet, UtilShutdownRequest
from protocols.base import Module
from protocols.config import DeviceConfig
from protocols.data import DataConfigInit, DataConfigReady
from protocols.json_codec import (
    AGNSS_GPS_UTC_REQUEST,
    AGNSS_KLOBUCHAR_REQUEST,
    AGNSS_POSITION_REQUEST,
    AGNSS_SYS_TIME_AND_SV_TOW_REQUEST,
)
from protocols.peripherals import (
    AgnssRequest,
    CellMeasurement,
    CloudLocationRequest,
    EnvironmentalData,
    GnssData,
    LocationActive,
    LocationAgnssNeeded,
    LocationCloudLocationDataReady,
    LocationDataNotReady,
    LocationErrorCode,
    LocationGnssDataReady,
    LocationInactive,
    LocationShutdownReady,
    LocationTimeout,
    NeighborCell,
    Pvt,
    SensorEnvironmentalDataReady,
    SensorEnvironmentalNotSupported,
    SensorError,
    SensorFuelGaugeNotSupported,
    SensorFuelGaugeReady,
    SensorMovementActivityDetected,
    SensorMovementImpactDetected,
    SensorMovementInactivityDetected,
    SensorShutdownReady,
    UiButtonDataReady,
    UiError,
    UiShutdownReady,
)

# prj.conf: CONFIG_LOCATION_REQUEST_DEFAULT_GNSS_TIMEOUT=90000 (ms).
GNSS_TIMEOUT: Final = 90.0
# Seconds a cold or warm receiver takes to a fix, drawn uniformly.
DEFAULT_SEARCH_TIME: Final = (5.0, 40.0)
# Seconds the modem takes to measure the neighbour cells.
CELL_SEARCH_TIME: Final = 2.0
# What a cold receiver asks for: UTC, ionosphere, time and position, and
# ephemerides and almanacs of all 32 GPS satellites.
AGNSS_COLD_START: Final = AgnssRequest(
    data_flags=(
        AGNSS_GPS_UTC_REQUEST
        | AGNSS_KLOBUCHAR_REQUEST
        | AGNSS_SYS_TIME_AND_SV_TOW_REQUEST
        | AGNSS_POSITION_REQUEST
    ),
    sv_mask_ephe=0xFFFFFFFF,
    sv_mask_alm=0xFFFFFFFF,
)
# The serving cell's EARFCN: band 20 (800 MHz) downlink, 6150-6449.
SIM_EARFCN: Final = 6300

STATE_RUNNING: Final = "STATE_RUNNING"
STATE_SHUTDOWN: Final = "STATE_SHUTDOWN"


@attrs.define(eq=False)
class _Clock:
    """The uptime of one actor, counted from its first start."""

    started_at: float | None = None

    def start(self) -> bool:
        """Record the first start; False on restarts."""
        if self.started_at is not None:
            return False
        self.started_at = trio.current_time()
        return True

    def seconds(self) -> float:
        """Seconds since the first start (0 before it)."""
        if self.started_at is None:
            return 0.0
        return trio.current_time() - self.started_at

    def ms(self) -> int:
        """Milliseconds since the first start (0 before it)."""
        return round(self.seconds() * 1000)

    def delay_until(self, at: float) -> float:
        """Seconds from now to ``at`` seconds after the first start."""
        return max(0.0, at - self.seconds())


# -- location ------------------------------------------------------------------


class LocationMethod(enum.Enum):
    """The location library's methods the host simulates (no Wi-Fi chip)."""

    GNSS = "gnss"
    CELLULAR = "cellular"


@attrs.frozen(kw_only=True)
class GnssSearch:
    """How one GNSS search will go, drawn when it starts."""

    search_time: float
    timed_out: bool
    satellites: int


@attrs.define(eq=False)
class SimulatedGnss:
    """A GNSS receiver and cell scanner driving ``route``, deterministic by seed.

    Each search draws the same number of values whatever its outcome, so the
    sequence of searches depends on the seed alone.

    Args:
      route: where the device drives.
      seed: seeds every draw.
      search_time: the range of the seconds to a fix.
      timeout_probability: the chance of a search that never finds a fix.
      timeouts: 1-based numbers of the searches that never find a fix.
    """

    route: Route = attrs.field(factory=default_route)
    seed: int = 0
    search_time: tuple[float, float] = DEFAULT_SEARCH_TIME
    timeout_probability: float = attrs.field(
        default=0.0, validator=[attrs.validators.ge(0), attrs.validators.le(1)]
    )
    timeouts: frozenset[int] = attrs.field(default=frozenset(), converter=frozenset)
    searches: int = attrs.field(init=False, default=0)
    _rng: random.Random = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        low, high = self.search_time
        if not 0 < low <= high:
            raise ValueError(
                f"search_time needs 0 < low <= high, got {self.search_time}"
            )
        self._rng = random.Random(self.seed)

    def start_search(self) -> GnssSearch:
        """Draw the next search's time to fix, outcome and satellites."""
        self.searches += 1
        search_time = round(self._rng.uniform(*self.search_time), 3)
        unlucky = self._rng.random() < self.timeout_probability
        satellites = self._rng.randint(5, 12)
        return GnssSearch(
            search_time=search_time,
            timed_out=unlucky or self.searches in self.timeouts,
            satellites=satellites,
        )

    def fix(self, search: GnssSearch, uptime_ms: int) -> GnssData:
        """The fix at ``uptime_ms``: the route's position, with accuracies."""
        position = self.route.position_at(uptime_ms / 1000)
        # More satellites, better accuracy: 3 m with 12, about 10 m with 5.
        accuracy = round(36.0 / search.satellites + self._rng.uniform(0.0, 3.0), 1)
        return GnssData(
            pvt=Pvt(
                latitude=position.latitude,
                longitude=position.longitude,
                accuracy=accuracy,
                altitude=position.altitude,
                altitude_accuracy=round(accuracy * 1.8, 1),
                speed=position.speed,
                speed_accuracy=round(self._rng.uniform(0.2, 1.0), 2),
                heading=position.heading,
                heading_accuracy=round(self._rng.uniform(2.0, 15.0), 1),
            ),
            satellites_tracked=search.satellites,
            search_time=round(search.search_time * 1000),
            timestamp=uptime_ms,
        )

    def cells(self, uptime_ms: int) -> CellMeasurement:
        """The serving cell of the simulated modem and 2-4 neighbours."""
        serving_rsrp = -97 + self._rng.randint(-6, 6)
        neighbors = tuple(
            NeighborCell(
                earfcn=SIM_EARFCN,
                physical_cell_id=self._rng.randint(0, 503),
                rsrp=serving_rsrp - self._rng.randint(3, 20),
                rsrq=round(self._rng.uniform(-19.5, -8.0), 1),
            )
            for _ in range(self._rng.randint(2, 4))
        )
        return CellMeasurement(
            mcc=SIM_MCC,
            mnc=SIM_MNC,
            cell_id=(SIM_ENB_ID << 8) | SIM_SECTOR,
            tac=SIM_TAC,
            earfcn=SIM_EARFCN,
            # In units of 16 Ts (about 78 m): a few hundred metres.
            timing_advance=self._rng.randint(2, 12),
            rsrp=serving_rsrp,
            rsrq=round(self._rng.uniform(-12.0, -6.0), 1),
            neighbors=neighbors,
        )


class _Phase(enum.Enum):
    IDLE = "SUB_STATE_IDLE"
    GNSS = "SUB_STATE_GNSS"
    CELLULAR = "SUB_STATE_CELLULAR"


@attrs.define(eq=False)
class LocationActor(Actor):
    """The location module (see the module docstring).

    Args:
      gnss: the simulated receiver (route, seed, search times, timeouts).
      agnss: whether the first GNSS search after boot asks for A-GNSS.
    """

    name: ClassVar[str] = "location"
    module: ClassVar[Module] = Module.LOCATION
    # The firmware's module has no queue (module docstring).
    capacity: ClassVar[int] = 10
    routes: ClassVar[dict[Module, Priority]] = {
        Module.APP: Priority.NORMAL,
        Module.DATA: Priority.NORMAL,
        Module.UTIL: Priority.FINAL,
    }
    error_event = LocationErrorCode

    gnss: SimulatedGnss = attrs.field(kw_only=True, factory=SimulatedGnss)
    agnss: bool = attrs.field(kw_only=True, default=True)

    config: DeviceConfig = attrs.field(init=False, factory=DeviceConfig)
    search_timer: Timer = attrs.field(init=False)
    _clock: _Clock = attrs.field(init=False, factory=_Clock)
    _phase: _Phase = attrs.field(init=False, default=_Phase.IDLE)
    _methods: tuple[LocationMethod, ...] = attrs.field(init=False, default=())
    _search: GnssSearch | None = attrs.field(init=False, default=None)
    _request_started: float = attrs.field(init=False, default=0.0)
    _agnss_requested: bool = attrs.field(init=False, default=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.search_timer = self.timers.add("location_search", self._on_search_timer)
        self._set_phase(_Phase.IDLE)

    def _set_phase(self, phase: _Phase) -> None:
        self._phase = phase
        if self.state != STATE_SHUTDOWN:
            self.state = STATE_RUNNING
        self.sub_state = phase.value

    def uptime_ms(self) -> int:
        """Milliseconds since the actor first started."""
        return self._clock.ms()

    def methods(self) -> tuple[LocationMethod, ...]:
        """The methods the current configuration leaves, in order."""
        no_data = self.config.no_data
        methods = []
        if not no_data.gnss:
            methods.append(LocationMethod.GNSS)
        if not no_data.neighbor_cell:
            methods.append(LocationMethod.CELLULAR)
        return tuple(methods)

    def snapshot_extra(self) -> dict[str, Any]:
        """Search progress and the route for the debug view."""
        return {
            "searches": self.gnss.searches,
            "agnss_requested": self._agnss_requested,
            "search_ends_at": self.search_timer.deadline,
            "route_period": self.gnss.route.period,
        }

    async def on_start(self) -> None:
        """Start the uptime on the first start; restarts keep the search."""
        if not self._clock.start():
            self.log.info("restarted", sub_state=self.sub_state)

    async def handle(self, message: Any) -> None:
        """Requests, configuration and shutdown; nothing after shutdown."""
        if self.state == STATE_SHUTDOWN:
            return
        match message:
            case AppDataGet(data_list=data_list) if AppData.LOCATION in data_list:
                self._request()
            case DataConfigInit(config=config) | DataConfigReady(config=config):
                self.config = config
            case UtilShutdownRequest(reason=reason):
                self.log.info("shutdown_requested", reason=reason.value)
                self.search_timer.cancel()
                self.state = STATE_SHUTDOWN
                self.emit(LocationShutdownReady(self.id))

    # -- the request -----------------------------------------------------------

    def _request(self) -> None:
        if self._phase is not _Phase.IDLE:
            # XXX: the firmware restarts a search whose cloud-location answer
            # is pending; the host's cloud answer is never awaited, and a
            # running search will answer this request too.
            self.counters["requests_while_searching"] += 1
            self.log.debug("request_while_searching", sub_state=self._phase.value)
            return
        self._methods = self.methods()
        if not self._methods:
            self.counters["not_ready"] += 1
            self.log.info("location_not_ready", cause="all methods in nod")
            self.emit(LocationDataNotReady())
            return
        self.counters["requests"] += 1
        self._request_started = self._clock.seconds()
        self.log.debug("location_request", methods=[m.value for m in self._methods])
        self.emit(LocationActive())
        self._next_method()

    def _next_method(self) -> None:
        method = self._methods[0]
        self._methods = self._methods[1:]
        if method is LocationMethod.GNSS:
            self._start_gnss()
        else:
            self._start_cellular()

    def _remaining(self) -> float:
        used = self._clock.seconds() - self._request_started
        return max(0.0, self.config.location_timeout - used)

    def _start_gnss(self) -> None:
        if self.agnss and not self._agnss_requested:
            self._agnss_requested = True
            self.emit(LocationAgnssNeeded(AGNSS_COLD_START))
        search = self.gnss.start_search()
        limit = min(GNSS_TIMEOUT, self._remaining())
        if search.timed_out or search.search_time >= limit:
            search = attrs.evolve(search, search_time=limit, timed_out=True)
        self._search = search
        self._set_phase(_Phase.GNSS)
        self.search_timer.reschedule(search.search_time)

    def _start_cellular(self) -> None:
        self._set_phase(_Phase.CELLULAR)
        self.search_timer.reschedule(min(CELL_SEARCH_TIME, self._remaining()))

    def _on_search_timer(self) -> None:
        if self.state == STATE_SHUTDOWN:
            return
        if self._phase is _Phase.GNSS:
            self._on_gnss_done()
        elif self._phase is _Phase.CELLULAR:
            self._on_cellular_done()

    def _on_gnss_done(self) -> None:
        search = self._search
        assert search is not None
        if not search.timed_out:
            data = self.gnss.fix(search, self.uptime_ms())
            self.counters["gnss_fixes"] += 1
            self.log.info(
                "gnss_fix",
                search_time=data.search_time,
                satellites=data.satellites_tracked,
            )
            self._finish(LocationGnssDataReady(data))
            return
        self.counters["gnss_timeouts"] += 1
        self.log.info("gnss_timeout", search_time=search.search_time)
        # The cellular method needs time left before the request's timeout.
        if self._methods and self._remaining() > 0:
            self._next_method()
            return
        self._finish(
            LocationTimeout(
                search_time=round(search.search_time * 1000),
                satellites_tracked=search.satellites,
            )
        )

    def _on_cellular_done(self) -> None:
        uptime_ms = self.uptime_ms()
        if self._remaining() <= 0:
            self.counters["timeouts"] += 1
            self._finish(LocationTimeout(search_time=0, satellites_tracked=0))
            return
        request = CloudLocationRequest(
            cells=self.gnss.cells(uptime_ms), wifi_access_points=(), timestamp=uptime_ms
        )
        self.counters["cloud_location"] += 1
        self._finish(LocationCloudLocationDataReady(request))

    def _finish(self, result: Any) -> None:
        self._search = None
        self._methods = ()
        self._set_phase(_Phase.IDLE)
        self.emit(result)
        self.emit(LocationInactive())


# -- scripts -----------------------------------------------------------------


class MovementKind(enum.Enum):
    """What the accelerometer reports."""

    ACTIVITY = "activity"
    INACTIVITY = "inactivity"
    IMPACT = "impact"


@attrs.frozen
class Movement:
    """A scripted accelerometer event, ``at`` seconds after the first start."""

    at: float
    kind: MovementKind = attrs.field(converter=MovementKind)
    magnitude: float = 0.0

    def __attrs_post_init__(self) -> None:
        if self.at < 0:
            raise ValueError(f"movement at {self.at}: at >= 0 required")
        if self.kind is MovementKind.IMPACT and not self.magnitude > 0:
            raise ValueError(f"impact at {self.at}: a magnitude > 0 (G) is needed")


@attrs.frozen
class ButtonPress:
    """A scripted button press, ``at`` seconds after the first start."""

    at: float
    button_number: int

    def __attrs_post_init__(self) -> None:
        if self.at < 0 or self.button_number < 1:
            raise ValueError(f"press {self}: at >= 0 and button_number >= 1 required")


def _to_movements(
    steps: Iterable[Movement | tuple[float, str] | tuple[float, str, float]],
) -> tuple[Movement, ...]:
    movements = tuple(s if isinstance(s, Movement) else Movement(*s) for s in steps)
    return tuple(sorted(movements, key=lambda m: m.at))


def _to_presses(
    steps: Iterable[ButtonPress | tuple[float, int]],
) -> tuple[ButtonPress, ...]:
    presses = tuple(s if isinstance(s, ButtonPress) else ButtonPress(*s) for s in steps)
    return tuple(sorted(presses, key=lambda p: p.at))


# -- sensor ------------------------------------------------------------------


@attrs.define(eq=False)
class SimulatedSensors:
    """A BME680-like sensor and a fuel gauge, deterministic by seed.

    The weather follows slow sines of the uptime (a day for temperature and
    humidity, a few hours for pressure) with seeded phases, plus a little
    seeded noise per sample: smooth from sample to sample.  The battery
    drains linearly from 100 %.

    Args:
      seed: seeds the phases and the noise.
      environmental: whether there is an environmental sensor.
      fuel_gauge: whether there is a fuel gauge.
      drain_per_hour: battery percent lost per hour.
    """

    seed: int = 0
    environmental: bool = True
    fuel_gauge: bool = True
    drain_per_hour: float = attrs.field(default=1.0, validator=attrs.validators.ge(0))
    _rng: random.Random = attrs.field(init=False)
    _phases: tuple[float, float, float] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        tau = 2 * math.pi
        self._phases = (
            self._rng.uniform(0, tau),
            self._rng.uniform(0, tau),
            self._rng.uniform(0, tau),
        )

    def sample(self, uptime_ms: int) -> EnvironmentalData:
        """Temperature 15-27 °C, humidity 30-70 %, pressure 99.5-103 kPa."""
        hours = uptime_ms / 3_600_000
        day = math.sin(2 * math.pi * hours / 24 + self._phases[0])
        temperature = 21.0 + 5.0 * day + self._rng.uniform(-0.3, 0.3)
        # Relative humidity falls as the air warms.
        humidity = 50.0 - 15.0 * day + 3.0 * math.sin(hours + self._phases[1])
        humidity += self._rng.uniform(-1.0, 1.0)
        pressure = 101.3 + 1.2 * math.sin(2 * math.pi * hours / 7 + self._phases[2])
        pressure += self._rng.uniform(-0.05, 0.05)
        return EnvironmentalData(
            timestamp=uptime_ms,
            temperature=round(temperature, 2),
            humidity=round(humidity, 2),
            pressure=round(pressure, 3),
        )

    def battery_level(self, uptime_ms: int) -> int:
        """The level in percent, never below 0."""
        hours = uptime_ms / 3_600_000
        return max(0, min(100, round(100 - self.drain_per_hour * hours)))


@attrs.define(eq=False)
class SensorActor(Actor):
    """The sensor module.

    Args:
      sensors: the simulated sensors and fuel gauge.
      movement: the accelerometer script: ``Movement`` or ``(at, kind)``
        and ``(at, "impact", magnitude_g)`` tuples, ``kind`` one of
        ``"activity"``, ``"inactivity"``, ``"impact"``.
    """

    name: ClassVar[str] = "sensor"
    module: ClassVar[Module] = Module.SENSOR
    capacity: ClassVar[int] = 10  # SENSOR_QUEUE_ENTRY_COUNT
    routes: ClassVar[dict[Module, Priority]] = {
        Module.APP: Priority.NORMAL,
        Module.UTIL: Priority.FINAL,
    }
    error_event = SensorError

    sensors: SimulatedSensors = attrs.field(kw_only=True, factory=SimulatedSensors)
    movement: tuple[Movement, ...] = attrs.field(
        kw_only=True, default=(), converter=_to_movements
    )

    movement_timer: Timer = attrs.field(init=False)
    _clock: _Clock = attrs.field(init=False, factory=_Clock)
    _next_step: int = attrs.field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.movement_timer = self.timers.add("movement_script", self._on_movement)
        self.state = STATE_RUNNING

    def uptime_ms(self) -> int:
        """Milliseconds since the actor first started."""
        return self._clock.ms()

    def snapshot_extra(self) -> dict[str, Any]:
        """The next scripted movement."""
        return {"next_movement_at": self.movement_timer.deadline}

    async def on_start(self) -> None:
        """Start the uptime and the script on the first start only."""
        if self._clock.start():
            self._schedule_movement()

    async def handle(self, message: Any) -> None:
        """Sample requests and shutdown; nothing after shutdown."""
        if self.state == STATE_SHUTDOWN:
            return
        match message:
            case AppDataGet(data_list=data_list):
                if AppData.ENVIRONMENTAL in data_list:
                    self._sample_environmental()
                if AppData.BATTERY in data_list:
                    self._sample_battery()
            case UtilShutdownRequest(reason=reason):
                self.log.info("shutdown_requested", reason=reason.value)
                self.movement_timer.cancel()
                self.state = STATE_SHUTDOWN
                self.emit(SensorShutdownReady(self.id))

    def _sample_environmental(self) -> None:
        if not self.sensors.environmental:
            self.emit(SensorEnvironmentalNotSupported())
            return
        self.emit(SensorEnvironmentalDataReady(self.sensors.sample(self.uptime_ms())))

    def _sample_battery(self) -> None:
        if not self.sensors.fuel_gauge:
            self.emit(SensorFuelGaugeNotSupported())
            return
        uptime_ms = self.uptime_ms()
        level = self.sensors.battery_level(uptime_ms)
        self.emit(SensorFuelGaugeReady(timestamp=uptime_ms, battery_level=level))

    def _schedule_movement(self) -> None:
        if self._next_step < len(self.movement):
            at = self.movement[self._next_step].at
            self.movement_timer.reschedule(self._clock.delay_until(at))

    def _on_movement(self) -> None:
        if self.state == STATE_SHUTDOWN:
            return
        step = self.movement[self._next_step]
        self._next_step += 1
        self.inject_movement(step.kind, step.magnitude)
        self._schedule_movement()

    def inject_movement(self, kind: MovementKind | str, magnitude: float = 0.0) -> None:
        """Report accelerometer ``kind`` now (an impact of ``magnitude`` G).

        What a real accelerometer's interrupt would do.  Ignored after
        shutdown.
        """
        if self.state == STATE_SHUTDOWN:
            return
        kind = MovementKind(kind)
        self.counters[f"movement_{kind.value}"] += 1
        self.log.info("movement", kind=kind.value, magnitude=magnitude)
        match kind:
            case MovementKind.ACTIVITY:
                self.emit(SensorMovementActivityDetected())
            case MovementKind.INACTIVITY:
                self.emit(SensorMovementInactivityDetected())
            case MovementKind.IMPACT:
                self.emit(
                    SensorMovementImpactDetected(
                        timestamp=self.uptime_ms(), magnitude=magnitude
                    )
                )


# -- UI ------------------------------------------------------------------------


@attrs.define(eq=False)
class UiActor(Actor):
    """The UI module: button presses.

    Args:
      presses: the button script: ``ButtonPress`` or ``(at, button_number)``.
    """

    name: ClassVar[str] = "ui"
    module: ClassVar[Module] = Module.UI
    capacity: ClassVar[int] = 10  # UI_QUEUE_ENTRY_COUNT
    routes: ClassVar[dict[Module, Priority]] = {Module.UTIL: Priority.FINAL}
    error_event = UiError

    presses: tuple[ButtonPress, ...] = attrs.field(
        kw_only=True, default=(), converter=_to_presses
    )

    press_timer: Timer = attrs.field(init=False)
    _clock: _Clock = attrs.field(init=False, factory=_Clock)
    _next_press: int = attrs.field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.press_timer = self.timers.add("button_script", self._on_press)
        self.state = STATE_RUNNING

    def uptime_ms(self) -> int:
        """Milliseconds since the actor first started."""
        return self._clock.ms()

    def snapshot_extra(self) -> dict[str, Any]:
        """The next scripted press."""
        return {"next_press_at": self.press_timer.deadline}

    async def on_start(self) -> None:
        """Start the uptime and the script on the first start only."""
        if self._clock.start():
            self._schedule_press()

    async def handle(self, message: Any) -> None:
        """Shutdown; nothing after it."""
        if self.state == STATE_SHUTDOWN:
            return
        match message:
            case UtilShutdownRequest(reason=reason):
                self.log.info("shutdown_requested", reason=reason.value)
                self.press_timer.cancel()
                self.state = STATE_SHUTDOWN
                self.emit(UiShutdownReady(self.id))

    def _schedule_press(self) -> None:
        if self._next_press < len(self.presses):
            at = self.presses[self._next_press].at
            self.press_timer.reschedule(self._clock.delay_until(at))

    def _on_press(self) -> None:
        if self.state == STATE_SHUTDOWN:
            return
        press = self.presses[self._next_press]
        self._next_press += 1
        self.press(press.button_number)
        self._schedule_press()

    def press(self, button_number: int) -> None:
        """Report a press of ``button_number`` now; ignored after shutdown."""
        if self.state == STATE_SHUTDOWN:
            return
        self.counters["presses"] += 1
        self.log.info("button_pressed", button=button_number)
        self.emit(
            UiButtonDataReady(button_number=button_number, timestamp=self.uptime_ms())
        )

