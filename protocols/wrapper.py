"""Events a cloud backend reports to the cloud actor (``cloud_wrapper.h``).

In the firmware these arrive as callbacks in the client library's context.
Here a backend turns each into one of these messages and puts it in the
cloud actor's mailbox; the cloud actor reacts to them in order, one at a
time, like every other message.  They never travel on the event bus.
"""

from __future__ import annotations

from typing import ClassVar

import attrs


@attrs.frozen
class WrapperEvent:
    """Base class of the cloud wrapper's events."""

    spec_name: ClassVar[str]


@attrs.frozen
class WrapperConnecting(WrapperEvent):
    """A connection attempt has started."""

    spec_name: ClassVar[str] = "CLOUD_WRAP_EVT_CONNECTING"


@attrs.frozen
class WrapperConnected(WrapperEvent):
    """The session is up and subscribed; data may be sent."""

    spec_name: ClassVar[str] = "CLOUD_WRAP_EVT_CONNECTED"


@attrs.frozen
class WrapperDisconnected(WrapperEvent):
    """The session ended; ``reason`` says why, for the log."""

    spec_name: ClassVar[str] = "CLOUD_WRAP_EVT_DISCONNECTED"
    reason: str = ""


@attrs.frozen
class WrapperDataReceived(WrapperEvent):
    """A document arrived on a configuration topic (shadow, twin)."""

    spec_name: ClassVar[str] = "CLOUD_WRAP_EVT_DATA_RECEIVED"
    data: bytes
    topic: str = ""


@attrs.frozen
class WrapperUserAssociationRequest(WrapperEvent):
    """nRF Cloud waits for the device to be added to an account."""

    spec_name: ClassVar[str] = "CLOUD_WRAP_EVT_USER_ASSOCIATION_REQUEST"


@attrs.frozen
class WrapperUserAssociated(WrapperEvent):
    """The device was added to an nRF Cloud account."""

    spec_name: ClassVar[str] = "CLOUD_WRAP_EVT_USER_ASSOCIATED"


@attrs.frozen
class WrapperDataAck(WrapperEvent):
    """The cloud acknowledged the message sent with ``message_id``."""

    spec_name: ClassVar[str] = "CLOUD_WRAP_EVT_DATA_ACK"
    message_id: int


@attrs.frozen
class WrapperPingAck(WrapperEvent):
    """The broker answered a keep-alive ping."""

    spec_name: ClassVar[str] = "CLOUD_WRAP_EVT_PING_ACK"


@attrs.frozen
class WrapperAgnssDataReceived(WrapperEvent):
    """A binary A-GNSS response arrived."""

    spec_name: ClassVar[str] = "CLOUD_WRAP_EVT_AGNSS_DATA_RECEIVED"
    data: bytes


@attrs.frozen
class WrapperPgpsDataReceived(WrapperEvent):
    """A P-GPS response (where to download predictions) arrived."""

    spec_name: ClassVar[str] = "CLOUD_WRAP_EVT_PGPS_DATA_RECEIVED"
    data: bytes


@attrs.frozen
class WrapperCloudLocationResultReceived(WrapperEvent):
    """The cloud answered a location request."""

    spec_name: ClassVar[str] = "CLOUD_WRAP_EVT_CLOUD_LOCATION_RESULT_RECEIVED"
    data: bytes


@attrs.frozen
class WrapperRebootRequest(WrapperEvent):
    """The cloud asked for a reboot."""

    spec_name: ClassVar[str] = "CLOUD_WRAP_EVT_REBOOT_REQUEST"


@attrs.frozen
class WrapperLteConnectRequest(WrapperEvent):
    """The backend needs the modem online."""

    spec_name: ClassVar[str] = "CLOUD_WRAP_EVT_LTE_CONNECT_REQUEST"


@attrs.frozen
class WrapperLteDisconnectRequest(WrapperEvent):
    """The backend needs the modem offline."""

    spec_name: ClassVar[str] = "CLOUD_WRAP_EVT_LTE_DISCONNECT_REQUEST"


@attrs.frozen
class WrapperFotaStart(WrapperEvent):
    """A firmware update started."""

    spec_name: ClassVar[str] = "CLOUD_WRAP_EVT_FOTA_START"


@attrs.frozen
class WrapperFotaDone(WrapperEvent):
    """A firmware update is staged."""

    spec_name: ClassVar[str] = "CLOUD_WRAP_EVT_FOTA_DONE"


@attrs.frozen
class WrapperFotaErasePending(WrapperEvent):
    """The secondary slot is being erased."""

    spec_name: ClassVar[str] = "CLOUD_WRAP_EVT_FOTA_ERASE_PENDING"


@attrs.frozen
class WrapperFotaEraseDone(WrapperEvent):
    """The secondary slot was erased."""

    spec_name: ClassVar[str] = "CLOUD_WRAP_EVT_FOTA_ERASE_DONE"


@attrs.frozen
class WrapperFotaError(WrapperEvent):
    """A firmware update failed."""

    spec_name: ClassVar[str] = "CLOUD_WRAP_EVT_FOTA_ERROR"


@attrs.frozen
class WrapperError(WrapperEvent):
    """The backend hit an irrecoverable error (negative errno)."""

    spec_name: ClassVar[str] = "CLOUD_WRAP_EVT_ERROR"
    err: int


@attrs.frozen
class WrapperSendResult(WrapperEvent):
    """The outcome of a send the cloud answers itself (host only).

    The LwM2M Send operation is confirmed by the server's 2.04, not by the
    QoS library, so the backend reports each send's outcome: ``delivered``
    when the server took it, else not sent (the data actor keeps the
    samples for the next connection).  The firmware has no such event: it
    forgets a sample once handed over.
    """

    spec_name: ClassVar[str] = "HOST_CLOUD_WRAP_EVT_SEND_RESULT"
    sample_ids: tuple[int, ...]
    delivered: bool
