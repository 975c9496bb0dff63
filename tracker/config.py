"""The configuration of the service: ``tracker.toml`` as frozen value objects.

The file stands in for the firmware's build-time Kconfig options: every
setting that has a Kconfig counterpart says so in its docstring, and the
defaults are the firmware's defaults (v2.9.0) unless noted.

Loading happens in three steps, and any failure in any of them becomes one
`ConfigError` naming the file, the dotted key, the offending value and what
was expected:

1. `tomllib` parses the text; its syntax errors carry the line number.
2. A cattrs converter structures the tables into the classes below. It
   forbids unknown keys and is strict about types (``"10"`` is not an
   integer, ``true`` is not a number). The classes' field validators check
   single values, and their ``__attrs_post_init__`` methods check the rules
   that span several keys.
3. Relative paths are resolved against the directory of the file, and the
   credential files of the selected cloud service are checked on disk.

cattrs collects every failure of step 2 into an exception group. We report
only the first one, in the order the keys appear in the document, and walk
the group's notes to rebuild its dotted key.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from datetime import date, datetime, time
from itertools import pairwise
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

import attrs
import cattrs
from cattrs.errors import (
    AttributeValidationNote,
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn, override

from actors.backoff import BACKOFF_TABLES as _TABLES
from actors.backoff import MAX_CONNECT_RETRIES
from actors.modem import luhn_check_digit
from actors.route import RouteError, load_route

__all__ = [
    "BACKOFF_TABLES",
    "DEFAULT_IMEI",
    "DEFAULT_LWM2M_PSK",
    "AwsConfig",
    "AzureConfig",
    "CloudConfig",
    "Config",
    "ConfigError",
    "DeviceConfig",
    "LocalCloudConfig",
    "LogConfig",
    "Lwm2mConfig",
    "ModemConfig",
    "NrfCloudConfig",
    "Outage",
    "SimulatedCloudConfig",
    "StateConfig",
    "UtilConfig",
    "default_config",
    "load_config",
    "parse_config",
]

#: Reconnection delays in seconds, indexed by the retry counter (spec §5.1);
#: the tables themselves live with the backoff they drive.
BACKOFF_TABLES: Final[Mapping[str, tuple[int, ...]]] = MappingProxyType(
    dict(_TABLES)
)

#: The simulated modem's IMEI: an arbitrary serial with a valid check digit.
DEFAULT_IMEI: Final = "352656100000010"

#: CONFIG_LWM2M_INTEGRATION_PSK: fine for trying Coiote, never for production.
DEFAULT_LWM2M_PSK: Final = "000102030405060708090a0b0c0d0e0f"

SERVICES: Final = ("local", "aws", "azure", "nrf_cloud", "lwm2m", "simulated")
#: The clouds the local cloud can stand in for; the device talks to it as
#: it would to that cloud.
LOCAL_CLOUDS: Final = ("aws", "lwm2m")
#: The longest DTLS pre-shared key, in bytes: the DTLS library under aiocoap
#: (tinydtls through DTLSSocket 0.2) fails handshakes with longer keys.  The
#: firmware accepts up to 64; its default key has 16.
MAX_PSK_BYTES: Final = 16
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
LOG_FORMATS: Final = ("auto", "json", "console")
MOVEMENT_KINDS: Final = ("activity", "inactivity", "impact")

# The firmware's build-time assert is CONFIG_CLOUD_CONNECT_RETRIES < 14.
_MAX_CONNECT_RETRIES: Final = MAX_CONNECT_RETRIES
_CREDENTIAL_FILES: Final = ("ca_file", "cert_file", "key_file")
_HEX_DIGITS: Final = re.compile(r"[0-9A-Fa-f]*")
_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")
# Metadata flag for attributes that exist on the object but not in the file.
_NOT_IN_FILE: Final = "tracker.config.not_in_file"

# A key path relative to some table: names of keys and indices into arrays.
_Where = tuple[str | int, ...]
_Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


# ---------------------------------------------------------------------------
# Errors and how values are shown in them


class ConfigError(Exception):
    """The configuration file cannot be used; the message says exactly why.

    Attributes:
        path: The file as named in the message: the path given to
            `load_config`, or the ``source`` given to `parse_config`.
        key: The dotted key of the offending setting (``cloud.aws.port``,
            ``modem.outages[1].at``), or None when the file as a whole is
            at fault (missing, unreadable, not TOML).
        value: The offending value as written in the file, or None.
        reason: What was expected instead.
    """

    def __init__(self, path: str, key: str | None, value: object, reason: str) -> None:
        if key is None:
            message = f"{path}: {reason}"
        else:
            message = f"{path}: {key} = {_render(value)}: {reason}"
        super().__init__(message)
        self.path = path
        self.key = key
        self.value = value
        self.reason = reason


class _Invalid(ValueError):
    """One bad value, located relative to the table where it was found."""

    def __init__(self, where: _Where, value: object, reason: str) -> None:
        super().__init__(f"{_dotted(where) or 'value'} = {_render(value)}: {reason}")
        self.where = where
        self.value = value
        self.reason = reason


def _dotted(where: _Where) -> str:
    parts: list[str] = []
    for step in where:
        if isinstance(step, int):
            parts.append(f"[{step}]")
        else:
            parts.append(f".{step}" if parts else step)
    return "".join(parts)


def _toml(value: object) -> str:
    """Write a value the way it would appear in a TOML file."""
    match value:
        case bool():
            return "true" if value else "false"
        case int():
            return str(value)
        case float() if math.isnan(value):
            return "nan"
        case float() if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        case float():
            return repr(value)
        case str() | Path():
            return json.dumps(str(value), ensure_ascii=False)
        case datetime() | date() | time():
            return value.isoformat()
        case list() | tuple():
            return "[" + ", ".join(_toml(item) for item in value) + "]"
        case dict():
            pairs = (f"{_toml_key(k)} = {_toml(v)}" for k, v in value.items())
            return "{" + ", ".join(pairs) + "}"
        case _:
            return repr(value)


def _toml_key(key: object) -> str:
    text = str(key)
    return text if _BARE_KEY.fullmatch(text) else json.dumps(text)


def _render(value: object, limit: int = 80) -> str:
    text = _toml(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _kind(value: object) -> str:
    """Name the TOML type of a parsed value, for "got ..." messages."""
    for python_type, name in (
        (bool, "boolean"),
        (int, "integer"),
        (float, "float"),
        (str, "string"),
        (list, "array"),
        (dict, "table"),
        (datetime, "datetime"),
        (date, "date"),
        (time, "time"),
    ):
        if isinstance(value, python_type):
            return name
    return type(value).__name__


def _got(value: object) -> str:
    return f"got {_kind(value)} {_render(value, limit=40)}"


# ---------------------------------------------------------------------------
# Field validators: each raises _Invalid naming its own attribute


def _check(test: Callable[[Any], bool], reason: str) -> _Validator:
    def validate(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not test(value):
            raise _Invalid((attribute.name,), value, reason)

    return validate


def _between(low: int, high: int, why: str = "") -> _Validator:
    return _check(lambda v: low <= v <= high, f"must be between {low} and {high}{why}")


def _one_of(*choices: str) -> _Validator:
    listed = ", ".join(json.dumps(choice) for choice in choices)
    return _check(lambda v: v in choices, f"must be one of {listed}")


_positive = _check(lambda v: v > 0, "must be greater than 0")
_not_negative = _check(lambda v: v >= 0, "must be 0 or more")
_port = _between(1, 65535)
_host = _check(
    lambda v: not re.search(r"[\s/]|://", v),
    "must be a bare host name (no scheme, path or spaces)",
)


def _check_local_cloud(
    instance: object, attribute: attrs.Attribute[Any], value: str
) -> None:
    if value in LOCAL_CLOUDS:
        return
    listed = ", ".join(json.dumps(name) for name in LOCAL_CLOUDS)
    raise _Invalid((attribute.name,), value, f"must be one of {listed}")


def _check_imei(instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not value.isascii() or not value.isdigit():
        reason = "must be 15 digits (0-9)"
    elif len(value) != 15:
        reason = f"must be 15 digits, got {len(value)}"
    elif value[-1] != (expected := luhn_check_digit(value[:-1])):
        reason = f"has a bad Luhn check digit: expected {value[:-1]}{expected}"
    else:
        return
    raise _Invalid((attribute.name,), value, reason)


def _check_psk(instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not _HEX_DIGITS.fullmatch(value):
        reason = "must be a string of hex digits (0-9, a-f)"
    elif len(value) % 2:
        reason = f"must have an even number of hex digits, got {len(value)}"
    elif not 1 <= len(value) // 2 <= MAX_PSK_BYTES:
        reason = (
            f"must be 1 to {MAX_PSK_BYTES} bytes (2 to {2 * MAX_PSK_BYTES} hex "
            f"digits; the DTLS library fails longer keys), got {len(value) // 2}"
        )
    else:
        return
    raise _Invalid((attribute.name,), value, reason)


def _check_coap_uri(
    instance: object, attribute: attrs.Attribute[Any], value: str
) -> None:
    parts = urlsplit(value)
    try:
        port = parts.port
    except ValueError:  # not a number, or out of range
        port = 0
    if parts.scheme not in ("coap", "coaps"):
        reason = "must be a coap:// or coaps:// URI"
    elif not parts.hostname:
        reason = "must name a host (coaps://host[:port])"
    elif port == 0:
        reason = "has an invalid port (must be 1 to 65535)"
    else:
        return
    raise _Invalid((attribute.name,), value, reason)


def _check_backoff(
    instance: object, attribute: attrs.Attribute[Any], value: str | tuple[int, ...]
) -> None:
    if isinstance(value, str):
        if value not in BACKOFF_TABLES:
            names = ", ".join(json.dumps(name) for name in BACKOFF_TABLES)
            raise _Invalid(
                (attribute.name,),
                value,
                f"must be one of {names} or an array of delays in seconds",
            )
        return
    if not value:
        raise _Invalid((attribute.name,), value, "must not be empty")
    for index, delay in enumerate(value):
        if delay <= 0:
            raise _Invalid(
                (attribute.name, index), delay, "must be a positive number of seconds"
            )


# ---------------------------------------------------------------------------
# The schema


@attrs.frozen
class DeviceConfig:
    """The ``[device]`` table: who the device says it is.

    Attributes:
        imei: The simulated modem's IMEI: 15 digits with a valid Luhn check
            digit. It is the client id unless a custom one is configured.
        use_custom_client_id: CONFIG_CLOUD_CLIENT_ID_USE_CUSTOM.
        client_id: CONFIG_CLOUD_CLIENT_ID; required when
            ``use_custom_client_id`` is true.
    """

    imei: str = attrs.field(default=DEFAULT_IMEI, validator=_check_imei)
    use_custom_client_id: bool = False
    client_id: str = ""

    def __attrs_post_init__(self) -> None:
        if self.use_custom_client_id and not self.client_id:
            raise _Invalid(
                ("client_id",),
                self.client_id,
                "must not be empty when device.use_custom_client_id = true "
                "(CLOUD_CLIENT_ID_USE_CUSTOM needs CLOUD_CLIENT_ID)",
            )


@attrs.frozen
class AwsConfig:
    """The ``[cloud.aws]`` table: AWS IoT Core over MQTT.

    The three files take the place of the modem's security tag
    (CONFIG_MQTT_HELPER_SEC_TAG); relative paths are resolved against the
    directory of the configuration file.

    Attributes:
        broker_host: CONFIG_AWS_IOT_BROKER_HOST_NAME.
        port: The MQTT over TLS port.
        ca_file: The CA certificate (PEM) that signs the broker.
        cert_file: The device certificate (PEM).
        key_file: The device's private key (PEM).
        keepalive: CONFIG_MQTT_KEEPALIVE, in seconds.
        download_ca_file: The CA certificate (PEM) that signs the servers
            the device downloads from (firmware images, P-GPS predictions);
            empty means the system's CA certificates
            (CONFIG_AWS_FOTA_DOWNLOAD_SECURITY_TAG).
        legacy_topics: Use the topic names of older firmware releases
            (``<id>/ncellmeas``, ``<id>/agps/get``, ``<id>/agps``) instead
            of ``<id>/ground-fix`` and ``<id>/agnss[/get]``.
    """

    broker_host: str = attrs.field(default="", validator=_host)
    port: int = attrs.field(default=8883, validator=_port)
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive: int = attrs.field(default=1200, validator=_positive)
    download_ca_file: Path | None = None
    legacy_topics: bool = False


@attrs.frozen
class AzureConfig:
    """The ``[cloud.azure]`` table: Azure IoT Hub, by default through DPS.

    Attributes:
        dps_id_scope: CONFIG_AZURE_IOT_HUB_DPS_ID_SCOPE; required with DPS.
        dps_host: CONFIG_AZURE_IOT_HUB_DPS_HOSTNAME.
        use_dps: CONFIG_AZURE_IOT_HUB_DPS: find the hub through the Device
            Provisioning Service instead of connecting to ``hub_host``.
        hub_host: The IoT hub; required when ``use_dps`` is false.
        port: The MQTT over TLS port.
        ca_file: The CA certificate (PEM).
        cert_file: The device certificate (PEM).
        key_file: The device's private key (PEM).
        keepalive: The MQTT keepalive in seconds (overlay-azure.conf's).
    """

    dps_id_scope: str = ""
    dps_host: str = attrs.field(
        default="global.azure-devices-provisioning.net", validator=_host
    )
    use_dps: bool = True
    hub_host: str = attrs.field(default="", validator=_host)
    port: int = attrs.field(default=8883, validator=_port)
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive: int = attrs.field(default=1177, validator=_positive)


@attrs.frozen
class NrfCloudConfig:
    """The ``[cloud.nrf_cloud]`` table: nRF Cloud over MQTT.

    Attributes:
        host: The nRF Cloud MQTT broker.
        port: The MQTT over TLS port.
        client_id_prefix: CONFIG_CLOUD_CLIENT_ID_IMEI_PREFIX, put in front of
            the IMEI to form the client id.
        ca_file: The CA certificate (PEM).
        cert_file: The device certificate (PEM).
        key_file: The device's private key (PEM).
        keepalive: CONFIG_MQTT_KEEPALIVE, in seconds.
    """

    host: str = attrs.field(default="mqtt.nrfcloud.com", validator=_host)
    port: int = attrs.field(default=8883, validator=_port)
    client_id_prefix: str = "nrf-"
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive: int = attrs.field(default=1200, validator=_positive)


@attrs.frozen
class Lwm2mConfig:
    """The ``[cloud.lwm2m]`` table: an LwM2M server over CoAP and DTLS.

    Attributes:
        server_uri: CONFIG_LWM2M_CLIENT_UTILS_SERVER. The firmware's default
            port is 5684, or 5694 when bootstrapping (Coiote's bootstrap
            server); here the URI is never changed behind your back.
        bootstrap: CONFIG_LWM2M_RD_CLIENT_SUPPORT_BOOTSTRAP.
        endpoint_prefix: CONFIG_LWM2M_INTEGRATION_ENDPOINT_PREFIX.
        psk: CONFIG_LWM2M_INTEGRATION_PSK, as hex (1 to ``MAX_PSK_BYTES``
            bytes; the firmware takes up to 64).
        provision_credentials:
            CONFIG_LWM2M_INTEGRATION_PROVISION_CREDENTIALS.
        lifetime: CONFIG_LWM2M_ENGINE_DEFAULT_LIFETIME, in seconds.
        handshake_timeout: Seconds a DTLS handshake may take (a server that
            silently drops a handshake with a wrong key is only detected so);
            shorter than the shortest backoff delay.
    """

    server_uri: str = attrs.field(
        default="coaps://eu.iot.avsystem.cloud:5684", validator=_check_coap_uri
    )
    bootstrap: bool = False
    endpoint_prefix: str = "urn:imei:"
    psk: str = attrs.field(default=DEFAULT_LWM2M_PSK, validator=_check_psk)
    provision_credentials: bool = True
    lifetime: int = attrs.field(default=43200, validator=_positive)
    handshake_timeout: float = attrs.field(default=30.0, validator=_positive)

    @property
    def uses_default_psk(self) -> bool:
        """Whether the PSK is the well-known default (unsafe in production)."""
        return self.psk.lower() == DEFAULT_LWM2M_PSK

    @property
    def server_host(self) -> str:
        """The host named by ``server_uri``."""
        return urlsplit(self.server_uri).hostname or ""

    @property
    def server_port(self) -> int:
        """The port of ``server_uri``, or the CoAP default for its scheme."""
        parts = urlsplit(self.server_uri)
        return parts.port or (5684 if parts.scheme == "coaps" else 5683)


@attrs.frozen
class SimulatedCloudConfig:
    """The ``[cloud.simulated]`` table: the scripted in-memory cloud.

    Attributes:
        connect_delay: Seconds until a connection attempt succeeds.
        refuse_attempts: How many connection attempts, from the first, never
            complete (to exercise the backoff).
        ack_delay: Seconds before a QoS 1 message is acknowledged.
    """

    connect_delay: float = attrs.field(default=1.0, validator=_not_negative)
    refuse_attempts: int = attrs.field(default=0, validator=_not_negative)
    ack_delay: float = attrs.field(default=0.2, validator=_not_negative)


@attrs.frozen
class LocalCloudConfig:
    """The ``[cloud.local]`` table: the cloud that runs inside the service.

    Attributes:
        cloud: Which cloud it stands in for, hence how the device talks to
            it; one of `LOCAL_CLOUDS`.
        host: The address its broker, file server and LwM2M server listen
            on.
        mqtt_port: The MQTT over TLS port; 0 picks a free one.
        http_port: The HTTPS file server's port; 0 picks a free one.
        lwm2m_port: The LwM2M server's CoAP over DTLS port; 0 picks a free
            one.
        coap_port: The LwM2M server's plain CoAP port (for tools without
            DTLS); 0 picks a free one.
        directory: Its CA, certificates and served files; absolute once
            loaded, ``<state.directory>/local-cloud`` when not set.
    """

    cloud: str = attrs.field(default="aws", validator=_check_local_cloud)
    host: str = attrs.field(
        default="127.0.0.1",
        validator=[_host, _check(bool, "must not be empty")],
    )
    mqtt_port: int = attrs.field(default=8883, validator=_between(0, 65535))
    http_port: int = attrs.field(default=8443, validator=_between(0, 65535))
    lwm2m_port: int = attrs.field(default=5684, validator=_between(0, 65535))
    coap_port: int = attrs.field(default=5683, validator=_between(0, 65535))
    directory: Path | None = None


@attrs.frozen
class CloudConfig:
    """The ``[cloud]`` table: which cloud, and how hard to try reaching it.

    Attributes:
        service: One of "local", "aws", "azure", "nrf_cloud", "lwm2m",
            "simulated".
        connect_retries: CONFIG_CLOUD_CONNECT_RETRIES (0 to 13).
        backoff: The name of a table in `BACKOFF_TABLES`, or the delays
            themselves; `backoff_table` gives the resolved delays.
        user_association_timeout: CONFIG_CLOUD_USER_ASSOCIATION_TIMEOUT_SEC.
        local: Settings used when ``service`` is "local".
        aws: Settings used when ``service`` is "aws".
        azure: Settings used when ``service`` is "azure".
        nrf_cloud: Settings used when ``service`` is "nrf_cloud".
        lwm2m: Settings used when ``service`` is "lwm2m".
        simulated: Settings used when ``service`` is "simulated".
    """

    service: str = attrs.field(default="local", validator=_one_of(*SERVICES))
    connect_retries: int = attrs.field(
        default=10,
        validator=_between(
            0,
            _MAX_CONNECT_RETRIES,
            " (the firmware requires CLOUD_CONNECT_RETRIES < 14)",
        ),
    )
    backoff: str | tuple[int, ...] = attrs.field(
        default="seed", validator=_check_backoff
    )
    user_association_timeout: int = attrs.field(default=300, validator=_positive)
    local: LocalCloudConfig = attrs.Factory(LocalCloudConfig)
    aws: AwsConfig = attrs.Factory(AwsConfig)
    azure: AzureConfig = attrs.Factory(AzureConfig)
    nrf_cloud: NrfCloudConfig = attrs.Factory(NrfCloudConfig)
    lwm2m: Lwm2mConfig = attrs.Factory(Lwm2mConfig)
    simulated: SimulatedCloudConfig = attrs.Factory(SimulatedCloudConfig)

    @property
    def speaks_lwm2m(self) -> bool:
        """Whether the device talks LwM2M (to a server, or the local one)."""
        return self.service == "lwm2m" or (
            self.service == "local" and self.local.cloud == "lwm2m"
        )

    @property
    def backoff_table(self) -> tuple[int, ...]:
        """The reconnection delays in seconds, indexed by the retry counter."""
        if isinstance(self.backoff, str):
            return BACKOFF_TABLES[self.backoff]
        return self.backoff

    def __attrs_post_init__(self) -> None:
        # connect_cloud() reads backoff[retries] before it compares retries
        # with the limit, so the last read is at index connect_retries + 1.
        needed = self.connect_retries + 2
        if len(self.backoff_table) < needed:
            raise _Invalid(
                ("backoff",),
                self.backoff,
                f"has {len(self.backoff_table)} delays, but connect_retries = "
                f"{self.connect_retries} needs at least {needed} (the firmware "
                "reads backoff[retries] before it checks the retry limit)",
            )

        needs = f'required when cloud.service = "{self.service}"'
        match self.service:
            case "aws":
                _require(("aws", "broker_host"), self.aws.broker_host, needs)
                _require_credentials("aws", self.aws, needs)
            case "azure":
                if self.azure.use_dps:
                    _require(("azure", "dps_id_scope"), self.azure.dps_id_scope, needs)
                    _require(("azure", "dps_host"), self.azure.dps_host, needs)
                else:
                    _require(
                        ("azure", "hub_host"),
                        self.azure.hub_host,
                        f"{needs} and cloud.azure.use_dps = false",
                    )
                _require_credentials("azure", self.azure, needs)
            case "nrf_cloud":
                _require(("nrf_cloud", "host"), self.nrf_cloud.host, needs)
                _require_credentials("nrf_cloud", self.nrf_cloud, needs)
        shortest = min(self.backoff_table)
        if self.speaks_lwm2m and self.lwm2m.handshake_timeout >= shortest:
            # A connection attempt is refused while a handshake still runs,
            # so a retry due before the handshake gives up would be lost.
            raise _Invalid(
                ("lwm2m", "handshake_timeout"),
                self.lwm2m.handshake_timeout,
                f"must be shorter than the shortest backoff delay ({shortest} s)",
            )


def _require(where: _Where, value: str, reason: str) -> None:
    if not value:
        raise _Invalid(where, value, reason)


def _require_credentials(
    section: str, settings: AwsConfig | AzureConfig | NrfCloudConfig, needs: str
) -> None:
    for name in _CREDENTIAL_FILES:
        if getattr(settings, name) is None:
            raise _Invalid(
                (section, name), "", f"{needs} (the host's stand-in for a security tag)"
            )


@attrs.frozen
class Outage:
    """One ``[[modem.outages]]`` entry: a scripted loss of the LTE link.

    Attributes:
        at: Seconds after start when the link drops.
        duration: Seconds until it comes back.
    """

    at: float = attrs.field(default=600.0, validator=_not_negative)
    duration: float = attrs.field(default=120.0, validator=_positive)

    @property
    def end(self) -> float:
        """Seconds after start when the link is back."""
        return self.at + self.duration


@attrs.frozen
class ModemConfig:
    """The ``[modem]`` table: the simulated modem's LTE link.

    Attributes:
        attach_delay: Seconds from start until LTE is connected.
        outages: Scripted link losses, in order and not overlapping.
    """

    attach_delay: float = attrs.field(default=2.0, validator=_not_negative)
    outages: tuple[Outage, ...] = ()

    def __attrs_post_init__(self) -> None:
        # The modem actor plays the outages in order; one that starts before
        # the previous one ended (or at the same instant) has no clear meaning.
        for index, (previous, outage) in enumerate(pairwise(self.outages), start=1):
            if outage.at <= previous.end:
                raise _Invalid(
                    ("outages", index, "at"),
                    outage.at,
                    f"must be after the end of modem.outages[{index - 1}] "
                    f"({previous.at:g} s + {previous.duration:g} s = "
                    f"{previous.end:g} s): outages are listed in order and "
                    "must not overlap",
                )


@attrs.frozen
class ButtonPress:
    """One ``[[sources.presses]]`` entry: a scripted button press.

    Attributes:
        at: Seconds after start.
        button: The button number (1 or 2 on the development kits).
    """

    at: float = attrs.field(validator=_not_negative)
    button: int = attrs.field(default=1, validator=_between(1, 4))


@attrs.frozen
class MovementEvent:
    """One ``[[sources.movement]]`` entry: scripted accelerometer output.

    Attributes:
        at: Seconds after start.
        kind: "activity", "inactivity" or "impact".
        magnitude: The impact's magnitude in G (impacts only).
    """

    at: float = attrs.field(validator=_not_negative)
    kind: str = attrs.field(validator=_one_of(*MOVEMENT_KINDS))
    magnitude: float = attrs.field(default=0.0, validator=_not_negative)

    def __attrs_post_init__(self) -> None:
        if self.kind == "impact" and self.magnitude <= 0:
            raise _Invalid(
                ("magnitude",), self.magnitude, "an impact needs a magnitude > 0 (G)"
            )


@attrs.frozen
class SourcesConfig:
    """The ``[sources]`` table: the simulated GNSS, sensors and buttons.

    Attributes:
        seed: Makes every simulated value reproducible.
        route: A GPX or NMEA file the GNSS follows; empty: a built-in loop.
        agnss: Whether the GNSS asks for A-GNSS data before its first fix.
        environmental: Whether the device has environmental sensors.
        fuel_gauge: Whether the device has a fuel gauge.
        presses: Scripted button presses.
        movement: Scripted movement and impacts.
    """

    seed: int = 0
    route: Path | None = None
    agnss: bool = True
    environmental: bool = True
    fuel_gauge: bool = True
    presses: tuple[ButtonPress, ...] = ()
    movement: tuple[MovementEvent, ...] = ()


@attrs.frozen
class DebugConfig:
    """The ``[debug]`` table: the debug websocket (``tracker.debug``).

    Attributes:
        enabled: Serve the debug websocket.
        host: The address to listen on; loopback unless you mean otherwise.
        port: The TCP port (0: any free port).
        interval: Seconds between snapshots.
        recent: How many recent bus events each snapshot carries.
        send_timeout: Seconds a client may take to accept a snapshot
            before it is dropped.
    """

    enabled: bool = False
    host: str = attrs.field(default="127.0.0.1", validator=_host)
    port: int = attrs.field(default=8765, validator=_between(0, 65535))
    interval: float = attrs.field(default=1.0, validator=_positive)
    recent: int = attrs.field(default=20, validator=_not_negative)
    send_timeout: float = attrs.field(default=5.0, validator=_positive)


@attrs.frozen
class UtilConfig:
    """The ``[util]`` table: the reboot sequence of the util module.

    Attributes:
        reboot_timeout: CONFIG_REBOOT_TIMEOUT: seconds from a reboot request
            to the reboot, when not every module acknowledges shutdown.
        ack_reboot_delay: Seconds from the last shutdown acknowledgement to
            the reboot.
    """

    reboot_timeout: int = attrs.field(default=30, validator=_positive)
    ack_reboot_delay: int = attrs.field(default=5, validator=_positive)


@attrs.frozen
class LogConfig:
    """The ``[log]`` table (see `tracker.logs.configure_logging`).

    Attributes:
        level: "debug", "info", "warning" or "error".
        format: "json", "console", or "auto" (console on a terminal).
    """

    level: str = attrs.field(default="info", validator=_one_of(*LOG_LEVELS))
    format: str = attrs.field(default="auto", validator=_one_of(*LOG_FORMATS))


@attrs.frozen
class StateConfig:
    """The ``[state]`` table: where persistent state lives.

    Attributes:
        directory: Absolute once loaded; relative paths in the file are
            resolved against the directory of the file.
    """

    directory: Path = Path("var")


@attrs.frozen
class Config:
    """The whole configuration, as loaded from one ``tracker.toml``.

    Attributes:
        device: The ``[device]`` table.
        cloud: The ``[cloud]`` table and its per-service tables.
        modem: The ``[modem]`` table.
        sources: The ``[sources]`` table.
        util: The ``[util]`` table.
        log: The ``[log]`` table.
        state: The ``[state]`` table.
        debug: The ``[debug]`` table.
        source: The absolute path of the file this was loaded from, or None.
    """

    device: DeviceConfig = attrs.Factory(DeviceConfig)
    cloud: CloudConfig = attrs.Factory(CloudConfig)
    modem: ModemConfig = attrs.Factory(ModemConfig)
    sources: SourcesConfig = attrs.Factory(SourcesConfig)
    util: UtilConfig = attrs.Factory(UtilConfig)
    log: LogConfig = attrs.Factory(LogConfig)
    state: StateConfig = attrs.Factory(StateConfig)
    debug: DebugConfig = attrs.Factory(DebugConfig)
    source: Path | None = attrs.field(default=None, metadata={_NOT_IN_FILE: True})

    @property
    def client_id(self) -> str:
        """The MQTT client id (the thing or device name), spec §8.2.

        The custom id when one is configured; otherwise the IMEI, with
        CLOUD_CLIENT_ID_IMEI_PREFIX in front of it for nRF Cloud.
        """
        if self.device.use_custom_client_id:
            return self.device.client_id
        if self.cloud.service == "nrf_cloud":
            return self.cloud.nrf_cloud.client_id_prefix + self.device.imei
        return self.device.imei

    @property
    def lwm2m_endpoint(self) -> str:
        """The LwM2M endpoint name: the custom id, or the prefixed IMEI."""
        if self.device.use_custom_client_id:
            return self.device.client_id
        return self.cloud.lwm2m.endpoint_prefix + self.device.imei


# ---------------------------------------------------------------------------
# Structuring: strict hooks for the leaves, and where failures happened


def _structure_str(value: object, _: object) -> str:
    if not isinstance(value, str):
        raise _Invalid((), value, f"must be a string, {_got(value)}")
    return value


def _structure_bool(value: object, _: object) -> bool:
    if not isinstance(value, bool):
        raise _Invalid((), value, f"must be true or false, {_got(value)}")
    return value


def _structure_int(value: object, _: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid((), value, f"must be an integer, {_got(value)}")
    return value


def _structure_float(value: object, _: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid((), value, f"must be a number, {_got(value)}")
    if not math.isfinite(value):
        raise _Invalid((), value, "must be a finite number")
    return float(value)


def _structure_path(value: object, _: object) -> Path:
    text = _structure_str(value, str)
    if not text:
        raise _Invalid((), value, "must not be empty")
    return Path(text)


def _structure_optional_path(value: object, _: object) -> Path | None:
    # The empty string is the file's way of saying "not configured".
    text = _structure_str(value, str)
    return Path(text) if text else None


def _structure_backoff(value: object, _: object) -> str | tuple[int, ...]:
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise _Invalid(
            (), value, f"must be a table name or an array of seconds, {_got(value)}"
        )
    for index, delay in enumerate(value):
        if isinstance(delay, bool) or not isinstance(delay, int):
            raise _Invalid((index,), delay, f"must be an integer, {_got(delay)}")
    return tuple(value)


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    converter.register_structure_hook(str, _structure_str)
    converter.register_structure_hook(bool, _structure_bool)
    converter.register_structure_hook(int, _structure_int)
    converter.register_structure_hook(float, _structure_float)
    converter.register_structure_hook(Path, _structure_path)
    converter.register_structure_hook_func(
        lambda t: t == Path | None, _structure_optional_path
    )
    converter.register_structure_hook_func(
        lambda t: t == str | tuple[int, ...], _structure_backoff
    )

    # cattrs' own tuple hook would iterate any value, a string included, and
    # blame its characters; insist on an array, and note each entry's index.
    def structure_outages(value: object, _: object) -> tuple[Outage, ...]:
        if not isinstance(value, list):
            expected = "must be an array of tables ([[modem.outages]])"
            raise _Invalid((), value, f"{expected}, {_got(value)}")
        outages: list[Outage] = []
        errors: list[Exception] = []
        for index, item in enumerate(value):
            try:
                outages.append(converter.structure(item, Outage))
            except Exception as exc:
                exc.add_note(IterableValidationNote(f"@ index {index}", index, Outage))
                errors.append(exc)
        if errors:
            raise IterableValidationError("While structuring outages", errors, tuple)
        return tuple(outages)

    converter.register_structure_hook_func(
        lambda t: t == tuple[Outage, ...], structure_outages
    )

    # Every attrs class is a TOML table. The generated hooks assume a dict,
    # so check that first, and leave out the attributes the file cannot set.
    def make_table_hook(cls: type[Any]) -> Callable[[object, object], Any]:
        omitted = {
            field.name: override(omit=True)
            for field in attrs.fields(cls)
            if field.metadata.get(_NOT_IN_FILE)
        }
        structure = make_dict_structure_fn(cls, converter, **omitted)

        def structure_table(value: object, _: object) -> Any:
            if not isinstance(value, dict):
                raise _Invalid((), value, f"must be a table, {_got(value)}")
            return structure(value, cls)

        return structure_table

    converter.register_structure_hook_factory(attrs.has, make_table_hook)
    return converter


def _note_name(exc: BaseException) -> str | None:
    for note in getattr(exc, "__notes__", ()):
        if isinstance(note, AttributeValidationNote):
            return note.name
    return None


def _note_index(exc: BaseException) -> int | None:
    for note in getattr(exc, "__notes__", ()):
        if isinstance(note, IterableValidationNote) and isinstance(note.index, int):
            return note.index
    return None


def _unknown_key_reason(key: str, cls: type[Any]) -> str:
    known = [f.name for f in attrs.fields(cls) if not f.metadata.get(_NOT_IN_FILE)]
    close = difflib.get_close_matches(key, known, n=1)
    if close:
        return f"unknown key (did you mean {close[0]}?)"
    return f"unknown key (expected one of {', '.join(known)})"


def _locate(exc: BaseException, raw: object) -> tuple[_Where, object, str]:
    """Find the first failure in a cattrs error: where, which value, and why.

    ``raw`` is the parsed TOML the failing structure was made from; its key
    order decides which failure comes first.
    """
    if isinstance(exc, ClassValidationError):
        table: dict[str, object] = raw if isinstance(raw, dict) else {}
        order = list(table)
        candidates: list[tuple[str | None, BaseException]] = []
        for sub in exc.exceptions:
            if isinstance(sub, ForbiddenExtraKeysError):
                candidates.extend((key, sub) for key in sorted(sub.extra_fields))
            elif (name := _note_name(sub)) is not None:
                candidates.append((name, sub))
            elif isinstance(sub, _Invalid) and sub.where:
                candidates.append((str(sub.where[0]), sub))
            else:
                candidates.append((None, sub))
        key, sub = min(
            candidates, key=lambda c: order.index(c[0]) if c[0] in order else len(order)
        )
        if isinstance(sub, ForbiddenExtraKeysError) and key is not None:
            return (key,), table[key], _unknown_key_reason(key, sub.cl)
        if key is not None and _note_name(sub) == key:
            where, value, reason = _locate(sub, table.get(key))
            return (key, *where), value, reason
        return _locate(sub, raw)

    if isinstance(exc, IterableValidationError):
        items: list[object] = raw if isinstance(raw, list) else []
        index, sub = min(
            ((_note_index(sub), sub) for sub in exc.exceptions),
            key=lambda c: len(items) if c[0] is None else c[0],
        )
        if index is None:
            return _locate(sub, raw)
        item = items[index] if index < len(items) else None
        where, value, reason = _locate(sub, item)
        return (index, *where), value, reason

    if isinstance(exc, _Invalid):
        # Validators see the structured value (600.0 for 600); show the
        # value as written when the document has one at that place.
        return exc.where, _lookup(raw, exc.where, exc.value), exc.reason
    return (), raw, f"is invalid ({exc})"  # pragma: no cover - a hook bug


def _lookup(raw: object, where: _Where, default: object) -> object:
    for step in where:
        if isinstance(raw, dict) and isinstance(step, str) and step in raw:
            raw = raw[step]
        elif isinstance(raw, list) and isinstance(step, int) and step < len(raw):
            raw = raw[step]
        else:
            return default
    return raw


# ---------------------------------------------------------------------------
# Loading

_converter: Final = _make_converter()
_Credentials = TypeVar("_Credentials", AwsConfig, AzureConfig, NrfCloudConfig)


def _resolve_credentials(settings: _Credentials, base: Path) -> _Credentials:
    resolved: dict[str, Path | None] = {}
    for name in _CREDENTIAL_FILES:
        path: Path | None = getattr(settings, name)
        resolved[name] = None if path is None else base / path
    return attrs.evolve(settings, **resolved)


def _resolve(config: Config, name: str, base: Path, source: Path | None) -> Config:
    """Make the paths absolute and check the selected service's files."""
    cloud = attrs.evolve(
        config.cloud,
        aws=_resolve_credentials(config.cloud.aws, base),
        azure=_resolve_credentials(config.cloud.azure, base),
        nrf_cloud=_resolve_credentials(config.cloud.nrf_cloud, base),
    )

    service = cloud.service
    if service in ("aws", "azure", "nrf_cloud"):
        written = getattr(config.cloud, service)
        resolved = getattr(cloud, service)
        for key in _CREDENTIAL_FILES:
            path: Path = getattr(resolved, key)
            if not path.is_file():
                problem = "is not a file" if path.exists() else "does not exist"
                raise ConfigError(
                    name,
                    f"cloud.{service}.{key}",
                    str(getattr(written, key)),
                    f"{path} {problem} (relative paths start at {base})",
                )

    download_ca = cloud.aws.download_ca_file
    if download_ca is not None:
        aws = attrs.evolve(cloud.aws, download_ca_file=base / download_ca)
        cloud = attrs.evolve(cloud, aws=aws)
        if service == "aws" and not (base / download_ca).is_file():
            raise ConfigError(
                name,
                "cloud.aws.download_ca_file",
                str(download_ca),
                f"{base / download_ca} is not a file (relative paths start at {base})",
            )

    sources = config.sources
    if sources.route is not None:
        route = base / sources.route
        if not route.is_file():
            raise ConfigError(
                name,
                "sources.route",
                str(sources.route),
                f"{route} is not a file (relative paths start at {base})",
            )
        try:
            load_route(route)
        except (RouteError, OSError) as exc:
            raise ConfigError(
                name, "sources.route", str(sources.route), str(exc)
            ) from exc
        sources = attrs.evolve(sources, route=route)

    state = attrs.evolve(config.state, directory=base / config.state.directory)
    local_directory = cloud.local.directory
    cloud = attrs.evolve(
        cloud,
        local=attrs.evolve(
            cloud.local,
            directory=(
                state.directory / "local-cloud"
                if local_directory is None
                else base / local_directory
            ),
        ),
    )
    return attrs.evolve(
        config, cloud=cloud, sources=sources, state=state, source=source
    )


def _parse(text: str, name: str, base: Path, source: Path | None) -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(name, None, None, f"invalid TOML: {exc}") from None

    try:
        config = _converter.structure(raw, Config)
    except Exception as exc:  # every failure of structuring, hooks included
        where, value, reason = _locate(exc, raw)
        raise ConfigError(name, _dotted(where) or None, value, reason) from exc
    return _resolve(config, name, base, source)


def parse_config(text: str, *, source: str = "<string>") -> Config:
    """Load a configuration from TOML text.

    Relative paths are resolved against the current directory, and the
    result's ``source`` is None.

    Args:
        text: The TOML document.
        source: How to name the document in error messages.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: The text is not TOML or a setting is invalid.
    """
    return _parse(text, source, Path.cwd(), None)


def load_config(path: Path) -> Config:
    """Load the configuration file at ``path``.

    Relative paths in the file are resolved against the file's directory.

    Args:
        path: The ``tracker.toml`` to read.

    Returns:
        The validated configuration, with ``source`` set to the absolute path.

    Raises:
        ConfigError: The file cannot be read, is not TOML, or a setting is
            invalid.
    """
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(name, None, None, "no such file") from None
    except IsADirectoryError:
        raise ConfigError(name, None, None, "is a directory, not a file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(name, None, None, f"is not UTF-8 text ({exc})") from None
    except OSError as exc:
        reason = f"cannot be read ({exc.strerror})"
        raise ConfigError(name, None, None, reason) from None

    source = path.absolute()
    return _parse(text, name, source.parent, source)


def default_config() -> Config:
    """The configuration an empty file gives (paths relative to the cwd)."""
    return parse_config("")
