"""The modem actor and the simulated modem, in virtual time.

The actor runs on a bare bus; a tap records every published event with the
virtual time it was published at, and the tests publish the other modules'
events themselves.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from typing import Final, TypeVar

import attrs
import pytest
import trio

from actors.modem import (
    ModemActor,
    ModemDriverError,
    ModemState,
    SimulatedModem,
    luhn_valid,
)
from actors.runtime import Bus
from protocols.app import (
    AppData,
    AppDataGet,
    AppLteConnect,
    AppLteDisconnect,
    AppStart,
    ShutdownReason,
    UtilShutdownRequest,
)
from protocols.base import Event, Module
from protocols.cloud import (
    CloudLteConnect,
    CloudLteDisconnect,
    CloudUserAssociated,
    CloudUserAssociationRequest,
)
from protocols.modem import (
    ModemDynamicDataReady,
    ModemError,
    ModemShutdownReady,
    ModemStaticDataReady,
    NetworkMode,
)

IMEI: Final = "352656100000010"
ATTACH_DELAY: Final = 2.0

INITIALIZED: Final = "MODEM_EVT_INITIALIZED"
CONNECTING: Final = "MODEM_EVT_LTE_CONNECTING"
CONNECTED: Final = "MODEM_EVT_LTE_CONNECTED"
DISCONNECTED: Final = "MODEM_EVT_LTE_DISCONNECTED"
SHUTDOWN_READY: Final = "MODEM_EVT_SHUTDOWN_READY"
SHUTDOWN: Final = UtilShutdownRequest(ShutdownReason.GENERIC)
BOTH: Final = AppDataGet(
    data_list=(AppData.MODEM_DYNAMIC, AppData.MODEM_STATIC), timeout=2
)

E = TypeVar("E", bound=Event)


@attrs.define(eq=False)
class Harness:
    """A modem actor on a bus, with every published event recorded."""

    bus: Bus
    driver: SimulatedModem
    modem: ModemActor
    seen: list[tuple[float, Event]]

    def events(self) -> list[tuple[float, str]]:
        """The modem's events, with the virtual time of each."""
        return [
            (t, event.spec_name)
            for t, event in self.seen
            if event.source is Module.MODEM
        ]

    def of_type(self, kind: type[E]) -> list[E]:
        """Every published event of class ``kind``."""
        return [event for _, event in self.seen if isinstance(event, kind)]

    async def publish_at(self, when: float, event: Event) -> None:
        """Publish ``event`` at virtual time ``when``, as a peer would."""
        await trio.sleep_until(when)
        self.bus.publish(event)

    async def start(self, nursery: trio.Nursery) -> trio.CancelScope:
        """Run the actor in ``nursery``; the scope returned stops that run."""
        run_scope = trio.CancelScope()

        async def run_until_cancelled(
            *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
        ) -> None:
            with run_scope:
                await self.modem.run(task_status=task_status)

        await nursery.start(run_until_cancelled)
        return run_scope


def make_harness(
    *,
    outages: Sequence[tuple[float, float]] = (),
    attach_delay: float = ATTACH_DELAY,
    failing: Sequence[str] = (),
) -> Harness:
    """A modem actor over a simulated modem, not started yet."""
    bus = Bus()
    seen: list[tuple[float, Event]] = []
    bus.taps.append(lambda event: seen.append((trio.current_time(), event)))
    driver = SimulatedModem(imei=IMEI, failing=set(failing))
    modem = ModemActor(
        bus, driver=driver, attach_delay=attach_delay, outages=outages
    )
    return Harness(bus, driver, modem, seen)


async def start_harness(
    nursery: trio.Nursery,
    *,
    outages: Sequence[tuple[float, float]] = (),
    attach_delay: float = ATTACH_DELAY,
    failing: Sequence[str] = (),
) -> Harness:
    """A modem actor over a simulated modem, started in ``nursery``."""
    harness = make_harness(
        outages=outages, attach_delay=attach_delay, failing=failing
    )
    await harness.start(nursery)
    return harness


class TestSimulatedModem:
    async def test_static_data_is_plausible(self) -> None:
        """Static data has the IMEI, a Luhn-valid ICCID and the nRF9160 DK."""
        modem = SimulatedModem(imei=IMEI)

        data = await modem.static_data(1234)

        assert data.timestamp == 1234
        assert data.imei == IMEI
        assert len(data.iccid) in (19, 20)
        assert data.iccid.startswith("89")
        assert luhn_valid(data.iccid)
        assert data.modem_fw == "mfw_nrf9160_1.3.5"
        assert data.board_version == "nrf9160dk_nrf9160"
        assert data.app_version == "0.0.0-development"

    async def test_app_version_is_a_parameter(self) -> None:
        """The application version is the one the modem was built with."""
        modem = SimulatedModem(imei=IMEI, app_version="1.2.3")

        data = await modem.static_data(0)

        assert data.app_version == "1.2.3"

    async def test_dynamic_data_is_plausible(self) -> None:
        """Dynamic data describes an LTE-M cell in band 20 of 242/02."""
        modem = SimulatedModem(imei=IMEI)
        await modem.connect()

        data = await modem.dynamic_data(500)

        assert data.timestamp == 500
        assert -140 <= data.rsrp <= -44
        assert 0 <= data.cell_id < 2**28
        assert 0 <= data.area_code < 2**16
        assert (data.mcc, data.mnc, data.mccmnc) == (242, 2, "24202")
        assert data.ip_address.startswith("10.160.")
        assert data.apn == "telenor.smart"
        assert data.band == 20
        assert data.network_mode is NetworkMode.LTE_M

    async def test_rsrp_varies_deterministically(self) -> None:
        """Two modems with one seed give the same varying RSRP sequence."""
        first, second, other = (
            SimulatedModem(imei=IMEI, seed=seed) for seed in (7, 7, 8)
        )
        for modem in (first, second, other):
            await modem.connect()

        sequences = [
            [(await modem.dynamic_data(0)).rsrp for _ in range(20)]
            for modem in (first, second, other)
        ]

        assert sequences[0] == sequences[1]
        assert sequences[0] != sequences[2]
        assert len(set(sequences[0])) > 1
        assert all(-140 <= rsrp <= -44 for rsrp in sequences[0])

    async def test_dynamic_data_needs_normal_mode(self) -> None:
        """Before connecting and when offline there is no network to report."""
        modem = SimulatedModem(imei=IMEI)

        with pytest.raises(ModemDriverError) as before:
            await modem.dynamic_data(0)
        await modem.connect()
        await modem.go_offline()
        with pytest.raises(ModemDriverError) as offline:
            await modem.dynamic_data(0)

        assert before.value.err == -errno.ENOTCONN
        assert offline.value.err == -errno.ENOTCONN

    async def test_failing_operations_raise_eio(self) -> None:
        """An operation named in ``failing`` fails with -EIO."""
        modem = SimulatedModem(imei=IMEI, failing={"static_data"})

        with pytest.raises(ModemDriverError) as failure:
            await modem.static_data(0)

        assert failure.value.err == -errno.EIO
        assert failure.value.operation == "static_data"

    @pytest.mark.parametrize("imei", ["35265610000001", "35265610000001x", ""])
    def test_rejects_malformed_imei(self, imei: str) -> None:
        """An IMEI is exactly 15 digits."""
        with pytest.raises(ValueError, match="15 digits"):
            SimulatedModem(imei=imei)


class TestLuhn:
    @pytest.mark.parametrize(
        ("number", "valid"),
        [("79927398713", True), ("79927398710", False), (IMEI, True), ("8", False)],
    )
    def test_luhn_valid(self, number: str, valid: bool) -> None:
        """The check digit is verified as in ISO/IEC 7812."""
        result = luhn_valid(number)

        assert result is valid


class TestModemStart:
    async def test_initialized_at_start(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """The first start publishes MODEM_EVT_INITIALIZED, then waits."""
        with trio.fail_after(200):
            harness = await start_harness(nursery)

            await trio.sleep(100)

        assert harness.events() == [(0.0, INITIALIZED)]
        assert harness.modem.state == "STATE_DISCONNECTED"
        assert harness.modem.imei == IMEI
        assert harness.modem.uptime_ms() == 100_000

    async def test_imei_failure_is_a_modem_error(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """A modem that cannot tell its IMEI raises MODEM_EVT_ERROR."""
        with trio.fail_after(10):
            harness = await start_harness(nursery, failing=["imei"])

            await trio.sleep(1)

        assert harness.events() == [(0.0, INITIALIZED), (0.0, "MODEM_EVT_ERROR")]
        assert [e.err for e in harness.of_type(ModemError)] == [-errno.EIO]


class TestModemAttach:
    async def test_app_start_connects_after_attach_delay(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """APP_EVT_START: CONNECTING at once, CONNECTED attach_delay later."""
        harness = await start_harness(nursery, attach_delay=3.5)

        with trio.fail_after(100):
            await harness.publish_at(5, AppStart())
            await trio.sleep_until(50)

        assert harness.events() == [
            (0.0, INITIALIZED),
            (5.0, CONNECTING),
            (8.5, CONNECTED),
        ]
        assert harness.modem.state == "STATE_CONNECTED"
        assert harness.driver.functional_mode == 1

    async def test_app_lte_connect_connects(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """APP_EVT_LTE_CONNECT connects; the firmware slipped (§18.3)."""
        harness = await start_harness(nursery)

        with trio.fail_after(100):
            await harness.publish_at(1, AppLteDisconnect())
            await harness.publish_at(2, AppLteConnect())
            await trio.sleep_until(50)

        assert harness.events() == [
            (0.0, INITIALIZED),
            (2.0, CONNECTING),
            (4.0, CONNECTED),
        ]

    async def test_second_app_start_is_ignored(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """A start request while attaching neither restarts nor repeats it."""
        harness = await start_harness(nursery)

        with trio.fail_after(100):
            await harness.publish_at(0, AppStart())
            await harness.publish_at(1, AppStart())
            await trio.sleep_until(50)

        assert harness.events() == [
            (0.0, INITIALIZED),
            (0.0, CONNECTING),
            (2.0, CONNECTED),
        ]

    async def test_connect_failure_is_a_modem_error(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """A refused connect raises MODEM_EVT_ERROR; the modem stays off."""
        harness = await start_harness(nursery, failing=["connect"])

        with trio.fail_after(100):
            await harness.publish_at(1, AppStart())
            await trio.sleep_until(50)

        assert harness.events() == [(0.0, INITIALIZED), (1.0, "MODEM_EVT_ERROR")]
        assert harness.modem.state == "STATE_DISCONNECTED"
        assert harness.modem.last_error == "connect failed: EIO"


class TestModemOutages:
    async def test_one_outage(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """The link drops at 600 s and is back attach_delay after 720 s."""
        harness = await start_harness(nursery, outages=[(600, 120)])

        with trio.fail_after(1000):
            await harness.publish_at(0, AppStart())
            await trio.sleep_until(900)

        assert harness.events() == [
            (0.0, INITIALIZED),
            (0.0, CONNECTING),
            (2.0, CONNECTED),
            (600.0, DISCONNECTED),
            (720.0, CONNECTING),
            (722.0, CONNECTED),
        ]
        assert harness.modem.state == "STATE_CONNECTED"

    async def test_two_outages(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """Each scripted outage drops and restores the link in turn."""
        harness = await start_harness(
            nursery, outages=[(600, 120), (1000, 30.5)], attach_delay=4
        )

        with trio.fail_after(2000):
            await harness.publish_at(0, AppStart())
            await trio.sleep_until(1500)

        assert harness.events()[3:] == [
            (600.0, DISCONNECTED),
            (720.0, CONNECTING),
            (724.0, CONNECTED),
            (1000.0, DISCONNECTED),
            (1030.5, CONNECTING),
            (1034.5, CONNECTED),
        ]
        assert harness.modem.snapshot().extra["next_outage_at"] is None

    async def test_outage_before_start_delays_the_attach(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """Without a network the modem searches until the network is back."""
        harness = await start_harness(nursery, outages=[(10, 50)])

        with trio.fail_after(200):
            await harness.publish_at(20, AppStart())
            await trio.sleep_until(100)

        assert harness.events() == [
            (0.0, INITIALIZED),
            (20.0, CONNECTING),
            (62.0, CONNECTED),
        ]

    async def test_outage_while_attaching(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """An outage during the attach restarts it when the network is back."""
        harness = await start_harness(
            nursery, outages=[(10, 5)], attach_delay=30
        )

        with trio.fail_after(200):
            await harness.publish_at(0, AppStart())
            await trio.sleep_until(100)

        assert harness.events() == [
            (0.0, INITIALIZED),
            (0.0, CONNECTING),
            (45.0, CONNECTED),
        ]

    def test_overlapping_outages_are_rejected(self) -> None:
        """Outages must be in order and must not overlap."""
        with pytest.raises(ValueError, match="before outage 0 ended"):
            make_harness(outages=[(600, 120), (700, 10)])

    def test_negative_attach_delay_is_rejected(self) -> None:
        """An attach cannot complete before it was asked for."""
        with pytest.raises(ValueError, match="attach_delay"):
            make_harness(attach_delay=-1)


class TestModemData:
    async def test_static_and_dynamic_data(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """APP_EVT_DATA_GET gets both samples, stamped with the uptime."""
        harness = await start_harness(nursery)

        with trio.fail_after(100):
            await harness.publish_at(0, AppStart())
            await harness.publish_at(10.25, BOTH)
            await trio.sleep_until(20)

        assert harness.events()[3:] == [
            (10.25, "MODEM_EVT_MODEM_DYNAMIC_DATA_READY"),
            (10.25, "MODEM_EVT_MODEM_STATIC_DATA_READY"),
        ]
        (static,) = [e.data for e in harness.of_type(ModemStaticDataReady)]
        (dynamic,) = [e.data for e in harness.of_type(ModemDynamicDataReady)]
        assert (static.timestamp, dynamic.timestamp) == (10_250, 10_250)
        assert static.imei == IMEI
        assert len(static.imei) == 15
        assert luhn_valid(static.iccid)
        assert -140 <= dynamic.rsrp <= -44
        assert dynamic.mccmnc == "24202"
        assert harness.modem.current_network() == dynamic

    async def test_not_ready_when_the_driver_fails(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """A failed read publishes the NOT_READY event instead."""
        harness = await start_harness(
            nursery, failing=["static_data", "dynamic_data"]
        )

        with trio.fail_after(100):
            await harness.publish_at(0, AppStart())
            await harness.publish_at(5, BOTH)
            await trio.sleep_until(20)

        assert harness.events()[3:] == [
            (5.0, "MODEM_EVT_MODEM_DYNAMIC_DATA_NOT_READY"),
            (5.0, "MODEM_EVT_MODEM_STATIC_DATA_NOT_READY"),
        ]
        assert harness.modem.current_network() is None

    async def test_dynamic_data_not_ready_before_connecting(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """Before APP_EVT_START the modem has no network to describe."""
        harness = await start_harness(nursery)

        with trio.fail_after(100):
            await harness.publish_at(5, BOTH)
            await trio.sleep_until(20)

        assert harness.events() == [
            (0.0, INITIALIZED),
            (5.0, "MODEM_EVT_MODEM_DYNAMIC_DATA_NOT_READY"),
            (5.0, "MODEM_EVT_MODEM_STATIC_DATA_READY"),
        ]

    async def test_other_data_is_not_the_modems(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """Requests without modem data get no answer from the modem."""
        harness = await start_harness(nursery)
        request = AppDataGet(
            data_list=(AppData.BATTERY, AppData.ENVIRONMENTAL), timeout=2
        )

        with trio.fail_after(100):
            await harness.publish_at(0, AppStart())
            await harness.publish_at(5, request)
            await trio.sleep_until(20)

        assert [name for _, name in harness.events()] == [
            INITIALIZED,
            CONNECTING,
            CONNECTED,
        ]

    async def test_network_is_read_on_connection(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """LTE connected refreshes the network data read for A-GNSS."""
        harness = await start_harness(nursery)

        with trio.fail_after(100):
            await harness.publish_at(0, AppStart())
            await trio.sleep_until(1)
            before = harness.modem.current_network()
            await trio.sleep_until(20)

        network = harness.modem.current_network()
        assert before is None
        assert network is not None
        assert network.timestamp == 2000
        assert harness.driver.samples == 1


class TestModemRequests:
    async def test_cloud_lte_disconnect_and_connect(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """The cloud can take the modem offline and bring it back."""
        harness = await start_harness(nursery)

        with trio.fail_after(100):
            await harness.publish_at(0, AppStart())
            await harness.publish_at(10, CloudLteDisconnect())
            await trio.sleep_until(15)
            mode_offline = harness.driver.functional_mode
            await harness.publish_at(20, CloudLteConnect())
            await trio.sleep_until(50)

        assert harness.events()[3:] == [
            (10.0, DISCONNECTED),
            (20.0, CONNECTING),
            (22.0, CONNECTED),
        ]
        assert mode_offline == 4

    async def test_disconnect_while_attaching(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """Going offline mid-attach cancels it; no PDN context was ever up."""
        harness = await start_harness(nursery)

        with trio.fail_after(100):
            await harness.publish_at(0, AppStart())
            await harness.publish_at(1, AppLteDisconnect())
            await trio.sleep_until(50)

        assert harness.events() == [(0.0, INITIALIZED), (0.0, CONNECTING)]
        assert harness.modem.state == "STATE_DISCONNECTED"

    async def test_offline_modem_does_not_reattach(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """After an offline request, the end of an outage changes nothing."""
        harness = await start_harness(nursery, outages=[(600, 120)])

        with trio.fail_after(1000):
            await harness.publish_at(0, AppStart())
            await harness.publish_at(10, CloudLteDisconnect())
            await trio.sleep_until(900)

        assert harness.events()[-1] == (10.0, DISCONNECTED)

    async def test_psm_follows_user_association(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """PSM is off while nRF Cloud waits for the user, then on."""
        harness = await start_harness(nursery)

        with trio.fail_after(100):
            await harness.publish_at(1, CloudUserAssociationRequest())
            await trio.sleep_until(2)
            during = (harness.modem.psm_enabled, harness.driver.psm_requested)
            await harness.publish_at(3, CloudUserAssociated())
            await trio.sleep_until(4)

        assert during == (False, False)
        assert harness.modem.psm_enabled
        assert harness.driver.psm_requested
        assert harness.modem.snapshot().extra["psm_enabled"] is True


class TestModemShutdown:
    async def test_ack_and_silence(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """The modem powers off, acks with its id, and says nothing after."""
        harness = await start_harness(nursery, outages=[(600, 120)])

        with trio.fail_after(2000):
            await harness.publish_at(0, AppStart())
            await harness.publish_at(100, SHUTDOWN)
            await harness.publish_at(200, BOTH)
            await harness.publish_at(300, CloudLteConnect())
            await trio.sleep_until(1000)

        assert harness.events()[3:] == [(100.0, SHUTDOWN_READY)]
        assert [e.id for e in harness.of_type(ModemShutdownReady)] == [
            harness.modem.id
        ]
        assert harness.modem.state == "STATE_SHUTDOWN"
        assert harness.modem.modem_state is ModemState.SHUTDOWN
        assert harness.driver.functional_mode == 0
        assert harness.modem.snapshot().extra["next_outage_at"] is None

    async def test_pending_attach_is_cancelled(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """A shutdown during the attach means LTE never comes up."""
        harness = await start_harness(nursery, attach_delay=30)

        with trio.fail_after(200):
            await harness.publish_at(0, AppStart())
            await harness.publish_at(10, SHUTDOWN)
            await trio.sleep_until(100)

        assert harness.events() == [
            (0.0, INITIALIZED),
            (0.0, CONNECTING),
            (10.0, SHUTDOWN_READY),
        ]

    async def test_power_off_failure_still_acks(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """The modem acks even when the radio will not turn off."""
        harness = await start_harness(nursery, failing=["power_off"])

        with trio.fail_after(100):
            await harness.publish_at(5, SHUTDOWN)
            await trio.sleep_until(10)

        assert harness.events() == [(0.0, INITIALIZED), (5.0, SHUTDOWN_READY)]


class TestModemInjection:
    async def test_loss_and_regain(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """An injected loss drops the link; the regain reattaches."""
        harness = await start_harness(nursery)

        with trio.fail_after(200):
            await harness.publish_at(0, AppStart())
            await trio.sleep_until(50)
            harness.modem.inject_lte_loss()
            await trio.sleep_until(80)
            harness.modem.inject_lte_regain()
            await trio.sleep_until(100)

        assert harness.events()[3:] == [
            (50.0, DISCONNECTED),
            (80.0, CONNECTING),
            (82.0, CONNECTED),
        ]

    async def test_injected_loss_outlasts_a_scripted_outage(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """An injected loss lasts until the injected regain."""
        harness = await start_harness(nursery, outages=[(100, 20)])

        with trio.fail_after(500):
            await harness.publish_at(0, AppStart())
            await trio.sleep_until(110)
            harness.modem.inject_lte_loss()
            await trio.sleep_until(200)
            harness.modem.inject_lte_regain()
            await trio.sleep_until(300)

        assert harness.events()[3:] == [
            (100.0, DISCONNECTED),
            (200.0, CONNECTING),
            (202.0, CONNECTED),
        ]

    async def test_regain_with_network_changes_nothing(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """A regain while the network is there is a no-op."""
        harness = await start_harness(nursery)

        with trio.fail_after(100):
            await harness.publish_at(0, AppStart())
            await trio.sleep_until(10)
            harness.modem.inject_lte_regain()
            await trio.sleep_until(20)

        assert [name for _, name in harness.events()] == [
            INITIALIZED,
            CONNECTING,
            CONNECTED,
        ]

    async def test_ignored_after_shutdown(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """Injections after the shutdown acknowledgement publish nothing."""
        harness = await start_harness(nursery)

        with trio.fail_after(100):
            await harness.publish_at(0, AppStart())
            await harness.publish_at(10, SHUTDOWN)
            await trio.sleep_until(20)
            harness.modem.inject_lte_loss()
            harness.modem.inject_lte_regain()
            await trio.sleep_until(30)

        assert harness.events()[-1] == (10.0, SHUTDOWN_READY)


class TestModemRestart:
    async def test_pending_attach_survives_a_restart(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """The attach fires on time; INITIALIZED is not repeated."""
        harness = make_harness(attach_delay=10)
        run_scope = await harness.start(nursery)

        with trio.fail_after(100):
            await harness.publish_at(0, AppStart())
            await trio.sleep_until(3)
            run_scope.cancel()
            await trio.sleep_until(6)
            await harness.start(nursery)
            await trio.sleep_until(50)

        assert harness.events() == [
            (0.0, INITIALIZED),
            (0.0, CONNECTING),
            (10.0, CONNECTED),
        ]

    async def test_pending_outage_survives_a_restart(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """Outages keep their schedule, counted from the first start."""
        harness = make_harness(outages=[(600, 120)])
        run_scope = await harness.start(nursery)

        with trio.fail_after(1000):
            await harness.publish_at(0, AppStart())
            await trio.sleep_until(300)
            run_scope.cancel()
            await trio.sleep_until(400)
            await harness.start(nursery)
            await trio.sleep_until(900)

        assert harness.events() == [
            (0.0, INITIALIZED),
            (0.0, CONNECTING),
            (2.0, CONNECTED),
            (600.0, DISCONNECTED),
            (720.0, CONNECTING),
            (722.0, CONNECTED),
        ]
        assert harness.modem.uptime_ms() == 900_000

    async def test_deadline_missed_while_stopped_fires_at_restart(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """An attach due while the actor was down completes when it is back."""
        harness = make_harness()
        run_scope = await harness.start(nursery)

        with trio.fail_after(100):
            await harness.publish_at(0, AppStart())
            await trio.sleep_until(1)
            run_scope.cancel()
            await trio.sleep_until(5)
            await harness.start(nursery)
            await trio.sleep_until(50)

        assert harness.events()[1:] == [(0.0, CONNECTING), (5.0, CONNECTED)]


class TestModemAssistance:
    async def test_assistance_is_counted(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """Each kind of assistance data is counted, summed and kept."""
        harness = await start_harness(nursery)

        harness.modem.receive_assistance("agnss", b"\x01" * 100)
        harness.modem.receive_assistance("agnss", b"\x02" * 50)
        harness.modem.receive_assistance("pgps", b"\x03" * 7)

        agnss = harness.modem.assistance["agnss"]
        assert (agnss.count, agnss.total_bytes) == (2, 150)
        assert agnss.last == b"\x02" * 50
        assert harness.modem.snapshot().extra["assistance"] == {
            "agnss": {"count": 2, "bytes": 150},
            "pgps": {"count": 1, "bytes": 7},
        }


class TestModemSnapshot:
    async def test_snapshot_extra(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """The debug view shows the IMEI, the link, PSM and the next outage."""
        harness = await start_harness(nursery, outages=[(600, 120)])

        with trio.fail_after(100):
            await harness.publish_at(0, AppStart())
            await trio.sleep_until(10)

        assert harness.modem.snapshot().extra == {
            "imei": IMEI,
            "lte_connected": True,
            "network_available": True,
            "psm_enabled": True,
            "assistance": {},
            "next_outage_at": 600.0,
            "lte_regain_at": None,
        }
