"""LwM2M FOTA through the local cloud, end to end, with a whole ``Service``.

Design note: these tests drive the device only from the server side, as an
LwM2M operator would.  The service runs with ``[cloud.local] cloud =
"lwm2m"``: the device registers over CoAP/DTLS with the local LwM2M server
and downloads the package over HTTPS from the local file server (it trusts
the local CA).  The server writes the Package URI (/5/0/1), observes the
State (/5/0/3) until Downloaded, executes Update (/5/0/2) and, after the
device has rebooted and registered again, reads State and Update Result
(/5/0/5).  The firmware store (``service.firmware``) is the host's stand-in
for the bootloader's slots, so it tells which image runs and whether the
cloud actor confirmed it.

Real sockets on loopback, free ports and the real clock, every wait bounded
by ``fail_after`` (no autojump: the peers are real).  The Update execute
waits ``UPDATE_DELAY`` (5 s) before it asks for the reboot, as the firmware
does, so the update test takes about seven seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import trio

from backends.lwm2m_fota import UPDATE_DELAY, Result, State
from protocols.app import ShutdownReason
from protocols.lwm2m_formats import Path as LwPath
from protocols.lwm2m_formats import Record
from sandbox.lwm2m_server import LocalLwm2mServer, Observation
from tracker.config import Config, parse_config
from tracker.service import Service

# The device's IMEI (the configuration's default) and its endpoint name.
IMEI = "352656100000010"
ENDPOINT = f"urn:imei:{IMEI}"
# The package's file name; object 5 takes the version from it.
PACKAGE_NAME = "app-1.0.1.bin"
PACKAGE_VERSION = "1.0.1"
# Some kilobytes of image: several reads for the HTTPS download.
IMAGE = bytes(range(256)) * 40
# Object 5's resources the tests use.
PACKAGE_URI = "/5/0/1"
UPDATE = "/5/0/2"
STATE = "/5/0/3"
UPDATE_RESULT = "/5/0/5"
PKG_NAME = "/5/0/6"
PKG_VERSION = "/5/0/7"
# The Server object's Registration Update Trigger.
UPDATE_TRIGGER = "/1/0/8"
# Seconds for a boot to register with the server (DTLS handshake included).
REGISTER_LIMIT = 10
# Seconds for a small download over loopback to end in a state change.
DOWNLOAD_LIMIT = 10
# Seconds for the whole update test: two boots, the download, the Update
# delay and the reboot; well above the ~7 s it takes.
UPDATE_TEST_LIMIT = 35
# Seconds for the whole failed-download test.
FAILED_TEST_LIMIT = 20
# Seconds for the service to stop through the shutdown protocol.
STOP_LIMIT = 10


def lwm2m_config(state_directory: Path) -> Config:
    """The service on the local cloud's LwM2M face, free ports, quick attach."""
    return parse_config(
        f"""
[cloud.local]
cloud = "lwm2m"
mqtt_port = 0
http_port = 0
lwm2m_port = 0
coap_port = 0
[modem]
attach_delay = 0.1
[util]
ack_reboot_delay = 1
[state]
directory = "{state_directory}"
"""
    )


async def wait_until(predicate: Callable[[], bool], poll: float = 0.05) -> None:
    """Poll ``predicate`` in real time (callers bound it with fail_after)."""
    while not predicate():  # noqa: ASYNC110 - the state is not ours to signal
        await trio.sleep(poll)


async def read_value(server: LocalLwm2mServer, path: str) -> object:
    """The value of the single resource ``path``, read by the server."""
    [record] = await server.read(ENDPOINT, path)
    assert str(record.path) == path
    return record.value


async def wait_for_state(
    observation: Observation, wanted: State, seen: list[int]
) -> None:
    """Take notifications of /5/0/3 until it is ``wanted``; ``seen`` gets each.

    Raises:
      AssertionError: the observation ended first.
    """
    async for records in observation.notifications:
        for record in records:
            if str(record.path) == STATE:
                assert isinstance(record.value, int)
                seen.append(record.value)
                if record.value == wanted:
                    return
    raise AssertionError(f"the observation of {STATE} ended; states {seen}")


async def stop(service: Service) -> None:
    """Stop the service through its shutdown protocol and wait for it."""
    service.request_stop()
    with trio.fail_after(STOP_LIMIT):
        await wait_until(lambda: service.stopped_by is not None)


class TestLwm2mFotaThroughTheLocalCloud:
    async def test_package_uri_update_reboots_into_the_new_image(
        self, tmp_path: Path
    ) -> None:
        """Write URI, Downloaded, execute Update, reboot: 1.0.1 runs, result 1."""
        service = Service(lwm2m_config(tmp_path / "state"))
        before = service.firmware.running_version
        with trio.fail_after(UPDATE_TEST_LIMIT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(service.run)
                await service.local_ready.wait()
                cloud = service.local_cloud
                assert cloud is not None and cloud.lwm2m is not None
                assert cloud.endpoints is not None
                server = cloud.lwm2m
                (cloud.endpoints.files_directory / PACKAGE_NAME).write_bytes(IMAGE)
                uri = cloud.endpoints.file_url(PACKAGE_NAME)
                with trio.fail_after(REGISTER_LIMIT):
                    first = await server.wait_for("registered", ENDPOINT)

                observation = await server.observe(ENDPOINT, STATE)
                initial_state = [r.value for r in observation.initial]
                write_code = await server.write(
                    ENDPOINT, PACKAGE_URI, [Record(LwPath.parse(PACKAGE_URI), uri)]
                )
                states: list[int] = []
                with trio.fail_after(DOWNLOAD_LIMIT):
                    await wait_for_state(observation, State.DOWNLOADED, states)
                downloaded_name = await read_value(server, PKG_NAME)
                downloaded_version = await read_value(server, PKG_VERSION)
                # The image waits in staging: nothing changes before Update.
                staged_running = service.firmware.running_version

                since = server.next_seq
                execute_code = await server.execute(ENDPOINT, UPDATE)
                # The firmware waits UPDATE_DELAY, then the util actor's
                # shutdown (ack_reboot_delay 1 s) reboots the device.
                with trio.fail_after(UPDATE_DELAY + REGISTER_LIMIT):
                    again = await server.wait_for("registered", ENDPOINT, since=since)
                reboots = list(service.reboots)
                # The cloud actor confirms the image at its set-up, before
                # it registers; wait for it rather than assume the order.
                with trio.fail_after(REGISTER_LIMIT):
                    await wait_until(lambda: service.firmware.confirmed)
                state_after = await read_value(server, STATE)
                result_after = await read_value(server, UPDATE_RESULT)
                version_after = await read_value(server, PKG_VERSION)
                registered_after = ENDPOINT in server.registrations
                await stop(service)

        assert before != PACKAGE_VERSION
        assert initial_state == [State.IDLE]
        assert write_code == "2.04"
        assert states[-1] == State.DOWNLOADED, states
        assert set(states) <= {State.DOWNLOADING, State.DOWNLOADED}, states
        assert (downloaded_name, downloaded_version) == (PACKAGE_NAME, PACKAGE_VERSION)
        assert staged_running == before
        assert execute_code == "2.04"
        # One reboot, asked for by the FOTA, and a new registration.
        assert [r.reason for r in reboots] == [ShutdownReason.FOTA_UPDATE]
        assert again.registration is not None and first.registration is not None
        assert again.registration.location != first.registration.location
        # The new image runs, confirmed, and the server sees success.
        assert service.firmware.running_version == PACKAGE_VERSION
        assert service.firmware.confirmed
        assert (state_after, result_after) == (State.IDLE, Result.SUCCESS)
        assert version_after == PACKAGE_VERSION
        assert registered_after

    async def test_missing_package_fails_with_invalid_uri(self, tmp_path: Path) -> None:
        """A URI the file server answers 404: result 7, Idle, still registered."""
        service = Service(lwm2m_config(tmp_path / "state"))
        before = service.firmware.running_version
        with trio.fail_after(FAILED_TEST_LIMIT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(service.run)
                await service.local_ready.wait()
                cloud = service.local_cloud
                assert cloud is not None and cloud.lwm2m is not None
                assert cloud.endpoints is not None
                server = cloud.lwm2m
                uri = cloud.endpoints.file_url("app-9.9.9.bin")
                assert not (cloud.endpoints.files_directory / "app-9.9.9.bin").exists()
                with trio.fail_after(REGISTER_LIMIT):
                    first = await server.wait_for("registered", ENDPOINT)

                write_code = await server.write(
                    ENDPOINT, PACKAGE_URI, [Record(LwPath.parse(PACKAGE_URI), uri)]
                )

                async def result_is_set() -> object:
                    """Poll /5/0/5 until the download has ended."""
                    while True:
                        result = await read_value(server, UPDATE_RESULT)
                        if result != Result.INITIAL:
                            return result
                        await trio.sleep(0.1)

                with trio.fail_after(DOWNLOAD_LIMIT):
                    result = await result_is_set()
                state = await read_value(server, STATE)
                # Still registered and serving: the Registration Update
                # Trigger gets an Update of the same registration.
                since = server.next_seq
                trigger_code = await server.execute(ENDPOINT, UPDATE_TRIGGER)
                with trio.fail_after(REGISTER_LIMIT):
                    updated = await server.wait_for("updated", ENDPOINT, since=since)
                assert service.device is not None
                cloud_state = service.device.cloud.sub_state
                registration = server.registrations.get(ENDPOINT)
                reboots = list(service.reboots)
                await stop(service)

        assert write_code == "2.04"
        assert (state, result) == (State.IDLE, Result.INVALID_URI)
        assert reboots == []
        assert trigger_code == "2.04"
        assert updated.registration is not None and first.registration is not None
        assert updated.registration.location == first.registration.location
        assert registration is not None
        assert cloud_state == "SUB_STATE_CLOUD_CONNECTED"
        assert service.firmware.running_version == before
        assert service.firmware.staged_size() == 0
