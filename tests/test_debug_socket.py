"""The debug websocket and its terminal view, over real loopback sockets.

Each test runs a real ``Service`` with the simulated cloud and a
``DebugServer`` on port 0, in real time (websockets are real sockets, so no
autojump), bounded with ``fail_after``.
"""

from __future__ import annotations

import enum
import errno
import fcntl
import functools
import io
import json
import math
import os
import pathlib
import struct
import termios
from collections.abc import AsyncIterator, Callable
from typing import Any, TextIO

import attrs
import pytest
import trio
from structlog.testing import capture_logs
from trio_websocket import WebSocketConnection, open_websocket_url

from protocols.app import ShutdownReason
from protocols.modem import ModemError
from tracker.config import parse_config
from tracker.debug import DebugServer, jsonable
from tracker.inspect import inspect, render
from tracker.service import ExitCode, Service

# Real seconds any one wait may take.
LIMIT = 10
ACTORS = {"util", "cloud", "data", "modem", "location", "sensor", "ui", "app"}
ACTOR_FIELDS = {
    "name",
    "state",
    "sub_state",
    "mailbox",
    "counters",
    "timers",
    "last_error",
    "restarts",
    "extra",
}
MAILBOX_FIELDS = {"depth", "peak", "capacity", "delivered", "overflows", "purged"}


@attrs.define(eq=False)
class Rig:
    """A running service, its debug server, and the service's exit code."""

    service: Service
    server: DebugServer
    port: int
    exit: list[ExitCode] = attrs.Factory(list)
    done: trio.Event = attrs.Factory(trio.Event)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"


def service_for(tmp_path: pathlib.Path, extra: str = "") -> Service:
    config = parse_config(
        extra + "[modem]\nattach_delay = 0.1\n"
        '[cloud]\nservice = "simulated"\n'
        "[cloud.simulated]\nconnect_delay = 0.1\n"
        f'[state]\ndirectory = "{tmp_path / "state"}"\n'
    )
    return Service(config)


@pytest.fixture
def rig_factory(
    tmp_path: pathlib.Path,
) -> Callable[..., Any]:
    """Start a service and a debug server on port 0 inside ``nursery``."""

    async def start(nursery: trio.Nursery, config: str = "", **options: Any) -> Rig:
        service = service_for(tmp_path, config)
        server = DebugServer(service, port=0, **options)
        port = await nursery.start(server.run)
        rig = Rig(service, server, port)

        async def run_service() -> None:
            rig.exit.append(await service.run())
            rig.done.set()

        nursery.start_soon(run_service)
        with trio.fail_after(LIMIT):
            await service.booted.wait()
        return rig

    return start


@pytest.fixture
async def rig(rig_factory: Callable[..., Any]) -> AsyncIterator[Rig]:
    """A service with a debug server sending a snapshot every 50 ms."""
    async with trio.open_nursery() as nursery:
        yield await rig_factory(nursery, interval=0.05)
        nursery.cancel_scope.cancel()


async def receive(ws: WebSocketConnection) -> dict[str, Any]:
    with trio.fail_after(LIMIT):
        message: dict[str, Any] = json.loads(await ws.get_message())
    return message


async def snapshot_where(
    ws: WebSocketConnection, condition: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The first snapshot satisfying ``condition``."""
    with trio.fail_after(LIMIT):
        while True:
            message = await receive(ws)
            if message["type"] == "snapshot" and condition(message):
                return message


async def reply_to(ws: WebSocketConnection, command: Any) -> dict[str, Any]:
    """Send ``command`` (JSON, or raw text) and return the next non-snapshot."""
    raw = command if isinstance(command, str) else json.dumps(command)
    await ws.send_message(raw)
    with trio.fail_after(LIMIT):
        while True:
            message = await receive(ws)
            if message["type"] != "snapshot":
                return message


def actor(snapshot: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [a for a in snapshot["actors"] if a["name"] == name]
    return found


def cloud_connected(snapshot: dict[str, Any]) -> bool:
    return actor(snapshot, "cloud")["sub_state"] == "SUB_STATE_CLOUD_CONNECTED"


class TestSnapshot:
    async def test_schema(self, rig: Rig) -> None:
        """A snapshot lists every actor with state, mailbox, counters and timers."""
        async with open_websocket_url(rig.url) as ws:
            snapshot = await snapshot_where(ws, lambda s: bool(s["actors"]))
        assert {"type", "t", "boot", "reboots", "actors", "recent"} <= set(snapshot)
        assert snapshot["boot"] == 1
        assert snapshot["reboots"] == []
        assert {a["name"] for a in snapshot["actors"]} == ACTORS
        for entry in snapshot["actors"]:
            assert ACTOR_FIELDS <= set(entry)
            assert set(entry["mailbox"]) == MAILBOX_FIELDS
            assert isinstance(entry["counters"], dict)
            assert isinstance(entry["timers"], dict)
            assert isinstance(entry["extra"], dict)
            assert entry["restarts"] == 0
        assert "next_attempt_at" in actor(snapshot, "cloud")["extra"]
        assert all(set(e) >= {"t", "event", "source"} for e in snapshot["recent"])

    async def test_recent_events_are_bounded(
        self, rig_factory: Callable[..., Any]
    ) -> None:
        """The tap keeps only the last ``recent`` bus events, in order."""
        async with trio.open_nursery() as nursery:
            rig = await rig_factory(nursery, interval=0.05, recent=3)
            async with open_websocket_url(rig.url) as ws:
                snapshot = await snapshot_where(ws, cloud_connected)
                assert len(snapshot["recent"]) == 3
                times = [e["t"] for e in snapshot["recent"]]
                assert times == sorted(times)
            nursery.cancel_scope.cancel()

    async def test_snapshot_command(self, rig_factory: Callable[..., Any]) -> None:
        """``snapshot`` is acknowledged and answered at once, between ticks."""
        async with trio.open_nursery() as nursery:
            rig = await rig_factory(nursery, interval=3600)
            async with open_websocket_url(rig.url) as ws:
                first = await receive(ws)  # the one every client gets on connect
                assert first["type"] == "snapshot"
                assert await reply_to(ws, {"cmd": "snapshot"}) == {
                    "type": "ack",
                    "cmd": "snapshot",
                }
                second = await receive(ws)
                assert second["type"] == "snapshot"
                assert second["t"] > first["t"]
            nursery.cancel_scope.cancel()


    async def test_follows_a_reboot(self, rig_factory: Callable[..., Any]) -> None:
        """After a reboot the server taps the new tree and reports the reason."""
        async with trio.open_nursery() as nursery:
            rig = await rig_factory(
                nursery, "[util]\nack_reboot_delay = 1\n", interval=0.05
            )
            async with open_websocket_url(rig.url) as ws:
                await snapshot_where(ws, cloud_connected)
                assert rig.service.device is not None
                rig.service.device.bus.publish(ModemError(err=-errno.EIO))
                snapshot = await snapshot_where(
                    ws, lambda s: s["boot"] == 2 and cloud_connected(s)
                )
            nursery.cancel_scope.cancel()
        (reboot,) = snapshot["reboots"]
        assert reboot["reason"] == ShutdownReason.GENERIC.value
        assert "MODEM_EVT_ERROR" in reboot["cause"]
        second_boot = [e["event"] for e in snapshot["recent"] if e["boot"] == 2]
        assert "CLOUD_EVT_CONNECTED" in second_boot


class TestCommands:
    async def test_lte_loss_and_regain(self, rig: Rig) -> None:
        """``lte_loss`` disconnects the cloud actor; ``lte_regain`` reconnects it."""
        async with open_websocket_url(rig.url) as ws:
            await snapshot_where(ws, cloud_connected)
            assert await reply_to(ws, {"cmd": "lte_loss"}) == {
                "type": "ack",
                "cmd": "lte_loss",
            }
            lost = await snapshot_where(
                ws, lambda s: actor(s, "cloud")["state"] == "STATE_LTE_DISCONNECTED"
            )
            assert actor(lost, "modem")["extra"]["network_available"] is False
            assert await reply_to(ws, {"cmd": "lte_regain"}) == {
                "type": "ack",
                "cmd": "lte_regain",
            }
            await snapshot_where(ws, cloud_connected)

    async def test_sample_publishes_data_get(self, rig: Rig) -> None:
        """``sample`` triggers the app actor: its data request shows in ``recent``."""
        async with open_websocket_url(rig.url) as ws:
            await snapshot_where(ws, cloud_connected)
            await reply_to(ws, {"cmd": "sample"})
            snapshot = await snapshot_where(
                ws,
                lambda s: any(
                    e["event"] == "APP_EVT_DATA_GET_ALL" for e in s["recent"]
                ),
            )
        assert "APP_EVT_DATA_GET_ALL" in [e["event"] for e in snapshot["recent"]]

    @pytest.mark.parametrize(
        "raw",
        [
            "not json",
            "[1, 2]",
            '{"command": "snapshot"}',
            '{"cmd": 7}',
            '{"cmd": "reboot_the_moon"}',
        ],
    )
    async def test_malformed_command(self, rig: Rig, raw: str) -> None:
        """A bad command gets an error reply, and the server keeps serving."""
        async with open_websocket_url(rig.url) as ws:
            reply = await reply_to(ws, raw)
            assert reply["type"] == "error"
            assert reply["message"]
            assert (await reply_to(ws, {"cmd": "snapshot"}))["type"] == "ack"
        async with open_websocket_url(rig.url) as ws:
            assert (await receive(ws))["type"] == "snapshot"

    async def test_binary_command(self, rig: Rig) -> None:
        """A binary message that is not UTF-8 JSON is an error, not a crash."""
        async with open_websocket_url(rig.url) as ws:
            await ws.send_message(b"\xff\xfe")
            with trio.fail_after(LIMIT):
                while (reply := await receive(ws))["type"] == "snapshot":
                    pass
            assert reply["type"] == "error"

    async def test_shutdown(self, rig: Rig) -> None:
        """``shutdown`` stops the service through its protocol: exit code OK."""
        async with open_websocket_url(rig.url) as ws:
            await snapshot_where(ws, cloud_connected)
            assert await reply_to(ws, {"cmd": "shutdown"}) == {
                "type": "ack",
                "cmd": "shutdown",
            }
            with trio.fail_after(LIMIT):
                await rig.done.wait()
            assert rig.exit == [ExitCode.OK]
            # The server outlives the tree: it reports no device now.
            snapshot = await snapshot_where(ws, lambda s: not s["actors"])
            assert snapshot["booted"] is False
            reply = await reply_to(ws, {"cmd": "lte_loss"})
            assert reply["type"] == "error"


class TestSlowClients:
    async def test_slow_client_never_delays_the_actors(
        self, rig_factory: Callable[..., Any]
    ) -> None:
        """A client that never reads holds one snapshot at most, then is dropped;
        meanwhile another client's ``lte_loss`` is handled at once."""
        with capture_logs() as logs:
            await self._slow_client_run(rig_factory, logs)

    async def _slow_client_run(
        self, rig_factory: Callable[..., Any], logs: list[dict[str, Any]]
    ) -> None:
        async with trio.open_nursery() as nursery:
            rig = await rig_factory(nursery, interval=0.001, send_timeout=0.5)
            # A raw TCP client: handshake, then never read, so the server's
            # sends back up into the socket buffers.
            slow = await trio.open_tcp_stream("127.0.0.1", rig.port)
            await slow.send_all(
                b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            )
            async with open_websocket_url(rig.url) as ws:
                await snapshot_where(ws, cloud_connected)
                with trio.fail_after(LIMIT):
                    while not rig.server.clients or len(rig.server.clients) < 2:
                        await trio.sleep(0.01)
                clients = list(rig.server.clients)
                start = trio.current_time()
                await reply_to(ws, {"cmd": "lte_loss"})
                await snapshot_where(
                    ws,
                    lambda s: actor(s, "cloud")["state"] == "STATE_LTE_DISCONNECTED",
                )
                assert trio.current_time() - start < 2
                # The slow one cannot keep up for ever.
                with trio.fail_after(LIMIT * 3):
                    while rig.server.dropped == 0:
                        await trio.sleep(0.05)
                assert len(rig.server.clients) == 1
                (dropped,) = [e for e in logs if e["event"] == "debug_client_dropped"]
                assert "send took longer" in dropped["reason"]
                # Latest-value semantics: it skipped snapshots instead of
                # queueing them; at most one was ever pending.
                (slow_client,) = [c for c in clients if c not in rig.server.clients]
                assert slow_client.skipped > 0
                # The other client is still served.
                await reply_to(ws, {"cmd": "lte_regain"})
                await snapshot_where(ws, cloud_connected)
            await slow.aclose()
            nursery.cancel_scope.cancel()


def fake_snapshot(*, error: str | None = None) -> dict[str, Any]:
    """A snapshot message naming every actor, the cloud with ``error``."""
    return {
        "type": "snapshot",
        "t": 5.0,
        "boot": 1,
        "reboots": [],
        "actors": [
            {
                "name": name,
                "state": "STATE_RUNNING",
                "sub_state": None,
                "mailbox": dict.fromkeys(MAILBOX_FIELDS, 0),
                "counters": {"handled": 3},
                "timers": {},
                "last_error": error if name == "cloud" else None,
                "restarts": 0,
                "extra": {"next_attempt_at": None} if name == "cloud" else {},
            }
            for name in sorted(ACTORS)
        ],
        "recent": [],
    }


def open_terminal(*, lines: int, columns: int) -> tuple[int, TextIO]:
    """A pseudo-terminal of that size: its master fd (non-blocking) and its
    other end as a text file."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
    os.set_blocking(master, False)
    return master, open(slave, "w", encoding="utf-8")


class TestInspect:
    async def test_once_renders_every_actor(self, rig: Rig) -> None:
        """``inspect(once=True)`` prints one table naming every actor."""
        out = io.StringIO()
        with trio.fail_after(LIMIT):
            snapshot = await inspect(rig.url, once=True, out=out)
        text = out.getvalue()
        assert snapshot is not None
        for name in ACTORS:
            assert name in text
        assert "cloud next attempt" in text
        assert "\x1b[" not in text

    def test_render_shows_cloud_next_attempt_and_errors(self) -> None:
        """The table shows the cloud's next attempt relative to ``t``."""
        snapshot = {
            "type": "snapshot",
            "t": 10.0,
            "boot": 2,
            "reboots": [{"reason": "generic", "cause": "MODEM_EVT_ERROR"}],
            "actors": [
                {
                    "name": "cloud",
                    "state": "STATE_LTE_CONNECTED",
                    "sub_state": "SUB_STATE_CLOUD_DISCONNECTED",
                    "mailbox": dict.fromkeys(MAILBOX_FIELDS, 1),
                    "counters": {"connect_attempts": 4},
                    "timers": {},
                    "last_error": "boom",
                    "restarts": 1,
                    "extra": {"next_attempt_at": 42.5},
                }
            ],
            "recent": [
                {"t": 9.5, "event": "CLOUD_EVT_DISCONNECTED", "source": "cloud"}
            ],
        }
        text = render(snapshot, width=150)
        assert "in 32.5 s" in text
        assert "boom" in text
        assert "MODEM_EVT_ERROR" in text
        assert "connect_attempts=4" in text
        assert "CLOUD_EVT_DISCONNECTED" in text
        # State prefixes dropped; depth/peak/capacity and overflows.
        assert "LTE_CONNECTED / CLOUD_DISCONNECTED" in text
        assert "STATE_" not in text
        assert "1/1/1 !1" in text

    @pytest.mark.parametrize("width", [150, 80])
    def test_render_colour(self, width: int) -> None:
        """Every actor is named; escape codes only when colour is on."""
        snapshot = fake_snapshot(error="RuntimeError('[bold]x[/bold]')")
        plain = render(snapshot, width=width)
        for name in ACTORS:
            assert name in plain
        assert "\x1b[" not in plain
        # Actor data is shown as it is, never read as rich markup.
        assert "RuntimeError('[bold]x[/bold]')" in render(snapshot, width=150)
        assert all(len(line) <= width for line in plain.splitlines())
        coloured = render(snapshot, width=width, color=True)
        assert "\x1b[" in coloured
        for name in ACTORS:
            assert name in coloured

    def test_render_without_a_device(self) -> None:
        """Between boots the table says so instead of failing."""
        text = render(
            {"type": "snapshot", "t": 1.0, "boot": 1, "reboots": [], "actors": []}
        )
        assert "no device booted" in text
        assert "no cloud actor" in text
        assert "\x1b[" not in text

    async def test_prints_each_snapshot_when_not_a_terminal(self, rig: Rig) -> None:
        """Without ``once`` and a terminal, each snapshot is printed as text."""
        out = io.StringIO()
        with trio.fail_after(LIMIT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(functools.partial(inspect, rig.url, out=out))
                # A StringIO has nothing to wait on but polling.
                while out.getvalue().count("cloud next attempt") < 2:  # noqa: ASYNC110
                    await trio.sleep(0.01)
                nursery.cancel_scope.cancel()
        text = out.getvalue()
        for name in ACTORS:
            assert name in text
        assert "\x1b[" not in text

    @pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
    async def test_live_redraws_in_a_terminal(
        self, rig: Rig, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """On a terminal, ``rich.live.Live`` redraws the table in place."""
        for name in ("TTY_COMPATIBLE", "FORCE_COLOR", "NO_COLOR", "COLUMNS", "LINES"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("TERM", "xterm-256color")
        master, tty = open_terminal(lines=60, columns=140)
        received = bytearray()
        with tty:
            try:
                with trio.fail_after(LIMIT):
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(functools.partial(inspect, rig.url, out=tty))
                        # Drain the terminal so that the writer never blocks.
                        while received.count(b"cloud next attempt") < 3:
                            await trio.lowlevel.wait_readable(master)
                            received += os.read(master, 1 << 16)
                        nursery.cancel_scope.cancel()
            finally:
                os.close(master)
        text = received.decode("utf-8", errors="replace")
        for name in ACTORS:
            assert name in text
        # Redrawn in place: the cursor moves up over the previous table.
        assert "\x1b[1A" in text or "\x1b[A" in text


class Colour(enum.Enum):
    RED = "red"


class TestJsonable:
    def test_conversions(self) -> None:
        """Enums, paths, bytes, attrs classes and odd floats become JSON data."""

        @attrs.frozen
        class Point:
            x: int
            colour: Colour

        value = {
            "enum": Colour.RED,
            "path": pathlib.Path("/tmp/x"),
            "bytes": b"abc",
            "attrs": Point(1, Colour.RED),
            "tuple": (1, 2),
            "set": {3, 1},
            "inf": math.inf,
            Colour.RED: "key",
            "other": object,
        }
        converted = jsonable(value)
        json.dumps(converted)
        assert converted["enum"] == "red"
        assert converted["path"] == "/tmp/x"
        assert converted["bytes"] == 3
        assert converted["attrs"] == {"x": 1, "colour": "red"}
        assert converted["tuple"] == [1, 2]
        assert converted["set"] == [1, 3]
        assert converted["inf"] is None
        assert converted["red"] == "key"
        assert converted["other"] == repr(object)
