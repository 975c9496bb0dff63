"""The data actor's configuration handling, alone and behind the cloud actor."""

from __future__ import annotations

import json

import trio
from structlog.testing import capture_logs

from actors.data import DataActor
from actors.runtime import Bus
from backends.scripted import Connect
from protocols.app import AppStart, ShutdownReason, UtilShutdownRequest
from protocols.base import Event, Module
from protocols.cloud import CloudConfigEmpty, CloudConfigReceived, CloudConnected
from protocols.config import DeviceConfig, NoData
from protocols.data import DataConfigInit, DataConfigReady, DataConfigSend
from protocols.json_codec import JsonCodec
from protocols.modem import ModemInitialized, ModemLteConnected
from tests.rig import start_rig


async def start_data(
    nursery: trio.Nursery, config: DeviceConfig | None = None
) -> tuple[DataActor, list[Event]]:
    """A data actor on its own bus, and the list of what it publishes."""
    bus = Bus()
    seen: list[Event] = []
    data = DataActor(bus, codec=JsonCodec(), config=config or DeviceConfig())
    bus.taps.append(
        lambda event: seen.append(event) if event.source is Module.DATA else None
    )
    await nursery.start(data.run)
    return data, seen


def reported_cfg(event: Event) -> dict[str, object]:
    """The cfg object of a DATA_EVT_CONFIG_SEND for AWS."""
    assert isinstance(event, DataConfigSend)
    document = json.loads(event.payload.data)
    return document["state"]["reported"]["cfg"]  # type: ignore[no-any-return]


class TestConfigHandling:
    async def test_boot_announces_the_configuration(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """APP_EVT_START is answered with DATA_EVT_CONFIG_INIT and the config."""
        config = DeviceConfig(active_mode=False)
        data, seen = await start_data(nursery, config)

        data.deliver(AppStart())
        await trio.testing.wait_all_tasks_blocked()

        assert seen == [DataConfigInit(config)]

    async def test_change_is_applied_announced_and_reported(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """A changed field gives CONFIG_READY and a full report of the result."""
        data, seen = await start_data(nursery)
        received = DeviceConfig(active_wait_timeout=60, no_data=NoData(wifi=True))

        data.deliver(CloudConfigReceived(received))
        await trio.testing.wait_all_tasks_blocked()

        assert data.config == received
        assert seen[0] == DataConfigReady(received)
        assert reported_cfg(seen[1])["actwt"] == 60
        assert reported_cfg(seen[1])["nod"] == ["wifi"]

    async def test_non_positive_timeouts_are_refused_and_old_values_kept(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """loct 0 and mvt -5 are refused by name; the valid act change applies."""
        data, seen = await start_data(nursery)
        received = DeviceConfig(
            active_mode=False, location_timeout=0, movement_timeout=-5
        )

        with capture_logs() as logs:
            data.deliver(CloudConfigReceived(received))
            await trio.testing.wait_all_tasks_blocked()

        assert data.config == DeviceConfig(active_mode=False)
        refusals = [e["reason"] for e in logs if e["event"] == "config_value_refused"]
        assert refusals == [
            "location_timeout = 0: must be greater than 0",
            "movement_timeout = -5: must be greater than 0",
        ]
        assert reported_cfg(seen[-1])["loct"] == 300
        assert reported_cfg(seen[-1])["mvt"] == 3600
        assert data.counters["config_values_refused"] == 2

    async def test_unchanged_config_is_still_reported(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """The report follows every received document, without CONFIG_READY."""
        data, seen = await start_data(nursery)

        data.deliver(CloudConfigReceived(DeviceConfig()))
        await trio.testing.wait_all_tasks_blocked()

        assert [event.spec_name for event in seen] == ["DATA_EVT_CONFIG_SEND"]

    async def test_config_empty_answered_only_when_connected(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """CONFIG_EMPTY while disconnected is ignored, once connected reported."""
        data, seen = await start_data(nursery)

        data.deliver(CloudConfigEmpty())
        await trio.testing.wait_all_tasks_blocked()
        before = list(seen)
        data.deliver(CloudConnected())
        data.deliver(CloudConfigEmpty())
        await trio.testing.wait_all_tasks_blocked()

        assert before == []
        assert [event.spec_name for event in seen] == ["DATA_EVT_CONFIG_SEND"]

    async def test_shutdown_acknowledged_then_deaf(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """After the acknowledgement no configuration is handled."""
        data, seen = await start_data(nursery)

        data.deliver(UtilShutdownRequest(ShutdownReason.GENERIC))
        data.deliver(CloudConfigReceived(DeviceConfig(active_mode=False)))
        await trio.testing.wait_all_tasks_blocked()

        assert [event.spec_name for event in seen] == ["DATA_EVT_SHUTDOWN_READY"]
        assert data.config == DeviceConfig()


class TestRoundTripThroughTheCloudActor:
    async def test_delta_in_full_config_out(
        self, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
    ) -> None:
        """A shadow delta is applied and the complete config goes back, QoS 1."""
        rig = await start_rig(nursery, [Connect(after=1.0)], ack_delay=0.5)
        data = DataActor(rig.bus, codec=rig.backend.codec)
        await nursery.start(data.run)
        rig.publish(ModemInitialized())
        rig.publish(ModemLteConnected())
        await trio.sleep(2)

        rig.backend.receive(b'{"version":1,"state":{"cfg":{"act":false,"mvres":60}}}')
        await trio.sleep(5)

        [report] = rig.backend.sent("state_send")
        assert report.payload is not None
        cfg = json.loads(report.payload.data)["state"]["reported"]["cfg"]
        assert cfg == {
            "act": False, "loct": 300, "actwt": 300, "mvres": 60, "mvt": 3600,
            "accath": 4, "accith": 4, "accito": 60, "nod": [],
        }  # fmt: skip
        assert report.ack
        assert rig.cloud.counters["qos_acknowledged"] == 1
        assert rig.cloud.config == data.config
