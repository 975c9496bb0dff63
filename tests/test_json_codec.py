"""The AWS/Azure configuration document: decoding rules and robustness."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.codec import (
    ConfigDuplicate,
    ConfigEmpty,
    ConfigInvalid,
    NotAConfigDocument,
)
from protocols.config import DeviceConfig, NoData
from protocols.json_codec import Flavour, JsonCodec, dumps, encode_config

DEFAULT = DeviceConfig()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)


class TestDecode:
    def test_numbers_are_truncated_and_thresholds_kept_as_floats(self) -> None:
        """actwt 59.9 becomes 59; accath 2.5 stays 2.5."""
        codec = JsonCodec()

        config = codec.decode_config(b'{"cfg":{"actwt":59.9,"accath":2.5}}', DEFAULT)

        assert config.active_wait_timeout == 59
        assert config.accelerometer_activity_threshold == 2.5

    def test_nod_replaces_the_whole_set(self) -> None:
        """An empty nod re-enables every method; unknown names are ignored."""
        codec = JsonCodec()
        current = DeviceConfig(no_data=NoData(gnss=True, wifi=True))

        config = codec.decode_config(b'{"cfg":{"nod":["ncell","bogus"]}}', current)

        assert config.no_data == NoData(neighbor_cell=True)

    def test_azure_reads_desired_cfg_and_has_no_version_filter(self) -> None:
        """A full twin carries cfg under desired; versions are not compared."""
        codec = JsonCodec(Flavour.AZURE)
        twin = b'{"version":1,"desired":{"cfg":{"act":false},"$version":4}}'

        first = codec.decode_config(twin, DEFAULT)
        second = codec.decode_config(twin, DEFAULT)

        assert first == second == DeviceConfig(active_mode=False)

    @pytest.mark.parametrize(
        ("document", "error"),
        [
            (b"[1,2]", NotAConfigDocument),
            (b"{", NotAConfigDocument),
            (b'{"state":{}}', ConfigEmpty),
            (b'{"cfg":[]}', ConfigInvalid),
            (b'{"cfg":{"loct":"300"}}', ConfigInvalid),
            (b'{"cfg":{"act":"yes"}}', ConfigInvalid),
            (b'{"cfg":{"accito":1e999}}', ConfigInvalid),
            (b'{"cfg":{"nod":[1]}}', ConfigInvalid),
        ],
    )
    def test_bad_documents(self, document: bytes, error: type[Exception]) -> None:
        """Each malformed document raises the codec error the cloud actor expects."""
        with pytest.raises(error):
            JsonCodec().decode_config(document, DEFAULT)

    def test_older_version_is_a_duplicate(self) -> None:
        """A delta whose version is not newer than the last one is dropped."""
        codec = JsonCodec()
        codec.decode_config(b'{"version":5,"state":{"cfg":{}}}', DEFAULT)

        with pytest.raises(ConfigDuplicate, match="version 4 <= last seen 5"):
            codec.decode_config(b'{"version":4,"state":{"cfg":{}}}', DEFAULT)

    @given(json_values)
    def test_any_json_is_decoded_or_rejected_cleanly(self, value: object) -> None:
        """Arbitrary JSON never escapes the codec's own exceptions."""
        codec = JsonCodec()
        document = json.dumps({"cfg": value}).encode()

        try:
            config = codec.decode_config(document, DEFAULT)
        except (ConfigEmpty, ConfigInvalid, NotAConfigDocument, ConfigDuplicate):
            return

        assert isinstance(config, DeviceConfig)


class TestEncode:
    def test_reported_cfg_matches_the_wire_example(self) -> None:
        """Key order and integral numbers are printed as the firmware prints them."""
        config = DeviceConfig(active_mode=False)

        encoded = dumps({"state": {"reported": {"cfg": encode_config(config)}}})

        assert encoded == (
            b'{"state":{"reported":{"cfg":{"act":false,"loct":300,"actwt":300,'
            b'"mvres":120,"mvt":3600,"accath":4,"accith":4,"accito":60,"nod":[]}}}}'
        )

    def test_round_trip(self) -> None:
        """Decoding the encoded configuration gives the same configuration."""
        config = DeviceConfig(
            active_mode=False, accelerometer_activity_threshold=2.25,
            no_data=NoData(gnss=True, wifi=True),
        )  # fmt: skip

        document = dumps({"cfg": encode_config(config)})

        assert JsonCodec().decode_config(document, DEFAULT) == config
