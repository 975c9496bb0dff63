"""The actor runtime: mailboxes, the event bus and the actor base class.

Design
------
The firmware's modules share nothing but the Application Event Manager: a
module submits an event, and every module subscribed to that event type gets
a copy in its own message queue, in subscription-priority order (FIRST,
EARLY, normal, FINAL).  Threaded modules then handle their queue one message
at a time.

Here each module is an ``Actor`` with a bounded mailbox (a Trio memory
channel) and one task serving it; the ``Bus`` is the event manager.
``Bus.publish`` never awaits: it puts the event into each subscriber's
mailbox with ``send_nowait`` in priority order, so one slow actor can never
stall the publisher or the other subscribers (no head-of-line blocking).

Full mailbox
------------
The firmware's ``module_enqueue_msg`` purges the whole queue when it is
full, and the module then raises its ``*_EVT_ERROR``, on which the util
module reboots the device.  The host does the same, deliberately: a module
that cannot keep up has lost events, its state machine can no longer be
trusted, and an orderly restart of the whole actor tree (the host's reboot)
is the one recovery that puts every module back in a consistent state.  The
purge is counted (``overflows``, ``purged``) and logged at ERROR with the
size of the loss, and the event that did not fit is counted as purged too.
"""

from __future__ import annotations

import enum
import errno
import itertools
from collections import Counter
from typing import Any, ClassVar

import attrs
import structlog
import trio

from actors.timer import TimerGroup
from protocols.base import ErrorBase, Event, Module

_module_ids = itertools.count(1)


class Priority(enum.IntEnum):
    """Delivery order of a subscription, as in the event manager."""

    FIRST = 0
    EARLY = 1
    NORMAL = 2
    FINAL = 3


@attrs.frozen(kw_only=True)
class MailboxStats:
    """What the debug view shows of a mailbox."""

    depth: int
    peak: int
    capacity: int
    delivered: int
    overflows: int
    purged: int


@attrs.define(eq=False)
class Mailbox:
    """A bounded inbox that purges itself when it overflows.

    The actor owning the mailbox holds the receive end; every producer goes
    through ``deliver``, which never blocks.
    """

    capacity: int
    delivered: int = 0
    overflows: int = 0
    purged: int = 0
    _send: trio.MemorySendChannel[Any] = attrs.field(init=False)
    receive: trio.MemoryReceiveChannel[Any] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        # The buffer size is the firmware's queue depth for this module;
        # the overflow policy is in the module docstring.
        self._send, self.receive = trio.open_memory_channel[Any](self.capacity)

    def deliver(self, message: object) -> bool:
        """Queue ``message``; on overflow purge the mailbox and return False."""
        try:
            self._send.send_nowait(message)
        except trio.WouldBlock:
            self.overflows += 1
            self.purged += 1 + self._drain()
            return False
        self.delivered += 1
        return True

    def _drain(self) -> int:
        dropped = 0
        while True:
            try:
                self.receive.receive_nowait()
            except trio.WouldBlock:
                return dropped
            dropped += 1

    def stats(self) -> MailboxStats:
        """The mailbox's counters and the channel's buffer statistics."""
        channel = self._send.statistics()
        return MailboxStats(
            depth=channel.current_buffer_used,
            peak=channel.peak_buffer_used,
            capacity=self.capacity,
            delivered=self.delivered,
            overflows=self.overflows,
            purged=self.purged,
        )


@attrs.define(eq=False)
class Bus:
    """The event manager: routes each event to the mailboxes subscribed to it."""

    _subscriptions: dict[Module, list[tuple[Priority, int, Actor]]] = attrs.Factory(
        dict
    )
    _order: itertools.count[int] = attrs.Factory(itertools.count)
    published: Counter[str] = attrs.Factory(Counter)
    # Every published event is also offered to taps (tests, the debug view);
    # a tap is a plain callable and must not block.
    taps: list[Any] = attrs.Factory(list)

    def subscribe(self, actor: Actor, routes: dict[Module, Priority]) -> None:
        """Deliver every event from each module of ``routes`` to ``actor``."""
        for module, priority in routes.items():
            subscribers = self._subscriptions.setdefault(module, [])
            subscribers.append((priority, next(self._order), actor))
            subscribers.sort(key=lambda entry: (entry[0], entry[1]))

    def publish(self, event: Event) -> None:
        """Hand ``event`` to every subscriber, in priority order; never blocks."""
        self.published[event.spec_name] += 1
        for tap in self.taps:
            tap(event)
        for _, _, actor in list(self._subscriptions.get(event.source, ())):
            actor.deliver(event)


@attrs.frozen(kw_only=True)
class ActorSnapshot:
    """The state of one actor, as the debug view shows it."""

    name: str
    id: int
    state: str
    sub_state: str | None
    mailbox: MailboxStats
    counters: dict[str, int]
    timers: dict[str, float | None]
    last_error: str | None
    restarts: int
    extra: dict[str, Any]


@attrs.define(eq=False)
class Actor:
    """Base class of every module actor.

    Subclasses set ``name``, ``module``, ``capacity`` and ``routes``, and
    implement ``handle``.  The actor's state lives on the object, not in its
    tasks: a supervisor restarting a crashed actor runs ``run`` again on the
    same object, which keeps its state machine, its mailbox and its pending
    timers, and loses only the message whose handling crashed.
    """

    name: ClassVar[str]
    module: ClassVar[Module]
    # Queue depth of the module in the firmware (CLOUD_QUEUE_ENTRY_COUNT...).
    capacity: ClassVar[int] = 10
    routes: ClassVar[dict[Module, Priority]] = {}
    # Whether util waits for this actor's SHUTDOWN_READY before rebooting.
    supports_shutdown: ClassVar[bool] = True
    error_event: ClassVar[type[ErrorBase] | None] = None

    bus: Bus
    id: int = attrs.field(init=False, factory=lambda: next(_module_ids))
    state: str = attrs.field(init=False, default="init")
    sub_state: str | None = attrs.field(init=False, default=None)
    counters: Counter[str] = attrs.field(init=False, factory=Counter)
    last_error: str | None = attrs.field(init=False, default=None)
    restarts: int = attrs.field(init=False, default=0)
    timers: TimerGroup = attrs.field(init=False, factory=TimerGroup)
    mailbox: Mailbox = attrs.field(init=False)
    log: Any = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.mailbox = Mailbox(self.capacity)
        self.log = structlog.get_logger(actor=self.name)
        self.bus.subscribe(self, self.routes)

    # -- producers' side -------------------------------------------------

    def deliver(self, message: object) -> None:
        """Put ``message`` in the mailbox; never blocks.

        On overflow the mailbox is purged and the actor raises its module
        error, which makes the util actor reboot the tree (module docstring
        of ``actors.runtime``).
        """
        if self.mailbox.deliver(message):
            return
        self.counters["mailbox_overflows"] += 1
        self.last_error = "mailbox full: purged"
        self.log.error(
            "mailbox_overflow",
            capacity=self.mailbox.capacity,
            purged_total=self.mailbox.purged,
            dropped=type(message).__name__,
        )
        if self.error_event is not None:
            self.bus.publish(self.error_event(-errno.ENOSPC))

    def emit(self, event: Event) -> None:
        """Publish ``event`` on the bus."""
        self.bus.publish(event)

    # -- the actor's own tasks ------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve the mailbox and the timers until cancelled.

        Reports ready through ``task_status`` once the mailbox is being
        served.  Cancellation: nothing is lost but the task; state, mailbox
        and timer deadlines stay on the object for the next ``run``.
        """
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.timers.run, name=f"{self.name}.timers")
            await self.on_start()
            task_status.started()
            await self._serve_mailbox()

    async def on_start(self) -> None:
        """Hook run each time the actor (re)starts, before it serves."""

    async def _serve_mailbox(self) -> None:
        while True:
            message = await self.mailbox.receive.receive()
            self.counters["handled"] += 1
            await self.handle(message)

    async def handle(self, message: Any) -> None:
        """React to one message; subclasses implement the state machine."""
        raise NotImplementedError

    # -- observation -----------------------------------------------------

    def snapshot(self) -> ActorSnapshot:
        """The actor's state, counters and mailbox, for the debug view."""
        return ActorSnapshot(
            name=self.name,
            id=self.id,
            state=self.state,
            sub_state=self.sub_state,
            mailbox=self.mailbox.stats(),
            counters=dict(self.counters),
            timers={t.name: t.deadline for t in self.timers.timers},
            last_error=self.last_error,
            restarts=self.restarts,
            extra=self.snapshot_extra(),
        )

    def snapshot_extra(self) -> dict[str, Any]:
        """Actor-specific fields for the snapshot."""
        return {}

