"""The sandbox assistance service: encoding, and a whole device on Mosquitto."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import pytest
import trio

from backends.mqtt_transport import MqttMessage, open_mqtt_session
from protocols.json_codec import (
    AGNSS_GPS_UTC_REQUEST,
    AGNSS_INTEGRITY_REQUEST,
    AGNSS_KLOBUCHAR_REQUEST,
    AGNSS_POSITION_REQUEST,
    AGNSS_SYS_TIME_AND_SV_TOW_REQUEST,
)
from protocols.peripherals import (
    AgnssRequest,
    LocationAgnssNeeded,
    LocationPgpsNeeded,
    PgpsRequest,
)
from sandbox.assistance import (
    ELEMENT_LAYOUT,
    SCHEMA_VERSION,
    AgnssServiceRequest,
    AssistanceService,
    InvalidAssistanceRequest,
    PgpsServiceRequest,
    decode_agnss_request,
    decode_pgps_request,
    encode_agnss_response,
    parse_agnss_response,
    parse_request_topic,
    pgps_response,
)
from sandbox.files import FileServer
from tests.mosquitto import MosquittoBroker, Pki, client_settings
from tests.test_service_aws import aws_config, wait_until
from tracker.config import parse_config
from tracker.service import Device, Service

IMEI = "352656100000010"


class TestEncodeAgnssResponse:
    def test_one_message_without_ephemerides(self) -> None:
        """Without type 2 the answer is one blob, blocks in type order."""
        types = [9, 1, 4, 6, 7, 3]

        [message] = encode_agnss_response(types, seed=1)

        assert message[0] == SCHEMA_VERSION
        blocks = parse_agnss_response(message)
        assert [t for t, _ in blocks] == [1, 3, 4, 6, 7, 9]
        assert [len(elements) for _, elements in blocks] == [1, 32, 1, 32, 1, 1]
        sizes = [3 + c * s for t, (c, s) in ELEMENT_LAYOUT.items() if t in types]
        assert len(message) == 1 + sum(sizes)

    def test_ephemerides_split_into_their_own_message(self) -> None:
        """Type 2 comes last, alone, in a complete blob of its own."""
        types = [1, 2, 3, 4, 6, 7, 8, 9]

        first, second = encode_agnss_response(types, seed=1)

        assert first[0] == second[0] == SCHEMA_VERSION
        assert [t for t, _ in parse_agnss_response(first)] == [1, 3, 4, 6, 7, 8, 9]
        [(ephe_type, ephemerides)] = parse_agnss_response(second)
        assert ephe_type == 2
        assert [e[0] for e in ephemerides] == list(range(1, 33))
        assert len(second) == 1 + 3 + 32 * 62
        assert second[1:4] == bytes([2, 32, 0])  # type, count u16 LE

    def test_only_ephemerides(self) -> None:
        """A request for type 2 alone gives one message."""
        messages = encode_agnss_response([2], seed=0)

        assert [[t for t, _ in parse_agnss_response(m)] for m in messages] == [[2]]

    def test_deterministic_by_seed(self) -> None:
        """Equal seeds give equal bytes, other seeds other filler."""
        types = list(range(1, 10))

        first = encode_agnss_response(types, seed=7)
        again = encode_agnss_response(types, seed=7)
        other = encode_agnss_response(types, seed=8)

        assert first == again
        assert first != other
        assert [len(m) for m in first] == [len(m) for m in other]

    @pytest.mark.parametrize("types", [[], [0], [10], [1, 12]])
    def test_invalid_types_refused(self, types: list[int]) -> None:
        """No type or an unknown one is an error, not an empty blob."""
        with pytest.raises(InvalidAssistanceRequest):
            encode_agnss_response(types, seed=0)

        assert True

    def test_parser_rejects_truncation(self) -> None:
        """The test parser notices a truncated block and a wrong version."""
        [message] = encode_agnss_response([1, 9], seed=0)

        truncated, versioned = message[:-1], b"\x02" + message[1:]

        with pytest.raises(ValueError, match="truncated"):
            parse_agnss_response(truncated)
        with pytest.raises(ValueError, match="schema"):
            parse_agnss_response(versioned)


class TestDecodeRequests:
    def test_agnss_request_of_the_wire_spec(self) -> None:
        """wire.md §7.1's example decodes field for field."""
        data = (
            b'{"mcc":242,"mnc":2,"area":40401,"cell":21679716,'
            b'"types":[1,2,3,4,6,7,8,9]}'
        )

        request = decode_agnss_request(data)

        assert request == AgnssServiceRequest(
            mcc=242, mnc=2, area=40401, cell=21679716, types=(1, 2, 3, 4, 6, 7, 8, 9)
        )

    @pytest.mark.parametrize(
        ("document", "reason"),
        [
            (b"not json", "not JSON"),
            (b"[1]", "not an object"),
            (b'{"mnc":2,"area":1,"cell":1,"types":[1]}', "missing 'mcc'"),
            (b'{"mcc":242,"area":1,"cell":1,"types":[1]}', "missing 'mnc'"),
            (b'{"mcc":242,"mnc":2,"cell":1,"types":[1]}', "missing 'area'"),
            (b'{"mcc":242,"mnc":2,"area":1,"types":[1]}', "missing 'cell'"),
            (b'{"mcc":"242","mnc":2,"area":1,"cell":1,"types":[1]}', "mcc = '242'"),
            (b'{"mcc":true,"mnc":2,"area":1,"cell":1,"types":[1]}', "must be an int"),
            (b'{"mcc":242,"mnc":2,"area":1,"cell":268435456,"types":[1]}', "cell ="),
            (b'{"mcc":242,"mnc":2,"area":1,"cell":1}', "types = None"),
            (b'{"mcc":242,"mnc":2,"area":1,"cell":1,"types":[]}', "non-empty"),
            (b'{"mcc":242,"mnc":2,"area":1,"cell":1,"types":[10]}', "1…9"),
            (b'{"mcc":242,"mnc":2,"area":1,"cell":1,"types":[0]}', "1…9"),
            (b'{"mcc":242,"mnc":2,"area":1,"cell":1,"types":["1"]}', "not an int"),
            (b'{"mcc":242,"mnc":2,"area":1,"cell":1,"types":[1,1]}', "duplicates"),
        ],
    )
    def test_invalid_agnss_request(self, document: bytes, reason: str) -> None:
        """Each invalid request is refused with an error naming the cause."""
        with pytest.raises(InvalidAssistanceRequest) as info:
            decode_agnss_request(document)

        assert reason in str(info.value)

    def test_pgps_request_and_response(self) -> None:
        """wire.md §7.2's request gives a path spanning n × int minutes."""
        data = b'{"n":42,"int":240,"day":15160,"time":40655}'

        request = decode_pgps_request(data)
        template = "p/{day}-{time}_{end_day}-{end_time}"
        response = pgps_response(request, "pgps.example", template)

        assert request == PgpsServiceRequest(
            count=42, interval_min=240, day=15160, time=40655
        )
        assert response == {"path": "p/15160-40655_15167-40655", "host": "pgps.example"}

    @pytest.mark.parametrize(
        "document",
        [
            b'{"int":240,"day":1,"time":0}',
            b'{"n":0,"int":240,"day":1,"time":0}',
            b'{"n":85,"int":240,"day":1,"time":0}',
            b'{"n":1,"int":250,"day":1,"time":0}',
            b'{"n":1,"int":60,"day":1,"time":0}',
            b'{"n":1,"int":240,"day":-1,"time":0}',
            b'{"n":1,"int":240,"day":1,"time":86400}',
            b'{"n":1.5,"int":240,"day":1,"time":0}',
            b"null",
        ],
    )
    def test_invalid_pgps_request(self, document: bytes) -> None:
        """Out-of-range or mistyped P-GPS requests are refused."""
        with pytest.raises(InvalidAssistanceRequest):
            decode_pgps_request(document)

        assert True

    def test_request_topics(self) -> None:
        """The reply topic is the request topic without ``/get``."""
        topics = ["a/agnss/get", "a/agps/get", "a/pgps/get", "a/agnss", "/agnss/get"]

        parsed = [parse_request_topic(topic) for topic in topics]

        assert parsed == [
            ("a", "agnss", "a/agnss"),
            ("a", "agnss", "a/agps"),
            ("a", "pgps", "a/pgps"),
            None,
            None,
        ]


async def _connected(service: Service) -> Device:
    await service.booted.wait()
    device = service.device
    assert device is not None
    await wait_until(lambda: device.cloud.sub_state == "SUB_STATE_CLOUD_CONNECTED")
    return device


class TestDeviceOnMosquitto:
    async def test_agnss_and_pgps_reach_the_modem(
        self, mosquitto_broker: MosquittoBroker, mqtt_pki: Pki, tmp_path: Path
    ) -> None:
        """The requests are answered, and the P-GPS file is downloaded too."""
        text = aws_config(mosquitto_broker, mqtt_pki, tmp_path, IMEI)
        ca_line = f'download_ca_file = "{mqtt_pki.ca_file}"\n'
        text = text.replace("[modem]", ca_line + "[modem]")
        # The simulated GNSS asks for A-GNSS by itself too; only the test's
        # own request must reach the sandbox here.
        config = parse_config(text + "[sources]\nagnss = false\n")
        files = tmp_path / "files"
        files.mkdir()
        predictions = bytes(range(256)) * 240
        (files / "15160-40655_15167-40655.bin").write_bytes(predictions)
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        mqtt_pki.ca.issue_cert("127.0.0.1").configure_cert(server_context)
        server = FileServer(files, server_context)
        # The file server serves flat names only, hence no "public/".
        assistance = AssistanceService(
            seed=3, pgps_path_template="{day}-{time}_{end_day}-{end_time}.bin"
        )
        service = Service(config)
        flags = (
            AGNSS_GPS_UTC_REQUEST
            | AGNSS_KLOBUCHAR_REQUEST
            | AGNSS_SYS_TIME_AND_SV_TOW_REQUEST
            | AGNSS_POSITION_REQUEST
            | AGNSS_INTEGRITY_REQUEST
        )

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                assistance.pgps_host = f"127.0.0.1:{await nursery.start(server.run)}"
                settings = client_settings(mosquitto_broker, "sandbox-assistance")
                await nursery.start(assistance.run, settings)
                nursery.start_soon(service.run)
                device = await _connected(service)
                modem = device.modem
                network = modem.current_network()
                assert network is not None
                device.bus.publish(
                    LocationAgnssNeeded(
                        AgnssRequest(
                            data_flags=flags, sv_mask_ephe=0xFFFFFFFF, sv_mask_alm=0xFF
                        )
                    )
                )
                await wait_until(
                    lambda: modem.assistance.get("agnss") is not None
                    and modem.assistance["agnss"].count >= 2
                )
                device.bus.publish(
                    LocationPgpsNeeded(
                        PgpsRequest(
                            prediction_count=42,
                            prediction_period_min=240,
                            gps_day=15160,
                            gps_time_of_day=40655,
                        )
                    )
                )
                await wait_until(lambda: "pgps_predictions" in modem.assistance)
                # Any extra message would have arrived with the others.
                await trio.sleep(0.3)
                service.request_stop()
                await wait_until(lambda: service.stopped_by is not None)
                nursery.cancel_scope.cancel()

        agnss, pgps = assistance.served
        assert agnss.thing == IMEI
        assert agnss.topic == f"{IMEI}/agnss/get"
        assert agnss.request == AgnssServiceRequest(
            mcc=network.mcc,
            mnc=network.mnc,
            area=network.area_code,
            cell=network.cell_id,
            types=(1, 2, 3, 4, 6, 7, 8, 9),
        )
        assert len(agnss.replies) == 2
        record = modem.assistance["agnss"]
        assert record.count == len(agnss.replies)
        assert record.total_bytes == sum(map(len, agnss.replies))
        assert record.last == agnss.replies[-1]
        assert pgps.request == PgpsServiceRequest(
            count=42, interval_min=240, day=15160, time=40655
        )
        assert modem.assistance["pgps"].count == 1
        assert json.loads(modem.assistance["pgps"].last) == {
            "path": "15160-40655_15167-40655.bin",
            "host": assistance.pgps_host,
        }
        assert modem.assistance["pgps_predictions"].count == 1
        assert modem.assistance["pgps_predictions"].last == predictions
        assert server.requests == [("/15160-40655_15167-40655.bin", None)]
        assert device.pgps.counters["downloads_succeeded"] == 1
        assert assistance.counters == {
            "agnss_served": 1,
            "agnss_rejected": 0,
            "pgps_served": 1,
            "pgps_rejected": 0,
        }

    async def test_invalid_requests_are_ignored(
        self, mosquitto_broker: MosquittoBroker, mqtt_pki: Pki
    ) -> None:
        """An invalid request is counted and unanswered; the service goes on."""
        assistance = AssistanceService()
        spy_settings = client_settings(mosquitto_broker, "cloud-spy")

        with trio.fail_after(15):
            async with trio.open_nursery() as nursery:
                settings = client_settings(mosquitto_broker, "sandbox-assistance")
                await nursery.start(assistance.run, settings)
                async with open_mqtt_session(spy_settings) as spy:
                    await spy.subscribe([("dev/#", 1)])
                    await spy.publish("dev/agnss/get", b'{"mcc":1}', 1)
                    await spy.publish("dev/pgps/get", b"[]", 1)
                    await spy.publish(
                        "dev/agps/get",
                        b'{"mcc":1,"mnc":1,"area":1,"cell":1,"types":[9]}',
                        1,
                    )
                    received: list[tuple[str, bytes]] = []
                    async for event in spy.incoming:
                        if isinstance(event, MqttMessage) and "/get" not in event.topic:
                            received.append((event.topic, event.payload))
                            break
                nursery.cancel_scope.cancel()

        assert received == [("dev/agps", encode_agnss_response([9], seed=0)[0])]
        assert assistance.counters == {
            "agnss_served": 1,
            "agnss_rejected": 1,
            "pgps_served": 0,
            "pgps_rejected": 1,
        }
