"""The LwM2M client's DTLS against a peer we did not write: coap-server-openssl.

Design note
-----------
The cloud actor, the ``Lwm2mBackend`` built by ``lwm2m_backend`` from a
``[cloud]`` configuration (as the service builds them) and libcoap's
``coap-server-openssl`` (OpenSSL's DTLS 1.2 with a PSK) talk over real UDP
on loopback, so there is no autojump clock (STYLE P10): every wait is
bounded by ``trio.fail_after`` in real time, and times are read from
``trio.current_time()``, which then follows the real clock.

* A wrong key: OpenSSL drops the Finished it cannot decrypt and sends no
  alert, so the client can only tell by the handshake not completing in
  time (``[cloud.lwm2m] handshake_timeout``, 30 s by default; here half a
  second, so a refusal costs well under a second).  With the seed table
  the next attempt is 32 s away: the test asserts where the cloud actor
  scheduled it instead of waiting.  With an explicit table of 1, 2, 4 ...
  s it watches three real attempts.
* The right key: the handshake succeeds and the Register (``POST /rd``)
  reaches a server that has no ``/rd``: 4.04, a registration failure, not
  a DTLS one.  The shared helper starts the server with ``-d`` (a POST to
  an unknown path creates a resource and answers 2.01 with a
  Location-Path), so this file starts it without (``_PlainLibcoapServer``).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any, Final

import attrs
import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from actors.backoff import ReconnectBackoff
from actors.cloud import CloudActor
from actors.runtime import Bus
from backends.lwm2m import Lwm2mBackend, Lwm2mState, lwm2m_backend
from protocols.base import Event
from protocols.modem import ModemInitialized, ModemLteConnected
from tests.coap_peers import (
    START_TIMEOUT,
    TEST_IDENTITY,
    TEST_PSK,
    LibcoapServer,
    coap_ping,
    find_libcoap,
)
from tracker.config import CloudConfig, Lwm2mConfig

# The endpoint name, which the backend also sends as its PSK identity.
ENDPOINT: Final = TEST_IDENTITY.decode()
# A key of the right length that is not the server's.
WRONG_PSK: Final = b"not-the-key-0123"
# Handshake bound of the wrong-key sessions: OpenSSL answers in milliseconds
# on loopback, then stays silent; shorter than the 1 s first retry below.
REFUSAL_HANDSHAKE_TIMEOUT: Final = 0.5
# Handshake bound where the handshake is meant to succeed.
HANDSHAKE_TIMEOUT: Final = 5.0
# Real-time bound of each test's waits, in seconds.
LIMIT: Final = 15.0
# How late a timer, an event or a log line may be on a loaded machine.
SLACK: Final = 0.4
# An explicit backoff table of short delays, and a retry limit it covers.
SHORT_TABLE: Final = (1, 2, 4, 8, 16)
SHORT_RETRIES: Final = 3
# How often the server's log file is read while waiting for a line.
_LOG_POLL: Final = 0.05
# What coap-server-openssl logs at -v 7: the identity a handshake offered,
# a completed handshake, a request for a path it does not have, and the
# close_notify our session ends with.
GOT_IDENTITY: Final = f"got psk_identity: '{ENDPOINT}'"
SESSION_UP: Final = "DTLS: session connected"
RD_NOT_FOUND: Final = "request for unknown resource 'rd', return 4.04"
CLOSE_NOTIFY: Final = "SSL3 alert read:warning:close notify"


# --------------------------------------------------------------------------
# The peer


@attrs.define(eq=False)
class _PlainLibcoapServer(LibcoapServer):
    """coap-server-openssl with its built-in resources only (no ``-d``)."""

    def start(self) -> None:
        """Spawn the server and block until it answers a CoAP ping."""
        with self.log_file.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    "-A", "127.0.0.1",
                    "-p", str(self.port),
                    "-k", self.key.decode(),
                    "-v", "7",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while not coap_ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(
                    f"coap-server-openssl did not start:\n{self.log_text()}",
                    pytrace=False,
                )
            time.sleep(_LOG_POLL)


@pytest.fixture
def coap_server(tmp_path: Path) -> Iterator[LibcoapServer]:
    """A running coap-server-openssl (DTLS-PSK on ``dtls_port``)."""
    directory = tmp_path / "coap-server"
    directory.mkdir()
    server = _PlainLibcoapServer(directory, find_libcoap("coap-server-openssl"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def wait_for_log(server: LibcoapServer, text: str, count: int = 1) -> str:
    """Wait until the server's log holds ``text`` ``count`` times; return it.

    The server writes its log from its own process: a line about what
    happened after our last exchange with it may still be on its way.
    """
    with trio.fail_after(LIMIT):
        # The log is another process's file: nothing here can signal it.
        while (log_text := server.log_text()).count(text) < count:  # noqa: ASYNC110
            await trio.sleep(_LOG_POLL)
    return log_text


# --------------------------------------------------------------------------
# The device side


@attrs.define(eq=False)
class Device:
    """The cloud actor and its LwM2M backend on a bus; every event timed."""

    bus: Bus
    backend: Lwm2mBackend
    cloud: CloudActor
    seen: list[tuple[float, Event]] = attrs.field(factory=list)
    _changed: trio.Event = attrs.field(factory=trio.Event)

    def record(self, event: Event) -> None:
        """Bus tap: remember ``event`` with the time it was published."""
        self.seen.append((trio.current_time(), event))
        self._changed.set()
        self._changed = trio.Event()

    def names(self) -> list[str]:
        """The name of every event the cloud actor published, in order."""
        return [
            event.spec_name
            for _, event in self.seen
            if event.spec_name.startswith("CLOUD_EVT_")
        ]

    def times(self, spec_name: str) -> list[float]:
        """When each event named ``spec_name`` was published."""
        return [t for t, event in self.seen if event.spec_name == spec_name]

    async def wait_for(self, spec_name: str, count: int = 1) -> None:
        """Wait until ``spec_name`` was published ``count`` times."""
        with trio.fail_after(LIMIT):
            while self.names().count(spec_name) < count:
                await self._changed.wait()


async def start_device(nursery: trio.Nursery, config: CloudConfig) -> Device:
    """Build the backend and the cloud actor from ``config``; start them.

    The modem is not simulated: the test publishes its events.
    """
    backend = lwm2m_backend(config.lwm2m, endpoint=ENDPOINT)
    bus = Bus()
    cloud = CloudActor(
        bus,
        backend=backend,
        backoff=ReconnectBackoff(config.backoff_table, config.connect_retries),
    )
    device = Device(bus, backend, cloud)
    bus.taps.append(device.record)
    await nursery.start(backend.run)
    await nursery.start(cloud.run)
    return device


def cloud_config(
    server: LibcoapServer, psk: bytes, *, handshake_timeout: float, **cloud: Any
) -> CloudConfig:
    """``[cloud]`` for an LwM2M server at ``server``'s DTLS port."""
    lwm2m = Lwm2mConfig(
        server_uri=server.coaps_uri,
        psk=psk.hex(),
        handshake_timeout=handshake_timeout,
    )
    return CloudConfig(service="lwm2m", lwm2m=lwm2m, **cloud)


def logged(
    logs: list[MutableMapping[str, Any]], event: str
) -> list[MutableMapping[str, Any]]:
    """The captured log entries named ``event``."""
    return [entry for entry in logs if entry["event"] == event]


# --------------------------------------------------------------------------
# A wrong key


class TestWrongPsk:
    async def test_refused_handshake_schedules_the_first_retry_at_32_s(
        self, nursery: trio.Nursery, coap_server: LibcoapServer
    ) -> None:
        """A refused key ends the attempt; the retry waits the table's 32 s."""
        config = cloud_config(
            coap_server, WRONG_PSK, handshake_timeout=REFUSAL_HANDSHAKE_TIMEOUT
        )
        device = await start_device(nursery, config)

        with capture_logs() as logs:
            device.bus.publish(ModemInitialized())
            lte_up = trio.current_time()
            device.bus.publish(ModemLteConnected())
            await device.wait_for("CLOUD_EVT_DISCONNECTED")
            # Anything the failure still set off would be handled by now.
            await trio.testing.wait_all_tasks_blocked()
        snapshot = device.cloud.snapshot()

        (connecting,) = device.times("CLOUD_EVT_CONNECTING")
        (failed,) = device.times("CLOUD_EVT_DISCONNECTED")
        assert device.names() == ["CLOUD_EVT_CONNECTING", "CLOUD_EVT_DISCONNECTED"]
        # The failure comes from the handshake bound, not from elsewhere.
        assert (
            REFUSAL_HANDSHAKE_TIMEOUT
            <= failed - connecting
            < REFUSAL_HANDSHAKE_TIMEOUT + 2.0
        )
        # The backend names the DTLS handshake and the refused identity.
        (reported,) = logged(logs, "backend_disconnected")
        reason = reported["reason"]
        assert "DTLS handshake" in reason
        assert f"refused the PSK identity '{ENDPOINT}' or its key" in reason
        assert "registration" not in reason
        assert snapshot.extra["backend"]["last_failure"] == reason
        assert snapshot.extra["backend"]["state"] == "DISCONNECTED"
        # The cloud actor: still trying, first attempt made and counted.
        assert (snapshot.state, snapshot.sub_state) == (
            "STATE_LTE_CONNECTED",
            "SUB_STATE_CLOUD_DISCONNECTED",
        )
        assert snapshot.counters["connect_attempts"] == 1
        assert snapshot.extra["connect_retries"] == 1
        assert snapshot.extra["backoff_table"][:2] == [32, 64]
        assert snapshot.last_error is None
        assert [
            (e["attempt"], e["check_in"]) for e in logged(logs, "cloud_connect_attempt")
        ] == [(1, 32)]
        # The next attempt is the backoff's, 32 s after the first, not the
        # 1 s retry that follows a drop of an established connection.
        next_attempt = snapshot.extra["next_attempt_at"]
        assert snapshot.timers["connect_check"] == next_attempt
        assert lte_up + 32 <= next_attempt <= connecting + 32
        assert "CLOUD_EVT_ERROR" not in device.names()
        # The server saw our identity and never completed a handshake.
        server_log = await wait_for_log(coap_server, GOT_IDENTITY)
        assert SESSION_UP not in server_log

    async def test_short_table_retries_after_1_s_then_2_s(
        self, nursery: trio.Nursery, coap_server: LibcoapServer
    ) -> None:
        """With a 1, 2, 4 s table, three refused handshakes, 1 s then 2 s apart."""
        config = cloud_config(
            coap_server,
            WRONG_PSK,
            backoff=SHORT_TABLE,
            connect_retries=SHORT_RETRIES,
            handshake_timeout=REFUSAL_HANDSHAKE_TIMEOUT,
        )
        device = await start_device(nursery, config)

        with capture_logs() as logs:
            device.bus.publish(ModemInitialized())
            device.bus.publish(ModemLteConnected())
            await device.wait_for("CLOUD_EVT_DISCONNECTED", 3)
            await trio.testing.wait_all_tasks_blocked()
        snapshot = device.cloud.snapshot()

        assert device.names() == [
            "CLOUD_EVT_CONNECTING",
            "CLOUD_EVT_DISCONNECTED",
            "CLOUD_EVT_CONNECTION_TIMEOUT",
            "CLOUD_EVT_CONNECTING",
            "CLOUD_EVT_DISCONNECTED",
            "CLOUD_EVT_CONNECTION_TIMEOUT",
            "CLOUD_EVT_CONNECTING",
            "CLOUD_EVT_DISCONNECTED",
        ]
        starts = device.times("CLOUD_EVT_CONNECTING")
        failures = device.times("CLOUD_EVT_DISCONNECTED")
        timeouts = device.times("CLOUD_EVT_CONNECTION_TIMEOUT")
        # Each attempt is checked after its table delay, and the next one
        # starts at once; the intervals on the real clock, roughly.
        for start, timeout, delay in zip(starts, timeouts, SHORT_TABLE, strict=False):
            assert delay - SLACK <= timeout - start <= delay + SLACK
        for timeout, next_start in zip(timeouts, starts[1:], strict=True):
            assert 0 <= next_start - timeout <= SLACK
        assert 1 - SLACK <= starts[1] - starts[0] <= 1 + SLACK
        assert 2 - SLACK <= starts[2] - starts[1] <= 2 + SLACK
        # Every attempt was a refused handshake that ended before the next.
        for start, failure in zip(starts, failures, strict=True):
            assert REFUSAL_HANDSHAKE_TIMEOUT <= failure - start
        reasons = [e["reason"] for e in logged(logs, "backend_disconnected")]
        assert len(reasons) == 3
        assert all("DTLS handshake" in r and "PSK identity" in r for r in reasons)
        assert logged(logs, "cloud_connect_refused") == []
        assert [
            (e["attempt"], e["check_in"]) for e in logged(logs, "cloud_connect_attempt")
        ] == [(1, 1), (2, 2), (3, 4)]
        assert len(logged(logs, "cloud_connect_timeout")) == 2
        # Three attempts made; the fourth is due 4 s after the third.
        assert snapshot.counters["connect_attempts"] == 3
        assert snapshot.extra["connect_retries"] == 3
        next_attempt = snapshot.extra["next_attempt_at"]
        assert starts[2] + 4 - SLACK <= next_attempt <= starts[2] + 4
        # Each attempt was a real handshake that reached the server.
        server_log = await wait_for_log(coap_server, GOT_IDENTITY, 3)
        assert server_log.count(GOT_IDENTITY) == 3
        assert SESSION_UP not in server_log


# --------------------------------------------------------------------------
# The right key


class TestRightPsk:
    async def test_handshake_succeeds_and_the_refused_register_is_reported(
        self, nursery: trio.Nursery, coap_server: LibcoapServer
    ) -> None:
        """The DTLS session comes up; the server's 4.04 to the Register is the
        registration failure, and the backoff takes over."""
        config = cloud_config(
            coap_server, TEST_PSK, handshake_timeout=HANDSHAKE_TIMEOUT
        )
        device = await start_device(nursery, config)

        with capture_logs() as logs:
            device.bus.publish(ModemInitialized())
            lte_up = trio.current_time()
            device.bus.publish(ModemLteConnected())
            await device.wait_for("CLOUD_EVT_DISCONNECTED")
            await trio.testing.wait_all_tasks_blocked()
        snapshot = device.cloud.snapshot()

        # Our side: the session started, the Register got a CoAP answer.
        (started,) = logged(logs, "coap_started")
        assert started["uri"] == coap_server.coaps_uri
        assert logged(logs, "coap_start_failed") == []
        (response,) = logged(logs, "coap_response")
        assert response["code"] == "4.04"
        assert response["request"].startswith("POST /rd ")
        (reported,) = logged(logs, "backend_disconnected")
        assert reported["reason"] == "registration failed: the server answered 4.04"
        assert snapshot.extra["backend"]["last_failure"] == reported["reason"]
        assert device.backend.state is Lwm2mState.DISCONNECTED
        # The cloud actor: a failed attempt like any other, never connected.
        assert device.names() == ["CLOUD_EVT_CONNECTING", "CLOUD_EVT_DISCONNECTED"]
        assert snapshot.sub_state == "SUB_STATE_CLOUD_DISCONNECTED"
        assert snapshot.extra["connect_retries"] == 1
        (connecting,) = device.times("CLOUD_EVT_CONNECTING")
        assert lte_up + 32 <= snapshot.extra["next_attempt_at"] <= connecting + 32
        # The server's side: our identity, a completed handshake, the
        # Register over it refused, then our close_notify.
        server_log = await wait_for_log(coap_server, CLOSE_NOTIFY)
        assert server_log.count(GOT_IDENTITY) == 1
        assert server_log.count(SESSION_UP) == 1
        assert server_log.count(RD_NOT_FOUND) == 1
        assert (
            server_log.index(GOT_IDENTITY)
            < server_log.index(SESSION_UP)
            < server_log.index(RD_NOT_FOUND)
            < server_log.index(CLOSE_NOTIFY)
        )
        assert f"Uri-Query:ep={ENDPOINT}" in server_log
