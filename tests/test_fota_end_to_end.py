"""A firmware update from the job's notification to the new version running.

The whole device (``Service``) runs against Mosquitto, the local AWS IoT
Jobs service and an HTTPS file server; real time, bounded by ``fail_after``.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

import trio

from protocols.app import ShutdownReason
from sandbox.aws_jobs import JobsService
from sandbox.files import FileServer
from tests.mosquitto import MosquittoBroker, Pki, client_settings
from tests.test_service_aws import aws_config
from tracker.config import parse_config
from tracker.service import Service

IMEI = "352656100000010"
IMAGE = bytes(range(256)) * 400  # 100 KiB


async def wait_until(predicate: Callable[[], bool], poll: float = 0.05) -> None:
    """Poll ``predicate`` in real time (callers bound it with fail_after)."""
    while not predicate():
        await trio.sleep(poll)


class TestFotaEndToEnd:
    async def test_job_to_reboot_to_new_version(
        self, mosquitto_broker: MosquittoBroker, mqtt_pki: Pki, tmp_path: Path
    ) -> None:
        """IN_PROGRESS, download, SUCCEEDED, reboot, and 1.0.1 runs confirmed."""
        files = tmp_path / "files"
        files.mkdir()
        (files / "app-1.0.1.bin").write_bytes(IMAGE)
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        mqtt_pki.ca.issue_cert("127.0.0.1").configure_cert(server_context)
        server = FileServer(files, server_context)
        text = aws_config(mosquitto_broker, mqtt_pki, tmp_path, IMEI)
        text = text.replace(
            "[modem]", f'download_ca_file = "{mqtt_pki.ca_file}"\n[modem]'
        )
        config = parse_config(text + "[util]\nack_reboot_delay = 1\n")
        jobs = JobsService()
        service = Service(config)

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                await nursery.start(server.run)
                settings = client_settings(mosquitto_broker, "sandbox-jobs")
                await nursery.start(jobs.run, settings)
                nursery.start_soon(service.run)
                await wait_until(
                    lambda: service.device is not None
                    and service.device.cloud.sub_state == "SUB_STATE_CLOUD_CONNECTED"
                )
                first = service.device
                await jobs.create_job(
                    "job-1",
                    {
                        "operation": "app_fw_update",
                        "size": len(IMAGE),
                        "filename": "app-1.0.1.bin",
                        "fwversion": "1.0.1",
                        "location": {
                            "protocol": "https",
                            "host": f"127.0.0.1:{server.port}",
                            "path": "app-1.0.1.bin",
                        },
                    },
                    [IMEI],
                )
                await wait_until(
                    lambda: service.reboots
                    and service.device is not None
                    and service.device is not first
                    and service.device.cloud.sub_state == "SUB_STATE_CLOUD_CONNECTED"
                )
                second = service.device
                service.request_stop()
                await wait_until(lambda: service.stopped_by is not None)
                nursery.cancel_scope.cancel()

        assert jobs.store.history(IMEI, "job-1") == [
            "QUEUED",
            "IN_PROGRESS",
            "SUCCEEDED",
        ]
        [reboot] = service.reboots
        assert reboot.reason is ShutdownReason.FOTA_UPDATE
        assert reboot.acknowledged
        assert first.bus.published["CLOUD_EVT_FOTA_START"] == 1
        assert first.bus.published["CLOUD_EVT_FOTA_DONE"] == 1
        assert service.firmware.running_version == "1.0.1"
        assert service.firmware.confirmed
        assert service.firmware.running_image is not None
        assert service.firmware.running_image.read_bytes() == IMAGE
        static = await second.modem.driver.static_data(0)
        assert static.app_version == "1.0.1"
