"""The supervisor: start in order, restart crashed children, escalate, stop in order.

The children are defined here: a ``Crasher`` actor whose ``handle`` raises on
a ``"boom"`` message, and a ``Probe`` that takes a while to start and to stop
and writes down when it does.  Every time is virtual.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import attrs
import pytest
import trio

from actors.runtime import Actor, Bus
from actors.supervisor import RestartLimitExceeded, RestartPolicy, Supervisor
from protocols.base import Module

POLICY = RestartPolicy(max_restarts=3, window=60)
LIMIT = 600


@attrs.define(eq=False)
class Crasher(Actor):
    """An actor that crashes on ``"boom"`` and records every other message."""

    name: ClassVar[str] = "crasher"
    module: ClassVar[Module] = Module.DEBUG

    # State on the object: it must survive every restart.
    seen: int = attrs.field(init=False, default=0)
    served: list[tuple[float, object]] = attrs.field(init=False, factory=list)
    starts: list[float] = attrs.field(init=False, factory=list)
    fail_first_starts: int = attrs.field(kw_only=True, default=0)

    async def on_start(self) -> None:
        """Record the start; the first ``fail_first_starts`` starts crash."""
        self.starts.append(trio.current_time())
        if len(self.starts) <= self.fail_first_starts:
            raise RuntimeError("cannot start")

    async def handle(self, message: Any) -> None:
        """Count ``message``; crash on ``"boom"``, record anything else."""
        self.seen += 1
        if message == "boom":
            raise RuntimeError("boom")
        self.served.append((trio.current_time(), message))


@attrs.define(eq=False)
class Probe:
    """A child that needs ``start_delay`` to get ready and ``stop_delay`` to stop."""

    name: str
    journal: list[tuple[float, str, str]]
    start_delay: float = 0.0
    stop_delay: float = 0.0

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Get ready, serve until cancelled, then take a while to clean up."""
        self.journal.append((trio.current_time(), self.name, "starting"))
        try:
            await trio.sleep(self.start_delay)
            self.journal.append((trio.current_time(), self.name, "ready"))
            task_status.started()
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(self.stop_delay)
            self.journal.append((trio.current_time(), self.name, "stopped"))


def record_restarts(
    actors: list[Actor], log: list[tuple[float, str, BaseException]]
) -> Callable[[str, BaseException], None]:
    """An ``on_restart`` that records as the service does: restarts, last error."""

    def on_restart(name: str, exc: BaseException) -> None:
        log.append((trio.current_time(), name, exc))
        for actor in actors:
            if actor.name == name:
                actor.restarts += 1
                actor.last_error = f"crashed: {exc!r}"

    return on_restart


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside ``exc``, with every exception group flattened."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


async def deliver_at(actor: Actor, schedule: list[tuple[float, object]]) -> None:
    """Deliver each message to ``actor`` at its virtual time."""
    for at, message in schedule:
        await trio.sleep_until(at)
        actor.deliver(message)


class TestRestart:
    async def test_crash_is_restarted_with_its_state(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """A crashed actor runs again on the same object and serves later messages."""
        crasher = Crasher(Bus())
        restarts: list[tuple[float, str, BaseException]] = []
        supervisor = Supervisor(
            [("crasher", crasher)], POLICY, record_restarts([crasher], restarts)
        )

        with trio.fail_after(LIMIT):
            await nursery.start(supervisor.run)
            await deliver_at(crasher, [(1, "a"), (2, "boom"), (3, "b")])
            await trio.sleep(1)

        assert crasher.served == [(1, "a"), (3, "b")]
        assert crasher.seen == 3
        assert crasher.counters["handled"] == 3
        assert crasher.starts == [0, 2]
        assert [(t, name) for t, name, _ in restarts] == [(2, "crasher")]
        assert [repr(leaf) for leaf in leaves(restarts[0][2])] == [
            "RuntimeError('boom')"
        ]
        assert crasher.restarts == 1
        assert crasher.last_error is not None
        assert "RuntimeError('boom')" in crasher.last_error

    async def test_crashes_spread_over_the_window_are_all_restarted(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """Six crashes 25 s apart never put four in one 60 s window, so all restart."""
        crasher = Crasher(Bus())
        restarts: list[tuple[float, str, BaseException]] = []
        supervisor = Supervisor(
            [("crasher", crasher)], POLICY, record_restarts([crasher], restarts)
        )
        booms: list[tuple[float, object]] = [(25.0 * k, "boom") for k in range(6)]

        with trio.fail_after(LIMIT):
            await nursery.start(supervisor.run)
            await deliver_at(crasher, [*booms, (130, "after")])
            await trio.sleep(1)

        assert [t for t, _, _ in restarts] == [0, 25, 50, 75, 100, 125]
        assert crasher.starts == [0, 0, 25, 50, 75, 100, 125]
        assert crasher.served == [(130, "after")]
        assert crasher.restarts == 6

    async def test_crash_before_the_first_ready_is_restarted(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """A child that crashes before it reports ready is restarted, and then ready."""
        journal: list[tuple[float, str, str]] = []
        first = Probe("first", journal, start_delay=1)
        crasher = Crasher(Bus(), fail_first_starts=1)
        last = Probe("last", journal, start_delay=1)
        restarts: list[tuple[float, str, BaseException]] = []
        supervisor = Supervisor(
            [("first", first), ("crasher", crasher), ("last", last)],
            POLICY,
            record_restarts([crasher], restarts),
        )

        with trio.fail_after(LIMIT):
            await nursery.start(supervisor.run)
            ready_at = trio.current_time()
            crasher.deliver("served")
            await trio.sleep(1)

        assert ready_at == 2
        assert crasher.starts == [1, 1]
        assert [(t, name) for t, name, _ in restarts] == [(1, "crasher")]
        assert [repr(leaf) for leaf in leaves(restarts[0][2])] == [
            "RuntimeError('cannot start')"
        ]
        assert crasher.served == [(2, "served")]
        assert journal == [
            (0, "first", "starting"),
            (1, "first", "ready"),
            (1, "last", "starting"),
            (2, "last", "ready"),
        ]


class TestRestartLimit:
    async def test_fourth_crash_in_the_window_escalates(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """Four crashes within 60 s raise RestartLimitExceeded and cancel siblings."""
        journal: list[tuple[float, str, str]] = []
        sibling = Probe("sibling", journal)
        crasher = Crasher(Bus())
        restarts: list[tuple[float, str, BaseException]] = []
        supervisor = Supervisor(
            [("sibling", sibling), ("crasher", crasher)],
            POLICY,
            record_restarts([crasher], restarts),
        )
        nursery.start_soon(
            deliver_at, crasher, [(0, "boom"), (10, "boom"), (20, "boom"), (30, "boom")]
        )

        with trio.fail_after(LIMIT):
            with pytest.RaisesGroup(RestartLimitExceeded) as excinfo:
                await supervisor.run()
        raised_at = trio.current_time()

        [exc] = excinfo.value.exceptions
        assert isinstance(exc, RestartLimitExceeded)
        assert (exc.child, exc.crashes, exc.window) == ("crasher", 4, 60)
        assert str(exc) == "crasher crashed 4 times within 60 s"
        assert exc.__cause__ is not None
        assert [repr(leaf) for leaf in leaves(exc.__cause__)] == [
            "RuntimeError('boom')"
        ]
        assert raised_at == 30
        # The fourth crash is not a restart: on_restart saw only three.
        assert [t for t, _, _ in restarts] == [0, 10, 20]
        assert crasher.restarts == 3
        assert journal[-1] == (30, "sibling", "stopped")

    async def test_crash_loop_before_ready_escalates(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A child that never gets ready is given up on at its fourth crash."""
        crasher = Crasher(Bus(), fail_first_starts=100)
        supervisor = Supervisor([("crasher", crasher)], POLICY)

        with trio.fail_after(LIMIT):
            with pytest.RaisesGroup(RestartLimitExceeded) as excinfo:
                await supervisor.run()

        assert excinfo.value.exceptions[0].crashes == 4
        assert crasher.starts == [0, 0, 0, 0]


class TestOrder:
    async def test_start_in_order_stop_in_reverse(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Children start after the previous is ready and stop one by one in reverse."""
        journal: list[tuple[float, str, str]] = []
        children = [
            Probe("a", journal, start_delay=1, stop_delay=1),
            Probe("b", journal, start_delay=2, stop_delay=2),
            Probe("c", journal, start_delay=0.5, stop_delay=3),
        ]
        supervisor = Supervisor([(probe.name, probe) for probe in children], POLICY)

        with trio.fail_after(LIMIT):
            async with trio.open_nursery() as inner:
                await inner.start(supervisor.run)
                ready_at = trio.current_time()
                await trio.sleep_until(10)
                await supervisor.stop()
                stopped_at = trio.current_time()

        assert ready_at == 3.5
        assert journal[:6] == [
            (0, "a", "starting"),
            (1, "a", "ready"),
            (1, "b", "starting"),
            (3, "b", "ready"),
            (3, "c", "starting"),
            (3.5, "c", "ready"),
        ]
        assert journal[6:] == [
            (13, "c", "stopped"),
            (15, "b", "stopped"),
            (16, "a", "stopped"),
        ]
        assert stopped_at == 16
