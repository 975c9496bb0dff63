"""The debug websocket: live snapshots of the actor tree, and a few commands.

Design
------
``DebugServer`` serves a websocket (trio-websocket ``serve_websocket``) on
loopback by default.  It is started beside ``Service.run``, not inside a
boot: it outlives reboots and finds each boot's tree by polling
``service.device`` (an identity check every ``BOOT_POLL`` seconds, and on
every tick and command).  On each new tree it installs a tap on the bus that
appends ``{"t", "event", "source", "boot"}`` to a bounded deque of recent
events; the tap is a plain callable that never blocks, as ``Bus.taps``
requires.

One ticker task builds a snapshot every ``interval`` seconds, synchronously,
from ``Device.snapshot()``, and *offers* it to every client.  Offering never
awaits: each client keeps only the newest snapshot not yet sent (latest-value
semantics, STYLE habit 18 and §3.8), and a snapshot that is overwritten
before it is sent is counted as skipped.  A writer task per client sends the
pending replies, then the newest snapshot.  A send that takes longer than
``send_timeout`` drops the client (counted in ``dropped``).  Nothing an actor
does ever waits for a client: actors only feed the tap, and the server only
reads their state.

Protocol
--------
Server to client, one JSON object per text message:

* ``{"type": "snapshot", "t", "boot", "reboots", "actors", "recent"}``
  (``snapshot_message``).
* ``{"type": "ack", "cmd": <cmd>}`` after a command was carried out.
* ``{"type": "error", "message": <text>}`` for a malformed or unknown
  command, or one that cannot run now (no tree booted).

Client to server: ``{"cmd": "snapshot" | "lte_loss" | "lte_regain" |
"sample" | "shutdown"}``.  ``snapshot`` is acknowledged and then answered
with a snapshot at once; ``sample`` publishes ``AppDataGetAll`` on the
device bus; ``shutdown`` calls ``service.request_stop()``.
"""

from __future__ import annotations

import collections
import enum
import functools
import json
import math
import pathlib
from typing import TYPE_CHECKING, Any

import attrs
import structlog
import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    serve_websocket,
)

from actors.runtime import ActorSnapshot
from protocols.app import AppDataGetAll
from protocols.base import Event

if TYPE_CHECKING:
    from tracker.service import Device, Service

log = structlog.get_logger(actor="debug")

# The port ``tracker run`` uses when debugging is on and no port is given.
DEFAULT_PORT = 8765
# How often the server checks whether the service booted a new tree, so the
# tap sees a boot's first events even with a long snapshot interval.
BOOT_POLL = 0.05
# A client whose send takes longer than this (seconds) is dropped.
SEND_TIMEOUT = 5.0
# Replies (acks, errors) waiting for one client.  A client that sends more
# commands than this without reading the replies is dropped.
REPLY_QUEUE = 16
# Bytes of a malformed command quoted back in the error reply.
QUOTE = 80

COMMANDS = ("snapshot", "lte_loss", "lte_regain", "sample", "shutdown")


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data.

    Enums become their values, paths strings, bytes their length, attrs
    instances dicts, tuples and sets lists, non-finite floats ``None``;
    anything else unknown becomes its ``repr``.
    """
    match value:
        case None | bool() | str():
            return value
        case enum.Enum():
            return jsonable(value.value)
        case int():
            return int(value)
        case float():
            return value if math.isfinite(value) else None
        case bytes() | bytearray() | memoryview():
            return len(value)
        case pathlib.PurePath():
            return str(value)
        case dict():
            return {_key(k): jsonable(v) for k, v in value.items()}
        case list() | tuple():
            return [jsonable(v) for v in value]
        case set() | frozenset():
            items = [jsonable(v) for v in value]
            try:
                return sorted(items)
            except TypeError:
                return items
        case _ if attrs.has(type(value)):
            return {
                field.name: jsonable(getattr(value, field.name))
                for field in attrs.fields(type(value))
            }
        case _:
            return repr(value)


def _key(key: Any) -> str:
    converted = jsonable(key)
    return converted if isinstance(converted, str) else json.dumps(converted)


def actor_json(snapshot: ActorSnapshot) -> dict[str, Any]:
    """One actor's entry of a snapshot message."""
    return {
        "name": snapshot.name,
        "id": snapshot.id,
        "state": snapshot.state,
        "sub_state": snapshot.sub_state,
        "mailbox": jsonable(snapshot.mailbox),
        "counters": jsonable(snapshot.counters),
        "timers": jsonable(snapshot.timers),
        "last_error": snapshot.last_error,
        "restarts": snapshot.restarts,
        "extra": jsonable(snapshot.extra),
    }


class _Dropped(Exception):
    """The client cannot keep up; the connection is closed."""


@attrs.define(eq=False)
class _Client:
    """One connection's outbox: pending replies and the newest snapshot."""

    peer: str
    replies: collections.deque[str] = attrs.Factory(
        lambda: collections.deque(maxlen=REPLY_QUEUE + 1)
    )
    snapshot: str | None = None
    skipped: int = 0
    sent: int = 0
    overrun: bool = False
    wakeup: trio.Event = attrs.Factory(trio.Event)

    def offer(self, snapshot: str) -> None:
        """Replace the pending snapshot; never blocks."""
        if self.snapshot is not None:
            self.skipped += 1
        self.snapshot = snapshot
        self.wakeup.set()

    def reply(self, message: dict[str, Any]) -> None:
        """Queue a reply; an overrun marks the client for dropping."""
        if len(self.replies) >= REPLY_QUEUE:
            self.overrun = True
        self.replies.append(json.dumps(message))
        self.wakeup.set()

    def next_message(self) -> str | None:
        if self.replies:
            return self.replies.popleft()
        message, self.snapshot = self.snapshot, None
        return message


@attrs.define(eq=False)
class DebugServer:
    """Serves snapshots of ``service``'s actor tree over a websocket.

    Args:
      service: the service to watch and command.
      host: address to bind; loopback unless deliberately exposed.
      port: TCP port; 0 picks a free one (reported by ``run``).
      interval: seconds between snapshots pushed to each client.
      recent: how many recent bus events each snapshot carries.
      send_timeout: seconds a send may take before the client is dropped.

    Cancellation: cancelling ``run`` closes every connection and removes
    the bus tap.

    Logging: ``debug_listening`` and ``debug_client_connected`` /
    ``debug_client_closed`` at INFO, ``debug_client_dropped`` at WARNING,
    ``debug_command`` at INFO.
    """

    service: Service
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    interval: float = 1.0
    recent: int = 20
    send_timeout: float = SEND_TIMEOUT
    # Clients dropped for being too slow, since the server started.
    dropped: int = attrs.field(init=False, default=0)
    clients: set[_Client] = attrs.field(init=False, factory=set)
    _events: collections.deque[dict[str, Any]] = attrs.field(init=False)
    _device: Device | None = attrs.field(init=False, default=None)
    _boot: int = attrs.field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        self._events = collections.deque(maxlen=self.recent)

    async def run(
        self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until cancelled; ``task_status.started`` gets the bound port."""
        try:
            async with trio.open_nursery() as nursery:
                server = await nursery.start(
                    functools.partial(
                        serve_websocket,
                        self._handle,
                        self.host,
                        self.port,
                        ssl_context=None,
                        # The closing handshake with a dropped client
                        # cannot take longer than its sends may.
                        disconnect_timeout=self.send_timeout,
                    ),
                    name="debug-websocket",
                )
                self.port = server.port
                log.info("debug_listening", host=self.host, port=self.port)
                nursery.start_soon(self._watch_boots, name="debug-boot-watch")
                nursery.start_soon(self._tick, name="debug-ticker")
                task_status.started(self.port)
        finally:
            self._untap()

    # -- the device ------------------------------------------------------------

    def _current_device(self) -> Device | None:
        """``service.device``, with the tap moved onto it if it is new."""
        device = self.service.device
        if device is not self._device:
            self._untap()
            self._device = device
            if device is not None:
                self._boot = len(self.service.reboots) + 1
                device.bus.taps.append(self._tap)
        return device

    def _untap(self) -> None:
        if self._device is not None and self._tap in self._device.bus.taps:
            self._device.bus.taps.remove(self._tap)

    def _tap(self, event: Event) -> None:
        # Runs inside Bus.publish: append only, never block.
        self._events.append(
            {
                "t": trio.current_time(),
                "event": event.spec_name,
                "source": jsonable(event.source),
                "boot": self._boot,
            }
        )

    async def _watch_boots(self) -> None:
        while True:
            self._current_device()
            await trio.sleep(BOOT_POLL)

    def snapshot_message(self) -> dict[str, Any]:
        """The snapshot sent to clients, built without awaiting."""
        device = self._current_device()
        return {
            "type": "snapshot",
            "t": trio.current_time(),
            "boot": len(self.service.reboots) + 1,
            "booted": device is not None,
            "reboots": [
                {"reason": jsonable(r.reason), "cause": r.cause}
                for r in self.service.reboots
            ],
            "actors": (
                [] if device is None else [actor_json(s) for s in device.snapshot()]
            ),
            "recent": list(self._events),
        }

    def _encode_snapshot(self) -> str:
        try:
            return json.dumps(self.snapshot_message())
        except Exception as exc:  # an actor's snapshot_extra, say
            log.exception("debug_snapshot_failed")
            return json.dumps(_error(f"snapshot failed: {exc!r}"))

    async def _tick(self) -> None:
        while True:
            if self.clients:
                message = self._encode_snapshot()
                for client in self.clients:
                    client.offer(message)
            await trio.sleep(self.interval)

    # -- one connection ----------------------------------------------------------

    async def _handle(self, request: WebSocketRequest) -> None:
        # Exceptions escaping here would stop the whole server, so each
        # connection ends quietly whatever happens to it.
        try:
            ws = await request.accept()
        except ConnectionClosed:
            return
        remote = ws.remote
        peer = str(getattr(remote, "address", remote)) + ":" + str(
            getattr(remote, "port", "")
        )
        client = _Client(peer)
        self.clients.add(client)
        log.info("debug_client_connected", peer=peer, clients=len(self.clients))
        client.offer(self._encode_snapshot())
        reason = "closed"
        try:
            async with trio.open_nursery() as nursery:

                async def writer() -> None:
                    await self._write(ws, client)
                    nursery.cancel_scope.cancel()

                async def reader() -> None:
                    await self._read(ws, client)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(writer, name=f"debug-writer-{peer}")
                nursery.start_soon(reader, name=f"debug-reader-{peer}")
        except* _Dropped as group:
            reason = str(group.exceptions[0])
            self.dropped += 1
            log.warning(
                "debug_client_dropped",
                peer=peer,
                reason=reason,
                sent=client.sent,
                skipped=client.skipped,
                dropped=self.dropped,
            )
        except* (ConnectionClosed, trio.BrokenResourceError, OSError):
            pass
        except* Exception:
            # A bug here must not take the server (or the service) down.
            reason = "failed"
            log.exception("debug_client_failed", peer=peer)
        finally:
            self.clients.discard(client)
        if reason == "closed":
            log.info("debug_client_closed", peer=peer, sent=client.sent)

    async def _write(self, ws: WebSocketConnection, client: _Client) -> None:
        while True:
            await client.wakeup.wait()
            client.wakeup = trio.Event()
            if client.overrun:
                raise _Dropped("reply queue overrun")
            while (message := client.next_message()) is not None:
                with trio.move_on_after(self.send_timeout) as scope:
                    await ws.send_message(message)
                if scope.cancelled_caught:
                    raise _Dropped(f"send took longer than {self.send_timeout} s")
                client.sent += 1

    async def _read(self, ws: WebSocketConnection, client: _Client) -> None:
        while True:
            try:
                raw = await ws.get_message()
            except ConnectionClosed:
                return
            reply = self.command(raw)
            client.reply(reply)
            if reply == {"type": "ack", "cmd": "snapshot"}:
                client.offer(self._encode_snapshot())

    # -- commands ----------------------------------------------------------------

    def command(self, raw: str | bytes) -> dict[str, Any]:
        """Carry out one client command; the reply, never an exception."""
        try:
            message = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return _error(f"not JSON: {_quote(raw)}")
        if not isinstance(message, dict) or not isinstance(message.get("cmd"), str):
            return _error(f'expected {{"cmd": <name>}}, got {_quote(raw)}')
        cmd = message["cmd"]
        if cmd not in COMMANDS:
            return _error(f"unknown command {cmd!r}; known: {', '.join(COMMANDS)}")
        log.info("debug_command", cmd=cmd)
        if cmd == "snapshot":
            return {"type": "ack", "cmd": cmd}
        if cmd == "shutdown":
            self.service.request_stop()
            return {"type": "ack", "cmd": cmd}
        device = self._current_device()
        if device is None:
            return _error(f"{cmd}: no device is booted right now")
        match cmd:
            case "lte_loss":
                device.modem.inject_lte_loss()
            case "lte_regain":
                device.modem.inject_lte_regain()
            case "sample":
                device.bus.publish(AppDataGetAll())
        return {"type": "ack", "cmd": cmd}


def _error(message: str) -> dict[str, Any]:
    return {"type": "error", "message": message}


def _quote(raw: str | bytes) -> str:
    text = raw if isinstance(raw, str) else repr(raw)
    return repr(text[:QUOTE])
