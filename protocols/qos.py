"""Messages of the QoS library (``include/qos.h``).

The cloud module wraps every outgoing payload in a ``QosMessage``; the QoS
library keeps the ones that need an acknowledgement and asks for their
retransmission until the cloud acknowledges them or they expire.
"""

from __future__ import annotations

import enum

import attrs

from protocols.base import Payload


class MessageType(enum.IntEnum):
    """What a QoS message carries; selects the cloud wrapper call."""

    GENERIC = 0
    BATCH = 1
    UI = 2
    CLOUD_LOCATION = 3
    AGNSS_REQUEST = 4
    PGPS_REQUEST = 5
    CONFIG = 6
    MEMFAULT = 7


class QosFlag(enum.IntFlag):
    """Whether the message must be acknowledged by the cloud."""

    ACK_DISABLED = 0x01
    ACK_REQUIRED = 0x02


@attrs.frozen(kw_only=True)
class QosMessage:
    """One outgoing message and its delivery bookkeeping.

    ``notified_count`` is how many times the library has asked for the
    message to be sent, the first transmission included.
    """

    id: int
    type: MessageType
    flags: QosFlag
    payload: Payload
    notified_count: int = 0

    @property
    def ack_required(self) -> bool:
        """Whether the cloud must acknowledge this message."""
        return bool(self.flags & QosFlag.ACK_REQUIRED)
