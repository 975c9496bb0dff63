"""The cloud actor on the real AWS backend, against a Mosquitto that fails.

No autojump clock: real sockets and real time, every test bounded by
``trio.fail_after``.  The rig is ``tests/rig.py``'s, with the real
``AwsIotBackend`` instead of the scripted one: a bus, the cloud actor and the
util actor.  A second, plain MQTT session with its own client id and
certificate plays the cloud and records what reaches ``<id>/batch``.

The QoS library keeps the firmware's numbers (10 slots, 3 notifications,
16 s); only the reconnection table is shortened, through the supported
explicit-table configuration of ``ReconnectBackoff``.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import trio
from structlog.testing import capture_logs

from actors.backoff import ReconnectBackoff
from actors.cloud import RECONNECT_AFTER_DROP, CloudActor
from actors.runtime import Bus
from actors.util import Reboot, UtilActor
from backends.aws import AwsIotBackend
from backends.mqtt_transport import (
    MqttDisconnected,
    MqttMessage,
    MqttSettings,
    open_mqtt_session,
)
from protocols.base import Event, Payload
from protocols.cloud import CloudError
from protocols.data import DataSendBatch
from protocols.modem import ModemInitialized, ModemLteConnected
from protocols.qos import QosMessage
from tests.mosquitto import MosquittoBroker, Pki, client_settings

DEVICE_ID = "352656100000042"
CLOUD_ID = "the-cloud-observer"
BATCH_TOPIC = f"{DEVICE_ID}/batch"

CONNECTED = "SUB_STATE_CLOUD_CONNECTED"
DISCONNECTED = "SUB_STATE_CLOUD_DISCONNECTED"

SEND_PERIOD = 0.5
"""Seconds between two ``DataSendBatch`` handed to the cloud actor."""

QOS_PERIOD = 16.0
"""The QoS library's retransmission period (firmware default, unchanged)."""

TOLERANCE = 0.35
"""Real-time slack when comparing a measured instant with its prediction."""


def settings_for(
    broker: MosquittoBroker, client_id: str = DEVICE_ID, **overrides: Any
) -> MqttSettings:
    overrides.setdefault("connect_timeout", 3.0)
    return client_settings(broker, client_id, **overrides)


def batch(seq: int) -> Payload:
    """A batch document carrying a unique sequence number."""
    return Payload(json.dumps({"seq": seq, "bat": [{"v": 80, "ts": seq}]}).encode())


def seq_of(data: bytes) -> int:
    seq: int = json.loads(data)["seq"]
    return seq


# ---------------------------------------------------------------------------
# The rig


@attrs.define(eq=False)
class Device:
    """A cloud actor on a real ``AwsIotBackend``, a util actor and a bus.

    ``seen`` holds every bus event with its (real) publication time.
    ``accepted`` maps the sequence number of every batch the QoS library took
    into its pending list to the time it was taken; ``removed`` records each
    message leaving that list and why.  Both are read off the library's own
    ``notify``/``removed`` callbacks, which the test wraps without changing
    what they do.
    """

    bus: Bus
    backend: AwsIotBackend
    cloud: CloudActor
    util: UtilActor
    seen: list[tuple[float, Event]]
    accepted: dict[int, float] = attrs.field(factory=dict)
    ids: dict[int, int] = attrs.field(factory=dict)
    notifications: list[tuple[float, int, int]] = attrs.field(factory=list)
    removed: list[tuple[float, int, str]] = attrs.field(factory=list)
    sub_states: list[tuple[float, str]] = attrs.field(factory=list)
    reboots: list[Reboot] = attrs.field(factory=list)

    def publish(self, event: Event) -> None:
        self.bus.publish(event)

    def times(self, spec_name: str) -> list[float]:
        return [t for t, event in self.seen if event.spec_name == spec_name]

    def events(self, kind: type[Event]) -> list[tuple[float, Event]]:
        return [(t, e) for t, e in self.seen if isinstance(e, kind)]

    def spy_on_qos(self) -> None:
        qos = self.cloud.qos
        notify, removed = qos.notify, qos.removed

        def spying_notify(message: QosMessage) -> None:
            now = trio.current_time()
            self.notifications.append((now, message.id, message.notified_count))
            if message.ack_required and message.notified_count == 1:
                self.accepted[seq_of(message.payload.data)] = now
                self.ids[seq_of(message.payload.data)] = message.id
            notify(message)

        def spying_removed(message: QosMessage, why: str) -> None:
            self.removed.append((trio.current_time(), message.id, why))
            removed(message, why)

        qos.notify = spying_notify
        qos.removed = spying_removed

    async def watch_sub_state(self) -> None:
        """Record every change of the cloud actor's sub-state (10 ms poll)."""
        last = None
        while True:
            current = self.cloud.sub_state
            if current != last:
                self.sub_states.append((trio.current_time(), str(current)))
                last = current
            await trio.sleep(0.01)

    async def wait_until(
        self, condition: Callable[[], bool], *, limit: float, what: str
    ) -> float:
        """Poll ``condition`` every 10 ms; return the time it became true."""
        try:
            with trio.fail_after(limit):
                while not condition():
                    await trio.sleep(0.01)
        except trio.TooSlowError:
            raise AssertionError(f"not within {limit} s: {what}") from None
        return trio.current_time()


async def start_device(
    nursery: trio.Nursery,
    settings: MqttSettings,
    *,
    table: tuple[int, ...],
    retries: int,
) -> Device:
    bus = Bus()
    seen: list[tuple[float, Event]] = []
    bus.taps.append(lambda event: seen.append((trio.current_time(), event)))
    backend = AwsIotBackend(DEVICE_ID, settings)
    cloud = CloudActor(bus, backend=backend, backoff=ReconnectBackoff(table, retries))
    reboots: list[Reboot] = []
    util = UtilActor(bus, on_reboot=reboots.append)
    util.register_shutdown([cloud.id])
    device = Device(bus, backend, cloud, util, seen, reboots=reboots)
    device.spy_on_qos()
    await nursery.start(backend.run)
    await nursery.start(util.run)
    await nursery.start(cloud.run)
    nursery.start_soon(device.watch_sub_state)
    return device


@attrs.define(eq=False)
class Observer:
    """The cloud's side: one clean session at a time on ``<id>/batch``."""

    broker: MosquittoBroker
    received: list[tuple[float, int]] = attrs.field(factory=list)
    sessions: int = 0
    losses: list[str] = attrs.field(factory=list)

    async def session(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Subscribe, report ready, record until the connection ends."""
        async with open_mqtt_session(settings_for(self.broker, CLOUD_ID)) as cloud:
            await cloud.subscribe([(BATCH_TOPIC, 1)])
            self.sessions += 1
            task_status.started()
            while True:
                try:
                    event = await cloud.incoming.receive()
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    return
                match event:
                    case MqttMessage(topic=topic, payload=data) if topic == BATCH_TOPIC:
                        self.received.append((trio.current_time(), seq_of(data)))
                    case MqttDisconnected(reason=reason):
                        self.losses.append(reason)
                        return

    def unique(self) -> set[int]:
        return {seq for _, seq in self.received}

    def first_arrival(self, seq: int) -> float:
        return min(t for t, s in self.received if s == seq)


# ---------------------------------------------------------------------------
# 1. The broker killed and restarted while data flows

# attempt at drop + 1 s (fails: broker down), next one 5 s later (succeeds).
RECONNECT_TABLE = (5, 10, 20, 40, 80, 160, 320, 640, 1280, 2560, 5120, 10240)
OUTAGE = 2.5
"""Seconds between the kill and the restart."""


async def test_broker_killed_and_restarted_while_data_flows(
    mosquitto_broker: MosquittoBroker,
) -> None:
    """Every batch the QoS list accepted reaches the cloud; the rest is counted.

    Backoff: the explicit table ``RECONNECT_TABLE`` (5, 10, 20, ...) with
    10 retries, instead of the firmware's 32 s first step, to keep real time
    short.  The path taken is the "one failed retry" path:

    ==============  ==========================================================
    t_k             broker SIGKILLed right after the 10 first batches were all
                    acknowledged and seen by the cloud (nothing in flight), and
                    at once, before any Trio checkpoint, batch 10 is handed
                    over: the cloud actor still is CLOUD_CONNECTED when it
                    takes it, so it is ACCEPTED, but its transmission goes
                    nowhere (or fails with send_failed) -- it stays pending
                    with one notification.
    t_d ~ t_k       the drop: SUB_STATE_CLOUD_DISCONNECTED, reconnect in 1 s,
                    QoS timer stopped.
    t_k+0.5..+4.5   batches 11..19, one per 0.5 s: dropped offline.
    t_d+1           attempt (table[0] = 5 s to succeed): TCP refused.
    t_k+2.5         broker restarted on the same port; the observer resubscribes
                    (well before the device is back, so nothing the device
                    sends after reconnecting can miss the clean-session
                    observer).
    t_d+6           next attempt (given table[1] = 10 s): succeeds,
                    CLOUD_CONNECTED.
    t_c             batches 20..29, one per 0.5 s: accepted.  The first add
                    re-arms the 16 s QoS timer ...
    t_c+16          ... which retransmits batch 10 (second notification of 3):
                    acknowledged, delivered, nothing expires.
    ==============  ==========================================================

    Why the kill waits for quiescence: a broker killed between its PUBACK to
    the device and its forward to the observer loses an acknowledged message
    (QoS 1 is hop-by-hop, the broker has no persistence and the observer a
    clean session).  That is not the device's fault, and the test would
    flake on it; so the in-flight message is created deliberately instead.
    """
    broker = mosquitto_broker
    handed: list[tuple[float, int]] = []

    with trio.fail_after(45), capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            observer = Observer(broker)
            await nursery.start(observer.session)
            device = await start_device(
                nursery, settings_for(broker), table=RECONNECT_TABLE, retries=10
            )
            cloud = device.cloud

            def hand(seq: int) -> None:
                handed.append((trio.current_time(), seq))
                device.publish(DataSendBatch(batch(seq)))

            device.publish(ModemInitialized())
            device.publish(ModemLteConnected())
            await device.wait_until(
                lambda: cloud.sub_state == CONNECTED, limit=5, what="first connection"
            )

            # Phase 1: connected, 10 batches.
            for seq in range(10):
                hand(seq)
                await trio.sleep(SEND_PERIOD)
            await device.wait_until(
                lambda: not cloud.qos.pending and observer.unique() == set(range(10)),
                limit=5,
                what="batches 0..9 acknowledged and seen by the cloud",
            )

            # The kill, and batch 10 in flight (no checkpoint in between).
            t_kill = trio.current_time()
            broker.kill()
            hand(10)

            # Phase 2: broker down.  Phase 3: broker back, device not yet.
            for n, seq in enumerate(range(11, 20), start=1):
                await trio.sleep_until(t_kill + n * SEND_PERIOD)
                hand(seq)
                if n * SEND_PERIOD == OUTAGE:
                    assert cloud.sub_state == DISCONNECTED
                    await broker.restart()
                    await nursery.start(observer.session)
            t_restarted = trio.current_time()

            t_back = await device.wait_until(
                lambda: cloud.sub_state == CONNECTED, limit=8, what="reconnection"
            )

            # Phase 4: connected again, 10 batches; the first re-arms QoS.
            for seq in range(20, 30):
                hand(seq)
                await trio.sleep(SEND_PERIOD)

            await device.wait_until(
                lambda: not cloud.qos.pending,
                limit=QOS_PERIOD + 3,
                what="the QoS list empty (batch 10 retransmitted and acknowledged)",
            )
            await device.wait_until(
                lambda: observer.unique() >= set(device.accepted),
                limit=3,
                what="every accepted batch seen by the cloud",
            )
            nursery.cancel_scope.cancel()

    counters = cloud.counters
    accepted = set(device.accepted)
    delivered = observer.unique()
    expired_ids = {mid for _, mid, why in device.removed if why == "expired"}

    # -- the accounting --------------------------------------------------
    assert len(handed) == 30
    assert accepted == set(range(11)) | set(range(20, 30))
    assert counters["sends_dropped_offline"] == 9  # batches 11..19
    assert counters["qos_pool_full"] == 0
    assert len(accepted) == len(handed) - counters["sends_dropped_offline"]
    assert counters["qos_expired"] == len(expired_ids) == 0
    assert delivered <= accepted, "the cloud saw a batch that was never accepted"
    assert len(accepted) == len(delivered & accepted) + counters["qos_expired"]
    assert counters["qos_acknowledged"] == len(accepted)
    assert not cloud.qos.pending

    # -- the state machine on the kill ---------------------------------
    drops = [t for t, state in device.sub_states if state == DISCONNECTED]
    ups = [t for t, state in device.sub_states if state == CONNECTED]
    assert len(ups) == 2 and len(drops) == 2  # initial state, then the kill
    assert t_kill <= drops[1] <= t_kill + 0.5
    assert abs(ups[1] - t_back) < 0.1
    cloud_drops = [t for t in device.times("CLOUD_EVT_DISCONNECTED") if t >= t_kill]
    t_drop = cloud_drops[0]
    assert t_drop - t_kill < 0.5

    # -- the reconnection: one failed attempt at +1 s, then table[0] later
    attempts = device.times("CLOUD_EVT_CONNECTING")
    assert counters["connect_attempts"] == len(attempts) == 3
    t_retry, t_success = attempts[1], attempts[2]
    assert abs(t_retry - (t_drop + RECONNECT_AFTER_DROP)) < TOLERANCE
    assert t_retry < t_kill + OUTAGE  # the broker was still down
    assert abs(t_success - (t_retry + RECONNECT_TABLE[0])) < TOLERANCE
    assert t_success > t_restarted
    # The failed retry reported its own (ignored) disconnection.
    assert [t for t in cloud_drops if t_retry <= t < t_success]
    connected_at = device.times("CLOUD_EVT_CONNECTED")
    assert len(connected_at) == 2 and t_success <= connected_at[1] <= t_back
    failed = [e for e in logs if e["event"] == "aws_connect_failed"]
    assert len(failed) == 1
    # Device twice, observer twice; the refused TCP attempt never got in.
    assert broker.connection_attempts() == 4

    # -- the retransmission of the in-flight batch ---------------------
    rearmed = device.accepted[20]
    arrival = observer.first_arrival(10)
    assert rearmed + QOS_PERIOD - TOLERANCE <= arrival <= rearmed + QOS_PERIOD + 1
    batch10_id = device.ids[10]
    assert [n for _, mid, n in device.notifications if mid == batch10_id] == [1, 2]
    # Nothing handed after the reconnection had to wait for the timer.
    for seq in range(20, 30):
        assert observer.first_arrival(seq) - device.accepted[seq] < 1.0

    # -- for the report ----------------------------------------------------
    duplicates = len(observer.received) - len(delivered)
    print(
        f"\nkill->drop {t_drop - t_kill:.3f}s, drop->retry {t_retry - t_drop:.3f}s, "
        f"retry->success {t_success - t_retry:.3f}s, "
        f"kill->back {t_back - t_kill:.3f}s, "
        f"rearm->batch10 {arrival - rearmed:.3f}s; handed {len(handed)}, "
        f"accepted {len(accepted)}, delivered {len(delivered)}, "
        f"duplicates {duplicates}, dropped offline "
        f"{counters['sends_dropped_offline']}, expired {counters['qos_expired']}, "
        f"transmissions {counters['transmissions']}, "
        f"send_failures {counters['send_failures']}, "
        f"observer losses {observer.losses}"
    )


# ---------------------------------------------------------------------------
# 2. A client certificate from a foreign CA


async def test_foreign_certificate_follows_the_backoff_then_errors(
    mosquitto_broker: MosquittoBroker, tmp_path: Path
) -> None:
    """Table (1, 1, 1, 1), 2 retries: attempts at t0, t0+1, t0+2, error at t0+3.

    Every attempt is refused by the broker's TLS handshake; the backend logs
    the refusal as permanent each time, and the cloud actor keeps following
    its table regardless (as the firmware does), then raises
    CLOUD_EVT_ERROR(-ENETUNREACH), on which the util actor asks for a reboot.
    """
    foreign_dir = tmp_path / "foreign-pki"
    foreign_dir.mkdir()
    foreign = Pki(foreign_dir).client_files(DEVICE_ID)
    settings = settings_for(
        mosquitto_broker, cert_file=foreign.cert_file, key_file=foreign.key_file
    )
    table = (1, 1, 1, 1)

    with trio.fail_after(10), capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            device = await start_device(nursery, settings, table=table, retries=2)
            device.publish(ModemInitialized())
            device.publish(ModemLteConnected())
            await device.wait_until(
                lambda: bool(device.events(CloudError)), limit=6, what="CLOUD_EVT_ERROR"
            )
            await device.wait_until(
                lambda: device.util.request is not None, limit=1, what="reboot request"
            )
            nursery.cancel_scope.cancel()

    cloud = device.cloud
    attempts = device.times("CLOUD_EVT_CONNECTING")
    assert cloud.counters["connect_attempts"] == len(attempts) == 3
    t0 = attempts[0]
    for n, t in enumerate(attempts):
        assert abs(t - (t0 + n)) < TOLERANCE, (n, t - t0)
    [(t_error, error)] = device.events(CloudError)
    assert isinstance(error, CloudError)
    assert error.err == -errno.ENETUNREACH
    assert abs(t_error - (t0 + 3)) < TOLERANCE
    assert not device.times("CLOUD_EVT_CONNECTED")
    assert device.util.request is not None
    assert device.util.request.cause == f"CLOUD_EVT_ERROR({-errno.ENETUNREACH})"
    assert mosquitto_broker.connection_attempts() == 3

    # The log: each attempt, then its permanent TLS refusal; then giving up.
    story = [
        e
        for e in logs
        if e["event"]
        in ("cloud_connect_attempt", "aws_connect_refused", "cloud_connect_gave_up")
    ]
    assert [e["event"] for e in story] == [
        "cloud_connect_attempt",
        "aws_connect_refused",
    ] * 3 + ["cloud_connect_gave_up"]
    refusals = [e for e in story if e["event"] == "aws_connect_refused"]
    for refusal in refusals:
        assert refusal["permanent"] is True
        assert "TLS" in refusal["cause"]
        assert "TLS" in refusal["reason"]
    transport = [e for e in logs if e["event"] == "mqtt_connect_refused"]
    assert len(transport) == 3
    assert all(e["permanent"] is True for e in transport)
    [gave_up] = [e for e in story if e["event"] == "cloud_connect_gave_up"]
    assert gave_up["attempts"] == 3
    assert gave_up["max_retries"] == 2
    print(
        f"\nattempts at +{[round(t - t0, 3) for t in attempts]} s, "
        f"CLOUD_EVT_ERROR at +{t_error - t0:.3f} s, "
        f"refusal: {refusals[0]['reason']}"
    )
