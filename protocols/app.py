"""Events of the app module (``app_module_event.h``) and the util module."""

from __future__ import annotations

import enum
from typing import ClassVar

import attrs

from protocols.base import ErrorBase, Event, Module, ShutdownReadyBase


class AppData(enum.Enum):
    """The kinds of sample the app module can ask for (``APP_DATA_COUNT`` = 6)."""

    ENVIRONMENTAL = "environmental"
    MOVEMENT = "movement"
    MODEM_STATIC = "modem_static"
    MODEM_DYNAMIC = "modem_dynamic"
    BATTERY = "battery"
    LOCATION = "location"


@attrs.frozen
class AppEvent(Event):
    """Base class of the app module's events."""

    source: ClassVar[Module] = Module.APP


@attrs.frozen
class AppStart(AppEvent):
    """The application has booted; modules start their work."""

    spec_name: ClassVar[str] = "APP_EVT_START"


@attrs.frozen
class AppLteConnect(AppEvent):
    """Ask the modem to connect (defined, never emitted by the firmware)."""

    spec_name: ClassVar[str] = "APP_EVT_LTE_CONNECT"


@attrs.frozen
class AppLteDisconnect(AppEvent):
    """Ask the modem to disconnect (defined, never emitted by the firmware)."""

    spec_name: ClassVar[str] = "APP_EVT_LTE_DISCONNECT"


@attrs.frozen(kw_only=True)
class AppDataGet(AppEvent):
    """Ask the sampling modules for data, with a deadline in seconds."""

    spec_name: ClassVar[str] = "APP_EVT_DATA_GET"
    data_list: tuple[AppData, ...]
    timeout: int


@attrs.frozen
class AppDataGetAll(AppEvent):
    """A sampling trigger fired; the app builds the ``AppDataGet`` for it."""

    spec_name: ClassVar[str] = "APP_EVT_DATA_GET_ALL"


@attrs.frozen
class AppConfigGet(AppEvent):
    """Ask for the configuration (defined, never emitted by the firmware)."""

    spec_name: ClassVar[str] = "APP_EVT_CONFIG_GET"


@attrs.frozen
class AppShutdownReady(ShutdownReadyBase, AppEvent):
    """The app module acknowledged the shutdown request."""

    spec_name: ClassVar[str] = "APP_EVT_SHUTDOWN_READY"


@attrs.frozen
class AppError(ErrorBase, AppEvent):
    """An irrecoverable app module error."""

    spec_name: ClassVar[str] = "APP_EVT_ERROR"


class ShutdownReason(enum.Enum):
    """Why the util module shuts the device down."""

    GENERIC = "generic"
    FOTA_UPDATE = "fota_update"
    # Host only: the operator stopped the service (SIGINT or SIGTERM); the
    # shutdown protocol is the same, but the tree exits instead of rebooting.
    SERVICE_STOP = "service_stop"


@attrs.frozen
class UtilEvent(Event):
    """Base class of the util module's events."""

    source: ClassVar[Module] = Module.UTIL


@attrs.frozen
class UtilShutdownRequest(UtilEvent):
    """Every module must acknowledge and stop; a reboot follows."""

    spec_name: ClassVar[str] = "UTIL_EVT_SHUTDOWN_REQUEST"
    reason: ShutdownReason
