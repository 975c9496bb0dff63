"""The time warp's clock and the device's wall clock."""

from __future__ import annotations

import time

import pytest
import trio

from tracker.warp import DeviceWallClock, warp_clock


class TestDeviceWallClock:
    async def test_follows_the_trio_clock_after_the_first_read(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Three virtual hours later the device's clock is three hours on."""
        clock = DeviceWallClock()
        before = time.time()
        first = clock()
        assert before <= first <= time.time()
        await trio.sleep(3 * 3600)
        assert clock() - first == pytest.approx(3 * 3600, abs=1e-6)

    def test_outside_trio_it_refuses(self) -> None:
        """There is no device time outside a run."""
        with pytest.raises(RuntimeError):
            DeviceWallClock()()


class TestWarpClock:
    def test_a_zero_threshold_is_refused(self) -> None:
        """Jumping while a packet is on the wire would fake timeouts."""
        with pytest.raises(ValueError, match="positive"):
            warp_clock(0)

    def test_idle_stretches_are_jumped(self) -> None:
        """A day of sleeping ends (without the jump it would take a day)."""

        async def day() -> float:
            start = trio.current_time()
            await trio.sleep(86400)
            return trio.current_time() - start

        assert trio.run(day, clock=warp_clock(0.001)) >= 86400
