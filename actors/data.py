"""The data actor: the device configuration's owner (``data_module.c``).

This part of the data module decides which configuration the device runs
with.  At ``APP_EVT_START`` it announces the configuration it booted with
(``DATA_EVT_CONFIG_INIT``).  Every configuration the cloud sends
(``CLOUD_EVT_CONFIG_RECEIVED``) is checked field by field against the
firmware's rules:

* ``active_mode`` and the ``nod`` flags are taken as they come;
* ``location_timeout``, ``active_wait_timeout``, ``movement_resolution`` and
  ``movement_timeout`` are taken only when greater than zero; a value of zero
  or less is refused with a warning naming the field, and the field keeps
  its value (the firmware sets no upper bound);
* the accelerometer threshold and timeout are taken unchecked, as in the
  firmware (the codec has already refused non-numbers and non-finite
  values).

If anything changed, ``DATA_EVT_CONFIG_READY`` carries the new
configuration.  Whatever happened, the complete applied configuration is
reported back (``DATA_EVT_CONFIG_SEND``), so the cloud's reported state is
always the state the device runs: that is also the answer to a document
without configuration (``CLOUD_EVT_CONFIG_EMPTY``).

Sampling, the ring buffers and the encoding of sensor data belong to this
module in the firmware too; they are not implemented yet.  The
configuration is kept in memory only: it is lost on a restart of the
service (the firmware keeps it in flash), which a later persistent store
will fix.
"""

from __future__ import annotations

from typing import Any, ClassVar, Final

import attrs

from actors.runtime import Actor, Priority
from protocols.app import AppStart, UtilShutdownRequest
from protocols.base import Module
from protocols.cloud import (
    CloudConfigEmpty,
    CloudConfigReceived,
    CloudConnected,
    CloudDisconnected,
)
from protocols.codec import CloudCodec, CodecNotSupported
from protocols.config import DeviceConfig
from protocols.data import (
    DataConfigInit,
    DataConfigReady,
    DataConfigSend,
    DataError,
    DataShutdownReady,
)

# Fields the firmware only accepts when greater than zero.
POSITIVE_FIELDS: Final = (
    "location_timeout",
    "active_wait_timeout",
    "movement_resolution",
    "movement_timeout",
)


def merge_config(
    current: DeviceConfig, received: DeviceConfig
) -> tuple[DeviceConfig, list[str]]:
    """Apply ``received`` onto ``current`` by the firmware's rules.

    Returns the resulting configuration and one message per refused field.
    """
    changes: dict[str, Any] = {}
    refused: list[str] = []
    for field in attrs.fields(DeviceConfig):
        new = getattr(received, field.name)
        if new == getattr(current, field.name):
            continue
        if field.name in POSITIVE_FIELDS and new <= 0:
            refused.append(f"{field.name} = {new!r}: must be greater than 0")
            continue
        changes[field.name] = new
    return attrs.evolve(current, **changes), refused


@attrs.define(eq=False)
class DataActor(Actor):
    """The data module's configuration handling (module docstring).

    Args:
      codec: encodes the configuration report for the selected cloud; a
        cloud without reports (LwM2M, where the object is the state)
        raises ``CodecNotSupported`` and nothing is sent.
      config: the configuration the device boots with.
      config_before_connected: answer a configuration-less document even
        while the cloud is not connected (nRF Cloud needs the report before
        it declares the session ready).
    """

    name: ClassVar[str] = "data"
    module: ClassVar[Module] = Module.DATA
    capacity: ClassVar[int] = 10  # DATA_QUEUE_ENTRY_COUNT
    routes: ClassVar[dict[Module, Priority]] = {
        Module.MODEM: Priority.EARLY,
        Module.CLOUD: Priority.EARLY,
        Module.LOCATION: Priority.EARLY,
        Module.UI: Priority.EARLY,
        Module.SENSOR: Priority.EARLY,
        Module.APP: Priority.NORMAL,
        Module.UTIL: Priority.NORMAL,
        Module.DATA: Priority.NORMAL,
    }
    error_event = DataError

    codec: CloudCodec = attrs.field(kw_only=True)
    config: DeviceConfig = attrs.field(kw_only=True, factory=DeviceConfig)
    config_before_connected: bool = attrs.field(kw_only=True, default=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.state = "STATE_CLOUD_DISCONNECTED"

    async def handle(self, message: Any) -> None:
        """Track the cloud connection and handle configuration events."""
        if self.state == "STATE_SHUTDOWN":
            return
        match message:
            case AppStart():
                self.log.info("config_init", **attrs.asdict(self.config))
                self.emit(DataConfigInit(self.config))
            case CloudConnected():
                self.state = "STATE_CLOUD_CONNECTED"
            case CloudDisconnected():
                self.state = "STATE_CLOUD_DISCONNECTED"
            case CloudConfigReceived(config=received):
                self._apply(received)
            case CloudConfigEmpty():
                connected = self.state == "STATE_CLOUD_CONNECTED"
                if connected or self.config_before_connected:
                    self._send_config()
            case UtilShutdownRequest():
                self.emit(DataShutdownReady(self.id))
                self.state = "STATE_SHUTDOWN"

    def _apply(self, received: DeviceConfig) -> None:
        merged, refused = merge_config(self.config, received)
        for reason in refused:
            self.counters["config_values_refused"] += 1
            self.last_error = f"config refused: {reason}"
            self.log.warning("config_value_refused", reason=reason)
        if merged != self.config:
            self.config = merged
            self.log.info("config_applied", **attrs.asdict(merged))
            self.emit(DataConfigReady(merged))
        self._send_config()

    def _send_config(self) -> None:
        try:
            payload = self.codec.encode_config_report(self.config)
        except CodecNotSupported:
            return
        self.emit(DataConfigSend(payload))

    def snapshot_extra(self) -> dict[str, Any]:
        """The configuration in force."""
        return {"config": attrs.asdict(self.config)}
