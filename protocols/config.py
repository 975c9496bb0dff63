"""The device's real-time configuration (``struct cloud_data_cfg``).

Defaults are the firmware's ``Kconfig.data_module`` defaults.  The cloud can
change every field at run time; validation of a received configuration is
the data module's job, so this class accepts any value.
"""

from __future__ import annotations

import attrs


@attrs.frozen(kw_only=True)
class NoData:
    """Which location methods the cloud asked the device not to use (``nod``)."""

    gnss: bool = False
    neighbor_cell: bool = False
    wifi: bool = False


@attrs.frozen(kw_only=True)
class DeviceConfig:
    """The real-time configuration of the device, in seconds and m/s²."""

    active_mode: bool = True
    location_timeout: int = 300
    active_wait_timeout: int = 300
    movement_resolution: int = 120
    movement_timeout: int = 3600
    accelerometer_activity_threshold: float = 4.0
    accelerometer_inactivity_threshold: float = 4.0
    # The documentation's table says 1 s; the Kconfig default, which the
    # firmware actually builds with, is 60 s.
    accelerometer_inactivity_timeout: float = 60.0
    no_data: NoData = NoData()
