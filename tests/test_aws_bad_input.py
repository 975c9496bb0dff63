"""The device against bad input from the cloud: the AWS codec and the broker.

Two parts:

* Hypothesis properties of ``JsonCodec(Flavour.AWS).decode_config``: for
  any bytes and any JSON document only the codec's own exceptions escape,
  and a success is a ``DeviceConfig`` with fields of the right types.
* A whole device on Mosquitto, fed malformed shadow documents and garbage
  assistance data by a cloud-side MQTT client ("cloud-spy"), which also
  watches ``$aws/things/<id>/shadow/update`` for the configuration reports
  of the CONFIG_EMPTY path (asset_tracker_v2.md §10.6: the data module
  re-publishes its complete configuration).

The parser's own limits (numbers beyond a double, nesting beyond the
recursion limit) have their own tests (``TestParserLimits``); the property
strategies keep integers within ±2**63 and nesting shallow.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from backends.mqtt_transport import MqttMessage, MqttSession, open_mqtt_session
from protocols.codec import (
    ConfigDuplicate,
    ConfigEmpty,
    ConfigInvalid,
    NotAConfigDocument,
)
from protocols.config import DeviceConfig, NoData
from protocols.json_codec import Flavour, JsonCodec, encode_config
from tests.mosquitto import MosquittoBroker, Pki, client_settings
from tests.test_service_aws import aws_config, wait_until
from tracker.config import parse_config
from tracker.service import Device, Service

CODEC_ERRORS = (ConfigEmpty, ConfigDuplicate, NotAConfigDocument, ConfigInvalid)
IMEI = "352656100000010"
SHADOW = f"$aws/things/{IMEI}/shadow"
REACTION_TIMEOUT = 5.0

_INT_FIELDS = (
    "location_timeout",
    "active_wait_timeout",
    "movement_resolution",
    "movement_timeout",
)
_FLOAT_FIELDS = (
    "accelerometer_activity_threshold",
    "accelerometer_inactivity_threshold",
    "accelerometer_inactivity_timeout",
)
CFG_KEYS = ("act", "loct", "actwt", "mvres", "mvt", "accath", "accith", "accito", "nod")


# ---------------------------------------------------------------------------
# Properties of the codec

# Integers beyond ±2**63 and deep nesting hit known bugs (TestKnownBugs).
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)
cfg_objects = st.dictionaries(
    st.sampled_from(CFG_KEYS) | st.text(max_size=5), json_values, max_size=6
)
# Documents shaped like what the AWS backend delivers, and anything else.
documents = st.one_of(
    json_values,
    st.builds(lambda cfg: {"state": {"cfg": cfg}}, cfg_objects | json_values),
    st.builds(lambda cfg: {"cfg": cfg}, cfg_objects | json_values),
    st.builds(
        lambda cfg, version: {"state": {"cfg": cfg}, "version": version},
        cfg_objects,
        json_values,
    ),
)


def _check_config(config: DeviceConfig) -> None:
    assert isinstance(config, DeviceConfig)
    assert type(config.active_mode) is bool
    for field in _INT_FIELDS:
        assert type(getattr(config, field)) is int, field
    for field in _FLOAT_FIELDS:
        assert type(getattr(config, field)) is float, field
    assert isinstance(config.no_data, NoData)
    assert all(type(v) is bool for v in attrs.astuple(config.no_data))


def _decode(data: bytes) -> None:
    try:
        config = JsonCodec(Flavour.AWS).decode_config(data, DeviceConfig())
    except CODEC_ERRORS:
        return
    _check_config(config)


class TestDecodeConfigProperties:
    @given(st.binary(max_size=256))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        """Any bytes give a valid DeviceConfig or one of the codec's errors."""
        _decode(data)

    @given(documents)
    @settings(suppress_health_check=[HealthCheck.too_slow])
    def test_arbitrary_json(self, document: Any) -> None:
        """Any JSON document gives a valid DeviceConfig or a codec error."""
        _decode(json.dumps(document).encode())

    @given(cfg_objects)
    def test_accepted_cfg_round_trips(self, cfg: dict[str, Any]) -> None:
        """An accepted cfg, reported and decoded again, gives the same config."""
        codec = JsonCodec(Flavour.AWS)
        try:
            config = codec.decode_config(
                json.dumps({"state": {"cfg": cfg}}).encode(), DeviceConfig()
            )
        except CODEC_ERRORS:
            return

        reported = json.dumps({"cfg": encode_config(config)}).encode()

        assert JsonCodec(Flavour.AWS).decode_config(reported, DeviceConfig()) == config


class TestParserLimits:
    """Inputs beyond what the JSON parser or a double can hold."""

    @pytest.mark.parametrize("key", ["loct", "accath"])
    def test_huge_integer_is_invalid(self, key: str) -> None:
        """A number too large for a double is ConfigInvalid, not OverflowError."""
        data = b'{"state":{"cfg":{"%s":1%s}}}' % (key.encode(), b"0" * 400)

        with pytest.raises(ConfigInvalid, match=f"cfg.{key} = 1000.*out of range"):
            JsonCodec(Flavour.AWS).decode_config(data, DeviceConfig())

    @pytest.mark.parametrize("value", [b"2147483648", b"-2147483649", b"1e308"])
    def test_timeouts_beyond_int32_are_invalid(self, value: bytes) -> None:
        """The firmware's timeouts are 32-bit ints: larger values are refused."""
        data = b'{"cfg":{"actwt":%s}}' % value

        with pytest.raises(ConfigInvalid, match="32-bit integer"):
            JsonCodec(Flavour.AWS).decode_config(data, DeviceConfig())

    def test_deep_nesting_is_not_a_document(self) -> None:
        """Nesting beyond the parser's limit is NotAConfigDocument."""
        data = b"[" * 100_000

        with pytest.raises(NotAConfigDocument, match="nested too deeply"):
            JsonCodec(Flavour.AWS).decode_config(data, DeviceConfig())


# ---------------------------------------------------------------------------
# A whole device on Mosquitto

FULL_CFG = encode_config(DeviceConfig())
CONFIG_REPORT = {"state": {"reported": {"cfg": FULL_CFG}}}


@attrs.frozen
class BadInput:
    """What to publish, and how the device must react.

    ``expect``: ``"ignored"`` (logged as ``document_ignored``), ``"rejected"``
    (logged as ``config_rejected``, the full config reported back),
    ``"empty"`` (CONFIG_EMPTY: the full config reported back), or
    ``"assistance"`` (handed to the modem as it is).
    """

    topic: str
    payload: bytes
    expect: str
    reason: str = ""


BAD_INPUTS = {
    "delta-malformed": BadInput(
        f"{SHADOW}/update/delta", b'{"state":{"cfg":', "ignored", "not JSON"
    ),
    "desired-malformed": BadInput(
        f"{SHADOW}/get/accepted/desired/cfg", b"{cfg: 1}", "ignored", "not JSON"
    ),
    "delta-not-utf8": BadInput(
        f"{SHADOW}/update/delta", b"\xff\xfe\x00garbage", "ignored", "not JSON"
    ),
    "delta-null": BadInput(
        f"{SHADOW}/update/delta", b"null", "ignored", "a JSON NoneType"
    ),
    "desired-array": BadInput(
        f"{SHADOW}/get/accepted/desired/cfg", b"[1,2,3]", "ignored", "a JSON list"
    ),
    "delta-wrong-type": BadInput(
        f"{SHADOW}/update/delta",
        b'{"state":{"cfg":{"actwt":"often"}}}',
        "rejected",
        "cfg.actwt = 'often'",
    ),
    "desired-wrong-type": BadInput(
        f"{SHADOW}/get/accepted/desired/cfg",
        b'{"cfg":{"act":true,"nod":"gnss"}}',
        "rejected",
        "cfg.nod = 'gnss'",
    ),
    "desired-cfg-not-object": BadInput(
        f"{SHADOW}/get/accepted/desired/cfg", b'{"cfg":[]}', "rejected", "cfg = []"
    ),
    "delta-oversized": BadInput(
        f"{SHADOW}/update/delta",
        json.dumps({"state": {"pad": "x" * 100 * 1024}}).encode(),
        "empty",
    ),
    "delta-oversized-garbage": BadInput(
        f"{SHADOW}/update/delta", b"\x00" * 100 * 1024, "ignored", "not JSON"
    ),
    "delta-huge-number": BadInput(
        f"{SHADOW}/update/delta",
        b'{"state":{"cfg":{"loct":1%s}}}' % (b"0" * 400),
        "rejected",
        "cfg.loct = 1000",
    ),
    "delta-deep-nesting": BadInput(
        f"{SHADOW}/update/delta", b"[" * 100_000, "ignored", "nested too deeply"
    ),
    "agnss-garbage": BadInput(f"{IMEI}/agnss", b"\x02garbage\xff", "assistance"),
    "pgps-garbage": BadInput(f"{IMEI}/pgps", b"{not json", "assistance"),
}


async def _drain(
    spy: MqttSession, reports: list[Any], *, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    # Keeps the spy's channel empty so the broker never withholds messages.
    task_status.started()
    async for event in spy.incoming:
        if isinstance(event, MqttMessage) and event.topic == f"{SHADOW}/update":
            document = json.loads(event.payload)
            if "cfg" in document.get("state", {}).get("reported", {}):
                reports.append(document)


def _assert_still_up(service: Service, device: Device, config: DeviceConfig) -> None:
    assert service.device is device, "the device rebooted"
    assert device.cloud.sub_state == "SUB_STATE_CLOUD_CONNECTED"
    assert device.util.request is None
    assert [actor.restarts for actor in device.actors] == [0] * len(device.actors)
    assert device.data.config == config


async def _run_case(
    broker: MosquittoBroker,
    pki: Pki,
    tmp_path: Path,
    case: BadInput,
    check: Callable[[Device, list[Any], list[dict[str, Any]]], None],
) -> None:
    config = parse_config(aws_config(broker, pki, tmp_path, IMEI))
    service = Service(config)
    reports: list[Any] = []

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            async with open_mqtt_session(client_settings(broker, "cloud-spy")) as spy:
                await spy.subscribe([(f"{SHADOW}/update", 1)])
                await nursery.start(_drain, spy, reports)
                nursery.start_soon(service.run)
                await service.booted.wait()
                device = service.device
                assert device is not None
                await wait_until(
                    lambda: device.cloud.sub_state == "SUB_STATE_CLOUD_CONNECTED"
                )
                # No shadow service answers, so nothing else is reported; a
                # short settle shows it.
                await trio.sleep(0.3)
                before = list(reports)
                initial = device.data.config

                with capture_logs() as logs:
                    await spy.publish(case.topic, case.payload, 1)
                    # A missing reaction fails in the checks below, with
                    # the device's state, not as a bare TooSlowError.
                    with trio.move_on_after(REACTION_TIMEOUT):
                        await _wait_for_reaction(device, case, reports, before, logs)
                    # Anything more the device would do, it does now.
                    await trio.sleep(0.3)

                _assert_still_up(service, device, initial)
                check(device, reports[len(before) :], logs)
                service.request_stop()
                await wait_until(lambda: service.stopped_by is not None)
                nursery.cancel_scope.cancel()


async def _wait_for_reaction(
    device: Device,
    case: BadInput,
    reports: list[Any],
    before: list[Any],
    logs: list[dict[str, Any]],
) -> None:
    if case.expect == "ignored":
        await wait_until(lambda: any(e["event"] == "document_ignored" for e in logs))
    elif case.expect in ("rejected", "empty"):
        await wait_until(lambda: len(reports) > len(before))
    else:
        kind = case.topic.rsplit("/", 1)[1]
        await wait_until(lambda: kind in device.modem.assistance)


class TestDeviceAgainstBadInput:
    @pytest.mark.parametrize("name", list(BAD_INPUTS))
    async def test_device_survives(
        self,
        name: str,
        mosquitto_broker: MosquittoBroker,
        mqtt_pki: Pki,
        tmp_path: Path,
    ) -> None:
        """The device stays connected, keeps its config and reacts per spec."""
        case = BAD_INPUTS[name]

        def check(device: Device, new: list[Any], logs: list[dict[str, Any]]) -> None:
            events = [e for e in logs if e.get("actor") == "cloud"]
            if case.expect == "ignored":
                assert new == []
                [ignored] = [e for e in events if e["event"] == "document_ignored"]
                assert ignored["topic"] == case.topic
                assert case.reason in ignored["reason"]
            elif case.expect == "rejected":
                assert new == [CONFIG_REPORT]
                [rejected] = [e for e in events if e["event"] == "config_rejected"]
                assert case.reason in rejected["reason"]
                assert device.cloud.counters["config_rejected"] == 1
            elif case.expect == "empty":
                assert new == [CONFIG_REPORT]
                [empty] = [e for e in events if e["event"] == "config_empty"]
                assert empty["topic"] == case.topic
            else:
                kind = case.topic.rsplit("/", 1)[1]
                record = device.modem.assistance[kind]
                assert (record.count, record.last) == (1, case.payload)
                assert new == []

        await _run_case(mosquitto_broker, mqtt_pki, tmp_path, case, check)
