"""The local cloud: certificates, the embedded broker, its services, a device.

Real sockets on loopback, free ports, real time bounded by ``fail_after``;
no autojump (STYLE P10).
"""

from __future__ import annotations

import json
import socket
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from structlog.testing import capture_logs

from backends.errors import BackendError
from backends.mqtt_transport import MqttMessage, MqttSession, open_mqtt_session
from protocols.lwm2m_formats import Path as LwPath
from protocols.lwm2m_formats import Record
from sandbox.certs import InvalidClientId, LocalPki
from sandbox.local_cloud import LocalCloud, LocalCloudEndpoints
from tracker.config import Config, ConfigError, default_config, parse_config
from tracker.service import ExitCode, Service

IMEI = "352656100000010"
# A seed whose first GNSS search ends after about 9 s (the default seed's
# takes 35 s), so the first data sample arrives soon.
QUICK_FIX_SEED = 14


def local_test_config(tmp_path: Path, extra: str = "", *, face: str = "aws") -> Config:
    """The local cloud on free ports, a quick modem, state in ``tmp_path``.

    ``extra`` adds tables; ``face`` is ``[cloud.local] cloud``.
    """
    return parse_config(
        f"""
[cloud.local]
cloud = "{face}"
mqtt_port = 0
http_port = 0
lwm2m_port = 0
coap_port = 0
[modem]
attach_delay = 0.1
[state]
directory = "{tmp_path / "state"}"
{extra}"""
    )


async def wait_until(predicate: Callable[[], bool], poll: float = 0.05) -> None:
    """Poll ``predicate`` in real time (callers bound it with fail_after)."""
    while not predicate():  # noqa: ASYNC110 - the state is not ours to signal
        await trio.sleep(poll)


@pytest.fixture
async def cloud(tmp_path: Path) -> AsyncIterator[LocalCloud]:
    """A running local cloud on free loopback ports."""
    local = LocalCloud(tmp_path / "local-cloud", mqtt_port=0, http_port=0)
    async with trio.open_nursery() as nursery:
        with trio.fail_after(15):
            await nursery.start(local.run)
        yield local
        nursery.cancel_scope.cancel()


async def next_message(session: MqttSession) -> MqttMessage:
    """The next PUBLISH on ``session`` (PUBACKs and pings skipped)."""
    async for event in session.incoming:
        if isinstance(event, MqttMessage):
            return event
    raise AssertionError("the session ended")


class TestCertificates:
    def test_files_are_reused_and_keys_private(self, tmp_path: Path) -> None:
        """A second PKI on the same directory reuses every valid file."""
        first = LocalPki(tmp_path)
        ca = first.ensure_ca().read_bytes()
        server = first.server_files()
        device = first.device_files(IMEI)
        device_pem = device.cert_file.read_bytes()

        again = LocalPki(tmp_path)
        assert again.ensure_ca().read_bytes() == ca
        assert again.server_files().cert_file.read_bytes() == (
            server.cert_file.read_bytes()
        )
        assert again.device_files(IMEI).cert_file.read_bytes() == device_pem
        for key in (tmp_path / "ca.key", server.key_file, device.key_file):
            assert stat.S_IMODE(key.stat().st_mode) == 0o600

    def test_new_ca_reissues_and_extra_host_is_added(self, tmp_path: Path) -> None:
        """A replaced CA invalidates old certificates; new names reissue."""
        first = LocalPki(tmp_path)
        first.ensure_ca()
        old_device = first.device_files(IMEI).cert_file.read_bytes()
        old_server = first.server_files().cert_file.read_bytes()
        (tmp_path / "ca.pem").write_text("not a certificate")

        fresh = LocalPki(tmp_path)
        assert fresh.device_files(IMEI).cert_file.read_bytes() != old_device
        server = fresh.server_files().cert_file.read_bytes()
        assert server != old_server
        assert fresh.server_files("192.0.2.7").cert_file.read_bytes() != server

    def test_bad_client_id_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(InvalidClientId, match="../evil"):
            LocalPki(tmp_path).device_files("../evil")


class TestBroker:
    async def test_device_certificate_connects_and_shadow_answers(
        self, cloud: LocalCloud
    ) -> None:
        """GET of a missing shadow is rejected 404; after an update, accepted."""
        shadow = f"$aws/things/{IMEI}/shadow"
        with trio.fail_after(15):
            async with open_mqtt_session(cloud.device_settings(IMEI)) as session:
                await session.subscribe(
                    [(f"{shadow}/get/accepted", 1), (f"{shadow}/get/rejected", 1)]
                )
                await session.publish(f"{shadow}/get", b"", 1)
                rejected = await next_message(session)
                await session.publish(
                    f"{shadow}/update",
                    json.dumps({"state": {"reported": {"bat": {"v": 3800}}}}).encode(),
                    1,
                )
                await wait_until(lambda: bool(cloud.reported(IMEI)))
                await session.publish(f"{shadow}/get", b"", 1)
                accepted = await next_message(session)

        assert rejected.topic == f"{shadow}/get/rejected"
        assert json.loads(rejected.payload)["code"] == 404
        assert accepted.topic == f"{shadow}/get/accepted"
        document = json.loads(accepted.payload)
        assert document["state"]["reported"] == {"bat": {"v": 3800}}
        assert cloud.reported(IMEI) == {"bat": {"v": 3800}}

    async def test_client_without_certificate_is_refused(
        self, cloud: LocalCloud
    ) -> None:
        settings = cloud.device_settings(
            IMEI, cert_file=None, key_file=None, connect_timeout=5
        )
        with trio.fail_after(15), pytest.raises(BackendError, match="TLS"):
            async with open_mqtt_session(settings):
                pass
        assert IMEI not in cloud.broker.clients  # type: ignore[union-attr]

    async def test_certificate_of_another_ca_is_refused(
        self, cloud: LocalCloud, tmp_path: Path
    ) -> None:
        foreign = LocalPki(tmp_path / "elsewhere").device_files(IMEI)
        settings = cloud.device_settings(
            IMEI, cert_file=foreign.cert_file, key_file=foreign.key_file,
            connect_timeout=5,
        )  # fmt: skip
        with trio.fail_after(15), pytest.raises(BackendError, match="TLS"):
            async with open_mqtt_session(settings):
                pass

    async def test_certificate_of_another_client_is_refused(
        self, cloud: LocalCloud
    ) -> None:
        """The common name must be the client id: CONNACK 5."""
        other = cloud.issue("someone-else")
        settings = cloud.device_settings(
            IMEI, cert_file=other.cert_file, key_file=other.key_file,
            connect_timeout=5,
        )  # fmt: skip
        with trio.fail_after(15), pytest.raises(BackendError, match="CONNACK 5"):
            async with open_mqtt_session(settings):
                pass

    async def test_bad_clients_leave_the_broker_serving(
        self, cloud: LocalCloud
    ) -> None:
        """Plain TCP garbage and a failed handshake; the next device connects."""
        assert cloud.endpoints is not None
        port = cloud.endpoints.mqtt_port
        with trio.fail_after(15):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"\x10\x0fnot a TLS hello\r\n")
            await stream.aclose()
            settings = cloud.device_settings(
                IMEI, cert_file=None, key_file=None, connect_timeout=5
            )
            with pytest.raises(BackendError):
                async with open_mqtt_session(settings):
                    pass
            async with open_mqtt_session(cloud.device_settings(IMEI)) as session:
                granted = await session.subscribe([(f"{IMEI}/messages", 1)])
        assert granted == (1,)

    async def test_endpoints_name_the_files(self, tmp_path: Path) -> None:
        local = LocalCloud(tmp_path / "lc", mqtt_port=0, http_port=0)
        with trio.fail_after(15):
            async with trio.open_nursery() as nursery:
                endpoints: LocalCloudEndpoints = await nursery.start(local.run)
                nursery.cancel_scope.cancel()
        assert endpoints.host == "127.0.0.1"
        assert endpoints.mqtt_port > 0 and endpoints.http_port > 0
        assert endpoints.ca_file == tmp_path / "lc" / "ca.pem"
        assert endpoints.cert_directory == tmp_path / "lc" / "devices"
        assert local.endpoints is None  # stopped


class TestConfig:
    def test_local_is_the_default(self, tmp_path: Path) -> None:
        config = default_config()
        assert config.cloud.service == "local"
        assert config.cloud.local.cloud == "aws"
        assert config.cloud.local.directory == tmp_path / "var" / "local-cloud"

    def test_lwm2m_is_a_choice(self) -> None:
        config = parse_config('[cloud.local]\ncloud = "lwm2m"\n')
        assert config.cloud.local.cloud == "lwm2m"
        assert (config.cloud.local.lwm2m_port, config.cloud.local.coap_port) == (
            5684,
            5683,
        )

    def test_unknown_local_cloud(self) -> None:
        with pytest.raises(ConfigError, match='cloud.local.cloud = "gcp": must be'):
            parse_config('[cloud.local]\ncloud = "gcp"\n')

    def test_port_out_of_range(self) -> None:
        with pytest.raises(ConfigError, match="cloud.local.mqtt_port = 70000"):
            parse_config("[cloud.local]\nmqtt_port = 70000\n")


class TestDeviceOnLocalCloud:
    async def test_device_data_reaches_the_shadow(self, tmp_path: Path) -> None:
        """tracker.service with service = "local": boot, connect, report data."""
        config = local_test_config(tmp_path, f"[sources]\nseed = {QUICK_FIX_SEED}\n")
        service = Service(config)

        def reported() -> dict[str, Any]:
            cloud = service.local_cloud
            return {} if cloud is None else cloud.reported(IMEI)

        with trio.fail_after(25):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(service.run)
                await wait_until(lambda: {"dev", "roam", "bat"} <= set(reported()))
                data = reported()
                cloud = service.local_cloud
                assert cloud is not None
                clients = list(cloud.broker.clients)  # type: ignore[union-attr]
                service.request_stop()
                await wait_until(lambda: service.stopped_by is not None)

        assert data["dev"]["v"]["imei"] == IMEI
        assert "cfg" in data
        assert IMEI in clients
        devices = tmp_path / "state" / "local-cloud" / "devices"
        assert (devices / f"{IMEI}.pem").is_file()
        assert service.stopped_by is not None and service.stopped_by.acknowledged

    async def test_port_in_use_exits_with_config_code(self, tmp_path: Path) -> None:
        """The broker cannot listen: exit code 2, before any boot."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            config = parse_config(
                f"[cloud.local]\nmqtt_port = {port}\nhttp_port = 0\n"
                "lwm2m_port = 0\ncoap_port = 0\n"
                f'[state]\ndirectory = "{tmp_path / "state"}"\n'
            )
            service = Service(config)
            with capture_logs() as logs, trio.fail_after(15):
                code = await service.run()
        assert code == ExitCode.CONFIG
        assert not service.booted.is_set()
        [error] = [e for e in logs if e["event"] == "local_cloud_unavailable"]
        assert f"127.0.0.1:{port}" in error["error"]
        assert "address already in use" in error["error"]

    async def test_lwm2m_port_in_use_exits_with_config_code(
        self, tmp_path: Path
    ) -> None:
        """The LwM2M server cannot listen: exit code 2, naming the port."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
            taken.bind(("127.0.0.1", 0))
            port = taken.getsockname()[1]
            config = parse_config(
                "[cloud.local]\nmqtt_port = 0\nhttp_port = 0\n"
                f"lwm2m_port = 0\ncoap_port = {port}\n"
                f'[state]\ndirectory = "{tmp_path / "state"}"\n'
            )
            service = Service(config)
            with capture_logs() as logs, trio.fail_after(15):
                code = await service.run()
        assert code == ExitCode.CONFIG
        assert not service.booted.is_set()
        [error] = [e for e in logs if e["event"] == "local_cloud_unavailable"]
        assert f"127.0.0.1:{port}" in error["error"]

    async def test_firmware_update_through_the_local_cloud(
        self, tmp_path: Path
    ) -> None:
        """A job and an HTTPS download from the local cloud; it outlives the reboot."""
        image = bytes(range(256)) * 40
        config = local_test_config(tmp_path, "[util]\nack_reboot_delay = 1\n")
        service = Service(config)

        def connected() -> bool:
            device = service.device
            return (
                device is not None
                and device.cloud.sub_state == "SUB_STATE_CLOUD_CONNECTED"
            )

        with trio.fail_after(25):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(service.run)
                await wait_until(connected)
                cloud = service.local_cloud
                assert cloud is not None and cloud.endpoints is not None
                first = service.device
                (cloud.endpoints.files_directory / "app-1.0.1.bin").write_bytes(image)
                await cloud.jobs.create_job(
                    "job-1",
                    {
                        "operation": "app_fw_update",
                        "size": len(image),
                        "filename": "app-1.0.1.bin",
                        "fwversion": "1.0.1",
                        "location": {
                            "protocol": "https",
                            "host": f"127.0.0.1:{cloud.endpoints.http_port}",
                            "path": "app-1.0.1.bin",
                        },
                    },
                    [IMEI],
                )
                await wait_until(
                    lambda: (
                        bool(service.reboots)
                        and service.device is not first
                        and connected()
                    )
                )
                service.request_stop()
                await wait_until(lambda: service.stopped_by is not None)

        assert cloud.jobs.store.history(IMEI, "job-1") == [
            "QUEUED", "IN_PROGRESS", "SUCCEEDED",
        ]  # fmt: skip
        assert service.firmware.running_version == "1.0.1"
        assert service.firmware.confirmed


class TestLocalLwm2m:
    async def test_device_speaks_lwm2m_to_the_local_cloud(
        self, tmp_path: Path
    ) -> None:
        """Register over DTLS, Send data, take a config write, de-register."""
        config = local_test_config(
            tmp_path, f"[sources]\nseed = {QUICK_FIX_SEED}\n", face="lwm2m"
        )
        endpoint = f"urn:imei:{IMEI}"
        service = Service(config)
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(service.run)
                await service.local_ready.wait()
                cloud = service.local_cloud
                assert cloud is not None and cloud.lwm2m is not None
                server = cloud.lwm2m
                registered = await server.wait_for("registered", endpoint)
                await server.wait_for(
                    "send",
                    endpoint,
                    predicate=lambda event: "/6/0/0" in server.sends[endpoint],
                )
                held = dict(server.sends[endpoint])
                assert service.state is not None
                # The server's 2.04 settles the samples the Send carried.
                await wait_until(
                    lambda: service.state is not None
                    and service.state.sample_counts().get("delivered", 0) >= 4
                )
                # Passive mode, written by the server into object 50009.
                code = await server.write(
                    endpoint, "/50009/0/0", [Record(LwPath.parse("/50009/0/0"), True)]
                )
                await wait_until(
                    lambda: service.device is not None
                    and not service.device.data.config.active_mode
                )
                service.request_stop()
                await server.wait_for("deregistered", endpoint)
                await wait_until(lambda: service.stopped_by is not None)

        assert registered.endpoint == endpoint
        assert endpoint not in server.registrations
        # Battery (a multiple resource), signal strength and the GNSS fix.
        assert {"/3/0/7/0", "/4/0/2", "/6/0/0", "/6/0/1"} <= set(held), sorted(held)
        assert code == "2.04"
        assert service.state is not None
        stored = service.state.load_config()
        assert stored is not None and stored.active_mode is False

    async def test_device_bootstraps_from_the_local_cloud(
        self, tmp_path: Path
    ) -> None:
        """bootstrap = true: the account comes from /bs, then registration."""
        config = local_test_config(
            tmp_path, "[cloud.lwm2m]\nbootstrap = true\n", face="lwm2m"
        )
        endpoint = f"urn:imei:{IMEI}"
        service = Service(config)
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(service.run)
                await service.local_ready.wait()
                cloud = service.local_cloud
                assert cloud is not None and cloud.lwm2m is not None
                server = cloud.lwm2m
                uri = cloud.lwm2m_uri()
                bootstrapped = await server.wait_for("bootstrapped", endpoint)
                registered = await server.wait_for("registered", endpoint)
                service.request_stop()
                await wait_until(lambda: service.stopped_by is not None)

        assert bootstrapped.seq < registered.seq
        written = {str(record.path): record.value for record in bootstrapped.records}
        # The account on the server itself, with the device's own identity.
        assert uri in written.values()
        assert endpoint.encode() in written.values()
        assert server.registrations.get(endpoint) is None  # de-registered at stop
