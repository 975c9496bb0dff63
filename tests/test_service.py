"""The service: boots, reboots after a module error, and stops in order.

The in-process tests run whole actor trees under the autojump clock with a
scripted cloud.  The ``tracker run`` tests start the real command in a
subprocess, without autojump, bounded in real time.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

import tracker.service
from actors.util import Reboot
from backends.base import CloudBackend
from backends.scripted import Refuse, ScriptedBackend
from protocols.app import ShutdownReason
from protocols.base import Event
from state.store import StateStore
from tracker.config import Config, default_config, parse_config
from tracker.service import Device, ExitCode, Service

LIMIT = 1000
# Real seconds for the subprocess tests.
REAL_LIMIT = 20

RETRY_CONFIG = """\
[cloud]
connect_retries = 2
backoff = "v2.9.0"
[modem]
attach_delay = 2.0
"""

# Run the CLI with this interpreter; the ``tracker`` group is ``main``.
TRACKER = [sys.executable, "-c", "from tracker.cli import main; main()"]


@attrs.define(eq=False)
class Boot:
    """One boot's tree and every event published on its bus."""

    at: float
    device: Device
    seen: list[tuple[float, Event]] = attrs.Factory(list)

    def times(self, spec_name: str) -> list[float]:
        """When each event named ``spec_name`` was published on this boot."""
        return [t for t, event in self.seen if event.spec_name == spec_name]


@pytest.fixture
def boots(monkeypatch: pytest.MonkeyPatch) -> list[Boot]:
    """Every tree the service builds, with a tap on its bus."""
    recorded: list[Boot] = []
    build = tracker.service.build_device

    def recording_build(
        config: Config, on_reboot: Callable[[Reboot], None], **kwargs: Any
    ) -> Device:
        device = build(config, on_reboot, **kwargs)
        boot = Boot(trio.current_time(), device)
        device.bus.taps.append(lambda e: boot.seen.append((trio.current_time(), e)))
        recorded.append(boot)
        return device

    monkeypatch.setattr(tracker.service, "build_device", recording_build)
    return recorded


def refusing_cloud(config: Config) -> CloudBackend:
    """A cloud that refuses every connection attempt after 1 s."""
    return ScriptedBackend(default=Refuse(after=1.0))


@attrs.define(eq=False)
class CrashingBackend(ScriptedBackend):
    """A scripted cloud whose task crashes every time it starts."""

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Crash before reporting ready."""
        raise RuntimeError("backend task crashed")


def crashing_cloud(config: Config) -> CloudBackend:
    """A cloud backend that can never be started."""
    return CrashingBackend()


class TestReboot:
    async def test_cloud_error_reboots_then_hits_the_limit(
        self, autojump_clock: trio.testing.MockClock, boots: list[Boot]
    ) -> None:
        """A refusing cloud reboots the device at 231 s and 462 s, then gives up."""
        config = parse_config(RETRY_CONFIG)
        service = Service(config, max_reboots=1, backend_factory=refusing_cloud)

        with trio.fail_after(LIMIT):
            code = await service.run()
        ended_at = trio.current_time()

        assert code is ExitCode.REBOOT_LIMIT
        first, second = boots
        assert first.at == 0
        assert first.times("MODEM_EVT_LTE_CONNECTED") == [2]
        backend = first.device.backend
        assert isinstance(backend, ScriptedBackend)
        assert backend.attempt_times == [2, 34, 98]
        assert first.times("CLOUD_EVT_ERROR") == [226]
        assert first.times("UTIL_EVT_SHUTDOWN_REQUEST") == [226]
        # Every module acknowledged at once, so the reboot comes 5 s later.
        assert second.at == 231
        assert second.times("CLOUD_EVT_ERROR") == [231 + 226]
        assert ended_at == 231 * 2
        assert len(service.reboots) == 2
        reboot = service.reboots[0]
        assert reboot.reason is ShutdownReason.GENERIC
        assert "CLOUD_EVT_ERROR" in reboot.cause
        assert reboot.cause == f"CLOUD_EVT_ERROR({-errno.ENETUNREACH})"
        assert reboot.acknowledged
        assert service.reboots[1] == reboot
        assert service.stopped_by is None

    async def test_each_boot_gets_a_fresh_tree(
        self, autojump_clock: trio.testing.MockClock, boots: list[Boot]
    ) -> None:
        """A reboot builds a new bus, backend and actors; nothing carries over."""
        config = parse_config(RETRY_CONFIG)
        service = Service(config, max_reboots=1, backend_factory=refusing_cloud)

        with trio.fail_after(LIMIT):
            await service.run()

        first, second = (boot.device for boot in boots)
        assert first is not second
        assert first.bus is not second.bus
        assert first.backend is not second.backend
        assert first.supervisor is not second.supervisor
        old_ids = {actor.id for actor in first.actors}
        new_ids = {actor.id for actor in second.actors}
        assert len(old_ids) == len(new_ids) == 8
        assert old_ids.isdisjoint(new_ids)
        for old, new in zip(first.actors, second.actors, strict=True):
            assert old is not new
            assert new.name == old.name
        # The second boot starts from scratch: its modem attached again.
        assert boots[1].times("APP_EVT_START") == [231]
        assert boots[1].times("MODEM_EVT_LTE_CONNECTED") == [233]
        assert service.device is None

    async def test_crash_loop_is_a_generic_reboot(
        self, autojump_clock: trio.testing.MockClock, boots: list[Boot]
    ) -> None:
        """A child past its restart limit reboots the tree like a module error."""
        service = Service(
            default_config(), max_reboots=0, backend_factory=crashing_cloud
        )

        with trio.fail_after(LIMIT):
            code = await service.run()

        assert code is ExitCode.REBOOT_LIMIT
        assert len(boots) == 1
        assert service.reboots == [
            Reboot(
                reason=ShutdownReason.GENERIC,
                cause="backend crashed 4 times within 60 s",
                acknowledged=False,
            )
        ]
        assert service.device is None


class TestStop:
    async def test_stop_after_boot_is_acknowledged_by_every_module(
        self, autojump_clock: trio.testing.MockClock, boots: list[Boot]
    ) -> None:
        """request_stop runs the shutdown protocol and ends with ExitCode.OK at once."""
        service = Service(simulated_config(), max_reboots=1)
        result: list[tuple[float, ExitCode]] = []

        async def serve() -> None:
            code = await service.run()
            result.append((trio.current_time(), code))

        with trio.fail_after(LIMIT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve)
                await service.booted.wait()
                await trio.sleep(10)
                service.request_stop()

        assert result == [(10, ExitCode.OK)]
        assert service.reboots == []
        assert service.stopped_by == Reboot(
            reason=ShutdownReason.SERVICE_STOP,
            cause="service stop requested",
            acknowledged=True,
        )
        [boot] = boots
        device = boot.device
        assert device.util.acknowledged == {actor.id for actor in device.actors} - {
            device.util.id
        }
        assert len(device.util.acknowledged) == 7
        assert device.util.awaiting_ack == set()
        assert boot.times("UTIL_EVT_SHUTDOWN_REQUEST") == [10]
        names = [event.spec_name for _, event in boot.seen]
        assert sorted(name for name in names if "SHUTDOWN_READY" in name) == [
            "APP_EVT_SHUTDOWN_READY",
            "CLOUD_EVT_SHUTDOWN_READY",
            "DATA_EVT_SHUTDOWN_READY",
            "LOCATION_MODULE_EVT_SHUTDOWN_READY",
            "MODEM_EVT_SHUTDOWN_READY",
            "SENSOR_EVT_SHUTDOWN_READY",
            "UI_EVT_SHUTDOWN_READY",
        ]

    async def test_stop_before_boot_stops_the_first_boot(
        self, autojump_clock: trio.testing.MockClock, boots: list[Boot]
    ) -> None:
        """A stop requested before the device booted takes effect as soon as it has."""
        service = Service(simulated_config())

        service.request_stop()
        with trio.fail_after(LIMIT):
            code = await service.run()

        assert code is ExitCode.OK
        assert trio.current_time() == 0
        assert len(boots) == 1
        assert service.stopped_by is not None
        assert service.stopped_by.acknowledged


# ---------------------------------------------------------------------------
# ``tracker run`` in a subprocess, in real time


@attrs.define(eq=False)
class LineReader:
    """The lines of a subprocess's output, read as far as a test needs."""

    stream: trio.abc.ReceiveStream
    lines: list[str] = attrs.Factory(list)
    _partial: bytes = attrs.field(init=False, default=b"")

    async def read_until(self, event: str | None) -> None:
        """Read until a JSON record logs ``event``; with None, until EOF."""
        while True:
            chunk = await self.stream.receive_some()
            if not chunk:
                assert event is None, f"tracker exited before {event}: {self.lines}"
                if self._partial:
                    self.lines.append(self._partial.decode(errors="replace"))
                return
            *complete, self._partial = (self._partial + chunk).split(b"\n")
            new = [line.decode(errors="replace") for line in complete]
            self.lines += new
            if event is not None and any(r["event"] == event for r in log_events(new)):
                return


def log_events(lines: list[str]) -> list[dict[str, Any]]:
    """The JSON log records among ``lines``."""
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def simulated_config() -> Config:
    """The defaults, but with the scripted cloud (no sockets, autojump-safe)."""
    return parse_config('[cloud]\nservice = "simulated"\n')


def write_config(tmp_path: Path, name: str, text: str) -> Path:
    """Write a configuration file and return its path."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


class TestCommand:
    async def test_sigint_stops_in_order(self, tmp_path: Path) -> None:
        """SIGINT after the cloud connected exits 0 once every module acknowledged."""
        config = write_config(
            tmp_path,
            "tracker.toml",
            '[cloud]\nservice = "simulated"\n'
            "[modem]\nattach_delay = 0.2\n[cloud.simulated]\nconnect_delay = 0.2\n",
        )
        command = [*TRACKER, "run", "--log-format", "json", "--config", str(config)]

        with trio.fail_after(REAL_LIMIT):
            async with trio.open_nursery() as nursery:
                # run_process kills the child if the test fails or times out.
                process: trio.Process = await nursery.start(
                    functools.partial(
                        trio.run_process,
                        command,
                        cwd=tmp_path,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                        env={**os.environ, "PYTHONUNBUFFERED": "1"},
                        check=False,
                    )
                )
                assert process.stdout is not None
                output = LineReader(process.stdout)
                async with process.stdout:
                    await output.read_until("cloud_connected")
                    process.send_signal(signal.SIGINT)
                    await output.read_until(None)
                code = await process.wait()

        lines = output.lines
        events = log_events(lines)
        names = [record["event"] for record in events]
        assert code == 0, lines
        assert "stop_requested" in names
        assert names[-1] == "service_stopped"
        acks = [r for r in events if r["event"] == "shutdown_acknowledged"]
        assert sorted(r["by"] for r in acks) == [
            "APP_EVT_SHUTDOWN_READY",
            "CLOUD_EVT_SHUTDOWN_READY",
            "DATA_EVT_SHUTDOWN_READY",
            "LOCATION_MODULE_EVT_SHUTDOWN_READY",
            "MODEM_EVT_SHUTDOWN_READY",
            "SENSOR_EVT_SHUTDOWN_READY",
            "UI_EVT_SHUTDOWN_READY",
        ]
        assert [r["waiting"] for r in acks] == [6, 5, 4, 3, 2, 1, 0]
        assert "shutdown_unacknowledged" not in names

    async def test_retries_out_of_range_is_a_config_error(self, tmp_path: Path) -> None:
        """connect_retries = 14 exits 2 naming the key, the value and the file."""
        config = write_config(tmp_path, "bad.toml", "[cloud]\nconnect_retries = 14\n")

        with trio.fail_after(REAL_LIMIT):
            result = await trio.run_process(
                [*TRACKER, "run", "--config", str(config)],
                cwd=tmp_path,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )

        stderr = result.stderr.decode()
        assert result.returncode == ExitCode.CONFIG == 2
        assert "cloud.connect_retries" in stderr
        assert "14" in stderr
        assert str(config) in stderr
        assert result.stdout == b""

    async def test_aws_without_broker_is_a_config_error(self, tmp_path: Path) -> None:
        """cloud.service = "aws" without a broker exits 2 naming the missing key."""
        config = write_config(tmp_path, "aws.toml", '[cloud]\nservice = "aws"\n')

        with trio.fail_after(REAL_LIMIT):
            result = await trio.run_process(
                [*TRACKER, "run", "--config", str(config)],
                cwd=tmp_path,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )

        stderr = result.stderr.decode()
        assert result.returncode == 2
        assert "cloud.aws.broker_host" in stderr
        assert str(config) in stderr


class TestPersistentState:
    async def test_reboots_are_recorded_in_the_state_database(
        self, autojump_clock: trio.testing.MockClock, tmp_path: Path
    ) -> None:
        """Each reboot's reason and cause outlive the service process."""
        config = parse_config(
            '[cloud]\nconnect_retries = 0\nbackoff = "v2.9.0"\n'
            f'[state]\ndirectory = "{tmp_path / "state"}"\n'
        )
        service = Service(config, max_reboots=0, backend_factory=refusing_cloud)

        with trio.fail_after(1000):
            code = await service.run()

        assert code == ExitCode.REBOOT_LIMIT
        records = StateStore(tmp_path / "state" / "state.db").reboots()
        assert [(r.reason, r.cause) for r in records] == [
            ("generic", "CLOUD_EVT_ERROR(-101)")
        ]

    async def test_unusable_state_database_exits_2(self, tmp_path: Path) -> None:
        """A state file that is not a database stops the service before start."""
        state = tmp_path / "state"
        state.mkdir()
        (state / "state.db").write_bytes(b"garbage" * 1000)
        config = write_config(tmp_path, "t.toml", f'[state]\ndirectory = "{state}"\n')

        with trio.fail_after(REAL_LIMIT):
            result = await trio.run_process(
                [*TRACKER, "run", "--config", str(config)],
                cwd=tmp_path,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )

        assert result.returncode == ExitCode.CONFIG
        assert str(state / "state.db") in result.stderr.decode()


class TestConfigPersistence:
    async def test_cloud_config_survives_a_restart_of_the_service(
        self, autojump_clock: trio.testing.MockClock, tmp_path: Path
    ) -> None:
        """A configuration applied in one run is the next run's boot config."""
        config = parse_config(
            '[cloud]\nservice = "simulated"\n'
            f'[state]\ndirectory = "{tmp_path / "state"}"\n'
        )
        first = Service(config)
        with trio.fail_after(100):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(first.run)
                await first.booted.wait()
                await trio.sleep(10)
                assert first.device is not None
                backend = first.device.backend
                assert isinstance(backend, ScriptedBackend)
                backend.receive(b'{"cfg":{"act":false,"mvres":60}}')
                await trio.sleep(1)
                first.request_stop()

        second = Service(config)
        with trio.fail_after(100):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(second.run)
                await second.booted.wait()
                await trio.sleep(1)
                device = second.device
                second.request_stop()

        assert device is not None
        assert device.data.config.active_mode is False
        assert device.data.config.movement_resolution == 60
        assert device.app.sub_state == "SUB_STATE_PASSIVE_MODE"
