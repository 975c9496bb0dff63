"""The event classes match the firmware's events one to one."""

from __future__ import annotations

import importlib
import sys

import attrs
import pytest

from protocols.base import Event, Module

MODULES = ["app", "cloud", "data", "modem", "peripherals"]

# The firmware's event enums (spec §2 and §3.2), per module.
SPEC: dict[Module, set[str]] = {
    Module.CLOUD: {
        f"CLOUD_EVT_{n}"
        for n in (
            "CONNECTED DISCONNECTED CONNECTING CONNECTION_TIMEOUT LTE_CONNECT "
            "LTE_DISCONNECT USER_ASSOCIATION_REQUEST USER_ASSOCIATED "
            "REBOOT_REQUEST CONFIG_RECEIVED CLOUD_LOCATION_RECEIVED "
            "CLOUD_LOCATION_ERROR CLOUD_LOCATION_UNKNOWN CONFIG_EMPTY FOTA_START "
            "FOTA_DONE FOTA_ERROR DATA_SEND_QOS SHUTDOWN_READY ERROR"
        ).split()
    },
    Module.MODEM: {
        f"MODEM_EVT_{n}"
        for n in (
            "INITIALIZED LTE_CONNECTED LTE_DISCONNECTED LTE_CONNECTING "
            "LTE_CELL_UPDATE LTE_PSM_UPDATE LTE_EDRX_UPDATE MODEM_STATIC_DATA_READY "
            "MODEM_DYNAMIC_DATA_READY MODEM_STATIC_DATA_NOT_READY "
            "MODEM_DYNAMIC_DATA_NOT_READY BATTERY_DATA_NOT_READY SHUTDOWN_READY "
            "ERROR CARRIER_FOTA_PENDING CARRIER_FOTA_STOPPED CARRIER_REBOOT_REQUEST "
            "CARRIER_EVENT_LTE_LINK_UP_REQUEST CARRIER_EVENT_LTE_LINK_DOWN_REQUEST "
            "CARRIER_EVENT_LTE_POWER_OFF_REQUEST"
        ).split()
    },
    Module.DATA: {
        f"DATA_EVT_{n}"
        for n in (
            "DATA_READY DATA_SEND DATA_SEND_BATCH UI_DATA_SEND UI_DATA_READY "
            "IMPACT_DATA_READY IMPACT_DATA_SEND CLOUD_LOCATION_DATA_SEND "
            "CONFIG_INIT CONFIG_READY CONFIG_SEND CONFIG_GET DATE_TIME_OBTAINED "
            "SHUTDOWN_READY ERROR"
        ).split()
    },
    Module.UTIL: {"UTIL_EVT_SHUTDOWN_REQUEST"},
    Module.APP: {
        f"APP_EVT_{n}"
        for n in (
            "START LTE_CONNECT LTE_DISCONNECT DATA_GET DATA_GET_ALL CONFIG_GET "
            "SHUTDOWN_READY ERROR"
        ).split()
    },
}


def all_events() -> list[type[Event]]:
    """Every concrete event class of the protocols package."""
    for name in MODULES:
        importlib.import_module(f"protocols.{name}")
    # Shutdown and error events inherit from two bases: visit each once.  A
    # slotted attrs class replaces the class it was built from; only the
    # class the module exports counts.
    found: dict[type[Event], None] = {}
    pending = list(Event.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        module = sys.modules[cls.__module__]
        if "spec_name" in cls.__dict__ and getattr(module, cls.__name__) is cls:
            found[cls] = None
    return list(found)


class TestEventCatalogue:
    @pytest.mark.parametrize("module", list(SPEC), ids=lambda m: m.value)
    def test_one_class_per_firmware_event(self, module: Module) -> None:
        """Each module's classes are exactly the firmware's events, no more."""
        names = [
            cls.spec_name
            for cls in all_events()
            # Host-only events have no firmware counterpart.
            if cls.source is module and not cls.spec_name.startswith("HOST_")
        ]

        assert sorted(names) == sorted(SPEC[module])

    def test_names_are_unique(self) -> None:
        """No two classes claim the same firmware event."""
        names = [cls.spec_name for cls in all_events()]

        assert len(names) == len(set(names))

    def test_events_are_frozen(self) -> None:
        """Events cannot be changed once published."""
        for cls in all_events():
            assert attrs.has(cls)
            assert cls.__setattr__ is not object.__setattr__, cls
