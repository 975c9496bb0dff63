"""LwM2M firmware update (backends.lwm2m_fota) through the object store.

The server's operations are the ``ObjectStore``'s (``write``, ``execute``),
as the LwM2M client would call them for a CoAP request; the images come
from ``sandbox.files`` over HTTPS with a certificate of the test CA and go
into a real ``FirmwareStore``.  A reboot is what ``tracker.service`` does at
boot: a new ``FirmwareStore`` on the same directory, ``activate_pending``,
then a new object store and object.  Real sockets, so no autojump except in
the one test without network; every wait is bounded by ``fail_after``.
"""

from __future__ import annotations

import math
import sqlite3
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path as FilePath
from typing import Any

import attrs
import pytest
import trio
from structlog.testing import capture_logs

from backends.lwm2m_fota import (
    STATE_FILE,
    STATUS_KEY,
    UPDATE_DELAY,
    FirmwareUpdateObject,
    Result,
    State,
    check_uri,
    package_version,
)
from protocols import wrapper as wrap
from protocols.lwm2m_formats import Path, Record
from protocols.lwm2m_objects import BadRequest, MethodNotAllowed, ObjectStore
from sandbox.files import FileServer
from state.firmware import FirmwareStore
from tests.mosquitto import Pki, free_loopback_port
from tests.test_aws_backend import Events

LIMIT = 15.0
"""Real-time bound of each test, in seconds."""

WAIT = 10.0
"""Real-time bound of one wait."""

# The version the device runs before any update.
RUNNING = "1.0.0"
# The image served and pushed: 100 KiB, every byte value.
IMAGE = bytes(range(256)) * 400
# Its file name on the server (PkgName; the version 1.0.1 comes from it).
NAME = "app-1.0.1.bin"

# Object 5's resources the tests drive and watch.
PACKAGE = "/5/0/0"
URI = "/5/0/1"
UPDATE = "/5/0/2"
STATE = "/5/0/3"
RESULT = "/5/0/5"


@attrs.define(eq=False)
class Observer:
    """Every value of State and Update Result the store reported, in order."""

    objects: ObjectStore
    states: list[int] = attrs.field(factory=list)
    results: list[int] = attrs.field(factory=list)
    _send: trio.MemorySendChannel[None] = attrs.field(init=False)
    _recv: trio.MemoryReceiveChannel[None] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        # Test bookkeeping only: unbounded so the store's hook never blocks.
        self._send, self._recv = trio.open_memory_channel[None](math.inf)
        self.objects.on_change(self._on_change)

    def _on_change(self, paths: list[Path]) -> None:
        names = {str(p) for p in paths}
        if STATE in names:
            self.states.append(self.objects.get(STATE))  # type: ignore[arg-type]
        if RESULT in names:
            self.results.append(self.objects.get(RESULT))  # type: ignore[arg-type]
        self._send.send_nowait(None)

    async def wait_state(self, state: State, *, limit: float = WAIT) -> None:
        """Until State holds ``state``."""
        with trio.fail_after(limit):
            while self.objects.get(STATE) != state:
                await self._recv.receive()


def write(objects: ObjectStore, path: str, value: Any) -> None:
    """A server Write (CoAP PUT) of one resource."""
    objects.write(path, [Record(Path.parse(path), value)], replace=True)


@attrs.define(eq=False)
class Rig:
    objects: ObjectStore
    firmware: FirmwareStore
    fota: FirmwareUpdateObject
    events: Events
    observer: Observer
    server: FileServer

    def publish(self, name: str, data: bytes) -> None:
        (self.server.directory / name).write_bytes(data)

    def value(self, path: str) -> Any:
        return self.objects.get(path)


@asynccontextmanager
async def fota_rig(
    pki: Pki, tmp_path: FilePath, **options: Any
) -> AsyncIterator[Rig]:
    """A running object 5 on a fresh device and an HTTPS file server."""
    files = tmp_path / "files"
    files.mkdir(exist_ok=True)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    pki.ca.issue_cert("127.0.0.1").configure_cert(server_context)
    server = FileServer(files, server_context)
    firmware = FirmwareStore(tmp_path / "firmware", default_version=RUNNING)
    objects = ObjectStore()
    observer = Observer(objects)
    events = Events()
    settings: dict[str, Any] = {
        "ca_file": pki.ca_file,
        "retry_delay": 0.01,
        "http_timeout": 5.0,
        "update_delay": 0.0,
    }
    settings.update(options)
    fota = FirmwareUpdateObject(objects, firmware, events.emit, **settings)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        await nursery.start(fota.run)
        yield Rig(objects, firmware, fota, events, observer, server)
        nursery.cancel_scope.cancel()


@attrs.define(eq=False)
class Boot:
    """The device after a reboot: what the service builds at boot."""

    firmware: FirmwareStore
    objects: ObjectStore
    fota: FirmwareUpdateObject
    events: Events
    activated: str | None


def reboot(tmp_path: FilePath, *, activate: bool = True) -> Boot:
    """The bootloader's part (``Service._boot``), then a new object 5."""
    firmware = FirmwareStore(tmp_path / "firmware", default_version=RUNNING)
    activated = firmware.activate_pending() if activate else None
    objects = ObjectStore()
    events = Events()
    fota = FirmwareUpdateObject(objects, firmware, events.emit, update_delay=0.0)
    return Boot(firmware, objects, fota, events, activated)


async def boot_events(boot: Boot) -> list[wrap.WrapperEvent]:
    """What ``run`` emits when it starts (events the last boot left)."""
    async with trio.open_nursery() as nursery:
        await nursery.start(boot.fota.run)
        nursery.cancel_scope.cancel()
    return list(boot.events.seen)


async def download(rig: Rig, name: str = NAME, data: bytes = IMAGE) -> None:
    rig.publish(name, data)
    write(rig.objects, URI, rig.server.url(name))
    await rig.observer.wait_state(State.DOWNLOADED)


def saved(tmp_path: FilePath) -> dict[str, Any]:
    """The object's state as committed to the state database."""
    firmware = FirmwareStore(tmp_path / "firmware")
    try:
        result = firmware.load_status(STATUS_KEY)
    finally:
        firmware.close()
    assert result is not None
    return result


class TestResources:
    def test_fresh_object(self, tmp_path: FilePath) -> None:
        """Idle, initial result, HTTP and HTTPS, pull and push; no file yet."""
        boot = reboot(tmp_path)

        assert boot.objects.get(STATE) == 0
        assert boot.objects.get(RESULT) == 0
        assert boot.objects.get("/5/0/8") == {0: 2, 1: 3}
        assert boot.objects.get("/5/0/9") == 2
        assert boot.objects.get("/5/0/6") == ""
        assert boot.firmware.load_status(STATUS_KEY) is None
        assert not (tmp_path / "state.db").exists()

    def test_package_is_write_only(self, tmp_path: FilePath) -> None:
        """The server cannot read Package (the store refuses, 4.05)."""
        boot = reboot(tmp_path)

        with pytest.raises(MethodNotAllowed):
            boot.objects.read(PACKAGE)


class TestPull:
    async def test_download_update_reboot_success(
        self, mqtt_pki: Pki, tmp_path: FilePath
    ) -> None:
        """URI: 1 then 2; Update: 3, FOTA_DONE; next boot: result 1, state 0."""
        with trio.fail_after(LIMIT):
            async with fota_rig(mqtt_pki, tmp_path) as rig:
                await download(rig)

                assert rig.observer.states == [1, 2]
                assert rig.value(RESULT) == 0
                assert rig.value("/5/0/6") == NAME
                assert rig.value("/5/0/7") == "1.0.1"
                assert rig.events.of(wrap.WrapperFotaStart)
                assert not rig.events.of(wrap.WrapperFotaError)
                # Downloaded is not yet pending: only Update makes it so.
                assert rig.firmware.pending is None
                assert rig.firmware.staging_file.read_bytes() == IMAGE

                rig.objects.execute(UPDATE)

                assert rig.value(STATE) == 3
                await rig.events.wait_for(wrap.WrapperFotaDone)
                assert rig.firmware.pending == "1.0.1"
                assert rig.observer.states == [1, 2, 3]
                assert saved(tmp_path)["state"] == 3

        boot = reboot(tmp_path)

        assert boot.activated == "1.0.1"
        assert boot.objects.get(RESULT) == 1
        assert boot.objects.get(STATE) == 0
        assert boot.objects.get("/5/0/7") == "1.0.1"
        assert await boot_events(boot) == []
        # The cloud actor's set-up confirms the image, as on the MQTT path.
        assert not boot.firmware.confirmed
        boot.firmware.confirm()

        again = reboot(tmp_path)

        assert again.activated is None
        assert again.firmware.running_version == "1.0.1"
        assert again.objects.get(RESULT) == 1
        assert saved(tmp_path)["verify"] == ""
        assert await boot_events(again) == []

    async def test_broken_download_resumes(
        self, mqtt_pki: Pki, tmp_path: FilePath
    ) -> None:
        """A connection cut mid-body: a Range request for the rest; intact."""
        with trio.fail_after(LIMIT):
            async with fota_rig(mqtt_pki, tmp_path) as rig:
                rig.server.cuts[NAME] = [30_000]

                await download(rig)

                assert rig.server.requests == [
                    (f"/{NAME}", None),
                    (f"/{NAME}", "bytes=30000-"),
                ]
                assert rig.firmware.staging_file.read_bytes() == IMAGE
                assert rig.value(RESULT) == 0

    async def test_plain_http(self, tmp_path: FilePath) -> None:
        """http:// works too (no CA needed)."""
        files = tmp_path / "files"
        files.mkdir()
        (files / NAME).write_bytes(IMAGE)
        server = FileServer(files)
        firmware = FirmwareStore(tmp_path / "firmware", default_version=RUNNING)
        objects = ObjectStore()
        observer = Observer(objects)
        fota = FirmwareUpdateObject(objects, firmware, Events().emit)
        with trio.fail_after(LIMIT):
            async with trio.open_nursery() as nursery:
                await nursery.start(server.run)
                await nursery.start(fota.run)

                write(objects, URI, server.url(NAME))
                await observer.wait_state(State.DOWNLOADED)

                assert firmware.staging_file.read_bytes() == IMAGE
                nursery.cancel_scope.cancel()


class TestPullFailures:
    async def _fails(
        self, rig: Rig, uri: str, result: Result
    ) -> None:
        write(rig.objects, URI, uri)
        await rig.events.wait_for(wrap.WrapperFotaError)

        assert rig.value(STATE) == 0
        assert rig.value(RESULT) == result
        assert rig.observer.states == [1, 0]
        assert rig.observer.results == [result]
        assert [type(e) for e in rig.events.seen] == [
            wrap.WrapperFotaStart,
            wrap.WrapperFotaError,
        ]
        assert rig.firmware.staged_size() == 0
        assert rig.firmware.pending is None

    @pytest.mark.parametrize(
        "uri",
        ["not a uri", "http://", "https:///fw.bin", "http://h:99999/x",
         "https://host/a b", "https://[::1/fw.bin", "//host/fw.bin"],
    )  # fmt: skip
    async def test_invalid_uri(
        self, mqtt_pki: Pki, tmp_path: FilePath, uri: str
    ) -> None:
        """Not an absolute http(s) URI with a host: result 7."""
        with trio.fail_after(LIMIT):
            async with fota_rig(mqtt_pki, tmp_path) as rig:
                await self._fails(rig, uri, Result.INVALID_URI)

                assert rig.server.requests == []

    @pytest.mark.parametrize(
        "uri",
        ["coap://127.0.0.1/fw.bin", "coaps://127.0.0.1/fw.bin", "ftp://h/fw"],
    )
    async def test_unsupported_protocol(
        self, mqtt_pki: Pki, tmp_path: FilePath, uri: str
    ) -> None:
        """CoAP(S) and anything but HTTP(S): result 9."""
        with trio.fail_after(LIMIT):
            async with fota_rig(mqtt_pki, tmp_path) as rig:
                await self._fails(rig, uri, Result.UNSUPPORTED_PROTOCOL)

    async def test_not_found(self, mqtt_pki: Pki, tmp_path: FilePath) -> None:
        """404: the URI names no package, result 7 (as AVSystem's client)."""
        with trio.fail_after(LIMIT):
            async with fota_rig(mqtt_pki, tmp_path) as rig:
                missing = rig.server.url("missing.bin")
                await self._fails(rig, missing, Result.INVALID_URI)

                assert rig.server.requests == [("/missing.bin", None)]

    async def test_connection_refused(
        self, mqtt_pki: Pki, tmp_path: FilePath
    ) -> None:
        """Nobody listening, every retry: result 4, connection lost."""
        port = free_loopback_port()
        with trio.fail_after(LIMIT):
            async with fota_rig(mqtt_pki, tmp_path, download_retries=2) as rig:
                await self._fails(
                    rig, f"https://127.0.0.1:{port}/{NAME}", Result.CONNECTION_LOST
                )

    async def test_untrusted_server(
        self, mqtt_pki: Pki, tmp_path: FilePath
    ) -> None:
        """A server certificate the CA file does not vouch for: result 4."""
        (tmp_path / "other").mkdir()
        other = Pki(tmp_path / "other")
        with trio.fail_after(LIMIT):
            async with fota_rig(
                mqtt_pki, tmp_path, ca_file=other.ca_file, download_retries=0
            ) as rig:
                rig.publish(NAME, IMAGE)
                await self._fails(rig, rig.server.url(NAME), Result.CONNECTION_LOST)

    async def test_cut_until_retries_run_out(
        self, mqtt_pki: Pki, tmp_path: FilePath
    ) -> None:
        """Cut three times with two retries: result 4, staging dropped."""
        with trio.fail_after(LIMIT):
            async with fota_rig(mqtt_pki, tmp_path, download_retries=2) as rig:
                rig.publish(NAME, IMAGE)
                rig.server.cuts[NAME] = [1000, 1000, 1000]

                await self._fails(rig, rig.server.url(NAME), Result.CONNECTION_LOST)

                assert len(rig.server.requests) == 3

    @pytest.mark.parametrize(
        ("first", "second"), [(None, 50_000), (50_000, None)], ids=["shrank", "grew"]
    )
    async def test_image_changed_between_requests(
        self, mqtt_pki: Pki, tmp_path: FilePath, first: int | None, second: int | None
    ) -> None:
        """The resumed response has another size: integrity, result 5."""
        with trio.fail_after(LIMIT):
            async with fota_rig(mqtt_pki, tmp_path) as rig:
                rig.publish(NAME, IMAGE)
                rig.server.cuts[NAME] = [30_000]
                sizes = rig.server.truncate_to

                def resize() -> None:
                    sizes.pop(NAME, None)
                    if second is not None:
                        sizes[NAME] = second

                if first is not None:
                    sizes[NAME] = first
                rig.server.requests = _OnSecond(resize)

                await self._fails(
                    rig, rig.server.url(NAME), Result.INTEGRITY_FAILURE
                )

                assert [r for _, r in rig.server.requests] == [None, "bytes=30000-"]

    async def test_empty_image(self, mqtt_pki: Pki, tmp_path: FilePath) -> None:
        """A package of no bytes: integrity, result 5."""
        with trio.fail_after(LIMIT):
            async with fota_rig(mqtt_pki, tmp_path) as rig:
                rig.publish("empty.bin", b"")

                await self._fails(
                    rig, rig.server.url("empty.bin"), Result.INTEGRITY_FAILURE
                )

    async def test_larger_than_the_slot(
        self, mqtt_pki: Pki, tmp_path: FilePath
    ) -> None:
        """An image above max_size: result 2 (not enough flash), no body read."""
        with trio.fail_after(LIMIT):
            async with fota_rig(mqtt_pki, tmp_path, max_size=len(IMAGE) - 1) as rig:
                rig.publish(NAME, IMAGE)

                await self._fails(rig, rig.server.url(NAME), Result.NOT_ENOUGH_FLASH)

    async def test_new_download_after_a_failure(
        self, mqtt_pki: Pki, tmp_path: FilePath
    ) -> None:
        """After result 4 the object is Idle: the next URI downloads."""
        with trio.fail_after(LIMIT):
            async with fota_rig(mqtt_pki, tmp_path) as rig:
                await self._fails(
                    rig, rig.server.url("missing.bin"), Result.INVALID_URI
                )

                await download(rig)

                assert rig.value(RESULT) == 0
                assert rig.observer.states == [1, 0, 1, 2]


class _OnSecond(list[tuple[str, str | None]]):
    """A request log that runs ``hook`` when the second request comes in.

    The file server appends before it reads the file, so the hook changes
    what the second request gets, with no race.
    """

    def __init__(self, hook: Callable[[], None]) -> None:
        super().__init__()
        self._hook = hook

    def append(self, item: tuple[str, str | None]) -> None:
        super().append(item)
        if len(self) == 2:
            self._hook()


class TestRefusals:
    async def test_update_in_idle(self, mqtt_pki: Pki, tmp_path: FilePath) -> None:
        """Execute Update with nothing downloaded: 4.05; nothing changes."""
        with trio.fail_after(LIMIT):
            async with fota_rig(mqtt_pki, tmp_path) as rig:
                with pytest.raises(MethodNotAllowed) as caught:
                    rig.objects.execute(UPDATE)

                assert caught.value.code == "4.05"
                assert rig.value(STATE) == 0
                assert rig.events.seen == []
                assert rig.observer.states == []

    async def test_while_downloading(
        self, mqtt_pki: Pki, tmp_path: FilePath
    ) -> None:
        """Another URI or Update: 4.05; an empty URI cancels to Idle."""
        with trio.fail_after(LIMIT):
            async with fota_rig(mqtt_pki, tmp_path) as rig:
                rig.publish(NAME, IMAGE)
                rig.server.stalls[NAME] = [1000]
                write(rig.objects, URI, rig.server.url(NAME))
                await rig.server.stalled.wait()

                with pytest.raises(MethodNotAllowed):
                    write(rig.objects, URI, rig.server.url("other.bin"))
                with pytest.raises(MethodNotAllowed):
                    write(rig.objects, PACKAGE, b"pushed")
                with pytest.raises(MethodNotAllowed):
                    rig.objects.execute(UPDATE)
                # A refused write leaves the URI as it was.
                assert rig.value(URI) == rig.server.url(NAME)
                assert rig.value(STATE) == 1

                write(rig.objects, URI, "")

                assert rig.value(STATE) == 0
                assert rig.value(RESULT) == 0
                assert rig.firmware.staged_size() == 0
                await download(rig, "other.bin")
                assert rig.firmware.staging_file.read_bytes() == IMAGE
                assert not rig.events.of(wrap.WrapperFotaError)

    async def test_while_downloaded(
        self, mqtt_pki: Pki, tmp_path: FilePath
    ) -> None:
        """A new package: 4.00; the empty URI resets to Idle, result 0."""
        with trio.fail_after(LIMIT):
            async with fota_rig(mqtt_pki, tmp_path) as rig:
                await download(rig)

                with pytest.raises(BadRequest):
                    write(rig.objects, URI, rig.server.url(NAME))
                with pytest.raises(BadRequest):
                    write(rig.objects, PACKAGE, b"pushed")
                assert rig.value(STATE) == 2

                write(rig.objects, URI, "")

                assert rig.value(STATE) == 0
                assert rig.firmware.staged_size() == 0
                with pytest.raises(MethodNotAllowed):
                    rig.objects.execute(UPDATE)

    async def test_while_updating(self, mqtt_pki: Pki, tmp_path: FilePath) -> None:
        """Nothing but the reboot ends Updating: writes and Update get 4.05."""
        with trio.fail_after(LIMIT):
            async with fota_rig(mqtt_pki, tmp_path, update_delay=3600) as rig:
                await download(rig)
                rig.objects.execute(UPDATE)

                attempts: list[Callable[[], None]] = [
                    lambda: write(rig.objects, URI, ""),
                    lambda: write(rig.objects, PACKAGE, b"\0"),
                    lambda: rig.objects.execute(UPDATE),
                ]
                for attempt in attempts:
                    with pytest.raises(MethodNotAllowed):
                        attempt()
                assert rig.value(STATE) == 3

    def test_package_and_uri_together(self, tmp_path: FilePath) -> None:
        """Push and pull in one write: 4.00, and the write is undone."""
        boot = reboot(tmp_path)
        records = [
            Record(Path(5, 0, 0), b"image"),
            Record(Path(5, 0, 1), "https://127.0.0.1/a.bin"),
        ]

        with pytest.raises(BadRequest):
            boot.objects.write("/5/0", records, replace=False)

        assert boot.objects.get(URI) == ""
        assert boot.objects.get(STATE) == 0


class TestPush:
    async def test_push_update_reboot_success(
        self, mqtt_pki: Pki, tmp_path: FilePath
    ) -> None:
        """Package written: 1 then 2, staged; Update; next boot: result 1."""
        with trio.fail_after(LIMIT):
            async with fota_rig(mqtt_pki, tmp_path) as rig:
                write(rig.objects, PACKAGE, IMAGE)
                await rig.observer.wait_state(State.DOWNLOADED)

                assert rig.observer.states == [1, 2]
                assert rig.firmware.staging_file.read_bytes() == IMAGE
                version = rig.value("/5/0/7")
                assert version.startswith("0.0.0+sha256.")
                assert rig.events.of(wrap.WrapperFotaStart)

                rig.objects.execute(UPDATE)
                await rig.events.wait_for(wrap.WrapperFotaDone)

                assert rig.firmware.pending == version

        boot = reboot(tmp_path)

        assert boot.activated == version
        assert boot.firmware.running_image is not None
        assert boot.firmware.running_image.read_bytes() == IMAGE
        assert boot.objects.get(RESULT) == 1
        assert boot.objects.get(STATE) == 0

    async def test_zero_byte_resets(self, mqtt_pki: Pki, tmp_path: FilePath) -> None:
        """A single zero byte in Downloaded resets to Idle."""
        with trio.fail_after(LIMIT):
            async with fota_rig(mqtt_pki, tmp_path) as rig:
                write(rig.objects, PACKAGE, IMAGE)
                await rig.observer.wait_state(State.DOWNLOADED)

                write(rig.objects, PACKAGE, b"\0")

                assert rig.value(STATE) == 0
                assert rig.firmware.staged_size() == 0

    async def test_too_large(self, mqtt_pki: Pki, tmp_path: FilePath) -> None:
        """A pushed package above max_size: result 2."""
        with trio.fail_after(LIMIT):
            async with fota_rig(mqtt_pki, tmp_path, max_size=1000) as rig:
                write(rig.objects, PACKAGE, IMAGE)
                await rig.events.wait_for(wrap.WrapperFotaError)

                assert rig.value(RESULT) == Result.NOT_ENOUGH_FLASH
                assert rig.value(STATE) == 0

    async def test_reboot_waits_for_the_update_delay(
        self, tmp_path: FilePath, autojump_clock: trio.abc.Clock
    ) -> None:
        """FOTA_DONE comes 5 s after the Update execute, as in the firmware."""
        firmware = FirmwareStore(tmp_path / "firmware", default_version=RUNNING)
        objects = ObjectStore()
        observer = Observer(objects)
        events = Events()
        fota = FirmwareUpdateObject(objects, firmware, events.emit)
        async with trio.open_nursery() as nursery:
            await nursery.start(fota.run)
            write(objects, PACKAGE, IMAGE)
            # No fail_after here: autojump would fire it while the staging
            # thread runs.
            await observer.wait_state(State.DOWNLOADED, limit=math.inf)
            start = trio.current_time()

            objects.execute(UPDATE)
            await events.wait_for(wrap.WrapperFotaDone, limit=math.inf)

            assert trio.current_time() - start == pytest.approx(UPDATE_DELAY)
            nursery.cancel_scope.cancel()


class TestBoot:
    async def _updated(self, pki: Pki, tmp_path: FilePath) -> None:
        """Push an image and execute Update, up to FOTA_DONE."""
        async with fota_rig(pki, tmp_path) as rig:
            write(rig.objects, PACKAGE, IMAGE)
            await rig.observer.wait_state(State.DOWNLOADED)
            rig.objects.execute(UPDATE)
            await rig.events.wait_for(wrap.WrapperFotaDone)

    async def test_reverted_image_is_update_failed(
        self, mqtt_pki: Pki, tmp_path: FilePath
    ) -> None:
        """Booted once, never confirmed, reverted: result 8 and FOTA_ERROR."""
        with trio.fail_after(LIMIT):
            await self._updated(mqtt_pki, tmp_path)
            first = reboot(tmp_path)
            assert first.objects.get(RESULT) == 1

            second = reboot(tmp_path)

            assert second.activated == RUNNING
            assert second.objects.get(RESULT) == 8
            assert second.objects.get(STATE) == 0
            events = await boot_events(second)
            assert [type(e) for e in events] == [wrap.WrapperFotaError]

    async def test_image_not_activated_is_update_failed(
        self, mqtt_pki: Pki, tmp_path: FilePath
    ) -> None:
        """Updating at boot but the old image runs: result 8."""
        with trio.fail_after(LIMIT):
            await self._updated(mqtt_pki, tmp_path)

            boot = reboot(tmp_path, activate=False)

            assert boot.objects.get(RESULT) == 8
            assert boot.objects.get(STATE) == 0

    async def test_downloaded_survives_a_reboot(
        self, mqtt_pki: Pki, tmp_path: FilePath
    ) -> None:
        """Downloaded with the staged image intact stays Downloaded."""
        with trio.fail_after(LIMIT):
            async with fota_rig(mqtt_pki, tmp_path) as rig:
                await download(rig)

            boot = reboot(tmp_path)

            assert boot.objects.get(STATE) == 2
            assert boot.objects.get("/5/0/7") == "1.0.1"
            boot.objects.execute(UPDATE)
            assert boot.objects.get(STATE) == 3

    async def test_downloaded_but_staging_lost(
        self, mqtt_pki: Pki, tmp_path: FilePath
    ) -> None:
        """Downloaded, but the staged file changed: Idle, result 5."""
        with trio.fail_after(LIMIT):
            async with fota_rig(mqtt_pki, tmp_path) as rig:
                await download(rig)
            rig.firmware.staging_file.write_bytes(b"x" * len(IMAGE))

            boot = reboot(tmp_path)

            assert boot.objects.get(STATE) == 0
            assert boot.objects.get(RESULT) == 5

    async def test_downloading_becomes_idle(
        self, mqtt_pki: Pki, tmp_path: FilePath
    ) -> None:
        """A reboot mid-download: Idle, result 0, partial download dropped."""
        with trio.fail_after(LIMIT):
            async with fota_rig(mqtt_pki, tmp_path) as rig:
                rig.publish(NAME, IMAGE)
                rig.server.stalls[NAME] = [1000]
                write(rig.objects, URI, rig.server.url(NAME))
                await rig.server.stalled.wait()
                assert saved(tmp_path)["state"] == 1

            boot = reboot(tmp_path)

            assert boot.objects.get(STATE) == 0
            assert boot.objects.get(RESULT) == 0
            assert boot.firmware.staged_size() == 0
            assert await boot_events(boot) == []

    @pytest.mark.parametrize(
        ("content", "named"),
        [
            (b"{not json", STATE_FILE),
            (b"[]", STATE_FILE),
            (b"\xff\xfe", STATE_FILE),
            # A JSON object is imported; the object refuses the row.
            (b'{"format": 1, "state": 7}', f"fota_status '{STATUS_KEY}'"),
        ],
    )
    def test_unusable_legacy_state_file(
        self, tmp_path: FilePath, content: bytes, named: str
    ) -> None:
        """A corrupt state file of an older release: logged by name, Idle."""
        directory = tmp_path / "firmware"
        directory.mkdir()
        (directory / STATE_FILE).write_bytes(content)

        with capture_logs() as logs:
            boot = reboot(tmp_path)

        assert boot.objects.get(STATE) == 0
        problems = [e for e in logs if e["log_level"] == "error"]
        assert problems
        assert named in str(problems[0])
        assert not (directory / STATE_FILE).exists()

    @pytest.mark.parametrize(
        "body", ["{not json", "[]", '{"format": 1, "state": 7}', '{"format": 2}']
    )
    def test_unusable_saved_state(self, tmp_path: FilePath, body: str) -> None:
        """A corrupt row: logged naming the database and key, Idle, no crash."""
        firmware = FirmwareStore(tmp_path / "firmware")
        firmware.save_status(STATUS_KEY, {"format": 1})
        with sqlite3.connect(firmware.database_file) as db:
            db.execute("UPDATE fota_status SET body = ?", (body,))

        with capture_logs() as logs:
            boot = reboot(tmp_path)

        assert boot.objects.get(STATE) == 0
        assert boot.objects.get(RESULT) == 0
        problems = [e for e in logs if e["log_level"] == "error"]
        assert problems
        where = f"{firmware.database_file}: fota_status '{STATUS_KEY}'"
        assert where in str(problems[0])

    def test_unwritable_database_is_logged(self, tmp_path: FilePath) -> None:
        """The state cannot be committed: logged, the object goes on."""
        boot = reboot(tmp_path)
        # A directory where the database belongs: it cannot be opened.
        (tmp_path / "state.db").mkdir()

        with capture_logs() as logs:
            write(boot.objects, URI, "ftp://example.com/app.bin")

        assert boot.objects.get(STATE) == 1
        assert any(e["event"] == "fota_state_not_saved" for e in logs)


class TestHelpers:
    @pytest.mark.parametrize(
        ("name", "version"),
        [
            ("app-1.0.1.bin", "1.0.1"),
            ("fw-v2.3.4-rc1.bin", "2.3.4-rc1"),
            ("asset_tracker_v2_1.10.0+build7.hex", "1.10.0+build7"),
        ],
    )
    def test_version_from_the_name(self, name: str, version: str) -> None:
        """The version in the package's file name."""
        assert package_version(name, "ab" * 32) == version

    def test_version_from_the_digest(self) -> None:
        """No version in the name: one made of the digest."""
        assert package_version("app_update.bin", "0123456789ab" + "0" * 52) == (
            "0.0.0+sha256.0123456789ab"
        )

    @pytest.mark.parametrize("uri", ["https://h/fw.bin", "HTTP://h:8080/a/b?c=d"])
    def test_accepted_uris(self, uri: str) -> None:
        """Absolute HTTP(S) URIs with a host."""
        assert check_uri(uri) in ("http", "https")
