"""Hours of device life under the warp clock (tracker.warp).

The whole service, device and embedded local cloud, runs in this process on
the warp clock (pytest-trio runs a test on the clock a fixture gives).  A
client of the local broker, on the same clock, records every shadow update
the device publishes; a subprocess runs ``tracker run --warp --duration``
from the command line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trio.testing

from backends.mqtt_transport import MqttMessage, open_mqtt_session
from tracker.config import parse_config
from tracker.service import Service, run_until_signalled
from tracker.warp import warp_clock

ROOT = Path(__file__).resolve().parent.parent
IMEI = "352656100000010"
# The default configuration samples as the firmware does in active mode: once
# at the first connection to the cloud (LTE attaches 2 s after boot), and on
# a timer started at boot every active wait time (300 s).  The simulated
# GNSS finds a fix 5 to 40 s after a sample starts and the update goes out
# with it, so three hours hold the samples started at 2 s and at 300 k s
# for k = 1 .. 35, each sent well before the end.
HOURS = 3
ACTIVE_WAIT = 300
CONNECTED = 2.0
SAMPLES = 36
# The longest GNSS search of the simulated receiver, plus slack.
SEARCH = 41


@pytest.fixture
def warp() -> trio.testing.MockClock:
    """The clock of ``tracker run --warp``, with a short idle threshold."""
    return warp_clock(0.005)


def local_config(tmp_path: Path) -> str:
    return f"""
[cloud.local]
mqtt_port = 0
http_port = 0
lwm2m_port = 0
coap_port = 0
[state]
directory = "{tmp_path / "state"}"
"""


class TestWarpedRun:
    async def test_three_hours_follow_the_sampling_schedule(
        self, tmp_path: Path, warp: trio.testing.MockClock
    ) -> None:
        """36 data updates, 300 s apart on the clock and in their timestamps."""
        service = Service(parse_config(local_config(tmp_path)))
        topic = f"$aws/things/{IMEI}/shadow/update"
        updates: list[tuple[float, dict[str, object]]] = []

        async def record() -> None:
            await service.local_ready.wait()
            cloud = service.local_cloud
            assert cloud is not None
            settings = cloud.device_settings("warp-observer", keepalive=60)
            async with open_mqtt_session(settings) as session:
                await session.subscribe([(topic, 1)])
                async for event in session.incoming:
                    if isinstance(event, MqttMessage):
                        document = json.loads(event.payload)
                        updates.append((trio.current_time(), document))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(record)
            code = await run_until_signalled(service, duration=HOURS * 3600)
            nursery.cancel_scope.cancel()

        assert code == 0
        data = [
            (at, doc["state"]["reported"])  # type: ignore[index]
            for at, doc in updates
            if "bat" in doc["state"]["reported"]  # type: ignore[index]
        ]
        assert len(data) == SAMPLES
        # Each update leaves within a GNSS search after its sample started.
        for k, (at, _) in enumerate(data):
            started = CONNECTED if k == 0 else k * ACTIVE_WAIT
            assert started < at < started + SEARCH, (k, at)
        # The battery is read when a sample starts: its timestamps are the
        # schedule itself, in the device's (warped) wall clock, give or take
        # the few real milliseconds the request takes through the actors
        # (the warp clock also runs with real time).
        stamps = [reported["bat"]["ts"] for _, reported in data]
        first_step = stamps[1] - stamps[0]
        assert first_step == pytest.approx((ACTIVE_WAIT - CONNECTED) * 1000, abs=50)
        steps = [b - a for a, b in zip(stamps[1:], stamps[2:], strict=False)]
        assert steps == [pytest.approx(ACTIVE_WAIT * 1000, abs=10)] * (SAMPLES - 2)
        # The configuration report comes first, once.
        assert "cfg" in updates[0][1]["state"]["reported"]  # type: ignore[index]


class TestWarpCommand:
    def test_tracker_run_warp_stops_after_the_duration(self, tmp_path: Path) -> None:
        """Two device hours from the command line, then a clean stop."""
        default = (ROOT / "tracker.toml").read_text()
        config = tmp_path / "tracker.toml"
        for port in ("mqtt_port = 8883", "http_port = 8443", "lwm2m_port = 5684",
                     "coap_port = 5683"):  # fmt: skip
            assert port in default
            default = default.replace(port, port.split(" = ")[0] + " = 0")
        config.write_text(default)
        result = subprocess.run(
            [sys.executable, "-m", "tracker", "run", "--warp", "--warp-idle",
             "0.005", "--duration", "7200", "--log-format", "json"],
            cwd=tmp_path, capture_output=True, timeout=120, check=False,
        )  # fmt: skip
        lines = [json.loads(line) for line in result.stderr.splitlines()]
        events = [line["event"] for line in lines]
        assert result.returncode == 0, result.stderr[-2000:]
        assert events[0] == "time_warp"
        (reached,) = [line for line in lines if line["event"] == "duration_reached"]
        assert reached["t"] == pytest.approx(7200, abs=0.1)
        holds = [line for line in lines if line["event"] == "shadow_holds"]
        with_data = [line for line in holds if "bat" in line["reported"]]
        # The samples started at 2 s and at 300 k s for k = 1 .. 23.
        assert len(with_data) == 24
        assert events.index("service_stopped") > events.index("duration_reached")
