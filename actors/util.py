"""The util actor: the shutdown protocol and the reboot on any module error.

Protocol
--------
Any module's ``*_EVT_ERROR`` (and the cloud's reboot request or FOTA done)
is a reboot request; only the first one counts.  The util actor then

1. arms the reboot timer for ``reboot_timeout`` seconds (30 s, the
   firmware's REBOOT_TIMEOUT),
2. broadcasts ``UTIL_EVT_SHUTDOWN_REQUEST`` with the reason,
3. collects ``*_SHUTDOWN_READY`` from every module that supports shutdown,
   and once all have answered re-arms the timer to ``ack_reboot_delay``
   seconds (5 s) from then.

When the timer fires the device reboots.  A module that never answers only
delays the reboot to the full timeout; it never blocks it.

On the host a reboot is an orderly restart of the whole actor tree, done by
whoever owns the tree (``on_reboot``).  A stop of the service (SIGINT or
SIGTERM) runs the same protocol with the host-only reason
``SERVICE_STOP``; the tree then exits instead of restarting.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import attrs

from actors.runtime import Actor, Priority
from actors.timer import Timer
from protocols.app import ShutdownReason, UtilShutdownRequest
from protocols.base import ErrorBase, Event, Module, ShutdownReadyBase
from protocols.cloud import CloudFotaDone, CloudRebootRequest
from protocols.modem import ModemCarrierRebootRequest


@attrs.frozen(kw_only=True)
class Reboot:
    """Why the tree is going down: the reason and the event that caused it."""

    reason: ShutdownReason
    cause: str
    acknowledged: bool


@attrs.define(eq=False)
class UtilActor(Actor):
    """The util module (module docstring).

    Args:
      on_reboot: called once, when the reboot timer fires.
      reboot_timeout: seconds from the request to the reboot at the latest.
      ack_reboot_delay: seconds from the last acknowledgement to the reboot.
    """

    name: ClassVar[str] = "util"
    module: ClassVar[Module] = Module.UTIL
    # The firmware's util module has no queue: it runs inside the event
    # manager's callback and sees every event of seven modules.  The host
    # gives it a mailbox deep enough for a burst from all of them.
    capacity: ClassVar[int] = 64
    routes: ClassVar[dict[Module, Priority]] = {
        module: Priority.EARLY
        for module in (
            Module.APP,
            Module.MODEM,
            Module.CLOUD,
            Module.LOCATION,
            Module.UI,
            Module.SENSOR,
            Module.DATA,
        )
    }
    supports_shutdown: ClassVar[bool] = False

    on_reboot: Callable[[Reboot], None] = attrs.field(kw_only=True)
    reboot_timeout: float = attrs.field(kw_only=True, default=30.0)
    ack_reboot_delay: float = attrs.field(kw_only=True, default=5.0)

    reboot: Timer = attrs.field(init=False)
    request: Reboot | None = attrs.field(init=False, default=None)
    awaiting_ack: set[int] = attrs.field(init=False, factory=set)
    acknowledged: set[int] = attrs.field(init=False, factory=set)
    _shutdown_ids: set[int] = attrs.field(init=False, factory=set)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.reboot = self.timers.add("reboot", self._on_reboot_timer)
        self.state = "STATE_INIT"

    def register_shutdown(self, ids: Iterable[int]) -> None:
        """Declare the modules whose acknowledgement the reboot waits for."""
        self._shutdown_ids.update(ids)

    def request_stop(self) -> None:
        """Stop the service through the shutdown protocol (SIGINT, SIGTERM)."""
        self._request(ShutdownReason.SERVICE_STOP, "service stop requested")

    async def handle(self, message: Any) -> None:
        """Turn errors into a reboot request and count acknowledgements."""
        match message:
            case CloudFotaDone():
                self._request(ShutdownReason.FOTA_UPDATE, message.spec_name)
            case ErrorBase(err=err):
                self._request(ShutdownReason.GENERIC, f"{message.spec_name}({err})")
            case CloudRebootRequest() | ModemCarrierRebootRequest():
                self._request(ShutdownReason.GENERIC, message.spec_name)
            case ShutdownReadyBase(id=module_id) if self.request is not None:
                self._acknowledge(module_id, message)

    def _request(self, reason: ShutdownReason, cause: str) -> None:
        if self.request is not None:
            self.log.debug("reboot_already_pending", cause=cause)
            return
        self.request = Reboot(reason=reason, cause=cause, acknowledged=False)
        self.awaiting_ack = set(self._shutdown_ids)
        self.state = "STATE_REBOOT_PENDING"
        # A stop of the service is asked for, not a fault: INFO.
        level = "info" if reason is ShutdownReason.SERVICE_STOP else "warning"
        getattr(self.log, level)(
            "reboot_requested",
            reason=reason.value,
            cause=cause,
            timeout=self.reboot_timeout,
        )
        self.reboot.reschedule(self.reboot_timeout)
        self.emit(UtilShutdownRequest(reason))

    def _acknowledge(self, module_id: int, event: Event) -> None:
        if module_id not in self.awaiting_ack:
            return
        self.awaiting_ack.discard(module_id)
        self.acknowledged.add(module_id)
        self.log.info(
            "shutdown_acknowledged", by=event.spec_name, waiting=len(self.awaiting_ack)
        )
        if not self.awaiting_ack and self.request is not None:
            self.request = attrs.evolve(self.request, acknowledged=True)
            # The firmware waits 5 s so its logs reach the console before
            # the reset; a host stop has nothing to wait for.
            stopping = self.request.reason is ShutdownReason.SERVICE_STOP
            self.reboot.reschedule(0.0 if stopping else self.ack_reboot_delay)

    def _on_reboot_timer(self) -> None:
        if self.request is None:
            return
        if self.awaiting_ack:
            self.log.warning(
                "shutdown_unacknowledged", modules=sorted(self.awaiting_ack)
            )
        stopping = self.request.reason is ShutdownReason.SERVICE_STOP
        getattr(self.log, "info" if stopping else "warning")(
            "rebooting", reason=self.request.reason.value
        )
        self.on_reboot(self.request)

    def snapshot_extra(self) -> dict[str, Any]:
        """The pending request and who has not answered yet."""
        return {
            "reason": None if self.request is None else self.request.reason.value,
            "cause": None if self.request is None else self.request.cause,
            "awaiting_ack": sorted(self.awaiting_ack),
        }
