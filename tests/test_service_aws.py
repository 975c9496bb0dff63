"""The whole device against a real Mosquitto broker, through the AWS backend.

No autojump here: real sockets, real time, bounded by ``fail_after``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from sandbox.aws_shadow import ShadowService
from tests.mosquitto import MosquittoBroker, Pki, client_settings
from tracker.config import parse_config
from tracker.service import Service


def aws_config(broker: MosquittoBroker, pki: Pki, tmp_path: Path, imei: str) -> str:
    """A tracker.toml selecting AWS on the test broker, client id = IMEI."""
    files = pki.client_files(imei)
    return f"""
[device]
imei = "{imei}"
[cloud]
service = "aws"
[cloud.aws]
broker_host = "127.0.0.1"
port = {broker.port}
ca_file = "{pki.ca_file}"
cert_file = "{files.cert_file}"
key_file = "{files.key_file}"
[modem]
attach_delay = 0.1
[state]
directory = "{tmp_path / 'state'}"
"""


class TestDeviceOnMosquitto:
    async def test_device_connects_and_stops_in_order(
        self, mosquitto_broker: MosquittoBroker, mqtt_pki: Pki, tmp_path: Path
    ) -> None:
        """LTE up, one attempt, CLOUD_CONNECTED over mutual TLS, then a clean stop."""
        imei = "352656100000010"
        config = parse_config(aws_config(mosquitto_broker, mqtt_pki, tmp_path, imei))
        service = Service(config)

        with trio.fail_after(15):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(service.run)
                await service.booted.wait()
                device = service.device
                assert device is not None
                while device.cloud.sub_state != "SUB_STATE_CLOUD_CONNECTED":
                    await trio.sleep(0.05)
                service.request_stop()

        assert device.cloud.counters["connect_attempts"] == 1
        assert device.backend.snapshot()["connected"] is False
        assert service.stopped_by is not None
        assert service.stopped_by.acknowledged
        assert mosquitto_broker.connection_attempts() == 1


async def wait_until(predicate: Callable[[], bool], poll: float = 0.05) -> None:
    """Poll ``predicate`` in real time (callers bound it with fail_after)."""
    while not predicate():
        await trio.sleep(poll)


class TestShadowRoundTrip:
    async def test_desired_config_applied_and_reported_back(
        self, mosquitto_broker: MosquittoBroker, mqtt_pki: Pki, tmp_path: Path
    ) -> None:
        """The shadow is created on the 404, then a desired cfg ends in sync."""
        imei = "352656100000010"
        config = parse_config(aws_config(mosquitto_broker, mqtt_pki, tmp_path, imei))
        shadow = ShadowService()
        service = Service(config)

        def reported() -> Any:
            document = shadow.store.document(imei) or {}
            return document.get("state", {}).get("reported", {}).get("cfg")

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                settings = client_settings(mosquitto_broker, "sandbox-shadow")
                await nursery.start(shadow.run, settings)
                nursery.start_soon(service.run)
                # First connection: no shadow, 404, the device creates it.
                await wait_until(lambda: reported() is not None)
                created = reported()
                await shadow.set_desired(imei, {"cfg": {"act": False, "actwt": 60}})
                await wait_until(lambda: (reported() or {}).get("act") is False)
                service.request_stop()
                await wait_until(lambda: service.stopped_by is not None)
                nursery.cancel_scope.cancel()

        assert created == {
            "act": True, "loct": 300, "actwt": 300, "mvres": 120, "mvt": 3600,
            "accath": 4, "accith": 4, "accito": 60, "nod": [],
        }  # fmt: skip
        assert reported()["actwt"] == 60
        [(suffix, document)] = shadow.store.get(imei, 0.0)
        assert suffix == "get/accepted"
        assert "delta" not in document["state"]
