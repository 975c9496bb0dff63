"""A scripted in-memory cloud, for deterministic tests and dry runs.

It implements the whole cloud wrapper API without a network.  Each
connection attempt takes the next outcome from a script:

* ``Connect(after=s)``: the session comes up ``s`` seconds later;
* ``Refuse(after=s, reason=...)``: the attempt fails ``s`` seconds later
  with a disconnection (as an MQTT client reports a refused CONNACK);
* ``Hang()``: nothing ever happens (a broker that never answers).

When the script runs out, ``default`` applies.  Every call is recorded with
the (virtual) time it was made, so tests can assert the exact schedule, and
tests can play the cloud's part: drop the session, send a document,
acknowledge or ping.  QoS 1 sends can be acknowledged automatically after
``ack_delay`` seconds, which is what ``tracker run`` does with this backend.
"""

from __future__ import annotations

from collections import deque
from typing import ClassVar

import attrs
import trio

from backends.base import CloudBackend, Emit
from backends.errors import BackendBusy, BackendNotConnected
from protocols import wrapper as wrap
from protocols.base import Payload
from protocols.codec import CloudCodec
from protocols.json_codec import JsonCodec


@attrs.frozen
class Connect:
    """The attempt succeeds ``after`` seconds."""

    after: float = 0.0


@attrs.frozen
class Refuse:
    """The attempt fails ``after`` seconds, naming ``reason``."""

    after: float = 0.0
    reason: str = "connection refused"


@attrs.frozen
class Hang:
    """The attempt never completes."""


Outcome = Connect | Refuse | Hang


@attrs.frozen(kw_only=True)
class Call:
    """One call the cloud actor made, at virtual time ``t``."""

    t: float
    name: str
    payload: Payload | None = None
    ack: bool = False
    message_id: int = 0


@attrs.define(eq=False)
class ScriptedBackend(CloudBackend):
    """The scripted cloud (module docstring)."""

    sends_object_paths: ClassVar[bool] = False

    script: deque[Outcome] = attrs.field(converter=deque, factory=deque)
    default: Outcome = Connect()
    ack_delay: float | None = None
    codec: CloudCodec = attrs.field(factory=JsonCodec)
    calls: list[Call] = attrs.field(init=False, factory=list)
    connected: bool = attrs.field(init=False, default=False)
    _emit: Emit | None = attrs.field(init=False, default=None)
    _attempt_scope: trio.CancelScope | None = attrs.field(init=False, default=None)
    _nursery: trio.Nursery | None = attrs.field(init=False, default=None)

    # -- what tests read ---------------------------------------------------

    @property
    def attempt_times(self) -> list[float]:
        """The virtual time of every ``connect`` call."""
        return [call.t for call in self.calls if call.name == "connect"]

    def sent(self, name: str | None = None) -> list[Call]:
        """Every data-carrying call, or those of one wrapper function."""
        return [
            call
            for call in self.calls
            if call.payload is not None and (name is None or call.name == name)
        ]

    # -- what tests do as the cloud -----------------------------------------

    def emit(self, event: wrap.WrapperEvent) -> None:
        """Report ``event`` to the cloud actor."""
        if self._emit is None:
            raise RuntimeError("the backend was not initialised (init not called)")
        self._emit(event)

    def drop(self, reason: str = "connection lost") -> None:
        """The session breaks."""
        self.connected = False
        self.emit(wrap.WrapperDisconnected(reason))

    def receive(self, data: bytes, topic: str = "") -> None:
        """A document arrives from the cloud."""
        self.emit(wrap.WrapperDataReceived(data, topic))

    def ack(self, message_id: int) -> None:
        """The cloud acknowledges a message."""
        self.emit(wrap.WrapperDataAck(message_id))

    # -- the wrapper API ----------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Own the tasks that play out delayed outcomes."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def init(self, emit: Emit) -> None:
        """Remember where events go."""
        self._record("init")
        self._emit = emit

    async def connect(self) -> None:
        """Play the next scripted outcome."""
        self._record("connect")
        if self._attempt_scope is not None:
            raise BackendBusy("an attempt is in progress")
        if self.connected:
            raise BackendBusy("already connected")
        outcome = self.script.popleft() if self.script else self.default
        self.emit(wrap.WrapperConnecting())
        scope = trio.CancelScope()
        self._attempt_scope = scope
        self._spawn(self._play, outcome, scope)

    async def _play(self, outcome: Outcome, scope: trio.CancelScope) -> None:
        with scope:
            match outcome:
                case Connect(after=after):
                    await trio.sleep(after)
                    self.connected = True
                    self.emit(wrap.WrapperConnected())
                case Refuse(after=after, reason=reason):
                    await trio.sleep(after)
                    self.emit(wrap.WrapperDisconnected(reason))
                case Hang():
                    await trio.sleep_forever()
        if self._attempt_scope is scope:
            self._attempt_scope = None

    async def disconnect(self) -> None:
        """Abandon any attempt; report the end of a live session."""
        self._record("disconnect")
        if self._attempt_scope is not None:
            self._attempt_scope.cancel(reason="disconnect requested")
            self._attempt_scope = None
        if self.connected:
            self.connected = False
            self.emit(wrap.WrapperDisconnected("disconnect requested"))

    def cloud_location_response_wait(self) -> bool:
        """The scripted cloud, like AWS, never resolves locations."""
        return False

    async def state_get(self, ack: bool, message_id: int) -> None:
        """Record the request."""
        self._send("state_get", Payload(), ack, message_id)

    async def state_send(self, payload: Payload, ack: bool, message_id: int) -> None:
        """Record the configuration report."""
        self._send("state_send", payload, ack, message_id)

    async def data_send(self, payload: Payload, ack: bool, message_id: int) -> None:
        """Record the data."""
        self._send("data_send", payload, ack, message_id)

    async def batch_send(self, payload: Payload, ack: bool, message_id: int) -> None:
        """Record the batch."""
        self._send("batch_send", payload, ack, message_id)

    async def ui_send(self, payload: Payload, ack: bool, message_id: int) -> None:
        """Record the message."""
        self._send("ui_send", payload, ack, message_id)

    async def cloud_location_send(
        self, payload: Payload, ack: bool, message_id: int
    ) -> None:
        """Record the location request."""
        self._send("cloud_location_send", payload, ack, message_id)

    async def agnss_request_send(
        self, payload: Payload, ack: bool, message_id: int
    ) -> None:
        """Record the A-GNSS request."""
        self._send("agnss_request_send", payload, ack, message_id)

    async def pgps_request_send(
        self, payload: Payload, ack: bool, message_id: int
    ) -> None:
        """Record the P-GPS request."""
        self._send("pgps_request_send", payload, ack, message_id)

    async def memfault_data_send(
        self, payload: Payload, ack: bool, message_id: int
    ) -> None:
        """Record the Memfault chunk."""
        self._send("memfault_data_send", payload, ack, message_id)

    def snapshot(self) -> dict[str, object]:
        """Connection flag and counts, for the debug view."""
        return {
            "kind": "scripted",
            "connected": self.connected,
            "attempts": len(self.attempt_times),
            "sent": len(self.sent()),
        }

    # -- helpers -------------------------------------------------------------

    def _record(self, name: str) -> None:
        self.calls.append(Call(t=trio.current_time(), name=name))

    def _send(self, name: str, payload: Payload, ack: bool, message_id: int) -> None:
        if not self.connected:
            raise BackendNotConnected(f"{name} while disconnected")
        self.calls.append(
            Call(
                t=trio.current_time(),
                name=name,
                payload=payload,
                ack=ack,
                message_id=message_id,
            )
        )
        if ack and self.ack_delay is not None:
            self._spawn(self._ack_later, message_id)

    async def _ack_later(self, message_id: int) -> None:
        await trio.sleep(self.ack_delay or 0.0)
        if self.connected:
            self.ack(message_id)

    def _spawn(self, fn: object, *args: object) -> None:
        if self._nursery is None:
            raise RuntimeError("the backend is not running (run not started)")
        self._nursery.start_soon(fn, *args)  # type: ignore[arg-type]

