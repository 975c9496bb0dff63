"""A small test rig: a bus, a scripted cloud and the actors under test.

Everything runs under the autojump clock; ``Rig.seen`` records every event
published on the bus with the virtual time it was published at.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import trio

from actors.backoff import SEED_TABLE, ReconnectBackoff
from actors.cloud import CloudActor
from actors.runtime import Bus
from actors.util import Reboot, UtilActor
from backends.scripted import Outcome, ScriptedBackend
from protocols.base import Event


@attrs.define(eq=False)
class Rig:
    """A cloud actor wired to a scripted backend and a util actor."""

    bus: Bus
    backend: ScriptedBackend
    cloud: CloudActor
    util: UtilActor
    seen: list[tuple[float, Event]]
    reboots: list[tuple[float, Reboot]]
    rebooted: trio.Event

    def times(self, spec_name: str) -> list[float]:
        """When each event named ``spec_name`` was published."""
        return [t for t, event in self.seen if event.spec_name == spec_name]

    def names(self) -> list[str]:
        """Every published event's name, in order."""
        return [event.spec_name for _, event in self.seen]

    def publish(self, event: Event) -> None:
        """Publish ``event`` as if another module had."""
        self.bus.publish(event)


async def start_rig(
    nursery: trio.Nursery,
    outcomes: Sequence[Outcome] = (),
    *,
    table: tuple[int, ...] = SEED_TABLE,
    retries: int = 10,
    ack_delay: float | None = None,
) -> Rig:
    """Start a scripted backend, a cloud actor and a util actor."""
    bus = Bus()
    seen: list[tuple[float, Event]] = []
    reboots: list[tuple[float, Reboot]] = []
    rebooted = trio.Event()

    def on_reboot(reboot: Reboot) -> None:
        reboots.append((trio.current_time(), reboot))
        rebooted.set()

    bus.taps.append(lambda event: seen.append((trio.current_time(), event)))
    backend = ScriptedBackend(outcomes, ack_delay=ack_delay)
    cloud = CloudActor(
        bus, backend=backend, backoff=ReconnectBackoff(table, retries)
    )
    util = UtilActor(bus, on_reboot=on_reboot)
    util.register_shutdown([cloud.id])
    await nursery.start(backend.run)
    await nursery.start(util.run)
    await nursery.start(cloud.run)
    return Rig(bus, backend, cloud, util, seen, reboots, rebooted)
