"""What the connected cloud actor sends, and how the QoS library retries it."""

from __future__ import annotations

import errno
import json

import pytest
import trio

from actors.qos import MESSAGE_ID_BASE, QosLibrary
from backends.scripted import Connect
from protocols.app import ShutdownReason, UtilShutdownRequest
from protocols.base import Payload
from protocols.cloud import CloudConfigReceived, CloudError
from protocols.config import DeviceConfig, NoData
from protocols.data import (
    DataConfigInit,
    DataConfigSend,
    DataSend,
    DataSendBatch,
    DataUiDataSend,
)
from protocols.modem import (
    ModemDynamicData,
    ModemInitialized,
    ModemLteConnected,
    NetworkMode,
)
from protocols.peripherals import AgnssRequest, LocationAgnssNeeded
from protocols.qos import MessageType, QosFlag
from protocols.wrapper import WrapperPingAck
from tests.rig import Rig, start_rig

BATCH = Payload(b'{"bat":[{"v":80,"ts":1}]}')


async def connected_rig(nursery: trio.Nursery, **kwargs: object) -> Rig:
    """A rig whose cloud connected at t = 1; it returns at t = 2."""
    outcomes = [Connect(after=1.0)]
    rig = await start_rig(nursery, outcomes, **kwargs)  # type: ignore[arg-type]
    rig.publish(ModemInitialized())
    rig.publish(ModemLteConnected())
    await trio.sleep(2)
    assert rig.cloud.sub_state == "SUB_STATE_CLOUD_CONNECTED"
    return rig


class TestQosRetransmission:
    async def test_unacked_message_sent_at_0_16_32_dropped_at_48(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """An unacknowledged batch goes out three times, 16 s apart, then expires."""
        rig = await connected_rig(nursery)

        rig.publish(DataSendBatch(BATCH))
        await trio.sleep(100)

        sends = rig.backend.sent("batch_send")
        assert [c.t - 2 for c in sends] == [0, 16, 32]
        assert {c.message_id for c in sends} == {MESSAGE_ID_BASE}
        assert all(c.ack for c in sends)
        assert rig.cloud.counters["qos_expired"] == 1
        assert rig.cloud.qos.pending == {}

    async def test_ack_stops_retransmission(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """A PUBACK within 16 s means exactly one transmission."""
        rig = await connected_rig(nursery, ack_delay=0.5)

        rig.publish(DataSendBatch(BATCH))
        await trio.sleep(100)

        assert len(rig.backend.sent("batch_send")) == 1
        assert rig.cloud.counters["qos_acknowledged"] == 1
        assert not rig.cloud.qos.timer.pending  # type: ignore[union-attr]

    async def test_generic_data_is_sent_once_without_ack(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """Regular data goes out once, QoS 0, and is never retried."""
        rig = await connected_rig(nursery)

        rig.publish(DataSend(Payload(b"{}")))
        await trio.sleep(100)

        [send] = rig.backend.sent("data_send")
        assert not send.ack
        assert rig.cloud.qos.pending == {}

    async def test_ten_slots_then_drop(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """The eleventh unacknowledged message finds the pool full and is lost."""
        rig = await connected_rig(nursery)

        for _ in range(10):
            rig.publish(DataUiDataSend(Payload(b'{"btn":{"v":1,"ts":1}}')))
            await trio.sleep(0.1)
        rig.publish(DataUiDataSend(Payload(b'{"btn":{"v":2,"ts":2}}')))
        await trio.sleep(0.1)

        assert len(rig.cloud.qos.pending) == 10
        assert rig.cloud.counters["qos_pool_full"] == 1
        assert len(rig.backend.sent("ui_send")) == 10

    async def test_ping_response_resends_everything_pending(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """A PINGRESP triggers an extra round that counts toward the limit."""
        rig = await connected_rig(nursery)
        rig.publish(DataSendBatch(BATCH))
        await trio.sleep(5)

        rig.backend.emit(WrapperPingAck())
        await trio.sleep(100)

        sends = rig.backend.sent("batch_send")
        # 0, ping at 5, 16; the count reaches 3 at 16, so 32 drops it.
        assert [c.t - 2 for c in sends] == [0, 5, 16]
        assert rig.cloud.counters["qos_expired"] == 1

    async def test_drop_stops_the_qos_timer(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """After a cloud drop nothing is retransmitted while disconnected."""
        rig = await connected_rig(nursery)
        rig.backend.default = Connect(after=10_000)
        rig.publish(DataSendBatch(BATCH))
        await trio.sleep(5)

        rig.backend.drop()
        await trio.sleep(100)

        assert [c.t - 2 for c in rig.backend.sent("batch_send")] == [0]
        assert list(rig.cloud.qos.pending) == [MESSAGE_ID_BASE]

    async def test_sends_while_disconnected_are_dropped_and_counted(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """Data handed over while LTE is down never reaches the backend."""
        rig = await start_rig(nursery)
        rig.publish(ModemInitialized())

        rig.publish(DataSendBatch(BATCH))
        await trio.sleep(1)

        assert rig.backend.sent() == []
        assert rig.cloud.counters["sends_dropped_offline"] == 1


class TestQosLibrary:
    def test_ids_start_at_15000_and_wrap_before_65535(self) -> None:
        """Message ids run 15000..65534 and wrap back to 15000."""
        qos = QosLibrary(notify=lambda m: None, removed=lambda m, why: None)
        first = qos.message_id_get_next()
        qos.next_id = 65534

        ids = [qos.message_id_get_next() for _ in range(2)]

        assert first == 15000
        assert ids == [65534, 15000]

    def test_ack_disabled_message_is_announced_then_forgotten(self) -> None:
        """A fire-and-forget message carries its payload and takes no slot."""
        notified = []
        removed = []
        qos = QosLibrary(
            notify=notified.append, removed=lambda m, why: removed.append(why)
        )

        qos.add(MessageType.GENERIC, QosFlag.ACK_DISABLED, BATCH)

        assert [m.payload for m in notified] == [BATCH]
        assert removed == ["sent_without_ack"]
        assert qos.pending == {}


class TestConfigReceived:
    async def test_delta_applies_onto_current_config(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """A partial document changes only its keys of the current config."""
        rig = await connected_rig(nursery)
        rig.publish(DataConfigInit(DeviceConfig(active_wait_timeout=60)))
        await trio.sleep(0.1)

        delta = {"version": 3, "state": {"cfg": {"act": False, "nod": ["gnss"]}}}
        rig.backend.receive(json.dumps(delta).encode())
        await trio.sleep(0.1)

        [received] = [e for _, e in rig.seen if isinstance(e, CloudConfigReceived)]
        assert received.config == DeviceConfig(
            active_mode=False, active_wait_timeout=60, no_data=NoData(gnss=True)
        )

    async def test_duplicate_version_is_ignored(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """A redelivered delta (same version) produces no event."""
        rig = await connected_rig(nursery)
        document = b'{"version":7,"state":{"cfg":{"actwt":120}}}'

        rig.backend.receive(document)
        rig.backend.receive(document)
        await trio.sleep(0.1)

        assert rig.names().count("CLOUD_EVT_CONFIG_RECEIVED") == 1

    async def test_document_without_cfg_is_config_empty(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """A 404 from shadow/get/rejected makes the device report its config."""
        rig = await connected_rig(nursery)

        rig.backend.receive(b'{"code":404,"message":"No shadow exists"}')
        await trio.sleep(0.1)

        assert "CLOUD_EVT_CONFIG_EMPTY" in rig.names()

    async def test_wrongly_typed_value_rejects_whole_document(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """A string where a number belongs applies nothing and is logged."""
        rig = await connected_rig(nursery)

        rig.backend.receive(b'{"cfg":{"act":false,"actwt":"often"}}')
        await trio.sleep(0.1)

        assert "CLOUD_EVT_CONFIG_RECEIVED" not in rig.names()
        assert "CLOUD_EVT_CONFIG_EMPTY" in rig.names()
        assert "cfg.actwt = 'often'" in (rig.cloud.last_error or "")
        assert rig.cloud.state == "STATE_LTE_CONNECTED"

    async def test_not_json_is_ignored(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """Garbage on a config topic produces no event and no error."""
        rig = await connected_rig(nursery)
        before = list(rig.names())

        rig.backend.receive(b"\xff\x00not json")
        await trio.sleep(0.1)

        assert rig.names() == before


class TestAgnss:
    async def test_request_buffered_until_connected(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """A-GNSS requested while offline goes out once the cloud connects."""
        rig = await start_rig(nursery, [Connect(after=3.0)])
        network = ModemDynamicData(
            timestamp=0, area_code=40401, cell_id=21679716, rsrp=-97, mcc=242,
            mnc=2, ip_address="10.0.0.2", apn="telenor.smart", mccmnc="24202",
            band=20, network_mode=NetworkMode.LTE_M,
        )  # fmt: skip
        rig.cloud.network_info = lambda: network
        rig.publish(ModemInitialized())
        request = AgnssRequest(data_flags=0x3F, sv_mask_ephe=1, sv_mask_alm=1)
        rig.publish(LocationAgnssNeeded(request))
        assert rig.cloud.agnss_buffered is None
        await trio.sleep(0.1)
        assert rig.cloud.agnss_buffered is not None

        rig.publish(ModemLteConnected())
        await trio.sleep(10)

        assert rig.cloud.agnss_buffered is None
        [sent] = rig.backend.sent("agnss_request_send")
        assert sent.t == pytest.approx(3.1)  # LTE up at 0.1, connected 3 s later
        assert sent.ack
        assert json.loads(sent.payload.data) == {  # type: ignore[union-attr]
            "mcc": 242,
            "mnc": 2,
            "area": 40401,
            "cell": 21679716,
            "types": [1, 2, 3, 4, 5, 6, 7, 8, 9],
        }


class TestShutdown:
    async def test_shutdown_acks_and_ignores_everything_after(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """SHUTDOWN_READY carries the module id; LTE events no longer connect."""
        rig = await start_rig(nursery)
        rig.publish(ModemInitialized())

        rig.publish(UtilShutdownRequest(ShutdownReason.GENERIC))
        await trio.sleep(0.1)
        rig.publish(ModemLteConnected())
        await trio.sleep(100)

        acks = [e for _, e in rig.seen if e.spec_name == "CLOUD_EVT_SHUTDOWN_READY"]
        assert [a.id for a in acks] == [rig.cloud.id]  # type: ignore[attr-defined]
        assert rig.cloud.state == "STATE_SHUTDOWN"
        assert rig.backend.attempt_times == []


class TestFullMailbox:
    async def test_overflow_purges_and_raises_module_error(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """A burst beyond the 20 slots purges the mailbox and ends in a reboot."""
        rig = await start_rig(nursery)

        # The first event goes straight to the waiting actor task, 20 fill
        # the buffer, the 22nd overflows.
        for _ in range(22):
            rig.publish(DataConfigSend(Payload(b"{}")))
        await rig.rebooted.wait()

        stats = rig.cloud.mailbox.stats()
        assert stats.capacity == 20
        assert stats.overflows == 1
        assert stats.purged == 21
        assert stats.peak == 20
        errors = [e for _, e in rig.seen if isinstance(e, CloudError)]
        assert [e.err for e in errors] == [-errno.ENOSPC]
        assert rig.reboots[0][1].cause == f"CLOUD_EVT_ERROR({-errno.ENOSPC})"


class TestSnapshot:
    async def test_snapshot_shows_state_mailbox_and_backoff(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """The debug view sees states, mailbox, counters and the next attempt."""
        rig = await start_rig(nursery)
        rig.backend.default = Connect(after=100.0)
        rig.publish(ModemInitialized())
        rig.publish(ModemLteConnected())
        await trio.sleep(10)

        snapshot = rig.cloud.snapshot()

        assert snapshot.name == "cloud"
        assert snapshot.state == "STATE_LTE_CONNECTED"
        assert snapshot.sub_state == "SUB_STATE_CLOUD_DISCONNECTED"
        assert snapshot.mailbox.capacity == 20
        assert snapshot.mailbox.depth == 0
        # Two modem events, the wrapper's CONNECTING and its CLOUD_EVT_CONNECTING.
        assert snapshot.mailbox.delivered == 4
        assert snapshot.counters["connect_attempts"] == 1
        assert snapshot.timers["connect_check"] == 32
        assert snapshot.extra["connect_retries"] == 1
        assert snapshot.extra["next_attempt_at"] == 32
        assert snapshot.last_error is None
