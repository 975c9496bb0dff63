"""The app actor: boots the device and takes part in the shutdown protocol.

The firmware's ``main.c`` emits ``APP_EVT_START`` right after boot, which
sets every other module going (the modem starts its LTE search).  It also
owns the sampling timers of active and passive mode; those belong with the
data sources and are not part of this actor yet.
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs

from actors.runtime import Actor, Priority
from protocols.app import AppError, AppShutdownReady, AppStart, UtilShutdownRequest
from protocols.base import Module


@attrs.define(eq=False)
class AppActor(Actor):
    """The app module: ``APP_EVT_START`` once, then shutdown handling."""

    name: ClassVar[str] = "app"
    module: ClassVar[Module] = Module.APP
    capacity: ClassVar[int] = 10  # APP_QUEUE_ENTRY_COUNT
    routes: ClassVar[dict[Module, Priority]] = {
        Module.CLOUD: Priority.EARLY,
        Module.APP: Priority.NORMAL,
        Module.DATA: Priority.NORMAL,
        Module.UTIL: Priority.NORMAL,
        Module.SENSOR: Priority.FINAL,
        Module.MODEM: Priority.FINAL,
    }
    error_event = AppError

    started: bool = attrs.field(init=False, default=False)

    async def on_start(self) -> None:
        """Emit ``APP_EVT_START`` on the first start only (not on restarts)."""
        if not self.started:
            self.started = True
            self.state = "STATE_RUNNING"
            self.emit(AppStart())

    async def handle(self, message: Any) -> None:
        """Acknowledge the shutdown request; everything else waits for sampling."""
        if isinstance(message, UtilShutdownRequest) and self.state != "STATE_SHUTDOWN":
            self.emit(AppShutdownReady(self.id))
            self.state = "STATE_SHUTDOWN"
