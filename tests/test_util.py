"""The util actor's shutdown protocol, in virtual time.

The modules around the util actor are played by the test: it publishes their
errors and their ``*_SHUTDOWN_READY`` acknowledgements itself, so every
reboot time below follows from the spec alone (section 12 and Appendix A.4):
the reboot timer is armed for 30 s on the first request, and re-armed to 5 s
after the last registered module acknowledged.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable

import attrs
import pytest
import trio

from actors.runtime import Bus
from actors.util import Reboot, UtilActor
from protocols.app import AppError, AppShutdownReady, ShutdownReason
from protocols.base import ErrorBase, Event
from protocols.cloud import (
    CloudError,
    CloudFotaDone,
    CloudRebootRequest,
    CloudShutdownReady,
)
from protocols.data import DataError
from protocols.modem import ModemCarrierRebootRequest, ModemError, ModemShutdownReady
from protocols.peripherals import LocationErrorCode, SensorError, UiError

# The ids the fake cloud, modem and app modules acknowledge with.
CLOUD, MODEM, APP = 101, 102, 103
LIMIT = 120


@attrs.define(eq=False)
class UtilRig:
    """A util actor on a bus, with every reboot and event recorded."""

    bus: Bus
    util: UtilActor
    reboots: list[tuple[float, Reboot]]
    rebooted: trio.Event
    seen: list[tuple[float, Event]]

    def publish(self, event: Event) -> None:
        """Publish ``event`` as if another module had."""
        self.bus.publish(event)

    def ack_all(self) -> None:
        """The cloud, modem and app modules acknowledge the shutdown."""
        self.publish(CloudShutdownReady(CLOUD))
        self.publish(ModemShutdownReady(MODEM))
        self.publish(AppShutdownReady(APP))

    def times(self, spec_name: str) -> list[float]:
        """When each event named ``spec_name`` was published."""
        return [t for t, event in self.seen if event.spec_name == spec_name]


async def start_util(
    nursery: trio.Nursery, ids: Iterable[int] = (CLOUD, MODEM, APP)
) -> UtilRig:
    """Start a util actor waiting for the acknowledgements of ``ids``."""
    bus = Bus()
    reboots: list[tuple[float, Reboot]] = []
    rebooted = trio.Event()
    seen: list[tuple[float, Event]] = []

    def on_reboot(reboot: Reboot) -> None:
        reboots.append((trio.current_time(), reboot))
        rebooted.set()

    bus.taps.append(lambda event: seen.append((trio.current_time(), event)))
    util = UtilActor(bus, on_reboot=on_reboot)
    util.register_shutdown(ids)
    await nursery.start(util.run)
    return UtilRig(bus, util, reboots, rebooted, seen)


class TestRebootTimer:
    async def test_all_acks_reboot_5s_after_the_last(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """Every module acknowledging at 2 s moves the reboot from 30 s to 7 s."""
        rig = await start_util(nursery)

        with trio.fail_after(LIMIT):
            rig.publish(CloudError(-errno.ENETUNREACH))
            await trio.sleep(2)
            rig.ack_all()
            await rig.rebooted.wait()

        assert rig.times("UTIL_EVT_SHUTDOWN_REQUEST") == [0]
        assert rig.reboots == [
            (
                7,
                Reboot(
                    reason=ShutdownReason.GENERIC,
                    cause=f"CLOUD_EVT_ERROR({-errno.ENETUNREACH})",
                    acknowledged=True,
                ),
            )
        ]
        assert rig.util.acknowledged == {CLOUD, MODEM, APP}
        assert rig.util.awaiting_ack == set()

    async def test_missing_ack_reboots_at_the_timeout(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """A module that never acknowledges delays the reboot to 30 s, not forever."""
        rig = await start_util(nursery)

        with trio.fail_after(LIMIT):
            rig.publish(ModemError(-errno.EIO))
            await trio.sleep(2)
            rig.publish(CloudShutdownReady(CLOUD))
            rig.publish(AppShutdownReady(APP))
            await trio.sleep(1)
            waiting = (set(rig.util.awaiting_ack), rig.util.snapshot().extra)
            await rig.rebooted.wait()

        assert waiting == (
            {MODEM},
            {
                "reason": "generic",
                "cause": f"MODEM_EVT_ERROR({-errno.EIO})",
                "awaiting_ack": [MODEM],
            },
        )
        [(reboot_at, reboot)] = rig.reboots
        assert reboot_at == 30
        assert not reboot.acknowledged
        assert rig.util.awaiting_ack == {MODEM}
        assert rig.util.snapshot().extra["awaiting_ack"] == [MODEM]

    async def test_only_the_first_request_counts(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """A second error neither moves the reboot timer nor changes the reason."""
        rig = await start_util(nursery)

        with trio.fail_after(LIMIT):
            rig.publish(DataError(-errno.ENOMEM))
            await trio.sleep(10)
            rig.publish(CloudFotaDone())
            rig.publish(ModemError(-errno.EIO))
            await rig.rebooted.wait()

        assert rig.times("UTIL_EVT_SHUTDOWN_REQUEST") == [0]
        assert rig.reboots == [
            (
                30,
                Reboot(
                    reason=ShutdownReason.GENERIC,
                    cause=f"DATA_EVT_ERROR({-errno.ENOMEM})",
                    acknowledged=False,
                ),
            )
        ]

    async def test_no_reboot_without_a_request(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """Without a reboot request the timer never fires and no request is sent."""
        rig = await start_util(nursery)

        await trio.sleep(1000)

        assert rig.reboots == []
        assert rig.times("UTIL_EVT_SHUTDOWN_REQUEST") == []
        assert rig.util.state == "STATE_INIT"
        assert not rig.util.reboot.pending


class TestReasons:
    async def test_fota_done_is_a_fota_update(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """CLOUD_EVT_FOTA_DONE asks for a reboot with reason FOTA_UPDATE."""
        rig = await start_util(nursery)

        with trio.fail_after(LIMIT):
            rig.publish(CloudFotaDone())
            await trio.sleep(1)
            rig.ack_all()
            await rig.rebooted.wait()

        assert rig.reboots == [
            (
                6,
                Reboot(
                    reason=ShutdownReason.FOTA_UPDATE,
                    cause="CLOUD_EVT_FOTA_DONE",
                    acknowledged=True,
                ),
            )
        ]
        assert [e.reason for _, e in rig.seen if e.spec_name.startswith("UTIL")] == [
            ShutdownReason.FOTA_UPDATE
        ]

    @pytest.mark.parametrize(
        ("event", "cause"),
        [
            (CloudError(-errno.ENETUNREACH), f"CLOUD_EVT_ERROR({-errno.ENETUNREACH})"),
            (ModemError(-errno.EIO), f"MODEM_EVT_ERROR({-errno.EIO})"),
            (DataError(-errno.ENOMEM), f"DATA_EVT_ERROR({-errno.ENOMEM})"),
            (AppError(-errno.ENOSPC), f"APP_EVT_ERROR({-errno.ENOSPC})"),
            (
                LocationErrorCode(-errno.ETIMEDOUT),
                f"LOCATION_MODULE_EVT_ERROR_CODE({-errno.ETIMEDOUT})",
            ),
            (SensorError(-errno.ENODEV), f"SENSOR_EVT_ERROR({-errno.ENODEV})"),
            (UiError(-errno.EBUSY), f"UI_EVT_ERROR({-errno.EBUSY})"),
        ],
        ids=lambda value: value.spec_name if isinstance(value, ErrorBase) else None,
    )
    async def test_every_module_error_is_generic(
        self,
        autojump_clock: trio.testing.MockClock,
        nursery: trio.Nursery,
        event: ErrorBase,
        cause: str,
    ) -> None:
        """Each module error asks for a GENERIC reboot naming the event and errno."""
        rig = await start_util(nursery)

        with trio.fail_after(LIMIT):
            rig.publish(event)
            await rig.rebooted.wait()

        assert rig.reboots == [
            (
                30,
                Reboot(reason=ShutdownReason.GENERIC, cause=cause, acknowledged=False),
            )
        ]
        assert rig.times("UTIL_EVT_SHUTDOWN_REQUEST") == [0]

    @pytest.mark.parametrize(
        "event",
        [CloudRebootRequest(), ModemCarrierRebootRequest()],
        ids=lambda event: event.spec_name,
    )
    async def test_reboot_requests_are_generic(
        self,
        autojump_clock: trio.testing.MockClock,
        nursery: trio.Nursery,
        event: Event,
    ) -> None:
        """The cloud's and the carrier library's reboot requests are GENERIC."""
        rig = await start_util(nursery)

        with trio.fail_after(LIMIT):
            rig.publish(event)
            rig.ack_all()
            await rig.rebooted.wait()

        assert rig.reboots == [
            (
                5,
                Reboot(
                    reason=ShutdownReason.GENERIC,
                    cause=event.spec_name,
                    acknowledged=True,
                ),
            )
        ]


class TestServiceStop:
    async def test_stop_reboots_at_the_last_ack(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """A service stop goes down at the last acknowledgement, with no 5 s wait."""
        rig = await start_util(nursery)
        await trio.sleep(3)

        with trio.fail_after(LIMIT):
            rig.util.request_stop()
            await trio.sleep(4)
            rig.ack_all()
            await rig.rebooted.wait()

        assert rig.times("UTIL_EVT_SHUTDOWN_REQUEST") == [3]
        assert rig.reboots == [
            (
                7,
                Reboot(
                    reason=ShutdownReason.SERVICE_STOP,
                    cause="service stop requested",
                    acknowledged=True,
                ),
            )
        ]

    async def test_stop_without_acks_waits_for_the_timeout(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """A service stop nobody acknowledges still ends at the 30 s timeout."""
        rig = await start_util(nursery)

        with trio.fail_after(LIMIT):
            rig.util.request_stop()
            await rig.rebooted.wait()

        [(reboot_at, reboot)] = rig.reboots
        assert reboot_at == 30
        assert reboot.reason is ShutdownReason.SERVICE_STOP
        assert not reboot.acknowledged


class TestAcknowledgements:
    async def test_unregistered_ids_are_ignored(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """An acknowledgement from an id util does not wait for changes nothing."""
        rig = await start_util(nursery, ids=(CLOUD, MODEM))

        with trio.fail_after(LIMIT):
            rig.publish(CloudError(-errno.EIO))
            await trio.sleep(1)
            rig.publish(CloudShutdownReady(CLOUD))
            rig.publish(ModemShutdownReady(999))
            rig.publish(AppShutdownReady(APP))
            await rig.rebooted.wait()

        [(reboot_at, reboot)] = rig.reboots
        assert reboot_at == 30
        assert not reboot.acknowledged
        assert rig.util.acknowledged == {CLOUD}
        assert rig.util.awaiting_ack == {MODEM}

    async def test_acks_before_a_request_are_ignored(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """Acknowledgements that arrive before any request do not count later."""
        rig = await start_util(nursery)
        rig.ack_all()
        await trio.sleep(1)

        with trio.fail_after(LIMIT):
            rig.publish(UiError(-errno.EIO))
            await rig.rebooted.wait()

        [(reboot_at, reboot)] = rig.reboots
        assert reboot_at == 31
        assert not reboot.acknowledged
        assert rig.util.acknowledged == set()
        assert rig.util.awaiting_ack == {CLOUD, MODEM, APP}

    async def test_repeated_ack_counts_once(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """The same module acknowledging twice does not stand in for another."""
        rig = await start_util(nursery, ids=(CLOUD, MODEM))

        with trio.fail_after(LIMIT):
            rig.publish(CloudError(-errno.EIO))
            rig.publish(CloudShutdownReady(CLOUD))
            rig.publish(CloudShutdownReady(CLOUD))
            await trio.sleep(12)
            rig.publish(ModemShutdownReady(MODEM))
            await rig.rebooted.wait()

        [(reboot_at, reboot)] = rig.reboots
        assert reboot_at == 17
        assert reboot.acknowledged
