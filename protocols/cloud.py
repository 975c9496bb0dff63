"""Events of the cloud module (``cloud_module_event.h``)."""

from __future__ import annotations

from typing import ClassVar

import attrs

from protocols.base import ErrorBase, Event, Module, ShutdownReadyBase
from protocols.config import DeviceConfig
from protocols.qos import QosMessage


@attrs.frozen
class CloudEvent(Event):
    """Base class of the cloud module's events."""

    source: ClassVar[Module] = Module.CLOUD


@attrs.frozen
class CloudConnected(CloudEvent):
    """The cloud connection is established."""

    spec_name: ClassVar[str] = "CLOUD_EVT_CONNECTED"


@attrs.frozen
class CloudDisconnected(CloudEvent):
    """The cloud connection was lost or closed."""

    spec_name: ClassVar[str] = "CLOUD_EVT_DISCONNECTED"


@attrs.frozen
class CloudConnecting(CloudEvent):
    """A connection attempt has started."""

    spec_name: ClassVar[str] = "CLOUD_EVT_CONNECTING"


@attrs.frozen
class CloudConnectionTimeout(CloudEvent):
    """The reconnect timer expired with LTE up and the cloud not connected."""

    spec_name: ClassVar[str] = "CLOUD_EVT_CONNECTION_TIMEOUT"


@attrs.frozen
class CloudLteConnect(CloudEvent):
    """The backend asks the modem to go online (LwM2M provisioning)."""

    spec_name: ClassVar[str] = "CLOUD_EVT_LTE_CONNECT"


@attrs.frozen
class CloudLteDisconnect(CloudEvent):
    """The backend asks the modem to go offline (LwM2M provisioning)."""

    spec_name: ClassVar[str] = "CLOUD_EVT_LTE_DISCONNECT"


@attrs.frozen
class CloudUserAssociationRequest(CloudEvent):
    """nRF Cloud waits for the user to add the device to an account."""

    spec_name: ClassVar[str] = "CLOUD_EVT_USER_ASSOCIATION_REQUEST"


@attrs.frozen
class CloudUserAssociated(CloudEvent):
    """The device was added to an nRF Cloud account."""

    spec_name: ClassVar[str] = "CLOUD_EVT_USER_ASSOCIATED"


@attrs.frozen
class CloudRebootRequest(CloudEvent):
    """The cloud asked for a reboot (LwM2M device object reboot execute)."""

    spec_name: ClassVar[str] = "CLOUD_EVT_REBOOT_REQUEST"


@attrs.frozen
class CloudConfigReceived(CloudEvent):
    """A configuration document was decoded onto the current configuration."""

    spec_name: ClassVar[str] = "CLOUD_EVT_CONFIG_RECEIVED"
    config: DeviceConfig


@attrs.frozen(kw_only=True)
class CloudLocation:
    """A location resolved by the cloud from cells or Wi-Fi access points."""

    latitude: float
    longitude: float
    accuracy: float


@attrs.frozen
class CloudLocationReceived(CloudEvent):
    """The cloud returned a resolved location."""

    spec_name: ClassVar[str] = "CLOUD_EVT_CLOUD_LOCATION_RECEIVED"
    location: CloudLocation


@attrs.frozen
class CloudLocationError(CloudEvent):
    """The cloud answered a location request but could not resolve it."""

    spec_name: ClassVar[str] = "CLOUD_EVT_CLOUD_LOCATION_ERROR"


@attrs.frozen
class CloudLocationUnknown(CloudEvent):
    """The cloud will not return a location to the device."""

    spec_name: ClassVar[str] = "CLOUD_EVT_CLOUD_LOCATION_UNKNOWN"


@attrs.frozen
class CloudConfigEmpty(CloudEvent):
    """A received document held no configuration."""

    spec_name: ClassVar[str] = "CLOUD_EVT_CONFIG_EMPTY"


@attrs.frozen
class CloudFotaStart(CloudEvent):
    """A firmware update has started."""

    spec_name: ClassVar[str] = "CLOUD_EVT_FOTA_START"


@attrs.frozen
class CloudFotaDone(CloudEvent):
    """A firmware update is staged; a reboot activates it."""

    spec_name: ClassVar[str] = "CLOUD_EVT_FOTA_DONE"


@attrs.frozen
class CloudFotaError(CloudEvent):
    """A firmware update failed; the running image is kept."""

    spec_name: ClassVar[str] = "CLOUD_EVT_FOTA_ERROR"


@attrs.frozen
class CloudDataSendQos(CloudEvent):
    """The QoS library asks for a (re)transmission.

    Private to the cloud module: it never leaves the cloud actor's mailbox,
    as the firmware's cloud module consumes it before any other listener.
    """

    spec_name: ClassVar[str] = "CLOUD_EVT_DATA_SEND_QOS"
    message: QosMessage


# -- host-only events ------------------------------------------------------
# No firmware counterpart (the firmware keeps no record of delivery): their
# ``spec_name`` starts with "HOST_".  They report the fate of the stored
# samples a payload carried (``Payload.sample_ids``) to the data actor.


@attrs.frozen
class CloudDataDelivered(CloudEvent):
    """The samples went out: acknowledged, or transmitted without QoS."""

    spec_name: ClassVar[str] = "HOST_CLOUD_EVT_DATA_DELIVERED"
    sample_ids: tuple[int, ...]


@attrs.frozen
class CloudDataDropped(CloudEvent):
    """The QoS library gave the samples up (``expired`` or ``pool_full``)."""

    spec_name: ClassVar[str] = "HOST_CLOUD_EVT_DATA_DROPPED"
    sample_ids: tuple[int, ...]
    reason: str


@attrs.frozen
class CloudDataUnsent(CloudEvent):
    """The samples were not transmitted (cloud offline, send failed).

    The data actor queues them again; the firmware would lose them.
    """

    spec_name: ClassVar[str] = "HOST_CLOUD_EVT_DATA_UNSENT"
    sample_ids: tuple[int, ...]


@attrs.frozen
class CloudShutdownReady(ShutdownReadyBase, CloudEvent):
    """The cloud module acknowledged the shutdown request."""

    spec_name: ClassVar[str] = "CLOUD_EVT_SHUTDOWN_READY"


@attrs.frozen
class CloudError(ErrorBase, CloudEvent):
    """An irrecoverable cloud error; the util module reboots."""

    spec_name: ClassVar[str] = "CLOUD_EVT_ERROR"
