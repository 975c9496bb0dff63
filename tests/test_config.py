"""Tests for tracker.config: loading, validating and resolving tracker.toml."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from tracker.config import (
    BACKOFF_TABLES,
    DEFAULT_IMEI,
    ConfigError,
    Outage,
    default_config,
    load_config,
    parse_config,
)

ROOT = Path(__file__).resolve().parent.parent


def write_config(directory: Path, text: str) -> Path:
    """Write ``text`` to ``directory/tracker.toml`` and return that path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "tracker.toml"
    path.write_text(text, encoding="utf-8")
    return path


def credentials(directory: Path, service: str, *, missing: str = "") -> str:
    """Create PEM stand-ins under ``directory/certs``; return the TOML table.

    The file named by ``missing`` (e.g. "key_file") is left off the disk.
    """
    (directory / "certs").mkdir(parents=True, exist_ok=True)
    lines = [f"[cloud.{service}]"]
    for key in ("ca_file", "cert_file", "key_file"):
        name = f"certs/{key.removesuffix('_file')}.pem"
        if key != missing:
            (directory / name).write_text("-----BEGIN-----\n", encoding="utf-8")
        lines.append(f'{key} = "{name}"')
    return "\n".join(lines) + "\n"


class TestDefaultFile:
    def test_loads_to_the_defaults(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The shipped tracker.toml equals default_config() but for source."""
        monkeypatch.chdir(ROOT)

        loaded = load_config(ROOT / "tracker.toml")

        assert default_config() == attrs.evolve(loaded, source=None)

    def test_records_where_it_came_from(self) -> None:
        """A loaded file records its absolute path as the source."""
        path = ROOT / "tracker.toml"

        config = load_config(path)

        assert path == config.source
        assert ROOT / "var" == config.state.directory

    def test_defaults_are_the_firmware_defaults(self) -> None:
        """An empty file gives the local cloud, 10 retries, the seed table."""
        text = ""

        config = parse_config(text)

        assert "local" == config.cloud.service
        assert 10 == config.cloud.connect_retries
        assert BACKOFF_TABLES["seed"] == config.cloud.backoff_table
        assert DEFAULT_IMEI == config.device.imei
        assert () == config.modem.outages
        assert config.source is None


# (file text, dotted key, value as shown in the message, part of the reason)
BAD_SETTINGS = [
    pytest.param(
        "[cloud]\nconnect_retries = 14\n",
        "cloud.connect_retries",
        "14",
        "must be between 0 and 13 (the firmware requires CLOUD_CONNECT_RETRIES < 14)",
        id="retries-above-13",
    ),
    pytest.param(
        "[cloud]\nconnect_retries = -1\n",
        "cloud.connect_retries",
        "-1",
        "must be between 0 and 13",
        id="retries-negative",
    ),
    pytest.param(
        '[cloud]\nconnect_retries = "10"\n',
        "cloud.connect_retries",
        '"10"',
        'must be an integer, got string "10"',
        id="retries-string",
    ),
    pytest.param(
        "[util]\nreboot_timeout = 1.5\n",
        "util.reboot_timeout",
        "1.5",
        "must be an integer, got float 1.5",
        id="float-for-integer",
    ),
    pytest.param(
        '[cloud.lwm2m]\nbootstrap = "yes"\n',
        "cloud.lwm2m.bootstrap",
        '"yes"',
        "must be true or false",
        id="string-for-boolean",
    ),
    pytest.param(
        "[colud]\nservice = 1\n",
        "colud",
        "{service = 1}",
        "unknown key (did you mean cloud?)",
        id="unknown-top-level-table",
    ),
    pytest.param(
        "reboot = 1\n",
        "reboot",
        "1",
        "unknown key (expected one of device, cloud, modem, sources, util, log, state, "
        "debug)",
        id="unknown-top-level-key",
    ),
    pytest.param(
        "source = \"elsewhere.toml\"\n",
        "source",
        '"elsewhere.toml"',
        "unknown key",
        id="source-is-not-a-setting",
    ),
    pytest.param(
        "[cloud]\nconect_retries = 10\n",
        "cloud.conect_retries",
        "10",
        "unknown key (did you mean connect_retries?)",
        id="unknown-nested-key",
    ),
    pytest.param(
        '[cloud.aws]\nbroker = "example.com"\n',
        "cloud.aws.broker",
        '"example.com"',
        "unknown key (did you mean broker_host?)",
        id="unknown-key-two-levels-down",
    ),
    pytest.param(
        "cloud = 5\n",
        "cloud",
        "5",
        "must be a table, got integer 5",
        id="value-for-table",
    ),
    pytest.param(
        '[cloud]\nservice = "gcp"\n',
        "cloud.service",
        '"gcp"',
        'must be one of "local", "aws", "azure", "nrf_cloud", "lwm2m", '
        '"simulated"',
        id="unknown-service",
    ),
    pytest.param(
        '[cloud]\nbackoff = "fast"\n',
        "cloud.backoff",
        '"fast"',
        'must be one of "seed", "v2.9.0" or an array of delays in seconds',
        id="unknown-backoff-table",
    ),
    pytest.param(
        "[cloud]\nconnect_retries = 3\nbackoff = [1, 2, 4, 8]\n",
        "cloud.backoff",
        "[1, 2, 4, 8]",
        "has 4 delays, but connect_retries = 3 needs at least 5",
        id="backoff-too-short",
    ),
    pytest.param(
        '[cloud]\nconnect_retries = 14\nbackoff = "v2.9.0"\n',
        "cloud.connect_retries",
        "14",
        "must be between 0 and 13",
        id="retries-14-even-with-16-delays",
    ),
    pytest.param(
        "[cloud]\nconnect_retries = 0\nbackoff = [32, 0]\n",
        "cloud.backoff[1]",
        "0",
        "must be a positive number of seconds",
        id="backoff-zero",
    ),
    pytest.param(
        "[cloud]\nconnect_retries = 0\nbackoff = []\n",
        "cloud.backoff",
        "[]",
        "must not be empty",
        id="backoff-empty",
    ),
    pytest.param(
        '[cloud]\nconnect_retries = 0\nbackoff = [32, "64"]\n',
        "cloud.backoff[1]",
        '"64"',
        "must be an integer",
        id="backoff-string-delay",
    ),
    pytest.param(
        '[cloud]\nservice = "aws"\n',
        "cloud.aws.broker_host",
        '""',
        'required when cloud.service = "aws"',
        id="aws-without-broker-host",
    ),
    pytest.param(
        '[cloud]\nservice = "aws"\n[cloud.aws]\nbroker_host = "a.example.com"\n',
        "cloud.aws.ca_file",
        '""',
        'required when cloud.service = "aws"',
        id="aws-without-ca-file",
    ),
    pytest.param(
        '[cloud.aws]\nbroker_host = "mqtts://a.example.com"\n',
        "cloud.aws.broker_host",
        '"mqtts://a.example.com"',
        "must be a bare host name",
        id="aws-host-with-scheme",
    ),
    pytest.param(
        "[cloud.aws]\nport = 70000\n",
        "cloud.aws.port",
        "70000",
        "must be between 1 and 65535",
        id="port-out-of-range",
    ),
    pytest.param(
        '[cloud]\nservice = "azure"\n',
        "cloud.azure.dps_id_scope",
        '""',
        'required when cloud.service = "azure"',
        id="azure-without-id-scope",
    ),
    pytest.param(
        '[cloud]\nservice = "azure"\n[cloud.azure]\nuse_dps = false\n',
        "cloud.azure.hub_host",
        '""',
        "and cloud.azure.use_dps = false",
        id="azure-without-dps-or-hub",
    ),
    pytest.param(
        "[device]\nuse_custom_client_id = true\n",
        "device.client_id",
        '""',
        "must not be empty when device.use_custom_client_id = true",
        id="custom-client-id-empty",
    ),
    pytest.param(
        '[device]\nimei = "35265610000001"\n',
        "device.imei",
        '"35265610000001"',
        "must be 15 digits, got 14",
        id="imei-too-short",
    ),
    pytest.param(
        '[device]\nimei = "35265610000001O"\n',
        "device.imei",
        '"35265610000001O"',
        "must be 15 digits (0-9)",
        id="imei-not-digits",
    ),
    pytest.param(
        "[device]\nimei = 352656100000010\n",
        "device.imei",
        "352656100000010",
        "must be a string, got integer",
        id="imei-not-a-string",
    ),
    pytest.param(
        '[device]\nimei = "352656100000017"\n',
        "device.imei",
        '"352656100000017"',
        "has a bad Luhn check digit: expected 352656100000010",
        id="imei-bad-luhn",
    ),
    pytest.param(
        '[cloud.lwm2m]\npsk = "0g"\n',
        "cloud.lwm2m.psk",
        '"0g"',
        "must be a string of hex digits",
        id="psk-not-hex",
    ),
    pytest.param(
        '[cloud.lwm2m]\npsk = "abc"\n',
        "cloud.lwm2m.psk",
        '"abc"',
        "must have an even number of hex digits, got 3",
        id="psk-odd-length",
    ),
    pytest.param(
        '[cloud.lwm2m]\npsk = ""\n',
        "cloud.lwm2m.psk",
        '""',
        "must be 1 to 16 bytes",
        id="psk-empty",
    ),
    pytest.param(
        '[cloud.lwm2m]\npsk = "' + "ab" * 17 + '"\n',
        "cloud.lwm2m.psk",
        '"' + "ab" * 17 + '"',
        "the DTLS library fails longer keys), got 17",
        id="psk-too-long",
    ),
    pytest.param(
        '[cloud]\nservice = "lwm2m"\nconnect_retries = 0\nbackoff = [10, 20]\n',
        "cloud.lwm2m.handshake_timeout",
        "30.0",
        "must be shorter than the shortest backoff delay (10 s)",
        id="handshake-outlasts-backoff",
    ),
    pytest.param(
        '[cloud.lwm2m]\nserver_uri = "https://eu.iot.avsystem.cloud"\n',
        "cloud.lwm2m.server_uri",
        '"https://eu.iot.avsystem.cloud"',
        "must be a coap:// or coaps:// URI",
        id="lwm2m-uri-scheme",
    ),
    pytest.param(
        '[cloud.lwm2m]\nserver_uri = "coaps://:5684"\n',
        "cloud.lwm2m.server_uri",
        '"coaps://:5684"',
        "must name a host",
        id="lwm2m-uri-without-host",
    ),
    pytest.param(
        '[cloud.lwm2m]\nserver_uri = "coaps://example.com:99999"\n',
        "cloud.lwm2m.server_uri",
        '"coaps://example.com:99999"',
        "has an invalid port",
        id="lwm2m-uri-bad-port",
    ),
    pytest.param(
        "[[modem.outages]]\nat = 600.0\nduration = 120.0\n"
        "[[modem.outages]]\nat = 650.0\nduration = 10.0\n",
        "modem.outages[1].at",
        "650.0",
        "must be after the end of modem.outages[0]",
        id="outages-overlap",
    ),
    pytest.param(
        "[[modem.outages]]\nat = 600.0\nduration = 0\n",
        "modem.outages[0].duration",
        "0",
        "must be greater than 0",
        id="outage-without-duration",
    ),
    pytest.param(
        "[[modem.outages]]\nat = 1.0\nduration = 1.0\n"
        "[[modem.outages]]\nat = 10.0\nlength = 1.0\n",
        "modem.outages[1].length",
        "1.0",
        "unknown key",
        id="outage-unknown-key",
    ),
    pytest.param(
        "[modem]\noutages = 600\n",
        "modem.outages",
        "600",
        "must be an array of tables",
        id="outages-not-an-array",
    ),
    pytest.param(
        "[modem]\nattach_delay = -1.5\n",
        "modem.attach_delay",
        "-1.5",
        "must be 0 or more",
        id="attach-delay-negative",
    ),
    pytest.param(
        "[modem]\nattach_delay = nan\n",
        "modem.attach_delay",
        "nan",
        "must be a finite number",
        id="attach-delay-nan",
    ),
    pytest.param(
        '[log]\nlevel = "verbose"\n',
        "log.level",
        '"verbose"',
        'must be one of "debug", "info", "warning", "error"',
        id="log-level",
    ),
    pytest.param(
        '[state]\ndirectory = ""\n',
        "state.directory",
        '""',
        "must not be empty",
        id="state-directory-empty",
    ),
]


class TestErrors:
    @pytest.mark.parametrize(("text", "key", "shown", "reason"), BAD_SETTINGS)
    def test_names_file_key_value_and_reason(
        self, tmp_path: Path, text: str, key: str, shown: str, reason: str
    ) -> None:
        """A bad setting is reported with the file, key, value and reason."""
        path = write_config(tmp_path, text)

        with pytest.raises(ConfigError) as caught:
            load_config(path)

        assert f"{path}: {key} = {shown}: " in str(caught.value)
        assert reason in str(caught.value)
        assert key == caught.value.key
        assert reason in caught.value.reason
        assert str(path) == caught.value.path

    def test_carries_the_value_as_written(self) -> None:
        """The error carries the value as written, not as converted."""
        text = "[modem]\nattach_delay = -1\n"

        with pytest.raises(ConfigError) as caught:
            parse_config(text)

        assert -1 == caught.value.value
        assert isinstance(caught.value.value, int)

    def test_parse_config_names_the_source(self) -> None:
        """parse_config names its source in the message."""
        text = "[cloud]\nconnect_retries = 14\n"

        with pytest.raises(ConfigError) as caught:
            parse_config(text, source="override.toml")

        assert str(caught.value).startswith("override.toml: cloud.connect_retries = 14")

    def test_reports_the_first_unknown_key_in_document_order(self) -> None:
        """Of several unknown keys, the one written first is reported."""
        text = "[cloud]\nzzz = 1\naaa = 2\n"

        with pytest.raises(ConfigError) as caught:
            parse_config(text)

        assert "cloud.zzz" == caught.value.key

    def test_syntax_error_names_the_line(self, tmp_path: Path) -> None:
        """A TOML syntax error gives the file and the line number."""
        path = write_config(tmp_path, '[cloud]\nservice = "aws"\nport = \n')

        with pytest.raises(ConfigError) as caught:
            load_config(path)

        assert str(caught.value).startswith(f"{path}: invalid TOML: ")
        assert "line 3" in str(caught.value)
        assert caught.value.key is None

    def test_missing_file(self, tmp_path: Path) -> None:
        """A missing file is reported as such, with its path."""
        path = tmp_path / "nowhere.toml"

        with pytest.raises(ConfigError) as caught:
            load_config(path)

        assert f"{path}: no such file" == str(caught.value)

    def test_directory_instead_of_file(self, tmp_path: Path) -> None:
        """A directory given as the file is reported as such."""
        path = tmp_path

        with pytest.raises(ConfigError) as caught:
            load_config(path)

        assert f"{path}: is a directory, not a file" == str(caught.value)

    def test_credential_file_missing_on_disk(self, tmp_path: Path) -> None:
        """A credential file of the selected service must exist on disk."""
        text = (
            '[cloud]\nservice = "aws"\n'
            + credentials(tmp_path, "aws", missing="key_file")
            + 'broker_host = "a1b2c3-ats.iot.eu-west-1.amazonaws.com"\n'
        )
        path = write_config(tmp_path, text)

        with pytest.raises(ConfigError) as caught:
            load_config(path)

        assert "cloud.aws.key_file" == caught.value.key
        assert f'cloud.aws.key_file = "certs/key.pem": {tmp_path}' in str(caught.value)
        assert "does not exist" in str(caught.value)

    def test_credentials_of_other_services_are_not_checked(
        self, tmp_path: Path
    ) -> None:
        """Credential files of a service not selected need not exist."""
        text = '[cloud.aws]\nca_file = "certs/nowhere.pem"\n'
        path = write_config(tmp_path, text)

        config = load_config(path)

        assert tmp_path / "certs" / "nowhere.pem" == config.cloud.aws.ca_file


class TestBackoff:
    def test_seed_table_lacks_1024(self) -> None:
        """The default "seed" table is the documented one: no 1024."""
        text = ""

        table = parse_config(text).cloud.backoff_table

        assert 15 == len(table)
        assert 1024 not in table
        assert (32, 1048576) == (table[0], table[-1])

    def test_v2_9_0_table_has_16_delays(self) -> None:
        """The "v2.9.0" table resolves to 16 delays, 1024 at index 5."""
        text = '[cloud]\nbackoff = "v2.9.0"\n'

        table = parse_config(text).cloud.backoff_table

        assert 16 == len(table)
        assert 1024 == table[5]
        assert tuple(2**n for n in range(5, 21)) == table

    def test_explicit_table(self) -> None:
        """An explicit array is used as the table as it stands."""
        text = "[cloud]\nconnect_retries = 2\nbackoff = [1, 2, 4, 8]\n"

        cloud = parse_config(text).cloud

        assert (1, 2, 4, 8) == cloud.backoff_table
        assert (1, 2, 4, 8) == cloud.backoff

    def test_table_just_long_enough(self) -> None:
        """connect_retries + 2 delays suffice: 13 retries fit the seed table."""
        text = "[cloud]\nconnect_retries = 13\n"

        cloud = parse_config(text).cloud

        assert 13 + 2 == len(cloud.backoff_table)


class TestClientId:
    def test_aws_uses_the_imei(self, tmp_path: Path) -> None:
        """AWS IoT uses the IMEI as the client id."""
        text = (
            '[device]\nimei = "490154203237518"\n[cloud]\nservice = "aws"\n'
            + credentials(tmp_path, "aws")
            + 'broker_host = "a1b2c3-ats.iot.eu-west-1.amazonaws.com"\n'
        )

        config = load_config(write_config(tmp_path, text))

        assert "490154203237518" == config.client_id

    def test_nrf_cloud_prefixes_the_imei(self, tmp_path: Path) -> None:
        """nRF Cloud puts CLOUD_CLIENT_ID_IMEI_PREFIX in front of the IMEI."""
        text = '[cloud]\nservice = "nrf_cloud"\n' + credentials(tmp_path, "nrf_cloud")

        config = load_config(write_config(tmp_path, text))

        assert f"nrf-{DEFAULT_IMEI}" == config.client_id

    def test_nrf_cloud_prefix_is_configurable(self, tmp_path: Path) -> None:
        """The nRF Cloud prefix comes from cloud.nrf_cloud.client_id_prefix."""
        text = (
            '[cloud]\nservice = "nrf_cloud"\n'
            + credentials(tmp_path, "nrf_cloud")
            + 'client_id_prefix = "test-"\n'
        )

        config = load_config(write_config(tmp_path, text))

        assert f"test-{DEFAULT_IMEI}" == config.client_id

    def test_lwm2m_endpoint_prefixes_the_imei(self) -> None:
        """The LwM2M endpoint is the endpoint prefix followed by the IMEI."""
        text = '[cloud]\nservice = "lwm2m"\n'

        config = parse_config(text)

        assert f"urn:imei:{DEFAULT_IMEI}" == config.lwm2m_endpoint
        assert DEFAULT_IMEI == config.client_id

    def test_custom_id_wins_everywhere(self, tmp_path: Path) -> None:
        """A custom client id replaces the IMEI-based id and endpoint."""
        text = (
            '[device]\nuse_custom_client_id = true\nclient_id = "my-tracker"\n'
            '[cloud]\nservice = "nrf_cloud"\n' + credentials(tmp_path, "nrf_cloud")
        )

        config = load_config(write_config(tmp_path, text))

        assert "my-tracker" == config.client_id
        assert "my-tracker" == config.lwm2m_endpoint

    def test_custom_id_ignored_unless_enabled(self) -> None:
        """client_id alone does not replace the IMEI."""
        text = '[device]\nclient_id = "my-tracker"\n'

        config = parse_config(text)

        assert DEFAULT_IMEI == config.client_id


class TestPaths:
    def test_relative_paths_start_at_the_config_directory(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Relative certificate and state paths are resolved against the file's
        directory, not the current one."""
        directory = tmp_path / "etc"
        text = (
            '[cloud]\nservice = "aws"\n'
            + credentials(directory, "aws")
            + 'broker_host = "a1b2c3-ats.iot.eu-west-1.amazonaws.com"\n'
            + '[state]\ndirectory = "state"\n'
        )
        path = write_config(directory, text)
        monkeypatch.chdir(tmp_path)

        config = load_config(Path("etc/tracker.toml"))

        assert directory / "certs" / "ca.pem" == config.cloud.aws.ca_file
        assert directory / "certs" / "cert.pem" == config.cloud.aws.cert_file
        assert directory / "certs" / "key.pem" == config.cloud.aws.key_file
        assert directory / "state" == config.state.directory
        assert path == config.source

    def test_absolute_paths_are_kept(self, tmp_path: Path) -> None:
        """An absolute path in the file is used as it stands."""
        text = f'[state]\ndirectory = "{tmp_path / "elsewhere"}"\n'

        config = parse_config(text)

        assert tmp_path / "elsewhere" == config.state.directory

    def test_unset_credentials_stay_unset(self) -> None:
        """An empty credential path is None, not the config directory."""
        text = ""

        config = parse_config(text)

        assert config.cloud.azure.ca_file is None


class TestOtherSettings:
    def test_outages_in_order(self) -> None:
        """Outages are read in order, integers accepted for seconds."""
        text = (
            "[[modem.outages]]\nat = 600\nduration = 120\n"
            "[[modem.outages]]\nat = 900.5\nduration = 1\n"
        )

        outages = parse_config(text).modem.outages

        expected = (Outage(at=600.0, duration=120.0), Outage(at=900.5, duration=1.0))
        assert expected == outages
        assert 720.0 == outages[0].end

    def test_default_psk_is_flagged(self) -> None:
        """uses_default_psk is true only for the public default key."""
        custom = '[cloud.lwm2m]\npsk = "00112233"\n'

        default, other = parse_config(""), parse_config(custom)

        assert default.cloud.lwm2m.uses_default_psk
        assert not other.cloud.lwm2m.uses_default_psk

    @pytest.mark.parametrize(
        ("uri", "host", "port"),
        [
            ("coaps://eu.iot.avsystem.cloud:5694", "eu.iot.avsystem.cloud", 5694),
            ("coaps://leshan.example", "leshan.example", 5684),
            ("coap://leshan.example", "leshan.example", 5683),
        ],
    )
    def test_lwm2m_server_host_and_port(self, uri: str, host: str, port: int) -> None:
        """The LwM2M URI's port defaults to CoAP's port for its scheme."""
        text = f'[cloud.lwm2m]\nserver_uri = "{uri}"\n'

        lwm2m = parse_config(text).cloud.lwm2m

        assert (host, port) == (lwm2m.server_host, lwm2m.server_port)

    def test_azure_without_dps_needs_no_id_scope(self, tmp_path: Path) -> None:
        """Azure without DPS needs the hub host but not the ID scope."""
        text = (
            '[cloud]\nservice = "azure"\n'
            + credentials(tmp_path, "azure")
            + 'use_dps = false\nhub_host = "my-hub.azure-devices.net"\n'
        )

        config = load_config(write_config(tmp_path, text))

        assert "my-hub.azure-devices.net" == config.cloud.azure.hub_host


class TestAwsTopicVariant:
    def test_legacy_topics_default_off_and_settable(self) -> None:
        """The older AWS topic names are a configuration choice, off by default."""
        default = parse_config("")

        legacy = parse_config("[cloud.aws]\nlegacy_topics = true\n")

        assert default.cloud.aws.legacy_topics is False
        assert legacy.cloud.aws.legacy_topics is True

    def test_legacy_topics_must_be_boolean(self) -> None:
        """A string where a boolean belongs names the key."""
        with pytest.raises(ConfigError, match=r"cloud\.aws\.legacy_topics"):
            parse_config('[cloud.aws]\nlegacy_topics = "yes"\n')


class TestFotaCaFile:
    def test_empty_means_system_store(self) -> None:
        """An empty download_ca_file leaves the download verified by system CAs."""
        config = parse_config('[cloud.aws]\ndownload_ca_file = ""\n')

        assert config.cloud.aws.download_ca_file is None

    def test_relative_path_resolved_and_checked(self, tmp_path: Path) -> None:
        """The file is resolved beside tracker.toml and must exist for AWS."""
        for name in ("ca.pem", "cert.pem", "key.pem", "bucket.pem"):
            (tmp_path / name).write_text("x")
        aws = (
            '[cloud]\nservice = "aws"\n[cloud.aws]\nbroker_host = "h"\n'
            'ca_file = "ca.pem"\ncert_file = "cert.pem"\nkey_file = "key.pem"\n'
        )
        good = tmp_path / "good.toml"
        good.write_text(aws + 'download_ca_file = "bucket.pem"\n')
        bad = tmp_path / "bad.toml"
        bad.write_text(aws + 'download_ca_file = "missing.pem"\n')

        config = load_config(good)

        assert config.cloud.aws.download_ca_file == tmp_path / "bucket.pem"
        expected = r"cloud\.aws\.download_ca_file = \"missing"
        with pytest.raises(ConfigError, match=expected):
            load_config(bad)


class TestSourcesAndDebug:
    def test_scripted_sources_parse(self) -> None:
        """Presses and movement are read in order with their fields."""
        config = parse_config(
            "[sources]\nseed = 7\n"
            "[[sources.presses]]\nat = 10.0\nbutton = 2\n"
            '[[sources.movement]]\nat = 5.0\nkind = "impact"\nmagnitude = 3.5\n'
        )

        assert config.sources.seed == 7
        assert [(p.at, p.button) for p in config.sources.presses] == [(10.0, 2)]
        [impact] = config.sources.movement
        assert (impact.at, impact.kind, impact.magnitude) == (5.0, "impact", 3.5)

    @pytest.mark.parametrize(
        ("text", "key"),
        [
            ('[[sources.movement]]\nat = 1\nkind = "shake"\n', "kind"),
            ('[[sources.movement]]\nat = 1\nkind = "impact"\n', "magnitude"),
            ("[[sources.presses]]\nat = 1\nbutton = 9\n", "button"),
            ("[debug]\nport = 70000\n", "debug.port"),
            ("[debug]\ninterval = 0\n", "debug.interval"),
        ],
    )
    def test_bad_values_name_the_key(self, text: str, key: str) -> None:
        """Each bad source or debug value is refused by its key."""
        with pytest.raises(ConfigError, match=key):
            parse_config(text)

    def test_route_file_is_parsed_at_load(self, tmp_path: Path) -> None:
        """A route that is not GPX or NMEA fails before anything starts."""
        (tmp_path / "route.gpx").write_text("not a route\n")
        path = tmp_path / "t.toml"
        path.write_text('[sources]\nroute = "route.gpx"\n')

        with pytest.raises(ConfigError, match="sources.route.*not an NMEA sentence"):
            load_config(path)
