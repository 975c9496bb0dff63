"""Tests for tracker.logs: the structlog set-up."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
import trio
import trio.testing

from tracker.logs import configure_logging, get_logger


class FakeTerminal(io.StringIO):
    """A text stream that claims to be a terminal."""

    def isatty(self) -> bool:
        return True


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    """Parse every line written to ``stream`` as one JSON object."""
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    # configure_logging changes process-wide state; leave none behind.
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


class TestConfigureLogging:
    async def test_json_line_carries_the_virtual_time(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Inside Trio a JSON line has actor, event, level and t, the virtual
        time."""
        stream = io.StringIO()
        configure_logging(stream=stream)
        log = get_logger("cloud")

        await trio.sleep(32)
        log.info("connect_attempt", attempt=2)

        [entry] = json_lines(stream)
        expected = {
            "actor": "cloud",
            "event": "connect_attempt",
            "level": "info",
            "attempt": 2,
            "t": 32.0,
        }
        assert expected.items() <= entry.items()
        assert trio.current_time() == entry["t"]

    async def test_t_is_rounded_to_milliseconds(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """t is the Trio clock rounded to milliseconds."""
        stream = io.StringIO()
        configure_logging(stream=stream)

        await trio.sleep(1.23456)
        get_logger("modem").info("lte_connected")

        [entry] = json_lines(stream)
        assert 1.235 == entry["t"]

    def test_no_t_outside_trio(self) -> None:
        """Outside a Trio run there is no t, but there is a UTC timestamp."""
        stream = io.StringIO()
        configure_logging(stream=stream)

        get_logger("main").info("starting")

        [entry] = json_lines(stream)
        assert "t" not in entry
        assert entry["timestamp"].endswith("Z")
        assert ("main", "starting") == (entry["actor"], entry["event"])

    def test_filters_below_the_level(self) -> None:
        """Lines below the configured level are dropped."""
        stream = io.StringIO()
        configure_logging(level="warning", stream=stream)
        log = get_logger("cloud")

        log.info("connected")
        log.warning("connect_failed")

        assert ["connect_failed"] == [e["event"] for e in json_lines(stream)]

    def test_merges_context_variables(self) -> None:
        """Values bound with structlog.contextvars appear in the line."""
        stream = io.StringIO()
        configure_logging(stream=stream)

        with structlog.contextvars.bound_contextvars(attempt=3):
            get_logger("cloud").info("connecting")

        [entry] = json_lines(stream)
        assert 3 == entry["attempt"]

    def test_formats_exceptions_in_json(self) -> None:
        """An exception logged in JSON comes out as a traceback string."""
        stream = io.StringIO()
        configure_logging(stream=stream)

        try:
            raise ValueError("payload too large")
        except ValueError:
            get_logger("data").exception("encode_failed")

        [entry] = json_lines(stream)
        assert "error" == entry["level"]
        assert "ValueError: payload too large" in entry["exception"]

    def test_auto_uses_the_console_on_a_terminal(self) -> None:
        """With format auto, a terminal gets console lines, not JSON."""
        stream = FakeTerminal()
        configure_logging(fmt="auto", stream=stream)

        get_logger("util").info("reboot_scheduled")

        assert "reboot_scheduled" in stream.getvalue()
        assert not stream.getvalue().startswith("{")

    def test_console_can_be_forced(self) -> None:
        """format console renders for people even when not on a terminal."""
        stream = io.StringIO()
        configure_logging(fmt="console", stream=stream)

        get_logger("util").info("reboot_scheduled")

        assert "reboot_scheduled" in stream.getvalue()
        assert "actor=util" in stream.getvalue()

    def test_json_can_be_forced_on_a_terminal(self) -> None:
        """format json writes JSON even to a terminal."""
        stream = FakeTerminal()
        configure_logging(fmt="json", stream=stream)

        get_logger("util").info("reboot_scheduled")

        assert "reboot_scheduled" == json_lines(stream)[0]["event"]

    @pytest.mark.parametrize(
        ("level", "fmt"), [("verbose", "auto"), ("info", "yaml")]
    )
    def test_rejects_unknown_names(self, level: str, fmt: str) -> None:
        """An unknown level or format is a ValueError."""
        stream = io.StringIO()

        with pytest.raises(ValueError, match="unknown log"):
            configure_logging(level=level, fmt=fmt, stream=stream)

        assert "" == stream.getvalue()


class TestGetLogger:
    def test_follows_a_later_configuration(self) -> None:
        """A logger made before configure_logging writes where it now says."""
        log = get_logger("app")
        stream = io.StringIO()

        configure_logging(stream=stream)
        log.info("started")

        assert "app" == json_lines(stream)[0]["actor"]

    def test_is_captured_by_capture_logs(self) -> None:
        """structlog.testing.capture_logs sees the bound actor."""
        log = get_logger("cloud")

        with structlog.testing.capture_logs() as captured:
            log.info("connected", broker="example.com")

        assert [
            {
                "actor": "cloud",
                "broker": "example.com",
                "event": "connected",
                "log_level": "info",
            }
        ] == captured
