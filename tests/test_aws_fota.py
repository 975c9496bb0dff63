"""AWS IoT Jobs FOTA (backends.aws_fota) against Mosquitto and a file server.

No autojump: real sockets, every test bounded by ``trio.fail_after``.  A
plain MQTT session plays the Jobs service (an inline responder: it answers
``$next/get`` from a queue and accepts every update); ``sandbox.files``
serves the images over HTTPS with a certificate of the test CA.
"""

from __future__ import annotations

import json
import math
import os
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

from backends.aws import AwsIotBackend
from backends.aws_fota import AwsFota
from backends.mqtt_transport import MqttMessage, MqttSession, open_mqtt_session
from protocols import wrapper as wrap
from sandbox.files import FileServer
from state.firmware import FirmwareStore
from tests.mosquitto import MosquittoBroker, Pki
from tests.test_aws_backend import CLOUD_ID, DEVICE_ID, Events, settings_for

LIMIT = 20.0
"""Real-time bound of each test, in seconds."""

WAIT = 10.0
"""Real-time bound of one wait."""

RUNNING = "1.0.0"
JOBS = f"$aws/things/{DEVICE_ID}/jobs"


def job_execution(job_id: str, document: object, version: int = 1) -> dict[str, Any]:
    return {
        "jobId": job_id,
        "status": "QUEUED",
        "versionNumber": version,
        "executionNumber": 1,
        "jobDocument": document,
    }


@attrs.define(eq=False)
class JobsService:
    """The cloud side of AWS IoT Jobs, just enough for one device."""

    cloud: MqttSession
    queue: list[dict[str, Any]] = attrs.field(factory=list)
    updates: list[tuple[str, dict[str, Any]]] = attrs.field(factory=list)
    next_requests: int = 0
    # Statuses recorded but left unanswered (a lost update/accepted).
    unanswered: set[str] = attrs.field(factory=set)
    _send: trio.MemorySendChannel[dict[str, Any]] = attrs.field(init=False)
    _recv: trio.MemoryReceiveChannel[dict[str, Any]] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        # Test bookkeeping only: unbounded so the responder never blocks.
        self._send, self._recv = trio.open_memory_channel[dict[str, Any]](math.inf)

    async def run(self) -> None:
        while True:
            event = await self.cloud.incoming.receive()
            if not isinstance(event, MqttMessage):
                continue
            if event.topic == f"{JOBS}/$next/get":
                self.next_requests += 1
                reply: dict[str, Any] = {"clientToken": "", "timestamp": 1}
                if self.queue:
                    reply["execution"] = self.queue.pop(0)
                await self.publish(f"{JOBS}/$next/get/accepted", reply)
            elif event.topic.endswith("/update") and event.topic.startswith(JOBS):
                job_id = event.topic[len(JOBS) + 1 : -len("/update")]
                body = json.loads(event.payload)
                self.updates.append((job_id, body))
                self._send.send_nowait(body)
                if body["status"] in self.unanswered:
                    continue
                await self.publish(
                    f"{event.topic}/accepted", {"clientToken": "", "timestamp": 2}
                )

    async def publish(self, topic: str, body: object) -> None:
        await self.cloud.publish(topic, json.dumps(body).encode(), 1)

    async def notify(self, execution: dict[str, Any]) -> None:
        await self.publish(f"{JOBS}/notify-next", {"execution": execution})

    async def wait_status(self, status: str) -> dict[str, Any]:
        with trio.fail_after(WAIT):
            while True:
                body = await self._recv.receive()
                if body["status"] == status:
                    return body

    def statuses(self) -> list[tuple[str, str]]:
        return [(b["status"], b["expectedVersion"]) for _, b in self.updates]


@attrs.define(eq=False)
class Rig:
    backend: AwsIotBackend
    events: Events
    jobs: JobsService
    server: FileServer
    store: FirmwareStore

    def publish_image(self, name: str, data: bytes) -> None:
        (self.server.directory / name).write_bytes(data)

    def document(self, name: str, size: int, version: str = "1.0.1") -> dict[str, Any]:
        return {
            "operation": "app_fw_update",
            "size": size,
            "filename": name,
            "fwversion": version,
            "location": {
                "protocol": "https",
                "host": f"127.0.0.1:{self.server.port}",
                "path": name,
            },
        }


@asynccontextmanager
async def fota_rig(
    broker: MosquittoBroker, pki: Pki, tmp_path: Path, jobs_queue: list[Any]
) -> AsyncIterator[Rig]:
    files = tmp_path / "files"
    files.mkdir()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    pki.ca.issue_cert("127.0.0.1").configure_cert(server_context)
    server = FileServer(files, server_context)
    store = FirmwareStore(tmp_path / "firmware", default_version=RUNNING)
    fota = AwsFota(DEVICE_ID, store, http_ca_file=pki.ca_file, retry_delay=0.05)
    backend = AwsIotBackend(DEVICE_ID, settings_for(broker), fota=fota)
    events = Events()
    backend.init(events.emit)
    async with open_mqtt_session(settings_for(broker, CLOUD_ID)) as cloud:
        await cloud.subscribe([(f"{JOBS}/#", 1)])
        jobs = JobsService(cloud, list(jobs_queue))
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            nursery.start_soon(jobs.run)
            await nursery.start(backend.run)
            yield Rig(backend, events, jobs, server, store)
            nursery.cancel_scope.cancel()


async def connect(rig: Rig) -> None:
    await rig.backend.connect()
    await rig.events.wait_for(wrap.WrapperConnected)


class TestAwsFota:
    async def test_job_on_notify_next_is_downloaded_and_staged(
        self, mosquitto_broker: MosquittoBroker, mqtt_pki: Pki, tmp_path: Path
    ) -> None:
        """IN_PROGRESS, download, SUCCEEDED, then FOTA_DONE; image staged."""
        image = os.urandom(100_000)
        with trio.fail_after(LIMIT):
            async with fota_rig(mosquitto_broker, mqtt_pki, tmp_path, []) as rig:
                rig.publish_image("1.0.1.bin", image)
                await connect(rig)
                with trio.fail_after(WAIT):
                    while rig.jobs.next_requests < 1:
                        await trio.sleep(0.01)
                await rig.jobs.notify(
                    job_execution("job-1", rig.document("1.0.1.bin", len(image)))
                )

                await rig.events.wait_for(wrap.WrapperFotaDone)

                assert rig.jobs.statuses() == [("IN_PROGRESS", "1"), ("SUCCEEDED", "2")]
                assert rig.events.of(wrap.WrapperFotaStart)
                assert not rig.events.of(wrap.WrapperFotaError)
                assert rig.store.pending == "1.0.1"
                assert rig.store.running_version == RUNNING
        assert rig.store.activate_pending() == "1.0.1"
        assert rig.store.running_image is not None
        assert rig.store.running_image.read_bytes() == image

    async def test_truncated_image_fails_and_asks_again(
        self, mosquitto_broker: MosquittoBroker, mqtt_pki: Pki, tmp_path: Path
    ) -> None:
        """A short image: FAILED, FOTA_ERROR, running image intact, $next again."""
        image = os.urandom(5000)
        with trio.fail_after(LIMIT):
            async with fota_rig(mosquitto_broker, mqtt_pki, tmp_path, []) as rig:
                rig.publish_image("1.0.1.bin", image)
                rig.server.truncate_to["1.0.1.bin"] = 1000
                rig.jobs.queue.append(
                    job_execution("job-1", rig.document("1.0.1.bin", len(image)), 3)
                )
                await connect(rig)

                failed = await rig.jobs.wait_status("FAILED")
                await rig.events.wait_for(wrap.WrapperFotaError)
                with trio.fail_after(WAIT):
                    while rig.jobs.next_requests < 2:
                        await trio.sleep(0.01)

                assert rig.jobs.statuses() == [("IN_PROGRESS", "3"), ("FAILED", "4")]
                assert "truncated" in failed["statusDetails"]["reason"]
                assert rig.store.running_version == RUNNING
                assert rig.store.pending is None

    async def test_oversized_image_fails(
        self, mosquitto_broker: MosquittoBroker, mqtt_pki: Pki, tmp_path: Path
    ) -> None:
        """A server sending more than the job's size: FAILED, nothing staged."""
        with trio.fail_after(LIMIT):
            async with fota_rig(mosquitto_broker, mqtt_pki, tmp_path, []) as rig:
                rig.publish_image("1.0.1.bin", os.urandom(5000))
                rig.jobs.queue.append(
                    job_execution("job-1", rig.document("1.0.1.bin", 4000))
                )
                await connect(rig)

                failed = await rig.jobs.wait_status("FAILED")

                assert "larger" in failed["statusDetails"]["reason"]
                assert rig.events.of(wrap.WrapperFotaError)
                assert rig.store.pending is None

    async def test_corrupt_document_fails_with_reason(
        self, mosquitto_broker: MosquittoBroker, mqtt_pki: Pki, tmp_path: Path
    ) -> None:
        """An invalid job document is FAILED at once, with the reason."""
        document = {"operation": "app_fw_update", "fwversion": "1.0.1", "size": "big"}
        queue = [job_execution("job-1", document)]
        with trio.fail_after(LIMIT):
            async with fota_rig(mosquitto_broker, mqtt_pki, tmp_path, queue) as rig:
                await connect(rig)

                failed = await rig.jobs.wait_status("FAILED")

                assert rig.jobs.statuses() == [("FAILED", "1")]
                assert "size" in failed["statusDetails"]["reason"]
                assert not rig.events.of(wrap.WrapperFotaStart)

    async def test_running_version_fails(
        self, mosquitto_broker: MosquittoBroker, mqtt_pki: Pki, tmp_path: Path
    ) -> None:
        """A job for the version already running is FAILED."""
        with trio.fail_after(LIMIT):
            async with fota_rig(mosquitto_broker, mqtt_pki, tmp_path, []) as rig:
                rig.jobs.queue.append(
                    job_execution("job-1", rig.document("x.bin", 10, version=RUNNING))
                )
                await connect(rig)

                failed = await rig.jobs.wait_status("FAILED")

                assert "already running" in failed["statusDetails"]["reason"]
                assert rig.server.requests == []

    async def test_broken_download_resumes_with_range(
        self, mosquitto_broker: MosquittoBroker, mqtt_pki: Pki, tmp_path: Path
    ) -> None:
        """A connection cut mid-body is resumed with a Range request."""
        image = os.urandom(200_000)
        with trio.fail_after(LIMIT):
            async with fota_rig(mosquitto_broker, mqtt_pki, tmp_path, []) as rig:
                rig.publish_image("1.0.1.bin", image)
                rig.server.cuts["1.0.1.bin"] = [70_000]
                rig.jobs.queue.append(
                    job_execution("job-1", rig.document("1.0.1.bin", len(image)))
                )
                await connect(rig)

                await rig.events.wait_for(wrap.WrapperFotaDone)

                assert rig.server.requests == [
                    ("/1.0.1.bin", None),
                    ("/1.0.1.bin", "bytes=70000-"),
                ]
                assert rig.jobs.statuses() == [("IN_PROGRESS", "1"), ("SUCCEEDED", "2")]
        assert rig.store.activate_pending() == "1.0.1"
        assert rig.store.running_image is not None
        assert rig.store.running_image.read_bytes() == image

    async def test_final_status_is_resent_after_reconnect(
        self, mosquitto_broker: MosquittoBroker, mqtt_pki: Pki, tmp_path: Path
    ) -> None:
        """SUCCEEDED without its accepted is sent again on the next connection."""
        image = os.urandom(3000)
        with trio.fail_after(LIMIT):
            async with fota_rig(mosquitto_broker, mqtt_pki, tmp_path, []) as rig:
                rig.publish_image("1.0.1.bin", image)
                rig.jobs.unanswered.add("SUCCEEDED")
                rig.jobs.queue.append(
                    job_execution("job-1", rig.document("1.0.1.bin", len(image)))
                )
                await connect(rig)
                await rig.jobs.wait_status("SUCCEEDED")
                await rig.backend.disconnect()
                rig.jobs.unanswered.clear()

                await connect(rig)
                await rig.events.wait_for(wrap.WrapperFotaDone)

                assert rig.jobs.statuses() == [
                    ("IN_PROGRESS", "1"),
                    ("SUCCEEDED", "2"),
                    ("SUCCEEDED", "2"),
                ]
                assert rig.jobs.next_requests == 1
                assert len(rig.events.of(wrap.WrapperFotaDone)) == 1
                assert rig.store.pending == "1.0.1"

    async def test_download_cancelled_on_disconnect_resumes_on_reconnect(
        self, mosquitto_broker: MosquittoBroker, mqtt_pki: Pki, tmp_path: Path
    ) -> None:
        """A disconnect cancels the download; the next connection resumes it."""
        image = os.urandom(150_000)
        with trio.fail_after(LIMIT):
            async with fota_rig(mosquitto_broker, mqtt_pki, tmp_path, []) as rig:
                rig.publish_image("1.0.1.bin", image)
                rig.server.stalls["1.0.1.bin"] = [64_000]
                rig.jobs.queue.append(
                    job_execution("job-1", rig.document("1.0.1.bin", len(image)))
                )
                await connect(rig)
                await rig.server.stalled.wait()
                # Let the stalled bytes reach the client before cutting.
                await trio.sleep(0.3)
                await rig.backend.disconnect()
                staged = rig.store.staged_size()

                await connect(rig)
                await rig.events.wait_for(wrap.WrapperFotaDone)

                assert staged == 64_000
                assert rig.server.requests == [
                    ("/1.0.1.bin", None),
                    ("/1.0.1.bin", "bytes=64000-"),
                ]
                assert rig.jobs.statuses() == [("IN_PROGRESS", "1"), ("SUCCEEDED", "2")]
                assert len(rig.events.of(wrap.WrapperFotaStart)) == 1
        assert rig.store.activate_pending() == "1.0.1"
        assert rig.store.running_image is not None
        assert rig.store.running_image.read_bytes() == image


class TestFileServer:
    async def test_plain_http_get_range_and_errors(self, tmp_path: Path) -> None:
        """200 with the body, 206 for an open range, 416 past the end, 404."""
        (tmp_path / "a.bin").write_bytes(b"0123456789")
        server = FileServer(tmp_path)

        with trio.fail_after(LIMIT):
            async with trio.open_nursery() as nursery:
                port = await nursery.start(server.run)
                async with httpx.AsyncClient() as client:
                    full = await client.get(server.url("a.bin"))
                    part = await client.get(
                        server.url("a.bin"), headers={"Range": "bytes=4-"}
                    )
                    past = await client.get(
                        server.url("a.bin"), headers={"Range": "bytes=10-"}
                    )
                    missing = await client.get(server.url("b.bin"))
                nursery.cancel_scope.cancel()

        assert port == server.port
        assert (full.status_code, full.content) == (200, b"0123456789")
        assert (part.status_code, part.content) == (206, b"456789")
        assert part.headers["Content-Range"] == "bytes 4-9/10"
        assert past.status_code == 416
        assert missing.status_code == 404
