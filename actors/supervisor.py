"""Supervision of the actor tree: start in order, restart, escalate, stop.

Policy
------
Children start one after another, each with ``nursery.start``, so a child
only starts once every child before it serves its mailbox.  A child whose
task crashes (raises anything but a cancellation) is restarted at once on
the same object: it keeps its state, its mailbox and its timers and loses the
message it was handling (see ``actors.runtime.Actor``).  More than
``max_restarts`` crashes of one child within ``window`` seconds mean the
crash is not transient: the supervisor gives up and raises
``RestartLimitExceeded``, which the service treats as a module error, an
orderly reboot of the whole tree.

``stop`` cancels the children one at a time in reverse start order, waiting
for each to finish, so no child ever runs without the children it was
started after.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

import attrs
import structlog
import trio

# Lazy: it follows whatever logging set-up is in force when it logs.
log = structlog.get_logger(actor="supervisor")


class Supervised(Protocol):
    """Anything with a start-able ``run``: actors and backends."""

    async def run(self, *, task_status: trio.TaskStatus[None] = ...) -> None:
        """Serve until cancelled; report ready through ``task_status``."""


class RestartLimitExceeded(Exception):
    """A child crashed more often than the restart policy allows."""

    def __init__(self, child: str, crashes: int, window: float) -> None:
        super().__init__(f"{child} crashed {crashes} times within {window:g} s")
        self.child = child
        self.crashes = crashes
        self.window = window


def first_leaf(exc: BaseException) -> BaseException:
    """The first exception inside (possibly nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


@attrs.frozen
class RestartPolicy:
    """At most ``max_restarts`` restarts of one child per ``window`` seconds."""

    max_restarts: int = 3
    window: float = 60.0


@attrs.define(eq=False)
class _Child:
    name: str
    target: Supervised
    crash_times: deque[float] = attrs.Factory(deque)
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    done: trio.Event = attrs.Factory(trio.Event)


@attrs.define(eq=False)
class Supervisor:
    """Runs a fixed list of children under a restart policy (module docstring).

    Args:
      children: ``(name, child)`` pairs in start order.
      policy: the restart limit.
      on_restart: called with the child's name and the exception after each
        crash, before the restart (actors record it as their last error).
    """

    children: Sequence[tuple[str, Supervised]]
    policy: RestartPolicy = RestartPolicy()
    on_restart: Callable[[str, BaseException], None] | None = None
    _running: list[_Child] = attrs.field(init=False, factory=list)

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Start every child, then supervise them until cancelled.

        Reports ready once the last child serves.

        Raises:
          RestartLimitExceeded: a child crashed too often; every other child
            has been cancelled by then.

        Cancellation: cancelling this task cancels every child at once; use
        ``stop`` for the ordered shutdown.

        Logging: ``child_crashed`` (ERROR, with the traceback) on every
        crash, ``child_restarted`` (WARNING), ``restart_limit_exceeded``
        (ERROR) before giving up.
        """
        async with trio.open_nursery() as nursery:
            for name, target in self.children:
                child = _Child(name, target)
                self._running.append(child)
                await nursery.start(self._keep, child, name=f"supervise.{name}")
            task_status.started()

    async def stop(self) -> None:
        """Cancel the children one by one, last started first."""
        for child in reversed(self._running):
            child.scope.cancel(reason="supervisor stopping")
            await child.done.wait()

    async def _keep(
        self, child: _Child, *, task_status: trio.TaskStatus[None]
    ) -> None:
        try:
            with child.scope:
                await self._serve(child, task_status)
        finally:
            child.done.set()

    async def _serve(self, child: _Child, task_status: trio.TaskStatus[None]) -> None:
        ready = False
        while True:
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(child.target.run)
                    if not ready:
                        ready = True
                        task_status.started()
            except Exception as exc:
                self._crashed(child, exc)
            else:
                # A child whose run returns has finished its work.
                if not ready:
                    task_status.started()
                return

    def _crashed(self, child: _Child, exc: BaseException) -> None:
        # A crash reaches us wrapped in the groups of the nurseries it went
        # through; the restart hook and the log want the exception itself.
        exc = first_leaf(exc)
        now = trio.current_time()
        log.error("child_crashed", child=child.name, exc_info=exc)
        child.crash_times.append(now)
        while child.crash_times and child.crash_times[0] <= now - self.policy.window:
            child.crash_times.popleft()
        if len(child.crash_times) > self.policy.max_restarts:
            log.error(
                "restart_limit_exceeded",
                child=child.name,
                crashes=len(child.crash_times),
                window=self.policy.window,
            )
            raise RestartLimitExceeded(
                child.name, len(child.crash_times), self.policy.window
            ) from exc
        if self.on_restart is not None:
            self.on_restart(child.name, exc)
        log.warning("child_restarted", child=child.name, crashes=len(child.crash_times))

