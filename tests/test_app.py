"""The app actor's sampling timers and requests, in virtual time.

The actor runs on a bare bus; a tap records every published event with the
virtual time it was published at, and the tests publish the other modules'
events themselves.  A stand-in data module answers each ``APP_EVT_DATA_GET``
with ``DATA_EVT_DATA_READY`` one second later, unless a test turns it off.
"""

from __future__ import annotations

import math
from typing import Final, TypeVar

import attrs
import pytest
import trio

from actors.app import (
    STATE_INIT,
    STATE_RUNNING,
    STATE_SHUTDOWN,
    SUB_STATE_ACTIVE_MODE,
    SUB_STATE_PASSIVE_MODE,
    AppActor,
    sample_timeout,
)
from actors.runtime import Bus
from protocols.app import (
    AppData,
    AppDataGet,
    AppDataGetAll,
    AppShutdownReady,
    AppStart,
    ShutdownReason,
    UtilShutdownRequest,
)
from protocols.base import Event
from protocols.cloud import CloudConnected, CloudDisconnected
from protocols.config import DeviceConfig, NoData
from protocols.data import DataConfigInit, DataConfigReady, DataReady
from protocols.modem import ModemStaticData, ModemStaticDataReady
from protocols.peripherals import (
    SensorMovementActivityDetected,
    SensorMovementImpactDetected,
    SensorMovementInactivityDetected,
)

ACTIVE: Final = DeviceConfig()
PASSIVE: Final = DeviceConfig(
    active_mode=False, movement_resolution=120, movement_timeout=3600
)
ACTIVITY: Final = SensorMovementActivityDetected()
INACTIVITY: Final = SensorMovementInactivityDetected()
IMPACT: Final = SensorMovementImpactDetected(timestamp=0, magnitude=8.0)
SHUTDOWN: Final = UtilShutdownRequest(ShutdownReason.GENERIC)
STATIC: Final = ModemStaticDataReady(
    ModemStaticData(
        timestamp=0,
        iccid="8931080019073497795",
        app_version="0.0.0-dev",
        board_version="nrf9160dk_nrf9160",
        modem_fw="mfw_nrf9160_1.3.5",
        imei="352656100000010",
    )
)
# How long the stand-in data module takes to answer a request.
DATA_DELAY: Final = 1.0
FULL: Final = (
    AppData.MODEM_DYNAMIC,
    AppData.MODEM_STATIC,
    AppData.BATTERY,
    AppData.ENVIRONMENTAL,
    AppData.LOCATION,
)

E = TypeVar("E", bound=Event)


@attrs.define(eq=False)
class Harness:
    """An app actor on a bus, with every published event recorded."""

    bus: Bus
    app: AppActor
    seen: list[tuple[float, Event]]
    run_scope: trio.CancelScope | None = None

    def of_type(self, kind: type[E]) -> list[E]:
        """Every published event of class ``kind``."""
        return [event for _, event in self.seen if isinstance(event, kind)]

    def times(self, kind: type[Event] = AppDataGet) -> list[float]:
        """The virtual times at which events of class ``kind`` were published."""
        return [t for t, event in self.seen if isinstance(event, kind)]

    async def publish_at(self, when: float, event: Event) -> None:
        """Publish ``event`` at virtual time ``when``, as a peer would."""
        await trio.sleep_until(when)
        self.bus.publish(event)

    async def start(self, nursery: trio.Nursery) -> None:
        """Run the actor in ``nursery``; ``stop`` ends that run."""
        self.run_scope = trio.CancelScope()
        scope = self.run_scope

        async def run_until_cancelled(
            *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
        ) -> None:
            with scope:
                await self.app.run(task_status=task_status)

        await nursery.start(run_until_cancelled)

    def stop(self) -> None:
        """Cancel the actor's current run (as a supervisor would)."""
        assert self.run_scope is not None
        self.run_scope.cancel()


async def _answer_requests(
    bus: Bus, requests_recv: trio.MemoryReceiveChannel[Event]
) -> None:
    async with requests_recv:
        async for _ in requests_recv:
            await trio.sleep(DATA_DELAY)
            bus.publish(DataReady())


async def start_harness(
    nursery: trio.Nursery,
    config: DeviceConfig | None = ACTIVE,
    *,
    answer: bool = True,
    has_sensors: bool = True,
    has_location: bool = True,
) -> Harness:
    """An app actor started in ``nursery``, given ``config`` at time 0.

    With ``answer`` a stand-in data module answers every request.
    """
    bus = Bus()
    seen: list[tuple[float, Event]] = []
    bus.taps.append(lambda event: seen.append((trio.current_time(), event)))
    if answer:
        # Unbounded: a circular flow (the responder publishes on the bus it
        # listens to) and a test's handful of requests.
        requests_send, requests_recv = trio.open_memory_channel[Event](math.inf)
        bus.taps.append(
            lambda event: (
                requests_send.send_nowait(event)
                if isinstance(event, AppDataGet)
                else None
            )
        )
        nursery.start_soon(_answer_requests, bus, requests_recv)
    app = AppActor(bus, has_sensors=has_sensors, has_location=has_location)
    harness = Harness(bus, app, seen)
    await harness.start(nursery)
    if config is not None:
        bus.publish(DataConfigInit(config))
    return harness


class TestSampleTimeout:
    @pytest.mark.parametrize(
        ("config", "expected"),
        [
            (DeviceConfig(active_wait_timeout=300), 110),
            (DeviceConfig(active_wait_timeout=115), 110),
            (DeviceConfig(active_wait_timeout=60), 55),
            (DeviceConfig(active_wait_timeout=10), 5),
            (DeviceConfig(active_wait_timeout=8), 5),
            (DeviceConfig(active_wait_timeout=1), 5),
            (DeviceConfig(active_mode=False, movement_resolution=120), 110),
            (DeviceConfig(active_mode=False, movement_resolution=30), 25),
            # The interval of the other mode does not count.
            (DeviceConfig(active_mode=False, active_wait_timeout=8), 110),
        ],
    )
    def test_with_location(self, config: DeviceConfig, expected: int) -> None:
        """With a location: max(5, min(interval - 5, 110)) of the mode."""
        with_location = True

        timeout = sample_timeout(config, with_location=with_location)

        assert timeout == expected

    def test_without_location(self) -> None:
        """Without a location the deadline is 2 s whatever the interval."""
        config = DeviceConfig(active_wait_timeout=300)

        timeout = sample_timeout(config, with_location=False)

        assert timeout == 2


class TestStart:
    async def test_app_start_once(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """APP_EVT_START on the first start only; timers survive a restart."""
        with trio.fail_after(1000):
            harness = await start_harness(nursery)
            await harness.publish_at(100, AppDataGetAll())
            harness.stop()

            await trio.sleep_until(200)
            await harness.start(nursery)
            await trio.sleep_until(650)

        assert harness.times(AppStart) == [0.0]
        assert harness.times() == [100, 300, 600]

    async def test_init_waits_for_config(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """Before DATA_EVT_CONFIG_INIT nothing samples, not even an impact."""
        with trio.fail_after(1000):
            harness = await start_harness(nursery, config=None)

            await harness.publish_at(10, CloudConnected())
            await harness.publish_at(20, IMPACT)
            await trio.sleep_until(700)

        assert harness.app.state == STATE_INIT
        assert harness.app.sub_state is None
        assert harness.times() == []
        # The impact is still turned into APP_EVT_DATA_GET_ALL, as in main.c.
        assert harness.times(AppDataGetAll) == [20]


class TestActiveMode:
    async def test_samples_every_active_wait_timeout(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """The default 300 s interval samples at 300, 600, 900."""
        with trio.fail_after(2000):
            harness = await start_harness(nursery)

            await trio.sleep_until(1000)

        assert harness.app.state == STATE_RUNNING
        assert harness.app.sub_state == SUB_STATE_ACTIVE_MODE
        assert harness.times() == [300, 600, 900]
        assert harness.times(AppDataGetAll) == [300, 600, 900]

    async def test_first_cloud_connection_samples_once(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """The first CLOUD_EVT_CONNECTED samples at once; a reconnect does not."""
        with trio.fail_after(2000):
            harness = await start_harness(nursery)

            await harness.publish_at(10, CloudConnected())
            await harness.publish_at(40, CloudDisconnected())
            await harness.publish_at(50, CloudConnected())
            await trio.sleep_until(700)

        assert harness.times() == [10, 300, 600]
        assert harness.app.cloud_connected_once

    async def test_ongoing_request_suppresses_timer(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """A request not yet answered skips the timer until DATA_EVT_DATA_READY."""
        with trio.fail_after(2000):
            harness = await start_harness(nursery, answer=False)

            await harness.publish_at(599, AppDataGetAll())
            ongoing_at_650 = await self._ongoing_at(harness, 650)
            await harness.publish_at(700, DataReady())
            await trio.sleep_until(950)

        # A direct APP_EVT_DATA_GET_ALL is not held back (as in main.c).
        assert ongoing_at_650
        assert harness.times() == [300, 599, 900]
        assert harness.times(AppDataGetAll) == [300, 599, 900]

    @staticmethod
    async def _ongoing_at(harness: Harness, when: float) -> bool:
        await trio.sleep_until(when)
        return harness.app.sample_request_ongoing

    async def test_config_ready_restarts_timer(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """An unchanged active configuration still restarts the interval."""
        with trio.fail_after(2000):
            harness = await start_harness(nursery)

            await harness.publish_at(250, DataConfigReady(ACTIVE))
            await harness.publish_at(
                700, DataConfigReady(DeviceConfig(active_wait_timeout=60))
            )
            await trio.sleep_until(830)

        assert harness.times() == [550, 760, 820]
        assert harness.of_type(AppDataGet)[-1].timeout == 55

    async def test_movement_is_ignored(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """Activity and inactivity neither sample nor count in active mode."""
        with trio.fail_after(2000):
            harness = await start_harness(nursery)

            await harness.publish_at(100, ACTIVITY)
            await harness.publish_at(200, INACTIVITY)
            await trio.sleep_until(350)

        assert harness.times() == [300]
        assert not harness.app.activity


class TestPassiveMode:
    async def test_no_movement_no_sample(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """Without movement only the movement timeout samples, every 3600 s."""
        with trio.fail_after(10_000):
            harness = await start_harness(nursery, PASSIVE)

            await trio.sleep_until(7300)

        assert harness.app.sub_state == SUB_STATE_PASSIVE_MODE
        assert harness.times() == [3600, 7200]

    async def test_activity_and_resolution_window(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """Activity samples; more activity within 120 s is ignored, after it not."""
        with trio.fail_after(10_000):
            harness = await start_harness(nursery, PASSIVE)

            await harness.publish_at(1000, ACTIVITY)
            await harness.publish_at(1060, ACTIVITY)
            await harness.publish_at(1119, ACTIVITY)
            # While active the data sample timer samples every 120 s too.
            await harness.publish_at(1150, ACTIVITY)
            await trio.sleep_until(1300)

        assert harness.times() == [1000, 1120, 1150, 1270]
        assert harness.app.activity

    async def test_activity_restarts_passive_timers(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """A movement sample restarts the movement timeout and the window."""
        with trio.fail_after(10_000):
            harness = await start_harness(nursery, PASSIVE)

            await harness.publish_at(1000, ACTIVITY)
            await trio.sleep_until(1001)
            deadlines = harness.app.snapshot_extra()["next"]
            await harness.publish_at(1010, INACTIVITY)
            await trio.sleep_until(4700)

        assert deadlines == {
            "data_sample_timer": 1120,
            "movement_timeout_timer": 4600,
            "movement_resolution_timer": 1120,
        }
        assert harness.times() == [1000, 1010, 4610]

    async def test_inactivity_samples(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """INACTIVITY samples too, even inside the window (spec §18.11)."""
        with trio.fail_after(10_000):
            harness = await start_harness(nursery, PASSIVE)

            await harness.publish_at(500, INACTIVITY)
            await trio.sleep_until(4200)

        assert harness.times() == [500, 4100]
        assert not harness.app.activity

    async def test_ongoing_request_ignores_movement(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """Movement during an unanswered request neither samples nor restarts."""
        with trio.fail_after(10_000):
            harness = await start_harness(nursery, PASSIVE, answer=False)

            await harness.publish_at(100, IMPACT)
            await harness.publish_at(300, ACTIVITY)
            await harness.publish_at(400, DataReady())
            await trio.sleep_until(500)

        # Activity was recorded: the data sample timer (period 120 from 0)
        # samples at 480 once the request is answered.
        assert harness.times() == [100, 480]

    async def test_switch_to_passive_and_back(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """DATA_EVT_CONFIG_READY switches the mode and starts its timers."""
        with trio.fail_after(10_000):
            harness = await start_harness(nursery)

            await harness.publish_at(400, DataConfigReady(PASSIVE))
            await trio.sleep_until(401)
            passive = harness.app.sub_state
            await harness.publish_at(4100, DataConfigReady(ACTIVE))
            await trio.sleep_until(4800)

        assert passive == SUB_STATE_PASSIVE_MODE
        assert harness.app.sub_state == SUB_STATE_ACTIVE_MODE
        assert harness.times() == [300, 4000, 4400, 4700]
        assert harness.app.snapshot_extra()["next"]["movement_timeout_timer"] is None

    async def test_passive_config_ready_restarts_timers(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """An unchanged passive configuration restarts the movement timeout."""
        with trio.fail_after(10_000):
            harness = await start_harness(nursery, PASSIVE)

            await harness.publish_at(3000, DataConfigReady(PASSIVE))
            await trio.sleep_until(6700)

        assert harness.times() == [6600]


class TestDataGet:
    @pytest.mark.parametrize(
        ("config", "has_location", "expected"),
        [
            (DeviceConfig(active_wait_timeout=300), True, 110),
            (DeviceConfig(active_wait_timeout=60), True, 55),
            (DeviceConfig(active_wait_timeout=8), True, 5),
            (DeviceConfig(active_wait_timeout=300), False, 2),
            (PASSIVE, True, 110),
        ],
    )
    async def test_timeout(
        self,
        autojump_clock: trio.testing.MockClock,
        nursery: trio.Nursery,
        config: DeviceConfig,
        has_location: bool,
        expected: int,
    ) -> None:
        """The request's deadline follows the mode's interval and the location."""
        with trio.fail_after(100):
            harness = await start_harness(
                nursery, config, has_location=has_location
            )

            await harness.publish_at(1, IMPACT)
            await trio.sleep_until(2)

        assert [e.timeout for e in harness.of_type(AppDataGet)] == [expected]

    async def test_data_list(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """Static data is asked for until it was sampled once."""
        with trio.fail_after(100):
            harness = await start_harness(nursery)

            await harness.publish_at(1, AppDataGetAll())
            await harness.publish_at(10, STATIC)
            await harness.publish_at(20, AppDataGetAll())
            await trio.sleep_until(30)

        assert [e.data_list for e in harness.of_type(AppDataGet)] == [
            FULL,
            tuple(d for d in FULL if d is not AppData.MODEM_STATIC),
        ]
        assert harness.app.modem_static_sampled

    async def test_all_location_methods_disabled(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """With nod=[gnss, ncell, wifi] there is no LOCATION and 2 s suffice."""
        nod = NoData(gnss=True, neighbor_cell=True, wifi=True)
        config = DeviceConfig(no_data=nod)
        with trio.fail_after(100):
            harness = await start_harness(nursery, config)

            await harness.publish_at(1, AppDataGetAll())
            await trio.sleep_until(2)

        [request] = harness.of_type(AppDataGet)
        assert request.data_list == FULL[:-1]
        assert request.timeout == 2

    async def test_one_location_method_left(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """One enabled location method is enough to ask for LOCATION."""
        nod = NoData(gnss=True, neighbor_cell=True, wifi=False)
        config = DeviceConfig(no_data=nod)
        with trio.fail_after(100):
            harness = await start_harness(nursery, config)

            await harness.publish_at(1, AppDataGetAll())
            await trio.sleep_until(2)

        [request] = harness.of_type(AppDataGet)
        assert request.data_list == FULL
        assert request.timeout == 110

    async def test_without_sensors_and_location(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """Without sensor and location modules only modem data is asked for."""
        with trio.fail_after(100):
            harness = await start_harness(
                nursery, has_sensors=False, has_location=False
            )

            await harness.publish_at(1, AppDataGetAll())
            await trio.sleep_until(2)

        [request] = harness.of_type(AppDataGet)
        assert request.data_list == (AppData.MODEM_DYNAMIC, AppData.MODEM_STATIC)
        assert request.timeout == 2


class TestImpact:
    @pytest.mark.parametrize("config", [ACTIVE, PASSIVE])
    async def test_impact_samples_in_any_mode(
        self,
        autojump_clock: trio.testing.MockClock,
        nursery: trio.Nursery,
        config: DeviceConfig,
    ) -> None:
        """An impact samples at once, in active and in passive mode."""
        with trio.fail_after(100):
            harness = await start_harness(nursery, config)

            await harness.publish_at(42, IMPACT)
            await trio.sleep_until(50)

        assert harness.times(AppDataGetAll) == [42]
        assert harness.times() == [42]


class TestShutdown:
    @pytest.mark.parametrize("config", [ACTIVE, PASSIVE])
    async def test_shutdown_stops_everything(
        self,
        autojump_clock: trio.testing.MockClock,
        nursery: trio.Nursery,
        config: DeviceConfig,
    ) -> None:
        """Shutdown stops the timers and acknowledges once with the app's id."""
        with trio.fail_after(10_000):
            harness = await start_harness(nursery, config)

            await harness.publish_at(100, SHUTDOWN)
            await harness.publish_at(150, SHUTDOWN)
            await harness.publish_at(200, CloudConnected())
            await harness.publish_at(210, ACTIVITY)
            await harness.publish_at(220, IMPACT)
            await harness.publish_at(230, DataConfigReady(ACTIVE))
            await trio.sleep_until(8000)

        assert harness.of_type(AppShutdownReady) == [AppShutdownReady(harness.app.id)]
        assert harness.times(AppShutdownReady) == [100]
        assert harness.app.state == STATE_SHUTDOWN
        assert harness.times() == []
        assert not any(t.pending for t in harness.app.timers.timers)
