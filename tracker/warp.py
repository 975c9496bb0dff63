"""Time warp: hours of device life in seconds, with the same messages.

Every timer of the device (sampling, QoS retransmission, backoff, the util
module's reboot timeouts) and of the embedded local cloud (keepalive, the
broker's session checks: asyncio timers are Trio deadlines under
trio-asyncio) is a deadline on the Trio clock.  Running the whole process
under a ``trio.testing.MockClock`` whose *autojump* moves the clock to the
next deadline whenever every task has been idle for a short real time makes
a quiet stretch of device time cost almost nothing, while busy stretches
run as they would.  Virtual time also advances with real time (rate 1), so
a network exchange that is merely slow never looks faster than it is.

The device's wall clock (the timestamps in its messages) is derived from
the Trio clock: the UNIX time when it is first read, plus the Trio time
elapsed since.  That is what the firmware does too (it learns the date and
time once from the network and counts uptime from there), and it makes a
warped run's timestamps follow the warped schedule.

Limits, which ``tracker run --help`` repeats:

* Only this process is warped.  A peer outside it (a real cloud, a broker
  of its own, a backend developer's tools) lives in real time: it sees the
  device's traffic compressed, may time the device out, and its
  certificates' validity, tokens and pre-signed URLs are judged by the real
  date.  Warp is for the embedded local cloud and the scripted one.
* A peer slower than the idle threshold looks like silence: the clock jumps
  to the next deadline, which may be a timeout.  On loopback a reply comes
  in well under a millisecond; a loaded machine can still trip it, and the
  cost is a retry, as it would be on a slow network.
* CPU-bound work (encoding, SQLite commits, logging) is not compressed:
  a run is only as fast as the messages it produces.
"""

from __future__ import annotations

import time
from typing import Final

import attrs
import trio
import trio.testing

#: Real seconds every task must have been idle before the clock jumps.
#: Loopback round trips take well under a millisecond; 20 ms leaves room
#: for a busy machine while keeping a jump cheap (about 50 jumps a second).
DEFAULT_IDLE: Final = 0.02


def warp_clock(idle: float = DEFAULT_IDLE) -> trio.testing.MockClock:
    """A clock that runs with real time and jumps over idle stretches.

    Args:
      idle: real seconds of idleness before a jump; must be positive (zero
        would jump while a packet is on the wire).
    """
    if not idle > 0:
        raise ValueError(f"the warp idle threshold must be positive, got {idle!r}")
    return trio.testing.MockClock(rate=1.0, autojump_threshold=idle)


@attrs.define
class DeviceWallClock:
    """UNIX seconds as the device sees them: anchored once, then Trio time.

    The anchor is taken at the first call, inside ``trio.run``; calls from
    any later boot of the same service continue the same timeline.
    """

    _anchor_unix: float | None = attrs.field(default=None, init=False)
    _anchor_trio: float = attrs.field(default=0.0, init=False)

    def __call__(self) -> float:
        now = trio.current_time()
        if self._anchor_unix is None:
            self._anchor_unix = time.time()
            self._anchor_trio = now
        return self._anchor_unix + (now - self._anchor_trio)
