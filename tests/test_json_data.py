"""The AWS/Azure data payloads: wire.md examples byte for byte, number rule."""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.codec import NothingToSend
from protocols.config import DeviceConfig
from protocols.json_codec import Flavour, encode_config
from protocols.json_data import (
    Battery,
    Button,
    Impact,
    cjson_number,
    dumps_cjson,
    encode_batch,
    encode_cloud_location,
    encode_env,
    encode_gnss,
    encode_lte,
    encode_regular,
    encode_roam,
    encode_ui_message,
    encode_wifi,
    to_float32,
)
from protocols.modem import ModemDynamicData, ModemStaticData, NetworkMode
from protocols.peripherals import (
    CellMeasurement,
    CloudLocationRequest,
    EnvironmentalData,
    GnssData,
    NeighborCell,
    Pvt,
)

# The samples of the wire.md §2.3 example.
DEV = ModemStaticData(
    timestamp=1563968743666,
    iccid="89450421180216216095",
    app_version="0.0.0-development",
    board_version="thingy91_nrf9160",
    modem_fw="mfw_nrf9160_1.3.5",
    imei="352656106111232",
)
ROAM = ModemDynamicData(
    timestamp=1563968743666,
    area_code=12,
    cell_id=33703719,
    rsrp=-97,
    mcc=242,
    mnc=2,
    ip_address="10.81.183.99",
    apn="telenor.iot",
    mccmnc="24202",
    band=3,
    network_mode=NetworkMode.NB_IOT,
)
ENV = EnvironmentalData(
    timestamp=1563968743666, temperature=23.6, humidity=50.5, pressure=100.36
)
BAT = Battery(93, 1563968747123)


def gnss(
    *,
    lat: float = 63.421133,
    lng: float = 10.436642,
    acc: float = 24.798573,
    alt: float = 170.528305,
    spd: float = 0.579327,
    hdg: float = 176.12,
    hdg_acc: float = 10.0,
    ts: int = 1563968752991,
) -> GnssData:
    pvt = Pvt(
        latitude=lat,
        longitude=lng,
        accuracy=acc,
        altitude=alt,
        altitude_accuracy=5.0,
        speed=spd,
        speed_accuracy=1.0,
        heading=hdg,
        heading_accuracy=hdg_acc,
    )
    return GnssData(pvt=pvt, satellites_tracked=7, search_time=30000, timestamp=ts)


def close(a: float, b: float) -> bool:
    """cJSON's read-back tolerance: a relative DBL_EPSILON."""
    return abs(a - b) <= max(abs(a), abs(b)) * sys.float_info.epsilon


def same_document(expected: Any, actual: Any) -> bool:
    """Structural equality with numbers compared by ``close``."""
    if isinstance(expected, bool) or isinstance(actual, bool):
        return expected is actual
    if isinstance(expected, int | float) and isinstance(actual, int | float):
        return close(float(expected), float(actual))
    if isinstance(expected, dict) and isinstance(actual, dict):
        return list(expected) == list(actual) and all(
            same_document(expected[key], actual[key]) for key in expected
        )
    if isinstance(expected, list | tuple) and isinstance(actual, list):
        return len(expected) == len(actual) and all(
            same_document(e, a) for e, a in zip(expected, actual, strict=True)
        )
    return bool(expected == actual)


json_documents = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)


class TestWireExamples:
    def test_cfg_report(self) -> None:
        """The §1.6 cfg report is reproduced byte for byte."""
        expected = (
            b'{"state":{"reported":{"cfg":{"act":false,"loct":300,"actwt":300,'
            b'"mvres":120,"mvt":3600,"accath":4,"accith":4,"accito":60,"nod":[]}}}}'
        )
        cfg = encode_config(DeviceConfig(active_mode=False))

        actual = dumps_cjson({"state": {"reported": {"cfg": cfg}}})

        assert expected == actual

    def test_button_message(self) -> None:
        """The §2.2 button message, with its elided ts filled in."""
        expected = b'{"btn":{"v":1,"ts":1700000000000}}'

        actual = encode_ui_message(button=Button(1, 1700000000000))

        assert expected == actual

    def test_impact_message(self) -> None:
        """The §2.2 impact message, with its elided ts filled in."""
        expected = b'{"impact":{"v":2.5,"ts":1700000000000}}'

        actual = encode_ui_message(impact=Impact(2.5, 1700000000000))

        assert expected == actual

    def test_regular_shadow_update(self) -> None:
        """The §2.3 example (hand-written, no float32) comes out exactly."""
        expected = (
            b'{"state":{"reported":{"dev":{"v":{"imei":"352656106111232",'
            b'"iccid":"89450421180216216095","modV":"mfw_nrf9160_1.3.5",'
            b'"brdV":"thingy91_nrf9160","appV":"0.0.0-development"},'
            b'"ts":1563968743666},"roam":{"v":{"band":3,"nw":"NB-IoT","rsrp":-97,'
            b'"area":12,"mccmnc":24202,"cell":33703719,"ip":"10.81.183.99"},'
            b'"ts":1563968743666},"gnss":{"v":{"lat":63.421133,"lng":10.436642,'
            b'"acc":24.798573,"alt":170.528305,"spd":0.579327,"hdg":176.12},'
            b'"ts":1563968752991},"env":{"v":{"temp":23.6,"hum":50.5,'
            b'"atmp":100.36},"ts":1563968743666},"bat":{"v":93,'
            b'"ts":1563968747123}}}}'
        )

        actual = encode_regular(
            Flavour.AWS,
            dev=DEV,
            roam=ROAM,
            gnss=gnss(),
            env=ENV,
            bat=BAT,
            float32=False,
        )

        assert expected == actual

    def test_regular_update_from_float32_fields(self) -> None:
        """float32 rounding changes the §2.3 fix only within float32."""
        example = json.loads(
            encode_regular(Flavour.AWS, gnss=gnss(), float32=False)
        )

        actual = encode_regular(Flavour.AWS, gnss=gnss())

        assert b'"acc":24.7985725402832,' in actual
        document = json.loads(actual)
        for key, value in example["state"]["reported"]["gnss"]["v"].items():
            got = document["state"]["reported"]["gnss"]["v"][key]
            assert math.isclose(value, got, rel_tol=2**-23)

    def test_batch(self) -> None:
        """The §2.4 example, its elided second fix filled in, exactly."""
        expected = (
            b'{"gnss":[{"v":{"lat":63.42,"lng":10.43,"acc":5.2,"alt":40.1,'
            b'"spd":0.1},"ts":1700000000000},{"v":{"lat":63.43,"lng":10.44,'
            b'"acc":4.5,"alt":41.25,"spd":0.75},"ts":1700000060000}],'
            b'"bat":[{"v":93,"ts":1700000000000}]}'
        )
        first = gnss(lat=63.42, lng=10.43, acc=5.2, alt=40.1, spd=0.1, hdg_acc=90)
        second = gnss(lat=63.43, lng=10.44, acc=4.5, alt=41.25, spd=0.75, hdg_acc=90)
        fixes = [
            attrs.evolve(first, timestamp=1700000000000),
            attrs.evolve(second, timestamp=1700000060000),
        ]

        actual = encode_batch(
            gnss=fixes, bat=[Battery(93, 1700000000000)], float32=False
        )

        assert expected == actual

    def test_ground_fix(self) -> None:
        """The §2.5 example, whose parts carry different ts, byte for byte."""
        expected = (
            b'{"lte":{"mcc":242,"mnc":2,"cell":21679716,"area":40401,'
            b'"earfcn":6446,"adv":80,"rsrp":-97,"rsrq":-9,"ts":1584533788029,'
            b'"nmr":[{"earfcn":262143,"cell":501,"rsrp":-104,"rsrq":-18}]},'
            b'"wifi":{"ts":1670591331896,"aps":["4ce175805e6f","743aef44b743"]}}'
        )
        cells = CellMeasurement(
            mcc=242,
            mnc=2,
            cell_id=21679716,
            tac=40401,
            earfcn=6446,
            timing_advance=80,
            rsrp=-97,
            rsrq=-9.0,
            neighbors=(
                NeighborCell(earfcn=262143, physical_cell_id=501, rsrp=-104, rsrq=-18),
            ),
        )
        aps = ["4C:E1:75:80:5E:6F", "743aef44b743"]

        actual = dumps_cjson(
            {
                "lte": encode_lte(cells, 1584533788029),
                "wifi": encode_wifi(aps, 1670591331896),
            }
        )

        assert expected == actual


class TestNumbers:
    @pytest.mark.parametrize(
        ("value", "text"),
        [
            (4.0, "4"),
            (-0.0, "0"),
            (2147483647.0, "2147483647"),
            (1700000000000, "1700000000000"),
            (1700000000000.0, "1700000000000"),
            (10**20, "100000000000000000000"),
            (1e20, "1e+20"),
            (23.6, "23.6"),
            (math.nan, "null"),
        ],
    )
    def test_integers_and_short_values(self, value: float, text: str) -> None:
        """Integral values print as integers; others as %1.15g where it suffices."""
        assert text == cjson_number(value)

    def test_float32_value_with_15_digits(self) -> None:
        """A float32 value whose 15-digit text reads back within DBL_EPSILON."""
        value = to_float32(24.798573)

        text = cjson_number(value)

        assert "24.7985725402832" == text

    def test_fifteen_digits_accepted_within_tolerance(self) -> None:
        """0.1+0.2 prints 0.3: within a relative DBL_EPSILON of the double."""
        assert "0.3" == cjson_number(0.1 + 0.2)

    def test_float32_tenth(self) -> None:
        """float32 0.1 needs 17 digits under the DBL_EPSILON rule (see module)."""
        value = to_float32(0.1)

        text = cjson_number(value)

        assert "0.10000000149011612" == text
        assert "0.100000001490116" == "%1.15g" % value

    def test_third_needs_17_digits(self) -> None:
        """1/3 tries 15 digits, which read back 4 ulp off, so 17 are printed."""
        text = cjson_number(1 / 3)

        assert "0.33333333333333331" == text
        assert not close(float("%1.15g" % (1 / 3)), 1 / 3)

    @given(st.floats(allow_nan=False, allow_infinity=False))
    def test_reads_back_within_tolerance(self, value: float) -> None:
        """Every finite double reads back within a relative DBL_EPSILON."""
        text = cjson_number(value)

        digits = text.lstrip("-").split("e")[0].replace(".", "").lstrip("0")
        assert close(float(text), value)
        assert len(digits.rstrip("0") if "." in text else digits) <= 17

    @given(json_documents)
    def test_documents_are_valid_json(self, document: Any) -> None:
        """dumps_cjson output parses back to the document, numbers by tolerance."""
        data = dumps_cjson(document)

        assert same_document(document, json.loads(data))

    def test_strings_escaped_like_cjson(self) -> None:
        """Quotes, backslashes and controls are escaped; UTF-8 goes out raw."""
        document = {"k\"ey": "a\\b\n\x01é"}

        actual = dumps_cjson(document)

        assert b'{"k\\"ey":"a\\\\b\\n\\u0001\xc3\xa9"}' == actual


class TestSamples:
    def test_heading_omitted_at_60_degrees(self) -> None:
        """A heading accuracy of 60° or worse leaves hdg out."""
        sample = encode_gnss(gnss(hdg_acc=60.0))

        assert "hdg" not in sample["v"]

    def test_heading_kept_below_60_degrees(self) -> None:
        """A heading accuracy just below 60° keeps hdg, rounded to float32."""
        sample = encode_gnss(gnss(hdg_acc=59.9, hdg=176.12))

        assert to_float32(176.12) == sample["v"]["hdg"]

    def test_air_quality_omitted_when_absent(self) -> None:
        """bsec_iaq -1 means no air-quality reading: the key is left out."""
        sample = encode_env(ENV)

        assert {"temp": 23.6, "hum": 50.5, "atmp": 100.36} == sample["v"]

    def test_air_quality_zero_is_sent(self) -> None:
        """bsec_iaq 0 is a reading and is sent."""
        env = attrs.evolve(ENV, bsec_air_quality=0)

        sample = encode_env(env)

        assert 0 == sample["v"]["bsec_iaq"]

    @pytest.mark.parametrize("mccmnc", ["", "2420x", "242 02", "-24202"])
    def test_bad_mccmnc(self, mccmnc: str) -> None:
        """A non-numeric mccmnc raises ValueError naming the value."""
        roam = attrs.evolve(ROAM, mccmnc=mccmnc)

        with pytest.raises(ValueError, match=re.escape(repr(mccmnc))):
            encode_roam(roam)


class TestDocuments:
    def test_azure_regular_update_is_flat(self) -> None:
        """Azure reports the same keys without the state/reported wrapper."""
        aws = encode_regular(Flavour.AWS, env=ENV, bat=BAT)

        azure = encode_regular(Flavour.AZURE, env=ENV, bat=BAT)

        assert aws == b'{"state":{"reported":' + azure + b"}}"
        assert azure.startswith(b'{"env":{"v":')

    def test_regular_key_order(self) -> None:
        """Regular keys go btn, impact, dev, roam, gnss, env, bat."""
        document = encode_regular(
            Flavour.AZURE,
            bat=BAT,
            env=ENV,
            gnss=gnss(),
            roam=ROAM,
            dev=DEV,
            impact=Impact(1.5, 1),
            btn=Button(2, 1),
        )

        keys = list(json.loads(document))

        assert ["btn", "impact", "dev", "roam", "gnss", "env", "bat"] == keys

    def test_regular_with_nothing(self) -> None:
        """A regular update without samples is NothingToSend."""
        with pytest.raises(NothingToSend):
            encode_regular(Flavour.AWS)

    def test_batch_omits_empty_arrays_and_orders_keys(self) -> None:
        """Only non-empty arrays, in the batch order dev..btn, impact, bat."""
        document = encode_batch(
            bat=[BAT, BAT], btn=[Button(1, 2)], roam=[ROAM], dev=[], env=()
        )

        keys = list(json.loads(document))

        assert ["roam", "btn", "bat"] == keys

    def test_batch_with_nothing(self) -> None:
        """A batch of empty lists is NothingToSend."""
        with pytest.raises(NothingToSend):
            encode_batch(gnss=[], bat=[])

    def test_ui_message_needs_exactly_one(self) -> None:
        """No event is NothingToSend; two events are a ValueError."""
        with pytest.raises(NothingToSend):
            encode_ui_message()
        with pytest.raises(ValueError, match="not both"):
            encode_ui_message(Button(1, 1), Impact(1.0, 1))


class TestCloudLocation:
    def test_single_access_point_is_not_sent(self) -> None:
        """Fewer APs than the nRF Cloud minimum (2) leave wifi out."""
        cells = CellMeasurement(
            mcc=242,
            mnc=1,
            cell_id=7,
            tac=3,
            earfcn=6300,
            timing_advance=0,
            rsrp=-100,
            rsrq=-10.5,
        )
        request = CloudLocationRequest(
            cells=cells, wifi_access_points=("aabbccddeeff",), timestamp=5
        )

        actual = encode_cloud_location(request)

        assert (
            b'{"lte":{"mcc":242,"mnc":1,"cell":7,"area":3,"earfcn":6300,'
            b'"adv":0,"rsrp":-100,"rsrq":-10.5,"ts":5}}'
        ) == actual

    def test_wifi_only_shares_the_request_timestamp(self) -> None:
        """Without cells only wifi is sent, with the request's timestamp."""
        request = CloudLocationRequest(
            cells=None,
            wifi_access_points=("aa-bb-cc-dd-ee-ff", "112233445566"),
            timestamp=9,
        )

        actual = encode_cloud_location(request)

        assert b'{"wifi":{"ts":9,"aps":["aabbccddeeff","112233445566"]}}' == actual

    def test_nothing_to_resolve(self) -> None:
        """No cells and too few APs is NothingToSend."""
        request = CloudLocationRequest(
            cells=None, wifi_access_points=("aabbccddeeff",), timestamp=1
        )

        with pytest.raises(NothingToSend):
            encode_cloud_location(request)

    def test_bad_mac(self) -> None:
        """An access point that is not a MAC address raises ValueError."""
        with pytest.raises(ValueError, match="not a 48-bit MAC"):
            encode_wifi(["aabbccddeef", "112233445566"], 1)
