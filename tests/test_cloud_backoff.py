"""The cloud actor's reconnection schedule, attempt by attempt, in virtual time.

Every number here is a number of the firmware's cloud module: the backoff
tables, the retry limit, the 1 s retry after a drop, the reboot 5 s after the
last shutdown acknowledgement.
"""

from __future__ import annotations

import errno
from itertools import accumulate

import pytest
import trio

from actors.backoff import SEED_TABLE, V2_9_0_TABLE, ReconnectBackoff
from backends.scripted import Connect, Refuse
from protocols.app import ShutdownReason
from protocols.cloud import CloudError
from protocols.modem import ModemInitialized, ModemLteConnected, ModemLteDisconnected
from tests.rig import start_rig

REFUSED = Refuse(after=1.0)


def expected_attempts(table: tuple[int, ...], retries: int) -> list[float]:
    """Attempt k starts once the delays of attempts 0..k-1 have elapsed."""
    return [0.0, *accumulate(float(d) for d in table[:retries])]


class TestBackoffTables:
    def test_seed_table_skips_1024(self) -> None:
        """The documented table has 15 entries and no 1024 s step."""
        assert SEED_TABLE == (
            32, 64, 128, 256, 512, 2048, 4096, 8192,
            16384, 32768, 65536, 131072, 262144, 524288, 1048576,
        )  # fmt: skip

    def test_v2_9_0_table_has_1024(self) -> None:
        """The v2.9.0 source table has 16 entries, 1024 s included."""
        assert len(V2_9_0_TABLE) == 16
        assert V2_9_0_TABLE[5] == 1024
        assert V2_9_0_TABLE == tuple(32 * 2**i for i in range(16))

    def test_counter_is_read_before_the_limit(self) -> None:
        """With 2 retries, three attempts get 32, 64, 128 s, then it gives up."""
        backoff = ReconnectBackoff(SEED_TABLE, 2)

        delays = [backoff.next_delay() for _ in range(4)]

        assert delays == [32, 64, 128, None]

    @pytest.mark.parametrize("retries", [14, -1])
    def test_retries_bound(self, retries: int) -> None:
        """The firmware's build-time bound CLOUD_CONNECT_RETRIES < 14 holds."""
        with pytest.raises(ValueError, match="between 0 and 13"):
            ReconnectBackoff(V2_9_0_TABLE, retries)

    def test_table_too_short(self) -> None:
        """A table must cover the attempt that reads one entry past the limit."""
        with pytest.raises(ValueError, match="at least 12 entries"):
            ReconnectBackoff((32,) * 11, 10)


class TestRetrySchedule:
    @pytest.mark.parametrize(
        ("table", "retries", "attempts", "error_at"),
        [
            (
                SEED_TABLE,
                10,
                [0, 32, 96, 224, 480, 992, 3040, 7136, 15328, 31712, 64480],
                130016,
            ),
            (
                V2_9_0_TABLE,
                10,
                [0, 32, 96, 224, 480, 992, 2016, 4064, 8160, 16352, 32736],
                65504,
            ),
            (V2_9_0_TABLE, 3, [0, 32, 96, 224], 480),
            (SEED_TABLE, 13, expected_attempts(SEED_TABLE, 13), sum(SEED_TABLE[:14])),
        ],
        ids=["seed-10", "v2.9.0-10", "v2.9.0-3", "seed-13"],
    )
    async def test_schedule_to_error_and_reboot(
        self,
        autojump_clock: trio.testing.MockClock,
        nursery: trio.Nursery,
        table: tuple[int, ...],
        retries: int,
        attempts: list[float],
        error_at: float,
    ) -> None:
        """Every attempt at its table time, then CLOUD_EVT_ERROR, then the reboot."""
        rig = await start_rig(nursery, table=table, retries=retries)
        rig.backend.default = REFUSED

        with trio.fail_after(error_at + 60):
            rig.publish(ModemInitialized())
            rig.publish(ModemLteConnected())
            await rig.rebooted.wait()

        assert rig.backend.attempt_times == attempts
        assert len(attempts) == retries + 1
        assert rig.times("CLOUD_EVT_ERROR") == [error_at]
        assert [e.err for _, e in rig.seen if isinstance(e, CloudError)] == [
            -errno.ENETUNREACH
        ]
        assert rig.times("UTIL_EVT_SHUTDOWN_REQUEST") == [error_at]
        # The cloud acknowledged at once, so the reboot comes 5 s later.
        reboot_at, reboot = rig.reboots[0]
        assert reboot_at == error_at + 5
        assert reboot.reason is ShutdownReason.GENERIC
        assert reboot.acknowledged

    async def test_v2_9_0_schedule_is_about_18_hours(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """The default retries with the v2.9.0 table give up after 65504 s."""
        rig = await start_rig(nursery, table=V2_9_0_TABLE)
        rig.backend.default = REFUSED

        rig.publish(ModemInitialized())
        rig.publish(ModemLteConnected())
        await trio.sleep(70000)

        assert rig.times("CLOUD_EVT_ERROR") == [65504]
        assert 18 * 3600 < 65504 < 18 * 3600 + 13 * 60


class TestCounterResets:
    async def test_reset_on_connect_and_1s_retry_after_drop(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """A drop is retried after 1 s with index 0, then backoff resumes at 64 s."""
        rig = await start_rig(nursery, [REFUSED, REFUSED, Connect(after=1.0)])
        rig.publish(ModemInitialized())
        rig.publish(ModemLteConnected())
        await trio.sleep(150)
        assert rig.cloud.backoff.retries == 0
        rig.backend.default = REFUSED

        await trio.sleep(50)
        rig.backend.drop()
        await trio.sleep(200)

        assert rig.times("CLOUD_EVT_CONNECTED") == [97]
        assert [t for t in rig.times("CLOUD_EVT_DISCONNECTED") if t > 97] == [
            200,
            202,
            234,
            298,
        ]
        assert rig.backend.attempt_times == [0, 32, 96, 201, 233, 297]

    async def test_lte_loss_cancels_pending_retry(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """LTE loss mid-backoff disconnects, resets and cancels the retry."""
        rig = await start_rig(nursery)
        rig.backend.default = REFUSED
        rig.publish(ModemInitialized())
        rig.publish(ModemLteConnected())
        await trio.sleep(50)

        rig.publish(ModemLteDisconnected())
        await trio.sleep(450)
        quiet = list(rig.backend.attempt_times)
        rig.publish(ModemLteConnected())
        await trio.sleep(40)

        assert quiet == [0, 32]
        assert [c.t for c in rig.backend.calls if c.name == "disconnect"] == [50]
        assert rig.backend.attempt_times == [0, 32, 500, 532]
        assert rig.cloud.state == "STATE_LTE_CONNECTED"
        assert rig.cloud.backoff.retries == 2

    async def test_lte_loss_while_connected(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """LTE loss in CLOUD_CONNECTED resets the counter to 0 and the sub-state."""
        rig = await start_rig(nursery, [Connect(after=2.0)])
        rig.publish(ModemInitialized())
        rig.publish(ModemLteConnected())
        await trio.sleep(10)
        assert rig.cloud.sub_state == "SUB_STATE_CLOUD_CONNECTED"

        rig.publish(ModemLteDisconnected())
        await trio.sleep(1000)

        assert rig.cloud.state == "STATE_LTE_DISCONNECTED"
        assert rig.cloud.sub_state == "SUB_STATE_CLOUD_DISCONNECTED"
        assert rig.cloud.backoff.retries == 0
        assert rig.backend.attempt_times == [0]
        assert not rig.cloud.connect_check.pending

    async def test_lte_events_before_modem_init_are_lost(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """LTE_CONNECTED in STATE_LTE_INIT is ignored, as in the firmware."""
        rig = await start_rig(nursery)

        rig.publish(ModemLteConnected())
        rig.publish(ModemInitialized())
        await trio.sleep(100)

        assert rig.backend.attempt_times == []
        assert rig.cloud.state == "STATE_LTE_DISCONNECTED"

    async def test_connect_check_timer_survives_a_restart(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """A restarted cloud actor keeps its pending retry at the same time."""
        rig = await start_rig(nursery)
        rig.backend.default = REFUSED
        rig.publish(ModemInitialized())
        rig.publish(ModemLteConnected())
        await trio.sleep(10)

        with trio.CancelScope() as scope:
            scope.cancel()
            await rig.cloud.run()
        async with trio.open_nursery() as inner:
            await inner.start(rig.cloud.run)
            await trio.sleep(30)
            inner.cancel_scope.cancel()

        assert rig.backend.attempt_times == [0, 32]
