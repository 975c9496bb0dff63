"""Integration tests of backends.aws against a real Mosquitto.

No autojump clock: real sockets.  Every test is bounded by
``trio.fail_after`` in real time.  A second, plain MQTT session plays the
cloud (Mosquitto's ACLs are off, so it may read and write the device's
topics).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import attrs
import pytest
import trio
from structlog.testing import capture_logs

from backends.aws import AwsIotBackend, AwsTopics
from backends.errors import BackendBusy, BackendNotConnected
from backends.mqtt_transport import (
    MqttMessage,
    MqttSession,
    MqttSettings,
    open_mqtt_session,
)
from protocols import wrapper as wrap
from protocols.base import Payload
from protocols.json_codec import Flavour, JsonCodec
from tests.mosquitto import MosquittoBroker, Pki, client_settings

LIMIT = 10.0
"""Real-time bound of each test, in seconds."""

WAIT = 5.0
"""Real-time bound of one wait for an event."""

DEVICE_ID = "352656100000001"
CLOUD_ID = "the-cloud"

E = TypeVar("E", bound=wrap.WrapperEvent)


def settings_for(
    broker: MosquittoBroker, client_id: str = DEVICE_ID, **overrides: Any
) -> MqttSettings:
    overrides.setdefault("connect_timeout", 3.0)
    return client_settings(broker, client_id, **overrides)


@attrs.define(eq=False)
class Events:
    """What the backend emitted, in order, with a way to wait for one."""

    seen: list[wrap.WrapperEvent] = attrs.field(factory=list)
    _send: trio.MemorySendChannel[wrap.WrapperEvent] = attrs.field(init=False)
    _recv: trio.MemoryReceiveChannel[wrap.WrapperEvent] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._send, self._recv = trio.open_memory_channel[wrap.WrapperEvent](
            math.inf
        )

    def emit(self, event: wrap.WrapperEvent) -> None:
        self.seen.append(event)
        self._send.send_nowait(event)

    async def wait_for(
        self, event_type: type[E], *, limit: float = WAIT
    ) -> E:
        """The next event of ``event_type``, skipping (but keeping) others."""
        with trio.fail_after(limit):
            while True:
                event = await self._recv.receive()
                if isinstance(event, event_type):
                    return event

    def of(self, event_type: type[wrap.WrapperEvent]) -> list[wrap.WrapperEvent]:
        return [e for e in self.seen if isinstance(e, event_type)]


@asynccontextmanager
async def running_backend(
    settings: MqttSettings, **kwargs: Any
) -> AsyncIterator[tuple[AwsIotBackend, Events]]:
    backend = AwsIotBackend(settings.client_id, settings, **kwargs)
    events = Events()
    backend.init(events.emit)
    async with trio.open_nursery() as nursery:
        await nursery.start(backend.run)
        yield backend, events
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def cloud_session(broker: MosquittoBroker) -> AsyncIterator[MqttSession]:
    """The cloud's side, subscribed to everything the device publishes."""
    async with open_mqtt_session(settings_for(broker, CLOUD_ID)) as cloud:
        await cloud.subscribe(
            [(f"$aws/things/{DEVICE_ID}/shadow/#", 1), (f"{DEVICE_ID}/#", 1)]
        )
        yield cloud


async def cloud_receives(cloud: MqttSession, topic: str) -> MqttMessage:
    """The next message the cloud sees on ``topic``."""
    with trio.fail_after(WAIT):
        while True:
            event = await cloud.incoming.receive()
            if isinstance(event, MqttMessage) and event.topic == topic:
                return event


async def connected(backend: AwsIotBackend, events: Events) -> None:
    await backend.connect()
    await events.wait_for(wrap.WrapperConnected)


TOPICS = AwsTopics.build(DEVICE_ID)


def test_topics_and_codec(tmp_path: Path) -> None:
    settings = MqttSettings(host="h", port=1, client_id=DEVICE_ID, ca_file=tmp_path)
    backend = AwsIotBackend(DEVICE_ID, settings)
    assert isinstance(backend.codec, JsonCodec)
    assert backend.codec.flavour is Flavour.AWS
    assert backend.cloud_location_response_wait() is False
    assert TOPICS.cloud_location == f"{DEVICE_ID}/ground-fix"
    assert TOPICS.application_subscriptions() == [
        (f"$aws/things/{DEVICE_ID}/shadow/get/accepted/desired/cfg", 0),
        (f"{DEVICE_ID}/agnss", 0),
        (f"{DEVICE_ID}/pgps", 0),
    ]
    assert TOPICS.library_subscriptions() == [
        (f"$aws/things/{DEVICE_ID}/shadow/get/rejected", 1),
        (f"$aws/things/{DEVICE_ID}/shadow/update/delta", 1),
    ]
    legacy = AwsIotBackend(DEVICE_ID, settings, legacy_topics=True).topics
    assert legacy.cloud_location == f"{DEVICE_ID}/ncellmeas"
    assert legacy.agnss_request == f"{DEVICE_ID}/agps/get"
    assert legacy.agnss == f"{DEVICE_ID}/agps"
    snapshot = backend.snapshot()
    assert snapshot["connected"] is False
    assert snapshot["client_id"] == DEVICE_ID
    assert snapshot["broker"] == "h:1"
    with pytest.raises(ValueError):
        AwsIotBackend("other", settings)


async def test_connect_then_shadow_get(mosquitto_broker: MosquittoBroker) -> None:
    """CONNECTING, CONNECTED, and the cloud sees the empty shadow GET."""
    with trio.fail_after(LIMIT):
        async with cloud_session(mosquitto_broker) as cloud:
            async with running_backend(settings_for(mosquitto_broker)) as (
                backend,
                events,
            ):
                await backend.connect()
                await events.wait_for(wrap.WrapperConnected)
                assert isinstance(events.seen[0], wrap.WrapperConnecting)
                assert isinstance(events.seen[1], wrap.WrapperConnected)
                with pytest.raises(BackendBusy):
                    await backend.connect()
                get = await cloud_receives(cloud, TOPICS.shadow_get)
                assert get.payload == b""
                assert get.qos == 0
                snapshot = backend.snapshot()
                assert snapshot["connected"] is True
                assert snapshot["broker"] == f"127.0.0.1:{mosquitto_broker.port}"
                await backend.disconnect()


async def test_delta_and_agnss_reach_the_backend(
    mosquitto_broker: MosquittoBroker,
) -> None:
    delta = b'{"version":3,"state":{"cfg":{"act":true}}}'
    agnss = bytes(range(256)) * 4
    pgps = b'{"path":"public/x.bin","host":"example.com"}'
    with trio.fail_after(LIMIT):
        async with cloud_session(mosquitto_broker) as cloud:
            async with running_backend(settings_for(mosquitto_broker)) as (
                backend,
                events,
            ):
                await connected(backend, events)
                await cloud.publish(TOPICS.shadow_update_delta, delta, 1)
                received = await events.wait_for(wrap.WrapperDataReceived)
                assert received == wrap.WrapperDataReceived(
                    delta, TOPICS.shadow_update_delta
                )
                await cloud.publish(TOPICS.agnss, agnss, 0)
                got = await events.wait_for(wrap.WrapperAgnssDataReceived)
                assert got.data == agnss
                await cloud.publish(TOPICS.pgps, pgps, 0)
                got_pgps = await events.wait_for(wrap.WrapperPgpsDataReceived)
                assert got_pgps.data == pgps
                await backend.disconnect()


async def test_batch_with_ack_and_data_without(
    mosquitto_broker: MosquittoBroker,
) -> None:
    with trio.fail_after(LIMIT):
        async with cloud_session(mosquitto_broker) as cloud:
            async with running_backend(settings_for(mosquitto_broker)) as (
                backend,
                events,
            ):
                await connected(backend, events)
                await cloud_receives(cloud, TOPICS.shadow_get)

                await backend.batch_send(Payload(b'{"bat":[]}'), True, 15000)
                batch = await cloud_receives(cloud, f"{DEVICE_ID}/batch")
                assert batch.payload == b'{"bat":[]}'
                assert batch.qos == 1
                ack = await events.wait_for(wrap.WrapperDataAck)
                assert ack == wrap.WrapperDataAck(15000)

                data = b'{"state":{"reported":{"bat":{"v":90,"ts":1}}}}'
                await backend.data_send(Payload(data), False, 15001)
                update = await cloud_receives(cloud, TOPICS.shadow_update)
                assert update.payload == data
                assert update.qos == 0

                await backend.ui_send(Payload(b"{}"), True, 15002)
                assert (await cloud_receives(cloud, f"{DEVICE_ID}/messages")).qos == 1
                assert await events.wait_for(wrap.WrapperDataAck) == (
                    wrap.WrapperDataAck(15002)
                )
                await backend.state_get(False, 0)
                assert (await cloud_receives(cloud, TOPICS.shadow_get)).payload == b""
                await backend.disconnect()
        # Only the acknowledged sends were acknowledged.
        acks = [e for e in events.seen if isinstance(e, wrap.WrapperDataAck)]
        assert [e.message_id for e in acks] == [15000, 15002]


async def test_send_while_not_connected(mosquitto_broker: MosquittoBroker) -> None:
    with trio.fail_after(LIMIT):
        async with running_backend(settings_for(mosquitto_broker)) as (
            backend,
            events,
        ):
            with pytest.raises(BackendNotConnected):
                await backend.data_send(Payload(b"{}"), False, 1)
            with pytest.raises(BackendNotConnected):
                await backend.batch_send(Payload(b"{}"), True, 15000)
            with pytest.raises(BackendNotConnected):
                await backend.state_get(False, 0)
            await connected(backend, events)
            await backend.disconnect()
            with pytest.raises(BackendNotConnected):
                await backend.ui_send(Payload(b"{}"), True, 15001)


async def test_foreign_client_certificate(
    mosquitto_broker: MosquittoBroker, tmp_path: Path
) -> None:
    other_dir = tmp_path / "other-pki"
    other_dir.mkdir()
    foreign = Pki(other_dir).client_files(DEVICE_ID)
    settings = settings_for(
        mosquitto_broker, cert_file=foreign.cert_file, key_file=foreign.key_file
    )
    with trio.fail_after(LIMIT), capture_logs() as logs:
        async with running_backend(settings) as (backend, events):
            await backend.connect()
            gone = await events.wait_for(wrap.WrapperDisconnected)
            assert "TLS" in gone.reason
            assert not events.of(wrap.WrapperConnected)
            assert isinstance(events.seen[0], wrap.WrapperConnecting)
            assert backend.snapshot()["last_failure"] == gone.reason
            assert backend.snapshot()["connected"] is False
            # Not retried by the backend: a new attempt is the caller's.
            await trio.sleep(0.3)
            assert len(events.of(wrap.WrapperConnecting)) == 1
            await backend.connect()
            await events.wait_for(wrap.WrapperDisconnected)
    refused = [e for e in logs if e["event"] == "aws_connect_refused"]
    assert len(refused) == 2
    assert refused[0]["permanent"] is True
    assert "TLS" in refused[0]["cause"]


async def test_broker_lost_mid_session(mosquitto_broker: MosquittoBroker) -> None:
    with trio.fail_after(LIMIT):
        async with running_backend(settings_for(mosquitto_broker)) as (
            backend,
            events,
        ):
            await connected(backend, events)
            mosquitto_broker.kill()
            gone = await events.wait_for(wrap.WrapperDisconnected)
            assert gone.reason
            assert backend.snapshot()["connected"] is False
            with pytest.raises(BackendNotConnected):
                await backend.data_send(Payload(b"{}"), False, 1)
            # The broker comes back; the caller's next attempt succeeds.
            await mosquitto_broker.restart()
            await connected(backend, events)
            await backend.disconnect()


async def test_disconnect_then_reconnect(mosquitto_broker: MosquittoBroker) -> None:
    with trio.fail_after(LIMIT):
        async with cloud_session(mosquitto_broker) as cloud:
            async with running_backend(settings_for(mosquitto_broker)) as (
                backend,
                events,
            ):
                await connected(backend, events)
                await cloud_receives(cloud, TOPICS.shadow_get)
                await backend.disconnect()
                gone = await events.wait_for(wrap.WrapperDisconnected)
                assert gone.reason == "disconnect requested"
                # A second disconnect reports nothing more.
                await backend.disconnect()
                assert len(events.of(wrap.WrapperDisconnected)) == 1

                await connected(backend, events)
                await cloud_receives(cloud, TOPICS.shadow_get)
                await backend.data_send(Payload(b"{}"), False, 1)
                await cloud_receives(cloud, TOPICS.shadow_update)
                await backend.disconnect()
                await events.wait_for(wrap.WrapperDisconnected)
                assert len(events.of(wrap.WrapperDisconnected)) == 2
                assert len(events.of(wrap.WrapperConnected)) == 2
        assert f"Received DISCONNECT from {DEVICE_ID}" in mosquitto_broker.log_text()


async def test_disconnect_during_attempt_reports_nothing(
    mosquitto_broker: MosquittoBroker,
) -> None:
    """An abandoned attempt emits no WrapperDisconnected (nothing was up)."""
    with trio.fail_after(LIMIT):
        async with running_backend(settings_for(mosquitto_broker)) as (
            backend,
            events,
        ):
            await backend.connect()
            await backend.disconnect()
            await trio.sleep(0.5)
            assert [type(e) for e in events.seen] == [wrap.WrapperConnecting]
            await connected(backend, events)
            await backend.disconnect()


@pytest.mark.parametrize("legacy", [False, True])
async def test_request_topics_on_the_wire(
    mosquitto_broker: MosquittoBroker, legacy: bool
) -> None:
    """Location, A-GNSS, P-GPS, Memfault and config sends reach their topics."""
    topics = AwsTopics.build(DEVICE_ID, legacy=legacy)
    with trio.fail_after(LIMIT):
        async with cloud_session(mosquitto_broker) as cloud:
            async with running_backend(
                settings_for(mosquitto_broker), legacy_topics=legacy
            ) as (backend, events):
                await connected(backend, events)
                sends = [
                    (backend.cloud_location_send, topics.cloud_location),
                    (backend.agnss_request_send, topics.agnss_request),
                    (backend.pgps_request_send, topics.pgps_request),
                    (backend.memfault_data_send, topics.memfault),
                    (backend.state_send, topics.shadow_update),
                ]
                for n, (send, topic) in enumerate(sends):
                    body = f'{{"n":{n}}}'.encode()
                    await send(Payload(body), True, 16000 + n)
                    message = await cloud_receives(cloud, topic)
                    assert (message.payload, message.qos) == (body, 1)
                    ack = await events.wait_for(wrap.WrapperDataAck)
                    assert ack.message_id == 16000 + n
                # Legacy devices get A-GNSS data on <id>/agps.
                await cloud.publish(topics.agnss, b"\x01\x02", 0)
                got = await events.wait_for(wrap.WrapperAgnssDataReceived)
                assert got.data == b"\x01\x02"
                await backend.disconnect()
