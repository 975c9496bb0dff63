"""What every message on the event bus has in common.

The firmware's modules talk only through the Application Event Manager: each
module owns one event type whose ``type`` field names the event.  Here each
event is its own frozen class; ``Module`` says which module emits it (the
bus routes by module, as the event manager routes by event type) and
``spec_name`` is the firmware's name for it, so that logs and the debug view
can be read side by side with the firmware's documentation.
"""

from __future__ import annotations

import enum
from typing import ClassVar

import attrs


class Module(enum.Enum):
    """The firmware modules that emit events."""

    APP = "app"
    CLOUD = "cloud"
    DATA = "data"
    DEBUG = "debug"
    LOCATION = "location"
    MODEM = "modem"
    SENSOR = "sensor"
    UI = "ui"
    UTIL = "util"


@attrs.frozen
class Event:
    """Base class of every bus event."""

    source: ClassVar[Module]
    spec_name: ClassVar[str]


@attrs.frozen
class ShutdownReadyBase(Event):
    """A module's acknowledgement of ``UTIL_EVT_SHUTDOWN_REQUEST``.

    ``id`` is the module id handed out when the module started, the host
    equivalent of the firmware's ``k_cycle_get_32()`` id.
    """

    id: int


@attrs.frozen
class ErrorBase(Event):
    """An irrecoverable module error; the util module reboots on it.

    ``err`` is a negative errno value, as in the firmware.
    """

    err: int


@attrs.frozen
class Payload:
    """An encoded message handed from the data module to the cloud module.

    ``data`` is the encoded document (JSON for AWS, Azure and nRF Cloud).
    ``paths`` is the LwM2M object path list; the LwM2M backend sends those
    objects and ignores ``data``.
    ``sample_ids`` names the stored samples the document carries (host
    only, ``actors.data``, "Persistence"): the cloud actor reports them
    back as delivered, dropped or not sent.
    """

    data: bytes = b""
    paths: tuple[str, ...] = ()
    sample_ids: tuple[int, ...] = ()
