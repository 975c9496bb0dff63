"""Events of the data module (``data_module_event.h``)."""

from __future__ import annotations

from typing import ClassVar

import attrs

from protocols.base import ErrorBase, Event, Module, Payload, ShutdownReadyBase
from protocols.config import DeviceConfig


@attrs.frozen
class DataEvent(Event):
    """Base class of the data module's events."""

    source: ClassVar[Module] = Module.DATA


@attrs.frozen
class DataReady(DataEvent):
    """Every requested sample arrived, or the sampling deadline passed."""

    spec_name: ClassVar[str] = "DATA_EVT_DATA_READY"


@attrs.frozen
class DataSend(DataEvent):
    """The newest sample of each type, encoded for the cloud."""

    spec_name: ClassVar[str] = "DATA_EVT_DATA_SEND"
    payload: Payload


@attrs.frozen
class DataSendBatch(DataEvent):
    """Older buffered samples, encoded as one batch."""

    spec_name: ClassVar[str] = "DATA_EVT_DATA_SEND_BATCH"
    payload: Payload


@attrs.frozen
class DataUiDataSend(DataEvent):
    """A button press, encoded for the cloud."""

    spec_name: ClassVar[str] = "DATA_EVT_UI_DATA_SEND"
    payload: Payload


@attrs.frozen
class DataUiDataReady(DataEvent):
    """A button press was buffered."""

    spec_name: ClassVar[str] = "DATA_EVT_UI_DATA_READY"


@attrs.frozen
class DataImpactDataReady(DataEvent):
    """An impact was buffered."""

    spec_name: ClassVar[str] = "DATA_EVT_IMPACT_DATA_READY"


@attrs.frozen
class DataImpactDataSend(DataEvent):
    """An impact, encoded for the cloud."""

    spec_name: ClassVar[str] = "DATA_EVT_IMPACT_DATA_SEND"
    payload: Payload


@attrs.frozen
class DataCloudLocationDataSend(DataEvent):
    """Neighbour cells and Wi-Fi access points for the cloud to resolve."""

    spec_name: ClassVar[str] = "DATA_EVT_CLOUD_LOCATION_DATA_SEND"
    payload: Payload


@attrs.frozen
class DataConfigInit(DataEvent):
    """The configuration loaded at boot (defaults or persisted)."""

    spec_name: ClassVar[str] = "DATA_EVT_CONFIG_INIT"
    config: DeviceConfig


@attrs.frozen
class DataConfigReady(DataEvent):
    """A new configuration was applied."""

    spec_name: ClassVar[str] = "DATA_EVT_CONFIG_READY"
    config: DeviceConfig


@attrs.frozen
class DataConfigSend(DataEvent):
    """The complete applied configuration, encoded for the cloud."""

    spec_name: ClassVar[str] = "DATA_EVT_CONFIG_SEND"
    payload: Payload


@attrs.frozen
class DataConfigGet(DataEvent):
    """Ask the cloud for the device's configuration."""

    spec_name: ClassVar[str] = "DATA_EVT_CONFIG_GET"


@attrs.frozen
class DataDateTimeObtained(DataEvent):
    """The device learned the wall-clock time."""

    spec_name: ClassVar[str] = "DATA_EVT_DATE_TIME_OBTAINED"


@attrs.frozen
class DataShutdownReady(ShutdownReadyBase, DataEvent):
    """The data module acknowledged the shutdown request."""

    spec_name: ClassVar[str] = "DATA_EVT_SHUTDOWN_READY"


@attrs.frozen
class DataError(ErrorBase, DataEvent):
    """An irrecoverable data module error."""

    spec_name: ClassVar[str] = "DATA_EVT_ERROR"
