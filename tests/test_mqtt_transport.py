"""Integration tests of backends.mqtt_transport against a real Mosquitto.

No autojump clock here: real sockets (STYLE P10).  Every test is bounded by
``trio.fail_after`` in real time.  CONNACK refusals and a silent peer are
played by small Trio servers, since Mosquitto cannot be told to misbehave.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import trio
from structlog.testing import capture_logs

from backends.errors import (
    BackendBroken,
    BackendClosed,
    BackendConnectError,
    BackendRefused,
    BackendTimeout,
)
from backends.mqtt_transport import (
    INCOMING_BUFFER,
    MqttDisconnected,
    MqttEvent,
    MqttIncoming,
    MqttMessage,
    MqttPingResp,
    MqttPubAck,
    MqttSession,
    MqttSettings,
    open_mqtt_session,
)
from tests.mosquitto import (
    MosquittoBroker,
    Pki,
    client_settings,
    free_loopback_port,
)

if TYPE_CHECKING:
    from collections.abc import Callable

LIMIT = 10.0
"""Real-time bound of each test, in seconds."""

CLIENT_ID = "nrf-352656100000001"


def settings_for(
    broker: MosquittoBroker, client_id: str = CLIENT_ID, **overrides: Any
) -> MqttSettings:
    """Settings with a valid client certificate for ``client_id``."""
    overrides.setdefault("connect_timeout", 5.0)
    return client_settings(broker, client_id, **overrides)


async def receive_until(
    incoming: MqttIncoming, wanted: int, *, limit: float = 5.0
) -> list[MqttEvent]:
    """Receive events (PINGRESPs ignored) until ``wanted`` have arrived."""
    events: list[MqttEvent] = []
    with trio.fail_after(limit):
        while len(events) < wanted:
            event = await incoming.receive()
            if not isinstance(event, MqttPingResp):
                events.append(event)
    return events


async def wait_until(condition: Callable[[], bool], *, limit: float = 3.0) -> None:
    """Poll ``condition`` (an external process's state) until it holds."""
    with trio.fail_after(limit):
        while True:
            if condition():
                return
            await trio.sleep(0.02)


def broker_logged(broker: MosquittoBroker, text: str) -> Callable[[], bool]:
    return lambda: text in broker.log_text()


class TestMutualTls:
    async def test_connects_with_client_certificate(
        self, mosquitto_broker: MosquittoBroker
    ) -> None:
        """A client certificate from the broker's CA gives a session."""
        settings = settings_for(mosquitto_broker)

        with trio.fail_after(LIMIT), capture_logs() as logs:
            async with open_mqtt_session(settings) as session:
                assert isinstance(session, MqttSession)
                assert not session.broken

        connected = [e for e in logs if e["event"] == "mqtt_connected"]
        assert connected[0]["tls"] in ("TLSv1.2", "TLSv1.3")
        assert connected[0]["actor"] == "mqtt"
        broker_log = mosquitto_broker.log_text()
        assert f"as {CLIENT_ID} (p2, c1, k1200, u'{CLIENT_ID}')" in broker_log
        assert f"Received DISCONNECT from {CLIENT_ID}" in broker_log

    async def test_foreign_ca_certificate_is_refused_once(
        self, mosquitto_broker: MosquittoBroker, tmp_path: Path
    ) -> None:
        """A certificate from another CA is a permanent TLS refusal, once."""
        other_dir = tmp_path / "other-pki"
        other_dir.mkdir()
        foreign = Pki(other_dir).client_files(CLIENT_ID)
        settings = settings_for(
            mosquitto_broker,
            cert_file=foreign.cert_file,
            key_file=foreign.key_file,
            connect_timeout=3.0,
        )
        attempts_before = mosquitto_broker.connection_attempts()

        start = time.monotonic()
        with trio.fail_after(LIMIT), capture_logs() as logs:
            with pytest.raises(BackendRefused) as exc_info:
                async with open_mqtt_session(settings):
                    pytest.fail("connected with a foreign certificate")
            elapsed = time.monotonic() - start
            await trio.sleep(1.0)

        assert exc_info.value.permanent
        assert "TLS" in str(exc_info.value)
        assert elapsed < settings.connect_timeout
        assert mosquitto_broker.connection_attempts() == attempts_before + 1
        refused = [e for e in logs if e["event"] == "mqtt_connect_refused"]
        assert len(refused) == 1
        assert refused[0]["permanent"] is True
        assert "TLS" in refused[0]["reason"]

    async def test_missing_client_certificate_is_refused(
        self, mosquitto_broker: MosquittoBroker
    ) -> None:
        """Without a client certificate the broker refuses the TLS session."""
        settings = settings_for(
            mosquitto_broker, cert_file=None, key_file=None, connect_timeout=3.0
        )

        start = time.monotonic()
        with trio.fail_after(LIMIT):
            with pytest.raises(BackendRefused) as exc_info:
                async with open_mqtt_session(settings):
                    pytest.fail("connected without a certificate")

        assert exc_info.value.permanent
        assert "TLS" in str(exc_info.value)
        assert time.monotonic() - start < settings.connect_timeout

    async def test_untrusted_broker_certificate_is_refused(
        self, mosquitto_broker: MosquittoBroker, tmp_path: Path
    ) -> None:
        """A broker whose certificate our CA did not sign is refused."""
        other_dir = tmp_path / "other-pki"
        other_dir.mkdir()
        settings = settings_for(mosquitto_broker, ca_file=Pki(other_dir).ca_file)

        with trio.fail_after(LIMIT):
            with pytest.raises(BackendRefused) as exc_info:
                async with open_mqtt_session(settings):
                    pytest.fail("trusted a foreign broker")

        assert exc_info.value.permanent
        assert "not trusted" in str(exc_info.value)
        assert isinstance(exc_info.value.__cause__, ssl.SSLCertVerificationError)

    async def test_unreadable_ca_file_fails_before_connecting(
        self, tmp_path: Path
    ) -> None:
        """A missing CA file is a connect error, not a crash."""
        settings = MqttSettings(
            host="127.0.0.1",
            port=free_loopback_port(),
            client_id=CLIENT_ID,
            ca_file=tmp_path / "missing.pem",
        )

        with trio.fail_after(LIMIT):
            with pytest.raises(BackendConnectError, match="TLS credentials"):
                async with open_mqtt_session(settings):
                    pytest.fail("connected without a CA")

        assert isinstance(settings.ca_file, Path)


class TestConnackRefusal:
    @pytest.mark.parametrize(
        ("code", "reason", "permanent"),
        [
            (2, "identifier rejected", True),
            (3, "server unavailable", False),
            (4, "bad user name or password", True),
            (5, "not authorised", True),
        ],
    )
    async def test_refusal_is_named_and_classified(
        self,
        nursery: trio.Nursery,
        mqtt_pki: Pki,
        code: int,
        reason: str,
        permanent: bool,
    ) -> None:
        """A refused CONNACK is named; codes 1, 2, 4, 5 are permanent."""
        port = await start_fake_broker(nursery, mqtt_pki, connack_code=code)
        settings = MqttSettings(
            host="127.0.0.1", port=port, client_id=CLIENT_ID, ca_file=mqtt_pki.ca_file
        )

        with trio.fail_after(LIMIT), capture_logs() as logs:
            with pytest.raises(BackendRefused) as exc_info:
                async with open_mqtt_session(settings):
                    pytest.fail("a refused CONNACK gave a session")

        assert exc_info.value.permanent is permanent
        assert f"CONNACK {code}: {reason}" in str(exc_info.value)
        refused = [e for e in logs if e["event"] == "mqtt_connect_refused"]
        assert refused[0]["reason"] == str(exc_info.value)


class TestPublishSubscribe:
    async def test_qos1_round_trip_with_puback(
        self, mosquitto_broker: MosquittoBroker
    ) -> None:
        """A QoS 1 message to our own subscription returns, with a PUBACK."""
        topic = f"{CLIENT_ID}/shadow/update"
        settings = settings_for(mosquitto_broker)

        with trio.fail_after(LIMIT):
            async with open_mqtt_session(settings) as session:
                granted = await session.subscribe([(topic, 1)])
                message_id = await session.publish(topic, b'{"state":{}}', qos=1)
                events = await receive_until(session.incoming, 2)

        assert granted == (1,)
        assert message_id > 0
        assert MqttPubAck(message_id) in events
        assert (
            MqttMessage(topic=topic, payload=b'{"state":{}}', qos=1, retain=False)
            in events
        )

    async def test_qos0_round_trip(self, mosquitto_broker: MosquittoBroker) -> None:
        """A QoS 0 message comes back as QoS 0, with no message id."""
        topic = f"{CLIENT_ID}/messages"
        settings = settings_for(mosquitto_broker)

        with trio.fail_after(LIMIT):
            async with open_mqtt_session(settings) as session:
                await session.subscribe([(topic, 0)])
                message_id = await session.publish(topic, b"\x00\x01binary", qos=0)
                events = await receive_until(session.incoming, 1)

        assert message_id == 0
        assert events == [
            MqttMessage(topic=topic, payload=b"\x00\x01binary", qos=0, retain=False)
        ]

    async def test_puback_waits_until_the_message_is_received(
        self, mosquitto_broker: MosquittoBroker
    ) -> None:
        """The broker gets our PUBACK only after Trio took the message."""
        topic = f"{CLIENT_ID}/cfg"
        settings = settings_for(mosquitto_broker)
        puback = f"Received PUBACK from {CLIENT_ID}"

        with trio.fail_after(LIMIT):
            async with open_mqtt_session(settings) as session:
                await session.subscribe([(topic, 1)])
                await session.publish(topic, b"cfg", qos=1)
                await wait_until(
                    broker_logged(mosquitto_broker, f"Sending PUBLISH to {CLIENT_ID}")
                )
                await trio.sleep(0.3)
                acked_before_receive = puback in mosquitto_broker.log_text()
                events = await receive_until(session.incoming, 2)

        broker_log = mosquitto_broker.log_text()
        assert not acked_before_receive
        assert any(isinstance(e, MqttMessage) for e in events)
        # Taken just before leaving: the PUBACK still beats our DISCONNECT.
        assert puback in broker_log
        assert broker_log.index(puback) < broker_log.index("Received DISCONNECT")

    async def test_message_never_received_is_never_acked(
        self, mosquitto_broker: MosquittoBroker
    ) -> None:
        """A QoS 1 message still in the channel at exit gets no PUBACK."""
        topic = f"{CLIENT_ID}/cfg"
        settings = settings_for(mosquitto_broker)

        with trio.fail_after(LIMIT), capture_logs() as logs:
            async with open_mqtt_session(settings) as session:
                await session.subscribe([(topic, 1)])
                await session.publish(topic, b"cfg", qos=1)
                await wait_until(
                    broker_logged(mosquitto_broker, f"Sending PUBLISH to {CLIENT_ID}")
                )
                await trio.sleep(0.1)

        assert f"Received PUBACK from {CLIENT_ID}" not in mosquitto_broker.log_text()
        assert not asyncio.all_tasks(session._loop)
        assert not [e for e in logs if e["event"] == "mqtt_asyncio_error"]

    async def test_many_messages_keep_their_order(
        self, mosquitto_broker: MosquittoBroker
    ) -> None:
        """More messages than the channel holds all arrive, in order."""
        topic = f"{CLIENT_ID}/burst"
        count = 3 * INCOMING_BUFFER
        settings = settings_for(mosquitto_broker)

        with trio.fail_after(LIMIT):
            async with open_mqtt_session(settings) as session:
                await session.subscribe([(topic, 1)])
                for i in range(count):
                    await session.publish(topic, str(i).encode(), qos=1)
                payloads = []
                while len(payloads) < count:
                    event = await session.incoming.receive()
                    if isinstance(event, MqttMessage):
                        payloads.append(event.payload)

        assert payloads == [str(i).encode() for i in range(count)]

    async def test_pubacks_beyond_capacity_are_dropped_and_counted(
        self, mosquitto_broker: MosquittoBroker
    ) -> None:
        """Unread PUBACKs fill the channel; the rest are dropped, counted."""
        count = 2 * INCOMING_BUFFER
        settings = settings_for(mosquitto_broker)

        with trio.fail_after(LIMIT):
            async with open_mqtt_session(settings) as session:
                for i in range(count):
                    await session.publish(f"{CLIENT_ID}/unheard", b"%d" % i, qos=1)
                buffered = session.incoming.statistics
                await wait_until(
                    lambda: buffered().current_buffer_used + session.dropped_events
                    == count
                )
                events = [
                    session.incoming.receive_nowait() for _ in range(INCOMING_BUFFER)
                ]

        assert session.dropped_events == count - INCOMING_BUFFER
        assert [e.message_id for e in events if isinstance(e, MqttPubAck)] == list(
            range(1, INCOMING_BUFFER + 1)
        )

    async def test_keepalive_pings_are_reported(
        self, mosquitto_broker: MosquittoBroker
    ) -> None:
        """With a 1 s keepalive the broker's PINGRESP shows up as an event."""
        settings = settings_for(mosquitto_broker, keepalive=1)

        with trio.fail_after(LIMIT):
            async with open_mqtt_session(settings) as session:
                event = await session.incoming.receive()

        assert event == MqttPingResp()

    async def test_closed_session_refuses_publish(
        self, mosquitto_broker: MosquittoBroker
    ) -> None:
        """After the context is left, publish raises BackendClosed."""
        settings = settings_for(mosquitto_broker)

        with trio.fail_after(LIMIT):
            async with open_mqtt_session(settings) as session:
                pass
            with pytest.raises(BackendClosed):
                await session.publish("t", b"", qos=0)

        assert not asyncio.all_tasks(session._loop)

    async def test_body_exception_is_not_wrapped(
        self, mosquitto_broker: MosquittoBroker
    ) -> None:
        """An exception from the body comes out bare, not in a group."""
        settings = settings_for(mosquitto_broker)

        with trio.fail_after(LIMIT):
            with pytest.raises(KeyError, match="boom"):
                async with open_mqtt_session(settings):
                    raise KeyError("boom")

        assert f"Received DISCONNECT from {CLIENT_ID}" in mosquitto_broker.log_text()

    async def test_cancelled_body_still_disconnects(
        self, mosquitto_broker: MosquittoBroker
    ) -> None:
        """Cancelling the body sends DISCONNECT under the shielded grace."""
        settings = settings_for(mosquitto_broker)

        with trio.fail_after(LIMIT):
            with trio.move_on_after(0.2) as body_scope:
                async with open_mqtt_session(settings):
                    await trio.sleep_forever()

        assert body_scope.cancelled_caught
        assert f"Received DISCONNECT from {CLIENT_ID}" in mosquitto_broker.log_text()


class TestConnectionLoss:
    async def test_killed_broker_breaks_the_session_and_a_restart_serves(
        self, mosquitto_broker: MosquittoBroker
    ) -> None:
        """Killed: Disconnected, then BackendBroken; restarted: new session."""
        topic = f"{CLIENT_ID}/data"
        settings = settings_for(mosquitto_broker)

        with trio.fail_after(LIMIT):
            async with open_mqtt_session(settings) as session:
                await session.subscribe([(topic, 1)])
                await session.publish(topic, b"before", qos=1)
                await receive_until(session.incoming, 2)
                mosquitto_broker.kill()
                events = [event async for event in session.incoming]
                with pytest.raises(BackendBroken):
                    await session.publish(topic, b"after", qos=1)
                attempts = mosquitto_broker.connection_attempts()
                await mosquitto_broker.restart()
                await trio.sleep(1.0)
                attempts_while_broken = (
                    mosquitto_broker.connection_attempts() - attempts
                )
            async with open_mqtt_session(settings) as fresh:
                await fresh.subscribe([(topic, 1)])
                message_id = await fresh.publish(topic, b"again", qos=1)
                fresh_events = await receive_until(fresh.incoming, 2)

        assert len(events) == 1
        assert isinstance(events[0], MqttDisconnected)
        assert session.broken
        assert attempts_while_broken == 0
        assert MqttPubAck(message_id) in fresh_events

    async def test_taken_over_session_does_not_reconnect(
        self, mosquitto_broker: MosquittoBroker
    ) -> None:
        """A broker that drops us (client id taken over) gets no reconnect."""
        settings = settings_for(mosquitto_broker)

        with trio.fail_after(LIMIT), capture_logs() as logs:
            async with open_mqtt_session(settings) as session:
                # gmqtt would otherwise wait 6 s before reconnecting.
                session._client.reconnect_delay = 0
                async with open_mqtt_session(settings):
                    events = [event async for event in session.incoming]
                    await trio.sleep(1.0)
                    attempts = mosquitto_broker.connection_attempts()

        assert events == [MqttDisconnected("connection closed by the broker")]
        assert attempts == 2
        assert "mqtt_reconnect_suppressed" in [e["event"] for e in logs]

    async def test_nothing_listening_fails_fast(self, mqtt_pki: Pki) -> None:
        """Connecting to a closed port gives a BackendConnectError at once."""
        settings = MqttSettings(
            host="127.0.0.1",
            port=free_loopback_port(),
            client_id=CLIENT_ID,
            ca_file=mqtt_pki.ca_file,
            connect_timeout=5.0,
        )

        start = time.monotonic()
        with trio.fail_after(LIMIT):
            with pytest.raises(BackendConnectError) as exc_info:
                async with open_mqtt_session(settings):
                    pytest.fail("connected to nothing")

        assert not isinstance(exc_info.value, BackendTimeout | BackendRefused)
        assert isinstance(exc_info.value.__cause__, ConnectionRefusedError)
        assert time.monotonic() - start < 1.0

    async def test_silent_peer_times_out(
        self, nursery: trio.Nursery, mqtt_pki: Pki
    ) -> None:
        """A peer that accepts TCP and never answers gives BackendTimeout."""
        listeners = await nursery.start(
            partial(trio.serve_tcp, _swallow, 0, host="127.0.0.1")
        )
        settings = MqttSettings(
            host="127.0.0.1",
            port=listeners[0].socket.getsockname()[1],
            client_id=CLIENT_ID,
            ca_file=mqtt_pki.ca_file,
            connect_timeout=1.0,
        )

        start = time.monotonic()
        with trio.fail_after(LIMIT), capture_logs() as logs:
            with pytest.raises(BackendTimeout):
                async with open_mqtt_session(settings):
                    pytest.fail("connected to a silent peer")
        elapsed = time.monotonic() - start

        assert 1.0 <= elapsed < 2.5
        assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
            "mqtt_connect_timeout"
        ]


# ---------------------------------------------------------------------------
# Fake peers


async def _swallow(stream: trio.SocketStream) -> None:
    async with stream:
        while await stream.receive_some():
            pass


async def start_fake_broker(
    nursery: trio.Nursery, pki: Pki, *, connack_code: int
) -> int:
    """Serve TLS on a loopback port; answer every CONNECT with a CONNACK code.

    Like Mosquitto, it closes the connection after a refusal.  Returns the
    port.
    """
    server = pki.server_files()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(server.cert_file, server.key_file)

    async def refuse(stream: trio.SocketStream) -> None:
        tls = trio.SSLStream(stream, server_context, server_side=True)
        async with tls:
            await tls.receive_some()
            await tls.send_all(bytes([0x20, 0x02, 0x00, connack_code]))

    listeners = await nursery.start(
        partial(trio.serve_tcp, refuse, 0, host="127.0.0.1")
    )
    port: int = listeners[0].socket.getsockname()[1]
    return port
