"""Delayable work items: the host's ``k_work_delayable`` and ``k_timer``.

A ``Timer`` keeps its deadline as plain state on the actor that owns it, and
a task in the actor's nursery waits for the earliest deadline.  Because the
deadline is state and not a sleeping task, a supervisor that restarts a
crashed actor finds every pending timer still pending, and the debug view
can show when each one fires.

Expiry callbacks run in the timer task, not in the actor's mailbox task, as
work items run on the system work queue in the firmware.  They must not
block: they post a message (to the bus or to the actor's own mailbox) and
return.  Every time is ``trio.current_time()``, so the autojump clock drives
all of them in tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import attrs
import trio


@attrs.define(eq=False)
class Timer:
    """A one-shot timer that can be rescheduled or cancelled.

    ``on_expiry`` is called once per expiry, with the timer already idle, so
    it may schedule the timer again (that is how periodic timers work).
    Create timers with ``TimerGroup.add``.
    """

    name: str
    on_expiry: Callable[[], None]
    _group: TimerGroup
    deadline: float | None = None
    expiries: int = 0

    @property
    def pending(self) -> bool:
        """Whether the timer will fire (``k_work_delayable_is_pending``)."""
        return self.deadline is not None

    def remaining(self) -> float:
        """Seconds until expiry, or 0 when the timer is idle."""
        if self.deadline is None:
            return 0.0
        return max(0.0, self.deadline - trio.current_time())

    def reschedule(self, delay: float) -> None:
        """Fire ``delay`` seconds from now, replacing any pending expiry."""
        self.deadline = trio.current_time() + delay
        self._group.wake()

    def schedule(self, delay: float) -> None:
        """Fire ``delay`` seconds from now unless the timer is already pending."""
        if self.deadline is None:
            self.reschedule(delay)

    def cancel(self) -> None:
        """Forget the pending expiry, if any."""
        self.deadline = None
        self._group.wake()


@attrs.define(eq=False)
class TimerGroup:
    """The timers of one actor and the task that fires them."""

    timers: list[Timer] = attrs.Factory(list)
    _changed: trio.Event = attrs.field(factory=trio.Event, init=False)

    def add(self, name: str, on_expiry: Callable[[], None]) -> Timer:
        """Create an idle timer that calls ``on_expiry`` when it fires."""
        timer = Timer(name, on_expiry, self)
        self.timers.append(timer)
        return timer

    def wake(self) -> None:
        """Make the running ``run`` re-read the deadlines."""
        self._changed.set()

    async def run(self) -> None:
        """Fire each timer at its deadline, forever.

        Cancellation: the deadlines stay in the timers, so running this
        again later (after a restart) resumes them; a deadline already in
        the past then fires at once.
        """
        while True:
            now = trio.current_time()
            for timer in self.timers:
                if timer.deadline is not None and timer.deadline <= now:
                    timer.deadline = None
                    timer.expiries += 1
                    timer.on_expiry()
            # A callback may have rescheduled a timer: wait only on a fresh
            # event, created after every callback of this round has run.
            self._changed = trio.Event()
            next_deadline = min(
                (t.deadline for t in self.timers if t.deadline is not None),
                default=math.inf,
            )
            with trio.move_on_at(next_deadline):
                await self._changed.wait()
